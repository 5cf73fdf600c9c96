"""The Qt-free session layer both front ends use: opening a microscope from a choice, the one live
reconstruction driver, acquisition sessions."""

from __future__ import annotations

import numpy as np
import pytest
from factories import ACQUISITION_MICROSCOPE, ACQUISITION_SIMULATION, TINY_SETTINGS, dataset_of

from uafp_gui.acquisition.events import AcquisitionFinished, AcquisitionStarted, FrameAcquired
from uafp_gui.acquisition.plan import AcquisitionPlan
from uafp_gui.acquisition.runner import Acquisition
from uafp_gui.errors import ReconstructionError
from uafp_gui.session.acquisition import AcquisitionSession
from uafp_gui.session.microscope import MicroscopeChoice, open_microscope
from uafp_gui.session.reconstruction import JobProgress, LiveReconstruction, autosave_folder_for

pytestmark = pytest.mark.usefixtures("single_thread")

PLAN_3X3 = AcquisitionPlan(square_size=3, brightfield_exposure_ms=2.0)


def test_the_simulated_choice_opens_the_simulated_microscope():
    opened = open_microscope(MicroscopeChoice(realtime=False), ACQUISITION_SIMULATION)
    try:
        assert MicroscopeChoice().simulated
        assert opened.microscope == ACQUISITION_MICROSCOPE
        assert tuple(opened.led_array.shape) == tuple(ACQUISITION_SIMULATION.led_array_shape)
        assert opened.description == "simulated microscope camera, simulated LED array"
        assert opened.bit_depth > 8 and opened.simulation == ACQUISITION_SIMULATION
        opened.core.snapImage()
        assert np.asarray(opened.core.getImage()).shape == (64, 64)
    finally:
        opened.close()


def test_an_acquisition_session_without_reconstruction_yields_the_runs_events(tmp_path):
    opened = open_microscope(MicroscopeChoice(realtime=False), ACQUISITION_SIMULATION)
    try:
        session = AcquisitionSession(
            Acquisition(opened.core, opened.led_array, PLAN_3X3, tmp_path / "run.tif", ACQUISITION_MICROSCOPE)
        )
        events = list(session.events())
    finally:
        opened.close()
    assert isinstance(events[0], AcquisitionStarted) and isinstance(events[-1], AcquisitionFinished)
    assert sum(isinstance(event, FrameAcquired) for event in events) == 9


@pytest.mark.slow  # a numerical run beside an acquisition
def test_live_reconstruction_follows_the_acquisition_on_its_own_thread(tmp_path):
    """The CLI's way: the reconstruction iterates on a thread while frames arrive, then its final iterations."""
    opened = open_microscope(MicroscopeChoice(realtime=False), ACQUISITION_SIMULATION)
    live = LiveReconstruction(TINY_SETTINGS.replace(iterations=2, batch_size=9, upsample=2))
    updates = []
    live.on_update = updates.append
    try:
        acquisition = Acquisition(opened.core, opened.led_array, PLAN_3X3, tmp_path / "run.tif", ACQUISITION_MICROSCOPE)
        session = AcquisitionSession(acquisition, live)
        assert live.acquiring.is_set()
        live.start_thread(2)
        for _ in session.events():
            pass
        assert not live.acquiring.is_set()  # the session told it the acquisition ended
        result = live.finish()
    finally:
        opened.close()
    assert result.extra["frames_used"] == 9 and np.isfinite(result.final_loss)
    assert updates and updates[-1].iteration == result.iterations
    assert live.frames_arrived == 9
    report = live.lag_report()
    assert np.isfinite(report.latency_median_s) and report.latency_max_s >= report.latency_median_s
    assert "live reconstruction" in report.describe()


def test_a_dataset_reconstruction_runs_its_iterations_then_continues(tiny):
    settings = TINY_SETTINGS.replace(  # no start fit, no Gauss-Newton steps: the driver, quickly
        iterations=2, init_geometry_from_data=False, polish_steps=0, geometry_newton_steps=0
    )
    job = LiveReconstruction(settings, dataset=dataset_of(tiny))
    assert [update.iteration for update in job.run()] == [1, 2]
    assert job.progress.phase == "iterating" and job.progress.done == 2 and job.progress.total == 2
    assert [update.iteration for update in job.run(1)] == [3]
    assert job.iterations_done == 3 and len(job.history) == 3


def test_a_live_reconstruction_whose_acquisition_never_started_ends_without_a_result():
    job = LiveReconstruction(TINY_SETTINGS)
    job.acquiring.set()
    job.start_thread()
    job.ended()  # e.g. the acquisition failed before its first frame
    with pytest.raises(ReconstructionError, match="has not run yet"):
        job.finish()


def test_progress_eta_and_autosave_folder(tmp_path):
    progress = JobProgress("iterating", done=3, total=10, started=0.0, first_done=1)
    assert progress.eta_s(4.0) == pytest.approx(14.0)  # 2 timed steps in 4 s, 7 to go
    assert JobProgress("iterating", 0, 10, 0.0).eta_s(1.0) is None
    assert autosave_folder_for(tmp_path / "run.tif", tmp_path / "fallback") == tmp_path / "run_autosave"
    assert autosave_folder_for(None, tmp_path / "fallback") == tmp_path / "fallback" / "reconstruction_autosave"


@pytest.mark.slow  # end to end through the CLI: an acquisition with UA-FP reconstructing live
def test_cli_acquire_reconstructs_live_through_the_session(tmp_path, capsys):
    from uafp_gui.cli import main
    from uafp_gui.io.result import read_result

    out = tmp_path / "run.tif"
    code = main(["acquire", "--simulate", "--out", str(out), "--leds", "5x5", "--sim-no-wait", "--reconstruct",
                 "--iterations", "2", "--device", "cpu", "--seed", "3"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "live reconstruction" in printed and "wrote" in printed
    result = read_result(tmp_path / "run_result")
    assert result.calibration.iterations >= 2 and np.isfinite(result.amplitude).all()
