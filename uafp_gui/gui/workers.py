"""Running work off the UI thread: generators on a QThread, one-shot tasks on an executor.

`GeneratorWorker` runs a plain-Python generator on its own `QThread` (the superqt/napari
pattern): every yielded item is kept as `latest` (and, with `keep_all`, queued for `take()`),
so a view pulls the newest on its own timer and intermediate items are dropped. `stop()`
ends the run at the next yield, or calls the job's own `on_stop` (e.g. `Acquisition.cancel`)
when it must finish cleanly; `background=True` runs it at a lower CPU priority (the solver:
on a machine with few cores the UI thread must still get the CPU to draw). `TaskRunner` runs
short blocking calls (device commands, file reading and writing) on a single background
thread and calls back on the UI thread.

Teardown: a signal emitted from a worker thread while the UI thread destroys a widget can
deadlock (the emitter holds the GIL and wants Qt's connection lock; the destroyer holds that
lock and wants the GIL). So every emission from a worker thread happens under a lock, and
`mute()` (called before any widget is closed) waits for an emission in flight and forbids the
next. A worker still running after the bounded wait at quit is `detach()`ed: muted, unparented
and kept alive here until it ends, so no QThread is ever destroyed while it runs.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

__all__ = ["GeneratorWorker", "TaskRunner"]

BACKGROUND_NICE = 10  # about a tenth of the CPU share of a normal thread when both want it


class GeneratorWorker(QThread):
    """Iterates `factory()` on a worker thread.

    Signals (queued to the UI thread): `failed(error)` when the generator raises, `ended()`
    when it is done (after `failed`, or after being stopped).
    """

    failed = Signal(object)
    ended = Signal()

    def __init__(
        self,
        factory: Callable[[], Iterator[Any]],
        *,
        name: str = "worker",
        keep_all: bool = False,
        on_stop: Callable[[], None] | None = None,
        background: bool = False,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName(name)
        self._background = background
        self._factory = factory
        self._keep_all = keep_all
        self._on_stop = on_stop
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._items: deque[Any] = deque()
        self._latest: Any = None
        self._sequence = 0
        self._taken = 0
        self.error: BaseException | None = None
        self._emit_lock = threading.Lock()
        self._muted = False

    # ---- worker thread --------------------------------------------------------------------
    def _lower_priority(self) -> None:
        if sys.platform.startswith("linux"):  # QThread priorities do nothing under Linux's default scheduler
            try:  # a thread's own nice value; threads it starts (torch's pool) inherit it
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
            except OSError:
                pass  # a hint only: without it the run is the same, the UI a little less smooth
        else:
            self.setPriority(QThread.Priority.LowPriority)

    def run(self) -> None:
        if self._background:
            self._lower_priority()
        try:
            generator = self._factory()
            for item in generator:
                with self._lock:
                    self._latest = item
                    self._sequence += 1
                    if self._keep_all:
                        self._items.append(item)
                if self._stop.is_set() and self._on_stop is None:
                    close = getattr(generator, "close", None)  # a generator's: run its finally blocks now
                    if close is not None:
                        close()
                    break
        except BaseException as error:  # shown to the user by whoever listens to `failed`
            self.error = error
            self._emit(self.failed, error)
        finally:
            self._emit(self.ended)

    def _emit(self, signal: Any, *args: Any) -> None:
        with self._emit_lock:
            if not self._muted:
                signal.emit(*args)

    # ---- UI thread ---------------------------------------------------------------------------
    def mute(self) -> None:
        """No signal is emitted after this returns (one in flight completes first)."""
        with self._emit_lock:
            self._muted = True

    def detach(self) -> None:
        """Mute a worker that is still running, unparent it and keep it alive until it ends."""
        self.mute()
        self.setParent(None)
        _DETACHED.add(self)

    # ---- any thread ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the job to end: at its next yield, or through its `on_stop` hook."""
        self._stop.set()
        if self._on_stop is not None:
            self._on_stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def latest(self) -> tuple[Any, bool]:
        """(newest item, whether it is new since the last call)."""
        with self._lock:
            fresh = self._sequence != self._taken
            self._taken = self._sequence
            return self._latest, fresh

    def take(self) -> list[Any]:
        """Every item yielded since the last `take()` (only with `keep_all`)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items


_DETACHED: set[GeneratorWorker] = set()


def wait_for_detached(timeout_s: float) -> bool:
    """Wait (bounded) for workers detached at quit; True when none is running any more."""
    deadline = time.monotonic() + timeout_s
    for worker in list(_DETACHED):
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if worker.isRunning() and not worker.wait(remaining_ms):
            return False
    _DETACHED.clear()
    return True


@atexit.register
def _never_destroy_a_running_thread() -> None:
    # Interpreter exit would destroy a still-running QThread, which aborts the process.
    if _DETACHED and not wait_for_detached(30.0):
        print("uafp: a background job did not stop within 30 s of quitting; exiting anyway", file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)


class TaskRunner(QObject):
    """Runs blocking calls on one background thread, in order; callbacks run on the UI thread."""

    _finished = Signal(object, object, object)  # callback, value, error

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"uafp-{name}")
        self._finished.connect(self._deliver)
        self._busy = 0
        self._emit_lock = threading.Lock()
        self._muted = False

    @property
    def busy(self) -> bool:
        return self._busy > 0

    def submit(
        self,
        function: Callable[[], Any],
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> Future:
        self._busy += 1

        def finished(future: Future) -> None:
            error = future.exception()
            value = None if error is not None else future.result()
            with self._emit_lock:  # see the module docstring: never emit into a closing UI
                if not self._muted:
                    self._finished.emit((on_done, on_error), value, error)

        future = self._executor.submit(function)
        future.add_done_callback(finished)
        return future

    @Slot(object, object, object)
    def _deliver(self, callbacks: tuple, value: Any, error: BaseException | None) -> None:
        self._busy -= 1
        on_done, on_error = callbacks
        if error is not None:
            if on_error is not None:
                on_error(error)
        elif on_done is not None:
            on_done(value)

    def mute(self) -> None:
        """No callback is delivered after this returns."""
        with self._emit_lock:
            self._muted = True

    def shutdown(self, wait: bool = True, timeout_s: float | None = None) -> bool:
        """Stop taking work; with `timeout_s`, wait at most that long for the running call
        (its thread is a plain Python thread: the interpreter joins it at exit). True when idle."""
        if timeout_s is None:
            self._executor.shutdown(wait=wait, cancel_futures=False)
            return True
        done = threading.Event()
        self._executor.submit(done.set)
        self._executor.shutdown(wait=False, cancel_futures=False)
        return done.wait(timeout_s)
