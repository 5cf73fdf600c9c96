"""Where acquired frames go: the dataset file and the subscribers, each on its own thread so the
acquisition never waits on a disk or a viewer.

`QueueThread` is the one base: a daemon thread taking items from an unbounded queue in order until
`close()`. `FrameWriter` appends each frame to a `DatasetWriter` (crash-safe: the file is a valid
partial dataset after every frame); `Publisher` calls the subscribers with each `FrameMessage`.
`DatasetSink` is a pymmcore-plus data handler for users who run an `fp_sequence` with their own
`core.mda.run(seq, output=[DatasetSink(path)])` (pymmcore-plus already calls it on its own thread).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uafp_gui.acquisition.events import FrameMessage
from uafp_gui.acquisition.sequence import dataset_meta_of
from uafp_gui.errors import ConfigError, DatasetError, WriteFailure

if TYPE_CHECKING:  # pragma: no cover
    from uafp_gui.io.writer import DatasetWriter

__all__ = ["DatasetSink", "FrameWriter", "Publisher", "QueueThread"]

logger = logging.getLogger(__name__)


class QueueThread:
    """Hands items to `handle` on a daemon thread, in the order `put` received them.

    `put` never blocks (the queue is unbounded: a 128 x 128 uint16 frame is 32 KiB); `close` lets
    the thread finish what is queued and waits for it.
    """

    thread_name = "uafp-queue"

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.handle(item)

    def handle(self, item: Any) -> None:
        raise NotImplementedError

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def close(self, timeout_s: float = 60.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)


class FrameWriter(QueueThread):
    """Appends frames to a `DatasetWriter` on its own thread, in order, as they arrive.

    A write error is kept and raised by the next `put` or by `close`, as a `WriteFailure`.
    """

    thread_name = "uafp-writer"

    def __init__(self, writer: DatasetWriter) -> None:
        self.writer = writer
        self.frames_written = writer.frames_present
        self.error: BaseException | None = None
        self._failed_index: Any = "?"
        super().__init__()

    def handle(self, item: tuple[int, np.ndarray]) -> None:
        if self.error is not None:
            return  # after a failure nothing more is written; the run is stopping
        index, frame = item
        try:
            self.writer.append(frame)
            self.frames_written += 1
        except BaseException as error:  # raised on the acquisition thread
            self.error = error
            self._failed_index = index

    def _raise_if_failed(self) -> None:
        if self.error is None:
            return
        error = self.error
        path = self.writer.path
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            what = f"the disk holding {path} is full (free some space, or write to another disk)"
        else:
            what = f"writing frame {self._failed_index} to {path} failed ({error})"
        raise WriteFailure(
            f"{what}: the {self.frames_written} frames written before are kept",
            path=path,
            frames_saved=self.frames_written,
        ) from error

    def put(self, item: tuple[int, np.ndarray]) -> None:
        """Queue `(index, frame)`; raises the `WriteFailure` of an earlier frame."""
        self._raise_if_failed()
        super().put(item)

    def close(self, timeout_s: float = 60.0) -> None:
        """Write what is queued, close the file, raise a pending write error."""
        super().close(timeout_s)
        try:
            self.writer.close()
        except OSError as error:
            if self.error is None:
                self.error = error
        self._raise_if_failed()


class Publisher(QueueThread):
    """Calls subscribers with each `FrameMessage` on its own thread, in order; a subscriber that
    raises is logged and unsubscribed (a viewer's bug must not stop the acquisition)."""

    thread_name = "uafp-publisher"

    def __init__(self, subscribers: list[Callable[[FrameMessage], Any]]) -> None:
        self.subscribers = subscribers
        self.errors: list[BaseException] = []
        super().__init__()

    def handle(self, message: FrameMessage) -> None:
        for callback in list(self.subscribers):
            try:
                callback(message)
            except Exception as error:
                logger.exception("frame subscriber %r failed; it is unsubscribed", callback)
                self.errors.append(error)
                self.subscribers.remove(callback)


class DatasetSink:
    """A pymmcore-plus data handler writing an `fp_sequence` acquisition as a uafp dataset TIFF.

    Pass it in `core.mda.run(seq, output=[DatasetSink(path), ...])` (or connect it with
    `mda_listeners_connected`). Each frame is on disk before the next arrives; an interrupted
    run leaves a valid partial dataset. `error` holds the first problem (pymmcore-plus logs
    exceptions raised in handlers instead of stopping the run), `path` the file.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.writer: Any = None
        self.error: BaseException | None = None
        self.frames_written = 0

    def sequenceStarted(self, sequence: Any, *args: Any) -> None:  # noqa: N802 - pymmcore-plus signal names
        from uafp_gui.io.writer import DatasetWriter

        self.error = None
        self.frames_written = 0
        try:
            meta = dataset_meta_of(sequence)
            self.writer = DatasetWriter(self.path, meta, overwrite=self.overwrite)
        except (ConfigError, DatasetError) as error:
            self.error = error
            raise

    def frameReady(self, image: np.ndarray, event: Any, meta: Any = None) -> None:  # noqa: N802
        if self.writer is None or self.error is not None:
            return
        index = event.metadata.get("uafp_frame")
        if index != self.writer.frames_present:
            self.error = DatasetError(
                f"{self.path}: frame {index} arrived but frame {self.writer.frames_present} was next: the "
                "engine must be FpEngine and the events those of fp_sequence, in order"
            )
            raise self.error
        try:
            self.writer.append(np.asarray(image))
        except DatasetError as error:
            self.error = error
            raise
        self.frames_written = self.writer.frames_present

    def sequenceFinished(self, sequence: Any, *args: Any) -> None:  # noqa: N802
        if self.writer is not None:
            self.writer.close()
