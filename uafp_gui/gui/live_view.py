"""Live view: the camera stream (or the frames of a running acquisition) with exposure
control, a histogram and a saturation warning."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from uafp_gui.gui import images  # noqa: F401 - pyqtgraph options

__all__ = ["LiveViewPanel"]


class LiveViewPanel(QWidget):
    live_toggled = Signal(bool)
    exposure_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        view_row = QHBoxLayout()
        self.graphics = pg.GraphicsLayoutWidget()
        self.view = self.graphics.addViewBox(lockAspect=True, invertY=True)
        self.image = pg.ImageItem()
        self.view.addItem(self.image)
        self.histogram = pg.HistogramLUTWidget(image=self.image)
        view_row.addWidget(self.graphics, 1)
        view_row.addWidget(self.histogram)
        layout.addLayout(view_row, 1)
        controls = QHBoxLayout()
        self.live_button = QPushButton("Start live")
        self.live_button.setCheckable(True)
        self.live_button.toggled.connect(self._toggled)
        controls.addWidget(self.live_button)
        controls.addWidget(QLabel("Exposure"))
        self.exposure = QDoubleSpinBox()
        self.exposure.setRange(0.01, 60000)
        self.exposure.setDecimals(2)
        self.exposure.setValue(10.0)
        self.exposure.setSuffix(" ms")
        self.exposure.valueChanged.connect(self.exposure_changed)
        controls.addWidget(self.exposure)
        self.auto_levels = QCheckBox("auto levels")
        self.auto_levels.setChecked(True)
        controls.addWidget(self.auto_levels)
        controls.addStretch(1)
        layout.addLayout(controls)
        self.info = QLabel("No image")
        layout.addWidget(self.info)
        self.full_scale = 65535
        self._first = True

    def _toggled(self, on: bool) -> None:
        self.live_button.setText("Stop live" if on else "Start live")
        self.live_toggled.emit(on)

    def set_live(self, on: bool) -> None:
        """Reflect the stream's state without asking for a change."""
        self.live_button.blockSignals(True)
        self.live_button.setChecked(on)
        self.live_button.setText("Stop live" if on else "Start live")
        self.live_button.blockSignals(False)

    def set_bit_depth(self, bits: int) -> None:
        self.full_scale = 2 ** int(bits) - 1

    def show_frame(self, frame: np.ndarray, caption: str = "") -> None:
        frame = np.asarray(frame)
        auto = self._first or self.auto_levels.isChecked()
        self.image.setImage(frame, autoLevels=False)
        if auto:
            self.histogram.setLevels(float(frame.min()), float(frame.max()))
            self._first = False
        saturated = int(np.count_nonzero(frame >= self.full_scale))
        text = f"{caption}  min {frame.min():.0f}  max {frame.max():.0f}  mean {frame.mean():.1f}"
        if saturated:
            self.info.setStyleSheet("color: white; background: #c00000;")
            self.info.setText(f"SATURATED: {saturated} pixels at full scale ({self.full_scale}). {text}")
        else:
            self.info.setStyleSheet("")
            self.info.setText(text)

    @property
    def saturated(self) -> bool:
        return self.info.text().startswith("SATURATED")
