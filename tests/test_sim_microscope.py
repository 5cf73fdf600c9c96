"""The simulated FP microscope as Micro-Manager devices: camera physics and the LED device."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from uafp_gui.devices.micromanager import camera_bit_depth, camera_offset, load_config_core
from uafp_gui.devices.mm_led import format_pattern, parse_pattern
from uafp_gui.errors import ConfigError, DeviceError, LedArrayError
from uafp_gui.simulate import PRESETS
from uafp_gui.simulated.camera import FpRenderer
from uafp_gui.simulated.led_array import SimulatedLedArray
from uafp_gui.simulated.microscope import open_simulated_microscope, simulated_camera

SETTINGS = replace(PRESETS["misaligned"], frame_size=64, seed=3)


@pytest.fixture
def microscope():
    core, leds = open_simulated_microscope(SETTINGS, realtime=False)
    yield core, leds
    leds.close()


def snap(core, pattern: str, exposure_ms: float) -> np.ndarray:
    core.setProperty("LEDArray", "Pattern", pattern)
    core.setExposure(exposure_ms)
    core.snapImage()
    return core.getImage().astype(np.float64)


def test_pattern_text_round_trip():
    assert format_pattern([(3, 4), (15, 16)]) == "3,4;15,16"
    assert parse_pattern("3,4;15,16") == [(3, 4), (15, 16)]
    assert parse_pattern("") == []
    with pytest.raises(DeviceError, match="malformed"):
        parse_pattern("3;4")


def test_counts_scale_with_exposure_and_saturate_at_bit_depth(microscope):
    core, _ = microscope
    offset = SETTINGS.camera_offset
    full_scale = 2**SETTINGS.bit_depth - 1
    short = snap(core, "16,16", 2.0)
    longer = snap(core, "16,16", 4.0)
    assert short.dtype == np.float64 and short.shape == (64, 64)
    ratio = (longer.mean() - offset) / (short.mean() - offset)
    assert ratio == pytest.approx(2.0, rel=0.03)
    # normalised frames (counts - offset) / exposure agree: photons scale with the exposure
    assert (short.mean() - offset) / 2.0 == pytest.approx((longer.mean() - offset) / 4.0, rel=0.03)
    saturated = snap(core, "16,16", 200.0)
    assert saturated.max() == full_scale
    assert (saturated == full_scale).mean() > 0.9
    assert camera_bit_depth(core) == SETTINGS.bit_depth
    assert camera_offset(core) == offset


def test_dark_field_is_dim_and_all_off_is_the_offset(microscope):
    core, _ = microscope
    bright = snap(core, "16,16", 2.0)
    dark_field = snap(core, "16,21", 2.0)  # 20 mm off axis: illumination NA 0.22 > objective NA 0.1
    assert dark_field.mean() - SETTINGS.camera_offset < 0.1 * (bright.mean() - SETTINGS.camera_offset)
    off = snap(core, "", 2.0)
    assert off.mean() == pytest.approx(SETTINGS.camera_offset, abs=0.2)
    assert off.std() == pytest.approx(SETTINGS.read_noise_e, rel=0.2)


def test_two_leds_add_incoherently(microscope):
    core, _ = microscope
    renderer = simulated_camera(core).renderer
    a, b = renderer.single((16, 16)), renderer.single((16, 17))
    both = renderer.expected_counts_per_ms([(16, 16), (16, 17)])
    np.testing.assert_allclose(both, a + b, rtol=1e-6)


def test_led_changes_through_the_core_reach_the_led_array(microscope):
    core, leds = microscope
    core.setProperty("LEDArray", "Pattern", "3,4;10,12")
    assert leds.lit == frozenset({(3, 4), (10, 12)})
    assert leds.model.lit == {3 * 32 + 4, 10 * 32 + 12}  # the firmware model lit them
    assert core.getProperty("LEDArray", "Pattern") == "3,4;10,12"
    core.setProperty("LEDArray", "Pattern", "")
    assert leds.lit == frozenset() and not leds.model.lit
    assert core.getProperty("LEDArray", "Rows") == 32
    assert core.getProperty("LEDArray", "PitchMm") == pytest.approx(4.0)


def test_the_camera_sees_what_the_firmware_lights(microscope):
    core, leds = microscope
    leds.light([(16, 16)])  # behind the core's back: the camera watches the hardware
    bright = snap(core, "16,16", 2.0)
    assert bright.mean() > SETTINGS.camera_offset + 100


def test_led_array_disconnect_raises_through_the_core(microscope):
    core, leds = microscope
    leds.disconnect()
    with pytest.raises(LedArrayError, match="disconnected|cannot open"):
        core.setProperty("LEDArray", "Pattern", "16,16")


def test_hidden_brightness_is_seeded():
    one = FpRenderer(SETTINGS).led_brightness
    two = FpRenderer(SETTINGS).led_brightness
    np.testing.assert_array_equal(one, two)
    assert one.std() == pytest.approx(SETTINGS.led_brightness_spread, rel=0.25)


def test_led_array_shape_must_match_the_simulation():
    with pytest.raises(ConfigError, match="16x16"):
        open_simulated_microscope(SETTINGS, SimulatedLedArray((16, 16), 4.0), realtime=False)


def test_mm_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_core(tmp_path / "missing.cfg")
    config = tmp_path / "demo.cfg"
    config.write_text("Device,Camera,DemoCamera,DCam\nProperty,Core,Initialize,1\nProperty,Core,Camera,Camera\n")
    with pytest.raises(ConfigError, match="cannot load Micro-Manager configuration"):
        load_config_core(config)


def test_a_python_only_config_drives_the_camera():
    """A `#py` config line loads the simulated camera the way a C++ adapter line loads a real one."""
    from uafp_gui.devices.micromanager import open_core

    config = Path(__file__).resolve().parents[1] / "hardware" / "micro-manager" / "uafp_simulated.cfg"
    leds = SimulatedLedArray((32, 32), 4.0)
    core, _ = open_core(config, leds)
    camera = simulated_camera(core)
    assert camera is not None and camera.leds is leds
    camera.realtime = False
    core.setProperty("LEDArray", "Pattern", "16,16")
    core.snapImage()
    assert core.getImage().mean() > 500
