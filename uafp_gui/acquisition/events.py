"""What an acquisition reports while it runs: small immutable progress events (yielded by
`Acquisition.run`) and the `FrameMessage` its subscribers receive."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from uafp_gui._compat import StrEnum

if TYPE_CHECKING:  # pragma: no cover
    from uafp_gui.io.schema import DatasetMeta, FrameSpec

__all__ = [
    "AcquisitionFinished",
    "AcquisitionState",
    "FinishReason",
    "AcquisitionPaused",
    "AcquisitionStarted",
    "FrameAcquired",
    "FrameMessage",
    "ProgressEvent",
]


class AcquisitionState(StrEnum):
    """Where an `Acquisition` is (`Acquisition.state`)."""

    IDLE = "idle"
    ACQUIRING = "acquiring"
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


class FinishReason(StrEnum):
    """Why a run ended without an error (`AcquisitionFinished.reason`)."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class AcquisitionStarted:
    """The run starts: `frames_present` of `total` frames were already on disk (resume)."""

    total: int
    frames_present: int
    path: Path
    meta: DatasetMeta
    frame_shape: tuple[int, int]


@dataclass(frozen=True)
class FrameAcquired:
    """Frame `index` (0-based, dataset order) is acquired and queued for writing.

    `frame` is a read-only view of the camera image (the array written and published);
    `elapsed_s` and `eta_s` count this session's frames only.
    """

    index: int
    total: int
    elapsed_s: float
    eta_s: float
    frame: np.ndarray
    spec: FrameSpec
    frames_written: int
    saturated_pixels: int = 0  # pixels at the camera's full scale (clipped: the reconstruction leaves them out)

    @property
    def done(self) -> int:
        return self.index + 1

    @property
    def saturated_fraction(self) -> float:
        return self.saturated_pixels / max(self.frame.size, 1)


@dataclass(frozen=True)
class AcquisitionPaused:
    """The run is paused before frame `next_index`; `resume()` or `cancel()` continues."""

    next_index: int
    total: int


@dataclass(frozen=True)
class AcquisitionFinished:
    """The run ended, completed or cancelled (`reason`). Errors are raised instead."""

    reason: FinishReason
    frames_written: int
    total: int
    path: Path
    elapsed_s: float
    per_frame_overhead_ms: float | None = None
    saturated_frames: tuple[int, ...] = ()  # this session's frames with clipped pixels
    max_saturated_fraction: float = 0.0  # the largest clipped fraction of one frame

    def saturation_summary(self) -> str:
        """One line about clipped frames ("" when none clipped)."""
        if not self.saturated_frames:
            return ""
        return (
            f"{len(self.saturated_frames)} of {self.total} frames have saturated pixels (up to "
            f"{100 * self.max_saturated_fraction:.1f} % of a frame); the reconstruction leaves those pixels out, "
            "but a shorter exposure (or auto exposure) gives better data"
        )


@dataclass(frozen=True)
class FrameMessage:
    """What subscribers receive for every new frame (on the publisher thread)."""

    index: int
    frame: np.ndarray  # read-only, shared with the writer: never modify it
    spec: FrameSpec
    meta: DatasetMeta


ProgressEvent = AcquisitionStarted | FrameAcquired | AcquisitionPaused | AcquisitionFinished
