"""Live view: the camera stream (or the frames of a running acquisition) with exposure
control, a histogram and a saturation warning; and, when the reconstruction runs on a region,
that region as a rectangle to drag and resize (`region_drawn`, camera pixels).

It draws `jobs.FramePreview`s: the display copy, histogram and statistics are computed on the
worker thread, so the UI thread never scans a full frame (the histogram widget's own
recomputation on every image change is switched off)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from uafp_gui.gui import images  # noqa: F401 - pyqtgraph options
from uafp_gui.gui.previews import FramePreview, frame_preview

__all__ = ["LiveViewPanel"]


class LiveViewPanel(QWidget):
    live_toggled = Signal(bool)
    exposure_changed = Signal(float)
    region_drawn = Signal(int, int, int, int)  # x, y, width, height in camera pixels

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        view_row = QHBoxLayout()
        self.graphics = pg.GraphicsLayoutWidget()
        self.view = self.graphics.addViewBox(lockAspect=True, invertY=True)
        self.image = pg.ImageItem()
        self.view.addItem(self.image)
        self.saturation = pg.ImageItem()  # clipped pixels in red over the frame (FramePreview.overlay)
        self.saturation.setZValue(1)
        self.view.addItem(self.saturation)
        self.region = pg.RectROI([0, 0], [128, 128], pen=pg.mkPen((255, 200, 0), width=2), snapSize=1.0,
                                 translateSnap=True, scaleSnap=True)
        self.region.setZValue(2)
        self.region.setVisible(False)
        self.region.sigRegionChangeFinished.connect(self._region_moved)
        self.view.addItem(self.region)
        self.histogram = pg.HistogramLUTWidget(image=self.image)
        # The histogram comes with each preview (worker side), not from the image on every change.
        self.image.sigImageChanged.disconnect(self.histogram.item.imageChanged)
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
        # New text each frame must not re-lay out the window; two lines, so nothing is cut off.
        self.info.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.info.setFixedHeight(2 * self.info.fontMetrics().lineSpacing() + 4)
        self.info.setWordWrap(True)
        self._info_saturated = False
        layout.addWidget(self.info)
        self.full_scale = 65535
        self._first = True

    def show_region(self, visible: bool) -> None:
        self.region.setVisible(visible)

    def set_region(self, x: int, y: int, width: int, height: int) -> None:
        """Move the rectangle (typed values) without echoing them back as drawn."""
        self.region.blockSignals(True)
        self.region.setPos((x, y))
        self.region.setSize((width, height))
        self.region.blockSignals(False)

    def _region_moved(self) -> None:
        x, y = self.region.pos()
        width, height = self.region.size()
        self.region_drawn.emit(int(round(x)), int(round(y)), int(round(width)), int(round(height)))

    def _toggled(self, on: bool) -> None:
        self.live_button.setText("Stop live" if on else "Start live")
        self.live_toggled.emit(on)

    def exposure_ms(self) -> float:
        return float(self.exposure.value())

    def set_live(self, on: bool) -> None:
        """Reflect the stream's state without asking for a change."""
        self.live_button.blockSignals(True)
        self.live_button.setChecked(on)
        self.live_button.setText("Stop live" if on else "Start live")
        self.live_button.blockSignals(False)

    def set_bit_depth(self, bits: int) -> None:
        self.full_scale = 2 ** int(bits) - 1

    def clear(self, text: str = "No image") -> None:
        """Show no frame (what was shown belongs to something no longer open)."""
        self.image.clear()
        self.saturation.setVisible(False)
        self.histogram.item.plot.setData([], [])
        if self._info_saturated:
            self._info_saturated = False
            self.info.setStyleSheet("")
        self.info.setText(text)

    def show_frame(self, frame: np.ndarray, caption: str = "") -> None:
        """Show a raw frame (computes its preview here: for one-off frames, not for streams)."""
        self.show_preview(frame_preview(frame, self.full_scale), caption)

    def show_preview(self, preview: FramePreview, caption: str = "") -> None:
        auto = self._first or self.auto_levels.isChecked()
        self.image.setImage(preview.display, autoLevels=False)
        if preview.overlay is not None:
            self.saturation.setImage(preview.overlay, levels=(0, 255), autoLevels=False)
            self.saturation.setVisible(True)
        else:
            self.saturation.setVisible(False)
        centres, counts = preview.histogram
        self.histogram.item.plot.setData(centres, counts)
        if auto:
            high = preview.maximum if preview.maximum > preview.minimum else preview.minimum + 1
            self.histogram.setLevels(preview.minimum, high)
            self._first = False
        text = f"{caption}  min {preview.minimum:.0f}  max {preview.maximum:.0f}  mean {preview.mean:.1f}"
        saturated = preview.saturated > 0
        if saturated != self._info_saturated:  # a style change re-polishes the widget: only on a change
            self._info_saturated = saturated
            self.info.setStyleSheet("color: white; background: #c00000;" if saturated else "")
        if saturated:
            share = 100 * preview.saturated / max(preview.pixels, 1)
            text = f"SATURATED (red): {preview.saturated} px ({share:.1f} %) at {preview.full_scale}\n{text}"
        self.info.setText(text)

    @property
    def saturated(self) -> bool:
        return self.info.text().startswith("SATURATED")
