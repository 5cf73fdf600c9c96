"""The napari reader is plain Python (no napari, no Qt): uafp datasets and result folders as layer data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from uafp_gui.io.calibration import Calibration
from uafp_gui.io.napari_reader import get_reader
from uafp_gui.io.result import write_result
from uafp_gui.io.schema import DatasetMeta, FrameSpec
from uafp_gui.io.writer import write_dataset
from uafp_gui.model import LedGeometry, Optics

MANIFEST = Path(__file__).resolve().parents[1] / "uafp_gui" / "napari.yaml"


def small_dataset(path: Path) -> Path:
    meta = DatasetMeta(
        optics=Optics(
            wavelength_um=0.53,
            objective_na=0.1,
            magnification=4.0,
            camera_pixel_um=3.2,
            led_pitch_mm=4.0,
            led_height_mm=80.0,
            led_array_shape=(5, 5),
            led_on_axis=(2, 2),
        ),
        frames=tuple(FrameSpec(leds=((2, c),), exposure_ms=5.0 + c) for c in range(3)),
    )
    frames = np.arange(3 * 8 * 10, dtype=np.uint16).reshape(3, 8, 10)
    return write_dataset(path, meta, frames)


def small_result(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    calibration = Calibration(led_geometry=LedGeometry(height_mm=80.0), object_pixel_um=0.2)
    return write_result(
        folder, rng.random((32, 40)), rng.uniform(-1, 1, (32, 40)), np.ones((8, 8)), np.zeros((8, 8)), calibration
    )


def test_dataset_opens_as_a_scaled_stack_with_led_metadata(tmp_path):
    path = small_dataset(tmp_path / "run.tif")
    reader = get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image" and data.shape == (3, 8, 10) and data.dtype == np.uint16
    assert kwargs["scale"] == (1.0, 0.8, 0.8)  # 3.2 um camera pixel / 4x
    assert kwargs["units"][1:] == ("micrometer", "micrometer")
    assert kwargs["metadata"]["uafp_leds"] == ["2,0", "2,1", "2,2"]
    assert kwargs["metadata"]["uafp_exposure_ms"] == [5.0, 6.0, 7.0]
    assert kwargs["metadata"]["uafp_dataset"]["format"] == "uafp-dataset"


def test_result_folder_opens_as_amplitude_phase_and_pupil_layers(tmp_path):
    folder = small_result(tmp_path / "r")
    layers = get_reader(str(folder))(str(folder))
    names = [kwargs["name"] for _, kwargs, _ in layers]
    assert names == ["r amplitude", "r phase (rad)", "r pupil amplitude", "r pupil phase (rad)"]
    amplitude, phase, pupil_amplitude, _ = layers
    assert amplitude[1]["scale"] == (0.2, 0.2) and phase[1]["scale"] == (0.2, 0.2)
    assert phase[1]["colormap"] == "twilight_shifted" and phase[1]["contrast_limits"] == (-math.pi, math.pi)
    step = 1 / (32 * 0.2)  # spectrum grid of the frames: 1 / (object height * object pixel) cycles/um
    assert pupil_amplitude[1]["scale"] == pytest.approx((step, step))
    assert pupil_amplitude[1]["translate"] == pytest.approx((-4 * step, -4 * step))
    assert amplitude[1]["metadata"]["uafp_calibration"]["object_pixel_um"] == 0.2


def test_other_files_are_left_to_other_readers(tmp_path):
    import tifffile

    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), np.uint8))
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    for path in (plain, tmp_path / "folder", tmp_path / "notes.txt", tmp_path / "missing.tif"):
        assert get_reader(str(path)) is None


def test_manifest_names_the_reader_and_the_widget():
    manifest = yaml.safe_load(MANIFEST.read_text())
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    assert commands["uafp_gui.get_reader"] == "uafp_gui.io.napari_reader:get_reader"
    assert commands["uafp_gui.reconstruct_widget"] == "uafp_gui.gui.napari_widget:ReconstructWidget"
    assert manifest["contributions"]["readers"][0]["accepts_directories"] is True
    npe2 = pytest.importorskip("npe2")
    npe2.PluginManifest.from_file(MANIFEST)  # validates against npe2's schema
