"""LED map: the array drawn to scale in image axes (mm); click an LED to light it.

Shows which LEDs are lit, which the plan will use, the bright-field circle (illumination NA
below the objective NA) and, after calibration, where each LED really is: estimated
positions with arrows from the nominal ones (magnified so sub-millimetre errors show).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QGraphicsItem, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from uafp_gui.acquisition.plan import MicroscopeDescription
from uafp_gui.gui import images  # noqa: F401 - pyqtgraph options
from uafp_gui.model import RowCol, led_positions_mm

if TYPE_CHECKING:
    from uafp_gui.model import LedGeometry

__all__ = ["LedMapPanel"]


def _every_led(rows: int, cols: int) -> np.ndarray:
    """(rows*cols, 2) [row, col] of every LED, row by row (index row * cols + col)."""
    return np.indices((rows, cols)).reshape(2, -1).T


class LedMapPanel(QWidget):
    led_clicked = Signal(int, int)  # row, col (image axes)
    pattern_requested = Signal(str)  # "brightfield", "darkfield", "plan", "off"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.plot = pg.PlotWidget()
        self.plot.setAspectLocked(True)
        self.plot.invertY(True)  # image axes: y grows downwards with the row index
        self.plot.setLabel("bottom", "X (mm)")
        self.plot.setLabel("left", "Y (mm)")
        self.legend = self.plot.addLegend(offset=(5, 5))
        self.leds = pg.ScatterPlotItem(size=9, pxMode=True, name="LEDs")
        self.leds.sigClicked.connect(self._clicked)
        self.arrows = pg.PlotDataItem(pen=pg.mkPen("r", width=1.5), connect="pairs", name=self._arrow_label(1.0))
        self.estimated = pg.ScatterPlotItem(size=3, brush=pg.mkBrush("r"), pen=None, name="estimated")
        self.na_circle = pg.PlotDataItem(pen=pg.mkPen((0, 120, 255), width=1, style=pg.QtCore.Qt.PenStyle.DashLine))
        # The lit LEDs are a small overlay: lighting one during an acquisition repaints a few
        # points, and the ~1000-point map below stays a cached pixmap.
        self.lit_points = pg.ScatterPlotItem(size=9, pxMode=True, brush=self._LIT, pen=pg.mkPen("k", width=1.5))
        self.lit_points.sigClicked.connect(self._clicked)
        self.leds.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        for item in (self.na_circle, self.leds, self.lit_points, self.arrows, self.estimated):
            self.plot.addItem(item)
        layout.addWidget(self.plot, 1)
        buttons = QHBoxLayout()
        for label, pattern in (("Bright field", "brightfield"), ("Dark field", "darkfield"),
                               ("Plan", "plan"), ("All off", "off")):
            button = QPushButton(label)
            button.clicked.connect(lambda _=False, p=pattern: self.pattern_requested.emit(p))
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        # A new geometry must not re-lay out the window.
        self.caption.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.caption.setMinimumHeight(3 * self.caption.fontMetrics().lineSpacing())
        layout.addWidget(self.caption)
        self.microscope: MicroscopeDescription | None = None
        self._nominal = np.zeros((0, 2))
        self._brightfield = np.zeros(0, dtype=bool)
        self.lit: frozenset[RowCol] = frozenset()
        self.planned: frozenset[RowCol] = frozenset()
        self.led_geometry: LedGeometry | None = None
        self.magnify = 1.0

    # ---- state -----------------------------------------------------------------------------
    def set_microscope(self, microscope: MicroscopeDescription) -> None:
        if microscope == self.microscope:
            return
        self.microscope = microscope
        self._build()
        self._colour()
        self._show_lit()
        self._draw_geometry()

    def set_lit(self, lit) -> None:
        lit = frozenset(tuple(int(v) for v in led) for led in lit)
        if lit != self.lit:
            self.lit = lit
            self._show_lit()

    def set_planned(self, planned) -> None:
        planned = frozenset(tuple(int(v) for v in led) for led in planned)
        if planned != self.planned:
            self.planned = planned
            self._colour()
            self._draw_geometry()

    def set_geometry(self, geometry) -> None:
        """Show where the LEDs really are (a `LedGeometry`), or nothing with None."""
        if geometry != self.led_geometry:
            self.led_geometry = geometry
            self._draw_geometry()

    def redraw(self) -> None:
        self._build()
        self._colour()
        self._show_lit()
        self._draw_geometry()

    @staticmethod
    def _arrow_label(magnify: float) -> str:
        return f"nominal -> estimated (x{magnify:g})"

    # ---- drawing (each part only when what it shows changed: the map has ~1000 points) ------
    _LIT = pg.mkBrush(255, 200, 0)
    _PLAN = pg.mkBrush(120, 170, 255)
    _OFF = pg.mkBrush(210, 210, 210)
    _BF_PEN = pg.mkPen("k", width=1.5)
    _DF_PEN = pg.mkPen(150, 150, 150)

    def _build(self) -> None:
        m = self.microscope
        if m is None:
            return
        rows, cols = m.led_array_shape
        self._nominal = led_positions_mm(_every_led(rows, cols), m.led_on_axis, m.led_pitch_mm)
        radius_mm = np.hypot(self._nominal[:, 0], self._nominal[:, 1])
        illumination_na = np.sin(np.arctan2(radius_mm, m.led_height_mm))
        self._brightfield = illumination_na < m.objective_na
        pens = [self._BF_PEN if bf else self._DF_PEN for bf in self._brightfield]
        names = [(i // cols, i % cols) for i in range(rows * cols)]
        self.leds.setData(pos=self._nominal, pen=pens, brush=self._OFF, data=names)
        radius = m.led_height_mm * np.tan(np.arcsin(m.objective_na))
        angle = np.linspace(0, 2 * np.pi, 129)
        self.na_circle.setData(radius * np.cos(angle), radius * np.sin(angle))

    def _colour(self) -> None:
        """Plan colours on the whole map (only when the plan or the array changes)."""
        m = self.microscope
        if m is None:
            return
        cols = m.led_array_shape[1]
        brushes = [self._OFF] * len(self._nominal)
        for row, col in self.planned:
            if 0 <= row * cols + col < len(brushes):
                brushes[row * cols + col] = self._PLAN
        self.leds.setBrush(brushes)

    def _show_lit(self) -> None:
        m = self.microscope
        if m is None:
            return
        cols = m.led_array_shape[1]
        lit = sorted(led for led in self.lit if 0 <= led[0] * cols + led[1] < len(self._nominal))
        positions = self._nominal[[row * cols + col for row, col in lit]] if lit else np.zeros((0, 2))
        self.lit_points.setData(pos=positions, data=lit)

    def _draw_geometry(self) -> None:
        m = self.microscope
        if m is None:
            return
        rows, cols = m.led_array_shape
        if self.led_geometry is None:
            self.arrows.setData([], [])
            self.estimated.setData([])
            self.caption.setText(
                f"{rows}x{cols} LEDs, pitch {m.led_pitch_mm:g} mm, height {m.led_height_mm:g} mm; "
                "yellow: lit, blue: in the plan, black ring: bright field. Click an LED to light it."
            )
            return
        g = self.led_geometry
        nominal = led_positions_mm(_every_led(rows, cols), m.led_on_axis, m.led_pitch_mm)
        estimated = led_positions_mm(
            _every_led(rows, cols), m.led_on_axis, m.led_pitch_mm,
            shift_x_mm=g.shift_x_mm, shift_y_mm=g.shift_y_mm, rotation_deg=g.rotation_deg,
        )
        shown = (
            np.array(sorted(self.planned))
            if self.planned
            else np.array([(i // cols, i % cols) for i in range(rows * cols)])
        )
        indices = shown[:, 0] * cols + shown[:, 1]
        indices = indices[(indices >= 0) & (indices < len(nominal))]
        displacement = estimated[indices] - nominal[indices]
        largest = float(np.abs(displacement).max()) if displacement.size else 0.0
        magnify = 1.0 if largest == 0 else max(1.0, round(0.5 * m.led_pitch_mm / largest))
        if magnify != self.magnify:
            self.magnify = magnify
            self.legend.getLabel(self.arrows).setText(self._arrow_label(magnify))
        heads = nominal[indices] + displacement * self.magnify
        pairs = np.empty((2 * len(indices), 2))
        pairs[0::2] = nominal[indices]
        pairs[1::2] = heads
        self.arrows.setData(pairs[:, 0], pairs[:, 1])
        self.estimated.setData(pos=heads)
        g = self.led_geometry
        self.caption.setText(
            f"Estimated LED positions (arrows x{self.magnify:g}): shift ({g.shift_x_mm:+.2f}, {g.shift_y_mm:+.2f}) mm, "
            f"rotation {g.rotation_deg:+.2f} deg, height {g.height_mm:.1f} mm"
        )

    def _clicked(self, _item, points, *_args) -> None:
        if len(points):
            row, col = points[0].data()
            self.led_clicked.emit(int(row), int(col))
