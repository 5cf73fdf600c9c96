"""Every phase of a UA-FP run reports progress and can be stopped: the start-geometry fit, the start
search, the iterations; and the CLI shows each phase with its own bar (an ETA never spans phases)."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from uafp_gui.recon.choices import StopReason
from uafp_gui.recon.start import PHASE_START_GEOMETRY, PHASE_START_SEARCH
from uafp_gui.recon.uafp import PHASE_ERROR_BARS, PHASE_POLISH, UafpReconstruction, UafpSettings
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
    with PhaseProgress(3) as progress:  # the last iteration's polish and error bars come before its update
        progress.iteration(SimpleNamespace(iteration=1, loss=0.1))
        progress.iteration(SimpleNamespace(iteration=2, loss=0.1))
        progress.on_phase(PHASE_POLISH, 0, 8)
        progress.on_phase(PHASE_POLISH, 8, 8)
        assert progress.bar.unit == "batch"
        progress.on_phase(PHASE_ERROR_BARS, 4, 4)
        progress.iteration(SimpleNamespace(iteration=3, loss=0.1))
        assert progress.phase == "UA-FP" and progress.bar.n == 3


@pytest.mark.slow  # numerical run: the slow lane
@pytest.mark.parametrize("phase", [PHASE_POLISH, PHASE_ERROR_BARS])
def test_polish_and_error_bars_report_progress_and_stop_between_batches(small_misaligned, phase):
    """After the last iteration the Gauss-Newton polish and the error bars report their progress as
    phases; a Stop during either ends the run cancelled at the last iteration's state, without error bars."""
    settings = UafpSettings(upsample=2, iterations=3, init_geometry_from_data=False, polish_steps=1,
                            convergence_window=0)
    recon = UafpReconstruction.from_dataset(small_misaligned, settings)
    cancel = threading.Event()
    seen: list[tuple[str, int, int]] = []

    def on_phase(name: str, done: int, total: int) -> None:
        seen.append((name, done, total))
        if name == phase and done == 1:
            cancel.set()  # Stop during the second batch

    recon.on_phase = on_phase
    updates = list(recon.run(cancel=cancel))
    assert seen[0][:2] == (PHASE_POLISH, 0) and seen[-1][:2] == (phase, 1)
    assert all(total == seen[0][2] > 1 for name, _, total in seen if name == PHASE_POLISH)
    assert recon.stop_reason is StopReason.CANCELLED and updates[-1].stop_reason is StopReason.CANCELLED
    assert recon.iteration == 3 and torch.equal(recon.object.detach(), recon._last_good["object"])
    assert recon.calibration_uncertainty() is None and "led_geometry_std" not in recon.result().extra


@pytest.mark.slow  # numerical run: the slow lane
def test_a_run_to_its_end_reports_polish_and_error_bars_once(small_misaligned):
    settings = UafpSettings(upsample=2, iterations=3, init_geometry_from_data=False, polish_steps=1,
                            convergence_window=0)
    recon = UafpReconstruction.from_dataset(small_misaligned, settings)
    seen: list[tuple[str, int, int]] = []
    recon.on_phase = lambda name, done, total: seen.append((name, done, total))
    list(recon.run())
    polish = [entry for entry in seen if entry[0] == PHASE_POLISH]
    bars = [entry for entry in seen if entry[0] == PHASE_ERROR_BARS]
    assert polish[-1][1] == polish[-1][2] and [done for _, done, _ in polish] == sorted(done for _, done, _ in polish)
    # the error bars: computed in the run once (their own pass, or the polish's last pass when its step was dropped)
    assert (bars and bars[-1][1] == bars[-1][2]) or recon.polished_steps == 0
    assert recon._uncertainty is not None and recon._uncertainty[0] == 3
    before = len(seen)
    assert "led_geometry_std" in recon.result().extra and len(seen) == before  # result() reuses them
