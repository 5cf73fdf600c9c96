"""The calibration file (docs/dataset_format.md section 3): `calibration.json`, the estimated system.

`Calibration` is what a reconstruction found (LED geometry, Zernike aberrations, frame gains,
LED positions) as written into every result folder. A calibration file is also an input: loaded
as the starting system it reuses a calibrated microscope for the next dataset.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.io._files import new_file_mode
from uafp_gui.io.jsontext import parse_json
from uafp_gui.limits import MAX_NOLL_INDEX
from uafp_gui.model import LedGeometry, at_most, number, positive

CALIBRATION_FORMAT = "uafp-calibration"
CALIBRATION_VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """The estimated system, as written to (and read from) `calibration.json`.

    `zernike_rad` maps Noll index j >= 1 to radians of phase; `frame_gain` and
    `led_positions_mm` ([X', Y'] per frame, the centroid when several LEDs are lit) are in
    dataset order. Unknown fields read from a file are kept in `extra` and written back.
    """

    led_geometry: LedGeometry = field(default_factory=LedGeometry)
    zernike_rad: dict[int, float] = field(default_factory=dict)
    frame_gain: tuple[float, ...] = ()
    led_positions_mm: tuple[tuple[float, float], ...] = ()
    object_pixel_um: float | None = None
    final_loss: float | None = None
    iterations: int = 0
    elapsed_s: float = 0.0
    source_dataset: str = ""
    software: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        setter = object.__setattr__
        if isinstance(self.led_geometry, Mapping):
            setter(self, "led_geometry", LedGeometry.from_dict(self.led_geometry))
        elif not isinstance(self.led_geometry, LedGeometry):
            raise DatasetError(f"led_geometry must be a LedGeometry (got {self.led_geometry!r})")
        if not isinstance(self.zernike_rad, Mapping):
            raise DatasetError(
                f'zernike_rad must map Noll index to radians, e.g. {{"4": 0.1}} (got {self.zernike_rad!r})'
            )
        zernike: dict[int, float] = {}
        for key, value in self.zernike_rad.items():
            try:
                index = int(key)
                valid = str(index) == str(key).strip() or isinstance(key, (int, np.integer))
            except (TypeError, ValueError):
                valid = False
            if not valid or not 1 <= index <= MAX_NOLL_INDEX:
                raise DatasetError(
                    f"zernike_rad key {str(key)[:20]!r} is not a Noll index 1 to {MAX_NOLL_INDEX} "
                    '(written as strings in JSON, e.g. "4" for defocus)'
                )
            zernike[index] = at_most(
                number(value, f"zernike_rad[{key!r}]"), 1e3, f"zernike_rad[{key!r}]", "radians of phase"
            )
        setter(self, "zernike_rad", dict(sorted(zernike.items())))

        if isinstance(self.frame_gain, (str, bytes)) or not isinstance(self.frame_gain, (Sequence, np.ndarray)):
            raise DatasetError(f"frame_gain must be a list of numbers (got {self.frame_gain!r})")
        gains = tuple(number(g, f"frame_gain[{k}]") for k, g in enumerate(self.frame_gain))
        for k, gain in enumerate(gains):
            at_most(gain, 1e6, f"frame_gain[{k}]", "gains scale frame intensities")
            if gain <= 0:
                raise DatasetError(f"frame_gain[{k}] must be > 0 (got {gain}): gains scale frame intensities")
        setter(self, "frame_gain", gains)

        if isinstance(self.led_positions_mm, (str, bytes)) or not isinstance(
            self.led_positions_mm, (Sequence, np.ndarray)
        ):
            raise DatasetError(f"led_positions_mm must be a list of [X, Y] pairs (got {self.led_positions_mm!r})")
        positions = []
        for k, position in enumerate(self.led_positions_mm):
            if isinstance(position, (str, bytes, Mapping)) or not isinstance(position, (Sequence, np.ndarray)) or (
                len(position) != 2
            ):
                raise DatasetError(f"led_positions_mm[{k}] must be [X, Y] in mm (got {str(position)[:40]})")
            positions.append(
                tuple(
                    at_most(number(position[i], f"led_positions_mm[{k}][{i}]"), 1e5,
                             f"led_positions_mm[{k}][{i}]", "millimetres")
                    for i in range(2)
                )
            )
        setter(self, "led_positions_mm", tuple(positions))
        if gains and positions and len(gains) != len(positions):
            raise DatasetError(
                f"frame_gain has {len(gains)} entries but led_positions_mm has {len(positions)}: "
                "both need one entry per frame"
            )

        if self.object_pixel_um is not None:
            setter(
                self,
                "object_pixel_um",
                positive(
                    self.object_pixel_um,
                    "object_pixel_um",
                    "the reconstructed object's pixel size in micrometres",
                ),
            )
        if self.final_loss is not None:
            setter(self, "final_loss", number(self.final_loss, "final_loss"))
        iterations = number(self.iterations, "iterations")
        if iterations < 0 or iterations != int(iterations):
            raise DatasetError(f"iterations must be a whole number >= 0 (got {self.iterations!r})")
        setter(self, "iterations", int(iterations))
        elapsed = number(self.elapsed_s, "elapsed_s")
        if elapsed < 0:
            raise DatasetError(f"elapsed_s must be >= 0 (got {self.elapsed_s!r})")
        setter(self, "elapsed_s", elapsed)
        for name in ("source_dataset", "software"):
            if not isinstance(getattr(self, name), str):
                raise DatasetError(f"{name} must be a string (got {getattr(self, name)!r})")
        clash = set(self.extra).intersection(_CALIBRATION_KNOWN)
        if clash:
            raise DatasetError(f"extra must not contain calibration fields {sorted(clash)}")
        setter(self, "extra", dict(self.extra))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION,
            "led_geometry": self.led_geometry.to_dict(),
            "zernike_rad": {str(j): c for j, c in self.zernike_rad.items()},
            "frame_gain": list(self.frame_gain),
            "led_positions_mm": [list(p) for p in self.led_positions_mm],
        }
        if self.object_pixel_um is not None:
            out["object_pixel_um"] = self.object_pixel_um
        if self.final_loss is not None:
            out["final_loss"] = self.final_loss
        out["iterations"] = self.iterations
        out["elapsed_s"] = self.elapsed_s
        out["source_dataset"] = self.source_dataset
        out["software"] = self.software
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Validate a parsed calibration JSON object; `DatasetError` names the bad field."""
        if not isinstance(data, Mapping):
            raise DatasetError(f"a calibration must be a JSON object (got {type(data).__name__})")
        if data.get("format") != CALIBRATION_FORMAT:
            raise DatasetError(
                f"format is {data.get('format')!r}, expected {CALIBRATION_FORMAT!r}: this is not "
                "a uafp calibration file"
            )
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise DatasetError(f"version must be the integer {CALIBRATION_VERSION} (got {version!r})")
        if version != CALIBRATION_VERSION:
            hint = ": update uafp_gui" if version > CALIBRATION_VERSION else ""
            raise DatasetError(
                f"calibration version {version} is not supported (this software reads {CALIBRATION_VERSION}){hint}"
            )
        if "led_geometry" not in data:
            raise DatasetError(
                'led_geometry is missing: a calibration needs at least {"led_geometry": {"height_mm": ...}}'
            )
        kwargs = {key: data[key] for key in CALIBRATION_FIELDS if key in data}
        kwargs["led_geometry"] = LedGeometry.from_dict(data["led_geometry"])
        kwargs["extra"] = {k: v for k, v in data.items() if k not in _CALIBRATION_KNOWN}
        return cls(**kwargs)


# The fields of a calibration.json that `Calibration` holds as its own (everything else is `extra`).
CALIBRATION_FIELDS = (
    "led_geometry",
    "zernike_rad",
    "frame_gain",
    "led_positions_mm",
    "object_pixel_um",
    "final_loss",
    "iterations",
    "elapsed_s",
    "source_dataset",
    "software",
)
_CALIBRATION_KNOWN = frozenset(CALIBRATION_FIELDS + ("format", "version"))


def save_calibration(path: str | os.PathLike[str], calibration: Calibration) -> Path:
    """Write `calibration` as JSON (to a temporary file renamed into place: never half a file)."""
    path = Path(path)
    try:
        text = json.dumps(calibration.to_dict(), indent=2, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise DatasetError(
            f"cannot save the calibration to {path}: {error} (a non-finite or non-JSON value; the "
            "reconstruction probably diverged)"
        ) from None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            os.chmod(temporary, new_file_mode())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise DatasetError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """A calibration file, or the `calibration.json` of a result folder; `DatasetError` names what is wrong."""
    path = Path(path)
    if path.is_dir():
        if path.suffix.lower() == ".json" or not (path / "calibration.json").exists():
            raise DatasetError(f"{path} is a folder, not a calibration file: give calibration.json or a result folder")
        path = path / "calibration.json"
    if not path.exists():
        raise DatasetError(f"calibration file not found: {path}: check the path")
    if not path.is_file():
        raise DatasetError(f"{path} is not a file: give the calibration.json file or its result folder")
    try:
        data = parse_json(path.read_bytes(), str(path))
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return Calibration.from_dict(data)
    except DatasetError as error:
        raise DatasetError(f"{path}: {error}") from None
