"""One protocol conformance suite, run against (a) the real uafp-led firmware in simavr
through pyserial and (b) the Python firmware model behind `SimulatedLedArray`.

LED side effects are checked on both: simavr decodes the WS2812B data pin, the model
reports its frame. Firmware tests skip without the AVR toolchain (fail under CI=true).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from firmware.harness import (
    FirmwareVariant,
    SimulatedBoard,
    build_firmware,
    require_toolchain,
    wait_until,
)

from uafp_gui.devices.illuminate_connection import IlluminateConnection
from uafp_gui.simulated.firmware import FirmwareBuild, IlluminateFirmwareModel, LoopbackPort

VARIANT = FirmwareVariant()  # the default build: 16x16 serpentine WS2812B, 10 mm pitch


class Endpoint:
    """Something that speaks the protocol, plus a view of its LEDs and trigger pins."""

    name: str
    connection: IlluminateConnection
    rows = VARIANT.rows
    cols = VARIANT.cols

    def frame(self) -> list[tuple[int, int, int]]:
        raise NotImplementedError

    def trigger_in(self) -> None:
        raise NotImplementedError

    def trigger_pulse_count(self) -> int:
        raise NotImplementedError

    def lit_in_frame(self) -> set[int]:
        return {i for i, rgb in enumerate(self.frame()) if rgb != (0, 0, 0)}

    def tx(self, line: str) -> list[str]:
        return self.connection.transact(line)

    def ok(self, line: str) -> list[str]:
        return self.connection.command(line)

    def lit(self) -> set[int]:
        (text,) = self.ok("plit")
        return {int(v) for v in text.split(".")[1:]}


class FirmwareEndpoint(Endpoint):
    name = "simavr"

    def __init__(self, board: SimulatedBoard) -> None:
        self.board = board
        self.connection = IlluminateConnection(board.port, timeout_s=5.0, boot_timeout_s=10.0)
        self.connection.open()

    def frame(self) -> list[tuple[int, int, int]]:
        return self.board.frame()

    def trigger_in(self) -> None:
        self.board.trigger_in()

    def trigger_pulse_count(self) -> int:
        return len(self.board.trigger_pulses())


class ModelEndpoint(Endpoint):
    name = "python"

    def __init__(self) -> None:
        self.model = IlluminateFirmwareModel(
            FirmwareBuild(rows=VARIANT.rows, cols=VARIANT.cols, pitch_um=VARIANT.pitch_um)
        )
        self.connection = IlluminateConnection("loopback", timeout_s=0.5, open_port=lambda _: LoopbackPort(self.model))
        self.connection.open()

    def frame(self) -> list[tuple[int, int, int]]:
        return self.model.frame()

    def trigger_in(self) -> None:
        self.model.trigger_in()

    def trigger_pulse_count(self) -> int:
        return self.model.trigger_out_pulses


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedBoard]:
    require_toolchain()
    elf = build_firmware(VARIANT)
    link = Path(tmp_path_factory.mktemp("led")) / "ttyLED"
    board = SimulatedBoard(elf, VARIANT, link)
    yield board
    board.stop()


@pytest.fixture(params=["simavr", "python"])
def endpoint(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    if request.param == "simavr":
        ep: Endpoint = FirmwareEndpoint(request.getfixturevalue("board"))
    else:
        ep = ModelEndpoint()
    ep.ok("reset")
    yield ep
    ep.connection.close()


def expected_rgb(color: int = 255, brightness: int = 64) -> tuple[int, int, int]:
    value = (color * brightness + 127) // 255
    return (value, value, value)


def led_sin2(index: int, distance_mm: float, pitch_mm: float = 10.0) -> float:
    row, col = divmod(index, VARIANT.cols)
    dy = (row - (VARIANT.rows - 1) / 2) * pitch_mm
    dx = (col - (VARIANT.cols - 1) / 2) * pitch_mm
    r2 = dx * dx + dy * dy
    return r2 / (r2 + distance_mm**2)


# ---- identity ------------------------------------------------------------------------------


def test_about_ver_and_pprops(endpoint: Endpoint) -> None:
    (about,) = endpoint.ok("about")
    assert about.startswith("uafp-led 1.0.0") and "16x16" in about
    assert endpoint.ok("?") == [about]
    assert endpoint.ok("ver") == ["1.0.0"]
    (text,) = endpoint.ok("pprops")
    props = json.loads(text)
    assert props["array_shape"] == [16, 16]
    assert props["led_count"] == 256
    assert props["led_pitch_um"] == 10000
    assert props["color_channels"] == ["r", "g", "b"]
    assert props["firmware_version"] == "1.0.0"
    assert props["serpentine"] == 1


def test_crlf_line_endings_and_case(endpoint: Endpoint) -> None:
    endpoint.connection.write_raw(b"VER\r\n")
    assert endpoint.connection.read_until_quiet(0.2) == b"1.0.0\n-==-\n"


def test_empty_lines_get_no_reply(endpoint: Endpoint) -> None:
    endpoint.connection.write_raw(b"\n\r\n\n")
    assert endpoint.connection.read_until_quiet(0.2) == b""
    assert endpoint.ok("ver") == ["1.0.0"]


# ---- lighting ------------------------------------------------------------------------------


def test_light_indices_and_frame(endpoint: Endpoint) -> None:
    assert endpoint.ok("l.0.17.255") == []
    assert endpoint.lit() == {0, 17, 255}
    frame = endpoint.frame()
    assert {i for i, rgb in enumerate(frame) if rgb != (0, 0, 0)} == {0, 17, 255}
    assert frame[17] == expected_rgb()
    # auto-clear (default on): the next pattern replaces the last
    endpoint.ok("l.5")
    assert endpoint.lit_in_frame() == {5}
    # row-major index: row 1, col 0 is index 16 (serpentine wiring is hidden by the firmware)
    endpoint.ok("l.16")
    assert endpoint.lit_in_frame() == {16}


def test_auto_clear_off_accumulates(endpoint: Endpoint) -> None:
    assert endpoint.ok("ac.0") == ["ac.0"]
    endpoint.ok("l.1")
    endpoint.ok("l.2")
    assert endpoint.lit_in_frame() == {1, 2}
    assert endpoint.ok("ac") == ["ac.1"]  # toggle
    endpoint.ok("l.3")
    assert endpoint.lit_in_frame() == {3}


def test_clear_and_fill(endpoint: Endpoint) -> None:
    endpoint.ok("ff")
    assert endpoint.lit_in_frame() == set(range(256))
    endpoint.ok("x")
    assert endpoint.lit_in_frame() == set()
    endpoint.ok("ff")
    endpoint.ok("xx")
    assert endpoint.lit() == set()


def test_brightness_and_colour(endpoint: Endpoint) -> None:
    endpoint.ok("l.40")
    endpoint.ok("sb.255")
    assert endpoint.frame()[40] == (255, 255, 255)
    endpoint.ok("sc.255.128.0")
    assert endpoint.frame()[40] == (255, 128, 0)
    endpoint.ok("sb.128.255.10")
    assert endpoint.ok("sb") == ["sb.128.255.10"]
    assert endpoint.ok("sc") == ["sc.255.128.0"]
    assert endpoint.frame()[40] == (128, 128, 0)
    endpoint.ok("sc.0")
    assert endpoint.frame()[40] == (0, 0, 0)
    endpoint.ok("reset")
    assert endpoint.ok("sb") == ["sb.64.64.64"]
    assert endpoint.lit() == set()


@pytest.mark.parametrize("na_x100, distance_mm", [(25, 50), (50, 60), (80, 30)])
def test_brightfield_darkfield_follow_na_and_distance(endpoint: Endpoint, na_x100: int, distance_mm: int) -> None:
    assert endpoint.ok(f"na.{na_x100}") == [f"na.{na_x100}"]
    assert endpoint.ok(f"sad.{distance_mm}") == [f"sad.{distance_mm}"]
    inside = {i for i in range(256) if led_sin2(i, distance_mm) <= (na_x100 / 100) ** 2}
    endpoint.ok("bf")
    assert endpoint.lit_in_frame() == inside
    assert endpoint.lit() == inside
    endpoint.ok("df")
    assert endpoint.lit_in_frame() == set(range(256)) - inside


def test_annulus(endpoint: Endpoint) -> None:
    endpoint.ok("sad.50")
    endpoint.ok("an.20.40")
    expected = {i for i in range(256) if 0.2**2 <= led_sin2(i, 50) <= 0.4**2}
    assert expected and endpoint.lit() == expected


# ---- malformed input: ERROR, state untouched, still working ---------------------------------

MALFORMED = [
    b"nosuchcommand",
    b"l.256",  # index out of range
    b"l.99999999",
    b"l.-1",
    b"l.abc",
    b"l..3",
    b"l.",
    b"l",
    b"about.1",  # too many arguments
    b"sb.1.2",
    b"sb.1.2.3.4",
    b"sb.256",
    b"sc.1.2.3.4.5",
    b"na.101",
    b"sad.0",
    b"ac.2",
    b"trs.0.0",
    b"ssv.1",  # sequence full (length 0)
    b"tseq",  # nothing loaded
    b"sseq",  # nothing armed
    b"l" + b".1" * 80,  # line over the buffer
    b"x" * 500,
    b"\x00\xff\x80\x1b[A",  # binary garbage
    b"l.1\x002",
    b"." * 60,
]


@pytest.mark.parametrize("line", MALFORMED, ids=[repr(m[:20]) for m in MALFORMED])
@pytest.mark.slow  # many firmware round trips: the slow lane
def test_malformed_lines_answer_error_and_change_nothing(endpoint: Endpoint, line: bytes) -> None:
    endpoint.ok("l.7.9")
    before_frames = endpoint.frame()
    endpoint.connection.write_raw(line + b"\n")
    reply = endpoint.connection.read_until_quiet(0.25).decode("ascii").splitlines()
    assert len(reply) == 2 and reply[0].startswith("ERROR") and reply[1] == "-==-", reply
    assert endpoint.lit() == {7, 9}
    assert endpoint.frame() == before_frames
    assert endpoint.ok("ver") == ["1.0.0"]


def test_argument_limits(endpoint: Endpoint) -> None:
    # 59 indices in a 119-character line are fine; 70 arguments overflow the argument table
    assert endpoint.ok("l" + ".1" * 59) == []
    (reply,) = endpoint.tx("x" + "." * 70)
    assert reply == "ERROR: too many arguments"
    (reply,) = endpoint.tx("l" + ".1" * 60)  # 121 characters
    assert reply.startswith("ERROR: line too long")
    assert endpoint.lit() == {1}


# ---- triggers and sequences ----------------------------------------------------------------


def test_trigger_output_pulse(endpoint: Endpoint) -> None:
    pulses = endpoint.trigger_pulse_count()
    endpoint.ok("tr")
    assert endpoint.trigger_pulse_count() == pulses + 1
    endpoint.ok("l.3")  # no auto-trigger by default
    assert endpoint.trigger_pulse_count() == pulses + 1
    assert endpoint.ok("tra.1") == ["tra.1"]
    endpoint.ok("l.4")
    endpoint.ok("bf")
    assert endpoint.trigger_pulse_count() == pulses + 3
    endpoint.ok("x")  # clearing does not trigger the camera
    assert endpoint.trigger_pulse_count() == pulses + 3


def test_hardware_triggered_sequence(endpoint: Endpoint) -> None:
    endpoint.ok("ssl.3")
    endpoint.ok("ssv.10.20")
    endpoint.ok("ssv.30")
    assert endpoint.ok("pseq") == ["seq.3.10.20.30"]
    (reply,) = endpoint.tx("ssv.40")
    assert reply.startswith("ERROR")
    pulses = endpoint.trigger_pulse_count()
    endpoint.ok("tseq")
    assert endpoint.lit_in_frame() == {10}
    assert endpoint.ok("qseq") == ["seq.0.3.1"]
    for position, led in ((1, 20), (2, 30)):
        endpoint.trigger_in()
        assert wait_until(lambda p=position: endpoint.ok("qseq")[0].startswith(f"seq.{p}."))
        assert endpoint.lit_in_frame() == {led}
    endpoint.trigger_in()  # past the end: dark, disarmed
    assert wait_until(lambda: endpoint.ok("qseq") == ["seq.3.3.0"])
    assert endpoint.lit_in_frame() == set()
    # every step was announced with a trigger-output pulse once the LEDs were set
    assert endpoint.trigger_pulse_count() == pulses + 3
    # software stepping and stopping
    endpoint.ok("tseq")
    endpoint.ok("sseq")
    assert endpoint.lit() == {20}
    endpoint.ok("xseq")
    assert endpoint.lit() == set() and endpoint.ok("qseq")[0].endswith(".0")


def test_sequence_length_limit(endpoint: Endpoint) -> None:
    (text,) = endpoint.ok("pprops")
    limit = json.loads(text)["sequence_max"]
    assert endpoint.tx(f"ssl.{limit}") == []
    assert endpoint.tx(f"ssl.{limit + 1}")[0].startswith("ERROR")


def test_geometry_helper_matches_na_definition() -> None:
    # the LED at row 7, col 12 of the 16x16 array sits 4.5 and 0.5 pitches from the centre
    index = 7 * 16 + 12
    assert math.isclose(led_sin2(index, 50), (45**2 + 5**2) / (45**2 + 5**2 + 50**2))
