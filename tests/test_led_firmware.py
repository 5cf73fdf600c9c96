"""The real firmware in simavr, beyond the shared conformance suite: fuzzing, trigger pin
timing, the APA102 build, the serial driver (orientation, reconnect after the port is
pulled) and the `uafp led` command line against the simulated board.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from firmware.harness import FirmwareVariant, SimulatedBoard, build_firmware, require_toolchain

from uafp_gui.cli import main as uafp_main
from uafp_gui.devices.illuminate import (
    PORT_CANDIDATES_ENV,
    IlluminateLedArray,
    find_led_array_port,
)
from uafp_gui.devices.illuminate_connection import IlluminateConnection
from uafp_gui.devices.interfaces import Orientation
from uafp_gui.errors import LedArrayDisconnected, LedArrayNotFound

VARIANT = FirmwareVariant()
CYCLES_PER_US = 16


@pytest.fixture
def board(tmp_path: Path) -> Iterator[SimulatedBoard]:
    require_toolchain()
    board = SimulatedBoard(build_firmware(VARIANT), VARIANT, tmp_path / "ttyLED")
    yield board
    board.stop()


def fuzz_bytes(count: int, seed: int) -> bytes:
    """Random bytes mixed with near-miss commands (valid names, wrong numbers)."""
    rng = random.Random(seed)
    names = ["l", "x", "ff", "bf", "df", "na", "sad", "sb", "sc", "ac", "ssl", "ssv", "pseq"]
    names += ["qseq", "sseq", "tseq", "xseq", "plit", "pvals", "about", "L", "sB", "zz", ""]
    out = bytearray()
    while len(out) < count:
        if rng.random() < 0.5:
            out += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        else:
            args = [
                rng.choice(["", "0", "-1", "255", "256", "65535", "99999999", "a", "1e3"])
                for _ in range(rng.randint(0, 70))
            ]
            out += ".".join([rng.choice(names), *args]).encode() + rng.choice([b"\n", b"\r\n"])
    return bytes(out[:count])


@pytest.mark.slow  # fuzzing the simulated board: the slow lane
def test_fuzz_then_about_still_answers(board: SimulatedBoard) -> None:
    connection = IlluminateConnection(board.port, timeout_s=5.0, boot_timeout_s=10.0)
    connection.open()
    cycles_before = board.sync()
    data = fuzz_bytes(100_000, seed=1)
    for start in range(0, len(data), 2048):
        connection.write_raw(data[start : start + 2048])
        connection.read_until_quiet(0.0, limit_s=0.05)  # keep draining the replies
    connection.write_raw(b"\n")  # end whatever partial line the fuzz left
    replies = connection.read_until_quiet(0.5, limit_s=60).decode("ascii", "replace")
    assert "ERROR" in replies  # the firmware kept answering during the flood
    assert board.alive(), "simavr host died: the firmware crashed"
    (about,) = connection.command("about")
    assert about.startswith("uafp-led 1.0.0") and "16x16" in about
    values = json.loads(connection.command("pvals")[0])
    assert 0 <= values["na_x100"] <= 100 and 1 <= values["distance_mm"] <= 10000
    connection.command("reset")
    connection.command("l.42")
    assert [i for i, rgb in enumerate(board.frame()) if rgb != (0, 0, 0)] == [42]
    assert board.sync() > cycles_before
    connection.close()


def test_trigger_output_width_and_delay_in_cpu_cycles(board: SimulatedBoard) -> None:
    connection = IlluminateConnection(board.port, timeout_s=5.0, boot_timeout_s=10.0)
    connection.open()
    connection.command("trs.200.0")
    connection.command("tr")
    (width,) = board.trigger_pulses()
    assert abs(width / CYCLES_PER_US - 200) < 15
    # with tra.1 the pulse follows the LED frame: it starts after the data line latched
    connection.command("trs.100.300")
    connection.command("tra.1")
    edges_before = len(board.trigger_out_edges)
    connection.command("l.3")
    board.sync()
    rise = next(c for level, c in board.trigger_out_edges[edges_before:] if level == 1)
    widths = board.trigger_pulses()
    assert abs(widths[-1] / CYCLES_PER_US - 100) < 15
    settle_us = (rise - board.frame_end_cycle()) / CYCLES_PER_US
    assert 300 <= settle_us < 300 + 100  # latch (>50 us low) + programmed delay, then pulse
    connection.close()


def test_apa102_build_drives_spi(tmp_path: Path) -> None:
    require_toolchain()
    variant = FirmwareVariant(driver="APA102", rows=8, cols=8, serpentine=0, pitch_um=3300)
    board = SimulatedBoard(build_firmware(variant), variant, tmp_path / "ttyAPA")
    try:
        connection = IlluminateConnection(board.port, timeout_s=10.0, boot_timeout_s=20.0)
        connection.open()
        props = json.loads(connection.command("pprops")[0])
        assert props["led_driver"] == "apa102" and props["array_shape"] == [8, 8]
        connection.command("sc.255.0.0")
        connection.command("sb.255")
        connection.command("l.9.63")
        frame = board.frame()
        assert {i for i, rgb in enumerate(frame) if rgb != (0, 0, 0)} == {9, 63}
        assert frame[9] == (255, 0, 0)
        connection.close()
    finally:
        board.stop()


def test_driver_orientation_maps_image_axes_to_wiring(board: SimulatedBoard) -> None:
    orientation = Orientation(flip_rows=True, transpose=True)
    with IlluminateLedArray(board.port, orientation=orientation, boot_timeout_s=10.0) as leds:
        assert leds.shape == (16, 16) and leds.pitch_mm == 10.0
        leds.light([(2, 5)])  # image (row 2, col 5) -> array (col 5 flipped = row 10, col 2)
        assert leds.lit == {(2, 5)}
        lit = [i for i, rgb in enumerate(board.frame()) if rgb != (0, 0, 0)]
        assert lit == [10 * 16 + 2]
        assert leds.read_lit() == {(2, 5)}
        # a pattern longer than one command line is split without losing LEDs
        many = [(r, c) for r in range(16) for c in range(0, 16, 2)]
        leds.light(many)
        assert leds.read_lit() == set(many)
        assert len([rgb for rgb in board.frame() if rgb != (0, 0, 0)]) == len(many)


def test_pulling_the_port_mid_sequence_then_reconnect(board: SimulatedBoard) -> None:
    leds = IlluminateLedArray(board.port, boot_timeout_s=10.0, timeout_s=5.0)
    leds.set_brightness(200)
    for col in range(4):
        leds.light([(0, col)])
    board.unplug(700)  # close the pty: the USB cable is pulled
    with pytest.raises(LedArrayDisconnected) as raised:
        leds.light([(0, 4)])
    message = str(raised.value)
    assert board.port in message and "cable" in message
    # the port comes back: the driver reopens it, restores brightness and carries on
    deadline = time.monotonic() + 15
    while True:
        try:
            leds.light([(0, 5)])
            break
        except LedArrayDisconnected:
            assert time.monotonic() < deadline, "driver did not reconnect"
            time.sleep(0.1)
    assert leds.connection.reconnects == 1
    assert leds.connection.command("sb") == ["sb.200.200.200"]
    frame = board.frame()
    assert [i for i, rgb in enumerate(frame) if rgb != (0, 0, 0)] == [5]
    assert frame[5] == (200, 200, 200)
    leds.close()


def test_find_port_probes_about(board: SimulatedBoard, tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing-here")
    assert find_led_array_port([missing, board.port], boot_timeout_s=5.0) == board.port
    with pytest.raises(LedArrayNotFound, match="nothing-here"):
        find_led_array_port([missing], boot_timeout_s=0.5)


def test_cli_about_and_light_on_simulated_board(
    board: SimulatedBoard, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(PORT_CANDIDATES_ENV, board.port)
    assert uafp_main(["led", "--port", "auto", "about"]) == 0
    assert "uafp-led 1.0.0" in capsys.readouterr().out
    assert uafp_main(["led", "--port", board.port, "light", "7", "7"]) == 0
    assert [i for i, rgb in enumerate(board.frame()) if rgb != (0, 0, 0)] == [7 * 16 + 7]
    assert uafp_main(["led", "--port", board.port, "light", "99", "0"]) == 2
    assert "outside the 16x16 array" in capsys.readouterr().err
