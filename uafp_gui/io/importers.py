"""Importers that turn other people's FP data into a dataset TIFF (docs/dataset_format.md).

- `import_zheng_mat`: the published blood-smear capture (Smart Imaging Lab, `imlow_HDR` in a
  MATLAB file, 15 x 15 LEDs lit in a spiral from the centre).
- `import_folder`: a folder of single-frame TIFF/PNG images, a CSV naming the lit LED of each
  frame and a small geometry JSON (or YAML) with the dataset's optical fields.

Pixel values are never scaled or downcast: 8- and 16-bit images become uint16, floating-point
images float32.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.io._importcheck import (
    MAT_READER_ERRORS,
    PARSER_ERRORS,
    check_stack_size,
    frame_stack,
    one_line,
    positive_somewhere,
)
from uafp_gui.io.pixels import common_dtype, stored_pixels
from uafp_gui.io.schema import FORMAT_NAME, FORMAT_VERSION, SOFTWARE_NAME, DatasetMeta, FrameSpec
from uafp_gui.io.writer import write_dataset
from uafp_gui.limits import MAX_CSV_LINES
from uafp_gui.model import Glass, Optics

# --------------------------------------------------------------------- Zheng blood smear

ZHENG_CENTRAL_LED = (19, 17)  # [row, col], 0-based: array column x = 18, row y = 20 from 1
ZHENG_LED_ARRAY_SHAPE = (32, 32)


def zheng_spiral_leds(count: int, start: tuple[int, int] = ZHENG_CENTRAL_LED) -> tuple[tuple[int, int], ...]:
    """[row, col] of the first `count` LEDs of the spiral: right, down, left, left, up, up, ...

    Moves of 1, 1, 2, 2, 3, 3, ... LEDs turning +x (column), +y (row), -x, -y, so the LEDs fill
    a growing square around `start` (x = column and y = row, as in spec section 2).
    """
    directions = ((0, 1), (1, 0), (0, -1), (-1, 0))  # (d_row, d_col): right, down, left, up
    row, col = start
    leds = [(row, col)]
    run, turn = 1, 0
    while len(leds) < count:
        for _ in range(2):
            d_row, d_col = directions[turn % 4]
            for _ in range(run):
                row, col = row + d_row, col + d_col
                leds.append((row, col))
            turn += 1
        run += 1
    return tuple(leds[:count])


def _zheng_meta(frame_count: int, mat_name: str, mat: Mapping[str, Any]) -> DatasetMeta:
    def scalar(name: str) -> str:
        value = mat.get(name)
        return "?" if value is None else f"{float(np.asarray(value).ravel()[0]):g}"

    notes = (
        f"Imported from {mat_name}: blood smear, green LED, Smart Imaging Lab (UConn) open-source "
        "FP setup, imlow_HDR frames (HDR-combined, normalised; exposure_ms is nominal). LEDs lit "
        "one at a time in a spiral from the central LED (x=18, y=20 counted from 1): right, down, "
        "left, left, up, up, ... The authors' own calibration, NOT applied here: first LED "
        f"offset xint={scalar('xint')} mm, yint={scalar('yint')} mm from the patch centre, "
        f"rotation theta={scalar('theta')} deg, known defocus z={scalar('z')} m; compare a "
        "self-calibration against it."
    )
    return DatasetMeta(
        optics=Optics(
            wavelength_um=0.532,
            objective_na=0.1,
            magnification=2.0,
            camera_pixel_um=3.69,  # 3.69 / 2 = 1.845 um sample-plane pixel, as published
            led_pitch_mm=4.0,
            led_height_mm=90.88,
            led_array_shape=ZHENG_LED_ARRAY_SHAPE,
            led_on_axis=(float(ZHENG_CENTRAL_LED[0]), float(ZHENG_CENTRAL_LED[1])),
        ),
        frames=tuple(FrameSpec(leds=(led,), exposure_ms=1.0) for led in zheng_spiral_leds(frame_count)),
        glass=Glass(thickness_mm=1.0, refractive_index=1.52),
        sample="blood smear (Zheng lab public data, green)",
        notes=notes,
        software=SOFTWARE_NAME,
    )


def import_zheng_mat(
    mat_path: str | os.PathLike[str], out_tif: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Convert the blood-smear MAT (`imlow_HDR` (128, 128, 225) float32) to a dataset TIFF."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise DatasetError(f"MAT file not found: {mat_path}: check the path")
    try:
        variables = {name: (shape, kind) for name, shape, kind in scipy.io.whosmat(mat_path)}
        if "imlow_HDR" in variables:  # its size, before anything is read
            check_stack_size(variables["imlow_HDR"][0][::-1], 4, "imlow_HDR", mat_path)
        mat = scipy.io.loadmat(mat_path)
    except DatasetError:
        raise
    except (*MAT_READER_ERRORS, MatReadError) as error:
        raise DatasetError(
            f"cannot read {mat_path} as a MATLAB v5 file ({one_line(error)}): save it with `save(..., '-v7')` in MATLAB"
        ) from None
    if "imlow_HDR" not in mat:
        names = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(
            f"{mat_path} has no variable imlow_HDR (it has {names}): is it the Zheng blood-smear file?"
        )
    stack = np.asarray(mat["imlow_HDR"])
    if stack.ndim != 3 or not 1 <= stack.shape[2] <= 225:
        raise DatasetError(f"imlow_HDR in {mat_path} has shape {stack.shape}, expected (H, W, N) with N <= 225")
    frames = frame_stack(np.moveaxis(stack, 2, 0), "imlow_HDR", mat_path).astype(np.float32)  # MATLAB (:, :, k)
    meta = _zheng_meta(frames.shape[0], mat_path.name, mat)
    return write_dataset(out_tif, meta, frames, overwrite=overwrite)


# ----------------------------------------------------------------------- folder import

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
CSV_COLUMNS = ("file", "row", "col", "exposure_ms", "intensity")


def natural_key(name: str) -> list[Any]:
    """Sort key that puts frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """One grey frame from a TIFF or PNG file, in its own bit depth (16-bit PNG stays 16-bit)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            from uafp_gui.io.tiff import quiet_tifffile, walk_pages
            from uafp_gui.limits import MAX_FRAME_PIXELS

            with quiet_tifffile(), tifffile.TiffFile(path) as tif:
                pages, broken, more = walk_pages(tif, path, path.stat().st_size, 1)  # bounded, loop-checked
                if more:
                    raise DatasetError(
                        f"{path} holds several pages: a folder import takes one frame "
                        "per file (read a stack with `uafp reconstruct` + a sidecar JSON instead)"
                    )
                if broken or not pages:
                    raise DatasetError(f"{path} is a corrupt TIFF (its first page is cut short or broken)")
                page = tif.pages.first
                if int(np.prod(page.shape, dtype=np.float64)) > MAX_FRAME_PIXELS:
                    raise DatasetError(
                        f"{path} is {page.shape} pixels:"
                        f" more than a frame may have ({MAX_FRAME_PIXELS})"
                    )
                image = page.asarray()
        elif suffix == ".png":
            from PIL import Image

            from uafp_gui.limits import MAX_FRAME_PIXELS

            with Image.open(path) as png:
                if png.width * png.height > MAX_FRAME_PIXELS:
                    raise DatasetError(f"{path} is {png.width}x{png.height} pixels: more than a frame may have")
                if png.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                    raise DatasetError(f"{path} is a {png.mode} PNG: frames must be grey-level (8 or 16 bit)")
                image = np.array(png)
        else:
            raise DatasetError(f"{path}: unsupported image type {suffix!r}; use TIFF or PNG")
    except DatasetError:
        raise
    except PARSER_ERRORS as error:
        raise DatasetError(f"cannot read image {path}: {one_line(error)}") from None
    except Exception as error:  # Pillow's DecompressionBombError (an Exception): nothing else is expected
        if type(error).__name__ != "DecompressionBombError":
            raise
        raise DatasetError(f"cannot read image {path}: {one_line(error)}") from None
    if image.ndim != 2:
        raise DatasetError(f"{path} has shape {image.shape}: frames must be 2-D grey images (convert RGB to grey)")
    return _check_intensities(image, path)


def _check_intensities(image: np.ndarray, path: Path) -> np.ndarray:
    """Frames are measured intensities, in their stored pixel type (`uafp_gui.io.pixels`)."""
    if image.size == 0 and image.dtype.kind in "uif":
        raise DatasetError(f"{path} is an empty image")
    return positive_somewhere(stored_pixels(image, str(path)), str(path))


def _load_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"geometry file not found: {path}: check the path")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from None
    if len(raw) > 2**20:
        raise DatasetError(f"{path} is {len(raw)} bytes: a geometry file is a few lines of dataset fields")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}):"
            f" save it as UTF-8"
        ) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise DatasetError(
                f"{path} is YAML but PyYAML is not installed: `pip install pyyaml` or write the geometry as JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise DatasetError(f"{path} is not valid YAML: {' '.join(str(error).split())[:200]}") from None
        except (RecursionError, ValueError, OverflowError) as error:
            raise DatasetError(
                f"{path} is not a plain YAML mapping of dataset "
                f"fields ({type(error).__name__})"
            ) from None
    else:
        from uafp_gui.io.jsontext import parse_json

        data = parse_json(text, str(path))
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold one object of dataset fields (wavelength_um, ...)")
    return data


def _read_led_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"LED list not found: {path}: check the path")
    try:
        return _parse_led_csv(path)
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}):"
            f" save it as UTF-8 CSV"
        ) from None
    except csv.Error as error:
        raise DatasetError(f"{path} is not a readable CSV file ({error}): one short line per frame") from None
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from None


def _parse_led_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        header = [name.strip().lower() for name in (reader.fieldnames or [])]
        if "row" not in header or "col" not in header:
            raise DatasetError(
                f"{path} needs a header line with columns row,col (optional: file, exposure_ms, "
                f"intensity); got {reader.fieldnames}"
            )
        unknown = [name for name in header if name not in CSV_COLUMNS]
        if unknown:
            raise DatasetError(f"{path}: unknown column(s) {unknown}; allowed are {', '.join(CSV_COLUMNS)}")
        if len(set(header)) != len(header):
            raise DatasetError(f"{path}: a column appears twice in the header {header}")
        reader.fieldnames = header
        rows = []
        for line_number, record in enumerate(reader, start=2):
            if line_number > MAX_CSV_LINES:
                raise DatasetError(f"{path} has more than {MAX_CSV_LINES} lines: more frames than a dataset may hold")
            if None in record or any(value is None for value in record.values()):
                raise DatasetError(f"{path} line {line_number}: expected {len(header)} values ({', '.join(header)})")
            if all(not value.strip() for value in record.values()):
                continue  # blank line
            record = {key: value.strip() for key, value in record.items()}
            record["_line"] = str(line_number)
            rows.append(record)
    if not rows:
        raise DatasetError(f"{path} lists no frames: one line per frame after the header")
    return rows


def _csv_number(record: dict[str, str], key: str, path: Path, integer: bool = False) -> float:
    text = record[key]
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise DatasetError(f"{path} line {record['_line']}: {key} must be {kind} (got {text!r})") from None


def _inside(folder: Path, name: str, where: str) -> Path:
    """`folder / name`, refused unless it stays inside `folder` (no absolute path, no `..`, no
    link leading out): an LED list must not make the importer read files elsewhere."""
    if "\x00" in name or Path(name).is_absolute() or Path(name).anchor or ".." in Path(name).parts:
        raise DatasetError(
            f"{where}: file {name[:80]!r} is not a plain name inside {folder}: name the images relative to that folder"
        )
    root = folder.resolve()
    path = (folder / name).resolve()
    if path != root and root not in path.parents:
        raise DatasetError(
            f"{where}: file {name[:80]!r} leads outside {folder} (a link?):"
            f" copy the image into the folder"
        )
    return path


def import_folder(
    folder: str | os.PathLike[str],
    led_csv: str | os.PathLike[str],
    geometry: str | os.PathLike[str],
    out_tif: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Build a dataset from single-frame images, an LED list and a geometry file.

    `led_csv` has a header and one line per frame: `row,col` (0-based LED index, spec axes)
    and optionally `file` (image name inside `folder`; lines naming the same file add LEDs to
    that frame, for multiplexed illumination), `exposure_ms`, `intensity`. Without a `file`
    column the folder's TIFF/PNG images, in natural order (frame2 before frame10), are the
    frames in CSV order. `geometry` (JSON, or YAML with PyYAML) holds the dataset fields
    except `frames` (wavelength_um, objective_na, ...), plus an optional default
    `exposure_ms` for lines that give none.
    """
    folder, led_csv, geometry = Path(folder), Path(led_csv), Path(geometry)
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}: check the path")
    fields = _load_mapping(geometry)
    if "frames" in fields:
        raise DatasetError(f"{geometry} must not list frames: they come from {led_csv.name}")
    default_exposure = fields.pop("exposure_ms", None)
    rows = _read_led_csv(led_csv)

    # group lines into frames: (image path, [(row, col)], exposure, intensity)
    frame_files: list[Path] = []
    frame_leds: list[list[tuple[int, int]]] = []
    frame_settings: list[tuple[float, float]] = []
    by_file: dict[str, int] = {}
    for record in rows:
        led = (int(_csv_number(record, "row", led_csv, True)), int(_csv_number(record, "col", led_csv, True)))
        if record.get("exposure_ms"):
            exposure = _csv_number(record, "exposure_ms", led_csv)
        elif default_exposure is not None:
            exposure = default_exposure
        else:
            raise DatasetError(
                f"{led_csv} line {record['_line']}: no exposure_ms; add an exposure_ms column "
                f'or a default "exposure_ms" to {geometry.name}'
            )
        intensity = _csv_number(record, "intensity", led_csv) if record.get("intensity") else 1.0
        if "file" in record:
            name = record["file"]
            if not name:
                raise DatasetError(f"{led_csv} line {record['_line']}: the file column is empty")
            if name in by_file:
                index = by_file[name]
                if frame_settings[index] != (exposure, intensity):
                    raise DatasetError(
                        f"{led_csv} line {record['_line']}: {name} is listed again with a "
                        "different exposure_ms/intensity; one frame has one exposure"
                    )
                frame_leds[index].append(led)
                continue
            path = _inside(folder, name, f"{led_csv} line {record['_line']}")
            if not path.is_file():
                raise DatasetError(f"{led_csv} line {record['_line']}: image {name} not found in {folder}")
            by_file[name] = len(frame_files)
            frame_files.append(path)
        frame_leds.append([led])
        frame_settings.append((exposure, intensity))

    if not frame_files:
        images = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: natural_key(p.name),
        )
        if len(images) != len(frame_leds):
            raise DatasetError(
                f"{folder} holds {len(images)} TIFF/PNG images but {led_csv.name} lists "
                f"{len(frame_leds)} frames: give one CSV line per image, or add a file column"
            )
        frame_files = images

    meta_fields = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **fields}
    meta_fields["frames"] = [
        {"leds": [list(led) for led in leds], "exposure_ms": exposure, "intensity": intensity}
        for leds, (exposure, intensity) in zip(frame_leds, frame_settings, strict=True)
    ]
    meta_fields.setdefault("software", SOFTWARE_NAME)
    meta_fields.setdefault("notes", f"Imported from {folder.name}/ with {led_csv.name}")
    try:
        meta = DatasetMeta.from_dict(meta_fields)
    except DatasetError as error:
        raise DatasetError(f"{geometry.name} + {led_csv.name}: {error}") from None

    frames = [read_image(path) for path in frame_files]
    for path, frame in zip(frame_files, frames, strict=True):
        if frame.shape != frames[0].shape:
            raise DatasetError(
                f"{path} has shape {frame.shape} but {frame_files[0].name} has "
                f"{frames[0].shape}: all frames must be the same size"
            )
    stack = np.stack(frames).astype(common_dtype(frame.dtype for frame in frames))
    return write_dataset(out_tif, meta, stack, overwrite=overwrite)
