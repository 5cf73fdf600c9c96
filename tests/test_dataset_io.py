"""Raw dataset files: metadata validation, round trips, sidecars, corrupt inputs, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from uafp_gui.errors import DatasetError
from uafp_gui.io import writer as writer_module
from uafp_gui.io.dataset import Dataset, PartialDatasetWarning, read_dataset, read_dataset_meta
from uafp_gui.io.schema import DatasetMeta, FrameSpec
from uafp_gui.io.writer import DatasetWriter, write_dataset
from uafp_gui.model import Glass, Optics

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_meta(frame_count: int = 6, **changes) -> DatasetMeta:
    frames = tuple(
        FrameSpec(leds=((15 + k % 3, 16 + k // 3),), exposure_ms=1.0 + k, intensity=1.0)
        for k in range(frame_count)
    )
    fields = dict(
        wavelength_um=0.532,
        objective_na=0.1,
        magnification=4.0,
        camera_pixel_um=3.45,
        led_pitch_mm=4.0,
        led_height_mm=90.0,
        led_array_shape=(32, 32),
        led_on_axis=(15.5, 16.0),
        frames=frames,
        glass=Glass(1.0, 1.52),
        bit_depth=12,
        sample="test target",
    )
    fields.update(changes)
    optics, rest = Optics.split(fields)
    return DatasetMeta(optics=Optics(**optics), **rest)


def make_frames(frame_count: int = 6, shape=(12, 10), dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 4096, size=(frame_count, *shape))
    return frames.astype(dtype)


def valid_dict(**changes) -> dict:
    data = make_meta(3).to_dict()
    data.update(changes)
    return data


# ----------------------------------------------------------------------------- metadata


def test_meta_dict_round_trip_keeps_unknown_fields():
    data = valid_dict(operator="ada", stage={"x_um": 12.5})
    data["frames"][1]["timestamp_s"] = 0.25
    meta = DatasetMeta.from_dict(data)
    assert meta.extra == {"operator": "ada", "stage": {"x_um": 12.5}}
    assert meta.frames[1].extra == {"timestamp_s": 0.25}
    assert meta.to_dict() == data
    assert DatasetMeta.from_dict(json.loads(meta.to_json())) == meta
    assert meta.sample_pixel_um == pytest.approx(3.45 / 4.0)


def test_meta_accepts_integral_floats_and_normalises_types():
    data = valid_dict(led_array_shape=[32.0, 32], led_on_axis=[15.5, 16])
    data["frames"][0]["leds"] = [[15.0, 16.0], [3, 4]]
    meta = DatasetMeta.from_dict(data)
    assert meta.led_array_shape == (32, 32)
    assert meta.frames[0].leds == ((15, 16), (3, 4))
    assert all(isinstance(v, int) for v in meta.frames[0].leds[0])


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"wavelength_um": -0.5}, "wavelength_um must be > 0 (got -0.5)"),
        ({"wavelength_um": "0.5"}, "wavelength_um must be a number"),
        ({"objective_na": 1.2}, "objective_na must be in (0, 1)"),
        ({"magnification": 0}, "magnification must be > 0"),
        ({"led_array_shape": [32]}, "led_array_shape must have 2 entries"),
        ({"frames": []}, "frames is empty"),
        ({"frames": [{"leds": [[40, 1]], "exposure_ms": 1}]}, "frames[0].leds[0] = [40, 1]"),
        ({"frames": [{"leds": [[1, 1]], "exposure_ms": 0}]}, "frames[0].exposure_ms must be > 0"),
        ({"frames": [{"leds": [[1, 1]]}]}, "frames[0].exposure_ms is missing"),
        ({"frames": [{"leds": [[1.5, 1]], "exposure_ms": 1}]}, "must be an integer"),
        ({"frames": [{"leds": [], "exposure_ms": 1}]}, "frames[0].leds is empty"),
        ({"format": "something-else"}, "expected 'uafp-dataset'"),
        ({"version": 2}, "version 2 is newer"),
        ({"version": "1"}, "version must be the integer 1"),
        ({"glass": {"thickness_mm": 1}}, "glass.refractive_index is missing"),
        ({"camera_offset": -3}, "camera_offset must be >= 0"),
        ({"bit_depth": 64}, "bit_depth must be between 1 and 32"),
        ({"notes": 5}, "notes must be a string"),
    ],
)
def test_meta_validation_names_the_field(changes, expected):
    with pytest.raises(DatasetError) as info:
        DatasetMeta.from_dict(valid_dict(**changes))
    assert expected in str(info.value)


def test_meta_missing_required_field():
    data = valid_dict()
    del data["led_pitch_mm"]
    with pytest.raises(DatasetError, match="led_pitch_mm is missing: give the nominal LED"):
        DatasetMeta.from_dict(data)


def test_wavelength_message_says_what_to_do():
    with pytest.raises(DatasetError) as info:
        make_meta(wavelength_um=-0.5)
    assert str(info.value) == (
        "wavelength_um must be > 0 (got -0.5): give the illumination wavelength in "
        "micrometres, e.g. 0.532"
    )


def test_meta_helpers():
    meta = make_meta(4)
    assert meta.replace(wavelength_um=0.63).wavelength_um == 0.63
    assert len(meta.with_frames(meta.frames[:2]).frames) == 2
    stamped = meta.stamped()
    assert stamped.software.startswith("uafp_gui") and stamped.created
    np.testing.assert_allclose(meta.exposure_scale, [1, 2, 3, 4])
    with pytest.raises(DatasetError, match="extra must not contain spec fields"):
        make_meta(extra={"wavelength_um": 1})


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [(np.uint16, np.uint16), (np.uint8, np.uint16), (np.float32, np.float32),
     (np.float64, np.float32)],
)
def test_write_read_round_trip(tmp_path, dtype, stored):
    meta = make_meta(5)
    frames = make_frames(5, dtype=dtype) / (1 if np.dtype(dtype).kind in "ui" else 7)
    frames = frames.astype(dtype)
    path = write_dataset(tmp_path / "run.tif", meta, frames)
    dataset = read_dataset(path)
    assert dataset.complete and dataset.meta == meta
    assert dataset.frames.dtype == stored and dataset.frames.shape == (5, 12, 10)
    np.testing.assert_array_equal(dataset.frames, frames.astype(stored))
    assert read_dataset_meta(path) == meta


def test_uint16_full_range_preserved(tmp_path):
    frames = np.array([[[0, 1], [65534, 65535]]] * 3, dtype=np.uint16)
    write_dataset(tmp_path / "run.tif", make_meta(3), frames)
    dataset = read_dataset(tmp_path / "run.tif")
    assert dataset.frames.dtype == np.uint16
    np.testing.assert_array_equal(dataset.frames, frames)


def test_file_is_a_plain_stack_for_other_readers(tmp_path):
    """What napari/Fiji see: one (N, H, W) series, no ImageJ/OME/shaped interpretation."""
    meta = make_meta(4, extra={"shape": [1, 2]})  # a "shape" key must not confuse tifffile
    frames = make_frames(4)
    write_dataset(tmp_path / "run.tif", meta, frames)
    with tifffile.TiffFile(tmp_path / "run.tif") as tif:
        assert len(tif.pages) == 4
        assert not (tif.is_imagej or tif.is_ome or tif.is_shaped)
        assert tif.series[0].shape == (4, 12, 10)
        np.testing.assert_array_equal(tif.series[0].asarray(), frames)
        embedded = json.loads(tif.pages[0].description)
        xres = tif.pages[0].tags["XResolution"].value
        assert tif.pages[0].tags["ResolutionUnit"].value == 3  # centimetre
    assert embedded == meta.to_dict()
    assert xres[1] / xres[0] * 1e4 == pytest.approx(meta.sample_pixel_um, rel=1e-6)
    assert np.array_equal(tifffile.imread(tmp_path / "run.tif"), frames)


def test_bigtiff_used_when_planned_size_is_large(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "CLASSIC_TIFF_LIMIT_BYTES", 100)
    frames = make_frames(3)
    write_dataset(tmp_path / "big.tif", make_meta(3), frames)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff
    np.testing.assert_array_equal(read_dataset(tmp_path / "big.tif").frames, frames)


def test_normalised_frames(tmp_path):
    meta = make_meta(3, camera_offset=100.0)
    meta = meta.with_frames(
        [FrameSpec(((1, 1),), 2.0), FrameSpec(((1, 2),), 4.0, intensity=0.5),
         FrameSpec(((2, 2),), 1.0)]
    )
    frames = np.full((3, 2, 2), 300, dtype=np.uint16)
    dataset = Dataset(meta, frames)
    normalised = dataset.normalised_frames()
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised[:, 0, 0], [100.0, 100.0, 200.0])
    assert dataset.frames.dtype == np.uint16  # untouched


# ------------------------------------------------------------------------ sidecar JSON


def test_sidecar_wins_over_embedded(tmp_path):
    meta = make_meta(3)
    write_dataset(tmp_path / "run.tif", meta, make_frames(3))
    sidecar = meta.replace(wavelength_um=0.63, notes="from sidecar").to_dict()
    (tmp_path / "run.json").write_text(json.dumps(sidecar))
    dataset = read_dataset(tmp_path / "run.tif")
    assert dataset.meta.wavelength_um == 0.63 and dataset.meta.notes == "from sidecar"


@pytest.mark.parametrize("tifffile_metadata", ["default", "none"])
def test_third_party_stack_with_sidecar(tmp_path, tifffile_metadata):
    frames = make_frames(7, dtype=np.uint16)
    kwargs = {} if tifffile_metadata == "default" else {"metadata": None}
    tifffile.imwrite(tmp_path / "scan.tif", frames, **kwargs)
    with open(tmp_path / "scan.json", "w") as fh:
        json.dump(make_meta(7).to_dict(), fh, indent=2)
    dataset = read_dataset(tmp_path / "scan.tif")
    assert dataset.complete and dataset.frames.dtype == np.uint16
    np.testing.assert_array_equal(dataset.frames, frames)
    # naming the sidecar finds the TIFF next to it
    assert read_dataset(tmp_path / "scan.json").meta == make_meta(7)


def test_third_party_stack_without_metadata_says_what_to_do(tmp_path):
    tifffile.imwrite(tmp_path / "scan.tif", make_frames(2), photometric="minisblack")
    with pytest.raises(DatasetError, match=r"no uafp metadata and has no sidecar scan\.json"):
        read_dataset(tmp_path / "scan.tif")


def test_invalid_json_sidecar_names_file_and_position(tmp_path):
    write_dataset(tmp_path / "run.tif", make_meta(2), make_frames(2))
    (tmp_path / "run.json").write_text('{"format": "uafp-dataset",\n  "version": 1,,}')
    with pytest.raises(DatasetError) as info:
        read_dataset(tmp_path / "run.tif")
    message = str(info.value)
    assert "run.json is not valid JSON" in message and "line 2 column" in message


def test_invalid_embedded_json(tmp_path):
    tifffile.imwrite(tmp_path / "bad.tif", make_frames(2), description="{not json", metadata=None)
    with pytest.raises(DatasetError, match=r"embedded metadata of .*bad\.tif is not valid JSON"):
        read_dataset(tmp_path / "bad.tif")


def test_bad_field_in_sidecar_names_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "scan.tif", make_frames(2), photometric="minisblack")
    (tmp_path / "scan.json").write_text(json.dumps(valid_dict(wavelength_um=0)))
    with pytest.raises(DatasetError, match=r"scan\.json: wavelength_um must be > 0"):
        read_dataset(tmp_path / "scan.tif")


# ------------------------------------------------------------------------ corrupt input


def test_more_pages_than_frame_entries(tmp_path):
    tifffile.imwrite(tmp_path / "scan.tif", make_frames(5))
    (tmp_path / "scan.json").write_text(make_meta(3).to_json())
    with pytest.raises(DatasetError, match="holds more than 3 frames but its metadata lists only 3"):
        read_dataset(tmp_path / "scan.tif")


def test_fewer_pages_is_a_partial_dataset(tmp_path):
    frames = make_frames(3)
    tifffile.imwrite(tmp_path / "scan.tif", frames, photometric="minisblack")
    (tmp_path / "scan.json").write_text(make_meta(6).to_json())
    with pytest.warns(PartialDatasetWarning, match="3 of 6 planned frames"):
        dataset = read_dataset(tmp_path / "scan.tif")
    assert not dataset.complete and dataset.planned_frame_count == 6
    assert dataset.meta.frames == make_meta(6).frames[:3]
    np.testing.assert_array_equal(dataset.frames, frames)


def test_nan_frame_is_named(tmp_path):
    frames = make_frames(4, dtype=np.float32)
    frames[2, 3, 4] = np.nan
    frames[2, 0, 0] = np.inf
    tifffile.imwrite(tmp_path / "scan.tif", frames, photometric="minisblack")
    (tmp_path / "scan.json").write_text(make_meta(4).to_json())
    with pytest.raises(DatasetError, match="frame 2 of .* contains 2 NaN/inf pixel"):
        read_dataset(tmp_path / "scan.tif")


def test_writer_rejects_nan(tmp_path):
    with DatasetWriter(tmp_path / "run.tif", make_meta(2)) as writer:
        with pytest.raises(DatasetError, match="NaN"):
            writer.append(np.full((4, 4), np.nan))


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.ones((2, 8, 8), np.complex64), "complex"),
        (np.ones((8, 8, 3), np.uint8), "expected a 2-D grey image"),
    ],
)
def test_unsupported_pixel_layouts(tmp_path, array, expected):
    if array.ndim == 3 and array.shape[-1] == 3:
        tifffile.imwrite(tmp_path / "scan.tif", array, photometric="rgb")
    else:
        tifffile.imwrite(tmp_path / "scan.tif", array)
    (tmp_path / "scan.json").write_text(make_meta(2).to_json())
    with pytest.raises(DatasetError, match=expected):
        read_dataset(tmp_path / "scan.tif")


def test_not_a_tiff(tmp_path):
    (tmp_path / "notes.tif").write_bytes(b"%PDF-1.4 definitely not a tiff")
    with pytest.raises(DatasetError, match="is not a TIFF file"):
        read_dataset(tmp_path / "notes.tif")
    with pytest.raises(DatasetError, match="dataset not found"):
        read_dataset(tmp_path / "missing.tif")


@pytest.mark.slow  # reads every truncation of a file: the slow lane
def test_every_truncation_reads_the_intact_prefix(tmp_path):
    """Cut a written file at every byte: it either opens with the first k frames or says so."""
    meta = make_meta(4)
    frames = make_frames(4, shape=(6, 5))
    write_dataset(tmp_path / "full.tif", meta, frames)
    data = (tmp_path / "full.tif").read_bytes()
    cut_path = tmp_path / "cut.tif"
    counts = []
    for cut in [*range(0, len(data), 3), len(data)]:
        cut_path.write_bytes(data[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PartialDatasetWarning)
            try:
                dataset = read_dataset(cut_path)
            except DatasetError as error:
                assert "no complete frame" in str(error) or "cut short" in str(error)
                counts.append(0)
                continue
        k = dataset.frame_count
        np.testing.assert_array_equal(dataset.frames, frames[:k])
        assert dataset.meta.frames == meta.frames[:k]
        assert dataset.complete == (k == 4)
        counts.append(k)
    assert counts == sorted(counts) and set(counts) == {0, 1, 2, 3, 4}


def test_truncated_third_party_tiff(tmp_path):
    frames = make_frames(5, shape=(16, 16))
    tifffile.imwrite(tmp_path / "scan.tif", frames, metadata=None)
    (tmp_path / "scan.json").write_text(make_meta(5).to_json())
    data = (tmp_path / "scan.tif").read_bytes()
    (tmp_path / "scan.tif").write_bytes(data[: len(data) - 300])  # last page's data cut
    with pytest.warns(PartialDatasetWarning, match="cut short"):
        dataset = read_dataset(tmp_path / "scan.tif")
    assert 1 <= dataset.frame_count < 5
    np.testing.assert_array_equal(dataset.frames, frames[: dataset.frame_count])


# ------------------------------------------------------------------------------ writer


def test_writer_refuses_extra_frames_and_shape_changes(tmp_path):
    with DatasetWriter(tmp_path / "run.tif", make_meta(2)) as writer:
        assert writer.append(np.zeros((4, 4), np.uint16)) == 0
        with pytest.raises(DatasetError, match="all frames must be the same size"):
            writer.append(np.zeros((4, 5), np.uint16))
        writer.append(np.zeros((4, 4), np.uint16))
        assert writer.complete
        with pytest.raises(DatasetError, match="all 2 planned frames are already written"):
            writer.append(np.zeros((4, 4), np.uint16))


def test_writer_never_clobbers_without_permission(tmp_path):
    write_dataset(tmp_path / "run.tif", make_meta(2), make_frames(2))
    with pytest.raises(DatasetError, match="already exists: .*overwrite=True"):
        DatasetWriter(tmp_path / "run.tif", make_meta(2))
    with pytest.raises(DatasetError, match="already exists"):
        write_dataset(tmp_path / "run.tif", make_meta(2), make_frames(2), overwrite=False)
    write_dataset(tmp_path / "run.tif", make_meta(2), make_frames(2) + 1)
    np.testing.assert_array_equal(read_dataset(tmp_path / "run.tif").frames, make_frames(2) + 1)


def test_write_dataset_needs_one_frame_per_entry(tmp_path):
    with pytest.raises(DatasetError, match="3 frames given but the metadata lists 4"):
        write_dataset(tmp_path / "run.tif", make_meta(4), make_frames(3))


def test_resume_continues_a_partial_file(tmp_path):
    meta = make_meta(6)
    frames = make_frames(6)
    path = tmp_path / "run.tif"
    with DatasetWriter(path, meta) as writer:
        for frame in frames[:2]:
            writer.append(frame)
    with pytest.warns(PartialDatasetWarning):
        assert read_dataset(path).frame_count == 2
    with DatasetWriter(path, resume=True) as writer:
        assert writer.frames_present == 2
        for frame in frames[2:]:
            writer.append(frame)
    dataset = read_dataset(path)
    assert dataset.complete and dataset.meta == meta
    np.testing.assert_array_equal(dataset.frames, frames)


def test_resume_refuses_different_frames(tmp_path):
    path = tmp_path / "run.tif"
    with DatasetWriter(path, make_meta(4)) as writer:
        writer.append(make_frames(1)[0])
    with pytest.raises(DatasetError, match="plans different frames"):
        DatasetWriter(path, make_meta(5), resume=True)


_CHILD = """
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
from uafp_gui.io.schema import DatasetMeta, FrameSpec
from uafp_gui.io.writer import DatasetWriter
from uafp_gui.model import Optics
meta = DatasetMeta(
    optics=Optics(wavelength_um=0.532, objective_na=0.1, magnification=4.0, camera_pixel_um=3.45,
                  led_pitch_mm=4.0, led_height_mm=90.0, led_array_shape=(32, 32), led_on_axis=(15.5, 16.0)),
    frames=tuple(FrameSpec(((k // 32, k % 32),), 10.0) for k in range(1000)),
)
with DatasetWriter({path!r}, meta) as writer:
    for k in range(1000):
        writer.append(np.full((256, 256), k, dtype=np.uint16))
        print(k, flush=True)
"""


def test_kill_9_mid_write_leaves_a_readable_partial_dataset(tmp_path):
    path = tmp_path / "killed.tif"
    script = _CHILD.format(root=str(REPO_ROOT), path=str(path))
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        for line in child.stdout:  # wait until a few frames are surely on disk
            if int(line) >= 5 or time.monotonic() > deadline:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with pytest.warns(PartialDatasetWarning):
        dataset = read_dataset(path)
    k = dataset.frame_count
    assert 6 <= k < 1000 and not dataset.complete and dataset.planned_frame_count == 1000
    assert dataset.meta.frames[-1].leds == ((((k - 1) // 32), (k - 1) % 32),)
    assert dataset.meta.exposure_scale.tolist() == [10.0] * k
    expected = np.arange(k, dtype=np.uint16)[:, None, None]
    assert dataset.frames.dtype == np.uint16
    assert np.array_equal(dataset.frames, np.broadcast_to(expected, (k, 256, 256)))

    with DatasetWriter(path, resume=True) as writer:  # and the run can be continued
        assert writer.frames_present == k
        writer.append(np.full((256, 256), k, dtype=np.uint16))
    with pytest.warns(PartialDatasetWarning):
        assert read_dataset(path).frame_count == k + 1
