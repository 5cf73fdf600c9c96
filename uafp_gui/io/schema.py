"""The dataset's metadata (docs/dataset_format.md section 1): `DatasetMeta` and its `FrameSpec`s.

A dataset is one multi-page TIFF of N frames, shape (N, H, W), uint16 or float32, plus one JSON
object of metadata. That object is `DatasetMeta`: the nominal microscope (`uafp_gui.model.Optics`,
flat top-level fields in the JSON), one `FrameSpec` per planned frame (the LEDs lit, exposure,
LED drive) and the optional fields (the slide's `uafp_gui.model.Glass`, ...). Constructing any of
them validates it: a `DatasetError` names the bad field and the fix. Where the JSON lives in the
file is the reader's and the writer's business (`uafp_gui.io.dataset`, `uafp_gui.io.writer`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from uafp_gui import __version__
from uafp_gui.errors import DatasetError
from uafp_gui.limits import MAX_FRAMES
from uafp_gui.model import (
    HINTS,
    MAXIMA,
    OPTICS_FIELDS,
    Glass,
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
        return cls.from_dict(parse_json(text, source))


def parse_json(text: str | bytes, source: str) -> Any:
    """Parsed JSON of `source`; `DatasetError` (one line) when it is not valid JSON."""
    from uafp_gui.io import jsontext

    return jsontext.parse_json(text, source, DatasetError)


def meta_from_text(text: str, source: str) -> DatasetMeta:
    """`DatasetMeta` of JSON text; errors start with `source` (e.g. "sidecar run.json")."""
    try:
        return DatasetMeta.from_dict(parse_json(text, source))
    except DatasetError as error:
        if str(error).startswith(source):
            raise
        raise DatasetError(f"{source}: {error}") from None
