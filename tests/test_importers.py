"""Importers: the public blood-smear MAT file and folders of TIFF/PNG frames, and `uafp import`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from uafp_gui.cli import main
from uafp_gui.errors import DatasetError
from uafp_gui.io.dataset import read_dataset
from uafp_gui.io.importers import (
    import_folder,
    import_zheng_mat,
    natural_key,
    read_image,
    zheng_spiral_leds,
)

GEOMETRY = {
    "wavelength_um": 0.63,
    "objective_na": 0.1,
    "magnification": 4,
    "camera_pixel_um": 3.45,
    "led_pitch_mm": 4.0,
    "led_height_mm": 80.0,
    "led_array_shape": [8, 8],
    "led_on_axis": [3.5, 3.5],
    "bit_depth": 12,
    "exposure_ms": 20.0,
}


# ------------------------------------------------------------------------------- Zheng


def test_spiral_order_follows_the_readme():
    """right, down, left, left, up, up, right x3, down x3, left x4, ... (x = col, y = row)."""
    leds = zheng_spiral_leds(25)
    assert leds[:9] == (
        (19, 17), (19, 18), (20, 18), (20, 17), (20, 16), (19, 16), (18, 16), (18, 17), (18, 18)
    )
    assert leds[9:16] == ((18, 19), (19, 19), (20, 19), (21, 19), (21, 18), (21, 17), (21, 16))
    all_leds = zheng_spiral_leds(225)
    assert len(set(all_leds)) == 225  # every LED of the 15 x 15 square exactly once
    rows, cols = np.array(all_leds).T
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 26, 10, 24)
    steps = np.abs(np.diff(np.array(all_leds), axis=0)).sum(axis=1)
    assert (steps == 1).all()


def test_import_zheng(tmp_path, bloodsmear_mat):
    out = import_zheng_mat(bloodsmear_mat, tmp_path / "bloodsmear.tif")
    dataset = read_dataset(out)
    meta = dataset.meta
    assert dataset.complete and dataset.frames.shape == (225, 128, 128)
    assert dataset.frames.dtype == np.float32 and np.isfinite(dataset.frames).all()
    assert meta.wavelength_um == 0.532 and meta.objective_na == 0.1
    assert meta.sample_pixel_um == pytest.approx(1.845)
    assert meta.led_pitch_mm == 4.0 and meta.led_height_mm == 90.88
    assert meta.led_array_shape == (32, 32) and meta.led_on_axis == (19.0, 17.0)
    assert meta.glass.thickness_mm == 1.0 and meta.glass.refractive_index == 1.52
    assert meta.tile_center_um == (0.0, 0.0)  # the authors' 0.35 mm offset is not baked in
    assert "yint=0.35 mm" in meta.notes and "NOT applied" in meta.notes
    assert [f.leds[0] for f in meta.frames[:3]] == [(19, 17), (19, 18), (20, 18)]
    assert all(f.exposure_ms == 1.0 and len(f.leds) == 1 for f in meta.frames)

    import scipy.io

    raw = scipy.io.loadmat(bloodsmear_mat)["imlow_HDR"]
    np.testing.assert_array_equal(dataset.frames[7], raw[:, :, 7])

    # Bright field = LEDs inside the objective NA: sin(theta) < 0.1 with pitch 4 mm, height
    # 90.88 mm, about 2.28 pitches -> 21 LEDs. Those must be exactly the 21 brightest frames,
    # which checks the spiral order against the data itself.
    leds = np.array([f.leds[0] for f in meta.frames], dtype=float)
    radius_mm = np.hypot(*(leds - (19, 17)).T) * 4.0
    bright_field = radius_mm / np.hypot(radius_mm, 90.88) < 0.1
    assert bright_field.sum() == 21
    mean = dataset.frames.mean(axis=(1, 2))
    brightest = np.argsort(mean)[::-1][:21]
    assert set(brightest) == set(np.flatnonzero(bright_field))
    assert mean[bright_field].min() > 4 * mean[~bright_field].max()


def test_import_zheng_rejects_other_files(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "other.mat", {"images": np.zeros((4, 4, 2))})
    with pytest.raises(DatasetError, match="has no variable imlow_HDR .*'images'"):
        import_zheng_mat(tmp_path / "other.mat", tmp_path / "out.tif")
    (tmp_path / "text.mat").write_text("hello")
    with pytest.raises(DatasetError, match="cannot read .*text.mat as a MATLAB"):
        import_zheng_mat(tmp_path / "text.mat", tmp_path / "out.tif")


def test_cli_import_zheng(tmp_path, bloodsmear_mat, capsys):
    out = tmp_path / "bs.tif"
    assert main(["import", "zheng", str(bloodsmear_mat), str(out)]) == 0
    assert "225 frames 128x128 float32" in capsys.readouterr().out
    assert main(["import", "zheng", str(bloodsmear_mat), str(out)]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert main(["import", "zheng", str(bloodsmear_mat), str(out), "--overwrite"]) == 0


# ------------------------------------------------------------------------------ folder


def _frames(count, dtype=np.uint16, shape=(9, 11)):
    rng = np.random.default_rng(3)
    high = 60000 if dtype == np.uint16 else 250
    return rng.integers(0, high, size=(count, *shape)).astype(dtype)


def _write_folder(tmp_path, frames, suffix=".png", names=None):
    folder = tmp_path / "frames"
    folder.mkdir()
    names = names or [f"img{k}{suffix}" for k in range(len(frames))]
    for name, frame in zip(names, frames, strict=True):
        if name.endswith(".png"):
            Image.fromarray(frame).save(folder / name)
        else:
            tifffile.imwrite(folder / name, frame)
    (tmp_path / "geometry.json").write_text(json.dumps(GEOMETRY))
    return folder


def _write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_png_16_bit_stays_16_bit(tmp_path):
    frame = np.array([[0, 300], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(frame).save(tmp_path / "f.png")
    image = read_image(tmp_path / "f.png")
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, frame)


def test_import_folder_png_natural_order(tmp_path):
    frames = _frames(12)
    folder = _write_folder(tmp_path, frames)  # img0..img11: natural order, not img1, img10, ...
    csv = _write_csv(tmp_path / "leds.csv", ["row,col"] + [f"{k // 8},{k % 8}" for k in range(12)])
    out = import_folder(folder, csv, tmp_path / "geometry.json", tmp_path / "run.tif")
    dataset = read_dataset(out)
    assert dataset.frames.dtype == np.uint16
    np.testing.assert_array_equal(dataset.frames, frames)
    assert [f.leds for f in dataset.meta.frames[9:11]] == [((1, 1),), ((1, 2),)]
    assert all(f.exposure_ms == 20.0 for f in dataset.meta.frames)  # geometry default
    assert dataset.meta.bit_depth == 12 and dataset.meta.led_on_axis == (3.5, 3.5)


def test_import_folder_tiff_with_file_column_and_multiplexing(tmp_path):
    frames = _frames(3, dtype=np.uint16)
    folder = _write_folder(tmp_path, frames, names=["c.tif", "a.tif", "b.tiff"])
    csv = _write_csv(
        tmp_path / "leds.csv",
        [
            "file, row, col, exposure_ms, intensity",
            "b.tiff, 3, 3, 10, 1",
            "a.tif, 0, 0, 5, 0.5",
            "",
            "a.tif, 0, 1, 5, 0.5",
            "c.tif, 7, 7, 40, 1",
        ],
    )
    out = import_folder(folder, csv, tmp_path / "geometry.json", tmp_path / "run.tif")
    dataset = read_dataset(out)
    np.testing.assert_array_equal(dataset.frames, frames[[2, 1, 0]])
    specs = dataset.meta.frames
    assert [f.leds for f in specs] == [((3, 3),), ((0, 0), (0, 1)), ((7, 7),)]
    assert [(f.exposure_ms, f.intensity) for f in specs] == [(10, 1), (5, 0.5), (40, 1)]


def test_import_folder_8_bit_becomes_uint16(tmp_path):
    frames = _frames(2, dtype=np.uint8)
    folder = _write_folder(tmp_path, frames)
    csv = _write_csv(tmp_path / "leds.csv", ["row,col", "3,3", "3,4"])
    dataset = read_dataset(import_folder(folder, csv, tmp_path / "geometry.json", tmp_path / "o.tif"))
    assert dataset.frames.dtype == np.uint16
    np.testing.assert_array_equal(dataset.frames, frames)


def test_import_folder_yaml_geometry(tmp_path):
    pytest.importorskip("yaml")
    folder = _write_folder(tmp_path, _frames(1))
    geometry = tmp_path / "geometry.yaml"
    geometry.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in GEOMETRY.items()))
    csv = _write_csv(tmp_path / "leds.csv", ["row,col", "3,3"])
    dataset = read_dataset(import_folder(folder, csv, geometry, tmp_path / "o.tif"))
    assert dataset.meta.wavelength_um == 0.63


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["r,c", "3,3", "3,4"], "needs a header line with columns row,col"),
        (["row,col,gain", "3,3,1", "3,4,1"], r"unknown column\(s\) \['gain'\]"),
        (["row,col", "3,3"], "holds 2 TIFF/PNG images but leds.csv lists 1 frames"),
        (["row,col", "3,3", "3,x"], "line 3: col must be an integer"),
        (["row,col", "3,3", "3,9"], r"frames\[1\]\.leds\[0\] = \[3, 9\] is outside the 8x8"),
        (["file,row,col", "img0.png,3,3", "img7.png,3,4"], "line 3: image img7.png not found"),
        (["row", "3", "4"], "needs a header line with columns row,col"),
    ],
)
def test_import_folder_errors(tmp_path, lines, expected):
    folder = _write_folder(tmp_path, _frames(2))
    csv = _write_csv(tmp_path / "leds.csv", lines)
    with pytest.raises(DatasetError, match=expected):
        import_folder(folder, csv, tmp_path / "geometry.json", tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists()


def test_import_folder_geometry_errors(tmp_path):
    folder = _write_folder(tmp_path, _frames(1))
    csv = _write_csv(tmp_path / "leds.csv", ["row,col", "3,3"])
    bad = dict(GEOMETRY, wavelength_um=-1)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="wavelength_um must be > 0"):
        import_folder(folder, csv, tmp_path / "bad.json", tmp_path / "o.tif")
    no_exposure = {k: v for k, v in GEOMETRY.items() if k != "exposure_ms"}
    (tmp_path / "noexp.json").write_text(json.dumps(no_exposure))
    with pytest.raises(DatasetError, match="line 2: no exposure_ms"):
        import_folder(folder, csv, tmp_path / "noexp.json", tmp_path / "o.tif")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DatasetError, match="broken.json is not valid JSON"):
        import_folder(folder, csv, tmp_path / "broken.json", tmp_path / "o.tif")
    with pytest.raises(DatasetError, match="geometry file not found"):
        import_folder(folder, csv, tmp_path / "missing.json", tmp_path / "o.tif")


def test_import_folder_rejects_rgb_and_mixed_sizes(tmp_path):
    folder = _write_folder(tmp_path, _frames(2))
    Image.new("RGB", (11, 9)).save(folder / "img1.png")
    csv = _write_csv(tmp_path / "leds.csv", ["row,col", "3,3", "3,4"])
    with pytest.raises(DatasetError, match="RGB PNG: frames must be grey-level"):
        import_folder(folder, csv, tmp_path / "geometry.json", tmp_path / "o.tif")
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(folder / "img1.png")
    with pytest.raises(DatasetError, match="all frames must be the same size"):
        import_folder(folder, csv, tmp_path / "geometry.json", tmp_path / "o.tif")


def test_cli_import_folder(tmp_path, capsys):
    folder = _write_folder(tmp_path, _frames(2), suffix=".tif")
    csv = _write_csv(tmp_path / "leds.csv", ["row,col", "3,3", "3,4"])
    out = tmp_path / "run.tif"
    argv = ["import", "folder", str(folder), "--leds", str(csv),
            "--geometry", str(tmp_path / "geometry.json"), str(out)]
    assert main(argv) == 0
    assert "2 frames 9x11 uint16" in capsys.readouterr().out
    assert read_dataset(out).meta.led_height_mm == 80.0
    _write_csv(csv, ["row,col", "3,3"])
    assert main([*argv, "--overwrite"]) == 2
    assert "lists 1 frames" in capsys.readouterr().err


def test_cli_import_help_explains(capsys):
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    text = capsys.readouterr().out
    assert "uafp import zheng MAT OUT.tif" in text and "--leds leds.csv" in text
    assert "row,col" in text
    assert main(["import"]) == 1


def test_natural_key():
    names = ["img10.png", "img2.png", "IMG1.png"]
    assert sorted(names, key=natural_key) == ["IMG1.png", "img2.png", "img10.png"]
