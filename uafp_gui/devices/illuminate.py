"""Serial driver for LED arrays that speak the illuminate command set (uafp-led firmware,
zfphil/illuminate, Micro-Manager's LedArray adapter).

`IlluminateLedArray` is the `LedArray` on top of an `IlluminateConnection`
(`uafp_gui.devices.illuminate_connection`, the port, its lock and checked replies);
`find_led_array_port` probes serial ports for one. The no-hardware twin (the same driver talking
to a model of the firmware) is `uafp_gui.simulated.SimulatedLedArray`.

LED index on the wire: `row * cols + col` in the array's wiring axes (row 0 = first row
along the strip); `Orientation` maps those to image axes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import serial.tools.list_ports

from uafp_gui.devices.illuminate_connection import IlluminateConnection
from uafp_gui.devices.interfaces import LedArray, Orientation, RowCol
from uafp_gui.errors import LedArrayError, LedArrayNotFound, LedArraySequenceError
from uafp_gui.limits import MAX_LED_ARRAY_SIDE

__all__ = [
    "IlluminateLedArray",
    "LedArrayProperties",
    "find_led_array_port",
]

# Extra paths (os.pathsep-separated) that port auto-detection probes first, e.g. a
# /dev/serial/by-id link or a simulator's pty.
PORT_CANDIDATES_ENV = "UAFP_LED_PORT_CANDIDATES"


@dataclass(frozen=True)
class LedArrayProperties:
    """What `pprops` reports (keys not sent by other illuminate firmwares may be None)."""

    array_shape: tuple[int, int]
    pitch_mm: float | None
    color_channels: tuple[str, ...]
    firmware_version: str
    led_driver: str | None
    sequence_max: int | None
    raw: dict[str, Any]

    @classmethod
    def from_pprops(cls, text: str, shape: tuple[int, int] | None) -> LedArrayProperties:
        """Parse and check a `pprops` reply; anything odd is a `LedArrayError` naming the field."""
        from uafp_gui.errors import UafpError
        from uafp_gui.io.jsontext import parse_json

        try:
            raw = parse_json(text, "pprops reply", LedArrayError)
        except UafpError as error:
            raise LedArrayError(f"{error} ({text[:80]!r}): is this an illuminate LED array?") from None
        if not isinstance(raw, dict):
            raise LedArrayError(f"pprops reply is not a JSON object: {text[:80]!r}")
        array_shape = raw.get("array_shape")
        if array_shape is None:
            if shape is None:
                raise LedArrayError("the firmware does not report array_shape in pprops: pass shape=(rows, cols)")
            array_shape = shape
        if (
            not isinstance(array_shape, (list, tuple))
            or len(array_shape) != 2
            or not all(_plain_int(n) and 1 <= n <= MAX_ARRAY_SIDE for n in array_shape)
        ):
            raise LedArrayError(
                f"pprops array_shape {array_shape!r} is not two whole numbers 1 to {MAX_ARRAY_SIDE}: "
                "check the firmware's LED_ROWS/LED_COLS, or pass shape=(rows, cols)"
            )
        pitch_um = raw.get("led_pitch_um")
        if pitch_um is not None and not (_plain_number(pitch_um) and 0 < pitch_um <= 1e6):
            raise LedArrayError(f"pprops led_pitch_um {pitch_um!r} is not a positive number of micrometres")
        channels = raw.get("color_channels", ("r", "g", "b"))
        if not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= 8 or not all(
            isinstance(c, str) for c in channels
        ):
            raise LedArrayError(f"pprops color_channels {channels!r} is not a short list of names")
        sequence_max = raw.get("sequence_max")
        if sequence_max is not None and not (_plain_int(sequence_max) and 1 <= sequence_max <= 1 << 20):
            raise LedArrayError(f"pprops sequence_max {sequence_max!r} is not a whole number >= 1")
        line_max = raw.get("line_max")
        if line_max is not None and not (_plain_int(line_max) and 8 <= line_max <= 1 << 16):
            raise LedArrayError(f"pprops line_max {line_max!r} is not a whole number 8 to 65536")
        driver = raw.get("led_driver")
        return cls(
            array_shape=(int(array_shape[0]), int(array_shape[1])),
            pitch_mm=None if pitch_um is None else float(pitch_um) / 1000.0,
            color_channels=tuple(channels),
            firmware_version=str(raw.get("firmware_version", raw.get("version", "unknown")))[:80],
            led_driver=driver if isinstance(driver, str) else None,
            sequence_max=sequence_max,
            raw=raw,
        )


MAX_ARRAY_SIDE = MAX_LED_ARRAY_SIDE


def _plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class IlluminateLedArray(LedArray):
    """An LED array on a serial port speaking the illuminate command set.

    `port` is a device path or "auto" (probe every serial port with `about`). `pitch_mm`
    and `shape` override what the firmware reports. Settings sent through this object
    (brightness, colour, NA, distance) are re-sent after a reconnect, since the board
    reboots when its port is reopened. `clear_on_close=False` leaves the LEDs lit on exit.
    """

    def __init__(
        self,
        port: str = "auto",
        *,
        orientation: Orientation | None = None,
        pitch_mm: float | None = None,
        shape: tuple[int, int] | None = None,
        timeout_s: float = 2.0,
        boot_timeout_s: float = 3.0,
        connection: IlluminateConnection | None = None,
        clear_on_close: bool = True,
    ) -> None:
        super().__init__(orientation)
        self.clear_on_close = clear_on_close
        if connection is None:
            if port == "auto":
                port = find_led_array_port(boot_timeout_s=boot_timeout_s)
            connection = IlluminateConnection(port, timeout_s=timeout_s, boot_timeout_s=boot_timeout_s)
        self._connection = connection
        self._restore: dict[str, str] = {}
        self._sequence: list[RowCol] = []
        connection.on_reconnect = self._restore_settings
        connection.open()
        self.properties = LedArrayProperties.from_pprops(
            self._first_line(self._connection.command("pprops"), "pprops"), shape
        )
        pitch = pitch_mm if pitch_mm is not None else self.properties.pitch_mm
        if pitch is None or pitch <= 0:
            raise LedArrayError(
                f"LED pitch unknown for the array on {connection.port}: pass pitch_mm "
                "(measure it as described in hardware/README.md)"
            )
        self._pitch_mm = float(pitch)
        self._connection.command("ac.1")  # light() means "exactly these LEDs"
        self._restore["ac"] = "ac.1"

    @property
    def port(self) -> str:
        return self._connection.port

    @property
    def connection(self) -> IlluminateConnection:
        return self._connection

    @property
    def array_shape(self) -> RowCol:
        return self.properties.array_shape

    @property
    def pitch_mm(self) -> float:
        return self._pitch_mm

    @staticmethod
    def _first_line(reply: list[str], what: str) -> str:
        if not reply:
            raise LedArrayError(f"empty reply to {what!r}: is this an illuminate LED array?")
        return reply[0]

    def _restore_settings(self) -> None:
        for line in self._restore.values():
            self._connection.command(line)
        self._lit = frozenset()  # the board rebooted dark

    def _index(self, array_led: RowCol) -> int:
        return array_led[0] * self.array_shape[1] + array_led[1]

    # ---- LedArray hooks ----------------------------------------------------------------------
    def _send_light(self, array_leds: list[RowCol]) -> None:
        line_max = int(self.properties.raw.get("line_max", 120))
        indices = [str(self._index(led)) for led in array_leds]
        # Long patterns: first command auto-clears, the rest add with auto-clear off.
        chunks: list[list[str]] = [[]]
        for text in indices:
            if len("l." + ".".join([*chunks[-1], text])) > line_max:
                chunks.append([])
            chunks[-1].append(text)
        if len(chunks) == 1:
            self._connection.command("l." + ".".join(chunks[0]))
            return
        try:
            self._connection.command("l." + ".".join(chunks[0]))
            self._connection.command("ac.0")
            for chunk in chunks[1:]:
                self._connection.command("l." + ".".join(chunk))
        finally:
            self._connection.command("ac.1")

    def _send_clear(self) -> None:
        self._connection.command("x")

    def _send_brightness(self, values: tuple[int, ...]) -> None:
        line = "sb." + ".".join(str(v) for v in values)
        self._connection.command(line)
        self._restore["sb"] = line

    def _send_color(self, rgb: tuple[int, int, int]) -> None:
        line = "sc." + ".".join(str(v) for v in rgb)
        self._connection.command(line)
        self._restore["sc"] = line

    # ---- illuminate extras -------------------------------------------------------------------
    def about(self) -> str:
        return "\n".join(self._connection.command("about"))

    def firmware_version(self) -> str:
        return self._first_line(self._connection.command("ver"), "ver")

    def set_numerical_aperture(self, na: float) -> None:
        if not 0 <= na <= 1:
            raise LedArrayError(f"illumination NA must be within 0-1, got {na}")
        line = f"na.{round(na * 100)}"
        self._connection.command(line)
        self._restore["na"] = line

    def set_array_distance_mm(self, distance_mm: float) -> None:
        if not 1 <= distance_mm <= 10000:
            raise LedArrayError(f"array distance must be 1-10000 mm, got {distance_mm}")
        line = f"sad.{round(distance_mm)}"
        self._connection.command(line)
        self._restore["sad"] = line

    def _pattern(self, line: str) -> None:
        self._connection.command(line)
        self._lit = self.read_lit()

    def brightfield(self) -> None:
        self._pattern("bf")

    def darkfield(self) -> None:
        self._pattern("df")

    def fill(self) -> None:
        self._pattern("ff")

    def read_lit(self) -> frozenset[RowCol]:
        """Ask the firmware what is lit (uafp-led `plit` extension), in image axes."""
        text = self._first_line(self._connection.command("plit"), "plit")
        rows, cols = self.array_shape
        parts = text.split(".")
        if parts[0] != "lit" or not all(v.isascii() and v.isdigit() and len(v) <= 7 for v in parts[1:]):
            raise LedArrayError(
                f"unexpected reply {text[:80]!r} to 'plit' from {self.port}: expected lit.<i>.<i>...; "
                "is this uafp-led firmware?"
            )
        indices = [int(v) for v in parts[1:]]
        if any(i >= rows * cols for i in indices):
            raise LedArrayError(f"'plit' from {self.port} names an LED beyond the {rows}x{cols} array: {text[:80]!r}")
        return frozenset(self.array_to_image((i // cols, i % cols)) for i in indices)

    def trigger(self) -> None:
        """Pulse the trigger output once (after the configured delay)."""
        self._connection.command("tr")

    def configure_trigger(self, width_us: int = 500, delay_us: int = 0) -> None:
        """Trigger-output pulse width and delay after the LEDs have settled."""
        self._connection.command(f"trs.{int(width_us)}.{int(delay_us)}")

    def set_auto_trigger(self, enabled: bool) -> None:
        """Pulse the trigger output after every pattern update."""
        self._connection.command(f"tra.{int(enabled)}")

    supports_sequences = True

    def load_sequence(self, leds: Sequence[RowCol]) -> None:
        """Load single-LED steps (image axes) for hardware-triggered stepping (`ssl`, `ssv`).

        Loading disarms a running sequence. Steps may repeat an LED (e.g. to average frames).
        """
        try:
            checked = self._validate(leds)
        except LedArraySequenceError:
            raise
        except LedArrayError as error:
            raise LedArraySequenceError(f"cannot load the LED sequence: {error}") from error
        limit = self.properties.sequence_max or 256
        if not 0 < len(checked) <= limit:
            raise LedArraySequenceError(
                f"the LED array on {self.port} holds sequences of 1 to {limit} steps (sequence_max in "
                f"pprops), got {len(checked)}: split the acquisition into shorter sequences"
            )
        self._connection.command(f"ssl.{len(checked)}")
        indices = [str(self._index(self.image_to_array(led))) for led in checked]
        for start in range(0, len(indices), 20):
            self._connection.command("ssv." + ".".join(indices[start : start + 20]))
        self._sequence = checked

    def arm_sequence(self) -> None:
        """Light step 0 and pulse the trigger output (`tseq`); each rising edge on the trigger
        input then lights the next step and pulses the output once it is latched."""
        if not self._sequence:
            raise LedArraySequenceError(f"no LED sequence loaded on {self.port}: call load_sequence() first")
        self._connection.command("tseq")
        self._lit = frozenset(self._sequence[:1])

    def step_sequence(self) -> None:
        """Advance the armed sequence as a trigger edge would."""
        self._connection.command("sseq")
        self._lit = self.read_lit()

    def stop_sequence(self) -> None:
        """Disarm and switch off (`xseq`); the position stays readable."""
        self._connection.command("xseq")
        self._lit = frozenset()

    def sequence_status(self) -> tuple[int, int, bool]:
        """(position, length, armed)."""
        text = self._first_line(self._connection.command("qseq"), "qseq")
        try:
            name, position, length, armed = text.split(".")
            digits = all(v.isascii() and v.isdigit() and len(v) <= 7 for v in (position, length))
            if name != "seq" or not digits or armed not in ("0", "1"):
                raise ValueError(text)
            return int(position), int(length), armed == "1"
        except ValueError:
            raise LedArraySequenceError(
                f"unexpected reply {text!r} to 'qseq' from {self.port}: is this uafp-led firmware?"
            ) from None

    def sequence_position(self) -> int:
        """Steps taken since `arm_sequence`: the loaded length once every step was triggered."""
        return self.sequence_status()[0]

    def close(self) -> None:
        try:
            if self.clear_on_close and self._connection.is_open:
                self._connection.command("x")
        except LedArrayError:
            pass  # closing a device that is already gone must not raise
        finally:
            self._connection.close()


def _candidate_ports() -> list[str]:
    extra = [p for p in os.environ.get(PORT_CANDIDATES_ENV, "").split(os.pathsep) if p]
    found = sorted(
        serial.tools.list_ports.comports(),
        # USB serial adapters (Arduino, CH340, FTDI) first; built-in ttyS ports last.
        key=lambda info: (info.vid is None, info.device),
    )
    return extra + [info.device for info in found if info.device not in extra]


def find_led_array_port(candidates: Sequence[str] | None = None, *, boot_timeout_s: float = 3.0) -> str:
    """Return the first serial port whose device answers `about` with an illuminate reply."""
    ports = list(candidates) if candidates is not None else _candidate_ports()
    tried: list[str] = []
    for port in ports:
        connection = IlluminateConnection(port, timeout_s=1.0, boot_timeout_s=boot_timeout_s)
        try:
            connection.open()  # probes `about` until it answers
            reply = connection.command("pprops")  # and says what it is, as an LED array would
            LedArrayProperties.from_pprops(reply[0] if reply else "", None)
            return port
        except LedArrayError as error:
            tried.append(f"{port} ({type(error).__name__})")
        finally:
            connection.close()
    raise LedArrayNotFound(
        "no LED array answered 'about' on "
        + (", ".join(tried) if tried else "any serial port (none found)")
        + ": is the board plugged in, the firmware flashed (hardware/README.md), and no other "
        "program (Arduino IDE monitor, Micro-Manager) holding the port?"
    )
