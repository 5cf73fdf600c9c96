"""Shared test set-ups, defined once: small simulated cases, engine settings and the helpers that
turn a simulation into a dataset. Fixtures built from them live in conftest.py.

Import them as `from factories import TINY_CASE, ...` (pytest puts tests/ on sys.path)."""

from __future__ import annotations

from dataclasses import replace

from uafp_gui.acquisition.plan import MicroscopeDescription
from uafp_gui.io.dataset import Dataset
from uafp_gui.recon.uafp import UafpSettings
from uafp_gui.simulate import PRESETS

# The engine's mechanics on a small, fast case (5 x 5 LEDs, 48 px frames).
TINY_CASE = replace(PRESETS["misaligned"], frame_size=48, led_grid=5)
TINY_SETTINGS = UafpSettings(upsample=2, iterations=12, batch_size=8, device="cpu", preview_size=32)

# The simulated microscope the acquisition tests drive (64 px frames, a fixed seed).
ACQUISITION_SIMULATION = replace(PRESETS["misaligned"], frame_size=64, seed=5)
ACQUISITION_MICROSCOPE = MicroscopeDescription.from_simulation(ACQUISITION_SIMULATION)

# The simulated microscope behind the GUI tests' window.
GUI_SIMULATION = replace(PRESETS["misaligned"], frame_size=64)


def dataset_of(simulation) -> Dataset:
    """A simulation's frames and metadata as an in-memory dataset."""
    return Dataset(meta=simulation.meta, frames=simulation.frames)
