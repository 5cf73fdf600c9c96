"""Shared test set-up: offscreen Qt, no network look-ups, seeded numerics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BLOODSMEAR_MAT = SHARED / "data" / "zheng-bloodsmear" / "bloodsmear_green.mat"


def _stub_icon_lookups() -> None:
    """superqt/pymmcore-widgets fetch icon fonts lazily; tests must never reach the network."""
    try:
        import superqt.fonticon._qfont_icon as qfont_icon  # noqa: F401
    except Exception:  # superqt not installed: nothing to stub
        return


_stub_icon_lookups()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def bloodsmear_mat() -> Path:
    if not BLOODSMEAR_MAT.exists():
        pytest.skip(f"shared blood-smear data not found at {BLOODSMEAR_MAT}")
    return BLOODSMEAR_MAT
