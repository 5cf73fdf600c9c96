"""The serial line to a device speaking the illuminate command set (uafp-led firmware,
zfphil/illuminate, Micro-Manager's LedArray adapter): one command line out, one checked reply in.

`IlluminateConnection` owns the port and a lock, sends one line and waits for the `-==-`
terminator (never a fixed sleep), turns `ERROR` lines, timeouts and vanished ports into typed
errors, and reopens the port after the cable comes back. It knows nothing of LEDs: the
`LedArray` on top of it is `uafp_gui.devices.illuminate.IlluminateLedArray`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import serial

from uafp_gui.errors import LedArrayCommandError, LedArrayDisconnected, LedArrayError, LedArrayNotFound, LedArrayTimeout
from uafp_gui.limits import MAX_REPLY_LINE_CHARS, MAX_REPLY_LINES

__all__ = ["BAUD_RATE", "LATE_REPLY_GRACE", "REPLY_END", "IlluminateConnection", "SerialLike"]

BAUD_RATE = 115200
try:  # tcflush on a hung-up pty raises termios.error, which is not an OSError
    import termios

    _PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, termios.error)
except ImportError:  # pragma: no cover - Windows
    _PORT_ERRORS = (serial.SerialException, OSError)
REPLY_END = "-==-"
# A reply later than its timeout is still awaited this many timeouts after it (then taken as lost).
LATE_REPLY_GRACE = 3.0


def _seconds(value: float, name: str) -> float:
    """A timeout: finite and positive (NaN or inf would make a read block forever)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= 3600):
        raise LedArrayError(f"{name} must be a number of seconds in (0, 3600], got {value!r}")
    return number


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
