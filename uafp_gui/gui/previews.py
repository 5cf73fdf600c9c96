"""What the views show of camera frames, computed off the UI thread (no Qt here): display copies,
histograms, thumbnails and saturation overlays, and the generators the GUI runs on its workers.

- `camera_stream`: snap after snap for the live view, each frame with its `FramePreview`.
- `acquisition_events`: an acquisition session's events, frames with a thumbnail and (a few times
  a second) a `FramePreview`, so the UI thread only draws what is ready.

The reconstruction driver and device opening live in `uafp_gui.session`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from uafp_gui.session.acquisition import AcquisitionSession
    from uafp_gui.session.reconstruction import LiveReconstruction

__all__ = [
    "AcquiredFrame",
    "FramePreview",
    "acquisition_events",
    "camera_stream",
    "dataset_full_scale",
    "format_duration",
    "frame_preview",
    "frame_thumbnail",
    "progress_text",
]


DISPLAY_PX = 1024  # the live view shows frames at most this many pixels a side (display only)
THUMBNAIL_PX = 64
HISTOGRAM_BINS = 128
PREVIEW_INTERVAL_S = 0.2  # an acquisition makes a live-view preview at most 5 times a second


@dataclass(frozen=True)
class FramePreview:
    """What the live view shows of one camera frame, computed on a worker thread so the UI
    thread only draws: a display copy (at most `DISPLAY_PX` a side, strided), a histogram
    (bin centres, counts) of a strided sample, and statistics of every pixel."""

    display: np.ndarray
    histogram: tuple[np.ndarray, np.ndarray]
    minimum: float
    maximum: float
    mean: float
    saturated: int  # pixels at or above `full_scale`
    full_scale: int
    overlay: np.ndarray | None = None  # RGBA uint8 on the display grid: clipped pixels red, the rest clear
    pixels: int = 0  # pixels in the frame (for the clipped share)


@dataclass(frozen=True)
class AcquiredFrame:
    """A `FrameAcquired` event with its 8-bit thumbnail and, every `PREVIEW_INTERVAL_S` and
    for the last frame, its live-view `FramePreview` (else None)."""

    event: Any
    thumbnail: np.ndarray
    preview: FramePreview | None


def _strided(frame: np.ndarray, size: int) -> np.ndarray:
    step = max(1, -(-max(frame.shape) // size))  # ceil: the result is at most `size` a side
    return frame[::step, ::step]


SATURATED_RGB = (255, 0, 0)  # clipped pixels, in thumbnails and over the live view


def frame_thumbnail(frame: np.ndarray, size: int = THUMBNAIL_PX, full_scale: float | None = None) -> np.ndarray:
    """An 8-bit RGB preview (display only; the data keeps its bit depth), at most `size` px a side; pixels
    at `full_scale` (clipped by the camera) are red, the rest grey."""
    small = np.asarray(_strided(np.asarray(frame), size), dtype=np.float32)
    low, high = np.percentile(small, (1, 99.8)) if small.size else (0.0, 1.0)
    scaled = np.clip((small - low) * (255.0 / max(float(high - low), 1e-9)), 0, 255).astype(np.uint8)
    rgb = np.repeat(scaled[..., None], 3, axis=2)
    if full_scale is not None:
        rgb[small >= full_scale] = SATURATED_RGB
    return np.ascontiguousarray(rgb)


def dataset_full_scale(meta: Any) -> float | None:
    """The counts at which a dataset's camera clipped (from its bit depth), or None when not recorded."""
    bit_depth = getattr(meta, "bit_depth", None)
    return float(2 ** int(bit_depth) - 1) if bit_depth else None


def saturation_overlay(display: np.ndarray, full_scale: float) -> np.ndarray | None:
    """RGBA over `display`: opaque red where clipped, transparent elsewhere; None when nothing clipped."""
    clipped = display >= full_scale
    if not clipped.any():
        return None
    overlay = np.zeros((*display.shape, 4), dtype=np.uint8)
    overlay[clipped] = (*SATURATED_RGB, 255)
    return overlay


def frame_preview(frame: np.ndarray, full_scale: int, display_px: int = DISPLAY_PX) -> FramePreview:
    frame = np.asarray(frame)
    display = np.ascontiguousarray(_strided(frame, display_px))
    sample = _strided(frame, 256)
    low, high = float(sample.min()), float(sample.max())
    if np.issubdtype(frame.dtype, np.integer):  # integer bins: no empty combs in the histogram
        width = max(1, int(np.ceil((high - low + 1) / HISTOGRAM_BINS)))
        edges = np.arange(low, high + width + 1, width, dtype=np.float64) - 0.5
    else:
        edges = np.linspace(low, high if high > low else low + 1.0, HISTOGRAM_BINS + 1)
    counts, edges = np.histogram(sample, bins=edges)
    return FramePreview(
        display=display,
        histogram=((edges[:-1] + edges[1:]) / 2, counts),
        minimum=float(frame.min()),
        maximum=float(frame.max()),
        mean=float(frame.mean()),
        saturated=int(np.count_nonzero(frame >= full_scale)),
        full_scale=int(full_scale),
        overlay=saturation_overlay(display, full_scale),
        pixels=int(frame.size),
    )


def camera_stream(core: Any, exposure_ms: list[float], full_scale: int = 65535) -> Iterator[FramePreview]:
    """Snap frames until stopped; `exposure_ms[0]` is read before every snap (the view edits it)."""
    applied = None
    while True:
        wanted = float(exposure_ms[0])
        if wanted != applied:
            core.setExposure(wanted)
            applied = wanted
        core.snapImage()
        yield frame_preview(np.asarray(core.getImage()), full_scale)


def acquisition_events(session: AcquisitionSession, full_scale: int = 65535) -> Iterator[object]:
    """`session.events()`; each `FrameAcquired` comes as an `AcquiredFrame` (its thumbnail, and now
    and then a preview)."""
    from uafp_gui.acquisition.events import FrameAcquired

    last_preview = -np.inf
    for event in session.events():
        if isinstance(event, FrameAcquired):
            preview = None
            now = time.perf_counter()
            if now - last_preview >= PREVIEW_INTERVAL_S or event.index == event.total - 1:
                preview = frame_preview(event.frame, full_scale)
                last_preview = now
            yield AcquiredFrame(event, frame_thumbnail(event.frame, full_scale=full_scale), preview)
        else:
            yield event


def format_duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min: a duration a person reads at a glance."""
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        return "<1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def progress_text(job: LiveReconstruction, now: float | None = None) -> str:
    """What a reconstruction is doing, how far it is and (once a step is timed) how long is left."""
    progress = job.progress
    now = time.perf_counter() if now is None else now
    if progress.phase == "waiting":
        return "Starting the reconstruction..."
    if progress.phase == "iterating":
        if job.acquiring.is_set():
            return f"Iteration {job.iterations_done} (refining while frames arrive)"
        text = f"Iteration {job.iterations_done} of {job.run_target}"
    else:
        from uafp_gui.recon.start import PHASE_START_SEARCH

        at_most = "at most " if progress.phase == PHASE_START_SEARCH and progress.total > 5 else ""
        text = f"{progress.phase[:1].upper()}{progress.phase[1:]}: {progress.done} of {at_most}{progress.total}"
    eta = progress.eta_s(now)
    return text + (f", about {format_duration(eta)} left" if eta else "")
