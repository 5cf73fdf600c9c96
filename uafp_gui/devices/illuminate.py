"""Serial driver for LED arrays that speak the illuminate command set (uafp-led firmware,
zfphil/illuminate, Micro-Manager's LedArray adapter), plus its no-hardware twin.

Layers: `IlluminateConnection` owns the port and a lock, sends one line and waits for the
`-==-` terminator (never a fixed sleep), turns `ERROR` lines, timeouts and vanished ports
into typed errors, and reopens the port after the cable comes back. `IlluminateLedArray`
is the `LedArray` on top of it. `SimulatedLedArray` is the same driver talking to
`IlluminateFirmwareModel` through a loopback port, with failure injection for tests.

LED index on the wire: `row * cols + col` in the array's wiring axes (row 0 = first row
along the strip); `Orientation` maps those to image axes.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import serial
import serial.tools.list_ports

from uafp_gui.devices.illuminate_model import FirmwareBuild, IlluminateFirmwareModel, LoopbackPort
from uafp_gui.devices.led_array import (
    LedArray,
    LedArrayCommandError,
    LedArrayDisconnected,
    LedArrayError,
    LedArrayNotFound,
    LedArraySequenceError,
    LedArrayTimeout,
    Orientation,
    RowCol,
)

__all__ = [
    "BAUD_RATE",
    "REPLY_END",
    "IlluminateConnection",
    "IlluminateLedArray",
    "LedArrayProperties",
    "SimulatedLedArray",
    "find_led_array_port",
]

BAUD_RATE = 115200
try:  # tcflush on a hung-up pty raises termios.error, which is not an OSError
    import termios

    _PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, termios.error)
except ImportError:  # pragma: no cover - Windows
    _PORT_ERRORS = (serial.SerialException, OSError)
REPLY_END = "-==-"
# A reply later than its timeout is still awaited this many timeouts after it (then taken as lost).
LATE_REPLY_GRACE = 3.0
from uafp_gui.limits import MAX_LED_ARRAY_SIDE, MAX_REPLY_LINE_CHARS, MAX_REPLY_LINES  # noqa: E402


def _seconds(value: float, name: str) -> float:
    """A timeout: finite and positive (NaN or inf would make a read block forever)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= 3600):
        raise LedArrayError(f"{name} must be a number of seconds in (0, 3600], got {value!r}")
    return number
# Extra paths (os.pathsep-separated) that port auto-detection probes first, e.g. a
# /dev/serial/by-id link or a simulator's pty.
PORT_CANDIDATES_ENV = "UAFP_LED_PORT_CANDIDATES"


class SerialLike(Protocol):
    timeout: float | None
    is_open: bool

    def open(self) -> None: ...
    def close(self) -> None: ...
    def write(self, data: bytes) -> int | None: ...
    def read(self, size: int = 1) -> bytes: ...
    def reset_input_buffer(self) -> None: ...

    @property
    def in_waiting(self) -> int: ...


def _open_serial(port: str) -> SerialLike:
    # A short read timeout: the reply loop checks its own deadline between reads.
    return serial.Serial(port, BAUD_RATE, timeout=0.05, write_timeout=2.0)


class IlluminateConnection:
    """One serial line to an illuminate-protocol device: commands in, checked replies out.

    Thread-safe (one command at a time). After the port fails the connection is closed;
    the next command reopens it (the board may have been unplugged and plugged back in)
    and runs `on_reconnect` before sending.
    """

    def __init__(
        self,
        port: str,
        *,
        timeout_s: float = 2.0,
        boot_timeout_s: float = 3.0,
        open_port: Callable[[str], SerialLike] = _open_serial,
    ) -> None:
        self.port = port
        self.timeout_s = _seconds(timeout_s, "timeout_s")
        self.boot_timeout_s = _seconds(boot_timeout_s, "boot_timeout_s")
        self._open_port = open_port
        # Replies owed by commands that timed out. The firmware answers every command line with
        # exactly one reply ending in `-==-`, in order; a late reply is therefore the next
        # terminator to arrive, and it is discarded before the next command is sent, so the driver
        # never runs one reply behind. See `_drain_owed`.
        self._owed = 0
        self._owed_until = 0.0
        self._serial: SerialLike | None = None
        self._lock = threading.RLock()
        self.on_reconnect: Callable[[], None] | None = None
        self._ever_connected = False
        self.reconnects = 0

    # ---- port lifetime ----------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port and wait until the firmware answers `about` (Arduinos reboot on open)."""
        with self._lock:
            if self._serial is not None:
                return
            try:
                self._serial = self._open_port(self.port)
            except (serial.SerialException, OSError) as error:
                raise LedArrayDisconnected(
                    f"cannot open LED array port {self.port}: {error}. Is the USB cable "
                    "plugged in and the port name right (uafp led --port auto about)?"
                ) from error
            try:
                self._wait_for_boot()
            except LedArrayError:
                self._drop()
                raise
            reconnecting = self._ever_connected
            self._ever_connected = True
            if reconnecting:
                self.reconnects += 1
                if self.on_reconnect is not None:
                    self.on_reconnect()

    def _wait_for_boot(self) -> None:
        # Probe with `about` until it answers: a freshly opened Arduino spends ~1-2 s in its
        # bootloader and drops what it is sent meanwhile.
        deadline = time.monotonic() + self.boot_timeout_s
        probe_s = min(0.5, self.timeout_s)
        timed_out = 0
        while True:
            try:
                reply = self._transact_locked("about", probe_s)
            except LedArrayTimeout as error:
                self._owed = 0  # a booting board drops what it is sent: no reply is owed...
                timed_out += 1
                if time.monotonic() >= deadline:
                    raise LedArrayTimeout(
                        f"no reply to 'about' from {self.port} within {self.boot_timeout_s:.1f} s "
                        "of opening it: is the uafp-led (or illuminate) firmware flashed and "
                        "the board powered?"
                    ) from error
                continue
            if not reply or any(text.startswith("ERROR") for text in reply) or not "".join(reply).isprintable():
                raise LedArrayNotFound(
                    f"the device on {self.port} answered 'about' with {' / '.join(reply)[:80]!r}: not an "
                    "illuminate LED array (is the right port selected?)"
                )
            if timed_out:  # ...unless it was only slow: its late replies come right behind this one
                self._discard_until_quiet(0.05, probe_s)
            return

    def _discard_until_quiet(self, quiet_s: float, limit_s: float) -> None:
        port = self._serial
        assert port is not None
        end = time.monotonic() + limit_s
        last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < quiet_s:
            if port.read(max(1, port.in_waiting)):
                last = time.monotonic()

    def _drop(self) -> None:
        self._owed = 0  # a reopened port starts a fresh conversation (the board reboots)
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def close(self) -> None:
        with self._lock:
            self._drop()

    def reconnect(self, wait_s: float = 10.0) -> None:
        """Reopen the port, retrying until it is back or `wait_s` has passed."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            self._drop()
            while True:
                try:
                    self.open()
                    return
                except LedArrayDisconnected:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)  # waiting for a device node to reappear, not for a reply

    # ---- commands --------------------------------------------------------------------------
    def transact(self, line: str, timeout_s: float | None = None) -> list[str]:
        """Send one command line and return every reply line before `-==-`, errors included."""
        with self._lock:
            if self._serial is None:
                self.open()
            return self._transact_locked(line, self.timeout_s if timeout_s is None else timeout_s)

    def command(self, line: str, timeout_s: float | None = None) -> list[str]:
        """Like `transact`, but an `ERROR` reply raises `LedArrayCommandError`."""
        reply = self.transact(line, timeout_s)
        errors = [text for text in reply if text.startswith("ERROR")]
        if errors:
            raise LedArrayCommandError(f"LED array on {self.port} refused {line!r}: {errors[0]}")
        return reply

    def _transact_locked(self, line: str, timeout_s: float) -> list[str]:
        if "\n" in line or "\r" in line:
            raise LedArrayError(f"command {line!r} must be a single line")
        port = self._serial
        assert port is not None
        try:
            if self._owed:
                self._drain_owed(port, timeout_s)
            else:
                port.reset_input_buffer()  # stray bytes (a boot banner) are no reply of ours
            port.write(line.encode("ascii", errors="replace") + b"\n")
            try:
                return self._read_reply(port, line, timeout_s)
            except LedArrayTimeout:
                # Its reply may still come: it is awaited (and discarded) before the next command.
                self._owed += 1
                self._owed_until = time.monotonic() + LATE_REPLY_GRACE * max(timeout_s, self.timeout_s)
                raise
        except _PORT_ERRORS as error:
            self._drop()
            raise LedArrayDisconnected(
                f"LED array on {self.port} disconnected during {line!r} ({error}): check the "
                "USB cable and power; the driver reopens the port on the next command"
            ) from error

    def _drain_owed(self, port: SerialLike, timeout_s: float) -> None:
        """Read and discard the replies owed by timed-out commands. They are awaited until
        `LATE_REPLY_GRACE` x the timeout after the last timeout (at least what has arrived is read);
        replies that have not come by then were lost (the board dropped the command)."""
        deadline = self._owed_until
        buffer = bytearray()
        while self._owed and (time.monotonic() < deadline or port.in_waiting):
            buffer += port.read(max(1, port.in_waiting))
            for text in self._complete_lines(buffer):
                if text == REPLY_END:
                    self._owed -= 1
                    if not self._owed:
                        break
        self._owed = 0
        if buffer:
            port.reset_input_buffer()

    @staticmethod
    def _complete_lines(buffer: bytearray) -> Iterator[str]:
        newline = buffer.find(b"\n")
        while newline >= 0:
            text = buffer[:newline].decode("ascii", errors="replace").rstrip("\r")
            del buffer[: newline + 1]
            yield text
            newline = buffer.find(b"\n")

    def _read_reply(self, port: SerialLike, line: str, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        buffer = bytearray()
        lines: list[str] = []
        while True:
            for text in self._complete_lines(buffer):
                if text == REPLY_END:
                    if buffer:  # bytes after the terminator answer nothing we sent
                        port.reset_input_buffer()
                    return lines
                if len(lines) >= MAX_REPLY_LINES or len(text) > MAX_REPLY_LINE_CHARS:
                    raise LedArrayError(
                        f"the device on {self.port} answered {line!r} with more than {MAX_REPLY_LINES} lines or a "
                        f"line over {MAX_REPLY_LINE_CHARS} characters: is it an LED array?"
                    )
                lines.append(text)
            if time.monotonic() >= deadline:
                raise LedArrayTimeout(
                    f"no complete reply to {line!r} from LED array on {self.port} within "
                    f"{timeout_s:.2f} s (got {len(lines)} line(s)): is the firmware running "
                    f"at {BAUD_RATE} baud and the right port selected?"
                )
            chunk = port.read(max(1, port.in_waiting))
            buffer += chunk
            if len(buffer) > MAX_REPLY_LINE_CHARS:
                raise LedArrayError(
                    f"the device on {self.port} sent a line over {MAX_REPLY_LINE_CHARS} characters in reply to "
                    f"{line!r}: is it an LED array at {BAUD_RATE} baud?"
                )

    # ---- raw access, for conformance and fuzz tests ----------------------------------------
    def write_raw(self, data: bytes) -> None:
        with self._lock:
            if self._serial is None:
                self.open()
            assert self._serial is not None
            self._serial.write(data)

    def read_until_quiet(self, quiet_s: float = 0.3, limit_s: float = 30.0) -> bytes:
        """Read everything until nothing arrives for `quiet_s`."""
        with self._lock:
            assert self._serial is not None
            data = bytearray()
            end = time.monotonic() + limit_s
            last = time.monotonic()
            while time.monotonic() < end:
                chunk = self._serial.read(max(1, self._serial.in_waiting))
                if chunk:
                    data += chunk
                    last = time.monotonic()
                elif time.monotonic() - last >= quiet_s:
                    break
            return bytes(data)


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


class SimulatedLedArray(IlluminateLedArray):
    """An LED array with no hardware: the serial driver talking to a model of the firmware.

    Failure injection for tests of code that uses an LED array:
    `disconnect()` (cable pulled: `LedArrayDisconnected` until `reconnect_cable()`),
    `fail_after(n)` (answers n more commands, then stops answering: `LedArrayTimeout`).
    """

    def __init__(
        self,
        shape: tuple[int, int] = (32, 32),
        pitch_mm: float = 4.0,
        *,
        orientation: Orientation | None = None,
        height_mm: float = 50.0,
        timeout_s: float = 0.2,
    ) -> None:
        self.model = IlluminateFirmwareModel(
            FirmwareBuild(
                rows=shape[0],
                cols=shape[1],
                pitch_um=round(pitch_mm * 1000),
                distance_mm=round(height_mm),
            )
        )
        self.loopback = LoopbackPort(self.model)
        self._loopback_first_open = True

        def open_loopback(port: str) -> LoopbackPort:
            if not self._loopback_first_open:
                self.loopback.open()
            self._loopback_first_open = False
            return self.loopback

        connection = IlluminateConnection(
            "simulated", timeout_s=timeout_s, boot_timeout_s=timeout_s, open_port=open_loopback
        )
        super().__init__(orientation=orientation, pitch_mm=pitch_mm, connection=connection)

    def disconnect(self) -> None:
        """Pull the simulated cable: the next command raises `LedArrayDisconnected`."""
        self.loopback.unplug()

    def reconnect_cable(self) -> None:
        """Plug the simulated cable back in; the next command reconnects."""
        self.loopback.plug_in()
        self.model.reset_state()  # a real board reboots when the port is reopened

    def fail_after(self, commands: int) -> None:
        """Answer `commands` more commands, then go silent (`LedArrayTimeout`)."""
        self.loopback.mute_after(commands)

    def recover(self) -> None:
        """Undo `fail_after`/`disconnect`."""
        self.loopback.plug_in()

    # ---- the trigger pins, for a simulated camera wired to them ------------------------------
    def trigger_in(self) -> None:
        """A rising edge on the trigger input (D2), as a camera's exposure-end output makes."""
        self.model.trigger_in()

    def trigger_out_count(self) -> int:
        """Pulses sent on the trigger output (D5) so far (a camera's external trigger input)."""
        return self.model.trigger_out_pulses


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
