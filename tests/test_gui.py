"""The desktop app under pytest-qt (offscreen): the simulated microscope end to end, error
dialogs, responsiveness, layout persistence, clean shutdown mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import GUI_SIMULATION
from gui_probe import DrawProbe, EventLoopMonitor

pytest.importorskip("pytestqt")
pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from uafp_gui.gui.dialogs import shown_errors  # noqa: E402
from uafp_gui.gui.main_window import MainWindow  # noqa: E402

SIMULATION = GUI_SIMULATION
FROZEN_UI_MS = 1500  # an event-loop stall this long is a frozen UI, whatever else the machine runs
TRUE_GEOMETRY = SIMULATION.true_geometry


PROBES: dict[int, DrawProbe] = {}


def drawn(window: MainWindow) -> DrawProbe:
    """What `window` drew of its reconstruction (updates, frame -> display lag)."""
    return PROBES[id(window)]


def make_window(qtbot, tmp_path: Path, connect: bool = True) -> MainWindow:
    settings = QSettings(str(tmp_path / "uafp-gui.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings, simulation=SIMULATION, probe_hardware=False, connect_on_start=connect)
    PROBES[id(window)] = DrawProbe(window)
    qtbot.addWidget(window)
    window.show()
    return window


@pytest.fixture
def window(qtbot, tmp_path):
    shown_errors.clear()
    window = make_window(qtbot, tmp_path)
    qtbot.waitUntil(lambda: window.connected and window.engine_ready, timeout=180000)
    yield window
    window.close()
    for box in list(shown_errors):
        box.close()


def small_run(window: MainWindow, out: Path, size: int = 5, iterations: int = 8) -> None:
    window.acquisition_panel.square_size.setValue(size)
    window.acquisition_panel.output.setText(str(out))
    window.recon_panel.upsample.setValue(2)
    window.recon_panel.iterations.setValue(iterations)


def acquire_dataset(path: Path, size: int = 5) -> Path:
    """A dataset from the simulated microscope, without the GUI."""
    from uafp_gui.acquisition.plan import AcquisitionPlan, MicroscopeDescription
    from uafp_gui.acquisition.runner import Acquisition
    from uafp_gui.simulated.microscope import open_simulated_microscope

    core, led_array = open_simulated_microscope(SIMULATION, realtime=False)
    try:
        Acquisition(core, led_array, AcquisitionPlan(square_size=size), path,
                    MicroscopeDescription.from_simulation(SIMULATION)).run_to_end()
    finally:
        led_array.close()
    return path


def test_startup_says_simulated_microscope(window):
    assert "simulated microscope" in window.statusBar().currentMessage()
    assert window.connection_label.text() == "Simulated microscope"
    assert window.led_map.leds.data.size == 32 * 32


@pytest.mark.slow  # end to end in the GUI: the slow lane
def test_end_to_end_connect_acquire_reconstruct_export(window, qtbot, tmp_path):
    from uafp_gui.io.dataset import read_dataset
    from uafp_gui.io.result import read_pixel_size_um, read_result

    qtbot.mouseClick(window.devices_panel.connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.connected, timeout=20000)
    out = tmp_path / "run.tif"
    small_run(window, out)
    qtbot.mouseClick(window.acquisition_panel.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.acquisition_panel.progress.value() == 25, timeout=30000)
    qtbot.waitUntil(lambda: window.acquisition_panel.thumbnails.count() == 25, timeout=5000)  # a few per tick
    qtbot.waitUntil(lambda: drawn(window).updates_drawn >= 1, timeout=30000)  # live updates reach the views
    qtbot.waitUntil(lambda: window.reconstruction_settled, timeout=180000)  # a wait: the machine may be shared
    assert drawn(window).updates_drawn >= 2
    status = window.recon_panel.status.text()
    assert "25 frames" in status and ("Finished" in status or "Converged after" in status), status
    assert drawn(window).frame_lag_s().size == 25 and np.all(drawn(window).frame_lag_s() >= 0)
    assert window.recon_panel.start_button.text() == "Continue"
    assert window.led_map.led_geometry is not None  # estimated LED positions drawn on the map
    assert len(window.recon_panel.trace_curves["shift x (mm)"].getData()[0]) >= 2
    assert not shown_errors

    result_folder = tmp_path / "result"
    window.export_panel.folder.setText(str(result_folder))
    qtbot.mouseClick(window.export_panel.export_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.last_export is not None, timeout=30000)

    dataset = read_dataset(out)
    assert dataset.frames.shape == (25, 64, 64)
    for name in ("amplitude.tif", "phase.tif", "pupil.tif", "calibration.json", "report.png"):
        assert (result_folder / name).is_file(), name
    result = read_result(result_folder)
    assert result.amplitude.dtype == np.float32 and result.phase.dtype == np.float32
    assert result.amplitude.shape == result.phase.shape == (128, 128)
    assert result.pupil.shape[0] == 2 and result.pupil.dtype == np.float32
    assert np.abs(result.phase).max() <= np.pi + 1e-5
    calibration = json.loads((result_folder / "calibration.json").read_text())
    assert calibration["format"] == "uafp-calibration" and calibration["version"] == 1
    assert set(calibration["led_geometry"]) == {"shift_x_mm", "shift_y_mm", "rotation_deg", "height_mm"}
    assert all(key.isdigit() for key in calibration["zernike_rad"])
    assert len(calibration["frame_gain"]) == 25
    assert np.asarray(calibration["led_positions_mm"]).shape == (25, 2)
    sample_pixel_um = dataset.meta.camera_pixel_um / dataset.meta.magnification
    assert calibration["object_pixel_um"] == pytest.approx(sample_pixel_um / 2, rel=1e-6)
    assert read_pixel_size_um(result_folder / "amplitude.tif") == pytest.approx(sample_pixel_um / 2, rel=1e-3)
    assert calibration["iterations"] >= 8 and np.isfinite(calibration["final_loss"])
    assert calibration["source_dataset"] == "run.tif"
    geometry = calibration["led_geometry"]  # the hidden misalignment is found (loosely: 5x5 LEDs, 8 iterations)
    assert abs(geometry["shift_x_mm"] - TRUE_GEOMETRY.shift_x_mm) < 0.6
    assert abs(geometry["shift_y_mm"] - TRUE_GEOMETRY.shift_y_mm) < 0.6
    assert str(result_folder.resolve()) in window._recent()


def test_led_array_disconnected_shows_error_dialog(window, qtbot):
    window.led_map.led_clicked.emit(16, 16)
    qtbot.waitUntil(lambda: window.led_array.lit == frozenset({(16, 16)}), timeout=5000)
    window.led_array.disconnect()  # the simulated cable is pulled
    window.led_map.led_clicked.emit(16, 17)
    qtbot.waitUntil(lambda: len(shown_errors) == 1, timeout=10000)
    box = shown_errors[0]
    assert box.windowTitle() == "LED array error"
    assert "disconnected" in box.text() and "USB cable" in box.text()
    assert box.isVisible()
    box.close()
    qtbot.waitUntil(lambda: not shown_errors, timeout=2000)


def test_led_array_disconnected_during_acquisition(window, qtbot, tmp_path):
    small_run(window, tmp_path / "run.tif")
    window.acquisition_panel.reconstruct_live.setChecked(False)
    window.led_array.disconnect()
    window.acquisition_panel.start_button.click()
    qtbot.waitUntil(lambda: len(shown_errors) == 1, timeout=20000)
    assert shown_errors[0].windowTitle() == "Acquisition failed"
    assert "LED" in shown_errors[0].text()
    qtbot.waitUntil(lambda: window.acquisition_panel.start_button.isEnabled(), timeout=5000)


def test_invalid_dataset_shows_error_dialog(window, qtbot, tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a TIFF file" * 10)
    window.open_path(bad)
    qtbot.waitUntil(lambda: len(shown_errors) == 1, timeout=10000)
    assert shown_errors[0].windowTitle() == "Cannot open the dataset"
    assert "broken.tif" in shown_errors[0].text()
    assert window.dataset is None


@pytest.mark.slow  # long, and a timing figure: the slow lane (benchmarks/bench_gui_responsiveness.py measures it)
def test_ui_stays_responsive_during_reconstruction(window, qtbot, tmp_path):
    path = acquire_dataset(tmp_path / "run.tif")
    window.open_path(path)
    qtbot.waitUntil(lambda: window.dataset is not None, timeout=20000)
    window.recon_panel.upsample.setValue(2)
    window.recon_panel.iterations.setValue(15)
    monitor = EventLoopMonitor(interval_ms=5)
    monitor.start()
    window.recon_panel.start_button.click()
    qtbot.waitUntil(lambda: window.recon_worker is not None and window.reconstruction_settled, timeout=180000)
    monitor.stop()
    worst, p99 = monitor.stall_ms()
    assert drawn(window).updates_drawn >= 2
    assert len(monitor.gaps_ms) > 100
    # A frozen UI fails; the figure itself (stalls well under 100 ms on an idle machine) is measured by
    # benchmarks/bench_gui_responsiveness.py: a tight bound here only measured the other jobs on a shared runner.
    assert worst < FROZEN_UI_MS, f"event loop stalled {worst:.0f} ms (p99 {p99:.0f} ms)"


@pytest.mark.slow  # as above
def test_ui_stays_responsive_during_acquisition_with_live_reconstruction(window, qtbot, tmp_path):
    small_run(window, tmp_path / "run.tif", size=7, iterations=8)
    monitor = EventLoopMonitor(interval_ms=5)
    monitor.start()
    window.acquisition_panel.start_button.click()
    qtbot.waitUntil(lambda: window.acq_worker is not None and window.acq_worker.isFinished(), timeout=60000)
    qtbot.waitUntil(lambda: window.recon_worker is not None and window.reconstruction_settled, timeout=180000)
    monitor.stop()
    worst, p99 = monitor.stall_ms()
    assert drawn(window).updates_drawn >= 2 and window.acquisition_panel.thumbnails.count() == 49
    assert len(monitor.gaps_ms) > 100
    # A frozen UI fails; the figure itself (stalls well under 100 ms on an idle machine) is measured by
    # benchmarks/bench_gui_responsiveness.py: a tight bound here only measured the other jobs on a shared runner.
    assert worst < FROZEN_UI_MS, f"event loop stalled {worst:.0f} ms (p99 {p99:.0f} ms)"
    assert not shown_errors


@pytest.mark.slow  # end to end in the GUI: the slow lane
def test_stop_and_continue_reconstruction(window, qtbot, tmp_path):
    window.open_path(acquire_dataset(tmp_path / "run.tif"))
    qtbot.waitUntil(lambda: window.dataset is not None, timeout=20000)
    window.recon_panel.upsample.setValue(2)
    window.recon_panel.iterations.setValue(500)
    window.recon_panel.start_button.click()
    qtbot.waitUntil(lambda: drawn(window).updates_drawn >= 1, timeout=30000)
    window.recon_panel.stop_button.click()
    qtbot.waitUntil(lambda: window.reconstruction_settled, timeout=10000)
    stopped_at = window.recon_job.recon.iteration
    assert stopped_at < 500
    # Stop wrote the last good state next to the dataset, marked partial, and the panel says so.
    saved = window.recon_job.autosaved
    assert saved == tmp_path / "run_autosave"
    calibration = json.loads((saved / "calibration.json").read_text())
    assert calibration["partial"] is True and calibration["stop_reason"] == "cancelled"
    assert calibration["iterations"] == stopped_at
    assert "PARTIAL: cancelled" in window.recon_panel.status.text()
    window.recon_panel.iterations.setValue(2)
    window.recon_panel.start_button.click()  # Continue
    qtbot.waitUntil(lambda: window.reconstruction_settled, timeout=120000)
    assert window.recon_job.recon.iteration == stopped_at + 2


@pytest.mark.slow  # end to end in the GUI: the slow lane
def test_calibration_profile_round_trip(window, qtbot, tmp_path):
    window.open_path(acquire_dataset(tmp_path / "run.tif"))
    qtbot.waitUntil(lambda: window.dataset is not None, timeout=20000)
    window.recon_panel.upsample.setValue(2)
    window.recon_panel.iterations.setValue(3)
    window.recon_panel.start_button.click()
    qtbot.waitUntil(lambda: window.recon_worker is not None and window.reconstruction_settled, timeout=120000)
    profile = tmp_path / "scope.json"
    window.save_calibration(profile)
    qtbot.waitUntil(profile.exists, timeout=10000)
    window.clear_calibration()
    window.load_calibration(profile)
    qtbot.waitUntil(lambda: window.calibration is not None, timeout=10000)
    assert window.calibration.led_geometry == window.recon_job.recon.model.system.led_geometry()
    assert not shown_errors


def test_layout_and_settings_are_remembered(qtbot, tmp_path):
    first = make_window(qtbot, tmp_path, connect=False)
    first.docks["live"].hide()
    first.acquisition_panel.output.setText(str(tmp_path / "next.tif"))
    first.close()
    second = make_window(qtbot, tmp_path, connect=False)
    assert not second.docks["live"].isVisible()
    assert second.docks["ledmap"].isVisible()
    assert second.acquisition_panel.output.text() == str(tmp_path / "next.tif")
    second.close()


@pytest.mark.slow  # end to end in the GUI: the slow lane
def test_closing_mid_acquisition_stops_workers_and_keeps_frames(qtbot, tmp_path):
    from uafp_gui.io.dataset import read_dataset

    shown_errors.clear()
    window = make_window(qtbot, tmp_path)
    qtbot.waitUntil(lambda: window.connected, timeout=20000)
    out = tmp_path / "run.tif"
    small_run(window, out, size=15, iterations=5)
    window.recon_panel.upsample.setValue(4)  # 15x15 LEDs reach beyond a 2x grid
    window.acquisition_panel.exposure.setValue(20.0)  # 225 frames x 20 ms: still running when closed
    window.acquisition_panel.start_button.click()
    qtbot.waitUntil(lambda: window.acquisition_panel.progress.value() >= 5, timeout=30000)
    acquisition, recon = window.acq_worker, window.recon_worker
    window.close()  # returns within about a second; a job still ending is detached, never destroyed
    qtbot.waitUntil(lambda: acquisition.isFinished() and recon.isFinished(), timeout=30000)
    with pytest.warns(UserWarning):  # a partial dataset opens, with a warning
        dataset = read_dataset(out)
    assert 5 <= len(dataset.frames) < 225
    assert not shown_errors, [box.text() for box in shown_errors]


def test_uafp_gui_subcommand_is_registered():
    from uafp_gui.cli import build_parser

    args = build_parser().parse_args(["gui", "--no-probe", "--frame-size", "64"])
    assert args.command == "gui" and args.no_probe and args.frame_size == 64


@pytest.mark.parametrize("phase", ["reconstructing", "live"])
def test_quit_in_any_phase_never_destroys_a_running_thread(qtbot, tmp_path, phase):
    """Close the window while a job runs: every worker is stopped and muted or detached (kept alive
    until it ends), so Qt never destroys a running QThread and no worker emits into a closing widget."""
    from uafp_gui.gui import workers

    shown_errors.clear()
    window = make_window(qtbot, tmp_path)
    qtbot.waitUntil(lambda: window.connected, timeout=20000)
    if phase == "live":
        window.live_view.set_live(True)
        window.set_live(True)
        qtbot.waitUntil(lambda: window.live_worker is not None and window.live_worker.isRunning(), timeout=10000)
        worker = window.live_worker
    else:
        window.open_path(acquire_dataset(tmp_path / "run.tif"))
        qtbot.waitUntil(lambda: window.dataset is not None, timeout=20000)
        window.recon_panel.upsample.setValue(2)
        window.recon_panel.iterations.setValue(100000)
        window.recon_panel.start_button.click()
        qtbot.waitUntil(lambda: drawn(window).updates_drawn >= 1, timeout=60000)  # iterating (past the start search)
        worker = window.recon_worker
    window.close()
    assert worker._muted and worker.stopping
    assert worker.isFinished() or worker in workers._DETACHED
    qtbot.waitUntil(worker.isFinished, timeout=30000)
    assert workers.wait_for_detached(10.0)
    assert not shown_errors
