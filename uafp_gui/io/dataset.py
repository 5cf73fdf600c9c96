"""Raw FP datasets (docs/dataset_format.md section 1): typed metadata, reading, validating and writing.

A dataset is one multi-page TIFF of N frames, shape (N, H, W), uint16 or float32, plus one JSON
object of metadata (`DatasetMeta`).

How the JSON is stored: files this project writes carry the complete metadata JSON - every
*planned* frame, not only those already acquired - as the ImageDescription tag of the first
TIFF page; later pages carry no description. The file is otherwise a plain multi-page
grey-level TIFF (no OME-XML, no ImageJ hyperstack header), so Fiji, napari or any TIFF library
open it as an ordinary image stack and the JSON stays readable with any TIFF tag viewer.
A sidecar `<stem>.json` next to the TIFF is also accepted and, when present, wins over the
embedded copy: that is how third-party plain TIFF stacks are described.

Frames are written one at a time by `DatasetWriter` (see `tiff`): each page's pixels
and directory are on disk before the page is linked into the file, so a run killed at any
moment (even `kill -9`) leaves a valid TIFF holding the first k complete frames. Reading such a
file gives a partial `Dataset` (`complete=False`, metadata truncated to the first k frames,
a `PartialDatasetWarning`); `DatasetWriter(..., resume=True)` continues it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import struct
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui import __version__
from uafp_gui.errors import DatasetError
from uafp_gui.io.tiff import CLASSIC_TIFF_LIMIT_BYTES, TiffStackWriter
from uafp_gui.model import (
    HINTS,
    MAXIMA,
    OPTICS_FIELDS,
    HasOptics,
    Optics,
    RowCol,
    at_most,
    integer,
    number,
    pair,
    positive,
    row_col_pairs,
    text,
)

FORMAT_NAME = "uafp-dataset"
FORMAT_VERSION = 1
SOFTWARE_NAME = f"uafp_gui {__version__}"

# Limits checked before anything is allocated (README, "Limits"): a frame's pixel count, the
# memory a whole dataset may take once decoded (override with the environment variable), the
# frames a dataset may hold and the LED array's size; all documented in uafp_gui.limits.
from uafp_gui.limits import (  # noqa: E402, F401  (re-exported: readers and tests use these names)
    DEFAULT_MAX_DATASET_BYTES,
    MAX_DATASET_BYTES_ENV,
    MAX_FRAME_PIXELS,
    MAX_FRAMES,
    MAX_LED_ARRAY_SIDE,
    max_dataset_bytes,
)


class PartialDatasetWarning(UserWarning):
    """A dataset holds fewer frames than its metadata plans (an interrupted acquisition)."""


# --------------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Glass:
    """A slide between the LED array and the sample; it refracts the illumination."""

    thickness_mm: float
    refractive_index: float

    def __post_init__(self) -> None:
        thickness = number(self.thickness_mm, "glass.thickness_mm", "slide thickness in mm")
        if thickness < 0:
            raise DatasetError(
                f"glass.thickness_mm must be >= 0 (got {self.thickness_mm!r}): "
                "give the slide thickness in millimetres, e.g. 1.0"
            )
        index = number(self.refractive_index, "glass.refractive_index", "e.g. 1.52")
        if index < 1:
            raise DatasetError(
                f"glass.refractive_index must be >= 1 (got {self.refractive_index!r}): typical slide glass is 1.52"
            )
        object.__setattr__(self, "thickness_mm", thickness)
        object.__setattr__(self, "refractive_index", index)

    def to_dict(self) -> dict[str, float]:
        return {"thickness_mm": self.thickness_mm, "refractive_index": self.refractive_index}

    @classmethod
    def from_dict(cls, data: Any) -> Glass:
        if not isinstance(data, Mapping):
            raise DatasetError(f"glass must be an object {{'thickness_mm': t, 'refractive_index': n}} (got {data!r})")
        for key in ("thickness_mm", "refractive_index"):
            if key not in data:
                raise DatasetError(f"glass.{key} is missing: glass needs thickness_mm and refractive_index")
        unknown = set(data) - {"thickness_mm", "refractive_index"}
        if unknown:
            raise DatasetError(
                f"glass has unknown fields {sorted(unknown)}: only thickness_mm and refractive_index are allowed"
            )
        return cls(data["thickness_mm"], data["refractive_index"])


@dataclass(frozen=True)
class FrameSpec:
    """One frame's illumination: the LEDs lit ([row, col] indices), exposure and LED drive.

    `leds` are stored as integer index pairs (integral floats such as 3.0 are accepted).
    `extra` keeps unknown per-frame fields so they are written back unchanged.
    """

    leds: tuple[RowCol, ...]
    exposure_ms: float
    intensity: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict, compare=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "leds", row_col_pairs(self.leds, "leds"))
        object.__setattr__(
            self,
            "exposure_ms",
            at_most(positive(self.exposure_ms, "exposure_ms", "give the exposure in milliseconds"),
                     MAXIMA["exposure_ms"], "exposure_ms", "give the exposure in milliseconds"),
        )
        object.__setattr__(
            self,
            "intensity",
            at_most(positive(self.intensity, "intensity", "relative LED drive, 1 for full brightness"),
                     MAXIMA["intensity"], "intensity", "relative LED drive, 1 for full brightness"),
        )
        try:
            json.dumps(self.extra, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise DatasetError(f"per-frame fields must be plain finite JSON values: {error}") from None
        object.__setattr__(self, "extra", dict(self.extra))

    @property
    def led_count(self) -> int:
        return len(self.leds)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "leds": [[row, col] for row, col in self.leds],
            "exposure_ms": self.exposure_ms,
        }
        if self.intensity != 1.0:
            out["intensity"] = self.intensity
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any, index: int = 0) -> FrameSpec:
        where = f"frames[{index}]"
        if not isinstance(data, Mapping):
            raise DatasetError(f"{where} must be an object {{'leds': [[row, col]], 'exposure_ms': t}} (got {data!r})")
        for key in ("leds", "exposure_ms"):
            if key not in data:
                raise DatasetError(
                    f"{where}.{key} is missing: every frame needs 'leds' (the [row, col] of each "
                    "lit LED) and 'exposure_ms'"
                )
        extra = {k: v for k, v in data.items() if k not in ("leds", "exposure_ms", "intensity")}
        try:
            return cls(
                leds=row_col_pairs(data["leds"], f"{where}.leds"),
                exposure_ms=data["exposure_ms"],
                intensity=data.get("intensity", 1.0),
                extra=extra,
            )
        except DatasetError as error:
            message = str(error)
            if not message.startswith(where):
                message = f"{where}.{message}"
            raise DatasetError(message) from None


_REQUIRED = ("format", "version", *OPTICS_FIELDS, "frames")
_OPTIONAL = (
    "tile_center_um",
    "camera_offset",
    "bit_depth",
    "glass",
    "sample",
    "notes",
    "created",
    "software",
)
_KNOWN = frozenset(_REQUIRED + _OPTIONAL)

@dataclass(frozen=True)
class DatasetMeta(HasOptics):
    """Metadata of a raw dataset, exactly the fields of docs/dataset_format.md section 1.

    The nominal microscope is one `Optics` (its fields read as `meta.wavelength_um` etc., and
    are flat top-level fields in the JSON). Constructing one validates it (a `DatasetError`
    names the bad field and the fix). Unknown top-level fields read from a file are kept in
    `extra` and written back.
    """

    optics: Optics
    frames: tuple[FrameSpec, ...]
    tile_center_um: tuple[float, float] = (0.0, 0.0)
    camera_offset: float = 0.0
    bit_depth: int | None = None
    glass: Glass | None = None
    sample: str = ""
    notes: str = ""
    created: str = ""
    software: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        setter = object.__setattr__
        if isinstance(self.optics, Mapping):
            setter(self, "optics", Optics.from_dict(self.optics))
        elif not isinstance(self.optics, Optics):
            raise DatasetError(f"optics must be an Optics (got {type(self.optics).__name__})")
        setter(
            self,
            "tile_center_um",
            pair(
                self.tile_center_um,
                "tile_center_um",
                "give the image centre [x, y] in micrometres relative to the optical axis",
            ),
        )
        offset = number(self.camera_offset, "camera_offset", "dark level in counts")
        at_most(offset, MAXIMA["camera_offset"], "camera_offset", "dark level in counts")
        for value in self.tile_center_um:
            at_most(value, MAXIMA["tile_center_um"], "tile_center_um", "check the units")
        if offset < 0:
            raise DatasetError(
                f"camera_offset must be >= 0 (got {self.camera_offset!r}): give the camera's "
                "dark level in counts, 0 if unknown"
            )
        setter(self, "camera_offset", offset)
        if self.bit_depth is not None:
            depth = integer(self.bit_depth, "bit_depth", "camera bit depth, e.g. 12")
            if not 1 <= depth <= 32:
                raise DatasetError(
                    f"bit_depth must be between 1 and 32 (got {self.bit_depth!r}): give the "
                    "camera's bit depth, e.g. 12, or leave it out"
                )
            setter(self, "bit_depth", depth)
        if self.glass is not None and not isinstance(self.glass, Glass):
            setter(self, "glass", Glass.from_dict(self.glass))
        for name in ("sample", "notes", "created", "software"):
            text(getattr(self, name), name)

        if len(self.frames) > MAX_FRAMES:
            raise DatasetError(
                f"frames lists {len(self.frames)} frames, more than the {MAX_FRAMES} a dataset may hold: "
                "split the acquisition into several datasets"
            )
        frames = tuple(
            frame if isinstance(frame, FrameSpec) else FrameSpec.from_dict(frame, k)
            for k, frame in enumerate(self.frames)
        )
        if not frames:
            raise DatasetError("frames is empty: list one {'leds': [[row, col]], 'exposure_ms': t} per frame")
        rows_i, cols_i = self.optics.led_array_shape
        for k, frame in enumerate(frames):
            for j, (row, col) in enumerate(frame.leds):
                if not (0 <= row < rows_i and 0 <= col < cols_i):
                    raise DatasetError(
                        f"frames[{k}].leds[{j}] = [{row}, {col}] is outside the "
                        f"{rows_i}x{cols_i} LED array: indices are 0-based [row, col] with "
                        f"row < {rows_i} and col < {cols_i}; check led_array_shape"
                    )
        setter(self, "frames", frames)

        clash = _KNOWN.intersection(self.extra)
        if clash:
            raise DatasetError(f"extra must not contain spec fields {sorted(clash)}: set them directly")
        try:
            json.dumps(self.extra, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise DatasetError(f"extra fields must be plain JSON values: {error}") from None
        setter(self, "extra", dict(self.extra))

    # ------------------------------------------------------------------ derived quantities
    @property
    def frame_count(self) -> int:
        return len(self.frames)

    @property
    def exposure_scale(self) -> np.ndarray:
        """Per frame `exposure_ms * intensity`, the divisor that makes frames comparable."""
        return np.array([f.exposure_ms * f.intensity for f in self.frames], dtype=np.float64)

    # ------------------------------------------------------------------------- helpers
    def replace(self, **changes: Any) -> DatasetMeta:
        """A validated copy with some fields changed (`dataclasses.replace`); the optics fields
        may be given by their own names (`meta.replace(wavelength_um=0.63)`)."""
        optics, rest = Optics.split(changes)
        if optics:
            rest["optics"] = self.optics.replace(**optics)
        return dataclasses.replace(self, **rest)

    def with_frames(self, frames: Iterable[FrameSpec]) -> DatasetMeta:
        return dataclasses.replace(self, frames=tuple(frames))

    def stamped(self) -> DatasetMeta:
        """A copy with `created` (UTC, ISO 8601) and `software` filled in where empty."""
        return dataclasses.replace(
            self,
            created=self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            software=self.software or SOFTWARE_NAME,
        )

    # --------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            **self.optics.to_dict(),
            "tile_center_um": list(self.tile_center_um),
            "camera_offset": self.camera_offset,
        }
        if self.bit_depth is not None:
            out["bit_depth"] = self.bit_depth
        if self.glass is not None:
            out["glass"] = self.glass.to_dict()
        for name in ("sample", "notes", "created", "software"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        out.update(self.extra)
        out["frames"] = [frame.to_dict() for frame in self.frames]
        return out

    def to_json(self, indent: int | None = None) -> str:
        """JSON text (ASCII only, non-ASCII characters escaped)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> DatasetMeta:
        """Validate a parsed JSON object; raises `DatasetError` naming the field and the fix."""
        if not isinstance(data, Mapping):
            raise DatasetError(f"dataset metadata must be a JSON object (got {type(data).__name__})")
        if "format" not in data:
            raise DatasetError(f'format is missing: dataset metadata must contain "format": "{FORMAT_NAME}"')
        if data["format"] != FORMAT_NAME:
            raise DatasetError(
                f"format is {data['format']!r}, expected {FORMAT_NAME!r}: this is not a uafp "
                "dataset description (see docs/dataset_format.md)"
            )
        if "version" not in data:
            raise DatasetError(f'version is missing: add "version": {FORMAT_VERSION}')
        version = data["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise DatasetError(f"version must be the integer {FORMAT_VERSION} (got {version!r})")
        if version > FORMAT_VERSION:
            raise DatasetError(
                f"version {version} is newer than this software reads ({FORMAT_VERSION}): update uafp_gui"
            )
        if version != FORMAT_VERSION:
            raise DatasetError(f"version must be {FORMAT_VERSION} (got {version})")
        for key in _REQUIRED:
            if key not in data:
                hint = HINTS.get(key, "see docs/dataset_format.md for the required fields")
                raise DatasetError(f"{key} is missing: {hint}")
        frames = data["frames"]
        if isinstance(frames, (str, bytes, Mapping)) or not isinstance(frames, Sequence):
            raise DatasetError(f"frames must be a list of frame objects (got {type(frames).__name__})")
        kwargs: dict[str, Any] = {"optics": Optics(**{key: data[key] for key in OPTICS_FIELDS})}
        kwargs.update({key: data[key] for key in _OPTIONAL if key in data})
        if kwargs.get("glass") is not None:
            kwargs["glass"] = Glass.from_dict(kwargs["glass"])
        kwargs["frames"] = tuple(FrameSpec.from_dict(frame, k) for k, frame in enumerate(frames))
        kwargs["extra"] = {k: v for k, v in data.items() if k not in _KNOWN}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> DatasetMeta:
        return cls.from_dict(_parse_json(text, source))


def _parse_json(text: str | bytes, source: str) -> Any:
    from uafp_gui.io.jsontext import parse_json

    return parse_json(text, source, DatasetError)


def _embeddable_json(meta: DatasetMeta) -> str:
    # tifffile treats a description containing '"shape":' as its own shaped-array metadata;
    # a space before the colon keeps the JSON identical in meaning but not mistaken for that.
    return meta.to_json().replace('"shape":', '"shape" :')


# ------------------------------------------------------------------------------- dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """Frames (N, H, W) uint16 or float32 in acquisition order, with their metadata.

    `complete` is False for an interrupted acquisition; `meta.frames` then describes only the
    N frames present (`planned_frame_count` is how many the acquisition intended).
    """

    meta: DatasetMeta
    frames: np.ndarray
    path: Path | None = None
    complete: bool = True
    planned_frame_count: int | None = None

    def __post_init__(self) -> None:
        if self.frames.ndim != 3 or self.frames.shape[0] != len(self.meta.frames):
            raise DatasetError(
                f"frames array {self.frames.shape} does not match {len(self.meta.frames)} "
                "frame entries: expected shape (N, H, W)"
            )
        if self.planned_frame_count is None:
            object.__setattr__(self, "planned_frame_count", len(self.meta.frames))

    @property
    def frame_count(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (int(self.frames.shape[1]), int(self.frames.shape[2]))

    def normalised_frames(self, dtype: Any = np.float32) -> np.ndarray:
        """Frames made comparable across exposures.

        Frame k becomes `(frames[k] - camera_offset) / (exposure_ms[k] * intensity[k])`, i.e.
        dark-subtracted counts per millisecond at full LED drive. Values are not clipped, so
        noise around the dark level can go slightly negative.
        """
        scale = self.meta.exposure_scale.astype(dtype)[:, None, None]
        out = self.frames.astype(dtype, copy=True)
        out -= self.meta.camera_offset
        out /= scale
        return out


# ------------------------------------------------------------------------------ reading


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar JSON of a TIFF: same folder and stem, `.json` suffix."""
    return Path(path).with_suffix(".json")


def _resolve_tiff_path(path: Path) -> Path:
    if path.suffix.lower() == ".json":
        for suffix in (".tif", ".tiff", ".TIF", ".TIFF"):
            candidate = path.with_suffix(suffix)
            if candidate.exists():
                return candidate
        raise DatasetError(f"{path} is a sidecar JSON but no TIFF of the same stem is next to it")
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}: check the path")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder: give the dataset's .tif file")
    return path


_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _check_tiff_header(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 and any(magic.startswith(head) for magic in _TIFF_MAGICS):
        raise DatasetError(f"{path} is cut short ({len(head)} bytes): no frame was written; acquire again")
    head = head[:4]
    if head not in _TIFF_MAGICS:
        kind = next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), "not a TIFF file")
        raise DatasetError(
            f"{path} is {kind}: datasets are multi-page TIFF stacks (docs/dataset_format.md); use "
            "`uafp import folder` for a folder of PNG/TIFF frames, `uafp import zheng` for the MAT file"
        )


# What a file that is not a TIFF probably is: said in words, never as raw bytes.
_OTHER_FORMATS = (
    (b"\x89PNG", "a PNG image, not a TIFF stack"),
    (b"\xff\xd8\xff", "a JPEG image, not a TIFF stack"),
    (b"MATL", "a MATLAB file, not a TIFF stack"),
    (b"\x89HDF", "an HDF5 (MATLAB v7.3) file, not a TIFF stack"),
    (b"PK\x03\x04", "a ZIP archive, not a TIFF stack"),
    (b"{", "a JSON file, not a TIFF stack"),
)


def _as_frame(array: np.ndarray, path: Path, index: int) -> np.ndarray:
    """Check one page and convert it to uint16 or float32 without losing information."""
    if np.iscomplexobj(array):
        raise DatasetError(
            f"frame {index} of {path} is complex ({array.dtype}): raw frames are real "
            "intensities; store |field|^2 as float32"
        )
    squeezed = array.squeeze() if array.ndim > 2 else array
    if squeezed.ndim != 2:
        extra = (
            " (RGB or several samples per pixel: save grey-level frames, one page per frame; "
            "with tifffile pass photometric='minisblack')"
            if array.ndim == 3
            else ""
        )
        raise DatasetError(f"frame {index} of {path} has shape {array.shape}, expected a 2-D grey image{extra}")
    kind = squeezed.dtype.kind
    if kind == "b":
        raise DatasetError(f"frame {index} of {path} is boolean: store intensities")
    if squeezed.dtype in (np.uint8, np.uint16):
        return squeezed.astype(np.uint16, copy=False)
    if kind in "ui":
        if squeezed.size and squeezed.min() < 0:
            raise DatasetError(
                f"frame {index} of {path} holds negative counts (min {squeezed.min()}): camera frames count "
                "photons; store dark-subtracted frames as float32"
            )
        if squeezed.size and squeezed.max() <= 65535:
            return squeezed.astype(np.uint16)
        return squeezed.astype(np.float32)
    if kind == "f":
        out = squeezed.astype(np.float32, copy=False)
        finite = np.isfinite(out)
        if not finite.all():
            bad = int(out.size - np.count_nonzero(finite))
            raise DatasetError(
                f"frame {index} of {path} contains {bad} NaN/inf pixel(s): replace them (e.g. "
                "with the dark level) or re-export the frame"
            )
        return out
    raise DatasetError(f"frame {index} of {path} has unsupported pixel type {squeezed.dtype}")


_TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}


def _ifd_end(fh: Any, offset: int, tiff: Any) -> tuple[int, int]:
    """(end of an IFD including its out-of-line tag values, position of its next-IFD pointer).
    A cut description shows here: tifffile drops such a tag silently."""
    byteorder = tiff.byteorder
    fh.seek(offset)
    head = fh.read(tiff.tagnosize)
    if len(head) < tiff.tagnosize:
        return 2**63, 0
    count = struct.unpack(tiff.tagnoformat, head)[0]
    table = fh.read(count * tiff.tagsize)
    if len(table) < count * tiff.tagsize:
        return 2**63, 0
    link_position = offset + tiff.tagnosize + count * tiff.tagsize
    end = link_position + tiff.offsetsize
    inline = tiff.tagoffsetthreshold
    for k in range(count):
        entry = table[k * tiff.tagsize : (k + 1) * tiff.tagsize]
        _, type_code = struct.unpack(byteorder + "HH", entry[:4])
        value_count = struct.unpack(tiff.offsetformat, entry[4 : 4 + tiff.offsetsize])[0]
        size = value_count * _TIFF_TYPE_SIZES.get(type_code, 1)
        if size > inline:
            value_offset = struct.unpack(tiff.offsetformat, entry[4 + tiff.offsetsize :])[0]
            end = max(end, value_offset + size)
    return end, link_position


@contextlib.contextmanager
def quiet_tifffile():
    """Silence tifffile's own log while we read: the problems it logs reach the user as our errors."""
    log = logging.getLogger("tifffile")
    previous = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(previous)


class _Page:
    """Where one complete page lies in the file (for reading it, or appending after it)."""

    __slots__ = ("index", "offset", "shape", "dtype", "end", "link_position", "tiff_page")

    def __init__(self, index: int, offset: int, shape: tuple[int, ...], dtype: np.dtype, end: int,
                 link_position: int, tiff_page: Any) -> None:
        self.index, self.offset, self.shape, self.dtype = index, offset, shape, dtype
        self.end, self.link_position, self.tiff_page = end, link_position, tiff_page


# tifffile's own errors, codec errors (zlib.error, imagecodecs' RuntimeError subclasses) and the
# few Python errors a corrupt structure makes tifffile raise: all mean "this page is broken".
def _page_errors() -> tuple[type[BaseException], ...]:
    import zlib

    import tifffile

    return (tifffile.TiffFileError, OSError, ValueError, TypeError, KeyError, IndexError, struct.error,
            zlib.error, RuntimeError, NotImplementedError, EOFError, OverflowError)


def _check_frame_size(shape: tuple[int, ...], dtype: np.dtype, path: Path, index: int, pages: int) -> None:
    """Refuse, before decoding, a page or a stack larger than the documented limits."""
    pixels = math.prod(int(n) for n in shape) if shape else 0
    if pixels > MAX_FRAME_PIXELS:
        raise DatasetError(
            f"frame {index} of {path} is {'x'.join(str(n) for n in shape)} pixels, more than the "
            f"{MAX_FRAME_PIXELS} pixels a frame may have: crop the frames (--roi) or bin the camera"
        )
    total = pixels * max(1, np.dtype(dtype).itemsize) * pages
    limit = max_dataset_bytes()
    if total > limit:
        raise DatasetError(
            f"{path} would need {total / 2**30:.1f} GiB in memory ({pages} frames of "
            f"{'x'.join(str(n) for n in shape)} {np.dtype(dtype).name}), more than the "
            f"{limit / 2**30:.1f} GiB limit: crop or bin the frames, or raise {MAX_DATASET_BYTES_ENV}"
        )


def _walk_pages(tif: Any, path: Path, file_size: int, max_pages: int | None) -> tuple[list[Any], bool, bool]:
    """The complete pages of an open TiffFile, in chain order, never more than `max_pages` + 1.

    Returns (pages, truncated, more): `truncated` when the chain ends in a page that is cut short,
    corrupt or loops back to a page already seen (kept pages are the ones before it); `more` when
    a page beyond `max_pages` exists (it is not read).
    """
    pages: list[Any] = []
    seen: set[int] = set()
    errors = _page_errors()
    index = 0
    while True:
        if max_pages is not None and index > max_pages:
            return pages, False, True
        try:
            page = tif.pages.get(index) if hasattr(tif.pages, "get") else tif.pages[index]
        except IndexError:
            return pages, False, False
        except errors:
            return pages, True, False
        if page is None:
            return pages, False, False
        offset = int(page.offset)
        if offset in seen:  # the chain loops back: a corrupt file, never an endless one
            return pages, True, False
        seen.add(offset)
        if max_pages is not None and index == max_pages:
            return pages, False, True
        try:
            ends = [int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)]
            ifd_end, link_position = _ifd_end(tif.filehandle, offset, tif.tiff)
            shape = tuple(int(n) for n in page.shape)  # a corrupt size tag can make these anything
            dtype = np.dtype(page.dtype)
        except errors:
            return pages, True, False
        if len(ends) == 0 or max(ends) > file_size or ifd_end > file_size:
            return pages, True, False
        pages.append(_Page(index, offset, shape, dtype, max(max(ends), ifd_end), link_position, page))
        index += 1


def read_tiff_frames(
    path: str | os.PathLike[str], max_pages: int | None = None
) -> tuple[list[np.ndarray], str | None, bool]:
    """Every intact page of a TIFF (converted by `_as_frame`), page 0's description, truncated.

    A file cut short (killed writer, partial copy) or whose page chain loops yields the pages
    that are complete and `truncated=True`; a file that is not a TIFF at all raises
    `DatasetError`. With `max_pages`, a file holding more pages raises `DatasetError` as soon
    as page `max_pages + 1` is found (the extra pages are never read). Sizes are checked
    against `MAX_FRAME_PIXELS` and `max_dataset_bytes()` before any page is decoded.
    """
    frames, description, truncated, _ = _read_frames(Path(path), max_pages)
    return frames, description, truncated


def _open_tiff(path: Path) -> Any:
    import tifffile

    _check_tiff_header(path)
    try:
        return tifffile.TiffFile(path)
    except _page_errors() as error:  # header fine but first directory missing or broken
        raise DatasetError(
            f"{path} holds no complete frame ({error}): the acquisition was interrupted "
            "before the first frame was written, or the file is corrupt"
        ) from None


def _first_description(path: Path) -> str | None:
    """Page 0's ImageDescription; `DatasetError` when page 0 is not complete."""
    with quiet_tifffile(), _open_tiff(path) as tif:
        pages, _, _ = _walk_pages(tif, path, path.stat().st_size, 1)
        if not pages:
            raise DatasetError(
                f"{path} holds no complete frame: the acquisition was interrupted before the first "
                "frame was written, or the file is corrupt"
            )
        try:
            return pages[0].tiff_page.description or None
        except _page_errors():
            return None


def _read_frames(path: Path, max_pages: int | None) -> tuple[list[np.ndarray], str | None, bool, list[_Page]]:
    file_size = path.stat().st_size
    frames: list[np.ndarray] = []
    description: str | None = None
    with quiet_tifffile():  # a truncated chain is reported by us, once
        with _open_tiff(path) as tif:
            pages, truncated, more = _walk_pages(tif, path, file_size, max_pages)
            if more:
                raise DatasetError(
                    f"{path} holds more than {max_pages} frames but its metadata lists only {max_pages}: add "
                    "the missing entries to 'frames' (one per frame, in acquisition order) or remove extra pages"
                )
            if pages:
                _check_frame_size(pages[0].shape, pages[0].dtype, path, 0, len(pages))
            for page in pages:
                _check_frame_size(page.shape, page.dtype, path, page.index, 1)
                if page.index == 0:
                    description = page.tiff_page.description or None
                try:
                    array = page.tiff_page.asarray()
                except _page_errors():
                    truncated = True
                    pages = pages[: page.index]
                    break
                frame = _as_frame(array, path, page.index)
                if frames and frame.shape != frames[0].shape:
                    raise DatasetError(
                        f"frame {page.index} of {path} has shape {frame.shape} but frame 0 has "
                        f"{frames[0].shape}: all frames of a dataset must be the same size"
                    )
                if frames and frame.dtype != frames[0].dtype:
                    frame = frame.astype(np.float32)
                    frames = [f.astype(np.float32) for f in frames]
                frames.append(frame)
    if not frames:
        raise DatasetError(
            f"{path} holds no complete frame: the acquisition was interrupted before the first "
            "frame was written, or the file is corrupt"
        )
    return frames, description, truncated, pages


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read and validate a dataset TIFF (embedded JSON, or a sidecar `<stem>.json` which wins).

    Raises `DatasetError` naming the problem. A file with fewer frames than its metadata plans
    opens as a partial dataset (`complete=False`, `meta.frames` truncated, a
    `PartialDatasetWarning`); more frames than planned is an error, found without reading the
    extra pages. The metadata is read first, so the page walk stops at the planned count.
    """
    path = _resolve_tiff_path(Path(path))
    sidecar = sidecar_path(path)
    if sidecar.exists():
        meta = _read_sidecar(sidecar)
        _check_tiff_header(path)
    else:
        description = _first_description(path)
        source = f"embedded metadata of {path}"
        parsed = _parse_json(description, source) if description and description.lstrip().startswith("{") else None
        if not isinstance(parsed, dict) or "format" not in parsed:  # e.g. tifffile's {"shape"}
            raise DatasetError(
                f"{path} carries no uafp metadata and has no sidecar {sidecar.name}: write the "
                f"metadata JSON (docs/dataset_format.md) next to it as {sidecar.name}, or import it "
                "with `uafp import`"
            )
        try:
            meta = DatasetMeta.from_dict(parsed)
        except DatasetError as error:
            raise DatasetError(f"{source}: {error}") from None
    frames, _, truncated, _ = _read_frames(path, len(meta.frames))
    return _assemble(meta, frames, path, truncated)


def _read_sidecar(sidecar: Path) -> DatasetMeta:
    try:
        if sidecar.is_dir():
            raise DatasetError(f"sidecar {sidecar} is a folder: it must be the dataset's JSON file")
        text = sidecar.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read sidecar {sidecar}: {error}") from None
    return _meta_fromtext(text, f"sidecar {sidecar}")


def _meta_fromtext(text: str, source: str) -> DatasetMeta:
    try:
        return DatasetMeta.from_dict(_parse_json(text, source))
    except DatasetError as error:
        if str(error).startswith(source):
            raise
        raise DatasetError(f"{source}: {error}") from None


def _assemble(meta: DatasetMeta, frames: list[np.ndarray], path: Path, truncated: bool) -> Dataset:
    planned = len(meta.frames)
    found = len(frames)
    if found > planned:
        raise DatasetError(
            f"{path} holds {found} frames but its metadata lists only {planned}: add the missing "
            "entries to 'frames' (one per frame, in acquisition order) or remove extra pages"
        )
    complete = found == planned
    if not complete:
        reason = " (the file is cut short)" if truncated else ""
        warnings.warn(
            f"{path} is a partial dataset: {found} of {planned} planned frames present{reason}; "
            f"using the first {found} frame entries",
            PartialDatasetWarning,
            stacklevel=3,
        )
        meta = meta.with_frames(meta.frames[:found])
    stack = np.stack(frames, axis=0)
    return Dataset(meta=meta, frames=stack, path=path, complete=complete, planned_frame_count=planned)


def read_dataset_meta(path: str | os.PathLike[str]) -> DatasetMeta:
    """Only the metadata (sidecar or embedded, all planned frames), without reading pixels."""
    path = _resolve_tiff_path(Path(path))
    sidecar = sidecar_path(path)
    if sidecar.exists():
        return _read_sidecar(sidecar)
    description = _first_description(path)
    if not description:
        raise DatasetError(f"{path} carries no uafp metadata and has no sidecar {sidecar.name}")
    return _meta_fromtext(description, f"embedded metadata of {path}")


# ------------------------------------------------------------------------------ writing


def _storage_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind in "ui" and dtype.itemsize <= 2:
        return np.dtype(np.uint16)
    if dtype.kind == "f":
        return np.dtype(np.float32)
    raise DatasetError(f"cannot resume a dataset stored as {dtype}: write a new file")


def _to_storage(frame: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> uint16 (never downcast), other ints -> uint16 when they fit, floats ->
    float32; NaN/inf rejected."""
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise DatasetError(f"a frame must be a 2-D (H, W) array, got shape {frame.shape}")
    if np.iscomplexobj(frame):
        raise DatasetError("a frame must be real intensities, got a complex array")
    kind = frame.dtype.kind
    if frame.dtype in (np.uint8, np.uint16):
        return frame.astype(np.uint16, copy=False)
    if kind in "ui":
        if frame.size and (frame.min() < 0 or frame.max() > 65535):
            raise DatasetError(
                f"integer frame values {frame.min()}..{frame.max()} do not fit uint16: pass the frame as float32"
            )
        return frame.astype(np.uint16)
    if kind == "f":
        out = frame.astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            raise DatasetError("a frame contains NaN/inf pixels: replace them before writing")
        return out
    raise DatasetError(f"unsupported frame pixel type {frame.dtype}: use uint16 or float32")


class DatasetWriter:
    """Write a dataset frame by frame; the file is a readable dataset after every `append`.

    The complete metadata (all planned frames) goes into page 0's ImageDescription when the
    first frame is appended. Use as a context manager::

        with DatasetWriter("run.tif", meta) as writer:
            for image in camera_frames():
                writer.append(image)

    `resume=True` continues an existing partial file (the metadata stored in it wins; a `meta`
    given as well must describe the same frames); `frames_present` says how many are there.
    Without `resume`, an existing file is an error unless `overwrite=True`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: DatasetMeta | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self._fh: Any = None
        self._writer: TiffStackWriter | None = None
        self._frame_shape: tuple[int, int] | None = None
        self._dtype: np.dtype | None = None
        existing: list[np.ndarray] = []
        if resume and self.path.exists():
            existing, stored = self._read_existing(meta)
            if meta is not None and meta.frames != stored.frames:
                raise DatasetError(
                    f"cannot resume {self.path}: its metadata plans different frames than the "
                    "metadata given; resume with meta=None or write a new file"
                )
            if meta is not None and meta.to_dict() != stored.to_dict():
                warnings.warn(
                    f"resuming {self.path}: keeping the metadata stored in the file",
                    UserWarning,
                    stacklevel=2,
                )
            meta = stored
        elif self.path.exists() and not overwrite:
            raise DatasetError(
                f"{self.path} already exists: choose another name, pass overwrite=True, or "
                "resume=True to continue an interrupted acquisition"
            )
        if meta is None:
            raise DatasetError(f"no metadata for {self.path}: pass meta= (or resume=True on an existing file)")
        self.meta = meta
        self.frames_present = 0
        if existing:
            self._continue_in_place(existing)
        elif resume and self.path.exists():
            self.path.unlink()

    # Resume appends in place: the pages on disk stay where they are (no copy, no second file,
    # the file keeps its mode); only bytes after the last complete page (a half-written page)
    # are cut off, and the next page is linked after the last complete one.
    def _read_existing(self, meta: DatasetMeta | None) -> tuple[list[_Page], DatasetMeta]:
        try:
            description = _first_description(self.path)
        except DatasetError as error:
            if "holds no complete frame" not in str(error):
                raise
            description = None
        if description is None:
            if meta is None:  # killed before frame 0 was complete: nothing to recover
                raise DatasetError(
                    f"cannot resume {self.path}: it holds no complete frame and so no "
                    "metadata; pass meta= to start it again"
                )
            return [], meta
        stored = _meta_fromtext(description, f"embedded metadata of {self.path}")
        with quiet_tifffile(), _open_tiff(self.path) as tif:
            if tif.tiff.byteorder != "<":
                raise DatasetError(f"cannot resume {self.path}: it was not written by uafp (big-endian TIFF)")
            bigtiff = bool(tif.is_bigtiff)
            pages, _, more = _walk_pages(tif, self.path, self.path.stat().st_size, len(stored.frames))
        if more:
            raise DatasetError(
                f"cannot resume {self.path}: it holds more than the {len(stored.frames)} frames it plans"
            )
        for page in pages:
            _check_frame_size(page.shape, page.dtype, self.path, page.index, 1)
            if page.shape != pages[0].shape or page.dtype != pages[0].dtype or len(page.shape) != 2:
                raise DatasetError(
                    f"cannot resume {self.path}: frame {page.index} has shape {page.shape} {page.dtype}, "
                    f"frame 0 {pages[0].shape} {pages[0].dtype}; write a new file"
                )
            page.tiff_page = None  # the file is closed; only positions are kept
        self._bigtiff = bigtiff
        return pages, stored

    def _continue_in_place(self, pages: list[_Page]) -> None:
        last = pages[-1]
        try:
            self._fh = open(self.path, "r+b")  # closed in close()
        except OSError as error:
            raise DatasetError(f"cannot resume {self.path}: {error.strerror or error}") from None
        try:
            self._fh.truncate(max(page.end for page in pages))  # a half-written page, if any
            self._fh.seek(last.link_position)  # the chain ends at the last complete page
            self._fh.write(struct.pack("<Q" if self._bigtiff else "<I", 0))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as error:
            self._fh.close()
            self._fh = None
            raise DatasetError(f"cannot resume {self.path}: {error.strerror or error}") from None
        self._writer = TiffStackWriter.resume(self._fh, self._bigtiff, last.link_position, len(pages))
        self._frame_shape = (int(last.shape[0]), int(last.shape[1]))
        self._dtype = _storage_dtype(np.dtype(last.dtype))
        self.frames_present = len(pages)

    @property
    def frames_planned(self) -> int:
        return len(self.meta.frames)

    @property
    def complete(self) -> bool:
        return self.frames_present == self.frames_planned

    def append(self, frame: np.ndarray) -> int:
        """Write the next frame (flushed to the OS before returning); returns its index."""
        if self.frames_present >= self.frames_planned:
            raise DatasetError(f"{self.path}: all {self.frames_planned} planned frames are already written")
        data = _to_storage(frame)
        if self._writer is None:
            self._frame_shape = data.shape
            self._dtype = data.dtype
            planned_bytes = data.nbytes * self.frames_planned
            try:
                self._fh = open(self.path, "wb")  # closed in close()
            except OSError as error:
                raise DatasetError(
                    f"cannot write {self.path}: {error.strerror or error}; choose another output file"
                ) from None
            self._writer = TiffStackWriter(self._fh, bigtiff=planned_bytes > CLASSIC_TIFF_LIMIT_BYTES)
            self._writer.write_page(
                data,
                description=_embeddable_json(self.meta),
                software=self.meta.software or SOFTWARE_NAME,
                resolution_px_per_cm=1e4 / self.meta.sample_pixel_um,
            )
        else:
            if data.shape != self._frame_shape:
                raise DatasetError(
                    f"frame {self.frames_present} has shape {data.shape}, but frame 0 has "
                    f"{self._frame_shape}: all frames must be the same size"
                )
            if data.dtype != self._dtype:
                if self._dtype == np.uint16 and data.dtype == np.float32:
                    raise DatasetError(
                        f"frame {self.frames_present} is float but the dataset stores uint16: "
                        "keep one pixel type for every frame"
                    )
                data = data.astype(self._dtype)
            self._writer.write_page(data, resolution_px_per_cm=1e4 / self.meta.sample_pixel_um)
        self.frames_present += 1
        return self.frames_present - 1

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_dataset(
    path: str | os.PathLike[str],
    meta: DatasetMeta,
    frames: np.ndarray | Sequence[np.ndarray],
    *,
    overwrite: bool = True,
) -> Path:
    """Write a complete dataset in one go; `frames` must hold one (H, W) image per entry.

    Like `numpy.save` it replaces an existing file unless `overwrite=False` (`DatasetWriter`,
    meant for long acquisitions, refuses by default).
    """
    count = len(frames)
    if count != len(meta.frames):
        raise DatasetError(
            f"{count} frames given but the metadata lists {len(meta.frames)}: give one frame per entry of meta.frames"
        )
    path = Path(path)
    if path.exists() and not overwrite:
        raise DatasetError(f"{path} already exists: choose another name or pass overwrite=True")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder: give a .tif file name")
    # Written to a temporary file beside the target and renamed into place: a failure (bad data,
    # full disk) leaves no unreadable file behind, and an existing file is replaced only when the
    # new one is complete.
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial.tif", dir=path.parent or ".")
    except OSError as error:
        raise DatasetError(f"cannot write {path}: {error.strerror or error}; choose another output file") from None
    os.close(handle)
    try:
        with DatasetWriter(temporary, meta, overwrite=True) as writer:
            for frame in frames:
                writer.append(frame)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise DatasetError(f"cannot write {path}: {error.strerror or error}; nothing was written") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
