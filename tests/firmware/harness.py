"""Build and run the uafp-led firmware in simavr for the tests and the benchmark.

`build_firmware()` compiles the sketch with arduino-mk into tests/_build/, `build_host()`
compiles the simavr host (tests/firmware/simavr_host.c), and `SimulatedBoard` runs the
ELF in a virtual ATmega328P whose UART is a pty at `board.port`. Without the toolchain
`require_toolchain()` skips, except under CI=true where it fails.
"""

from __future__ import annotations

import fcntl
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = REPO / "hardware" / "firmware" / "uafp_led"
HOST_SOURCE = Path(__file__).resolve().parent / "simavr_host.c"
BUILD_ROOT = REPO / "tests" / "_build"

APT_PACKAGES = "gcc-avr avr-libc simavr libsimavr-dev arduino-mk arduino-core-avr"


def toolchain_missing() -> str | None:
    """Why the firmware tests cannot run here, or None when everything is installed."""
    for tool in ("avr-gcc", "make", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    for path in (
        Path("/usr/share/arduino/Arduino.mk"),
        Path("/usr/share/arduino/hardware/arduino/avr/cores/arduino/Arduino.h"),
        Path("/usr/include/simavr/sim_avr.h"),
    ):
        if not path.exists():
            return f"{path} not found"
    return None


def require_toolchain() -> None:
    import pytest

    reason = toolchain_missing()
    if reason is None:
        return
    message = f"AVR toolchain/simavr missing ({reason}): apt-get install {APT_PACKAGES}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: the firmware tests must run)")
    pytest.skip(message)


@contextmanager
def _build_lock(name: str) -> Iterator[None]:
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BUILD_ROOT / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # xdist workers / parallel runs build once
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class FirmwareVariant:
    driver: str = "WS2812"  # or "APA102"
    rows: int = 16
    cols: int = 16
    serpentine: int = 1
    pitch_um: int = 10000
    distance_mm: int = 50

    @property
    def tag(self) -> str:
        return f"{self.driver}-{self.rows}x{self.cols}-s{self.serpentine}"

    @property
    def led_count(self) -> int:
        return self.rows * self.cols


def build_firmware(variant: FirmwareVariant = FirmwareVariant()) -> Path:
    objdir = BUILD_ROOT / f"fw-{variant.tag}"
    with _build_lock("firmware"):
        result = subprocess.run(
            [
                "make", "-s", "-C", str(FIRMWARE_DIR), f"OBJDIR={objdir}",
                f"LED_DRIVER={variant.driver}", f"LED_ROWS={variant.rows}",
                f"LED_COLS={variant.cols}", f"LED_SERPENTINE={variant.serpentine}",
                f"LED_PITCH_UM={variant.pitch_um}", f"LED_DISTANCE_MM={variant.distance_mm}",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    elf = objdir / "uafp_led.elf"
    if result.returncode != 0 or not elf.exists():
        raise RuntimeError(f"firmware build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elf


def build_host() -> Path:
    binary = BUILD_ROOT / "simavr_host"
    with _build_lock("host"):
        if not binary.exists() or binary.stat().st_mtime < HOST_SOURCE.stat().st_mtime:
            subprocess.run(
                ["gcc", "-O2", "-Wall", "-o", str(binary), str(HOST_SOURCE),
                 "-I/usr/include/simavr", "-lsimavr"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
    return binary


class SimulatedBoard:
    """The firmware running in simavr; `port` is the serial device to open."""

    def __init__(
        self,
        elf: Path,
        variant: FirmwareVariant,
        link: Path,
        *,
        speed: float = 0.0,
    ) -> None:
        self.variant = variant
        self.port = str(link)
        self.trigger_out_edges: list[tuple[int, int]] = []  # (level, cycle) on D5
        self._replies: queue.Queue[str] = queue.Queue()
        self._pty_events: queue.Queue[str] = queue.Queue()
        self.process = subprocess.Popen(
            [
                str(build_host()), str(elf), "--link", self.port, "--speed", str(speed),
                "--leds", str(variant.led_count),
                "--driver", "apa102" if variant.driver == "APA102" else "ws2812",
            ],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read_events, daemon=True)
        self._reader.start()
        self.wait_for_port()

    def _read_events(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            if line.startswith("PIN D5 "):
                _, _, level, cycle = line.split()
                self.trigger_out_edges.append((int(level), int(cycle)))
            elif line.startswith("PTY "):
                self._pty_events.put(line)
            elif line.startswith(("FRAME ", "OK ", "CYCLE ", "ERR ")):
                self._replies.put(line)

    def wait_for_port(self, timeout_s: float = 10.0) -> None:
        try:
            self._pty_events.get(timeout=timeout_s)
        except queue.Empty:
            stderr = self.process.stderr.read() if self.process.poll() is not None else ""
            raise RuntimeError(f"simavr host did not create its pty: {stderr}") from None

    def _ask(self, command: str, timeout_s: float = 10.0) -> str:
        if self.process.poll() is not None:
            raise RuntimeError(f"simavr host exited with {self.process.returncode}")
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._replies.get(timeout=timeout_s)

    def sync(self) -> int:
        """Round trip through the host: every pin event before this call has been read."""
        return int(self._ask("cycle").split()[1])

    def frame(self) -> list[tuple[int, int, int]]:
        """Last latched LED frame decoded from the pins, by protocol index (row*cols+col)."""
        _, _count, _end, data = self._ask("frame").split()
        strip = [tuple(bytes.fromhex(data[i : i + 6])) for i in range(0, len(data), 6)]
        rows, cols = self.variant.rows, self.variant.cols
        by_index: list[tuple[int, int, int]] = [(0, 0, 0)] * (rows * cols)
        for row in range(rows):
            for step in range(cols):
                col = cols - 1 - step if self.variant.serpentine and row % 2 else step
                by_index[row * cols + col] = strip[row * cols + step]  # type: ignore[assignment]
        return by_index

    def frame_count(self) -> int:
        return int(self._ask("frame").split()[1])

    def frame_end_cycle(self) -> int:
        """CPU cycle of the last data edge of the latest frame."""
        return int(self._ask("frame").split()[2])

    def trigger_in(self) -> None:
        """A 10 us rising pulse on the trigger input D2."""
        self._ask("trig")

    def unplug(self, ms: int) -> None:
        """Close the pty (cable pulled); a new one appears at the same link after `ms`."""
        self._ask("unplug " + str(ms))

    def trigger_pulses(self) -> list[int]:
        """Widths in CPU cycles of the completed trigger-output pulses."""
        self.sync()
        widths, rise = [], None
        for level, cycle in list(self.trigger_out_edges):
            if level:
                rise = cycle
            elif rise is not None:
                widths.append(cycle - rise)
                rise = None
        return widths

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def wait_until(predicate, timeout_s: float = 5.0, interval_s: float = 0.01) -> bool:  # noqa: ANN001
    """Poll `predicate` until true (for state that changes asynchronously, e.g. triggers)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
