"""The one reconstruction driver of the app: UA-FP (streaming API) fed by an acquisition's frames
as they arrive, or by a dataset opened from disk. The GUI runs `run()` on a worker thread; the CLI
runs it on a thread of its own beside the acquisition (`start_thread`, then `finish`).

While an acquisition runs (`acquiring` set) the reconstruction iterates on what has arrived; once
the acquisition ends it runs the asked iterations and stops. However a run ends (it completes, is
stopped, the program quits, the engine diverges or fails), the last good state is written to
`autosave_folder` when one is set. `lag_report()` says how far the reconstruction trailed the
newest frame while frames arrived.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from uafp_gui.errors import ReconstructionError
from uafp_gui.recon.choices import StopReason

if TYPE_CHECKING:
    from uafp_gui.io.calibration import Calibration
    from uafp_gui.io.dataset import Dataset
    from uafp_gui.io.schema import DatasetMeta
    from uafp_gui.recon.common import ReconstructionResult
    from uafp_gui.recon.uafp import ReconstructionUpdate, UafpReconstruction, UafpSettings

__all__ = [
    "JobProgress",
    "LagReport",
    "LiveReconstruction",
    "autosave_folder_for",
    "threads_beside_a_ui",
    "warm_up_solver",
]

WAITING = "waiting"
ITERATING = "iterating"


def warm_up_solver() -> None:
    """Import what the solver loads lazily on its first step (torch's optimiser machinery,
    scipy.optimize). Done once, before the work starts: a first import on a worker thread would
    hold the interpreter lock long enough to freeze a GUI for a moment."""
    import scipy.optimize  # noqa: F401 - used by the self-calibrating start
    import torch

    parameter = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([parameter], lr=0.1)
    parameter.sum().backward()
    optimiser.step()


def threads_beside_a_ui() -> int:
    """torch threads for a reconstruction that runs beside a UI thread: all cores but one."""
    return max(1, (os.cpu_count() or 2) - 1)


def autosave_folder_for(dataset_path: Path | None, fallback: Path) -> Path:
    """Where a reconstruction of `dataset_path` is saved whenever its run ends: `<stem>_autosave/`
    next to the dataset when that folder can be written, else `fallback/<stem>_autosave/`."""
    stem = Path(dataset_path).stem if dataset_path else "reconstruction"
    if dataset_path is not None:
        parent = Path(dataset_path).parent
        if os.access(parent, os.W_OK | os.X_OK):
            return parent / f"{stem}_autosave"
    return Path(fallback) / f"{stem}_autosave"


@dataclass(frozen=True)
class JobProgress:
    """Where a `LiveReconstruction` is: `phase` ("waiting", a `UafpReconstruction` PHASE_* name, or
    "iterating"), `done` of `total` steps of it, since `started` (perf_counter). For progress and ETA."""

    phase: str
    done: int
    total: int
    started: float
    first_done: int = 0  # steps already done when `started` was taken (the ETA rate excludes them)

    def eta_s(self, now: float) -> float | None:
        """Seconds left at this phase's own pace; None until a step beyond the first has been timed."""
        timed = self.done - self.first_done
        if timed <= 0 or self.total <= self.done:
            return None if self.total > self.done else 0.0
        return (now - self.started) / timed * (self.total - self.done)


@dataclass(frozen=True)
class LagReport:
    """How far a live reconstruction trailed the acquisition: iterations made while frames arrived,
    frames behind the newest one at those iterations, seconds from a frame's arrival to the first
    update that used it."""

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
    """One UA-FP reconstruction, built on the thread that runs it and kept between runs.

    Feed frames with `attach(acquisition)` (its frames, as they are published) and `started(event)`
    (its `AcquisitionStarted`), or give a `dataset`. `run(iterations)` keeps iterating while
    `acquiring` is set, then runs `iterations` more (default: the settings') and ends; `stop()` ends
    it between iterations. `run` again to continue. `torch_threads`: set torch's thread count for
    the run (None: leave it).
    """

    def __init__(
        self,
        settings: UafpSettings,
        *,
        meta: DatasetMeta | None = None,
        frame_shape: tuple[int, int] | None = None,
        dataset: Dataset | None = None,
        calibration: Calibration | None = None,
        source_dataset: str = "",
        torch_threads: int | None = None,
    ) -> None:
        self.settings = settings
        self.meta = dataset.meta if dataset is not None else meta
        self.frame_shape: tuple[int, int] | None = (
            (int(dataset.frames.shape[1]), int(dataset.frames.shape[2])) if dataset is not None else frame_shape
        )
        self.dataset = dataset
        self.calibration = calibration
        self.source_dataset = source_dataset or (dataset.path.name if dataset is not None and dataset.path else "")
        self.torch_threads = torch_threads
        self.recon: UafpReconstruction | None = None
        self.on_phase: Callable[[str, int, int], object] | None = None  # also told of the start fits' progress
        self.acquiring = threading.Event()
        self.cancel = threading.Event()
        self.ready = threading.Event()  # meta and frame shape known
        if self.meta is not None and self.frame_shape is not None:
            self.ready.set()
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, np.ndarray]] = []
        self._existing: tuple[Path, int] | None = None  # a resumed dataset's frames already on disk
        self.arrivals: dict[int, float] = {}  # frame index -> perf_counter when it arrived
        self.history: list[tuple[int, float, float, float, float]] = []  # iteration, shift x/y, rotation, height
        # What the job is doing now, for a view (replaced, never mutated):
        self.progress = JobProgress(WAITING, 0, 0, time.perf_counter())
        self.run_first_iteration = 0
        self.run_target = 0
        self.autosave_folder: Path | None = None
        self.autosaved: Path | None = None
        self.last_result: ReconstructionResult | None = None  # the result last written (with its error bars)
        self.autosave_error: BaseException | None = None
        self._first_used: dict[int, float] = {}
        self._behind: list[int] = []
        self._updates_live = 0
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self.on_update: Callable[[ReconstructionUpdate], object] | None = None  # `start_thread`'s consumer
        if dataset is not None:
            self.arrivals = dict.fromkeys(range(len(dataset.frames)), time.perf_counter())

    # ---- frames (any thread) ---------------------------------------------------------------
    def attach(self, acquisition: object) -> None:
        """Take `acquisition`'s frames as they are published; iterate live until it ends."""
        acquisition.subscribe(self.frame_message)  # type: ignore[attr-defined]
        self.acquiring.set()

    def started(self, event: object) -> None:
        """The acquisition has started (its `AcquisitionStarted`): the reconstruction can be built.
        Frames a resumed dataset already holds are read from disk when it is."""
        self.meta, self.frame_shape = event.meta, tuple(event.frame_shape)  # type: ignore[attr-defined]
        self.source_dataset = self.source_dataset or event.path.name  # type: ignore[attr-defined]
        present = int(getattr(event, "frames_present", 0))
        if present:
            self._existing = (event.path, present)  # type: ignore[attr-defined]
            now = time.perf_counter()
            with self._lock:
                for index in range(present):
                    self.arrivals.setdefault(index, now)
        self.ready.set()

    def ended(self) -> None:
        """The acquisition has ended (however): the final iterations may run."""
        self.acquiring.clear()

    def on_frame(self, index: int, frame: np.ndarray) -> None:
        with self._lock:
            self.arrivals[index] = time.perf_counter()
            recon = self.recon
            if recon is None:
                self._waiting.append((index, frame))
                return
        recon.add_frames(frame[None], index)

    def frame_message(self, message: object) -> None:
        """`Acquisition.subscribe` callback."""
        self.on_frame(message.index, message.frame)  # type: ignore[attr-defined]

    @property
    def frames_arrived(self) -> int:
        with self._lock:
            return len(self.arrivals)

    # ---- the thread that runs it -----------------------------------------------------------
    def _build(self) -> UafpReconstruction:
        if self.recon is not None:
            return self.recon
        from uafp_gui.recon.uafp import UafpReconstruction

        assert self.meta is not None and self.frame_shape is not None
        recon = UafpReconstruction(
            self.meta, self.frame_shape, self.settings, self.calibration, source_dataset=self.source_dataset
        )
        if self.dataset is not None:
            recon.add_frames(self.dataset.frames, 0)
        if self._existing is not None:
            from uafp_gui.io.dataset import read_tiff_frames

            path, present = self._existing
            frames, _, _ = read_tiff_frames(path)
            recon.add_frames(np.stack(frames[:present]), 0)
        recon.on_phase = self._on_phase
        with self._lock:
            self.recon = recon
            waiting, self._waiting = self._waiting, []
        for index, frame in waiting:
            recon.add_frames(frame[None], index)
        return recon

    def _on_phase(self, phase: str, done: int, total: int) -> None:
        """`UafpReconstruction.on_phase`: the start fits and search, before the first iteration."""
        current = self.progress
        started = current.started if current.phase == phase else time.perf_counter()
        self.progress = JobProgress(phase, done, total, started)
        if self.on_phase is not None:
            self.on_phase(phase, done, total)

    def _record(self, update: ReconstructionUpdate) -> ReconstructionUpdate:
        now = time.perf_counter()
        span = self.run_target - self.run_first_iteration
        done = update.iteration - self.run_first_iteration
        progress = self.progress
        if progress.phase != ITERATING:
            self.progress = JobProgress(ITERATING, done, span, now, first_done=1)
        else:
            self.progress = JobProgress(ITERATING, done, span, progress.started, first_done=progress.first_done)
        g = update.geometry
        self.history.append((update.iteration, g.shift_x_mm, g.shift_y_mm, g.rotation_deg, g.height_mm))
        with self._lock:
            arrived = len(self.arrivals)
            for index, arrival in self.arrivals.items():
                if index not in self._first_used and index < update.frames_used:
                    self._first_used[index] = now - arrival
        if self.acquiring.is_set():
            self._behind.append(max(0, arrived - update.frames_used))
            self._updates_live += 1
        return update

    def run(self, iterations: int | None = None) -> Iterator[ReconstructionUpdate]:
        """Iterate (see the class docstring); yields `ReconstructionUpdate`s. However it ends, the
        last good state is written to `autosave_folder` (when set)."""
        if self.torch_threads is not None:
            import torch

            torch.set_num_threads(self.torch_threads)
        self.cancel.clear()
        while not self.ready.wait(0.05):
            if self.cancel.is_set() or not self.acquiring.is_set():
                return
        recon = self._build()
        self.run_first_iteration = recon.iteration
        self.run_target = recon.iteration + (self._target(iterations))
        try:
            yield from self._iterate(recon, iterations)
        finally:
            self._autosave()

    def _target(self, iterations: int | None) -> int:
        target = self.settings.iterations if iterations is None else iterations
        if target is None:  # the settings' default: what the engine chose for this dataset
            return int(self.recon.settings.iterations or 0) if self.recon is not None else 0
        return int(target)

    def _iterate(self, recon: UafpReconstruction, iterations: int | None) -> Iterator[ReconstructionUpdate]:
        while self.acquiring.is_set() and not self.cancel.is_set():
            if recon.frames_available == 0:
                time.sleep(0.05)  # waiting for the first frame to arrive, not for a reply
                continue
            try:
                for update in recon.run(iterations=1, cancel=self.cancel):
                    yield self._record(update)
            except ReconstructionError:
                if recon.stop_reason is StopReason.ENGINE_ERROR:
                    raise
                time.sleep(0.05)  # not enough frames to start yet
        if self.cancel.is_set():
            if self.acquiring.is_set():  # stopped while frames were still coming
                recon.interrupted("stopped during the acquisition")
            return
        if recon.frames_available == 0:
            raise ReconstructionError("no frame was acquired: nothing to reconstruct")
        target = self._target(iterations)
        # The iterations after the acquisition: what a view counts ("iteration k of n") and times.
        self.run_first_iteration, self.run_target = recon.iteration, recon.iteration + target
        self.progress = JobProgress(WAITING, 0, 0, time.perf_counter())
        for update in recon.run(iterations=target, cancel=self.cancel):
            yield self._record(update)
        if recon.failed:  # diverged: the engine's fault (the state is the last good one, and saved)
            raise ReconstructionError(recon.failure_message())

    def _autosave(self) -> None:
        """Write the last good state to `autosave_folder`; a failure to write is kept, not raised (the
        run's own outcome matters more), and shown by the front end."""
        self.autosaved = self.autosave_error = None
        recon = self.recon
        if self.autosave_folder is None or recon is None or self.iterations_done == 0 or recon.object is None:
            return
        if recon.stop_reason is None:  # ended from outside mid-run (quit): still the last good state
            recon.interrupted("the application stopped the run")
        try:  # the spec's files only: drawing report.png would hold the interpreter lock and stall a GUI
            self.autosaved = self.export(self.autosave_folder, report=False)
        except Exception as error:  # noqa: BLE001 - reported by the front end, never lost silently
            self.autosave_error = error

    def stop(self) -> None:
        self.cancel.set()

    @property
    def iterations_done(self) -> int:
        """Iterations the reconstruction has made (0: stopped before its first, nothing to show or export)."""
        return 0 if self.recon is None else int(self.recon.iteration)

    # ---- beside an acquisition, on a thread of its own (the CLI) ---------------------------------
    def start_thread(self, iterations: int | None = None) -> None:
        """Run `run(iterations)` on a thread; each update goes to `on_update` (when set). `finish()`
        waits for it."""

        def consume() -> None:
            try:
                for update in self.run(iterations):
                    if self.on_update is not None:
                        self.on_update(update)
            except BaseException as error:  # raised by finish()
                self._thread_error = error

        self._thread = threading.Thread(target=consume, name="uafp-live-recon", daemon=True)
        self._thread.start()

    def finish(self) -> ReconstructionResult:
        """The acquisition is over: wait for the final iterations of `start_thread`'s run, return the result."""
        self.ended()
        if self._thread is not None:
            self._thread.join()
        if self._thread_error is not None:
            raise self._thread_error
        return self.result()

    # ---- after a run ---------------------------------------------------------------------------
    def result(self) -> ReconstructionResult:
        if self.recon is None or self.recon.object is None:
            raise ReconstructionError("the reconstruction has not run yet: start it first")
        return self.recon.result()

    def export(self, folder: str | os.PathLike[str], report: bool = True) -> Path:
        """Write the result folder (spec section 3), plus `report.png` when asked."""
        from types import SimpleNamespace

        from uafp_gui.recon.common import save_result

        result = self.last_result = self.result()
        return Path(save_result(result, Path(folder), report=report, report_dataset=SimpleNamespace(meta=self.meta)))

    def lag_report(self) -> LagReport:
        latencies = np.array(list(self._first_used.values()) or [float("nan")])
        behind = np.array(self._behind or [0])
        finite = np.isfinite(latencies).any()
        return LagReport(
            updates=self._updates_live,
            frames_behind_mean=float(behind.mean()),
            frames_behind_max=int(behind.max()),
            latency_median_s=float(np.nanmedian(latencies)) if finite else float("nan"),
            latency_max_s=float(np.nanmax(latencies)) if finite else float("nan"),
        )
