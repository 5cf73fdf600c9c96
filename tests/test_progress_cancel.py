"""Every phase of a UA-FP run reports progress and can be stopped: the start-geometry fit, the start
search, the iterations; and the CLI shows each phase with its own bar (an ETA never spans phases)."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from uafp_gui.recon.start import PHASE_START_GEOMETRY, PHASE_START_SEARCH
from uafp_gui.recon.uafp import UafpReconstruction, UafpSettings
from uafp_gui.simulate import PRESETS, simulate

pytestmark = pytest.mark.usefixtures("single_thread")


class _Dataset:
    def __init__(self, simulation):
        self.meta, self.frames, self.path = simulation.meta, simulation.frames, None


@pytest.fixture(scope="module")
def small_misaligned():
    return _Dataset(simulate(replace(PRESETS["misaligned"], frame_size=64, led_grid=7, upsample=2)))


@pytest.mark.slow  # numerical run: the slow lane
def test_start_search_reports_progress_and_stops_between_probes(small_misaligned):
    # residual threshold 0: the search runs on this small simulation, 5 probes at most
    settings = UafpSettings(upsample=2, iterations=2, start_search_residual_px=0.0, start_search_evaluations=5)
    recon = UafpReconstruction.from_dataset(small_misaligned, settings)
    cancel = threading.Event()
    seen: list[tuple[str, int, int]] = []

    def on_phase(phase: str, done: int, total: int) -> None:
        seen.append((phase, done, total))
        if phase == PHASE_START_SEARCH and done == 1:
            cancel.set()  # Stop during the second probe

    recon.on_phase = on_phase
    assert list(recon.run(cancel=cancel)) == []  # stopped before the first iteration: no update
    fits = [entry for entry in seen if entry[0] == PHASE_START_GEOMETRY]
    assert fits[0][1] == 0 and fits[-1][1] == fits[-1][2]  # the fit reported from start to end
    assert len({total for _, _, total in fits}) >= 2 and len(fits) > 10  # chunk by chunk, not one step
    searches = [entry for entry in seen if entry[0] == PHASE_START_SEARCH]
    assert searches[-1][1] == 1 and all(total == 5 for _, _, total in searches)
    # stopped mid-search: back at the circle fit's geometry, no search recorded, no iteration made
    assert recon.iteration == 0 and recon.start_search is None
    got, fit = recon.model.system.led_geometry().to_dict(), recon.circle_fit.geometry.to_dict()
    assert all(abs(got[k] - fit[k]) < 1e-5 for k in got)  # float32 parameters
    # Continue: the search runs again (to its end) and the iterations follow
    seen.clear()
    updates = list(recon.run(iterations=1))
    assert recon.iteration == 1 and len(updates) == 1 and recon.start_search is not None
    assert [entry for entry in seen if entry[0] == PHASE_START_SEARCH][-1][1] == recon.start_search["evaluations"]
    assert np.isfinite(updates[0].loss)


def test_stop_during_the_start_fit_ends_the_run_with_nothing_changed(small_misaligned):
    recon = UafpReconstruction.from_dataset(small_misaligned, UafpSettings(upsample=2, iterations=2))
    cancel = threading.Event()
    before = recon.model.system.led_geometry()

    def on_phase(phase: str, done: int, total: int) -> None:
        if phase == PHASE_START_GEOMETRY and done == 3:
            cancel.set()

    recon.on_phase = on_phase
    assert list(recon.run(cancel=cancel)) == []
    assert recon.iteration == 0 and recon.circle_fit is None
    assert recon.model.system.led_geometry() == before


def test_cli_bars_start_with_their_phase(capsys):
    """The iteration bar starts at the first iteration (its ETA excludes the start search) and counts
    this run's iterations: a run of 40 ends at 40, not 41."""
    from types import SimpleNamespace

    from uafp_gui.cli.progress import PhaseProgress

    with PhaseProgress(3) as progress:
        progress.on_phase(PHASE_START_GEOMETRY, 0, 10)
        progress.on_phase(PHASE_START_GEOMETRY, 10, 10)
        progress.on_phase(PHASE_START_SEARCH, 2, 5)
        assert progress.bar.total == 5 and progress.bar.n == 2
        progress.on_phase(PHASE_START_SEARCH, 6, 40)
        assert progress.bar.total == 40
        for iteration in (11, 12, 13):  # a continued run: 10 iterations were made before
            progress.iteration(SimpleNamespace(iteration=iteration, loss=0.1))
        assert progress.phase == "UA-FP" and progress.bar.n == 3 and progress.bar.total == 3
