"""The app's long-running work as plain-Python generators (no Qt here).

Each generator runs on a `GeneratorWorker` thread; each yield is an update for a view.

- `camera_stream`: snap after snap for the live view, each frame with its `FramePreview`.
- `acquisition_events`: an acquisition's events, frames with a thumbnail and (a few times a
  second) a `FramePreview`, so the UI thread only draws what is ready.
- `ReconJob`: UA-FP (streaming API) fed by an acquisition's frames as they arrive, or by a
  dataset opened from disk; `run()` iterates, `result()` and `export()` run after it stops.
  It records when every frame arrived so the GUI can measure frame -> display lag.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.errors import ReconstructionError
from uafp_gui.recon.choices import StopReason

__all__ = [
    "AcquiredFrame",
    "FramePreview",
    "JobProgress",
    "ReconJob",
    "acquisition_events",
    "autosave_folder_for",
    "camera_stream",
    "format_duration",
    "frame_preview",
    "open_devices",
    "warm_up_solver",
]


def warm_up_solver() -> None:
    """Import what the solver loads lazily on its first step (torch's optimiser machinery,
    scipy.optimize). Done once, before the window shows: a first import on the worker thread
    would hold the interpreter lock long enough to freeze the UI for a moment."""
    import scipy.optimize  # noqa: F401 - used by the self-calibrating start
    import torch

    parameter = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([parameter], lr=0.1)
    parameter.sum().backward()
    optimiser.step()


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


def open_devices(choice: Any, simulation: Any) -> dict[str, Any]:
    """Open the LED array and the camera a `DeviceChoice` names (blocking: run it off the UI
    thread). Returns core, led_array, microscope (the simulation's nominal one, or None for
    hardware: the user's description applies), bit_depth and a one-line description."""
    from uafp_gui.acquisition.plan import MicroscopeDescription
    from uafp_gui.devices.illuminate import IlluminateLedArray
    from uafp_gui.devices.micromanager import camera_bit_depth, open_core
    from uafp_gui.simulated.led_array import SimulatedLedArray
    from uafp_gui.simulated.microscope import open_simulated_microscope

    if choice.led_port is None:
        led_array = SimulatedLedArray(
            tuple(simulation.led_array_shape), simulation.led_pitch_mm,
            orientation=choice.orientation, height_mm=simulation.led_height_mm,
        )
        led_text = "simulated LED array"
    else:
        led_array = IlluminateLedArray(choice.led_port, orientation=choice.orientation, pitch_mm=choice.pitch_mm)
        led_text = f"LED array on {led_array.port}"
    try:
        led_array.set_color(*choice.rgb)
        if choice.mm_config is None:
            core, led_array = open_simulated_microscope(simulation, led_array)
            microscope = MicroscopeDescription.from_simulation(simulation)
            camera_text = "simulated microscope camera"
        else:
            core, led_array = open_core(choice.mm_config, led_array)
            microscope = None
            camera_text = f"camera {core.getCameraDevice()} ({choice.mm_config.name})"
        bit_depth = camera_bit_depth(core)
    except BaseException:
        led_array.close()
        raise
    return {
        "core": core,
        "led_array": led_array,
        "microscope": microscope,
        "bit_depth": bit_depth,
        "description": f"{camera_text}, {led_text}",
    }


def acquisition_events(acquisition: Any, job: ReconJob | None = None, full_scale: int = 65535) -> Iterator[Any]:
    """`acquisition.run()`, telling a live `ReconJob` when the run starts and ends; each
    `FrameAcquired` comes as an `AcquiredFrame` (thumbnail, and now and then a preview)."""
    from uafp_gui.acquisition.events import AcquisitionStarted, FrameAcquired

    last_preview = -np.inf
    try:
        for event in acquisition.run():
            if job is not None and isinstance(event, AcquisitionStarted):
                job.started(event.meta, event.frame_shape, event.path.name)
            if isinstance(event, FrameAcquired):
                preview = None
                now = time.perf_counter()
                if now - last_preview >= PREVIEW_INTERVAL_S or event.index == event.total - 1:
                    preview = frame_preview(event.frame, full_scale)
                    last_preview = now
                event = AcquiredFrame(event, frame_thumbnail(event.frame, full_scale=full_scale), preview)
            yield event
    finally:
        if job is not None:
            job.acquiring.clear()


def autosave_folder_for(dataset_path: Path | None, fallback: Path) -> Path:
    """Where a GUI reconstruction of `dataset_path` is saved whenever its run ends: `<stem>_autosave/`
    next to the dataset when that folder can be written, else `fallback/<stem>_autosave/`."""
    stem = Path(dataset_path).stem if dataset_path else "reconstruction"
    if dataset_path is not None:
        parent = Path(dataset_path).parent
        if os.access(parent, os.W_OK | os.X_OK):
            return parent / f"{stem}_autosave"
    return Path(fallback) / f"{stem}_autosave"


@dataclass(frozen=True)
class JobProgress:
    """Where a `ReconJob` is: `phase` ("waiting", a `UafpReconstruction` PHASE_* name, or "iterating"),
    `done` of `total` steps of it, since `started` (perf_counter). For the view's progress and ETA."""

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


class ReconJob:
    """One UA-FP reconstruction, built on the worker thread and kept between runs.

    Feed frames with `on_frame(index, frame)` (any thread; an acquisition subscriber) or give
    a dataset. `run(iterations)` keeps iterating while `acquiring` is set, then runs
    `iterations` more and ends; `stop()` ends it between iterations. `run` again to continue.
    """

    def __init__(
        self,
        settings: Any,
        *,
        meta: Any = None,
        frame_shape: tuple[int, int] | None = None,
        dataset: Any = None,
        calibration: Any = None,
        source_dataset: str = "",
        torch_threads: int | None = None,
    ) -> None:
        self.settings = settings
        self.meta = dataset.meta if dataset is not None else meta
        self.frame_shape = tuple(dataset.frames.shape[1:]) if dataset is not None else frame_shape
        self.dataset = dataset
        self.calibration = calibration
        self.source_dataset = source_dataset or (dataset.path.name if dataset is not None and dataset.path else "")
        self.torch_threads = torch_threads
        self.recon: Any = None
        self.acquiring = threading.Event()
        self.cancel = threading.Event()
        self.ready = threading.Event()  # meta and frame shape known
        if self.meta is not None and self.frame_shape is not None:
            self.ready.set()
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, np.ndarray]] = []
        self.arrivals: dict[int, float] = {}
        self.history: list[tuple[int, float, float, float, float]] = []  # iteration, shift x/y, rotation, height
        # What the job is doing now, for the view (read on the UI thread; replaced, never mutated):
        self.progress = JobProgress("waiting", 0, 0, time.perf_counter())
        self.run_first_iteration = 0
        self.run_target = 0
        # Whatever ends a run (it completes, Stop, quit, divergence, an engine failure), the last good
        # state is written here as a complete result folder (calibration.json says if it is partial).
        self.autosave_folder: Path | None = None
        self.autosaved: Path | None = None
        self.last_result: Any = None  # the ReconstructionResult last written (its calibration has the error bars)
        self.autosave_error: BaseException | None = None
        if dataset is not None:
            now = time.perf_counter()
            self.arrivals = dict.fromkeys(range(len(dataset.frames)), now)

    # ---- frames (any thread) ---------------------------------------------------------------
    def started(self, meta: Any, frame_shape: tuple[int, int], source_dataset: str = "") -> None:
        """The acquisition has started: now the reconstruction can be built."""
        self.meta, self.frame_shape = meta, tuple(frame_shape)
        self.source_dataset = self.source_dataset or source_dataset
        self.ready.set()

    def on_frame(self, index: int, frame: np.ndarray) -> None:
        with self._lock:
            self.arrivals[index] = time.perf_counter()
            if self.recon is None:
                self._waiting.append((index, frame))
                return
        self.recon.add_frames(frame[None], index)

    def frame_message(self, message: Any) -> None:
        """`Acquisition.subscribe` callback."""
        self.on_frame(message.index, message.frame)

    @property
    def frames_arrived(self) -> int:
        with self._lock:
            return len(self.arrivals)

    # ---- worker thread ---------------------------------------------------------------------
    def _build(self) -> None:
        if self.recon is not None:
            return
        from uafp_gui.recon.uafp import UafpReconstruction

        recon = UafpReconstruction(
            self.meta, self.frame_shape, self.settings, self.calibration, source_dataset=self.source_dataset
        )
        if self.dataset is not None:
            recon.add_frames(self.dataset.frames, 0)
        recon.on_phase = self._on_phase
        with self._lock:
            self.recon = recon
            waiting, self._waiting = self._waiting, []
        for index, frame in waiting:
            recon.add_frames(frame[None], index)

    def _on_phase(self, phase: str, done: int, total: int) -> None:
        """`UafpReconstruction.on_phase`: the start fits and search, before the first iteration."""
        current = self.progress
        started = current.started if current.phase == phase else time.perf_counter()
        self.progress = JobProgress(phase, done, total, started)

    def _record(self, update: Any) -> Any:
        progress = self.progress
        if progress.phase != "iterating":
            self.progress = JobProgress("iterating", update.iteration - self.run_first_iteration, self.run_target
                                        - self.run_first_iteration, time.perf_counter(), first_done=1)
        else:
            self.progress = JobProgress("iterating", update.iteration - self.run_first_iteration, self.run_target
                                        - self.run_first_iteration, progress.started, first_done=progress.first_done)
        g = update.geometry
        self.history.append((update.iteration, g.shift_x_mm, g.shift_y_mm, g.rotation_deg, g.height_mm))
        return update

    def run(self, iterations: int | None = None) -> Iterator[Any]:
        """Iterate (see the class docstring); yields `ReconstructionUpdate`s. However it ends, the
        last good state is written to `autosave_folder` (when set)."""
        import torch

        torch.set_num_threads(self.torch_threads or max(1, (os.cpu_count() or 2) - 1))
        self.cancel.clear()
        while not self.ready.wait(0.05):
            if self.cancel.is_set() or not self.acquiring.is_set():
                return
        self._build()
        self.run_first_iteration = self.recon.iteration
        self.run_target = self.recon.iteration + (self.settings.iterations if iterations is None else iterations)
        try:
            yield from self._iterate(iterations)
        finally:
            self._autosave()

    def _iterate(self, iterations: int | None) -> Iterator[Any]:
        while self.acquiring.is_set() and not self.cancel.is_set():
            if self.recon.frames_available == 0:
                time.sleep(0.05)  # waiting for the first frame to arrive, not for a reply
                continue
            try:
                for update in self.recon.run(iterations=1, cancel=self.cancel):
                    yield self._record(update)
            except ReconstructionError:
                if self.recon.stop_reason is StopReason.ENGINE_ERROR:
                    raise
                time.sleep(0.05)
        if self.cancel.is_set():
            if self.acquiring.is_set():  # stopped while frames were still coming
                self.recon.interrupted("stopped during the acquisition")
            return
        if self.recon.frames_available == 0:
            raise ReconstructionError("no frame was acquired: nothing to reconstruct")
        target = self.settings.iterations if iterations is None else iterations
        # The iterations after the acquisition: what the view counts ("iteration k of n") and times.
        self.run_first_iteration, self.run_target = self.recon.iteration, self.recon.iteration + target
        self.progress = JobProgress("waiting", 0, 0, time.perf_counter())
        for update in self.recon.run(iterations=target, cancel=self.cancel):
            yield self._record(update)
        if self.recon.failed:  # diverged: the engine's fault (the state is the last good one, and saved)
            raise ReconstructionError(self.recon.failure_message())

    def _autosave(self) -> None:
        """Write the last good state to `autosave_folder`; a failure to write is kept, not raised (the
        run's own outcome matters more), and shown by the window."""
        self.autosaved = self.autosave_error = None
        if self.autosave_folder is None or self.iterations_done == 0 or self.recon.object is None:  # nothing made
            return
        if self.recon.stop_reason is None:  # ended from outside mid-run (quit): still the last good state
            self.recon.interrupted("the application stopped the run")
        try:  # the spec's files only: drawing report.png would hold the interpreter lock and stall the UI
            self.autosaved = self.export(self.autosave_folder, report=False)
        except Exception as error:  # noqa: BLE001 - reported by the window, never lost silently
            self.autosave_error = error

    def stop(self) -> None:
        self.cancel.set()

    @property
    def iterations_done(self) -> int:
        """Iterations the reconstruction has made (0: stopped before its first, nothing to show or export)."""
        return 0 if self.recon is None else int(self.recon.iteration)

    # ---- after a run (worker thread) -------------------------------------------------------
    def result(self) -> Any:
        if self.recon is None or self.recon.object is None:
            raise ReconstructionError("the reconstruction has not run yet: start it first")
        return self.recon.result()

    def export(self, folder: str | os.PathLike[str], report: bool = True) -> Path:
        """Write the result folder (spec section 3) plus `report.png`."""
        from uafp_gui.recon.common import save_result

        result = self.last_result = self.result()
        return Path(save_result(result, folder, report=report, report_dataset=_MetaHolder(self.meta)))


class _MetaHolder:
    """`write_report` reads only `dataset.meta`."""

    def __init__(self, meta: Any) -> None:
        self.meta = meta
