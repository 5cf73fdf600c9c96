"""`uafp export`: OME-Zarr (multiscale), OME-TIFF (pyramid) and ImageJ, read back by reference readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from uafp_gui.cli import main
from uafp_gui.io.calibration import Calibration
from uafp_gui.io.ome import export_result, pyramid
from uafp_gui.io.result import write_result
from uafp_gui.model import LedGeometry

PIXEL_UM = 0.4625


@pytest.fixture
def result_folder(tmp_path):
    rng = np.random.default_rng(3)
    amplitude = (0.5 + rng.random((200, 264))).astype(np.float32)
    phase = rng.uniform(-np.pi, np.pi, (200, 264)).astype(np.float32)
    calibration = Calibration(
        led_geometry=LedGeometry(0.1, -0.2, 0.5, 88.0), zernike_rad={4: 0.3}, object_pixel_um=PIXEL_UM
    )
    folder = tmp_path / "r_run"
    write_result(folder, amplitude, phase, np.ones((16, 16)), np.zeros((16, 16)), calibration)
    return folder, amplitude, phase


def test_pyramid_halves_by_block_means():
    image = np.arange(2 * 9 * 8, dtype=np.float32).reshape(2, 9, 8)
    levels = pyramid(image, min_size=2)
    assert [level.shape for level in levels] == [(2, 9, 8), (2, 4, 4), (2, 2, 2)]
    assert levels[1][0, 0, 0] == pytest.approx(image[0, :2, :2].mean())


@pytest.mark.slow  # a pyramidal OME-TIFF written and read back: the slow lane
def test_ome_tiff_read_back_by_tifffile_and_ome_types(result_folder, capsys):
    folder, amplitude, phase = result_folder
    assert main(["export", str(folder), "--format", "ome-tiff"]) == 0
    out = folder.with_name("r_run.ome.tif")
    assert f"wrote {out}" in capsys.readouterr().out
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX"
        assert [level.shape for level in series.levels] == [(2, 200, 264), (2, 100, 132)]
        np.testing.assert_array_equal(series.levels[0].asarray(), np.stack([amplitude, phase]))
        level1 = series.levels[1].asarray()
        np.testing.assert_allclose(level1[0, 0, 0], amplitude[:2, :2].mean(), rtol=1e-6)
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert pixels["PhysicalSizeX"] == pytest.approx(PIXEL_UM)
        assert pixels["PhysicalSizeY"] == pytest.approx(PIXEL_UM)
        assert pixels["PhysicalSizeXUnit"] == "\u00b5m"
        # the sub-resolution level carries its own (coarser) resolution tag
        sub = tif.pages[0].pages[0]
        numerator, denominator = sub.tags["XResolution"].value
        assert 1e4 * denominator / numerator == pytest.approx(2 * PIXEL_UM)
    ome_types = pytest.importorskip("ome_types")
    ome = ome_types.from_tiff(out)
    image_pixels = ome.images[0].pixels
    assert image_pixels.physical_size_x == pytest.approx(PIXEL_UM)
    assert image_pixels.physical_size_x_unit.value == "\u00b5m"
    assert [channel.name for channel in image_pixels.channels] == ["amplitude", "phase"]
    assert json.loads(ome.images[0].description)["calibration"]["zernike_rad"] == {"4": 0.3}


def test_ome_zarr_read_back_by_zarr_and_validated(result_folder, tmp_path):
    zarr = pytest.importorskip("zarr")
    folder, amplitude, phase = result_folder
    out = tmp_path / "exported.ome.zarr"
    assert main(["export", str(folder), "--format", "ome-zarr", "--out", str(out)]) == 0
    group = zarr.open_group(out, mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    multiscale = ome["multiscales"][0]
    assert [axis["name"] for axis in multiscale["axes"]] == ["c", "y", "x"]
    assert multiscale["axes"][2]["unit"] == "micrometer"
    shapes = [group[d["path"]].shape for d in multiscale["datasets"]]
    assert shapes == [(2, 200, 264), (2, 100, 132)]
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales[0] == pytest.approx([1.0, PIXEL_UM, PIXEL_UM])
    assert scales[1] == pytest.approx([1.0, 2 * PIXEL_UM, 2 * PIXEL_UM])
    np.testing.assert_array_equal(group["0"][:], np.stack([amplitude, phase]))
    assert [c["label"] for c in ome["omero"]["channels"]] == ["amplitude", "phase"]
    assert group.attrs["uafp"]["calibration"]["led_geometry"]["height_mm"] == 88.0
    yaozarrs = pytest.importorskip("yaozarrs")
    yaozarrs.validate_zarr_store(str(out))  # raises on any NGFF violation


def test_imagej_hyperstack_keeps_the_scale(result_folder):
    folder, amplitude, phase = result_folder
    out = export_result(folder, "imagej")
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.imagej_metadata["channels"] == 2
        assert tif.imagej_metadata["unit"] == "um"
        numerator, denominator = tif.pages[0].tags["XResolution"].value
        assert denominator / numerator == pytest.approx(PIXEL_UM, rel=1e-6)
        np.testing.assert_array_equal(tif.asarray(), np.stack([amplitude, phase]))


def test_export_refuses_to_overwrite_and_names_bad_input(result_folder, tmp_path, capsys):
    folder, _, _ = result_folder
    assert main(["export", str(folder), "--format", "ome-tiff"]) == 0
    assert main(["export", str(folder), "--format", "ome-tiff"]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(folder), "--format", "ome-tiff", "--overwrite"]) == 0
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "result folder not found" in capsys.readouterr().err
