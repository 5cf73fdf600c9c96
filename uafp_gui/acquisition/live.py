"""Live reconstruction during an acquisition: UA-FP (streaming API) fed by the frame subscribers.

`LiveReconstruction` subscribes to an `Acquisition`; frames are handed to
`UafpReconstruction.add_frames` as they arrive (on the acquisition's publisher thread, no
copy) and a background thread keeps iterating on what has arrived. `finish()` runs the final
iterations once the acquisition is done and returns the result. `lag_report()` says how far
the reconstruction trailed the newest frame (frames behind, and seconds from a frame's
arrival to the first update that used it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from uafp_gui.acquisition.events import AcquisitionStarted, FrameMessage
from uafp_gui.acquisition.runner import Acquisition
from uafp_gui.errors import ConfigError, ReconstructionError

__all__ = ["LagReport", "LiveReconstruction"]


def _import_uafp() -> Any:
    try:
        from uafp_gui.recon import uafp
    except ImportError as error:  # pragma: no cover - the engine ships with the package
        raise ConfigError(f"live reconstruction needs the UA-FP engine (uafp_gui.recon.uafp): {error}") from error
    return uafp


@dataclass(frozen=True)
class LagReport:
    updates: int
    frames_behind_mean: float
    frames_behind_max: int
    latency_median_s: float
    latency_max_s: float

    def describe(self) -> str:
        if self.updates == 0:
            live = ("live reconstruction: no iteration finished while frames arrived (the acquisition ended while "
                    "the start geometry was being fitted)")
        else:
            live = (f"live reconstruction: {self.updates} iterations while frames arrived, trailing the newest frame "
                    f"by {self.frames_behind_mean:.1f} frames on average (max {self.frames_behind_max})")
        if not np.isfinite(self.latency_median_s):
            return live
        return (f"{live}; a frame entered the reconstruction {self.latency_median_s:.2f} s after it arrived "
                f"(median; max {self.latency_max_s:.2f} s)")


class LiveReconstruction:
    """UA-FP running alongside an acquisition.

    `on_update(update)` (optional) sees every `ReconstructionUpdate`, on the reconstruction
    thread. Use `attach(acquisition)` before iterating `acquisition.run()`, and `started(event)`
    with its `AcquisitionStarted` event (the CLI does both).
    """

    def __init__(self, settings: Any = None, on_update: Callable[[Any], Any] | None = None) -> None:
        uafp = _import_uafp()
        self.settings = settings or uafp.UafpSettings()
        self.on_update = on_update
        self.recon = None
        self._stop = threading.Event()
        self._frames_arrived = threading.Condition()
        self._arrivals: dict[int, float] = {}
        self._arrived_count = 0
        self._thread: threading.Thread | None = None
        self._first_used: dict[int, float] = {}
        self._behind: list[int] = []
        self.error: BaseException | None = None
        self.last_update = None
        self._acquiring = True
        self._updates_live = 0

    def attach(self, acquisition: Acquisition) -> None:
        acquisition.subscribe(self._on_frame)

    def started(self, event: AcquisitionStarted) -> None:
        """Build the reconstruction for the run's metadata; load frames already on disk (resume)."""
        uafp = _import_uafp()
        self.recon = uafp.UafpReconstruction(
            event.meta, event.frame_shape, self.settings, source_dataset=event.path.name
        )
        if event.frames_present:
            from uafp_gui.io.dataset import read_tiff_frames

            frames, _, _ = read_tiff_frames(event.path)
            existing = np.stack(frames[: event.frames_present])
            self.recon.add_frames(existing, 0)
            now = time.perf_counter()
            for index in range(event.frames_present):
                self._arrivals[index] = now
            self._arrived_count = event.frames_present
        self._thread = threading.Thread(target=self._loop, name="uafp-live-recon", daemon=True)
        self._thread.start()

    def _on_frame(self, message: FrameMessage) -> None:
        if self.recon is None:
            return
        self.recon.add_frames(message.frame[None], message.index)
        with self._frames_arrived:
            self._arrivals[message.index] = time.perf_counter()
            self._arrived_count += 1
            self._frames_arrived.notify_all()

    def _record(self, update: Any) -> None:
        now = time.perf_counter()
        with self._frames_arrived:
            arrived = self._arrived_count
            for index, arrival in self._arrivals.items():
                if index not in self._first_used and index < update.frames_used:
                    self._first_used[index] = now - arrival
        if self._acquiring:
            self._behind.append(max(0, arrived - update.frames_used))
        self.last_update = update
        self._updates_live += self._acquiring
        if self.on_update is not None:
            self.on_update(update)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                with self._frames_arrived:
                    if self._arrived_count == 0:
                        self._frames_arrived.wait(0.1)
                        continue
                try:
                    for update in self.recon.run(iterations=1, cancel=self._stop):
                        self._record(update)
                except ReconstructionError:
                    time.sleep(0.05)  # not enough frames to start yet
        except BaseException as error:  # reported by finish()
            self.error = error

    def finish(self, iterations: int | None = None, progress: Callable[[Any], Any] | None = None) -> Any:
        """Stop the live loop, run `iterations` more (default: the settings' count), return the result.

        Latencies count these final updates too: a frame that arrived after the last live update
        is "used" at the first final one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error
        if self.recon is None:
            raise ReconstructionError("the acquisition never started: nothing to reconstruct")
        self._acquiring = False
        for update in self.recon.run(iterations=self.settings.iterations if iterations is None else iterations):
            self._record(update)
            if progress is not None:
                progress(update)
        return self.recon.result()

    def lag_report(self) -> LagReport:
        latencies = np.array(list(self._first_used.values()) or [float("nan")])
        behind = np.array(self._behind or [0])
        return LagReport(
            updates=self._updates_live,
            frames_behind_mean=float(behind.mean()),
            frames_behind_max=int(behind.max()),
            latency_median_s=float(np.nanmedian(latencies)) if np.isfinite(latencies).any() else float("nan"),
            latency_max_s=float(np.nanmax(latencies)) if np.isfinite(latencies).any() else float("nan"),
        )
