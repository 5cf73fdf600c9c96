"""The app's views tell the truth: progress and Stop in every phase (the start fit and search
included), and every view shows the dataset or result that is open, nothing else."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from factories import GUI_SIMULATION

pytest.importorskip("pytestqt")
pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings  # noqa: E402

from uafp_gui.gui.dialogs import shown_errors  # noqa: E402
from uafp_gui.gui.main_window import MainWindow  # noqa: E402

SIMULATION = GUI_SIMULATION


@pytest.fixture
def window(qtbot, tmp_path):
    shown_errors.clear()
    settings = QSettings(str(tmp_path / "uafp-gui.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings, simulation=SIMULATION, probe_hardware=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.connected and window.engine_ready, timeout=180000)
    yield window
    window.close()
    for box in list(shown_errors):
        box.close()


def acquire(path: Path, size: int = 5) -> Path:
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


def open_dataset(window, qtbot, path: Path) -> None:
    window.open_path(path)
    qtbot.waitUntil(lambda: window.dataset is not None and window.dataset.path == path, timeout=30000)


def test_stop_during_the_start_fit_leaves_a_truthful_state(window, qtbot, tmp_path, monkeypatch):
    """The start fit shows its progress; Stop ends it (the fit checks between steps); afterwards the
    panel says nothing was made and offers Reconstruct, not Continue, and Export has nothing."""
    from uafp_gui.recon import selfcal

    def slow_circle_fit(*args, cancelled=None, **kwargs):  # a long fit that honours Stop, as the real one
        while not cancelled():
            time.sleep(0.01)
        raise selfcal.Cancelled

    monkeypatch.setattr(selfcal, "fit_geometry_from_circles", slow_circle_fit)
    open_dataset(window, qtbot, acquire(tmp_path / "run.tif"))
    panel = window.recon_panel
    panel.upsample.setValue(2)
    panel.start_button.click()
    qtbot.waitUntil(lambda: "Fitting the start geometry" in panel.status.text(), timeout=60000)
    assert panel.stop_button.isEnabled() and not panel.start_button.isEnabled()
    panel.stop_button.click()
    assert "Stopping" in panel.status.text() and not panel.stop_button.isEnabled()
    qtbot.waitUntil(lambda: window.reconstruction_settled, timeout=30000)
    qtbot.waitUntil(lambda: panel.start_button.isEnabled(), timeout=10000)
    assert panel.start_button.text() == "Reconstruct" and not panel.stop_button.isEnabled()
    assert "no reconstruction yet" in panel.status.text()
    assert window.recon_job.iterations_done == 0
    window.export_result(tmp_path / "out")
    qtbot.waitUntil(lambda: len(shown_errors) == 1, timeout=10000)
    assert "no reconstruction yet" in shown_errors[0].text()


@pytest.mark.slow  # a reconstruction in the GUI: the slow lane
def test_progress_then_finished_with_iteration_total(window, qtbot, tmp_path):
    open_dataset(window, qtbot, acquire(tmp_path / "run.tif"))
    panel = window.recon_panel
    panel.upsample.setValue(2)
    panel.iterations.setValue(4)
    panel.start_button.click()
    qtbot.waitUntil(lambda: "of 4" in panel.status.text(), timeout=120000)
    qtbot.waitUntil(lambda: window.reconstruction_settled, timeout=120000)
    qtbot.waitUntil(lambda: "Finished: 4 iterations" in panel.status.text(), timeout=10000)
    assert panel.start_button.text() == "Continue" and "-0.00" not in panel.status.text()


@pytest.mark.slow  # a reconstruction in the GUI: the slow lane
def test_open_dataset_clears_the_previous_reconstruction(window, qtbot, tmp_path):
    open_dataset(window, qtbot, acquire(tmp_path / "first.tif"))
    panel = window.recon_panel
    panel.upsample.setValue(2)
    panel.iterations.setValue(2)
    panel.start_button.click()
    qtbot.waitUntil(lambda: window.recon_worker is not None and window.reconstruction_settled, timeout=120000)
    assert panel.amplitude.image.image is not None and panel.loss_curve.getData()[0] is not None
    second = acquire(tmp_path / "second.tif", size=3)
    open_dataset(window, qtbot, second)
    # every reconstruction view is empty, the panel names the new dataset, Export has nothing
    for plot in (panel.amplitude, panel.phase, panel.spectrum, panel.pupil_amplitude, panel.pupil_phase):
        assert plot.image.image is None
    assert panel.loss_curve.getData()[0] is None or len(panel.loss_curve.getData()[0]) == 0
    assert len(panel.nominal_points.data) == 0
    assert "second.tif" in panel.status.text() and panel.start_button.text() == "Reconstruct"
    assert window.acquisition_panel.thumbnails.count() == 9
    window.export_result(tmp_path / "out")
    qtbot.waitUntil(lambda: len(shown_errors) == 1, timeout=10000)
    assert "no reconstruction yet" in shown_errors[0].text()


def test_open_result_shows_its_leds_and_geometry_at_the_led_maps_scale(window, qtbot, tmp_path):
    from uafp_gui.io.result import read_result
    from uafp_gui.simulate import simulate, write_simulation

    open_dataset(window, qtbot, acquire(tmp_path / "run.tif"))
    truth = write_simulation(simulate(replace(SIMULATION, led_grid=5, upsample=2)), tmp_path / "sim.tif")
    window.open_path(truth)
    qtbot.waitUntil(lambda: f"Result {truth.name}" in window.recon_panel.status.text(), timeout=30000)
    panel = window.recon_panel
    result = read_result(truth)
    g = result.calibration.led_geometry
    # LED positions: one arrow per frame of the result, at the LED map's magnification
    assert len(panel.nominal_points.data) == len(result.calibration.led_positions_mm) == 25
    assert panel.misalignment_magnify == window.led_map.magnify
    assert f"x{window.led_map.magnify:g}" in panel.misalignment_legend.getLabel(panel.misalignment_arrows).text
    heads = np.array([point.pos() for point in panel.estimated_points.points()])
    nominal = np.array([point.pos() for point in panel.nominal_points.points()])
    estimated = np.asarray(result.calibration.led_positions_mm)
    np.testing.assert_allclose(heads, nominal + (estimated - nominal) * window.led_map.magnify, atol=1e-6)
    # geometry traces: the result's final values, not the previous run's curves
    x, y = panel.trace_curves["shift x (mm)"].getData()
    np.testing.assert_allclose(y, [g.shift_x_mm])
    # nothing of the dataset that was open before
    assert window.dataset is None and window.recon_job is None
    assert window.acquisition_panel.thumbnails.count() == 0
    assert "result folder" in window.live_view.info.text()
    assert not shown_errors


def test_the_gui_words_an_acquisition_failure_without_the_clis_resume(qtbot, tmp_path):
    from uafp_gui.errors import LedArrayFailure
    from uafp_gui.gui.dialogs import show_error

    error = LedArrayFailure("lost. Acquisition stopped: 6 of 25 frames are saved", path=tmp_path / "r.tif",
                            frames_saved=6, frames_total=25)
    box = show_error(None, "Acquisition failed", error)
    try:
        assert "File > Open" in box.text() and "--resume" not in box.text()
    finally:
        box.close()


def test_hardware_microscope_takes_the_led_arrays_shape(window):
    """With hardware, the Devices panel describes the microscope and the connected array sets its shape."""
    from types import SimpleNamespace

    window.device_microscope = None
    window.led_array = SimpleNamespace(shape=(8, 9))
    try:
        microscope = window.microscope()
    finally:
        window.led_array = None
    assert microscope.led_array_shape == (8, 9)
    assert microscope.wavelength_um == window.devices_panel.microscope().wavelength_um
