"""Small pyqtgraph building blocks: a titled image with colour bar, frame -> thumbnail."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QImage, QPixmap

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False, background="w", foreground="k")

__all__ = ["ImagePlot", "thumbnail"]


class ImagePlot(pg.PlotItem):
    """A titled, aspect-locked image (row 0 at the top) with its own levels."""

    def __init__(self, title: str, colormap: str | None = None) -> None:
        super().__init__(title=title)
        self.image = pg.ImageItem()
        self.addItem(self.image)
        self.setAspectLocked(True)
        self.invertY(True)
        self.hideAxis("left")
        self.hideAxis("bottom")
        if colormap:
            self.image.setColorMap(pg.colormap.get(colormap))
        self.disableAutoRange()  # the range changes only with the image size (see show_array)
        self._shape: tuple[int, ...] = ()

    def show_array(self, array: np.ndarray, levels: tuple[float, float] | None = None) -> None:
        array = np.asarray(array, dtype=np.float32)
        finite = array[np.isfinite(array)]
        if levels is None:
            levels = (float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))) if finite.size else (0, 1)
            if levels[1] <= levels[0]:
                levels = (levels[0], levels[0] + 1.0)
        self.image.setImage(np.nan_to_num(array), levels=levels, autoLevels=False)
        if array.shape != self._shape:
            self._shape = array.shape
            self.setRange(xRange=(0, array.shape[1]), yRange=(0, array.shape[0]), padding=0)


def thumbnail(frame: np.ndarray, size: int = 64) -> QPixmap:
    """An 8-bit preview (display only; the data keeps its bit depth) scaled to `size` px."""
    frame = np.asarray(frame, dtype=np.float32)
    step = max(1, max(frame.shape) // size)
    small = frame[::step, ::step]
    low, high = np.percentile(small, (1, 99.8)) if small.size else (0, 1)
    scaled = np.clip((small - low) / max(high - low, 1e-9) * 255, 0, 255).astype(np.uint8)
    scaled = np.ascontiguousarray(scaled)
    image = QImage(scaled.data, scaled.shape[1], scaled.shape[0], scaled.strides[0], QImage.Format.Format_Grayscale8)
    return QPixmap.fromImage(image.copy())
