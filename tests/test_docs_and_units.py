"""The dataset format is documented in the project (errors point at it), and result TIFFs carry a
pixel size every TIFF reader understands, not only ImageJ-aware ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from uafp_gui.errors import DatasetError
from uafp_gui.io.calibration import CALIBRATION_FIELDS, Calibration
from uafp_gui.io.dataset import read_dataset
from uafp_gui.io.result import read_pixel_size_um, write_result
from uafp_gui.io.schema import _KNOWN

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "dataset_format.md"


def test_the_format_document_names_every_field():
    text = DOC.read_text()
    names = sorted(_KNOWN | set(CALIBRATION_FIELDS))
    missing = [name for name in names if f"`{name}`" not in text and f'"{name}"' not in text]
    assert not missing, f"docs/dataset_format.md does not describe {missing}"
    assert "docs/dataset_format.md" in (ROOT / "README.md").read_text()


def test_errors_point_at_the_document_in_the_project(tmp_path):
    plain = tmp_path / "stack.tif"
    tifffile.imwrite(plain, np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(DatasetError) as caught:
        read_dataset(plain)
    assert "docs/dataset_format.md" in str(caught.value) and DOC.is_file()
    sources = "".join(path.read_text() for path in (ROOT / "uafp_gui").rglob("*.py"))
    assert "shared/spec" not in sources and "spec/dataset.md" not in sources


def test_result_tiffs_give_the_pixel_size_in_centimetre_units(tmp_path):
    pixel_um = 0.4613
    calibration = Calibration.from_dict({
        "format": "uafp-calibration", "version": 1,
        "led_geometry": {"shift_x_mm": 0.0, "shift_y_mm": 0.0, "rotation_deg": 0.0, "height_mm": 90.0},
        "zernike_rad": {"4": 0.0}, "frame_gain": [1.0], "led_positions_mm": [[0.0, 0.0]],
        "object_pixel_um": pixel_um, "final_loss": 0.0, "iterations": 1, "elapsed_s": 0.0,
        "source_dataset": "run.tif", "software": "test",
    })
    image = np.ones((16, 16), np.float32)
    folder = write_result(tmp_path / "result", image, image, image, image, calibration)
    amplitude = folder / "amplitude.tif"
    with tifffile.TiffFile(amplitude) as tif:
        page = tif.pages.first
        assert int(page.tags["ResolutionUnit"].value) == 3  # centimetre
        numerator, denominator = page.tags["XResolution"].value
        assert numerator / denominator == pytest.approx(1e4 / pixel_um, rel=1e-6)
        assert tif.imagej_metadata["unit"] == "um"
    # a reader that knows nothing of ImageJ (Pillow reports dots per inch)
    from PIL import Image

    dpi = Image.open(amplitude).info["dpi"][0]
    assert 25400.0 / dpi == pytest.approx(pixel_um, rel=1e-4)
    assert read_pixel_size_um(amplitude) == pytest.approx(pixel_um, rel=1e-6)
    assert json.loads((folder / "calibration.json").read_text())["object_pixel_um"] == pixel_um
