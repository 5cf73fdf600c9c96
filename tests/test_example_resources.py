"""The example import files shipped in resources/ work with `uafp import folder` as documented."""

from pathlib import Path

import numpy as np
import tifffile

from uafp_gui.cli import main
from uafp_gui.io.dataset import read_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "resources" / "example_import"


def test_example_import_files_build_a_dataset(tmp_path, rng):
    frames = tmp_path / "frames"
    frames.mkdir()
    images = rng.integers(100, 4000, size=(9, 16, 16)).astype(np.uint16)
    for k, image in enumerate(images):
        tifffile.imwrite(frames / f"frame_{k:02d}.tif", image)
    out = tmp_path / "run.tif"
    code = main(["import", "folder", str(frames), "--leds", str(EXAMPLE / "leds.csv"),
                 "--geometry", str(EXAMPLE / "geometry.json"), str(out)])  # fmt: skip
    assert code == 0
    dataset = read_dataset(out)
    assert dataset.frames.dtype == np.uint16
    np.testing.assert_array_equal(dataset.frames, images)
    assert [frame.leds for frame in dataset.meta.frames][:3] == [((16, 16),), ((16, 17),), ((17, 17),)]
    assert [frame.exposure_ms for frame in dataset.meta.frames][-1] == 40
    assert dataset.meta.camera_offset == 100
