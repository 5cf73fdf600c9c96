"""Results as OME files: OME-Zarr (multiscale) and OME-TIFF (pyramid), plus an ImageJ hyperstack.

The object is exported as one 2-channel image, channel 0 the amplitude and channel 1 the phase
(radians), on the sample-plane grid with its physical pixel size in micrometres, so Fiji
(Bio-Formats), QuPath, napari (napari-ome-zarr) and any OME reader show the right scale.

- OME-Zarr: NGFF v0.5 (Zarr v3) written by `yaozarrs` (an OME-Zarr metadata library; arrays by
  zarr-python or tensorstore), axes (c, y, x), one dataset per pyramid level, each with its
  scale transformation. The calibration (`calibration.json`) travels in the group attributes
  under `uafp`.
- OME-TIFF: `tifffile` with OME-XML (`PhysicalSizeX/Y` in micrometres, channel names) and the
  pyramid levels as sub-IFDs (the layout Bio-Formats and QuPath read as a pyramid).
- ImageJ: one hyperstack TIFF (2 channels) with the pixel size as resolution tags, unit um.

Pyramid levels halve each side by averaging 2 x 2 blocks (`skimage.transform.downscale_local_mean`)
until the next level would be smaller than `min_size` pixels a side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from uafp_gui.errors import ConfigError, DatasetError
from uafp_gui.io.result import Result, read_result

FORMATS = ("ome-zarr", "ome-tiff", "imagej")
SUFFIXES = {"ome-zarr": ".ome.zarr", "ome-tiff": ".ome.tif", "imagej": ".tif"}
CHANNELS = ("amplitude", "phase")
OME_UNIT = "\u00b5m"  # what OME-XML's UnitsLength calls a micrometre
DEFAULT_MIN_SIZE = 64
MAX_LEVELS = 8

__all__ = [
    "FORMATS",
    "default_output",
    "export_result",
    "object_stack",
    "pyramid",
    "write_ome_tiff",
    "write_ome_zarr",
]


def object_stack(result: Result) -> np.ndarray:
    """(2, H, W) float32: amplitude, phase (radians)."""
    return np.stack([result.amplitude, result.phase]).astype(np.float32)


def pyramid(image: np.ndarray, min_size: int = DEFAULT_MIN_SIZE, max_levels: int = MAX_LEVELS) -> list[np.ndarray]:
    """Levels of a (..., H, W) image, full size first, each the 2 x 2 block mean of the previous."""
    from skimage.transform import downscale_local_mean

    levels = [np.asarray(image)]
    factors = (1,) * (image.ndim - 2) + (2, 2)
    while len(levels) < max_levels:
        last = levels[-1]
        height, width = last.shape[-2:]
        if min(height // 2, width // 2) < min_size:
            break
        cropped = last[..., : height - height % 2, : width - width % 2]
        levels.append(downscale_local_mean(cropped, factors).astype(image.dtype))
    return levels


def _output_path(out: Path, fmt: str, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists: pass --overwrite to replace it, or choose another --out")
    if not out.parent.exists():
        raise ConfigError(f"folder {out.parent} does not exist: create it first")
    return out


def write_ome_zarr(
    out: str | os.PathLike[str],
    stack: np.ndarray,
    pixel_um: float,
    *,
    channel_names: Sequence[str] = CHANNELS,
    name: str = "uafp result",
    attributes: dict | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    overwrite: bool = False,
    chunks: tuple[int, ...] | Literal["auto"] | None = "auto",
) -> Path:
    """Write a (C, H, W) stack as a multiscale OME-Zarr v0.5 image; returns the group path.

    `chunks`: yaozarrs's ("auto": about 4 MB, one channel each; a tuple (1, 1024, 1024) for a large
    mosaic read tile by tile)."""
    from yaozarrs import v05
    from yaozarrs.write.v05 import write_image

    out = Path(out)
    levels = pyramid(stack, min_size)
    datasets = []
    for k in range(len(levels)):
        factor = 2.0**k  # a level's pixel is 2^k full-size pixels (odd edges are cropped, not stretched)
        datasets.append(
            v05.Dataset(
                path=str(k),
                coordinateTransformations=[v05.ScaleTransformation(scale=[1.0, pixel_um * factor, pixel_um * factor])],
            )
        )
    low, high = float(np.nanmin(stack)), float(np.nanmax(stack))
    image = v05.Image(
        multiscales=[
            v05.Multiscale(
                name=name,
                axes=[
                    v05.ChannelAxis(name="c"),
                    v05.SpaceAxis(name="y", unit="micrometer"),
                    v05.SpaceAxis(name="x", unit="micrometer"),
                ],
                datasets=datasets,
            )
        ],
        omero=v05.Omero(
            channels=[
                v05.OmeroChannel(
                    label=label,
                    color="FFFFFF",
                    window=v05.OmeroWindow(
                        start=float(np.nanmin(channel)), end=float(np.nanmax(channel)), min=low, max=high
                    ),
                )
                for label, channel in zip(channel_names, stack, strict=True)
            ]
        ),
    )
    try:
        return write_image(
            out,
            image,
            levels,
            extra_attributes={"uafp": attributes} if attributes else None,
            writer="zarr",
            overwrite=overwrite,
            chunks=chunks,
        )
    except ImportError as error:
        raise ConfigError(f"writing OME-Zarr needs zarr-python: `pip install zarr` ({error})") from None


def write_ome_tiff(
    out: str | os.PathLike[str],
    stack: np.ndarray,
    pixel_um: float,
    *,
    channel_names: Sequence[str] = CHANNELS,
    name: str = "uafp result",
    description: str = "",
    min_size: int = DEFAULT_MIN_SIZE,
) -> Path:
    """Write a (C, H, W) stack as a pyramidal OME-TIFF (levels in sub-IFDs); returns the path."""
    import tifffile

    out = Path(out)
    levels = pyramid(stack, min_size)
    metadata = {
        "axes": "CYX",
        "Name": name,
        "PhysicalSizeX": pixel_um,
        "PhysicalSizeXUnit": OME_UNIT,
        "PhysicalSizeY": pixel_um,
        "PhysicalSizeYUnit": OME_UNIT,
        "Channel": {"Name": list(channel_names)},
    }
    if description:
        metadata["Description"] = description
    big = stack.nbytes * 4 // 3 > 2**31
    tiled = min(stack.shape[-2:]) >= 512
    options: dict[str, Any] = {"photometric": "minisblack", "resolutionunit": "CENTIMETER"}
    if tiled:
        options["tile"] = (256, 256)
    with tifffile.TiffWriter(out, bigtiff=big, ome=True) as tif:
        tif.write(
            levels[0],
            subifds=len(levels) - 1,
            metadata=metadata,
            resolution=(1e4 / pixel_um, 1e4 / pixel_um),
            **options,
        )
        for k, level in enumerate(levels[1:], start=1):
            step = 2.0**k
            tif.write(
                level,
                subfiletype=1,
                metadata=None,
                resolution=(1e4 / (pixel_um * step), 1e4 / (pixel_um * step)),
                **options,
            )
    return out


def write_imagej(out: str | os.PathLike[str], stack: np.ndarray, pixel_um: float) -> Path:
    """Write a (C, H, W) stack as one ImageJ hyperstack (channels) with its scale in um."""
    import tifffile

    out = Path(out)
    tifffile.imwrite(
        out,
        stack[None, None],  # TZCYX: ImageJ wants the channel axis after Z
        imagej=True,
        resolution=(1.0 / pixel_um, 1.0 / pixel_um),
        metadata={"axes": "TZCYX", "unit": "um", "Labels": list(CHANNELS), "mode": "grayscale"},
    )
    return out


def default_output(result_folder: str | os.PathLike[str], fmt: str) -> Path:
    """`RESULT/` -> `RESULT.ome.zarr`, `RESULT.ome.tif` or `RESULT_imagej.tif` next to it."""
    folder = Path(result_folder)
    if fmt == "imagej":
        return folder.with_name(folder.name + "_imagej.tif")
    return folder.with_name(folder.name + SUFFIXES[fmt])


def export_result(
    result_folder: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    min_size: int = DEFAULT_MIN_SIZE,
) -> Path:
    """Export a result folder's object (amplitude, phase) in `fmt` (one of `FORMATS`)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    result = read_result(result_folder)
    out = _output_path(Path(out) if out is not None else default_output(result_folder, fmt), fmt, overwrite)
    stack = object_stack(result)
    pixel_um = float(result.object_pixel_um)
    name = f"{Path(result_folder).name} (uafp result)"
    try:
        if fmt == "ome-zarr":
            return write_ome_zarr(
                out,
                stack,
                pixel_um,
                name=name,
                attributes={"calibration": result.calibration.to_dict()},
                min_size=min_size,
                overwrite=overwrite,
            )
        if fmt == "ome-tiff":
            description = json.dumps({"calibration": result.calibration.to_dict()}, allow_nan=False)
            return write_ome_tiff(out, stack, pixel_um, name=name, description=description, min_size=min_size)
        return write_imagej(out, stack, pixel_um)
    except OSError as error:
        raise DatasetError(f"cannot write {out}: {error.strerror or error}") from None
