"""The acquisition engine: runs an `AcquisitionPlan` through a Micro-Manager core, streams every
frame to disk and to subscribers, and stops cleanly on any failure.

Layers (modelled on pymmcore-plus):

- `FpEngine` follows pymmcore-plus's `PMDAEngine` protocol (`setup_sequence`, `setup_event`,
  `exec_event` yielding `(image, event, metadata)`, `teardown_*`). Each frame is a useq
  `MDAEvent` whose `properties` set the LED device's `Pattern` and whose `exposure` sets the
  camera; so `core.mda.set_engine(FpEngine(core)); core.mda.run(events)` works too. Unlike
  pymmcore-plus's default engine, a failed LED command or snap raises a typed `DeviceError`
  instead of logging a warning and skipping the frame, and a camera that never answers is
  caught by a watchdog.
- `Acquisition` is the runner: a plain generator (`run()`) yielding small immutable progress
  events, cancellable and pausable at frame boundaries, for a CLI loop or a GUI worker thread.
  Frames go to a `FrameWriter` thread (one `DatasetWriter.append` per frame: crash-safe, the
  file is a valid partial dataset after every frame) and to a publisher thread that calls the
  subscribers; the acquisition thread never waits on either. The same read-only numpy array
  goes to the writer, the subscribers and the progress event: no frame is copied after the
  camera delivers it.

Failure policy: a camera timeout, an LED array that stops answering or a write error (disk
full) ends the run with a typed error naming the cause, what is saved and how to continue
(`--resume`); every frame acquired before the failure is on disk.

Hardware-triggered mode (`AcquisitionPlan.hardware_triggered`, hardware/README.md): runs of frames
with the same exposure become pymmcore-plus `SequencedEvent`s (at most the array's sequence
length each); the LED list is loaded into the firmware's sequence (`ssl`/`ssv` through the LED
device's sequenceable `Pattern`), the camera runs one sequence acquisition of N frames, and each
exposure-end pulse from the camera steps the array (`tseq`): no serial command per frame. After
the sequence the array must be at step N (`qseq`), else a `TriggerMismatchError` names the frames
that may show the wrong LED. Wiring `closed_loop` (camera in external-trigger mode, fed by the
array's trigger output): the camera is started first and the array's arm pulse starts exposure 0.
Wiring `strobe`: a free-running camera; the array is armed before the camera starts. Pause acts
between sequences; cancel stops the camera and the array at the next frame.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uafp_gui.acquisition.plan import PLAN_KEY, AcquisitionPlan, MicroscopeDescription, dataset_meta
from uafp_gui.devices.interfaces import AbortsSequence, CameraTimeoutError, PreparesForRun
from uafp_gui.devices.mm_led import LED_DEVICE_LABEL, PATTERN_PROPERTY, format_pattern, led_array_of
from uafp_gui.devices.pydevices import python_device
from uafp_gui.errors import ConfigError, DatasetError, DeviceError, UafpError

if TYPE_CHECKING:  # pragma: no cover
    import useq

    from uafp_gui.devices.interfaces import LedArray
    from uafp_gui.io.schema import DatasetMeta, FrameSpec
    from uafp_gui.io.writer import DatasetWriter

__all__ = [
    "Acquisition",
    "AcquisitionFinished",
    "AcquisitionPaused",
    "AcquisitionStarted",
    "CameraTimeoutError",
    "FpEngine",
    "FrameAcquired",
    "FrameMessage",
    "FrameWriter",
    "LedArrayFailure",
    "TRIGGER_WIRINGS",
    "TriggerMismatchError",
    "WriteFailure",
    "frame_events",
]

logger = logging.getLogger(__name__)


class LedArrayFailure(DeviceError):
    """The LED array failed while the acquisition was setting a frame's LEDs."""


class WriteFailure(DatasetError):
    """A frame could not be written to the dataset (disk full, file gone, ...)."""


class TriggerMismatchError(DeviceError):
    """A hardware-triggered sequence ended with the LED array on another step than the frame count
    says: a trigger edge was lost (or an extra one arrived), so some frames show the wrong LED."""


# How the camera and the LED array's trigger pins are wired (hardware/README.md).
TRIGGER_WIRINGS = ("closed_loop", "strobe")


# --------------------------------------------------------------------------------- events


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
    """The run ended; `reason` is "completed" or "cancelled". Errors are raised instead."""

    reason: str
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


# ------------------------------------------------------------------------------- MDA events


def frame_events(
    specs: Iterable[FrameSpec], *, start: int = 0, led_device: str = LED_DEVICE_LABEL
) -> list[useq.MDAEvent]:
    """One useq `MDAEvent` per frame: exposure plus the LED device's `Pattern` property."""
    import useq

    events = []
    for k, spec in enumerate(specs):
        if k < start:
            continue
        events.append(
            useq.MDAEvent(
                index={"t": k},
                exposure=spec.exposure_ms,
                properties=[(led_device, PATTERN_PROPERTY, format_pattern(spec.leds))],
                metadata={"uafp_frame": k},
            )
        )
    return events


def _is_sequenced(event: Any) -> bool:
    return hasattr(event, "property_sequences") and hasattr(event, "events")


def _pattern_of(event: Any, led_device: str) -> str | None:
    for device, prop, value in event.properties or ():
        if device == led_device and prop == PATTERN_PROPERTY:
            return str(value)
    return None


# ------------------------------------------------------------------------------- snapping


class _SnapWorker:
    """Runs `core.snapImage(); core.getImage()` on a daemon thread so a hung camera can be
    abandoned after a timeout instead of freezing the acquisition."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="uafp-snap", daemon=True)
        self._thread.start()
        self.hung = False

    def _loop(self) -> None:
        while True:
            reply = self._requests.get()
            if reply is None:
                return
            try:
                self.core.snapImage()
                reply.put((True, self.core.getImage()))
            except BaseException as error:  # handed to the acquisition thread
                reply.put((False, error))

    def snap(self, timeout_s: float) -> np.ndarray:
        if self.hung:
            raise CameraTimeoutError("the camera is still blocked in an earlier snap: restart the program")
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self._requests.put(reply)
        try:
            ok, value = reply.get(timeout=timeout_s)
        except queue.Empty:
            self.hung = True
            raise CameraTimeoutError(
                f"camera {self.core.getCameraDevice()!r} delivered no frame within {timeout_s:.1f} s"
            ) from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        if not self.hung:
            self._requests.put(None)


class FpEngine:
    """A pymmcore-plus MDA engine for FP frames (the `PMDAEngine` protocol), strict about errors.

    `frames_to_average` snaps are averaged per event (float32 result); `camera_timeout_s` is
    allowed on top of the exposure before a snap counts as a camera timeout.
    """

    def __init__(
        self,
        core: Any,
        *,
        frames_to_average: int = 1,
        camera_timeout_s: float = 10.0,
        hardware_triggered: bool = False,
        trigger_wiring: str = "closed_loop",
        led_array: LedArray | None = None,
        led_device: str = LED_DEVICE_LABEL,
    ) -> None:
        if trigger_wiring not in TRIGGER_WIRINGS:
            raise ConfigError(f"trigger_wiring must be one of {TRIGGER_WIRINGS} (got {trigger_wiring!r})")
        self.mmcore = core
        self.frames_to_average = int(frames_to_average)
        self.camera_timeout_s = float(camera_timeout_s)
        if not math.isfinite(self.camera_timeout_s) or not 0 < self.camera_timeout_s <= 3600:
            raise ConfigError(f"camera_timeout_s must be a number of seconds in (0, 3600] (got {camera_timeout_s!r})")
        self.hardware_triggered = bool(hardware_triggered)
        self.trigger_wiring = trigger_wiring
        self.led_array = led_array
        self.led_device = led_device
        self._exposure_ms: float | None = None
        self._snapper: _SnapWorker | None = None
        self._sequence_running = False
        self._armed_array: LedArray | None = None
        # how long the array may take to count the last exposure-end edge (one LED frame: 31 ms for
        # 32x32 WS2812B) before a lower position counts as a missed trigger
        self.sequence_settle_s = 0.1

    # ---- PMDAEngine protocol --------------------------------------------------------------
    def setup_sequence(self, sequence: Any) -> None:
        self._exposure_ms = None
        if self._snapper is None or self._snapper.hung:
            self._snapper = _SnapWorker(self.mmcore)
        return None

    def event_iterator(self, events: Iterable[useq.MDAEvent]) -> Iterator[useq.MDAEvent]:
        if self.hardware_triggered:
            return iter(self.sequenced_events(events))
        return iter(events)

    def setup_event(self, event: useq.MDAEvent) -> None:
        if _is_sequenced(event):
            self._setup_sequenced(event)
            return
        frame = event.metadata.get("uafp_frame", "?")
        for device, prop, value in event.properties or ():
            try:
                self.mmcore.setProperty(device, prop, value)
            except UafpError as error:
                raise LedArrayFailure(f"frame {frame}: setting {device}.{prop} = {value!r} failed: {error}") from error
            except Exception as error:
                raise LedArrayFailure(
                    f"frame {frame}: setting {device}.{prop} = {value!r} failed ({type(error).__name__}: {error})"
                ) from error
        if event.exposure is not None and event.exposure != self._exposure_ms:
            try:
                self.mmcore.setExposure(float(event.exposure))
            except Exception as error:
                raise DeviceError(f"frame {frame}: the camera refused exposure {event.exposure} ms: {error}") from error
            self._exposure_ms = float(event.exposure)

    def exec_event(self, event: useq.MDAEvent) -> Iterator[tuple[np.ndarray, useq.MDAEvent, dict]]:
        if _is_sequenced(event):
            yield from self._exec_sequenced(event)
            return
        image = self.snap(event)
        yield image, event, {"exposure_ms": self._exposure_ms, "uafp_frame": event.metadata.get("uafp_frame")}

    def teardown_event(self, event: useq.MDAEvent) -> None:
        return None

    def teardown_sequence(self, sequence: Any) -> None:
        self._stop_hardware_sequence(quiet=True)
        if self._snapper is not None:
            self._snapper.close()
            self._snapper = None

    # ---- hardware-triggered sequences -------------------------------------------------------
    def _array(self) -> LedArray:
        if self.led_array is None:
            self.led_array = led_array_of(self.mmcore, self.led_device)
        if self.led_array is None or not getattr(self.led_array, "supports_sequences", False):
            name = "no LED array" if self.led_array is None else type(self.led_array).__name__
            raise ConfigError(
                f"hardware-triggered acquisition needs an LED array with a sequence mode (uafp-led or "
                f"illuminate firmware); the core's {self.led_device!r} device has {name}"
            )
        return self.led_array

    def sequence_limit(self) -> int:
        """Most frames one hardware sequence can hold (the firmware's sequence_max, the device's
        Pattern sequence length), divided by the frames averaged per LED."""
        limit = 256
        properties = getattr(self._array(), "properties", None)
        if getattr(properties, "sequence_max", None):
            limit = min(limit, int(properties.sequence_max))
        try:
            limit = min(limit, int(self.mmcore.getPropertySequenceMaxLength(self.led_device, PATTERN_PROPERTY)))
        except Exception:  # noqa: BLE001 - a core without the device: the firmware's limit stands
            pass
        per_frame = max(1, self.frames_to_average)
        if limit < per_frame:
            raise ConfigError(f"averaging {per_frame} frames per LED needs a sequence of at least {per_frame} steps")
        return limit // per_frame

    def sequenced_events(self, events: Iterable[useq.MDAEvent]) -> list[useq.MDAEvent]:
        """Combine consecutive single-LED frame events with the same exposure into pymmcore-plus
        `SequencedEvent`s: one hardware-triggered camera sequence each."""
        from pymmcore_plus.core import SequencedEvent

        limit = self.sequence_limit()
        batches: list[list[useq.MDAEvent]] = []
        for event in events:
            pattern = _pattern_of(event, self.led_device)
            if pattern is None or ";" in pattern or not pattern:
                raise ConfigError(
                    f"frame {event.metadata.get('uafp_frame', '?')}: hardware-triggered sequences light exactly one "
                    f"LED per frame (got {pattern!r}); use software-timed acquisition for patterns"
                )
            last = batches[-1] if batches else None
            if last is not None and len(last) < limit and last[0].exposure == event.exposure:
                last.append(event)
            else:
                batches.append([event])
        out = []
        for batch in batches:
            patterns = [_pattern_of(e, self.led_device) for e in batch]
            out.append(
                SequencedEvent(
                    events=tuple(batch),
                    exposure=batch[0].exposure,
                    property_sequences={(self.led_device, PATTERN_PROPERTY): patterns},
                    metadata={"uafp_frames": [e.metadata.get("uafp_frame") for e in batch]},
                )
            )
        return out

    def _setup_sequenced(self, event: Any) -> None:
        frames = event.metadata.get("uafp_frames") or []
        where = f"frames {frames[0]}-{frames[-1]}" if frames else "sequence"
        self._array()
        for device, prop, value in event.properties or ():
            self.mmcore.setProperty(device, prop, value)
        if event.exposure is not None and event.exposure != self._exposure_ms:
            try:
                self.mmcore.setExposure(float(event.exposure))
            except Exception as error:
                raise DeviceError(f"{where}: the camera refused exposure {event.exposure} ms: {error}") from error
            self._exposure_ms = float(event.exposure)
        for (device, prop), values in event.property_sequences.items():
            steps = [value for value in values for _ in range(self.frames_to_average)]
            try:
                self.mmcore.loadPropertySequence(device, prop, steps)
            except UafpError as error:
                raise LedArrayFailure(f"{where}: loading the LED sequence failed: {error}") from error
            except Exception as error:
                raise LedArrayFailure(
                    f"{where}: loading the {device}.{prop} sequence failed ({type(error).__name__}: {error})"
                ) from error

    def _start_hardware_sequence(self, event: Any, n_frames: int) -> None:
        core = self.mmcore
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()

        def arm() -> None:
            try:
                for device, prop in event.property_sequences:
                    core.startPropertySequence(device, prop)
            except Exception as error:
                raise LedArrayFailure(f"arming the LED sequence failed: {error}") from error
            self._armed_array = self._array()

        def start_camera() -> None:
            try:
                core.startSequenceAcquisition(n_frames, 0, True)
            except Exception as error:
                raise DeviceError(
                    f"camera {core.getCameraDevice()!r} refused a sequence acquisition of {n_frames} frames: {error}"
                ) from error
            self._sequence_running = True

        # closed loop: the camera waits for the array's trigger pulse, so it must listen before
        # `tseq` sends the first; strobe: a free-running camera must not expose before step 0 is lit.
        first, second = (start_camera, arm) if self.trigger_wiring == "closed_loop" else (arm, start_camera)
        first()
        second()

    def _stop_hardware_sequence(self, quiet: bool = False) -> None:
        """Stop the camera sequence and disarm the array (both safe to repeat)."""
        if self._sequence_running:
            self._sequence_running = False
            camera = python_device(self.mmcore, self.mmcore.getCameraDevice())
            if isinstance(camera, AbortsSequence):
                camera.abort_sequence()  # a C++ camera's stop ends its wait for a trigger itself
            try:
                if self.mmcore.isSequenceRunning():
                    self.mmcore.stopSequenceAcquisition()
            except Exception as error:
                if not quiet:
                    raise DeviceError(f"stopping the camera sequence failed: {error}") from error
        if self._armed_array is not None:
            array, self._armed_array = self._armed_array, None
            try:
                array.stop_sequence()
            except UafpError:
                if not quiet:
                    raise

    def _exec_sequenced(self, event: Any) -> Iterator[tuple[np.ndarray, useq.MDAEvent, dict]]:
        core = self.mmcore
        events = event.events
        per_led = max(1, self.frames_to_average)
        n_frames = len(events) * per_led
        frames = [e.metadata.get("uafp_frame", "?") for e in events]
        exposure_s = (self._exposure_ms or float(core.getExposure())) / 1000.0
        self._start_hardware_sequence(event, n_frames)
        popped = 0
        total = None
        try:
            deadline = time.perf_counter() + exposure_s + self.camera_timeout_s
            while popped < n_frames:
                if core.getRemainingImageCount():
                    image = core.popNextImage()
                    popped += 1
                    deadline = time.perf_counter() + exposure_s + self.camera_timeout_s
                    if per_led > 1:
                        total = image.astype(np.float64) if total is None else total + image
                        if popped % per_led:
                            continue
                        image = (total / per_led).astype(np.float32)
                        total = None
                    sub = events[popped // per_led - 1]
                    yield image, sub, {"exposure_ms": self._exposure_ms, "uafp_frame": sub.metadata.get("uafp_frame")}
                elif not core.isSequenceRunning() and not core.getRemainingImageCount():
                    break  # the camera ended the sequence early
                elif time.perf_counter() > deadline:
                    break
                else:
                    time.sleep(0.0002)  # polling the camera's buffer, as pymmcore-plus's engine does
            self._finish_hardware_sequence(frames, per_led, popped, n_frames, exposure_s)
        finally:
            self._stop_hardware_sequence(quiet=True)

    def _finish_hardware_sequence(
        self, frames: list[Any], per_led: int, popped: int, n_frames: int, exposure_s: float
    ) -> None:
        array = self._array()
        camera_running = self.mmcore.isSequenceRunning()
        armed, self._armed_array = self._armed_array, None  # stop the camera only, for now
        self._stop_hardware_sequence()
        self._armed_array = armed
        try:
            # The last exposure-end edge may still be on its way (the frame can be read out before
            # the firmware has latched the step): poll the position briefly before disarming.
            deadline = time.perf_counter() + self.sequence_settle_s
            position = array.sequence_position()
            while position < popped and time.perf_counter() < deadline:
                time.sleep(0.005)
                position = array.sequence_position()
        except UafpError as error:
            raise LedArrayFailure(f"the LED array did not report its sequence position: {error}") from error
        finally:
            self._stop_hardware_sequence(quiet=True)
        first, last = frames[0], frames[-1]
        done = popped // per_led
        if popped < n_frames:
            how = (
                f"nothing within {exposure_s + self.camera_timeout_s:.1f} s"
                if camera_running
                else "then the camera ended its sequence acquisition"
            )
            if popped and position == popped - 1:
                cause = (
                    f"the camera's exposure-end output did not reach the array's trigger input (D2) after frame "
                    f"{frames[(popped - 1) // per_led]}, so the array did not step"
                    + (" nor pulse the camera for the next frame" if self.trigger_wiring == "closed_loop" else "")
                    + "; the frames saved were taken with the right LEDs"
                )
            elif position == popped and self.trigger_wiring == "closed_loop":
                cause = (
                    "the array stepped and pulsed its trigger output (D5), but the camera took no frame: is the "
                    "camera in external-trigger mode and D5 wired to its trigger input?"
                )
            else:
                cause = "check the camera's trigger mode and the trigger cables (hardware/README.md)"
            raise CameraTimeoutError(
                f"hardware-triggered frames {first}-{last}: the camera delivered {popped} of {n_frames} frames, {how}; "
                f"the LED array is at step {position} of {n_frames}: {cause}"
            )
        if position != n_frames:
            # the array steps once per exposure end; fewer steps means a lost edge, more an extra
            # one. Step 0 is lit before the first exposure, so that frame is right either way.
            suspect = f"{frames[min(1, len(frames) - 1)]}-{last}" if len(frames) > 1 else f"{first}"
            kind = "missed" if position < n_frames else "got extra"
            raise TriggerMismatchError(
                f"hardware-triggered frames {first}-{last}: the LED array {kind} {abs(n_frames - position)} trigger "
                f"edge(s) (it is at step {position}, the camera took {n_frames} frames), so frames {suspect} may show "
                f"another LED than their metadata says ({done} frames of this sequence are saved as acquired). Check "
                "the camera's exposure-end output and the cable to the array's trigger input (D2), or acquire "
                "software-timed"
            )

    # ---- helpers --------------------------------------------------------------------------
    def snap(self, event: useq.MDAEvent | None = None) -> np.ndarray:
        """One frame (the average of `frames_to_average` snaps); typed errors on failure."""
        if self._snapper is None:
            self._snapper = _SnapWorker(self.mmcore)
        exposure_s = (self._exposure_ms or float(self.mmcore.getExposure())) / 1000.0
        frame = "?" if event is None else event.metadata.get("uafp_frame", "?")
        total = None
        for _ in range(self.frames_to_average):
            try:
                image = self._snapper.snap(exposure_s + self.camera_timeout_s)
            except CameraTimeoutError as error:
                raise CameraTimeoutError(f"frame {frame}: {error}: is the camera connected and in internal "
                                         "trigger mode?") from None
            except UafpError as error:
                raise DeviceError(f"frame {frame}: the camera failed: {error}") from error
            except Exception as error:
                kind = "timed out" if "timeout" in str(error).lower() else "failed"
                raise DeviceError(
                    f"frame {frame}: the camera {kind} ({type(error).__name__}: {error})"
                ) from error
            if self.frames_to_average == 1:
                return image
            total = image.astype(np.float64) if total is None else total + image
        assert total is not None
        return (total / self.frames_to_average).astype(np.float32)

    def set_leds(self, leds: Iterable[tuple[int, int]], led_device: str = LED_DEVICE_LABEL) -> None:
        try:
            self.mmcore.setProperty(led_device, PATTERN_PROPERTY, format_pattern(leds))
        except Exception as error:
            raise LedArrayFailure(f"setting the LEDs failed: {error}") from error

    def set_exposure(self, exposure_ms: float) -> None:
        self.mmcore.setExposure(float(exposure_ms))
        self._exposure_ms = float(exposure_ms)


# ------------------------------------------------------------------------------- writer


class FrameWriter:
    """Appends frames to a `DatasetWriter` on its own thread, in order, as they arrive.

    `put` never blocks (the queue is unbounded; a 128 x 128 uint16 frame is 32 KiB). A write
    error is kept and raised by the next `put` or by `close`, as a `WriteFailure`.
    """

    def __init__(self, writer: DatasetWriter) -> None:
        self.writer = writer
        self.frames_written = writer.frames_present
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="uafp-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # after a failure nothing more is written; the run is stopping
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
            what = f"the disk holding {path} is full"
            fix = "free some space (or choose --out on another disk), then run again with --resume"
        else:
            what = f"writing frame {getattr(self, '_failed_index', '?')} to {path} failed ({error})"
            fix = "fix the problem, then run again with --resume"
        raise WriteFailure(f"{what}: the {self.frames_written} frames written before are kept; {fix}") from error

    def put(self, index: int, frame: np.ndarray) -> None:
        self._raise_if_failed()
        self._queue.put((index, frame))

    def close(self, timeout_s: float = 60.0) -> None:
        """Write what is queued, close the file, raise a pending write error."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        try:
            self.writer.close()
        except OSError as error:
            if self.error is None:
                self.error = error
        self._raise_if_failed()


class _Publisher:
    """Calls subscribers with each `FrameMessage` on its own thread, in order."""

    def __init__(self, subscribers: list[Callable[[FrameMessage], Any]]) -> None:
        self.subscribers = subscribers
        self.errors: list[BaseException] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="uafp-publisher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            for callback in list(self.subscribers):
                try:
                    callback(message)
                except Exception as error:  # a viewer's bug must not stop the acquisition
                    logger.exception("frame subscriber %r failed; it is unsubscribed", callback)
                    self.errors.append(error)
                    self.subscribers.remove(callback)

    def put(self, message: FrameMessage) -> None:
        self._queue.put(message)

    def close(self, timeout_s: float = 60.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)


# --------------------------------------------------------------------------------- runner


def check_output_path(path: Path, resume: bool) -> None:
    """Fail before the camera runs, not after, when the dataset cannot be written."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DatasetError(f"--out {path} is a folder: give a .tif file name")
    if not folder.is_dir():
        raise DatasetError(f"cannot write {path}: no folder {folder}; create it or choose another --out")
    if path.exists() and resume:
        if not os.access(path, os.R_OK | os.W_OK):
            raise DatasetError(f"cannot resume {path}: no permission to write it; choose another --out")
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise DatasetError(f"cannot write {path}: no permission to write in {folder}; choose another --out")


def _default_writer_factory(path: Path, meta: DatasetMeta | None, resume: bool, overwrite: bool) -> DatasetWriter:
    from uafp_gui.io.writer import DatasetWriter

    return DatasetWriter(path, meta, resume=resume, overwrite=overwrite)


@dataclass
class _Control:
    cancel: threading.Event = field(default_factory=threading.Event)
    running: threading.Event = field(default_factory=threading.Event)  # cleared while paused

    def __post_init__(self) -> None:
        self.running.set()


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
        writer_factory: Callable[..., DatasetWriter] = _default_writer_factory,
        trigger_wiring: str = "closed_loop",
    ) -> None:
        if trigger_wiring not in TRIGGER_WIRINGS:
            raise ConfigError(f"trigger_wiring must be one of {TRIGGER_WIRINGS} (got {trigger_wiring!r})")
        self.trigger_wiring = trigger_wiring
        self.core = core
        self.led_array = led_array
        self.plan = plan
        self.microscope = microscope
        self.out_path = Path(out_path)
        self.resume_existing = bool(resume)
        self.overwrite = bool(overwrite)
        self.led_device = led_device
        self.camera_offset = camera_offset
        self.camera_timeout_s = float(camera_timeout_s)
        if not math.isfinite(self.camera_timeout_s) or not 0 < self.camera_timeout_s <= 3600:
            raise ConfigError(f"camera_timeout_s must be a number of seconds in (0, 3600] (got {camera_timeout_s!r})")
        self.notes = notes
        self.extra_meta = dict(extra_meta or {})
        self._writer_factory = writer_factory
        self._control = _Control()
        self._subscribers: list[Callable[[FrameMessage], Any]] = []
        self.meta: DatasetMeta | None = None
        self.frames_written = 0
        self.state = "idle"  # idle, acquiring, paused, finished, cancelled, failed
        self.ring_exposures_ms: dict[int, float] | None = None
        self.metered_leds_per_ring = 4
        if not self.resume_existing and (plan is None or microscope is None):
            raise UafpError("a new acquisition needs a plan and a microscope description")
        check_output_path(self.out_path, self.resume_existing)

    # ---- control (any thread) ------------------------------------------------------------
    def cancel(self) -> None:
        self._control.cancel.set()
        self._control.running.set()

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

    # ---- preparation ---------------------------------------------------------------------
    def _sensor_shape(self) -> tuple[int, int]:
        self.core.clearROI()
        return int(self.core.getImageHeight()), int(self.core.getImageWidth())

    def _apply_roi(self, plan: AcquisitionPlan, microscope: MicroscopeDescription) -> tuple[float, float]:
        """Set the plan's ROI; return the tile centre (um) relative to the sensor centre."""
        height, width = self._sensor_shape()
        if plan.roi is None:
            return (0.0, 0.0)
        x, y, w, h = plan.roi
        if x + w > width or y + h > height:
            raise DeviceError(f"ROI {plan.roi} exceeds the {width}x{height} sensor")
        try:
            self.core.setROI(x, y, w, h)
        except Exception as error:
            raise DeviceError(f"the camera refused ROI {plan.roi}: {error}") from error
        pixel = microscope.sample_pixel_um
        return ((x + w / 2 - width / 2) * pixel, (y + h / 2 - height / 2) * pixel)

    def _meter_exposures(
        self, engine: FpEngine, plan: AcquisitionPlan, microscope: MicroscopeDescription, offset: float, bit_depth: int
    ) -> dict[int, float]:
        """Automatic exposure per NA ring: meter the ring's lowest-NA LEDs (the brightest: a hidden
        misalignment can make them bright field) and set the exposure so the brightest pixels
        (99.9th percentile) reach the target fraction of full scale."""
        full_scale = 2**bit_depth - 1
        target = plan.auto_exposure_target * (full_scale - offset)
        rings: dict[int, list[tuple[int, int]]] = {}
        for led in plan.led_sequence(microscope):
            rings.setdefault(plan.ring_of(led, microscope), []).append(led)
        exposures: dict[int, float] = {}
        for ring, members in sorted(rings.items()):
            metered = sorted(members, key=microscope.illumination_na)[: self.metered_leds_per_ring]
            exposure = plan.nominal_exposure_ms(metered[0], microscope)
            for _ in range(8):  # shorten while saturated, lengthen while lost in noise
                engine.set_exposure(exposure)
                peak = brightest = 0.0
                for led in metered:
                    engine.set_leds([led], self.led_device)
                    image = engine.snap()
                    peak = max(peak, float(np.percentile(image, 99.9)))
                    brightest = max(brightest, float(image.max()))
                # Any clipped pixel (not only the 99.9th percentile) means too long: clipped data is lost data.
                if brightest >= full_scale and exposure > 1e-3:
                    exposure /= 4
                    continue
                signal = max(peak - offset, 1e-6)
                proposed = min(exposure * target / signal, plan.max_exposure_ms)
                # and the brightest pixel must stay below 90 % of full scale at the exposure proposed
                proposed = min(proposed, exposure * 0.9 * (full_scale - offset) / max(brightest - offset, 1e-6))
                if signal < 0.02 * target and proposed > exposure and exposure < plan.max_exposure_ms:
                    exposure = proposed  # too dim to trust one reading: measure again there
                    continue
                exposure = proposed
                break
            exposures[ring] = float(f"{exposure:.4g}")
        engine.set_leds([], self.led_device)
        return exposures

    def _configure_triggering(self, engine: FpEngine, plan: AcquisitionPlan) -> None:
        """Hardware-triggered plans: check the LED array can run sequences before anything moves."""
        engine.hardware_triggered = plan.hardware_triggered
        engine.trigger_wiring = self.trigger_wiring
        engine.led_array = self.led_array
        engine.led_device = self.led_device
        if plan.hardware_triggered:
            engine.frames_to_average = plan.frames_to_average
            engine.sequence_limit()  # raises ConfigError without a sequence-capable array

    def _warm_up_camera(self, leds: list[tuple[int, int]]) -> None:
        camera = python_device(self.core, self.core.getCameraDevice())
        if isinstance(camera, PreparesForRun):
            camera.prepare(leds)

    def _dark_frame(self, engine: FpEngine, plan: AcquisitionPlan) -> np.ndarray:
        engine.set_leds([], self.led_device)
        engine.set_exposure(plan.brightfield_exposure_ms)
        return engine.snap()

    def _prepare(self, engine: FpEngine) -> tuple[DatasetWriter, DatasetMeta]:
        from uafp_gui.devices.micromanager import camera_bit_depth, camera_offset
        from uafp_gui.io.dataset import read_dataset_meta

        if self.resume_existing and self.out_path.exists():
            stored = None
            try:
                stored = read_dataset_meta(self.out_path)
            except DatasetError:
                if self.plan is None or self.microscope is None:
                    raise
            if stored is not None:
                if PLAN_KEY in stored.extra:
                    self.plan = AcquisitionPlan.from_dict(stored.extra[PLAN_KEY])
                if "microscope" in stored.extra:
                    self.microscope = MicroscopeDescription.from_dict(stored.extra["microscope"])
                if self.plan is not None and self.plan.roi is not None and self.microscope is not None:
                    self._apply_roi(self.plan, self.microscope)
                engine.frames_to_average = self.plan.frames_to_average if self.plan else 1
                if self.plan is not None:
                    self._configure_triggering(engine, self.plan)
                writer = self._writer_factory(self.out_path, None, True, False)
                self._warm_up_camera([led for spec in writer.meta.frames[writer.frames_present :] for led in spec.leds])
                return writer, writer.meta
        plan, microscope = self.plan, self.microscope
        if plan is None or microscope is None:
            raise UafpError(f"nothing to resume at {self.out_path}: give a plan to start a new acquisition")
        if self.led_array is not None and tuple(microscope.led_array_shape) != tuple(self.led_array.shape):
            raise DeviceError(
                f"the LED array is {self.led_array.shape[0]}x{self.led_array.shape[1]} but the microscope "
                f"description says {microscope.led_array_shape[0]}x{microscope.led_array_shape[1]}"
            )
        plan.led_sequence(microscope)  # validates before touching hardware
        self._configure_triggering(engine, plan)
        if self.out_path.exists() and not self.overwrite and not self.resume_existing:
            raise DatasetError(
                f"{self.out_path} already exists: choose another --out, pass --overwrite, or --resume to "
                "complete an interrupted acquisition"
            )
        engine.frames_to_average = plan.frames_to_average
        tile_center = self._apply_roi(plan, microscope)
        bit_depth = camera_bit_depth(self.core)
        offset = self.camera_offset
        if offset is None:
            offset = camera_offset(self.core) or 0.0
        extra = dict(self.extra_meta)
        if plan.hardware_triggered:
            extra["hardware_trigger"] = {"wiring": self.trigger_wiring, "sequence_max_frames": engine.sequence_limit()}
        engine.setup_sequence(None)
        if plan.dark_frame:
            dark = self._dark_frame(engine, plan)
            offset = float(np.mean(dark))
            dark_path = self.out_path.with_name(self.out_path.stem + "_dark.tif")
            import tifffile

            tifffile.imwrite(dark_path, np.asarray(dark))
            extra["dark_frame"] = {
                "file": dark_path.name,
                "exposure_ms": plan.brightfield_exposure_ms,
                "mean_counts": offset,
                "std_counts": float(np.std(dark)),
            }
        ring_exposures = None
        self._warm_up_camera(plan.led_sequence(microscope))
        if plan.auto_exposure:
            ring_exposures = self._meter_exposures(engine, plan, microscope, offset, bit_depth)
            extra["auto_exposure_ms"] = {str(k): v for k, v in ring_exposures.items()}
        self.ring_exposures_ms = ring_exposures
        specs = plan.frame_specs(microscope, ring_exposures)
        self._warm_up_camera([led for spec in specs for led in spec.leds])
        meta = dataset_meta(
            plan,
            microscope,
            specs,
            camera_offset=offset,
            bit_depth=bit_depth,
            tile_center_um=tile_center,
            notes=self.notes,
            extra=extra,
        )
        writer = self._writer_factory(self.out_path, meta, False, self.overwrite)
        return writer, meta

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> Iterator[ProgressEvent]:
        """Acquire; yields `AcquisitionStarted`, then `FrameAcquired` per frame (and
        `AcquisitionPaused` when paused), then `AcquisitionFinished`. Raises `DeviceError` /
        `DatasetError` on failure after saving every frame acquired so far."""
        engine = FpEngine(self.core, camera_timeout_s=self.camera_timeout_s)
        self.state = "acquiring"
        t_start = time.perf_counter()
        writer_thread: FrameWriter | None = None
        publisher: _Publisher | None = None
        try:
            try:
                dataset_writer, meta = self._prepare(engine)
            except UafpError:
                self.state = "failed"
                raise
            self.meta = meta
            first = dataset_writer.frames_present
            total = len(meta.frames)
            writer_thread = FrameWriter(dataset_writer)
            self.frames_written = writer_thread.frames_written
            publisher = _Publisher(self._subscribers)
            frame_shape = (int(self.core.getImageHeight()), int(self.core.getImageWidth()))
            yield AcquisitionStarted(total, first, self.out_path, meta, frame_shape)
            events = list(
                engine.event_iterator(frame_events(meta.frames, start=first, led_device=self.led_device))
            )
            engine.setup_sequence(None)
            t0 = time.perf_counter()
            exposure_total_ms = 0.0
            reason = "completed"
            done = 0  # frames acquired in this session
            full_scale = saturation_level(meta)
            saturated: dict[int, float] = {}  # frame index -> clipped fraction
            for event in events:
                if not self._control.running.is_set() and not self.cancelled:
                    self.state = "paused"
                    yield AcquisitionPaused(first + done, total)
                    self._control.running.wait()
                    self.state = "acquiring"
                if self.cancelled:
                    reason = "cancelled"
                    break
                engine.setup_event(event)
                frames = engine.exec_event(event)
                try:
                    for image, frame_event, _ in frames:
                        index = frame_event.metadata.get("uafp_frame", first + done)
                        image.flags.writeable = False
                        writer_thread.put(index, image)
                        spec = meta.frames[index]
                        publisher.put(FrameMessage(index, image, spec, meta))
                        exposure_total_ms += spec.exposure_ms * engine.frames_to_average
                        done += 1
                        elapsed = time.perf_counter() - t0
                        remaining = total - index - 1
                        clipped = int(np.count_nonzero(image >= full_scale)) if full_scale is not None else 0
                        if clipped:
                            saturated[index] = clipped / image.size
                        yield FrameAcquired(
                            index=index,
                            total=total,
                            elapsed_s=elapsed,
                            eta_s=elapsed / done * remaining,
                            frame=image,
                            spec=spec,
                            frames_written=writer_thread.frames_written,
                            saturated_pixels=clipped,
                        )
                        if frame_event is not event and self.cancelled:
                            break  # inside a hardware sequence: stop it now, not at its end
                finally:
                    frames.close()  # stops a hardware sequence left early
                if self.cancelled and done < total - first:
                    reason = "cancelled"
                    break
            acquired_s = time.perf_counter() - t0
            n_new = done
            engine.teardown_sequence(None)
            self._lights_off(engine)
            writer_thread.close()
            self.frames_written = writer_thread.frames_written
            publisher.close()
            self.state = "finished" if reason == "completed" else "cancelled"
            overhead = (acquired_s * 1000 - exposure_total_ms) / n_new if n_new else None
            yield AcquisitionFinished(
                reason, writer_thread.frames_written, total, self.out_path, time.perf_counter() - t_start, overhead,
                tuple(sorted(saturated)), max(saturated.values(), default=0.0),
            )
        except UafpError as error:
            self.state = "failed"
            engine.teardown_sequence(None)
            self._lights_off(engine, quiet=True)
            saved = self._close_after_failure(writer_thread, publisher)
            if isinstance(error, WriteFailure) or writer_thread is None:
                raise
            total = len(self.meta.frames) if self.meta else "?"
            if not saved:
                raise type(error)(f"{error}. Acquisition stopped before any frame was saved") from error
            raise type(error)(
                f"{error}. Acquisition stopped: {saved} of {total} frames are saved in {self.out_path}; "
                "fix the problem and run the same command with --resume to acquire the rest"
            ) from error
        finally:
            if self.state == "acquiring":  # the consumer dropped the generator
                self.state = "cancelled"
                engine.teardown_sequence(None)
                self._close_after_failure(writer_thread, publisher)

    def _close_after_failure(self, writer_thread: FrameWriter | None, publisher: _Publisher | None) -> int:
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

