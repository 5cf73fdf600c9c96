"""Import a Micro-Manager acquisition (MMStack OME-TIFF, or an OME-TIFF written by pymmcore-plus).

One frame per LED illumination, in acquisition order: the OME-TIFF's image series (axes T, C, Z
or P, exactly one of them longer than 1). Where each frame's LED pattern comes from, first found:

1. `leds_csv`: a CSV with a header and one line per frame, `row,col[,exposure_ms][,intensity]`
   (0-based LED index in image axes; several LEDs of one frame as `r,c;r,c` in a `leds` column
   instead of row,col).
2. Micro-Manager's per-image metadata (the MicroManagerMetadata TIFF tag of MMStack files, as
   Micro-Manager Studio writes it): the property `led_property` (default `LEDArray-Pattern`, the
   LED device uafp adds to the core), text "row,col;row,col"; `Exposure-ms` per image.
3. The summary metadata pymmcore-plus stores in its OME-TIFF (MapAnnotation `pymmcore_plus`):
   when the acquisition was an `fp_sequence` (`uafp_gui.acquisition.sequence`), it carries the whole
   dataset metadata, geometry included.

The optics (wavelength, NA, magnification, camera pixel, LED pitch/height/shape/on-axis) come
from `geometry` (JSON/YAML, the dataset fields except frames, as for `uafp import folder`) unless
the acquisition carries them (3.). Exposures: the CSV, else the per-image metadata, else the OME
planes' ExposureTime, else `exposure_ms` in the geometry file. The OME physical pixel size, when
present, is checked against camera_pixel_um / magnification.
"""

from __future__ import annotations

import csv
import os
import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.io._importcheck import PARSER_ERRORS, check_stack_size, frame_stack, one_line
from uafp_gui.io.jsontext import parse_json
from uafp_gui.io.schema import FORMAT_NAME, FORMAT_VERSION, SOFTWARE_NAME, DatasetMeta
from uafp_gui.io.writer import write_dataset

DEFAULT_LED_PROPERTY = "LEDArray-Pattern"
MM_METADATA_TAG = 51123  # MicroManagerMetadata: per-image JSON in MMStack files

__all__ = ["DEFAULT_LED_PROPERTY", "find_acquisition", "import_micromanager", "read_acquisition"]


def find_acquisition(path: str | os.PathLike[str]) -> Path:
    """The OME-TIFF of an acquisition: the file itself, or in a folder the `*MMStack*.ome.tif` of
    the first position (else the only `*.ome.tif`)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetError(f"Micro-Manager acquisition not found: {path}: give its folder or OME-TIFF file")
    candidates = sorted(p for p in path.iterdir() if p.name.lower().endswith((".ome.tif", ".ome.tiff")))
    stacks = [p for p in candidates if "mmstack" in p.name.lower()]
    if stacks:
        first = [p for p in stacks if "pos0" in p.name.lower()] or stacks
        return first[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DatasetError(f"{path} holds no .ome.tif file: give the Micro-Manager acquisition's folder or file")
    names = ", ".join(p.name for p in candidates[:4])
    raise DatasetError(f"{path} holds several OME-TIFF files ({names}): name the one to import")


def _frames_of(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    axes = axes.upper()
    if axes.endswith("S") and array.shape[-1] != 1:
        raise DatasetError(f"{path} holds RGB images: FP frames must be grey-level")
    if axes.endswith("S"):
        array, axes = array[..., 0], axes[:-1]
    if not axes.endswith("YX"):
        raise DatasetError(f"{path}: unexpected axes {axes}; expected images with Y and X last")
    stacked = [k for k, (axis, size) in enumerate(zip(axes[:-2], array.shape[:-2], strict=True)) if size > 1]
    if len(stacked) > 1:
        dims = ", ".join(f"{axes[k]}={array.shape[k]}" for k in stacked)
        raise DatasetError(
            f"{path} has several non-singleton dimensions ({dims}): an FP acquisition is one series of frames, "
            "one per LED pattern (acquire it as a time series or one channel per LED)"
        )
    return array.reshape((-1, *array.shape[-2:]))


def _mm_image_metadata(tif: Any, count: int) -> list[dict[str, Any]]:
    out = []
    for k in range(min(count, len(tif.pages))):
        page = tif.pages[k]
        if not hasattr(page, "tags"):  # tifffile's light TiffFrame: read the full directory
            page = page.aspage()
        tag = page.tags.get(MM_METADATA_TAG)
        value = tag.value if tag is not None else None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            try:
                value = parse_json(value, "MicroManagerMetadata")  # depth, size and number limits
            except DatasetError:
                value = None
        out.append(value if isinstance(value, dict) else {})
    return out


def _ome_details(xml: str | None) -> tuple[list[float | None], float | None, dict[str, Any] | None]:
    """Plane exposure times (ms), the physical pixel size (um) and pymmcore-plus's summary metadata."""
    if not xml:
        return [], None, None
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return [], None, None
    exposures: list[float | None] = []
    pixel_um = None
    summary = None
    for element in root.iter():
        name = element.tag.rsplit("}", 1)[-1]
        if name == "Pixels" and pixel_um is None and element.get("PhysicalSizeX"):
            unit = element.get("PhysicalSizeXUnit", "\u00b5m")
            scale = {"\u00b5m": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
            if scale is not None:
                pixel_um = float(element.get("PhysicalSizeX", "")) * scale
        elif name == "Plane":
            value = element.get("ExposureTime")
            unit = element.get("ExposureTimeUnit", "s")
            scale = {"s": 1e3, "ms": 1.0, "\u00b5s": 1e-3, "us": 1e-3}.get(unit)
            exposures.append(float(value) * scale if value is not None and scale is not None else None)
        elif name == "MapAnnotation" and element.get("Namespace") == "pymmcore_plus":
            for item in element.iter():
                if item.tag.rsplit("}", 1)[-1] == "M" and item.get("K") == "summary_metadata_json":
                    try:
                        summary = parse_json(item.text or "", "summary_metadata_json")
                    except DatasetError:
                        summary = None
    return exposures, pixel_um, summary


def read_acquisition(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Frames (N, H, W), per-image Micro-Manager metadata, OME plane exposures (ms), the OME pixel
    size (um) and pymmcore-plus's summary metadata of an OME-TIFF acquisition."""
    import tifffile

    from uafp_gui.io.tiff import quiet_tifffile, walk_pages
    from uafp_gui.limits import MAX_FRAMES

    path = find_acquisition(path)
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            # the page chain, bounded and loop-checked, before tifffile's own series walk (which a
            # chain looping back would never end)
            pages, broken, more = walk_pages(tif, path, path.stat().st_size, MAX_FRAMES)
            if broken:
                raise DatasetError(f"{path}: the TIFF's page chain is broken after page {len(pages)} (a corrupt file)")
            if more:
                raise DatasetError(f"{path} holds more than {MAX_FRAMES} pages, more frames than a dataset may hold")
            if not tif.series:
                raise DatasetError(f"{path} holds no image series")
            series = tif.series[0]
            check_stack_size(series.shape, series.dtype.itemsize, "the image series", path)  # before reading it
            frames = frame_stack(_frames_of(series.asarray(), series.axes, path), "the image series", path)
            image_meta = _mm_image_metadata(tif, len(frames))
            exposures, pixel_um, summary = _ome_details(tif.ome_metadata)
    except DatasetError:
        raise
    except PARSER_ERRORS as error:
        raise DatasetError(f"cannot read {path} as an OME-TIFF: {one_line(error)}") from None
    if not isinstance(summary, dict):
        summary = None
    return {
        "path": path,
        "frames": frames,
        "image_metadata": image_meta,
        "exposures_ms": exposures,
        "pixel_um": pixel_um,
        "summary": summary,
    }


def _parse_pattern(text: str, where: str) -> list[list[int]]:
    leds = []
    for item in str(text).split(";"):
        item = item.strip()
        if not item:
            continue
        try:
            values = [float(v) for v in item.split(",")]
            row, col = (int(v) for v in values if v == int(v))  # whole numbers only ("3" or "3.0")
        except (ValueError, OverflowError):  # not numbers, not two of them, inf/nan, 3.5
            raise DatasetError(f"{where}: LED pattern {text!r} is not 'row,col;row,col' (whole numbers)") from None
        leds.append([row, col])
    if not leds:
        raise DatasetError(f"{where}: no LED is lit (pattern {text!r}): every FP frame needs its LEDs")
    return leds


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"LED list not found: {path}: check the path")
    try:
        return _parse_csv(path)
    except DatasetError:
        raise
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path} is not UTF-8 ({error.reason} at byte {error.start}): save it as UTF-8") from None
    except PARSER_ERRORS as error:
        raise DatasetError(f"{path} is not a readable CSV file ({one_line(error)}): one short line per frame") from None


def _parse_csv(path: Path) -> list[dict[str, Any]]:
    from uafp_gui.limits import MAX_CSV_LINES

    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        if not ({"row", "col"} <= set(header) or "leds" in header):
            raise DatasetError(f"{path} needs a header with row,col (or leds) [,exposure_ms][,intensity]; got {header}")
        reader.fieldnames = header
        rows = []
        for line, record in enumerate(reader, start=2):
            if line > MAX_CSV_LINES:
                raise DatasetError(f"{path} has more than {MAX_CSV_LINES} lines: more frames than a dataset may hold")
            record = {k: (v if isinstance(v, str) else "").strip() for k, v in record.items() if k}
            if not any(record.values()):
                continue
            where = f"{path.name} line {line}"
            text = record["leds"] if "leds" in record else f"{record.get('row', '')},{record.get('col', '')}"
            entry: dict[str, Any] = {"leds": _parse_pattern(text, where)}
            for key in ("exposure_ms", "intensity"):
                if record.get(key):
                    try:
                        entry[key] = float(record[key])
                    except (ValueError, OverflowError):
                        raise DatasetError(f"{where}: {key} must be a number (got {record[key]!r})") from None
            rows.append(entry)
    return rows


def _load_geometry(path: Path) -> dict[str, Any]:
    from uafp_gui.io.importers import _load_mapping  # the folder importer's reader: size, UTF-8, JSON limits

    data = _load_mapping(path)
    if "frames" in data:
        raise DatasetError(f"{path} must not list frames: they come from the acquisition")
    return data


def import_micromanager(
    source: str | os.PathLike[str],
    out_tif: str | os.PathLike[str],
    *,
    geometry: str | os.PathLike[str] | None = None,
    leds_csv: str | os.PathLike[str] | None = None,
    led_property: str = DEFAULT_LED_PROPERTY,
    overwrite: bool = False,
) -> Path:
    """Convert a Micro-Manager / pymmcore-plus OME-TIFF acquisition into a dataset TIFF."""
    acquisition = read_acquisition(source)
    path: Path = acquisition["path"]
    frames: np.ndarray = acquisition["frames"]
    count = len(frames)
    stored = None
    summary = acquisition["summary"] or {}
    sequence = summary.get("mda_sequence")
    sequence_meta = (sequence.get("metadata") if isinstance(sequence, dict) else None) or {}
    if not isinstance(sequence_meta, dict):
        sequence_meta = {}
    if isinstance(sequence_meta.get("uafp"), dict) and "dataset" in sequence_meta["uafp"]:
        stored = DatasetMeta.from_dict(sequence_meta["uafp"]["dataset"])

    fields: dict[str, Any] = {}
    if stored is not None:
        fields = {k: v for k, v in stored.to_dict().items() if k != "frames"}
    if geometry is not None:
        fields.update(_load_geometry(Path(geometry)))
    if not fields:
        raise DatasetError(
            f"{path} does not say how the microscope is built: pass --geometry geometry.json with the dataset fields "
            "(wavelength_um, objective_na, magnification, camera_pixel_um, led_pitch_mm, led_height_mm, "
            "led_array_shape, led_on_axis; see `uafp import --help`)"
        )
    default_exposure = fields.pop("exposure_ms", None)

    # the LED pattern (and exposure) of every frame
    source_name = ""
    if leds_csv is not None:
        entries = _read_csv(Path(leds_csv))
        source_name = Path(leds_csv).name
    elif any(led_property in meta for meta in acquisition["image_metadata"]):
        entries = []
        for k, meta in enumerate(acquisition["image_metadata"]):
            if led_property not in meta:
                raise DatasetError(f"{path}: image {k} has no {led_property} in its metadata: give --leds CSV")
            entry: dict[str, Any] = {"leds": _parse_pattern(meta[led_property], f"{path.name} image {k}")}
            if meta.get("Exposure-ms") not in (None, ""):
                try:
                    entry["exposure_ms"] = float(meta["Exposure-ms"])
                except (TypeError, ValueError, OverflowError):
                    raise DatasetError(
                        f"{path.name} image {k}: Exposure-ms {str(meta['Exposure-ms'])[:40]!r} is not a number"
                    ) from None
            entries.append(entry)
        source_name = f"the per-image metadata ({led_property})"
    elif stored is not None:
        entries = [frame.to_dict() for frame in stored.frames[:count]]
        source_name = "the acquisition's uafp sequence metadata"
    else:
        raise DatasetError(
            f"{path} names no LED pattern per image (no {led_property} in its metadata): pass --leds leds.csv "
            "(header row,col[,exposure_ms][,intensity], one line per frame in acquisition order), or "
            "--led-property DEVICE-PROPERTY"
        )
    if len(entries) != count:
        raise DatasetError(
            f"{path} holds {count} frames but {source_name} gives {len(entries)} LED patterns: one per frame"
        )
    exposures = acquisition["exposures_ms"]
    for k, entry in enumerate(entries):
        if "exposure_ms" not in entry:
            if k < len(exposures) and exposures[k]:
                entry["exposure_ms"] = exposures[k]
            elif default_exposure is not None:
                entry["exposure_ms"] = default_exposure
            else:
                raise DatasetError(
                    f"{path}: no exposure for frame {k}: add an exposure_ms column to the CSV or a default "
                    '"exposure_ms" to the geometry file'
                )

    meta_fields = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **fields, "frames": entries}
    meta_fields.setdefault("software", SOFTWARE_NAME)
    note = f"Imported from the Micro-Manager acquisition {path.name}; LED patterns from {source_name}."
    meta_fields["notes"] = (str(meta_fields.get("notes", "")) + " " + note).strip()
    try:
        meta = DatasetMeta.from_dict(meta_fields)
    except DatasetError as error:
        raise DatasetError(f"{path.name}: {error}") from None
    pixel_um = acquisition["pixel_um"]
    if pixel_um and abs(pixel_um - meta.sample_pixel_um) > 0.01 * meta.sample_pixel_um:
        warnings.warn(
            f"{path.name} says the pixel is {pixel_um:g} um in the sample, but camera_pixel_um / magnification "
            f"= {meta.sample_pixel_um:g} um: check the geometry (the dataset uses the latter)",
            UserWarning,
            stacklevel=2,
        )
    return write_dataset(out_tif, meta, frames, overwrite=overwrite)
