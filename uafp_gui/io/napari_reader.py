"""napari reader (npe2 contribution `uafp_gui.get_reader`): uafp datasets and result folders as layers.

No Qt and no napari import here: a reader returns plain layer-data tuples `(data, kwargs, kind)`.

- A dataset (`run.tif` with embedded metadata, or a TIFF with its sidecar JSON): one image layer,
  the frames as a stack (frame, y, x) at the sample-plane pixel size (`scale`, micrometres), grey;
  `metadata["uafp_dataset"]` holds the complete dataset metadata (every frame's LEDs, exposure,
  the optics), `metadata["uafp_leds"]` the "row,col;row,col" of each frame, `metadata["uafp_path"]`
  the file. The reconstruction dock widget (`uafp_gui.gui.napari_widget`) runs on such a layer.
- A result folder: amplitude (grey) and phase (radians, cyclic colormap, -pi..pi) at the object
  pixel size; the pupil amplitude and phase on the spectrum grid (cycles/um, centred on zero
  frequency), hidden at first; `metadata["uafp_calibration"]` the calibration.

Anything else gives `None`, so napari asks its other readers.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.errors import UafpError

LayerData = tuple[Any, dict[str, Any], str]
TIFF_SUFFIXES = (".tif", ".tiff")
MICROMETRE = "micrometer"

__all__ = ["dataset_layers", "get_reader", "is_dataset", "is_result_folder", "result_layers"]


def is_result_folder(path: str | os.PathLike[str]) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "calibration.json").is_file() and (path / "amplitude.tif").is_file()


def is_dataset(path: str | os.PathLike[str]) -> bool:
    """A TIFF carrying uafp metadata (embedded, or a sidecar JSON of the same stem)."""
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() in TIFF_SUFFIXES):
        return False
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text(encoding="utf-8")).get("format") == "uafp-dataset"
        except (OSError, ValueError, AttributeError):
            return False
    try:
        import tifffile

        from uafp_gui.io.tiff import quiet_tifffile

        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            description = tif.pages.first.description or ""
    except Exception:  # noqa: BLE001 - not a TIFF we can read: not ours
        return False
    return description.lstrip().startswith("{") and '"uafp-dataset"' in description[:4000]


def dataset_layers(path: str | os.PathLike[str]) -> list[LayerData]:
    from uafp_gui.io.dataset import PartialDatasetWarning, read_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PartialDatasetWarning)
        dataset = read_dataset(path)
    meta = dataset.meta
    pixel = float(meta.sample_pixel_um)
    leds = [";".join(f"{r},{c}" for r, c in frame.leds) for frame in meta.frames]
    name = Path(path).stem
    if not dataset.complete:
        name += f" (partial: {dataset.frame_count} of {dataset.planned_frame_count} frames)"
    kwargs = {
        "name": name,
        "scale": (1.0, pixel, pixel),
        "units": ("pixel", MICROMETRE, MICROMETRE),
        "axis_labels": ("frame", "y", "x"),
        "colormap": "gray",
        "metadata": {
            "uafp_dataset": meta.to_dict(),
            "uafp_leds": leds,
            "uafp_exposure_ms": [frame.exposure_ms for frame in meta.frames],
            "uafp_path": str(Path(path).resolve()),
            "uafp_warnings": [str(w.message) for w in caught],
        },
    }
    return [(dataset.frames, kwargs, "image")]


def result_layers(path: str | os.PathLike[str]) -> list[LayerData]:
    from uafp_gui.io.result import read_result

    result = read_result(path)
    pixel = float(result.object_pixel_um)
    name = Path(path).name
    calibration = result.calibration.to_dict()
    common = {
        "scale": (pixel, pixel),
        "units": (MICROMETRE, MICROMETRE),
        "axis_labels": ("y", "x"),
        "metadata": {"uafp_calibration": calibration, "uafp_path": str(Path(path).resolve())},
    }
    amplitude = result.amplitude
    finite = amplitude[np.isfinite(amplitude)]
    layers: list[LayerData] = [
        (
            amplitude,
            {
                **common,
                "name": f"{name} amplitude",
                "colormap": "gray",
                "contrast_limits": _limits(finite),
            },
            "image",
        ),
        (
            result.phase,
            {
                **common,
                "name": f"{name} phase (rad)",
                "colormap": "twilight_shifted",
                "contrast_limits": (-math.pi, math.pi),
            },
            "image",
        ),
    ]
    # The pupil lives on the frames' spectrum grid: P x P samples 1 / (H' * object pixel) apart.
    height = amplitude.shape[0]
    step = 1.0 / (height * pixel)  # cycles per micrometre
    size = result.pupil.shape[-1]
    pupil_common = {
        "scale": (step, step),
        "translate": (-(size // 2) * step, -(size // 2) * step),
        "units": ("1/micrometer", "1/micrometer"),
        "axis_labels": ("f_y", "f_x"),
        "visible": False,
        "metadata": {"uafp_calibration": calibration, "spatial_frequency_step_per_um": step},
    }
    layers.append((result.pupil[0], {**pupil_common, "name": f"{name} pupil amplitude", "colormap": "gray"}, "image"))
    layers.append(
        (
            result.pupil[1],
            {
                **pupil_common,
                "name": f"{name} pupil phase (rad)",
                "colormap": "twilight_shifted",
                "contrast_limits": (-math.pi, math.pi),
            },
            "image",
        )
    )
    return layers


def _limits(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return (0.0, 1.0)
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return (low, high) if high > low else (low, low + 1.0)


def _read(paths: str | Sequence[str]) -> list[LayerData]:
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    layers: list[LayerData] = []
    for path in paths:
        try:
            layers += result_layers(path) if is_result_folder(path) else dataset_layers(path)
        except UafpError as error:  # napari shows the message; one line that says what to do
            raise ValueError(str(error)) from None
    return layers


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution: a reader for uafp datasets and result folders, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(is_result_folder(p) or is_dataset(p) for p in paths):
        return None
    return _read
