"""The domain model (uafp_gui.model) and the one pixel-type policy (uafp_gui.io.pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from uafp_gui.acquisition.plan import MicroscopeDescription
from uafp_gui.errors import ConfigError, DatasetError
from uafp_gui.io._importcheck import frame_stack
from uafp_gui.io.dataset import read_dataset
from uafp_gui.io.pixels import FLOAT32, UINT16, stored_dtype, stored_pixels
from uafp_gui.io.schema import DatasetMeta, FrameSpec
from uafp_gui.io.writer import write_dataset
from uafp_gui.model import OPTICS_FIELDS, LedGeometry, Optics, led_positions_mm
from uafp_gui.simulate import PRESETS

OPTICS = Optics(wavelength_um=0.52, objective_na=0.12, magnification=4.0, camera_pixel_um=3.45,
                led_pitch_mm=5.0, led_height_mm=80.0, led_array_shape=(16, 20), led_on_axis=(7.5, 9.0))


def test_optics_is_validated_and_round_trips_as_the_flat_spec_fields():
    assert Optics.from_dict(OPTICS.to_dict()) == OPTICS
    assert set(OPTICS.to_dict()) == set(OPTICS_FIELDS)
    with pytest.raises(DatasetError, match="objective_na must be in"):
        OPTICS.replace(objective_na=1.2)
    with pytest.raises(DatasetError, match="led_array_shape"):
        OPTICS.replace(led_array_shape=(0, 4))
    assert OPTICS.sample_pixel_um == pytest.approx(3.45 / 4.0)
    assert OPTICS.center_led == (8, 9)


def test_the_three_holders_contain_one_optics_and_replace_it_by_field_name():
    meta = DatasetMeta(optics=OPTICS, frames=(FrameSpec(leds=((8, 9),), exposure_ms=1.0),))
    microscope = MicroscopeDescription(optics=OPTICS)
    simulation = PRESETS["ideal"].replace(**OPTICS.to_dict())
    for holder in (meta, microscope, simulation):
        assert holder.optics == OPTICS and holder.led_pitch_mm == 5.0 and holder.led_on_axis == (7.5, 9.0)
        changed = holder.replace(led_height_mm=70.0)
        assert changed.optics == OPTICS.replace(led_height_mm=70.0) and type(changed) is type(holder)
    assert MicroscopeDescription.from_simulation(simulation).optics == OPTICS
    # the files stay flat: every optics field a top-level key, as docs/dataset_format.md says
    assert set(OPTICS_FIELDS) <= set(meta.to_dict()) and set(OPTICS_FIELDS) <= set(microscope.to_dict())
    assert MicroscopeDescription.from_dict(microscope.to_dict()) == microscope
    with pytest.raises(ConfigError, match="objective_na"):
        MicroscopeDescription.from_dict({**microscope.to_dict(), "objective_na": 2.0})
    with pytest.raises(ConfigError, match="glass"):
        bad_glass = {"thickness_mm": -1, "refractive_index": 1.5}
        MicroscopeDescription.from_dict({**microscope.to_dict(), "glass": bad_glass})


def test_led_positions_are_one_function_for_numpy_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    leds = rng.integers(0, 16, size=(12, 2)).astype(np.float64)
    geometry = LedGeometry(shift_x_mm=0.7, shift_y_mm=-1.1, rotation_deg=3.0, height_mm=80.0)
    placed = {"shift_x_mm": geometry.shift_x_mm, "shift_y_mm": geometry.shift_y_mm,
              "rotation_deg": geometry.rotation_deg}
    numpy_positions = led_positions_mm(leds, OPTICS.led_on_axis, OPTICS.led_pitch_mm, **placed)
    torch_positions = led_positions_mm(torch.as_tensor(leds), OPTICS.led_on_axis, OPTICS.led_pitch_mm,
                                       **{k: torch.tensor(v, dtype=torch.float64) for k, v in placed.items()})
    np.testing.assert_allclose(torch_positions.numpy(), numpy_positions, rtol=0, atol=1e-12)
    # a batch of candidate geometries broadcasts: (B, 1) parameters, (1, L, 2) LEDs -> (B, L, 2)
    shifts = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    batch = led_positions_mm(torch.as_tensor(leds)[None], OPTICS.led_on_axis, OPTICS.led_pitch_mm, shift_x_mm=shifts)
    assert batch.shape == (2, 12, 2)
    np.testing.assert_allclose((batch[1] - batch[0]).numpy(), np.tile([1.0, 0.0], (12, 1)), atol=1e-12)
    nominal = led_positions_mm([(7.5, 10.0)], OPTICS.led_on_axis, OPTICS.led_pitch_mm)  # a list of pairs
    np.testing.assert_allclose(nominal, [[5.0, 0.0]])


@pytest.mark.parametrize(
    "frame, expected",
    [
        (np.full((4, 5), 200, np.uint8), UINT16),
        (np.full((4, 5), 4000, np.uint16), UINT16),
        (np.full((4, 5), 65535, np.int32), UINT16),
        (np.full((4, 5), 70000, np.int64), FLOAT32),  # beyond 16 bit: float32, never clipped
        (np.full((4, 5), 0.5, np.float64), FLOAT32),
    ],
)
def test_reader_writer_and_importers_store_pixels_alike(tmp_path, frame, expected):
    """One pixel-type policy: what the writer stores, the reader returns and an importer makes agree."""
    assert stored_dtype(frame.dtype, frame.min(), frame.max()) == expected
    assert stored_pixels(frame, "frame").dtype == expected
    assert frame_stack(frame[None], "frames", "test").dtype == expected
    meta = DatasetMeta(optics=OPTICS, frames=(FrameSpec(leds=((8, 9),), exposure_ms=1.0),))
    dataset = read_dataset(write_dataset(tmp_path / "run.tif", meta, frame[None]))
    assert dataset.frames.dtype == expected
    np.testing.assert_array_equal(dataset.frames[0], frame.astype(expected))


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.full((4, 5), 1 + 1j), "complex"),
        (np.ones((4, 5), bool), "boolean"),
        (np.full((4, 5), -3, np.int16), "negative counts"),
        (np.array([[np.nan, 1.0]]), "NaN/inf"),
    ],
)
def test_the_pixel_policy_refuses_what_is_not_an_intensity(frame, message):
    with pytest.raises(DatasetError, match=message):
        stored_pixels(frame, "frame 0")
