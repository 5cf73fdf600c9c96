"""Small pyqtgraph building blocks: a titled square image with its own levels, how to show
a phase map (cyclic when it wraps, diverging around its centre when it does not), and an
8-bit array -> pixmap for thumbnails.

Levels come from a strided sample (at most `LEVEL_SAMPLE_PX` a side) so drawing a large image
never sorts all of it on the UI thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QFont, QImage, QPixmap

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False, background="w", foreground="k")


def _skip_matplotlib_leftovers() -> None:
    """pyqtgraph's gradient editor (the live view's histogram) lists matplotlib's uncategorised
    colormaps by importing matplotlib.pyplot when it is built: 2-3 s on the UI thread before the
    window shows. Those leftovers are not offered (the categorised matplotlib maps still are)."""
    from pyqtgraph.widgets import ColorMapMenu

    if hasattr(ColorMapMenu, "find_mpl_leftovers"):
        ColorMapMenu.find_mpl_leftovers = lambda: []


_skip_matplotlib_leftovers()

__all__ = ["CYCLIC_PHASE", "DIVERGING_PHASE", "ImagePlot", "PhaseView", "gray_pixmap", "percentile_levels",
           "phase_view"]

LEVEL_SAMPLE_PX = 256
CYCLIC_PHASE = "CET-C6"  # wrapped phase: -pi and +pi are the same colour
DIVERGING_PHASE = "CET-D1A"  # phase that does not wrap: white at its centre
WRAP_FRACTION = 0.8  # a phase whose spread reaches this fraction of pi is shown as wrapped


def _sample(array: np.ndarray, size: int = LEVEL_SAMPLE_PX) -> np.ndarray:
    step = max(1, -(-max(array.shape) // size))
    return array[::step, ::step]


def percentile_levels(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Display levels from the finite values of a strided sample of `array`."""
    sample = _sample(np.asarray(array))
    finite = sample[np.isfinite(sample)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, (low, high)))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


@dataclass(frozen=True)
class PhaseView:
    """A phase map ready to draw: `image` (NaN outside the support), its `levels`, the
    colormap name and a short caption saying what the colours span."""

    image: np.ndarray
    levels: tuple[float, float]
    colormap: str
    caption: str


def phase_view(phase: np.ndarray, support: np.ndarray | None = None, central: float = 0.5) -> PhaseView:
    """How to show `phase` (rad): its circular mean over the central `central` fraction of the
    field (inside `support`) is taken as the centre; if the values around it stay within
    `WRAP_FRACTION` * pi they are shown re-centred with a diverging map and symmetric levels
    from their own spread (a global phase offset means nothing); otherwise wrapped, with a
    cyclic map over [-pi, pi]."""
    phase = np.asarray(phase, dtype=np.float32)
    inside = np.isfinite(phase) if support is None else (np.asarray(support, dtype=bool) & np.isfinite(phase))
    rows, cols = phase.shape
    r0, c0 = int(rows * (1 - central) / 2), int(cols * (1 - central) / 2)
    centre_region = np.zeros_like(inside)
    centre_region[r0 : rows - r0, c0 : cols - c0] = True
    region = _sample(inside & centre_region)
    values = _sample(phase)[region]
    if values.size < 16:  # a support smaller than the central region: use all of it
        values = _sample(phase)[_sample(inside)]
    masked = np.where(inside, phase, np.nan).astype(np.float32)
    if not values.size:
        return PhaseView(masked, (-np.pi, np.pi), CYCLIC_PHASE, "")
    centre = float(np.angle(np.mean(np.exp(1j * values))))
    deviation = np.angle(np.exp(1j * (values - centre)))
    spread = float(np.percentile(np.abs(deviation), 99.5))
    if spread >= WRAP_FRACTION * np.pi:
        return PhaseView(masked, (-np.pi, np.pi), CYCLIC_PHASE, "wrapped, -pi..pi")
    spread = max(spread, 1e-3)
    recentred = (masked - np.float32(centre) + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)
    return PhaseView(recentred, (-spread, spread), DIVERGING_PHASE, f"{centre:+.2f} \u00b1 {spread:.2f} rad")


class ImagePlot(pg.PlotItem):
    """A titled, square, aspect-locked image (row 0 at the top) with its own levels and a
    small caption in its corner (what the colours span). NaN pixels are transparent."""

    def __init__(self, title: str, colormap: str | None = None) -> None:
        super().__init__(title=title)
        self.image = pg.ImageItem()
        self.addItem(self.image)
        self.setAspectLocked(True)
        self.invertY(True)
        self.hideAxis("left")
        self.hideAxis("bottom")
        self.hideButtons()
        self.colormap = ""
        if colormap:
            self.set_colormap(colormap)
        self.caption = pg.TextItem(anchor=(0, 0), color=(20, 20, 20), fill=pg.mkBrush(255, 255, 255, 190))
        font = QFont()
        font.setPointSize(7)
        self.caption.setFont(font)
        self.caption.setZValue(10)
        self.addItem(self.caption, ignoreBounds=True)
        self.disableAutoRange()  # the range changes only with the image size (see show_array)
        self._shape: tuple[int, ...] = ()

    def set_colormap(self, name: str) -> None:
        if name != self.colormap:
            self.colormap = name
            self.image.setColorMap(pg.colormap.get(name))

    def show_array(
        self, array: np.ndarray, levels: tuple[float, float] | None = None, caption: str | None = None
    ) -> None:
        """Draw `array` with `levels` (default: 0.5-99.5 percentiles); the caption defaults to the levels."""
        array = np.asarray(array, dtype=np.float32)
        if levels is None:
            levels = percentile_levels(array)
        self.image.setImage(array, levels=levels, autoLevels=False)
        self.caption.setText(f"{levels[0]:.3g} .. {levels[1]:.3g}" if caption is None else caption)
        if array.shape != self._shape:
            self._shape = array.shape
            self.setRange(xRange=(0, array.shape[1]), yRange=(0, array.shape[0]), padding=0)

    def clear_image(self) -> None:
        self.image.clear()
        self.caption.setText("")

    def show_phase(self, view: PhaseView) -> None:
        self.set_colormap(view.colormap)
        self.show_array(view.image, view.levels, view.caption)


def gray_pixmap(image: np.ndarray) -> QPixmap:
    """A pixmap of an 8-bit grey (H, W) or RGB (H, W, 3) array (`jobs.frame_thumbnail`): no arithmetic here."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    kind = QImage.Format.Format_RGB888 if image.ndim == 3 else QImage.Format.Format_Grayscale8
    qimage = QImage(image.data, image.shape[1], image.shape[0], image.strides[0], kind)
    return QPixmap.fromImage(qimage.copy())
