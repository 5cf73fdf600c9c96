"""Reconstruction panel: what UA-FP sees now, and its controls.

Amplitude, phase, log spectrum, pupil amplitude and phase, Zernike bars, LED misalignment
(per-frame nominal vs estimated), loss curve, traces of shift / rotation / height over
iterations, frame gains. `show_update` draws one `ReconstructionUpdate`; the main window
calls it from a timer (a few times a second) with the newest update only.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from uafp_gui.gui.images import ImagePlot

__all__ = ["ReconPanel"]

LEARNABLE = (  # UafpSettings field -> label
    ("learn_geometry", "LED geometry"),
    ("learn_zernike", "Zernike pupil"),
    ("learn_gains", "frame gains"),
    ("learn_freeform", "free-form pupil"),
    ("learn_led_residuals", "per-LED residuals"),
    ("learn_background", "background"),
)


class ReconPanel(QWidget):
    start_requested = Signal()  # start, or continue from the current state
    stop_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.graphics = pg.GraphicsLayoutWidget()
        self.amplitude = ImagePlot("amplitude")
        self.phase = ImagePlot("phase (rad)", "CET-C6")
        self.spectrum = ImagePlot("log spectrum", "viridis")
        self.pupil_amplitude = ImagePlot("pupil amplitude")
        self.pupil_phase = ImagePlot("pupil phase (rad)", "CET-C6")
        self.graphics.addItem(self.amplitude, 0, 0)
        self.graphics.addItem(self.phase, 0, 1)
        self.graphics.addItem(self.spectrum, 0, 2)
        self.graphics.addItem(self.pupil_amplitude, 0, 3)
        self.graphics.addItem(self.pupil_phase, 1, 0)

        self.misalignment = self.graphics.addPlot(1, 1, title="LEDs: nominal -> estimated")
        self.misalignment.setAspectLocked(True)
        self.misalignment.invertY(True)
        self.nominal_points = pg.ScatterPlotItem(size=5, brush=pg.mkBrush(150, 150, 150), pen=None)
        self.estimated_points = pg.ScatterPlotItem(size=5, brush=pg.mkBrush("r"), pen=None)
        self.misalignment_arrows = pg.PlotDataItem(pen=pg.mkPen("r"), connect="pairs")
        for item in (self.nominal_points, self.misalignment_arrows, self.estimated_points):
            self.misalignment.addItem(item)

        self.zernike = self.graphics.addPlot(1, 2, title="Zernike (rad, Noll j)")
        self.zernike_bars = pg.BarGraphItem(x=[], height=[], width=0.7, brush=(60, 110, 200))
        self.zernike.addItem(self.zernike_bars)
        self.gains = self.graphics.addPlot(1, 3, title="frame gains")
        self.gain_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=(90, 160, 90))
        self.gains.addItem(self.gain_bars)

        self.loss = self.graphics.addPlot(2, 0, 1, 2, title="loss")
        self.loss.setLogMode(y=True)
        self.loss.setLabel("bottom", "iteration")
        self.loss_curve = self.loss.plot(pen=pg.mkPen((200, 60, 0), width=2))
        self.traces = self.graphics.addPlot(2, 2, 1, 2, title="LED geometry over iterations")
        self.traces.addLegend(offset=(5, 5))
        self.traces.setLabel("bottom", "iteration")
        self.trace_curves = {
            "shift x (mm)": self.traces.plot(pen=pg.mkPen("r", width=2), name="shift x (mm)"),
            "shift y (mm)": self.traces.plot(pen=pg.mkPen("b", width=2), name="shift y (mm)"),
            "rotation (deg)": self.traces.plot(pen=pg.mkPen((0, 150, 0), width=2), name="rotation (deg)"),
            "height - start (mm)": self.traces.plot(pen=pg.mkPen("m", width=2), name="height - start (mm)"),
        }
        for plot in (self.misalignment, self.zernike, self.gains, self.loss, self.traces):
            plot.getAxis("left").setWidth(44)  # fixed: changing tick labels must not re-lay out every plot
        self._pending = None
        grid = self.graphics.ci.layout
        for row, stretch in enumerate((3, 2, 2)):
            grid.setRowStretchFactor(row, stretch)
        layout.addWidget(self.graphics, 1)

        controls = QHBoxLayout()
        self.start_button = QPushButton("Reconstruct")
        self.start_button.setObjectName("reconstructButton")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.start_requested)
        self.stop_button.clicked.connect(self.stop_requested)
        controls.addWidget(self.start_button)
        controls.addWidget(self.stop_button)
        self.status = QLabel("No reconstruction yet")
        controls.addWidget(self.status, 1)
        layout.addLayout(controls)

        settings = QGroupBox("Settings (apply to the next new reconstruction; iterations also to Continue)")
        grid = QGridLayout(settings)
        self.upsample = QSpinBox()
        self.upsample.setRange(1, 8)
        self.upsample.setValue(4)
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 10000)
        self.iterations.setValue(40)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        grid.addWidget(QLabel("Upsample"), 0, 0)
        grid.addWidget(self.upsample, 0, 1)
        grid.addWidget(QLabel("Iterations"), 0, 2)
        grid.addWidget(self.iterations, 0, 3)
        grid.addWidget(QLabel("Device"), 0, 4)
        grid.addWidget(self.device, 0, 5)
        self.learn: dict[str, QCheckBox] = {}
        for k, (name, label) in enumerate(LEARNABLE):
            box = QCheckBox(f"learn {label}")
            self.learn[name] = box
            grid.addWidget(box, 1 + k // 3, 2 * (k % 3), 1, 2)
        from uafp_gui.recon.uafp import UafpSettings

        self.show_settings(UafpSettings())
        layout.addWidget(settings)
        self.set_running(False, has_state=False)

    # ---- settings --------------------------------------------------------------------------
    def show_settings(self, settings) -> None:
        self.upsample.setValue(settings.upsample)
        from uafp_gui.recon.uafp import default_iterations

        self.iterations.setValue(settings.iterations or default_iterations(225))
        self.device.setCurrentText(settings.device)
        for name, box in self.learn.items():
            box.setChecked(bool(getattr(settings, name)))

    def settings(self, base=None):
        """`UafpSettings` from the controls (other fields from `base`)."""
        from uafp_gui.recon.uafp import UafpSettings

        base = base or UafpSettings()
        changes = {name: box.isChecked() for name, box in self.learn.items()}
        settings = base.replace(
            upsample=self.upsample.value(), iterations=self.iterations.value(), device=self.device.currentText(),
            **changes,
        )
        settings.validate()
        return settings

    def set_running(self, running: bool, *, has_state: bool) -> None:
        self.start_button.setEnabled(not running)
        self.start_button.setText("Continue" if has_state else "Reconstruct")
        self.stop_button.setEnabled(running)

    # ---- drawing ---------------------------------------------------------------------------
    def show_update(self, update, history=(), defer_plots: bool = False) -> None:
        """Draw `update`; with `defer_plots` the images now and the plots at `flush()`."""
        self.amplitude.show_array(update.amplitude)
        self.phase.show_array(update.phase, levels=(-np.pi, np.pi))
        self.spectrum.show_array(update.log_spectrum)
        support = update.pupil_amplitude > 1e-3
        self.pupil_amplitude.show_array(update.pupil_amplitude)
        self.pupil_phase.show_array(np.where(support, update.pupil_phase, 0.0))
        g = update.geometry
        self.status.setText(
            f"iteration {update.iteration}  loss {update.loss:.4g}  frames {update.frames_used}  "
            f"shift ({g.shift_x_mm:+.2f}, {g.shift_y_mm:+.2f}) mm  rot {g.rotation_deg:+.2f} deg  "
            f"h {g.height_mm:.1f} mm  {update.elapsed_s:.1f} s"
        )
        self._pending = (update, history)
        if not defer_plots:
            self.flush()

    def flush(self) -> None:
        """Draw the plots of the last update shown, if not drawn yet."""
        if self._pending is None:
            return
        update, history = self._pending
        self._pending = None
        self._show_leds(update.nominal_led_positions_mm, update.led_positions_mm)
        indices = sorted(j for j in update.zernike_rad if j >= 2)
        self.zernike_bars.setOpts(x=indices, height=[update.zernike_rad[j] for j in indices])
        gains = np.asarray(update.frame_gain, dtype=float)
        self.gain_bars.setOpts(x=np.arange(len(gains)), height=gains / (np.median(gains) or 1.0))
        losses = np.asarray(update.loss_history, dtype=float)
        if losses.size:
            self.loss_curve.setData(np.arange(1, losses.size + 1), np.clip(losses, 1e-12, None))
        if len(history):
            data = np.asarray(history, dtype=float)
            columns = (data[:, 1], data[:, 2], data[:, 3], data[:, 4] - data[0, 4])
            for curve, values in zip(self.trace_curves.values(), columns, strict=True):
                curve.setData(data[:, 0], values)

    def _show_leds(self, nominal, estimated) -> None:
        nominal = np.asarray(nominal, dtype=float)
        estimated = np.asarray(estimated, dtype=float)[: len(nominal)]
        nominal = nominal[: len(estimated)]
        self.nominal_points.setData(pos=nominal)
        self.estimated_points.setData(pos=estimated)
        pairs = np.empty((2 * len(nominal), 2))
        pairs[0::2] = nominal
        pairs[1::2] = estimated
        self.misalignment_arrows.setData(pairs[:, 0], pairs[:, 1])

    def show_result(self, result) -> None:
        """Draw a result read from disk (`uafp_gui.io.result.Result`)."""
        self.amplitude.show_array(result.amplitude)
        self.phase.show_array(result.phase, levels=(-np.pi, np.pi))
        spectrum = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(result.object_field))))
        self.spectrum.show_array(spectrum)
        self.pupil_amplitude.show_array(result.pupil[0])
        self.pupil_phase.show_array(np.where(result.pupil[0] > 1e-3, result.pupil[1], 0.0))
        cal = result.calibration
        indices = sorted(j for j in cal.zernike_rad if j >= 2)
        self.zernike_bars.setOpts(x=indices, height=[cal.zernike_rad[j] for j in indices])
        gains = np.asarray(cal.frame_gain, dtype=float)
        if gains.size:
            self.gain_bars.setOpts(x=np.arange(len(gains)), height=gains / (np.median(gains) or 1.0))
        history = np.asarray(cal.extra.get("loss_history", []), dtype=float)
        if history.size:
            self.loss_curve.setData(np.arange(1, history.size + 1), np.clip(history, 1e-12, None))
        g = cal.led_geometry
        self.status.setText(
            f"result {result.folder}: {cal.iterations} iterations, shift ({g.shift_x_mm:+.2f}, "
            f"{g.shift_y_mm:+.2f}) mm, rot {g.rotation_deg:+.2f} deg, h {g.height_mm:.1f} mm"
        )
