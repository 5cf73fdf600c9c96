"""The simulated FP camera as a pure-Python Micro-Manager device (pymmcore-plus unicore).

`SimulatedFpCamera` renders, for the LEDs lit at the moment of the snap, the image of the
built-in sample through the forward model of a microscope with hidden errors (LED-array
misalignment, pupil aberrations, LED brightness spread; `uafp_gui.simulate.SimulationSettings`,
default the `misaligned` preset), adds Poisson and read noise and the camera offset, and
quantises to its bit depth. Counts scale with the exposure time: `photons_per_pixel` is the
bright-field signal at the preset's reference `exposure_ms`, so normalised frames
`(counts - camera_offset) / exposure_ms` do not depend on the exposure chosen.

The LEDs it sees are those of the LED array it watches (`watch_led_array`, called by
`uafp_gui.devices.mm_led.attach_led_array`); `uafp_gui.simulated.microscope` assembles the core.

Trigger wiring (hardware-triggered acquisition, hardware/README.md): the camera's exposure-end
output ("strobe") is wired to the LED array's trigger input, so every frame the camera takes
sends one rising edge there, exactly as a real camera's output would (an array that is not
running a sequence ignores it). With `TriggerMode` = `External` the camera's sequence
acquisitions wait for a pulse on its trigger input, wired to the array's trigger output, before
each exposure (the closed loop); `Internal` free-runs. `snapImage()` is always software-timed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from pymmcore_plus.experimental.unicore import SimpleCameraDevice, pymm_property

from uafp_gui.devices.interfaces import LedArray
from uafp_gui.devices.mm_led import format_pattern
from uafp_gui.errors import CameraTimeoutError, DeviceError
from uafp_gui.model import RowCol

if TYPE_CHECKING:  # pragma: no cover
    from uafp_gui.simulate import SimulationSettings

__all__ = [
    "DEFAULT_EXPOSURE_MS",
    "TRIGGER_MODES",
    "FpRenderer",
    "SimulatedFpCamera",
    "default_simulation_settings",
    "lit_leds_of",
    "wire_simulated_triggers",
]

TRIGGER_MODES = ("Internal", "External")

DEFAULT_EXPOSURE_MS = 10.0  # the camera's exposure before anyone sets one (the plans' and live view's default)


def _row_col(led: Iterable[int]) -> RowCol:
    row, col = led
    return (int(row), int(col))


def default_simulation_settings() -> SimulationSettings:
    """The simulated microscope's defaults: the `misaligned` preset."""
    from uafp_gui.simulate import PRESETS

    return PRESETS["misaligned"]


def lit_leds_of(led_array: LedArray) -> frozenset[RowCol]:
    """The LEDs physically lit, image axes: the firmware model's state when simulated (what a
    camera would see, including hardware-sequence steps), else what the driver last set."""
    model = getattr(led_array, "model", None)
    indices = getattr(model, "lit", None)
    if indices is None:
        return led_array.lit
    cols = led_array.array_shape[1]
    return frozenset(led_array.array_to_image((i // cols, i % cols)) for i in list(indices))


# ------------------------------------------------------------------------------- rendering


class FpRenderer:
    """Noise-free expected counts per ms for any set of lit LEDs (incoherent sum of single-LED
    images through the true forward model). Each LED is rendered once and cached."""

    def __init__(self, settings: SimulationSettings, device: str = "cpu") -> None:
        self.settings = settings
        self.device = device
        rows, cols = settings.led_array_shape
        rng = np.random.default_rng(settings.seed)
        # Hidden per-LED brightness (relative), like simulate()'s per-frame spread.
        self.led_brightness = np.clip(
            1 + settings.led_brightness_spread * rng.standard_normal((rows, cols)), 0.2, None
        )
        self._cache: dict[RowCol, np.ndarray | None] = {}
        self._lock = threading.Lock()
        self._model: Any = None  # the true forward model and sample spectrum, built on first use
        self._spectrum: Any = None
        self._frame_of: dict[RowCol, int] = {}

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.settings.frame_size, self.settings.frame_size)

    def _build(self) -> None:
        import torch

        from uafp_gui.simulate import nominal_meta, true_microscope_model

        s = self.settings
        rows, cols = s.led_array_shape
        leds = [(r, c) for r in range(rows) for c in range(cols)]
        meta = nominal_meta(s, leds)
        with torch.no_grad():
            self._model, _, self._spectrum = true_microscope_model(s, meta, self.device)
        self._frame_of = {led: k for k, led in enumerate(leds)}

    def single(self, led: RowCol) -> np.ndarray | None:
        """Counts per ms of one LED (None: it lights nothing the sample can scatter into the
        objective within the simulated bandwidth, i.e. an all-dark frame)."""
        with self._lock:
            if led in self._cache:
                return self._cache[led]
            import torch

            if self._model is None:
                self._build()
            if led not in self._frame_of:
                raise DeviceError(f"LED {led} is outside the simulated {self.settings.led_array_shape} array")
            s = self.settings
            with torch.no_grad():
                try:
                    image = self._model(self._spectrum, torch.tensor([self._frame_of[led]]))[0]
                except ValueError:  # beyond the sample's bandwidth: no light reaches the camera
                    image = None
            if image is not None:
                scale = s.photons_per_pixel * float(self.led_brightness[led]) / s.exposure_ms
                image = (image.cpu().numpy().astype(np.float64) * scale).astype(np.float32)
                image.flags.writeable = False
            self._cache[led] = image
            return image

    def expected_counts_per_ms(self, leds: Iterable[RowCol]) -> np.ndarray | None:
        total = None
        for led in leds:
            image = self.single(_row_col(led))
            if image is None:
                continue
            total = image.copy() if total is None else total + image
        return total

    def prerender(self, leds: Iterable[RowCol], batch: int = 32) -> None:
        """Render (and cache) these LEDs now, in batches: a camera warm-up before a run."""
        import torch

        with self._lock:
            if self._model is None:
                self._build()
            missing = [led for led in dict.fromkeys(_row_col(led) for led in leds) if led not in self._cache]
            unknown = [led for led in missing if led not in self._frame_of]
            if unknown:
                raise DeviceError(f"LED {unknown[0]} is outside the simulated {self.settings.led_array_shape} array")
            s = self.settings
            for start in range(0, len(missing), batch):
                chunk = missing[start : start + batch]
                try:
                    with torch.no_grad():
                        frames = torch.tensor([self._frame_of[led] for led in chunk])
                        images = self._model(self._spectrum, frames).cpu().numpy().astype(np.float64)
                except ValueError:  # some LED of the chunk is beyond the bandwidth: one by one
                    continue
                for led, image in zip(chunk, images, strict=True):
                    scale = s.photons_per_pixel * float(self.led_brightness[led]) / s.exposure_ms
                    out = (image * scale).astype(np.float32)
                    out.flags.writeable = False
                    self._cache[led] = out
        for led in missing:
            self.single(led)

    _shared: dict[tuple[str, str], FpRenderer] = {}

    @classmethod
    def shared(cls, settings: SimulationSettings, device: str = "cpu") -> FpRenderer:
        """One renderer (and cache) per distinct settings in this process."""
        key = (repr(settings), device)
        if key not in cls._shared:
            cls._shared[key] = cls(settings, device)
        return cls._shared[key]


# ---------------------------------------------------------------------------------- camera


class SimulatedFpCamera(SimpleCameraDevice):
    """A camera looking at the built-in sample through the simulated FP microscope.

    `leds` is where the camera learns which LEDs are lit: a `LedArray` (its physical state)
    or a callable returning (row, col) pairs; `attach_led_array` sets it after a config load.
    `realtime=True` makes a snap last the exposure time, like a real camera.
    `wire_triggers(strobe_out, trigger_in_count)` connects the camera's exposure-end output and
    its external trigger input (see the module docstring); `attach_led_array` wires a simulated
    array's pins.
    Failure injection: `inject_timeout(after_frames, hang=False)`, `inject_missed_strobe(after_frames)`.
    """

    def __init__(
        self,
        settings: SimulationSettings | None = None,
        leds: LedArray | Callable[[], Iterable[RowCol]] | None = None,
        *,
        realtime: bool = True,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        self.settings = settings or default_simulation_settings()
        self.renderer = FpRenderer.shared(self.settings, device)
        self.leds = leds
        self.realtime = realtime
        self._exposure_ms = DEFAULT_EXPOSURE_MS
        self._rng = np.random.default_rng(self.settings.seed + 1)
        self._full_scale = 2 ** int(self.settings.bit_depth) - 1
        self._timeout_after: int | None = None
        self._hang = False
        self.frames_snapped = 0
        self._trigger_mode = "Internal"
        self.strobe_out: Callable[[], Any] | None = None
        self.trigger_in_count: Callable[[], int] | None = None
        self.external_trigger_timeout_s = 10.0
        self._skip_strobe_at: int | None = None
        self._abort = threading.Event()
        self.strobes_sent = 0

    # ---- trigger wiring ---------------------------------------------------------------------
    def watch_led_array(self, led_array: LedArray) -> None:
        """`WatchesLedArray`: look at `led_array` unless told otherwise, and wire its trigger pins
        when it is the array watched (done by `attach_led_array` after a configuration load)."""
        if self.leds is None:
            self.leds = led_array
        if self.leds is led_array and self.strobe_out is None:
            wire_simulated_triggers(self, led_array)

    def wire_triggers(
        self, strobe_out: Callable[[], Any] | None, trigger_in_count: Callable[[], int] | None = None
    ) -> None:
        """`strobe_out()` is called at the end of every exposure (a rising edge on whatever the
        camera's output is wired to); `trigger_in_count()` counts the pulses received so far on the
        camera's trigger input (used with TriggerMode External)."""
        self.strobe_out = strobe_out
        self.trigger_in_count = trigger_in_count

    @pymm_property(allowed_values=list(TRIGGER_MODES))
    def TriggerMode(self) -> str:  # noqa: N802 - Micro-Manager property names are CamelCase
        """Internal: free-running sequences; External: each sequence frame waits for a trigger pulse."""
        return self._trigger_mode

    @TriggerMode.setter  # type: ignore[no-redef]
    def TriggerMode(self, value: str) -> None:  # noqa: N802
        if value not in TRIGGER_MODES:
            raise ValueError(f"TriggerMode must be one of {TRIGGER_MODES}, got {value!r}")
        self._trigger_mode = str(value)

    def abort_sequence(self) -> None:
        """End a sequence that waits for an external trigger (as a camera's acquisition abort does)."""
        self._abort.set()

    def inject_missed_strobe(self, after_frames: int | None) -> None:
        """Deliver `after_frames` more frames with their exposure-end pulse, then take the next
        frame without sending one (a loose trigger cable, a glitch): the LED array misses a step."""
        self._skip_strobe_at = None if after_frames is None else self.frames_snapped + int(after_frames)

    def _strobe(self) -> None:
        if self.strobe_out is None:
            return
        if self._skip_strobe_at is not None and self.frames_snapped - 1 == self._skip_strobe_at:
            self._skip_strobe_at = None
            return
        self.strobes_sent += 1
        self.strobe_out()

    def _wait_for_trigger(self, seen: int) -> int | None:
        """Block until the trigger input has counted more than `seen` pulses; the new count, or
        None when aborted or after `external_trigger_timeout_s` (the sequence then ends)."""
        if self.trigger_in_count is None:
            raise DeviceError("TriggerMode External, but nothing is wired to the camera's trigger input")
        deadline = time.perf_counter() + self.external_trigger_timeout_s
        while True:
            count = self.trigger_in_count()
            if count > seen:
                return seen + 1  # one exposure per pulse, however late the camera is
            if self._abort.is_set() or time.perf_counter() > deadline:
                return None
            self._abort.wait(0.0002)

    def start_sequence(self, n: int | None, get_buffer: Callable[..., np.ndarray]) -> Iterator[Mapping]:
        # n == 1 is snapImage(): software-timed whatever the trigger mode.
        self._abort.clear()
        if n == 1 or self._trigger_mode != "External":
            yield from super().start_sequence(n, get_buffer)
            return
        seen = self.trigger_in_count() if self.trigger_in_count is not None else 0  # earlier pulses are stale
        roi = self._roi
        sensor, dtype = self.sensor_shape(), self.dtype()
        full = None if roi is None else np.empty(sensor, dtype=dtype)
        count = 0
        while n is None or count < n:
            waited = self._wait_for_trigger(seen)
            if waited is None:
                return  # no trigger came: the acquisition ends short, the core sees it stopped
            seen = waited
            if roi is None:
                meta = self.snap(get_buffer(sensor, dtype))
            else:
                x, y, w, h = roi
                out = get_buffer(self.shape(), dtype)
                assert full is not None  # allocated with the ROI
                meta = self.snap(full)
                out[:] = full[y : y + h, x : x + w]
            yield meta
            count += 1

    # ---- failure injection -----------------------------------------------------------------
    def inject_timeout(self, after_frames: int | None, hang: bool = False) -> None:
        """Deliver `after_frames` more frames, then fail every snap: raise a `CameraTimeoutError`
        (an adapter that detects its own timeout) or, with `hang=True`, block for a minute
        (a camera that never answers; the acquisition's watchdog must catch it)."""
        self._timeout_after = after_frames
        self._hang = hang

    # ---- camera API -------------------------------------------------------------------------
    def sensor_shape(self) -> tuple[int, int]:
        return self.renderer.frame_shape

    def dtype(self) -> Any:
        return np.uint16

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        exposure = float(exposure)
        if not 0 < exposure <= 60_000:
            raise ValueError(f"exposure must be in (0, 60000] ms, got {exposure}")
        self._exposure_ms = exposure

    def get_offset(self) -> float:
        return float(self.settings.camera_offset)

    @pymm_property(is_read_only=True)
    def BitDepth(self) -> int:  # noqa: N802 - Micro-Manager property names are CamelCase
        """Bits the simulated ADC delivers (frames are uint16, saturating at 2**BitDepth - 1)."""
        return int(self.settings.bit_depth)

    def prepare(self, leds: Iterable[RowCol]) -> None:
        """Warm-up before a run: render the LEDs it will light (keeps snaps fast)."""
        self.renderer.prerender(leds)

    def lit_leds(self) -> list[RowCol]:
        source = self.leds
        if source is None:
            return []
        if callable(source):
            return [_row_col(led) for led in source()]
        return sorted(lit_leds_of(source))

    def snap(self, buffer: np.ndarray) -> Mapping:
        start = time.perf_counter()
        if self._timeout_after is not None:
            if self._timeout_after <= 0:
                if self._hang:
                    time.sleep(60.0)  # a camera that never answers
                raise CameraTimeoutError(
                    f"simulated camera timed out after {self.frames_snapped} frames (injected failure)"
                )
            self._timeout_after -= 1
        exposure = self._exposure_ms
        leds = self.lit_leds()
        expected = self.renderer.expected_counts_per_ms(leds)
        s = self.settings
        shape = buffer.shape
        if expected is None:
            electrons = np.zeros(shape)
        else:
            electrons = self._rng.poisson(np.clip(expected * exposure, 0, None)).astype(np.float64)
        electrons += s.read_noise_e * self._rng.standard_normal(shape)
        electrons += s.camera_offset
        np.rint(electrons, out=electrons)
        np.clip(electrons, 0, self._full_scale, out=electrons)
        buffer[...] = electrons
        self.frames_snapped += 1
        if self.realtime:
            remaining = start + exposure / 1000.0 - time.perf_counter()
            if remaining > 0:
                time.sleep(remaining)  # the exposure itself, not a wait for an acknowledgement
        self._strobe()  # exposure over: the camera's output pulses (steps an armed LED sequence)
        return {"uafp-simulated-leds": format_pattern(leds), "Exposure-ms": str(exposure)}


def wire_simulated_triggers(camera: SimulatedFpCamera, led_array: LedArray) -> None:
    """Wire a simulated camera's exposure-end output to a simulated LED array's trigger input
    and the array's trigger output to the camera's trigger input (no-op for a real array)."""
    trigger_in = getattr(led_array, "trigger_in", None)
    trigger_out_count = getattr(led_array, "trigger_out_count", None)
    if callable(trigger_in) and callable(trigger_out_count):
        camera.wire_triggers(trigger_in, trigger_out_count)

