"""LedArray interface, orientation mapping and SimulatedLedArray (no toolchain needed)."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from uafp_gui.cli import main as uafp_main
from uafp_gui.devices.interfaces import LedArray, Orientation
from uafp_gui.errors import DeviceError, LedArrayCommandError, LedArrayDisconnected, LedArrayError, LedArrayTimeout
from uafp_gui.simulated.firmware import IlluminateFirmwareModel
from uafp_gui.simulated.led_array import SimulatedLedArray

ORIENTATIONS = [Orientation(*flags) for flags in itertools.product([False, True], repeat=3)]


@pytest.mark.parametrize("orientation", ORIENTATIONS, ids=str)
def test_orientation_round_trip_is_a_bijection(orientation: Orientation) -> None:
    array_shape = (3, 5)
    image_shape = orientation.image_shape(array_shape)
    images = set()
    for row, col in itertools.product(range(3), range(5)):
        image = orientation.to_image((row, col), array_shape)
        assert 0 <= image[0] < image_shape[0] and 0 <= image[1] < image_shape[1]
        assert orientation.to_array(image, array_shape) == (row, col)
        images.add(image)
    assert len(images) == 15


def test_orientation_examples() -> None:
    shape = (4, 6)
    assert Orientation(flip_rows=True).to_image((0, 1), shape) == (3, 1)
    assert Orientation(flip_cols=True).to_image((0, 1), shape) == (0, 4)
    assert Orientation(transpose=True).to_image((0, 1), shape) == (1, 0)
    assert Orientation(transpose=True).image_shape(shape) == (6, 4)
    # flip then transpose: a 90-degree rotation
    assert Orientation(flip_rows=True, transpose=True).to_image((0, 1), shape) == (1, 3)


def test_simulated_array_lights_in_image_axes() -> None:
    orientation = Orientation(flip_cols=True)
    with SimulatedLedArray(shape=(8, 10), pitch_mm=4.0, orientation=orientation) as leds:
        assert isinstance(leds, LedArray)
        assert leds.shape == (8, 10) and leds.pitch_mm == 4.0
        leds.light([(1, 2), (7, 9)])
        assert leds.lit == {(1, 2), (7, 9)}
        # wiring index = row * cols + col after flipping the columns
        assert leds.model.lit == {1 * 10 + 7, 7 * 10 + 0}
        assert leds.read_lit() == leds.lit
        leds.clear()
        assert leds.lit == frozenset() and leds.model.lit == set()


def test_default_simulated_array_and_long_patterns() -> None:
    leds = SimulatedLedArray()
    assert leds.shape == (32, 32)
    everything = [(r, c) for r in range(32) for c in range(32)]
    leds.light(everything)  # ~4000 characters: split over several `l.` lines
    assert len(leds.model.lit) == 1024 and leds.lit == set(everything)
    assert leds.model.auto_clear == 1  # restored after the chunked pattern
    leds.light([(0, 0)])
    assert leds.model.lit == {0}
    leds.close()


def test_brightness_colour_and_validation() -> None:
    leds = SimulatedLedArray(shape=(4, 4))
    leds.set_brightness(255)
    leds.set_color(10, 20, 30)
    leds.light([(0, 0)])
    assert leds.model.frame()[0] == (10, 20, 30)
    leds.set_brightness((255, 0, 255))
    assert leds.model.frame()[0] == (10, 0, 30)
    for bad in (256, -1, (1, 2), (1, 2, 300), 1.5):
        with pytest.raises(LedArrayError, match="brightness"):
            leds.set_brightness(bad)  # type: ignore[arg-type]
    with pytest.raises(LedArrayError, match="outside the 4x4 array"):
        leds.light([(4, 0)])
    with pytest.raises(LedArrayError, match="row, col"):
        leds.light([(1,)])  # type: ignore[list-item]
    assert leds.lit == {(0, 0)}  # a refused call changes nothing
    with pytest.raises(LedArrayCommandError, match="ERROR"):
        leds.connection.command("l.99")


def test_fail_after_then_timeout_is_a_device_error() -> None:
    leds = SimulatedLedArray(shape=(4, 4), timeout_s=0.1)
    leds.fail_after(2)
    leds.light([(0, 0)])
    leds.light([(0, 1)])
    start = time.monotonic()
    with pytest.raises(LedArrayTimeout, match="no complete reply") as raised:
        leds.light([(0, 2)])
    assert isinstance(raised.value, DeviceError)
    assert time.monotonic() - start > 0.09  # the timeout was waited out (a hang: pytest-timeout)
    assert leds.lit == {(0, 1)}
    leds.recover()
    leds.light([(0, 3)])
    assert leds.model.lit == {3}


def test_disconnect_and_reconnect_restores_settings() -> None:
    leds = SimulatedLedArray(shape=(4, 4))
    leds.set_brightness(100)
    leds.light([(1, 1)])
    leds.disconnect()
    with pytest.raises(LedArrayDisconnected, match="cable"):
        leds.light([(2, 2)])
    with pytest.raises(LedArrayDisconnected, match="cannot open"):
        leds.light([(2, 2)])
    leds.reconnect_cable()  # the board rebooted: brightness back to default in firmware
    leds.light([(2, 2)])
    assert leds.connection.reconnects == 1
    assert leds.model.brightness_rgb == [100, 100, 100]
    assert leds.model.lit == {10}


def test_sequence_api_on_simulator() -> None:
    leds = SimulatedLedArray(shape=(8, 8))
    steps = [(0, 0), (3, 4), (7, 7)]
    leds.load_sequence(steps)
    leds.arm_sequence()
    assert leds.model.lit == {0}
    leds.model.trigger_in()
    assert leds.sequence_status() == (1, 3, True) and leds.read_lit() == {(3, 4)}
    leds.step_sequence()
    assert leds.lit == {(7, 7)}
    leds.step_sequence()
    assert leds.sequence_status() == (3, 3, False) and leds.lit == frozenset()
    assert leds.model.trigger_out_pulses == 3


def test_model_survives_random_bytes() -> None:
    model = IlluminateFirmwareModel()
    rng = random.Random(7)
    reply = model.feed(bytes(rng.getrandbits(8) for _ in range(50_000)))
    assert b"ERROR" in reply
    model.feed(b"\n")
    assert model.feed(b"about\n").startswith(b"uafp-led 1.0.0")


def test_cli_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    assert uafp_main(["led", "--simulate", "about"]) == 0
    out = capsys.readouterr().out
    assert "uafp-led" in out and '"array_shape"' in out
    assert uafp_main(["led", "--simulate", "--shape", "16", "16", "light", "7", "7", "7", "8"]) == 0
    assert "(7,7) (7,8)" in capsys.readouterr().out
    assert uafp_main(["led", "--simulate", "light", "7"]) == 2
    assert "ROW COL pairs" in capsys.readouterr().err
    assert uafp_main(["led", "--simulate", "raw", "nosuch"]) == 0
    assert capsys.readouterr().out.startswith("ERROR")
