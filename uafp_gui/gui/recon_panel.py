"""Reconstruction panel: what UA-FP sees now, and its controls.

Amplitude, phase, log spectrum, pupil amplitude and phase, Zernike bars, LED misalignment
(per-frame nominal vs estimated), loss curve, traces of shift / rotation / height over
iterations, frame gains. `show_update` draws one `ReconstructionUpdate`; the main window
calls it from a timer (a few times a second) with the newest update only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from uafp_gui.gui.images import DIVERGING_PHASE, ImagePlot, phase_view
from uafp_gui.recon.choices import Device, parse_device

if TYPE_CHECKING:
    from uafp_gui.recon.uafp import ReconstructionUpdate

__all__ = ["ReconPanel"]

FIELD_MODES = (  # what Reconstruct runs on: mode -> label
    ("frame", "the whole frame as one field"),
    ("tiles", "full field: tiles in parallel, stitched"),
    ("region", "a region (drawn on the live view, or typed)"),
)

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
        outer = self.graphics.ci
        # Each row is its own layout: column widths are not shared between rows, so the image
        # views (rows 0 and 1, three equal square cells each) all get the same size.
        image_rows = [outer.addLayout(row=0, col=0), outer.addLayout(row=1, col=0)]
        plot_row = outer.addLayout(row=2, col=0)
        self.amplitude = ImagePlot("amplitude")
        self.phase = ImagePlot("phase (rad)", DIVERGING_PHASE)
        self.spectrum = ImagePlot("log spectrum", "viridis")
        self.pupil_amplitude = ImagePlot("pupil amplitude")
        self.pupil_phase = ImagePlot("pupil phase (rad)", DIVERGING_PHASE)
        self.misalignment = pg.PlotItem(title="LED positions (mm)")
        cells = (self.amplitude, self.phase, self.spectrum, self.pupil_amplitude, self.pupil_phase, self.misalignment)
        for k, item in enumerate(cells):
            image_rows[k // 3].addItem(item, row=0, col=k % 3)
        for item in cells:  # same hints and stretch: equal cells, whatever the titles and axes
            item.setPreferredSize(200, 200)
            item.setMinimumSize(60, 60)
        for layout_row in image_rows:
            for col in range(3):
                layout_row.layout.setColumnStretchFactor(col, 1)

        self.misalignment.setAspectLocked(True)
        self.misalignment.invertY(True)
        self.misalignment.hideButtons()
        self.misalignment_legend = self.misalignment.addLegend(
            offset=(2, 2), labelTextSize="7pt", brush=pg.mkBrush(255, 255, 255, 200), verSpacing=-6
        )
        self.nominal_points = pg.ScatterPlotItem(
            size=6, brush=None, pen=pg.mkPen(130, 130, 130, width=1), name="nominal"
        )
        self.misalignment_arrows = pg.PlotDataItem(pen=pg.mkPen((210, 0, 0), width=1.5), connect="pairs",
                                                   name=self._arrow_label(1.0))
        self.estimated_points = pg.ScatterPlotItem(size=4, brush=pg.mkBrush(210, 0, 0), pen=None)
        for item in (self.nominal_points, self.misalignment_arrows, self.estimated_points):
            self.misalignment.addItem(item)
        self.misalignment_magnify = 1.0
        self.led_pitch_mm: float | None = None  # the LED array's pitch, when the window knows it
        self._pitch_found: tuple[int, float | None] = (-1, None)
        self._led_bounds: tuple[float, ...] = ()

        self.zernike = plot_row.addPlot(0, 0, title="Zernike (rad)")
        self.zernike.setLabel("bottom", "Noll j")
        self.zernike_bars = pg.BarGraphItem(x=[], height=[], width=0.7, brush=(60, 110, 200), pen=None)
        self.zernike.addItem(self.zernike_bars)
        self.gains = plot_row.addPlot(0, 1, title="frame gains")
        self.gain_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=(90, 160, 90), pen=(90, 160, 90))
        self.gains.addItem(self.gain_bars)

        # log10 on a linear axis: a log axis labels its minor ticks, and they overlap.
        self.loss = plot_row.addPlot(0, 2, title="loss (log10)")
        self.loss.setLabel("bottom", "iteration")
        self.loss_curve = self.loss.plot(pen=pg.mkPen((200, 60, 0), width=2))
        self.traces = plot_row.addPlot(0, 3, title="geometry (mm, deg)")
        # The LED geometry's traces. The colour key is the x-axis label, outside the plot: an in-plot legend
        # hid the curves and was cut where the cell is narrow (a 1500 px window); title and key stay short.
        trace_colours = {"shift x (mm)": ("x", "#d00000"), "shift y (mm)": ("y", "#0000d0"),
                         "rotation (deg)": ("rot", "#009600"), "height - start (mm)": ("h-h0", "#c000c0")}
        self.trace_key = " ".join(f'<span style="color:{c}">{name}</span>' for name, c in trace_colours.values())
        self.traces.setLabel("bottom", self.trace_key)  # against the iteration, as the loss beside it
        self.trace_curves = {
            key: self.traces.plot(pen=pg.mkPen(colour, width=2)) for key, (_, colour) in trace_colours.items()
        }
        for col, plot in enumerate((self.zernike, self.gains, self.loss, self.traces)):
            plot.setPreferredSize(150, 150)
            plot.setMinimumSize(60, 60)
            plot_row.layout.setColumnStretchFactor(col, 1)
        for item in (*cells, self.zernike, self.gains, self.loss, self.traces):
            item.setTitle(item.titleLabel.text, size="9pt")  # short titles, small: a title sets a cell's minimum width
        for plot in (self.misalignment, self.zernike, self.gains, self.loss, self.traces):
            plot.getAxis("left").setWidth(36)  # fixed: changing tick labels must not re-lay out every plot
            plot.hideButtons()
        self._pending: tuple[ReconstructionUpdate, Sequence[tuple]] | None = None
        for row, stretch in enumerate((3, 3, 2)):
            outer.layout.setRowStretchFactor(row, stretch)
        layout.addWidget(self.graphics, 1)
        self.setMinimumWidth(520)  # below this the plots' titles and axes no longer fit

        controls = QHBoxLayout()
        self.start_button = QPushButton("Reconstruct")
        self.start_button.setObjectName("reconstructButton")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.start_requested)
        self.stop_button.clicked.connect(self.stop_requested)
        controls.addWidget(self.start_button)
        controls.addWidget(self.stop_button)
        # Two lines (progress; what the current state says), fixed height: new text each update
        # must not re-lay out the window, and nothing is cut off at a usual window width.
        self.status = QLabel("No reconstruction yet")
        self.status.setObjectName("reconStatus")
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.status.setFixedHeight(2 * self.status.fontMetrics().lineSpacing() + 4)
        self.status.setWordWrap(True)
        controls.addWidget(self.status, 1)
        layout.addLayout(controls)
        # The calibration with its error bars once a run has reached a solution (or a result is opened).
        self.calibration = QLabel("")
        self.calibration.setObjectName("calibrationLabel")
        self.calibration.setWordWrap(True)
        self.calibration.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.calibration)

        settings = QGroupBox("Settings (apply to the next new reconstruction; iterations also to Continue)")
        grid = QGridLayout(settings)
        self.upsample = QSpinBox()
        self.upsample.setRange(1, 8)
        self.upsample.setValue(4)
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 10000)
        self.iterations.setValue(40)
        self.device = QComboBox()
        self.device.addItems(list(Device))
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
        # The engine's defaults fill these once it has loaded (`engine_loaded`): torch is not
        # imported on the UI thread before the window shows.
        self._defaults_shown = False
        self._state_text = ""
        self._fixed_magnify: float | None = None
        layout.addWidget(settings)
        layout.addWidget(self._build_field_settings())
        self.set_running(False, has_state=False)
        self.show_status("Loading the reconstruction engine...")

    # ---- the field: whole frame, tiles or a region ---------------------------------------------
    def _build_field_settings(self) -> QGroupBox:
        box = QGroupBox("Field of view")
        grid = QGridLayout(box)
        self.field_mode = QComboBox()
        self.field_mode.setObjectName("fieldMode")
        for mode, label in FIELD_MODES:
            self.field_mode.addItem(label, mode)
        grid.addWidget(self.field_mode, 0, 0, 1, 4)
        self.tile_px = QSpinBox()
        self.tile_px.setRange(0, 4096)
        self.tile_px.setSpecialValueText("auto")  # 0: from the optics
        self.tile_px.setSuffix(" px")
        self.overlap_px = QSpinBox()
        self.overlap_px.setRange(-1, 2048)
        self.overlap_px.setValue(-1)
        self.overlap_px.setSpecialValueText("auto")
        self.overlap_px.setSuffix(" px")
        self.workers = QSpinBox()
        self.workers.setRange(0, 256)
        self.workers.setSpecialValueText("auto")  # all cores but one (the UI's)
        self.scheduler = QLineEdit()
        self.scheduler.setObjectName("schedulerAddress")
        self.scheduler.setPlaceholderText("this computer (or a Dask scheduler: tcp://host:8786)")
        self.tile_widgets: list[QWidget] = []
        for col, (label, widget) in enumerate((("Tile", self.tile_px), ("Overlap", self.overlap_px),
                                               ("Workers", self.workers))):
            grid.addWidget(QLabel(label), 1, 2 * col)
            grid.addWidget(widget, 1, 2 * col + 1)
            self.tile_widgets.append(widget)
        grid.addWidget(QLabel("Scheduler"), 2, 0)
        grid.addWidget(self.scheduler, 2, 1, 1, 5)
        self.tile_widgets.append(self.scheduler)
        self.region_spins: dict[str, QSpinBox] = {}
        for col, name in enumerate(("x", "y", "width", "height")):
            spin = QSpinBox()
            spin.setRange(0 if name in ("x", "y") else 8, 100000)
            spin.setValue(0 if name in ("x", "y") else 128)
            spin.setSuffix(" px")
            spin.valueChanged.connect(self._region_typed)
            self.region_spins[name] = spin
            grid.addWidget(QLabel(f"Region {name}" if col == 0 else name), 3, 2 * col)
            grid.addWidget(spin, 3, 2 * col + 1)
        self.field_mode.currentIndexChanged.connect(self._mode_changed)
        self._mode_changed()
        return box

    region_changed = Signal(int, int, int, int)  # x, y, width, height typed (camera pixels)

    def _mode_changed(self) -> None:
        mode = self.mode()
        for widget in self.tile_widgets:
            widget.setEnabled(mode == "tiles")
        for spin in self.region_spins.values():
            spin.setEnabled(mode == "region")

    def mode(self) -> str:
        """"frame", "tiles" or "region"."""
        return str(self.field_mode.currentData())

    def set_mode(self, mode: str) -> None:
        self.field_mode.setCurrentIndex(max(0, self.field_mode.findData(mode)))

    def region(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) in camera pixels."""
        s = self.region_spins
        return s["x"].value(), s["y"].value(), s["width"].value(), s["height"].value()

    def set_region(self, x: int, y: int, width: int, height: int) -> None:
        """Show a region (drawn on the live view) in the spin boxes, without echoing it back."""
        for name, value in zip(("x", "y", "width", "height"), (x, y, width, height), strict=True):
            spin = self.region_spins[name]
            spin.blockSignals(True)
            spin.setValue(int(value))
            spin.blockSignals(False)

    def _region_typed(self) -> None:
        self.region_changed.emit(*self.region())

    def tile_options(self) -> dict:
        """`FullFieldJob` keyword arguments from the controls (None: from the optics / all cores but one)."""
        scheduler = self.scheduler.text().strip() or None
        return {
            "tile_size": self.tile_px.value() or None,
            "overlap": None if self.overlap_px.value() < 0 else self.overlap_px.value(),
            "scheduler": scheduler,
            "workers": None if scheduler else (self.workers.value() or None),
        }

    def show_mosaic(self, amplitude: np.ndarray, phase: np.ndarray, progress: str, state: str | None = None) -> None:
        """A mosaic being filled (NaN where no tile has arrived yet, shown as 0)."""
        self.amplitude.show_array(np.nan_to_num(amplitude, nan=0.0))
        self.phase.show_phase(phase_view(np.nan_to_num(phase, nan=0.0)))
        self.show_status(progress, state)

    def show_aberration_map(self, aberrations: dict | None, note: str = "") -> None:
        """The field's wavefront RMS (waves) in the spectrum's cell, the summary under the views; `note`
        (e.g. a partial run's "partial: 3 of 4 tiles") beside both."""
        if not aberrations or not aberrations.get("map"):
            return
        rms = np.asarray(aberrations["map"]["rms_waves"], dtype=np.float32)
        self.spectrum.setTitle(f"aberration map: RMS (waves){f' ({note})' if note else ''}", size="9pt")
        self.spectrum.show_array(rms)
        summary = aberrations.get("summary", {})
        if summary:
            centre = summary.get("center", {}).get("dominant", [])
            names = ", ".join(f"Z{d['noll']} {d.get('name', '')}".strip() for d in centre[:3])
            self.calibration.setText(
                f"Aberrations across the field{f' ({note})' if note else ''}: max RMS "
                f"{summary['max_rms_waves']:.3f} waves, min Strehl {summary['min_strehl']:.2f}, "
                f"{100 * summary['diffraction_limited_fraction']:.0f} % "
                f"diffraction-limited (Marechal)" + (f"; dominant at the centre: {names}" if names else "")
            )

    # ---- settings --------------------------------------------------------------------------
    def engine_loaded(self) -> None:
        """The solver is importable without a wait: show its default settings."""
        if not self._defaults_shown:
            from uafp_gui.recon.uafp import UafpSettings

            self.show_settings(UafpSettings())
        if self.status.text() == "Loading the reconstruction engine...":
            self.show_status("No reconstruction yet")

    def show_settings(self, settings) -> None:
        self._defaults_shown = True
        self.upsample.setValue(settings.upsample)
        from uafp_gui.recon.settings import default_iterations

        self.iterations.setValue(settings.iterations or default_iterations(225))
        self.device.setCurrentText(settings.device)
        for name, box in self.learn.items():
            box.setChecked(bool(getattr(settings, name)))

    def settings(self, base=None):
        """`UafpSettings` from the controls (other fields from `base`)."""
        from uafp_gui.recon.uafp import UafpSettings

        if not self._defaults_shown:
            self.engine_loaded()
        base = base or UafpSettings()
        changes = {name: box.isChecked() for name, box in self.learn.items()}
        settings = base.replace(
            upsample=self.upsample.value(),
            iterations=self.iterations.value(),
            device=parse_device(self.device.currentText()),
            **changes,
        )
        return settings

    def iterations_to_run(self) -> int:
        """How many iterations Reconstruct (or Continue) runs."""
        return int(self.iterations.value())

    def set_stopping(self) -> None:
        """Stop was pressed: it acts at the next mini-batch or iteration."""
        self.stop_button.setEnabled(False)
        self.show_status("Stopping...")

    def set_running(self, running: bool, *, has_state: bool) -> None:
        self.start_button.setEnabled(not running)
        self.start_button.setText("Continue" if has_state else "Reconstruct")
        self.stop_button.setEnabled(running)

    # ---- drawing ---------------------------------------------------------------------------
    @staticmethod
    def _arrow_label(magnify: float) -> str:
        return f"estimated (x{magnify:g})"

    @staticmethod
    def result_spectrum(object_field: np.ndarray) -> np.ndarray:
        """The log spectrum of a result's object (worker side: an FFT of the full field)."""
        return np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(object_field)))).astype(np.float32)

    def _show_pupil(self, amplitude: np.ndarray, phase: np.ndarray) -> None:
        amplitude = np.asarray(amplitude, dtype=np.float32)
        support = amplitude > 1e-3 * float(amplitude.max() or 1.0)
        self.pupil_amplitude.show_array(amplitude)
        self.pupil_phase.show_phase(phase_view(phase, support, central=1.0))

    def show_status(self, progress: str, state: str | None = None) -> None:
        """The status lines: `progress` (what runs, how far, ETA) and `state` (what is shown);
        without `state` the last one stays."""
        if state is not None:
            self._state_text = state
        text = progress if not self._state_text else f"{progress}\n{self._state_text}"
        if text != self.status.text():
            self.status.setText(text)

    @staticmethod
    def describe_state(update) -> str:
        g = update.geometry
        return (
            f"loss {update.loss:.4g} · {update.frames_used} frames · LED shift ({signed(g.shift_x_mm)}, "
            f"{signed(g.shift_y_mm)}) mm, rotation {signed(g.rotation_deg)} deg, height {g.height_mm:.1f} mm"
        )

    def clear(self, text: str = "No reconstruction yet") -> None:
        """Empty every view: nothing on screen belongs to a dataset or result that is not open."""
        for plot in (self.amplitude, self.phase, self.spectrum, self.pupil_amplitude, self.pupil_phase):
            plot.clear_image()
        self.spectrum.setTitle("log spectrum", size="9pt")
        for item in (self.nominal_points, self.estimated_points):
            item.setData(pos=np.empty((0, 2)))
        self.misalignment_arrows.setData([], [])
        self.zernike_bars.setOpts(x=[], height=[])
        self.gain_bars.setOpts(x=[], height=[])
        self.loss_curve.setData([], [])
        for curve in self.trace_curves.values():
            curve.setData([], [])
        self._pending = None
        self._state_text = ""
        self.status.setToolTip("")  # a partial full field's whole account (MainWindow._show_partial_field)
        self.calibration.setText("")
        self.show_status(text)

    def show_update(self, update, history=(), defer_plots: bool = False, progress: str | None = None) -> None:
        """Draw `update`; with `defer_plots` the images now and the plots at `flush()`."""
        self.amplitude.show_array(update.amplitude)
        self.phase.show_phase(phase_view(update.phase))
        self.spectrum.show_array(update.log_spectrum)
        self._show_pupil(update.pupil_amplitude, update.pupil_phase)
        self.show_status(progress or f"iteration {update.iteration}", self.describe_state(update))
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
        self._show_zernike(update.zernike_rad)
        self._show_gains(update.frame_gain)
        self._show_loss(update.loss_history)
        if len(history):
            data = np.asarray(history, dtype=float)
            columns = (data[:, 1], data[:, 2], data[:, 3], data[:, 4] - data[0, 4])
            for curve, values in zip(self.trace_curves.values(), columns, strict=True):
                curve.setData(data[:, 0], values, symbol=None)

    def _show_zernike(self, zernike_rad) -> None:
        indices = sorted(j for j in zernike_rad if j >= 2)
        self.zernike_bars.setOpts(x=indices, height=[zernike_rad[j] for j in indices])

    def _show_gains(self, frame_gain) -> None:
        gains = np.asarray(frame_gain, dtype=float)
        if gains.size:
            self.gain_bars.setOpts(x=np.arange(len(gains)), height=gains / (np.median(gains) or 1.0))

    def _show_loss(self, loss_history) -> None:
        losses = np.asarray(loss_history, dtype=float)
        if losses.size:
            self.loss_curve.setData(np.arange(1, losses.size + 1), np.log10(np.clip(losses, 1e-12, None)))

    def _show_leds(self, nominal, estimated) -> None:
        """Nominal positions (hollow), arrows to the estimated ones magnified so that the
        largest is about half an LED pitch (as in the report), the factor in the legend."""
        nominal = np.asarray(nominal, dtype=float)
        estimated = np.asarray(estimated, dtype=float)[: len(nominal)]
        nominal = nominal[: len(estimated)]
        displacement = estimated - nominal
        pitch_mm = self.led_pitch_mm
        if pitch_mm is None:  # not told: the nominal grid's pitch, found once per frame count
            if self._pitch_found[0] != len(nominal):
                self._pitch_found = (len(nominal), led_pitch_of(nominal))
            pitch_mm = self._pitch_found[1]
        largest = float(np.abs(displacement).max()) if displacement.size else 0.0
        magnify = 1.0 if largest == 0 or pitch_mm is None else max(1.0, round(0.5 * pitch_mm / largest))
        if self._fixed_magnify:
            magnify = self._fixed_magnify
        heads = nominal + displacement * magnify
        self.nominal_points.setData(pos=nominal)
        self.estimated_points.setData(pos=heads)
        pairs = np.empty((2 * len(nominal), 2))
        pairs[0::2] = nominal
        pairs[1::2] = heads
        self.misalignment_arrows.setData(pairs[:, 0], pairs[:, 1])
        if len(nominal):
            bounds = (*nominal.min(axis=0), *nominal.max(axis=0), pitch_mm or 1.0)
            if bounds != self._led_bounds:  # room above the LEDs (row 0 at the top) for the legend
                self._led_bounds = bounds
                (x0, y0, x1, y1, margin) = bounds
                self.misalignment.setRange(xRange=(x0 - margin, x1 + margin), yRange=(y0 - 4.5 * margin, y1 + margin),
                                           padding=0)
        if magnify != self.misalignment_magnify:
            self.misalignment_magnify = magnify
            self.misalignment_legend.getLabel(self.misalignment_arrows).setText(self._arrow_label(magnify))

    def show_calibration(self, calibration) -> None:
        """The calibration (`uafp_gui.io.calibration.Calibration`) as text, with `+-` standard errors when it
        has them and the parameters the data leave undetermined named as such."""
        from uafp_gui.recon.uncertainty import calibration_lines

        if calibration is None:
            self.calibration.setText("")
            return
        lines = calibration_lines(calibration.led_geometry, calibration.zernike_rad, calibration.extra)
        if calibration.extra.get("partial"):
            lines.append(f"partial result ({calibration.extra.get('stop_reason', 'stopped')}): no error bars")
        elif "led_geometry_std" not in calibration.extra and "zernike_rad_std" not in calibration.extra:
            lines.append("no error bars computed")
        self.calibration.setText("\n".join(lines))

    def show_result(self, result, spectrum: np.ndarray | None = None, arrow_magnify: float | None = None) -> None:
        """Draw a result read from disk (`uafp_gui.io.result.Result`) in every view; `spectrum` from
        `result_spectrum` (computed here when not given); `arrow_magnify`: the LED map's arrow scale."""
        self.clear()
        self.amplitude.show_array(result.amplitude)
        self.phase.show_phase(phase_view(result.phase))
        self.spectrum.show_array(self.result_spectrum(result.object_field) if spectrum is None else spectrum)
        self._show_pupil(result.pupil[0], result.pupil[1])
        cal = result.calibration
        self.show_calibration(cal)
        self._show_zernike(cal.zernike_rad)
        self._show_gains(cal.frame_gain)
        self._show_loss(cal.extra.get("loss_history", []))
        g = cal.led_geometry
        estimated = np.asarray(cal.led_positions_mm, dtype=float).reshape(-1, 2)
        self._fixed_magnify = arrow_magnify
        self._show_leds(nominal_from_estimated(estimated, g), estimated)
        # A result keeps the final geometry only: one marker per trace at its last iteration.
        final = (g.shift_x_mm, g.shift_y_mm, g.rotation_deg, 0.0)
        for curve, value in zip(self.trace_curves.values(), final, strict=True):
            curve.setData([cal.iterations], [value], symbol="o", symbolSize=7)
        self.show_status(
            f"Result {Path(result.folder).name}: {cal.iterations} iterations, from "
            f"{cal.source_dataset or 'an unnamed dataset'}",
            f"LED shift ({signed(g.shift_x_mm)}, {signed(g.shift_y_mm)}) mm, rot {signed(g.rotation_deg)} deg, "
            f"h {g.height_mm:.1f} mm · loss {cal.final_loss:.3g}"
            + (f" · PARTIAL: {cal.extra.get('stop_reason', 'stopped')}" if cal.extra.get("partial") else ""),
        )

    def set_arrow_magnify(self, magnify: float | None) -> None:
        """Draw the LED arrows at this scale (the LED map's, so both read alike); None: pick one."""
        self._fixed_magnify = magnify


def nominal_from_estimated(estimated: np.ndarray, geometry) -> np.ndarray:
    """Nominal LED positions (mm) behind estimated ones, undoing the rigid misalignment (spec section 2:
    rotate, then shift); per-LED residuals, if any were learnt, stay in the arrows."""
    t = np.radians(geometry.rotation_deg)
    x = estimated[:, 0] - geometry.shift_x_mm
    y = estimated[:, 1] - geometry.shift_y_mm
    return np.stack([x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)], axis=1)


def signed(value: float, decimals: int = 2) -> str:
    """+1.25 / -0.40 / +0.00: never "-0.00" for a value that rounds to zero."""
    rounded = round(float(value), decimals)
    return f"{rounded + 0.0:+.{decimals}f}"


def led_pitch_of(positions: np.ndarray) -> float | None:
    """The smallest non-zero distance between two of `positions` (mm): the LED pitch of a
    plan's nominal grid; None with fewer than two distinct positions."""
    positions = np.asarray(positions, dtype=float)[:400]
    if len(positions) < 2:
        return None
    distances = np.hypot(*(positions[:, None, :] - positions[None, :, :]).transpose(2, 0, 1))
    distances = distances[distances > 1e-9]
    return float(distances.min()) if distances.size else None
