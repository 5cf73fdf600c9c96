"""Result folders and calibration.json: round trip, Fiji scale tags, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from uafp_gui.errors import DatasetError
from uafp_gui.io.calibration import Calibration, load_calibration, save_calibration
from uafp_gui.io.result import read_pixel_size_um, read_result, write_result
from uafp_gui.model import LedGeometry


def make_calibration(**changes) -> Calibration:
    fields = dict(
        led_geometry=LedGeometry(shift_x_mm=0.12, shift_y_mm=-0.35, rotation_deg=0.8, height_mm=90.5),
        zernike_rad={4: 0.25, 5: -0.05, 11: 0.01},
        frame_gain=(1.0, 0.98, 1.03),
        led_positions_mm=((0.0, 0.0), (4.0, 0.1), (4.1, 4.0)),
        object_pixel_um=0.46125,
        final_loss=1.5e-3,
        iterations=120,
        elapsed_s=12.5,
        source_dataset="run.tif",
        software="uafp_gui 0.1.0",
    )
    fields.update(changes)
    return Calibration(**fields)


def make_images(rng):
    amplitude = rng.random((40, 48)).astype(np.float32)
    phase = rng.uniform(-np.pi, np.pi, (40, 48)).astype(np.float32)
    pupil_amplitude = rng.random((16, 16))
    pupil_phase = rng.uniform(-1, 1, (16, 16))
    return amplitude, phase, pupil_amplitude, pupil_phase


def test_calibration_json_matches_spec(tmp_path):
    calibration = make_calibration(extra={"uncertainty": {"shift_x_mm": 0.01}})
    save_calibration(tmp_path / "calibration.json", calibration)
    data = json.loads((tmp_path / "calibration.json").read_text())
    assert data["format"] == "uafp-calibration" and data["version"] == 1
    assert data["led_geometry"] == {
        "shift_x_mm": 0.12, "shift_y_mm": -0.35, "rotation_deg": 0.8, "height_mm": 90.5
    }
    assert data["zernike_rad"] == {"4": 0.25, "5": -0.05, "11": 0.01}  # string keys in JSON
    assert data["led_positions_mm"][1] == [4.0, 0.1]
    assert data["uncertainty"] == {"shift_x_mm": 0.01}
    loaded = load_calibration(tmp_path / "calibration.json")
    assert loaded == calibration
    assert loaded.zernike_rad == {4: 0.25, 5: -0.05, 11: 0.01}
    assert load_calibration(tmp_path) == calibration  # a result folder names its calibration


def test_minimal_hand_written_calibration_is_an_input():
    calibration = Calibration.from_dict(
        {"format": "uafp-calibration", "version": 1, "led_geometry": {"height_mm": 88.0}}
    )
    assert calibration.led_geometry == LedGeometry(0.0, 0.0, 0.0, 88.0)
    assert calibration.zernike_rad == {} and calibration.frame_gain == ()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"format": "uafp-dataset"}, "expected 'uafp-calibration'"),
        ({"version": 3}, "calibration version 3 is not supported"),
        ({"led_geometry": {"shift_x_mm": 1.0}}, "led_geometry.height_mm is missing"),
        ({"led_geometry": {"height_mm": -1}}, "led_geometry.height_mm must be > 0"),
        ({"led_geometry": {"height_mm": 90, "tilt": 1}}, "led_geometry has unknown fields"),
        ({"zernike_rad": {"defocus": 0.1}}, "zernike_rad key 'defocus' is not a Noll index"),
        ({"zernike_rad": {"0": 0.1}}, "zernike_rad key '0' is not a Noll index"),
        ({"zernike_rad": {"4": "big"}}, "zernike_rad['4'] must be a number"),
        ({"frame_gain": [1.0, -1.0, 1.0]}, "frame_gain[1] must be > 0"),
        ({"frame_gain": [1.0, 1.0]}, "frame_gain has 2 entries but led_positions_mm has 3"),
        ({"led_positions_mm": [[0, 0], [1], [2, 2]]}, "led_positions_mm[1] must be [X, Y]"),
        ({"object_pixel_um": 0}, "object_pixel_um must be > 0"),
        ({"iterations": 2.5}, "iterations must be a whole number"),
    ],
)
def test_calibration_validation_names_the_field(tmp_path, changes, expected):
    data = make_calibration().to_dict()
    data.update(changes)
    (tmp_path / "calibration.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        load_calibration(tmp_path / "calibration.json")
    assert expected in str(info.value) and "calibration.json" in str(info.value)


def test_invalid_calibration_json(tmp_path):
    (tmp_path / "calibration.json").write_text('{"format": "uafp-calibration",}')
    with pytest.raises(DatasetError, match=r"calibration\.json is not valid JSON: .* line 1"):
        load_calibration(tmp_path / "calibration.json")
    with pytest.raises(DatasetError, match="calibration file not found"):
        load_calibration(tmp_path / "nope.json")


def test_result_round_trip(tmp_path, rng):
    amplitude, phase, pupil_amplitude, pupil_phase = make_images(rng)
    std = rng.random((40, 48))
    calibration = make_calibration()
    folder = write_result(
        tmp_path / "result", amplitude, phase, pupil_amplitude, pupil_phase, calibration,
        extra_images={"phase_std": std},
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "amplitude.tif", "calibration.json", "manifest.json", "phase.tif", "phase_std.tif", "pupil.tif"
    ]
    result = read_result(folder)
    assert result.calibration == calibration
    assert result.object_pixel_um == pytest.approx(0.46125)
    np.testing.assert_array_equal(result.amplitude, amplitude)
    np.testing.assert_array_equal(result.phase, phase)
    assert result.amplitude.dtype == np.float32 and result.pupil.dtype == np.float32
    assert result.pupil.shape == (2, 16, 16)
    np.testing.assert_allclose(result.pupil[1], pupil_phase, rtol=1e-6)
    np.testing.assert_allclose(result.extra_images["phase_std"], std, rtol=1e-6)
    np.testing.assert_allclose(
        result.object_field, amplitude * np.exp(1j * phase), rtol=1e-5, atol=1e-6
    )


def test_result_tiffs_carry_fiji_scale(tmp_path, rng):
    write_result(tmp_path, *make_images(rng), make_calibration())
    for name in ("amplitude.tif", "phase.tif"):
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.is_imagej
            assert tif.imagej_metadata["unit"] == "um"
            numerator, denominator = tif.pages.first.tags["XResolution"].value
            y_numerator, y_denominator = tif.pages.first.tags["YResolution"].value
            assert int(tif.pages.first.tags["ResolutionUnit"].value) == 3  # centimetre
            assert tif.pages.first.dtype == np.float32
        # Any TIFF reader: 1 / XResolution cm per pixel. ImageJ (FileOpener.decodeDescriptionString) turns
        # cm into um when the description's unit is "um": pixel width = 1e4 / XResolution um.
        assert 1e4 * denominator / numerator == pytest.approx(0.46125, rel=1e-6)
        assert 1e4 * y_denominator / y_numerator == pytest.approx(0.46125, rel=1e-6)
        assert read_pixel_size_um(tmp_path / name) == pytest.approx(0.46125, rel=1e-6)
    with tifffile.TiffFile(tmp_path / "pupil.tif") as tif:
        assert tif.series[0].shape == (2, 16, 16)
        assert tif.imagej_metadata["Labels"] == ["pupil amplitude", "pupil phase (rad)"]


def test_write_result_rejects_bad_input(tmp_path, rng):
    amplitude, phase, pupil_amplitude, pupil_phase = make_images(rng)
    with pytest.raises(DatasetError, match="object_pixel_um is not set"):
        write_result(tmp_path, amplitude, phase, pupil_amplitude, pupil_phase,
                     make_calibration(object_pixel_um=None))
    with pytest.raises(DatasetError, match="must be on the same grid"):
        write_result(tmp_path, amplitude, phase[:-1], pupil_amplitude, pupil_phase,
                     make_calibration())
    with pytest.raises(DatasetError, match="must be real"):
        write_result(tmp_path, amplitude * 1j, phase, pupil_amplitude, pupil_phase,
                     make_calibration())
    with pytest.raises(DatasetError, match="extra image name 'pupil' is not allowed"):
        write_result(tmp_path, amplitude, phase, pupil_amplitude, pupil_phase,
                     make_calibration(), extra_images={"pupil": amplitude})


def test_read_result_says_what_is_missing(tmp_path, rng):
    write_result(tmp_path / "r", *make_images(rng), make_calibration())
    (tmp_path / "r" / "phase.tif").unlink()
    with pytest.raises(DatasetError, match=r"incomplete: phase\.tif is missing"):
        read_result(tmp_path / "r")
    with pytest.raises(DatasetError, match="result folder not found"):
        read_result(tmp_path / "elsewhere")
