"""Every error the project raises on purpose, in one place, from every layer.

Each message says what went wrong; the structured fields (`path`, `frames_saved`, `frames_total`)
let a front end word what to do about it in its own terms: only the CLI can say `--resume`, the
GUI says it in its own words (`uafp_gui.cli.errors`, `uafp_gui.gui.dialogs`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CameraTimeoutError",
    "ConfigError",
    "DatasetError",
    "DeviceError",
    "LedArrayCommandError",
    "LedArrayDisconnected",
    "LedArrayError",
    "LedArrayFailure",
    "LedArrayNotFound",
    "LedArraySequenceError",
    "LedArrayTimeout",
    "ReconstructionError",
    "RunCancelled",
    "TilesFailed",
    "TriggerMismatchError",
    "UafpError",
    "WriteFailure",
]


class UafpError(Exception):
    """Base of every error the project raises on purpose (front ends show these as one line).

    `path`: the file the error is about; `frames_saved` of `frames_total`: for an acquisition that
    stopped, how many frames are on disk in `path` (and can be completed by resuming it)."""

    def __init__(
        self,
        message: str = "",
        *,
        path: str | os.PathLike[str] | None = None,
        frames_saved: int | None = None,
        frames_total: int | None = None,
    ) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.frames_saved = frames_saved
        self.frames_total = frames_total

    @property
    def resumable(self) -> bool:
        """An acquisition stopped with some of its frames saved in `path`: resuming it acquires the rest."""
        return bool(self.frames_saved) and self.path is not None


class DatasetError(UafpError):
    """A dataset or result file is missing, corrupt or inconsistent with the spec."""


class ConfigError(UafpError):
    """A setting or command-line option is invalid."""


class DeviceError(UafpError):
    """A piece of hardware (or its simulator) failed or did not answer."""


class ReconstructionError(UafpError):
    """A reconstruction could not start or continue."""


class RunCancelled(ReconstructionError):
    """A tiled (full-field) run stopped on request (Stop, Ctrl-C): `tiles_done` tiles had finished and
    were delivered before it stopped."""

    def __init__(self, message: str = "", *, tiles_done: int = 0) -> None:
        super().__init__(message)
        self.tiles_done = tiles_done


class TilesFailed(ReconstructionError):
    """Tasks of a tiled (full-field) run failed (each after `tries` tries) while the others finished.

    `finished`: {position: result} of every task that finished (delivered before this was raised);
    `failures`: {position: "ErrorType: message"} of those that failed; `planned`: the tasks of the run;
    `tries`: how often each failed task was tried (1: not retried; None: not known).
    """

    def __init__(
        self,
        message: str = "",
        *,
        finished: Mapping[int, Any] | None = None,
        failures: dict[int, str] | None = None,
        planned: int = 0,
        tries: int | None = None,
    ) -> None:
        super().__init__(message)
        self.finished: dict[int, Any] = dict(finished or {})
        self.failures = dict(failures or {})
        self.planned = planned
        self.tries = tries


# ------------------------------------------------------------------------------- devices


class CameraTimeoutError(DeviceError):
    """The camera delivered no frame within its timeout."""


class LedArrayError(DeviceError):
    """The LED array failed, refused a command or cannot be reached."""


class LedArrayTimeout(LedArrayError):
    """The LED array did not finish its reply (`-==-`) in time."""


class LedArrayDisconnected(LedArrayError):
    """The serial port went away (cable pulled, board reset) or cannot be reopened."""


class LedArrayCommandError(LedArrayError):
    """The firmware answered a command with an `ERROR` line."""


class LedArrayNotFound(LedArrayError):
    """No serial port answered `about` like an LED array."""


class LedArraySequenceError(LedArrayError):
    """A hardware-triggered LED sequence cannot be loaded, armed or is not where it should be."""


# --------------------------------------------------------------------------- acquisition


class LedArrayFailure(DeviceError):
    """The LED array failed while the acquisition was setting a frame's LEDs."""


class TriggerMismatchError(DeviceError):
    """A hardware-triggered sequence ended with the LED array on another step than the frame count
    says: a trigger edge was lost (or an extra one arrived), so some frames show the wrong LED."""


class WriteFailure(DatasetError):
    """A frame could not be written to the dataset (disk full, file gone, ...)."""
