"""The acquisition runner: `Acquisition` prepares a run (`uafp_gui.acquisition.prepare`), runs its
frames through pymmcore-plus's runner (`core.mda.run`) with the strict `FpEngine`, streams every
frame to the dataset file and the subscribers (`uafp_gui.acquisition.sinks`), and reports progress
as a plain generator of small immutable events (`uafp_gui.acquisition.events`) for a CLI loop or a
GUI worker thread.

pymmcore-plus's runner runs on its own thread, in step with the generator: each frame is handed
over and the runner waits until the generator is asked for its next event, so a `cancel()` or
`pause()` made on seeing frame N acts before frame N+1 (pause: before the next hardware sequence
when hardware-triggered), exactly as on one thread. The frame goes to the writer thread (one
`DatasetWriter.append` per frame: the file is a valid partial dataset after every frame) and to the
publisher thread; neither is waited on. The same read-only numpy array goes to the writer, the
subscribers and the progress event: no frame is copied after the camera delivers it.

Failure policy: a camera timeout, an LED array that stops answering or a write error (disk full)
ends the run with a typed error naming the cause and what is saved (`frames_saved`, `path`);
every frame acquired before the failure is on disk.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uafp_gui.acquisition.events import (
    AcquisitionFinished,
    AcquisitionPaused,
    AcquisitionStarted,
    AcquisitionState,
    FinishReason,
    FrameAcquired,
    FrameMessage,
    ProgressEvent,
)
from uafp_gui.acquisition.mda_engine import FpEngine, camera_timeout_of, trigger_wiring_of
from uafp_gui.acquisition.prepare import RunRequest, check_output_path, default_writer_factory, prepare
from uafp_gui.acquisition.sequence import frame_events
from uafp_gui.acquisition.sinks import FrameWriter, Publisher
from uafp_gui.devices.mm_led import LED_DEVICE_LABEL
from uafp_gui.errors import DeviceError, UafpError, WriteFailure

if TYPE_CHECKING:  # pragma: no cover
    import useq

    from uafp_gui.acquisition.plan import AcquisitionPlan, MicroscopeDescription
    from uafp_gui.devices.interfaces import LedArray
    from uafp_gui.io.schema import DatasetMeta
    from uafp_gui.io.writer import DatasetWriter

__all__ = ["Acquisition", "describe_ring_exposures", "expected_duration_s", "saturation_level"]


@dataclass
class _Control:
    cancel: threading.Event = field(default_factory=threading.Event)
    running: threading.Event = field(default_factory=threading.Event)  # cleared while paused

    def __post_init__(self) -> None:
        self.running.set()


class _QuietRunnerThread(logging.Filter):
    """pymmcore-plus logs every event at INFO into its log file; formatting the event costs 0.5-0.8 ms
    a frame (benchmarks/bench_acquisition.py), and the dataset records every frame anyway. This drops
    the INFO (and DEBUG) records of our runner's thread only; its warnings and errors pass."""

    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.threadName != self.thread_name


_PAUSED = object()  # the runner waits at an event boundary because the acquisition is paused


@dataclass(frozen=True)
class _Ended:
    error: BaseException | None


class _MdaThread:
    """`core.mda.run(events)` with `engine` on its own thread, handing each frame to `outbox` and
    waiting until `taken()` before going on; pause and cancel act at the boundaries between events
    (the event iterator it is given) and, inside a hardware sequence, through the runner's cancel."""

    def __init__(self, core: Any, engine: FpEngine, events: list[useq.MDAEvent], control: _Control) -> None:
        self.core = core
        self.engine = engine
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._events = events
        self._control = control
        self._taken = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="uafp-mda", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _boundaries(self) -> Iterator[useq.MDAEvent]:
        """The events, as the runner asks for them: between two events is where pause and cancel act."""
        for event in self._events:
            if not self._control.running.is_set() and not self._control.cancel.is_set():
                self.outbox.put(_PAUSED)
                while not self._control.running.wait(0.05) and not self._stop.is_set():
                    pass
            if self._control.cancel.is_set() or self._stop.is_set():
                return
            yield event

    def _frame_ready(self, image: np.ndarray, event: useq.MDAEvent, meta: dict) -> None:
        if self._stop.is_set():
            return
        self._taken.clear()
        self.outbox.put((image, event))
        self._taken.wait()

    def taken(self) -> None:
        """The generator has passed the frame on: the runner may go on."""
        self._taken.set()

    def cancel(self) -> None:
        """Stop at the next frame (inside a hardware sequence too)."""
        if self._thread.is_alive():
            self.core.mda.cancel()

    def stop(self, timeout_s: float) -> None:
        """Stop now (the generator is gone or failed) and wait for the runner to finish."""
        self._stop.set()
        self._taken.set()
        self.cancel()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _main(self) -> None:
        mda = self.core.mda
        previous = None
        error: BaseException | None = None
        pymmcore_logger = logging.getLogger("pymmcore-plus")
        quiet = _QuietRunnerThread(self._thread.name)
        pymmcore_logger.addFilter(quiet)
        try:
            if mda.is_running():
                raise DeviceError("the Micro-Manager core is running another acquisition (core.mda): stop it first")
            previous = mda.set_engine(self.engine)
            mda.events.frameReady.connect(self._frame_ready)
            try:
                mda.run(self._boundaries())
            finally:
                mda.events.frameReady.disconnect(self._frame_ready)
                if previous is not None:
                    mda.set_engine(previous)
        except BaseException as caught:  # handed to the generator, which raises it
            error = caught
        finally:
            pymmcore_logger.removeFilter(quiet)
        self.outbox.put(_Ended(error))


class Acquisition:
    """One acquisition of `plan` on the core's camera and LED device, streamed to `out_path`.

    ::

        core, leds = open_simulated_microscope()
        acquisition = Acquisition(core, leds, AcquisitionPlan(square_size=5), "run.tif", microscope)
        acquisition.subscribe(lambda message: viewer.show(message.frame))
        for event in acquisition.run():       # on a worker thread in a GUI
            ...                               # FrameAcquired: index, total, elapsed_s, eta_s, frame

    `resume=True` continues an interrupted file: the plan and metadata stored in it win and
    only the missing frames are acquired. `cancel()`, `pause()`, `resume()` may be called
    from any thread; they act at the next frame boundary (pause: the next sequence boundary
    when hardware-triggered). `trigger_wiring` ("closed_loop" or "strobe", hardware/README.md)
    says how the camera and the LED array's trigger pins are connected for hardware-triggered
    plans.
    """

    def __init__(
        self,
        core: Any,
        led_array: LedArray | None,
        plan: AcquisitionPlan | None,
        out_path: str | os.PathLike[str],
        microscope: MicroscopeDescription | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        led_device: str = LED_DEVICE_LABEL,
        camera_offset: float | None = None,
        camera_timeout_s: float = 10.0,
        notes: str = "",
        extra_meta: dict[str, Any] | None = None,
        writer_factory: Callable[..., DatasetWriter] = default_writer_factory,
        trigger_wiring: str = "closed_loop",
    ) -> None:
        self.trigger_wiring = trigger_wiring_of(trigger_wiring)
        self.core = core
        self.led_array = led_array
        self.plan = plan
        self.microscope = microscope
        self.out_path = Path(out_path)
        self.resume_existing = bool(resume)
        self.overwrite = bool(overwrite)
        self.led_device = led_device
        self.camera_offset = camera_offset
        self.camera_timeout_s = camera_timeout_of(camera_timeout_s)
        self.notes = notes
        self.extra_meta = dict(extra_meta or {})
        self._writer_factory = writer_factory
        self._control = _Control()
        self._subscribers: list[Callable[[FrameMessage], Any]] = []
        self._mda: _MdaThread | None = None
        self.meta: DatasetMeta | None = None
        self.frames_written = 0
        self.state = AcquisitionState.IDLE
        self.ring_exposures_ms: dict[int, float] | None = None
        self.metered_leds_per_ring = 4
        if not self.resume_existing and (plan is None or microscope is None):
            raise UafpError("a new acquisition needs a plan and a microscope description")
        check_output_path(self.out_path, self.resume_existing)

    # ---- control (any thread) ------------------------------------------------------------
    def cancel(self) -> None:
        self._control.cancel.set()
        self._control.running.set()
        mda = self._mda
        if mda is not None:
            mda.cancel()

    def pause(self) -> None:
        self._control.running.clear()

    def resume(self) -> None:
        self._control.running.set()

    @property
    def cancelled(self) -> bool:
        return self._control.cancel.is_set()

    def subscribe(self, callback: Callable[[FrameMessage], Any]) -> Callable[[], None]:
        """Call `callback(FrameMessage)` for every new frame (on the publisher thread, in order;
        never on the acquisition thread). Returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _request(self) -> RunRequest:
        return RunRequest(
            out_path=self.out_path,
            plan=self.plan,
            microscope=self.microscope,
            led_array=self.led_array,
            resume=self.resume_existing,
            overwrite=self.overwrite,
            led_device=self.led_device,
            camera_offset=self.camera_offset,
            notes=self.notes,
            extra_meta=self.extra_meta,
            writer_factory=self._writer_factory,
            trigger_wiring=self.trigger_wiring,
            metered_leds_per_ring=self.metered_leds_per_ring,
        )

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> Iterator[ProgressEvent]:
        """Acquire; yields `AcquisitionStarted`, then `FrameAcquired` per frame (and
        `AcquisitionPaused` when paused), then `AcquisitionFinished`. Raises `DeviceError` /
        `DatasetError` on failure after saving every frame acquired so far."""
        engine = FpEngine(self.core, camera_timeout_s=self.camera_timeout_s)
        self.state = AcquisitionState.ACQUIRING
        t_start = time.perf_counter()
        writer_thread: FrameWriter | None = None
        publisher: Publisher | None = None
        try:
            try:
                prepared = prepare(self.core, engine, self._request())
            except UafpError:
                self.state = AcquisitionState.FAILED
                raise
            self.plan, self.microscope = prepared.plan, prepared.microscope
            if prepared.ring_exposures_ms is not None:
                self.ring_exposures_ms = prepared.ring_exposures_ms
            dataset_writer, meta = prepared.writer, prepared.meta
            self.meta = meta
            first = dataset_writer.frames_present
            total = len(meta.frames)
            writer_thread = FrameWriter(dataset_writer)
            self.frames_written = writer_thread.frames_written
            publisher = Publisher(self._subscribers)
            frame_shape = (int(self.core.getImageHeight()), int(self.core.getImageWidth()))
            yield AcquisitionStarted(total, first, self.out_path, meta, frame_shape)
            events = list(engine.event_iterator(frame_events(meta.frames, start=first, led_device=self.led_device)))
            exposure_total_ms = 0.0
            done = 0  # frames acquired in this session
            full_scale = saturation_level(meta)
            saturated: dict[int, float] = {}  # frame index -> clipped fraction
            self._mda = mda = _MdaThread(self.core, engine, events, self._control)
            t0 = time.perf_counter()
            mda.start()
            while True:
                item = mda.outbox.get()
                if item is _PAUSED:
                    self.state = AcquisitionState.PAUSED
                    yield AcquisitionPaused(first + done, total)
                    continue
                self.state = AcquisitionState.ACQUIRING
                if isinstance(item, _Ended):
                    if item.error is not None:
                        raise item.error
                    break
                image, frame_event = item
                index = frame_event.metadata.get("uafp_frame", first + done)
                image.flags.writeable = False
                writer_thread.put((index, image))
                spec = meta.frames[index]
                publisher.put(FrameMessage(index, image, spec, meta))
                exposure_total_ms += spec.exposure_ms * engine.frames_to_average
                done += 1
                elapsed = time.perf_counter() - t0
                clipped = int(np.count_nonzero(image >= full_scale)) if full_scale is not None else 0
                if clipped:
                    saturated[index] = clipped / image.size
                yield FrameAcquired(
                    index=index,
                    total=total,
                    elapsed_s=elapsed,
                    eta_s=elapsed / done * (total - index - 1),
                    frame=image,
                    spec=spec,
                    frames_written=writer_thread.frames_written,
                    saturated_pixels=clipped,
                )
                mda.taken()  # not on the way out: a failed or dropped run stops the runner first
            acquired_s = time.perf_counter() - t0
            reason = FinishReason.CANCELLED if self.cancelled and done < total - first else FinishReason.COMPLETED
            self._lights_off(engine)
            writer_thread.close()
            self.frames_written = writer_thread.frames_written
            publisher.close()
            self.state = AcquisitionState.FINISHED if reason is FinishReason.COMPLETED else AcquisitionState.CANCELLED
            overhead = (acquired_s * 1000 - exposure_total_ms) / done if done else None
            yield AcquisitionFinished(
                reason, writer_thread.frames_written, total, self.out_path, time.perf_counter() - t_start, overhead,
                tuple(sorted(saturated)), max(saturated.values(), default=0.0),
            )  # fmt: skip
        except UafpError as error:
            self.state = AcquisitionState.FAILED
            self._stop_mda(engine)
            self._lights_off(engine, quiet=True)
            saved = self._close_after_failure(writer_thread, publisher)
            if isinstance(error, WriteFailure) or writer_thread is None:
                raise
            planned = len(self.meta.frames) if self.meta else None
            if not saved:
                raise type(error)(f"{error}. Acquisition stopped before any frame was saved") from error
            # What to do about it is the front end's to say (the CLI: --resume): `error.resumable`.
            raise type(error)(
                f"{error}. Acquisition stopped: {saved} of {planned or '?'} frames are saved in {self.out_path}",
                path=self.out_path,
                frames_saved=saved,
                frames_total=planned,
            ) from error
        finally:
            running = (AcquisitionState.ACQUIRING, AcquisitionState.PAUSED)
            if self.state in running:  # the consumer dropped the generator
                self.state = AcquisitionState.CANCELLED
                self._stop_mda(engine)
                self._close_after_failure(writer_thread, publisher)
            self._mda = None

    def _stop_mda(self, engine: FpEngine) -> None:
        """End the runner's thread (if any) and leave the camera and the LED sequence stopped."""
        if self._mda is not None:
            self._mda.stop(timeout_s=self.camera_timeout_s + 10.0)
        engine.teardown_sequence(None)

    def _close_after_failure(self, writer_thread: FrameWriter | None, publisher: Publisher | None) -> int:
        if publisher is not None:
            publisher.close()
        if writer_thread is None:
            return 0
        try:
            writer_thread.close()
        except WriteFailure:
            pass  # the original error is what the user needs to see
        self.frames_written = writer_thread.frames_written
        return writer_thread.frames_written

    def _lights_off(self, engine: FpEngine, quiet: bool = False) -> None:
        try:
            engine.set_leds([], self.led_device)
        except DeviceError:
            if not quiet:
                raise

    def run_to_end(self, progress: Callable[[ProgressEvent], Any] | None = None) -> AcquisitionFinished:
        """Run without a loop of your own; `progress` sees every event."""
        finished = None
        for event in self.run():
            if progress is not None:
                progress(event)
            if isinstance(event, AcquisitionFinished):
                finished = event
        assert finished is not None
        return finished


def saturation_level(meta: DatasetMeta) -> float | None:
    """Counts at which the camera clips (its full scale), or None when the bit depth is unknown."""
    bit_depth = getattr(meta, "bit_depth", None)
    return float(2 ** int(bit_depth) - 1) if bit_depth else None


def expected_duration_s(meta: DatasetMeta, start: int = 0, overhead_ms: float = 5.0) -> float:
    """Rough run time: exposures plus a per-frame overhead."""
    return sum(f.exposure_ms + overhead_ms for f in meta.frames[start:]) / 1000.0


def describe_ring_exposures(exposures: dict[int, float] | None) -> str:
    if not exposures:
        return ""
    names = {ring: "bright field" if ring == 0 else f"dark-field ring {ring}" for ring in exposures}
    return ", ".join(f"{names[ring]} {ms:g} ms" for ring, ms in exposures.items())
