"""The MDA engine: acquires FP frames through a Micro-Manager core, strict about errors.

`FpEngine` is a pymmcore-plus engine (the `PMDAEngine` protocol: `setup_sequence`, `setup_event`,
`exec_event` yielding `(image, event, metadata)`, `teardown_*`), run by pymmcore-plus's runner
(`core.mda.run`): `Acquisition` (`uafp_gui.acquisition.runner`) runs it that way, and so can any
pymmcore-plus user with the events of `uafp_gui.acquisition.sequence`. Each frame is a useq
`MDAEvent` whose `properties` set the LED device's `Pattern` and whose `exposure` sets the camera.
Unlike pymmcore-plus's default engine, a failed LED command or snap raises a typed `DeviceError`
(the runner stops and re-raises it) instead of logging a warning and skipping the frame, and a
camera that never answers is caught by a watchdog (`_SnapWorker`). The metadata per frame is
pymmcore-plus's own (`frame_metadata`) plus `exposure_ms`, `uafp_frame` and `uafp_leds`.

Hardware-triggered mode (`hardware_triggered=True`, hardware/README.md): runs of frames with the
same exposure become pymmcore-plus `SequencedEvent`s (at most the array's sequence length each);
the LED list is loaded into the firmware's sequence (`ssl`/`ssv` through the LED device's
sequenceable `Pattern`), the camera runs one sequence acquisition of N frames, and each
exposure-end pulse from the camera steps the array (`tseq`): no serial command per frame. After the
sequence the array must be at step N (`qseq`), else a `TriggerMismatchError` names the frames that
may show the wrong LED. Wiring `closed_loop` (camera in external-trigger mode, fed by the array's
trigger output): the camera is started first and the array's arm pulse starts exposure 0. Wiring
`strobe`: a free-running camera; the array is armed before the camera starts. A "cancel" sent by
the runner into `exec_event` stops the camera and the array at the next frame.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from uafp_gui._compat import StrEnum
from uafp_gui.acquisition.sequence import fp_events, is_fp_sequence
from uafp_gui.devices.interfaces import AbortsSequence
from uafp_gui.devices.mm_led import LED_DEVICE_LABEL, PATTERN_PROPERTY, format_pattern, led_array_of
from uafp_gui.devices.pydevices import python_device
from uafp_gui.errors import (
    CameraTimeoutError,
    ConfigError,
    DeviceError,
    LedArrayFailure,
    TriggerMismatchError,
    UafpError,
)

if TYPE_CHECKING:  # pragma: no cover
    import useq

    from uafp_gui.devices.interfaces import LedArray

__all__ = ["TRIGGER_WIRINGS", "FpEngine", "TriggerWiring", "camera_timeout_of", "trigger_wiring_of"]


# How the camera and the LED array's trigger pins are wired (hardware/README.md).
class TriggerWiring(StrEnum):
    """How the camera and the LED array's trigger pins are wired (hardware/README.md)."""

    CLOSED_LOOP = "closed_loop"  # the array's trigger output starts each exposure; the camera's strobe steps it
    STROBE = "strobe"  # a free-running camera's strobe steps the array


TRIGGER_WIRINGS = tuple(TriggerWiring)


def trigger_wiring_of(value: str) -> TriggerWiring:
    """`value` as a `TriggerWiring`; a `ConfigError` naming the choices otherwise."""
    try:
        return TriggerWiring(value)
    except ValueError:
        raise ConfigError(f"trigger_wiring must be one of {', '.join(TRIGGER_WIRINGS)} (got {value!r})") from None


def camera_timeout_of(value: float) -> float:
    """Seconds allowed on top of the exposure before a frame counts as a camera timeout: (0, 3600]."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 < seconds <= 3600:
        raise ConfigError(f"camera_timeout_s must be a number of seconds in (0, 3600] (got {value!r})")
    return seconds



def _led_failure(what: str, error: Exception) -> LedArrayFailure:
    """`what` failed: our own errors carry their message, anything else also its type."""
    if isinstance(error, UafpError):
        return LedArrayFailure(f"{what} failed: {error}")
    return LedArrayFailure(f"{what} failed ({type(error).__name__}: {error})")


def _is_sequenced(event: Any) -> bool:
    return hasattr(event, "property_sequences") and hasattr(event, "events")


def _pattern_of(event: Any, led_device: str) -> str | None:
    for device, prop, value in event.properties or ():
        if device == led_device and prop == PATTERN_PROPERTY:
            return str(value)
    return None


# ------------------------------------------------------------------------------- watchdog


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
        trigger_wiring: str = TriggerWiring.CLOSED_LOOP,
        led_array: LedArray | None = None,
        led_device: str = LED_DEVICE_LABEL,
    ) -> None:
        self.mmcore = core
        self.frames_to_average = int(frames_to_average)
        self.camera_timeout_s = camera_timeout_of(camera_timeout_s)
        self.hardware_triggered = bool(hardware_triggered)
        self.trigger_wiring = trigger_wiring_of(trigger_wiring)
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
    def setup_sequence(self, sequence: Any) -> dict[str, Any]:
        """Start the snap watchdog; pymmcore-plus's summary metadata of the run."""
        from pymmcore_plus.metadata import summary_metadata

        self._exposure_ms = None
        if self._snapper is None or self._snapper.hung:
            self._snapper = _SnapWorker(self.mmcore)
        try:
            return dict(summary_metadata(self.mmcore, mda_sequence=sequence))
        except Exception:  # noqa: BLE001 - a courtesy to pymmcore-plus's writers: never fails a run
            return {}

    def event_iterator(self, events: Iterable[useq.MDAEvent]) -> Iterator[useq.MDAEvent]:
        """The frame events: an `fp_sequence`'s time points expanded into its frames, combined into
        hardware sequences when hardware-triggered."""
        if is_fp_sequence(events):
            events = list(fp_events(events))
        if self.hardware_triggered:
            return iter(self.sequenced_events(events))
        return iter(events)

    def setup_event(self, event: useq.MDAEvent) -> None:
        if _is_sequenced(event):
            self._setup_sequenced(event)
            return
        where = f"frame {event.metadata.get('uafp_frame', '?')}"
        for device, prop, value in event.properties or ():
            try:
                self.mmcore.setProperty(device, prop, value)
            except Exception as error:
                raise _led_failure(f"{where}: setting {device}.{prop} = {value!r}", error) from error
        self._set_exposure(event.exposure, where)

    def _set_exposure(self, exposure_ms: float | None, where: str) -> None:
        """The event's exposure, when it changes; a typed error naming the frame(s) when refused."""
        if exposure_ms is None or exposure_ms == self._exposure_ms:
            return
        try:
            self.mmcore.setExposure(float(exposure_ms))
        except Exception as error:
            raise DeviceError(f"{where}: the camera refused exposure {exposure_ms} ms: {error}") from error
        self._exposure_ms = float(exposure_ms)

    def exec_event(self, event: useq.MDAEvent) -> Iterator[tuple[np.ndarray, useq.MDAEvent, dict]]:
        if _is_sequenced(event):
            yield from self._exec_sequenced(event)
            return
        image = self.snap(event)
        yield image, event, self._frame_metadata(event)

    def _frame_metadata(self, event: useq.MDAEvent) -> dict[str, Any]:
        """pymmcore-plus's frame metadata (a courtesy: never fails the frame) plus ours."""
        from pymmcore_plus.metadata import frame_metadata

        try:
            meta = dict(
                frame_metadata(self.mmcore, cached=True, camera_device=self.mmcore.getCameraDevice(), mda_event=event)
            )
        except Exception:  # noqa: BLE001
            meta = {}
        meta["exposure_ms"] = float(self._exposure_ms or self.mmcore.getExposure())
        meta["uafp_frame"] = event.metadata.get("uafp_frame")
        meta["uafp_leds"] = event.metadata.get("uafp_leds", "")
        return meta

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
        sequence_max = getattr(getattr(self._array(), "properties", None), "sequence_max", None)
        if sequence_max:
            limit = min(limit, int(sequence_max))
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
        from pymmcore_plus.core import SequencedEvent  # exported by pymmcore_plus.core (not core._sequencing)

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
        out: list[useq.MDAEvent] = []
        for batch in batches:
            patterns = [_pattern_of(e, self.led_device) or "" for e in batch]
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
        self._set_exposure(event.exposure, where)
        for (device, prop), values in event.property_sequences.items():
            steps = [value for value in values for _ in range(self.frames_to_average)]
            try:
                self.mmcore.loadPropertySequence(device, prop, steps)
            except Exception as error:
                raise _led_failure(f"{where}: loading the {device}.{prop} sequence", error) from error

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
        first, second = (start_camera, arm) if self.trigger_wiring == TriggerWiring.CLOSED_LOOP else (arm, start_camera)
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
                    signal = yield image, sub, self._frame_metadata(sub)
                    if signal == "cancel":  # sent by pymmcore-plus's runner: stop at this frame
                        return
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
            closed_loop = TriggerWiring.CLOSED_LOOP
            if popped and position == popped - 1:
                cause = (
                    f"the camera's exposure-end output did not reach the array's trigger input (D2) after frame "
                    f"{frames[(popped - 1) // per_led]}, so the array did not step"
                    + (" nor pulse the camera for the next frame" if self.trigger_wiring == closed_loop else "")
                    + "; the frames saved were taken with the right LEDs"
                )
            elif position == popped and self.trigger_wiring == TriggerWiring.CLOSED_LOOP:
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
