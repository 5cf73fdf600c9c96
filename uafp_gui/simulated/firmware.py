"""A Python model of the uafp-led firmware and a serial-port stand-in that talks to it.

`IlluminateFirmwareModel` parses the same bytes as `hardware/firmware/uafp_led/protocol.c`
and answers the same way (the conformance suite in tests/test_led_conformance.py runs
against both), so `SimulatedLedArray` exercises the real driver code path with no board.
`LoopbackPort` looks like a `serial.Serial` to the driver and can be "unplugged".
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import serial

FIRMWARE_VERSION = "1.0.0"
LINE_MAX_CHARS = 120
SEQUENCE_MAX = 256
MAX_ARGS = 64


@dataclass
class FirmwareBuild:
    """Compile-time options of the firmware (config.h)."""

    rows: int = 16
    cols: int = 16
    pitch_um: int = 10000
    distance_mm: int = 50
    serpentine: bool = True
    driver: str = "ws2812"
    default_brightness: int = 64
    default_na_x100: int = 25
    center_row_x2: int | None = None
    center_col_x2: int | None = None

    @property
    def led_count(self) -> int:
        return self.rows * self.cols

    @property
    def center_x2(self) -> tuple[int, int]:
        row = self.rows - 1 if self.center_row_x2 is None else self.center_row_x2
        col = self.cols - 1 if self.center_col_x2 is None else self.center_col_x2
        return row, col


class _CommandError(Exception):
    pass


@dataclass
class IlluminateFirmwareModel:
    """Byte-level model of the firmware: `feed(bytes) -> reply bytes`."""

    build: FirmwareBuild = field(default_factory=FirmwareBuild)

    def __post_init__(self) -> None:
        self._line = bytearray()
        self._overflow = False
        self._binary = False
        self.trigger_out_pulses = 0
        self.frames_shown = 0
        # The serial port and the trigger input reach the board from different threads (a
        # camera's exposure-end output steps a sequence while the host sends commands).
        self._lock = threading.RLock()
        self.reset_state()

    # ---- state -------------------------------------------------------------------------
    def reset_state(self) -> None:
        self.lit: set[int] = set()
        self.color_rgb = [255, 255, 255]
        self.brightness_rgb = [self.build.default_brightness] * 3
        self.na_x100 = self.build.default_na_x100
        self.distance_mm = self.build.distance_mm
        self.auto_clear = 1
        self.auto_trigger = 0
        self.trigger_delay_us = 0
        self.trigger_width_us = 500
        self.sequence: list[int] = []
        self.sequence_length = 0
        self.sequence_position = 0
        self.sequence_armed = 0

    def output_rgb(self) -> tuple[int, int, int]:
        r, g, b = ((c * s + 127) // 255 for c, s in zip(self.color_rgb, self.brightness_rgb, strict=True))
        return r, g, b

    def frame(self) -> list[tuple[int, int, int]]:
        """What each LED shows, by protocol index (row * cols + col)."""
        on = self.output_rgb()
        return [on if i in self.lit else (0, 0, 0) for i in range(self.build.led_count)]

    def _display(self, pulse: bool) -> None:
        self.frames_shown += 1
        if pulse:
            self.trigger_out_pulses += 1

    def _compare_na(self, index: int, limit_x100: int) -> int:
        c_row, c_col = self.build.center_x2
        drow = 2 * (index // self.build.cols) - c_row
        dcol = 2 * (index % self.build.cols) - c_col
        pitch_mm = self.build.pitch_um / 1000.0
        radial2 = (drow * drow + dcol * dcol) * 0.25 * pitch_mm * pitch_mm
        sin2 = radial2 / (radial2 + float(self.distance_mm) ** 2)
        limit2 = (limit_x100 / 100.0) ** 2
        if sin2 <= limit2 * 1.000001:
            return -1 if sin2 < limit2 * 0.999999 else 0
        return 1

    # ---- bytes in, bytes out -------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        with self._lock:
            return self._feed(data)

    def _feed(self, data: bytes) -> bytes:
        out: list[str] = []
        for byte in data:
            if byte == 0x0D:
                continue
            if byte != 0x0A:
                if byte < 0x20 or byte > 0x7E:
                    self._binary = True
                elif len(self._line) >= LINE_MAX_CHARS:
                    self._overflow = True
                else:
                    self._line.append(byte)
                continue
            if self._overflow:
                out += ["ERROR: line too long (see line_max in pprops)", "-==-"]
            elif self._binary:
                out += ["ERROR: non-printable bytes in command", "-==-"]
            elif self._line:
                out += self._execute(self._line.decode("ascii"))
                out.append("-==-")
            self._line.clear()
            self._overflow = self._binary = False
        return "".join(line + "\n" for line in out).encode("ascii")

    def trigger_in(self) -> None:
        """A rising edge on the trigger input (D2): steps an armed sequence, else ignored."""
        with self._lock:
            if self.sequence_armed:
                self._step_sequence()

    def _step_sequence(self) -> None:
        self.sequence_position += 1
        self.lit = set()
        if self.sequence_position >= len(self.sequence):
            self.sequence_armed = 0
            self._display(False)
            return
        self.lit = {self.sequence[self.sequence_position]}
        self._display(True)

    # ---- commands -------------------------------------------------------------------------
    @staticmethod
    def _uint(text: str, maximum: int, message: str) -> int:
        if not text or len(text) > 5 or not all("0" <= ch <= "9" for ch in text):
            raise _CommandError(message)
        value = int(text)
        if value > maximum:
            raise _CommandError(message)
        return value

    def _execute(self, text: str) -> list[str]:
        name, *args = text.split(".")
        if len(args) > MAX_ARGS:
            return ["ERROR: too many arguments"]
        name = name.lower()
        try:
            return self._dispatch(name, args)
        except _CommandError as error:
            return [f"ERROR: {error}"]

    def _no_args(self, args: list[str]) -> None:
        if args:
            raise _CommandError("too many arguments")

    def _triple(self, args: list[str], target: list[int], key: str) -> list[str]:
        if not args:
            return [f"{key}.{target[0]}.{target[1]}.{target[2]}"]
        if len(args) not in (1, 3):
            raise _CommandError("expected 1 or 3 values 0-255")
        values = [self._uint(a, 255, "value out of range: expected 0-255") for a in args]
        for i in range(3):
            target[i] = values[0 if len(values) == 1 else i]
        self._display(False)
        return []

    def _dispatch(self, name: str, args: list[str]) -> list[str]:  # noqa: C901 - a command table
        b = self.build
        out_of_range = "LED index out of range (0 to rows*cols-1)"
        if name in ("about", "?"):
            self._no_args(args)
            driver = "APA102" if b.driver == "apa102" else "WS2812B"
            return [
                f"uafp-led {FIRMWARE_VERSION}: illuminate-compatible LED array, "
                f"{b.rows}x{b.cols} {driver}, send 'help' for commands"
            ]
        if name in ("help", "h"):
            self._no_args(args)
            return ["about | ver | reset | pprops | pvals | help (Python model of uafp-led)"]
        if name in ("ver", "version"):
            self._no_args(args)
            return [FIRMWARE_VERSION]
        if name == "reset":
            self._no_args(args)
            self.reset_state()
            self._display(False)
            return []
        if name in ("pprops", "printsystemparams"):
            self._no_args(args)
            props = {
                "device": "uafp-led",
                "firmware_version": FIRMWARE_VERSION,
                "led_count": b.led_count,
                "array_shape": [b.rows, b.cols],
                "led_pitch_um": b.pitch_um,
                "center_x2": list(b.center_x2),
                "color_channels": ["r", "g", "b"],
                "bit_depth": 8,
                "led_driver": b.driver,
                "serpentine": int(b.serpentine),
                "trigger_input_count": 1,
                "trigger_output_count": 1,
                "sequence_max": SEQUENCE_MAX,
                "line_max": LINE_MAX_CHARS,
                "led_array_distance_z_default_mm": b.distance_mm,
            }
            return [json.dumps(props, separators=(",", ":"))]
        if name in ("pvals", "printvals"):
            self._no_args(args)
            values = {
                "na_x100": self.na_x100,
                "distance_mm": self.distance_mm,
                "color": self.color_rgb,
                "brightness": self.brightness_rgb,
                "auto_clear": self.auto_clear,
                "auto_trigger": self.auto_trigger,
                "trigger_width_us": self.trigger_width_us,
                "trigger_delay_us": self.trigger_delay_us,
                "sequence_length": self.sequence_length,
                "sequence_position": self.sequence_position,
                "sequence_armed": self.sequence_armed,
            }
            return [json.dumps(values, separators=(",", ":"))]
        if name == "plit":
            self._no_args(args)
            return ["lit" + "".join(f".{i}" for i in sorted(self.lit))]
        if name in ("l", "led"):
            if not args:
                raise _CommandError("l needs at least one LED index")
            indices = [self._uint(a, b.led_count - 1, out_of_range) for a in args]
            if self.auto_clear:
                self.lit = set()
            self.lit.update(indices)
            self._display(bool(self.auto_trigger))
            return []
        if name in ("x", "xx", "clear"):
            self._no_args(args)
            self.lit = set()
            self._display(False)
            return []
        if name in ("ff", "fillarray"):
            self._no_args(args)
            self.lit = set(range(b.led_count))
            self._display(bool(self.auto_trigger))
            return []
        if name in ("bf", "brightfield", "df", "darkfield"):
            self._no_args(args)
            dark = name.startswith("d")
            self.lit = {i for i in range(b.led_count) if (self._compare_na(i, self.na_x100) > 0) == dark}
            self._display(bool(self.auto_trigger))
            return []
        if name in ("an", "annulus"):
            usage = "usage: an.<minNA*100>.<maxNA*100>, 0-100, min <= max"
            if len(args) != 2:
                raise _CommandError(usage)
            low, high = (self._uint(a, 100, usage) for a in args)
            if low > high:
                raise _CommandError(usage)
            self.lit = {
                i for i in range(b.led_count) if self._compare_na(i, low) >= 0 and self._compare_na(i, high) <= 0
            }
            self._display(bool(self.auto_trigger))
            return []
        if name in ("na", "setna"):
            if len(args) > 1:
                raise _CommandError("too many arguments")
            if args:
                self.na_x100 = self._uint(args[0], 100, "NA*100 out of range: expected 0-100")
            return [f"na.{self.na_x100}"]
        if name in ("sad", "setarraydistance"):
            if len(args) > 1:
                raise _CommandError("too many arguments")
            if args:
                message = "distance out of range: expected 1-10000 mm"
                value = self._uint(args[0], 10000, message)
                if value == 0:
                    raise _CommandError(message)
                self.distance_mm = value
            return [f"sad.{self.distance_mm}"]
        if name in ("sb", "setbrightness"):
            return self._triple(args, self.brightness_rgb, "sb")
        if name in ("sc", "setcolor"):
            return self._triple(args, self.color_rgb, "sc")
        if name in ("ac", "autoclear"):
            usage = "usage: ac (toggle), ac.0 or ac.1"
            if len(args) > 1:
                raise _CommandError(usage)
            self.auto_clear = self._uint(args[0], 1, usage) if args else int(not self.auto_clear)
            return [f"ac.{self.auto_clear}"]
        if name in ("tr", "trig"):
            usage = "usage: tr or tr.0 (one trigger output)"
            if len(args) > 1:
                raise _CommandError(usage)
            if args:
                self._uint(args[0], 0, usage)
            self.trigger_out_pulses += 1
            return []
        if name in ("trs", "trigsetup"):
            usage = "usage: trs.<width_us 1-60000>.<delay_us 0-60000>"
            if len(args) != 2:
                raise _CommandError(usage)
            width, delay = (self._uint(a, 60000, usage) for a in args)
            if width == 0:
                raise _CommandError(usage)
            self.trigger_width_us, self.trigger_delay_us = width, delay
            return []
        if name == "tra":
            usage = "usage: tra.0 or tra.1"
            if len(args) > 1:
                raise _CommandError(usage)
            if args:
                self.auto_trigger = self._uint(args[0], 1, usage)
            return [f"tra.{self.auto_trigger}"]
        if name in ("ssl", "setseqlength"):
            usage = "usage: ssl.<n>, n up to sequence_max in pprops"
            if len(args) != 1:
                raise _CommandError(usage)
            self.sequence_length = self._uint(args[0], SEQUENCE_MAX, usage)
            self.sequence = []
            self.sequence_armed = 0
            self.sequence_position = 0
            return []
        if name in ("ssv", "setseqvalue"):
            if not args:
                raise _CommandError("ssv needs at least one LED index")
            if len(self.sequence) + len(args) > self.sequence_length:
                raise _CommandError("sequence full: set its length with ssl first")
            self.sequence += [self._uint(a, b.led_count - 1, out_of_range) for a in args]
            return []
        if name in ("pseq", "printseq"):
            self._no_args(args)
            return [f"seq.{len(self.sequence)}" + "".join(f".{i}" for i in self.sequence)]
        if name in ("tseq", "trigseq"):
            self._no_args(args)
            if not self.sequence or len(self.sequence) != self.sequence_length:
                raise _CommandError("sequence not loaded: send ssl.<n> then n indices with ssv")
            self.sequence_position = 0
            self.sequence_armed = 1
            self.lit = {self.sequence[0]}
            self._display(True)
            return []
        if name in ("sseq", "stepseq"):
            self._no_args(args)
            if not self.sequence_armed:
                raise _CommandError("no sequence armed: send tseq first")
            self._step_sequence()
            return []
        if name in ("xseq", "stopseq"):
            self._no_args(args)
            self.sequence_armed = 0
            self.lit = set()
            self._display(False)
            return []
        if name == "qseq":
            self._no_args(args)
            return [f"seq.{self.sequence_position}.{len(self.sequence)}.{self.sequence_armed}"]
        raise _CommandError("unknown command (send 'help' for the list)")


class LoopbackPort:
    """Just enough of `serial.Serial` for the driver, answered by a firmware model.

    `unplug()` makes every call fail like a pulled USB cable and reopening fail until
    `plug_in()`; `mute_after(n)` stops answering after n more command lines (a hung board).
    """

    def __init__(self, model: IlluminateFirmwareModel, timeout: float = 0.05) -> None:
        self.model = model
        self.timeout: float | None = timeout  # pyserial's attribute (None: block)
        self.is_open = True
        self.plugged_in = True
        self._rx = bytearray()
        self._lock = threading.Lock()
        self._lines_until_mute: int | None = None

    # failure injection
    def unplug(self) -> None:
        self.plugged_in = False

    def plug_in(self) -> None:
        self.plugged_in = True
        self._lines_until_mute = None

    def mute_after(self, lines: int | None) -> None:
        self._lines_until_mute = lines

    # serial.Serial API used by IlluminateConnection
    def open(self) -> None:
        if not self.plugged_in:
            raise serial.SerialException("could not open port: no such device (simulated unplug)")
        self.is_open = True
        self._rx.clear()

    def close(self) -> None:
        self.is_open = False

    def _check(self) -> None:
        if not self.is_open:
            raise serial.PortNotOpenError()
        if not self.plugged_in:
            raise serial.SerialException(
                "device reports readiness to read but returned no data "
                "(device disconnected or multiple access on port?)"
            )

    @property
    def in_waiting(self) -> int:
        self._check()
        return len(self._rx)

    def reset_input_buffer(self) -> None:
        self._check()
        self._rx.clear()

    def write(self, data: bytes) -> int:
        self._check()
        if self._lines_until_mute is not None:
            newlines = data.count(b"\n")
            if newlines > self._lines_until_mute:
                self._lines_until_mute = 0
                return len(data)  # a hung board: bytes go nowhere
            self._lines_until_mute -= newlines
        reply = self.model.feed(bytes(data))
        with self._lock:
            self._rx += reply
        return len(data)

    def flush(self) -> None:
        self._check()

    def read(self, size: int = 1) -> bytes:
        self._check()
        with self._lock:
            if not self._rx:
                pass
            else:
                chunk = bytes(self._rx[:size])
                del self._rx[:size]
                return chunk
        # Nothing will arrive without a write from this same thread: behave like a
        # real port and wait out the timeout.
        time.sleep(self.timeout or 0.0)
        return b""
