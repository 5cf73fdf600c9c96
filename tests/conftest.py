"""Shared test set-up: offscreen Qt, no network look-ups, seeded numerics."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# benchmarks/ holds the independent reference simulator (`refsim`) that engine-accuracy tests use.
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
BLOODSMEAR_MAT = SHARED / "data" / "zheng-bloodsmear" / "bloodsmear_green.mat"


def _stub_icon_lookups() -> None:
    """superqt/pymmcore-widgets (if ever installed) resolve icon fonts through fonticon plugins that may
    download: make every look-up answer an empty icon instead."""
    try:
        from superqt import fonticon
    except ImportError:  # not installed: nothing to stub
        return
    from PySide6.QtGui import QIcon

    fonticon.icon = lambda *args, **kwargs: QIcon()


_stub_icon_lookups()

_real_connect = socket.socket.connect


def _loopback_only_connect(self, address):
    """Tests never reach the network: only loopback and local (AF_UNIX) connections are allowed."""
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host not in ("localhost", "::1") and not str(host).startswith("127."):
            raise RuntimeError(f"test tried to reach the network ({address}); stub it out")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only_connect


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: tiny FFTs run fastest so, and on a busy 2-core runner extra threads only
    spin. Modules opt in with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny():
    """`factories.TINY_CASE` simulated (once per module: tests may not change it)."""
    from factories import TINY_CASE

    from uafp_gui.simulate import simulate

    return simulate(TINY_CASE, device="cpu")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def bloodsmear_mat() -> Path:
    if not BLOODSMEAR_MAT.exists():
        pytest.skip(f"shared blood-smear data not found at {BLOODSMEAR_MAT}")
    return BLOODSMEAR_MAT


def pytest_sessionfinish(session, exitstatus):
    """A lane that selects no test (e.g. `-m slow` on a subset) is not a failure: pytest's exit
    code 5 becomes 0, so the README's two-lane command never fails for an empty lane."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK


def pytest_make_parametrize_id(config, val, argname):
    """Readable, short test ids (fuzz-like parameters can be 100 kB long)."""
    text = repr(val) if not isinstance(val, str) else val
    return text if len(text) <= 40 else text[:37] + "..."
