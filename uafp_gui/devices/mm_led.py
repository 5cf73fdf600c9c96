"""The LED array as a Micro-Manager device, and the LED pattern text it speaks.

`LedArrayDevice` exposes any `LedArray` to a pymmcore-plus `UniMMCore` (property `Pattern`,
"row,col;row,col" in image axes, "" for all off), so LED changes go through the core like any
other device and can be part of a useq `MDAEvent.properties`; `Pattern` is sequenceable when the
array runs hardware-triggered sequences. `attach_led_array` loads it (or fills a `#py` line of the
user's configuration) and hands the array to every device that `WatchesLedArray`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pymmcore_plus.experimental.unicore import GenericDevice, UniMMCore, pymm_property

from uafp_gui.devices.interfaces import LedArray, WatchesLedArray
from uafp_gui.devices.pydevices import python_device
from uafp_gui.errors import ConfigError, DeviceError
from uafp_gui.model import RowCol

__all__ = [
    "LED_DEVICE_LABEL",
    "PATTERN_PROPERTY",
    "LedArrayDevice",
    "attach_led_array",
    "format_pattern",
    "led_array_of",
    "parse_pattern",
]

LED_DEVICE_LABEL = "LEDArray"
PATTERN_PROPERTY = "Pattern"


# ------------------------------------------------------------------------------ LED pattern text


def format_pattern(leds: Iterable[Sequence[int]]) -> str:
    """[(3, 4), (5, 6)] -> "3,4;5,6" (image axes); no LEDs -> ""."""
    return ";".join(f"{int(r)},{int(c)}" for r, c in leds)


def parse_pattern(text: str) -> list[RowCol]:
    """Inverse of `format_pattern`; raises `DeviceError` on malformed text."""
    text = str(text).strip()
    if not text:
        return []
    leds = []
    for item in text.split(";"):
        try:
            row, col = item.split(",")
            leds.append((int(row), int(col)))
        except ValueError:
            raise DeviceError(
                f"LED pattern {text!r} is malformed: write 'row,col;row,col' (image axes), '' for off"
            ) from None
    return leds


# ------------------------------------------------------------------------------ LED-array device


class LedArrayDevice(GenericDevice):
    """Any `LedArray` as a Micro-Manager generic device (property `Pattern`).

    Errors of the LED array (`LedArrayError`, a `DeviceError`) propagate unchanged through
    `core.setProperty`, so the caller sees the driver's message. `Pattern` is sequenceable
    when the array supports hardware sequences (`load_sequence`/`arm_sequence`): each step
    lights one LED and a trigger edge advances it.
    """

    def __init__(self, led_array: LedArray | None = None) -> None:
        super().__init__()
        self.led_array = led_array

    def _array(self) -> LedArray:
        if self.led_array is None:
            raise DeviceError(
                f"Micro-Manager device {self.get_label()!r} has no LED array attached: call "
                "attach_led_array(core, led_array) after loading the configuration"
            )
        return self.led_array

    @pymm_property(sequence_max_length=256)
    def Pattern(self) -> str:  # noqa: N802 - Micro-Manager property names are CamelCase
        """The lit LEDs, 'row,col;row,col' in image axes ('' = all off)."""
        return format_pattern(sorted(self._array().lit))

    @Pattern.setter  # type: ignore[no-redef]
    def Pattern(self, value: str) -> None:  # noqa: N802
        leds = parse_pattern(value)
        array = self._array()
        if leds:
            array.light(leds)
        else:
            array.clear()

    @Pattern.sequence_loader
    def load_pattern_sequence(self, sequence: Sequence[str]) -> None:
        array = self._array()
        loader = getattr(array, "load_sequence", None)
        if loader is None:
            raise DeviceError(f"{type(array).__name__} has no hardware sequence support")
        steps = [parse_pattern(text) for text in sequence]
        if any(len(step) != 1 for step in steps):
            raise DeviceError("hardware LED sequences light exactly one LED per step")
        loader([step[0] for step in steps])

    @Pattern.sequence_starter
    def start_pattern_sequence(self) -> None:
        self._array().arm_sequence()

    @Pattern.sequence_stopper
    def stop_pattern_sequence(self) -> None:
        array = self._array()
        if getattr(array, "supports_sequences", False):
            array.stop_sequence()

    @pymm_property(is_read_only=True)
    def Rows(self) -> int:  # noqa: N802
        return int(self._array().shape[0])

    @pymm_property(is_read_only=True)
    def Columns(self) -> int:  # noqa: N802
        return int(self._array().shape[1])

    @pymm_property(is_read_only=True)
    def PitchMm(self) -> float:  # noqa: N802
        return float(self._array().pitch_mm)

    def shutdown(self) -> None:
        if self.led_array is not None:
            try:
                self.led_array.clear()
            except DeviceError:
                pass  # a vanished array cannot be switched off; shutdown must not raise


def attach_led_array(core: UniMMCore, led_array: LedArray, label: str = LED_DEVICE_LABEL) -> None:
    """Expose `led_array` as device `label` in `core` (loading it if needed) and hand it to every
    Python device of the core that `WatchesLedArray` (e.g. a simulated camera wired to its pins)."""
    if not isinstance(core, UniMMCore):
        raise ConfigError("the LED array is a Python device: the core must be a pymmcore-plus UniMMCore")
    if label in core.getLoadedDevices():
        device = python_device(core, label)
        if not isinstance(device, LedArrayDevice):
            raise ConfigError(
                f"device label {label!r} is already used by a {type(device).__name__} in the "
                "Micro-Manager configuration: rename it, uafp loads its LED array under that label"
            )
        device.led_array = led_array
    else:
        core.loadPyDevice(label, LedArrayDevice(led_array))
        core.initializeDevice(label)
    for name in core.getLoadedDevices():
        watcher = python_device(core, name)
        if isinstance(watcher, WatchesLedArray):
            watcher.watch_led_array(led_array)


def led_array_of(core: Any, label: str = LED_DEVICE_LABEL) -> LedArray | None:
    """The `LedArray` behind the core's LED device `label`, when it is a `LedArrayDevice`."""
    device = python_device(core, label)
    return device.led_array if isinstance(device, LedArrayDevice) else None
