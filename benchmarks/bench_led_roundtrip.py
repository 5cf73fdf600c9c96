"""Command round trip of the uafp-led firmware running in simavr, in real time.

Builds the firmware and the simavr host (needs the AVR toolchain, see hardware/README.md),
runs the virtual ATmega328P throttled to 1x real time so UART and LED timings are those
of a real Uno, then reports:
  - median / p95 round trip of 1000 `l.<index>` commands through the Python driver,
    against the serial floor (bytes on the wire at 115200 baud) and the LED refresh time;
  - the same for `ver` (no LED refresh: protocol + serial only);
  - fuzz: N random/malformed bytes (default 100 000), then whether `about` still answers.

    python benchmarks/bench_led_roundtrip.py [--count 1000] [--fuzz-bytes 100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from firmware.harness import (  # noqa: E402
    FirmwareVariant,
    SimulatedBoard,
    build_firmware,
    toolchain_missing,
)

from uafp_gui.devices.illuminate_connection import IlluminateConnection  # noqa: E402

BIT_S = 10 / 115200  # start + 8 data + stop bits per byte


def measure(connection: IlluminateConnection, lines: list[str]) -> list[float]:
    times = []
    for line in lines:
        start = time.perf_counter()
        connection.command(line)
        times.append(time.perf_counter() - start)
    return times


def report(name: str, times: list[float], wire_bytes: float, refresh_s: float) -> None:
    median_ms = statistics.median(times) * 1e3
    p95_ms = sorted(times)[int(0.95 * len(times))] * 1e3
    floor_ms = wire_bytes * BIT_S * 1e3
    print(
        f"{name:<14} n={len(times):5d}  median {median_ms:6.2f} ms  p95 {p95_ms:6.2f} ms  "
        f"| serial floor {floor_ms:4.2f} ms ({wire_bytes:.1f} bytes)"
        + (f" + LED refresh {refresh_s * 1e3:.2f} ms" if refresh_s else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--fuzz-bytes", type=int, default=100_000)
    parser.add_argument("--speed", type=float, default=1.0, help="simulation speed, 1 = real time")
    args = parser.parse_args()
    missing = toolchain_missing()
    if missing:
        print(
            f"cannot run: {missing} (apt-get install gcc-avr avr-libc simavr libsimavr-dev arduino-mk arduino-core-avr)"
        )
        return 1

    variants = [FirmwareVariant(), FirmwareVariant(rows=8, cols=8)]
    for variant in variants:
        refresh_s = variant.led_count * 24 * 1.25e-6 + 60e-6  # WS2812B bits + latch
        with tempfile.TemporaryDirectory() as tmp:
            board = SimulatedBoard(build_firmware(variant), variant, Path(tmp) / "ttyLED", speed=args.speed)
            try:
                connection = IlluminateConnection(board.port, timeout_s=5, boot_timeout_s=10)
                connection.open()
                print(f"\n== {variant.rows}x{variant.cols} WS2812B, simavr at {args.speed}x real time")
                lines = [f"l.{(7 * i) % variant.led_count}" for i in range(args.count)]
                wire = statistics.mean(len(line) + 1 + 5 for line in lines)  # cmd + "-==-\n"
                report("l.<index>", measure(connection, lines), wire, refresh_s)
                report("ver", measure(connection, ["ver"] * args.count), 4 + 11, 0.0)
                if variant is variants[0] and args.fuzz_bytes:
                    fuzz(board, connection, args.fuzz_bytes)
                connection.close()
            finally:
                board.stop()
    return 0


def fuzz(board: SimulatedBoard, connection: IlluminateConnection, count: int) -> None:
    from test_led_firmware import fuzz_bytes  # the same generator as the CI test

    data = fuzz_bytes(count, seed=2)
    start = time.perf_counter()
    for offset in range(0, len(data), 2048):
        connection.write_raw(data[offset : offset + 2048])
        connection.read_until_quiet(0.0, limit_s=0.05)
    connection.write_raw(b"\n")
    replies = connection.read_until_quiet(1.0, limit_s=120).decode("ascii", "replace")
    elapsed = time.perf_counter() - start
    about = connection.command("about")
    ok = board.alive() and about and about[0].startswith("uafp-led 1.0.0")
    print(
        f"fuzz: {count} random/malformed bytes in {elapsed:.1f} s, "
        f"{replies.count('ERROR')} ERROR replies; then about -> {about[0]!r}: "
        + ("OK, firmware alive" if ok else "FAILED")
    )


if __name__ == "__main__":
    sys.exit(main())
