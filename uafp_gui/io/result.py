"""Reconstruction results (spec/dataset.md section 3): the calibration file and the result folder.

A result folder holds `amplitude.tif` and `phase.tif` (float32, the sample-plane pixel size
stored as ImageJ resolution tags with unit "um", so Fiji shows the scale), `pupil.tif`
(float32 (2, P, P): amplitude, then phase in radians) and `calibration.json` (`Calibration`,
the estimated system). A calibration file is also an input: loaded as the starting system it
reuses a calibrated microscope for the next dataset.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.io.dataset import _number, _positive

CALIBRATION_FORMAT = "uafp-calibration"
CALIBRATION_VERSION = 1
RESULT_FILES = ("amplitude.tif", "phase.tif", "pupil.tif", "calibration.json")
_RESERVED_IMAGE_NAMES = {"amplitude", "phase", "pupil", "calibration"}


@dataclass(frozen=True)
class LedGeometry:
    """Misalignment of the LED array (spec section 2): rotate, then shift; height above sample."""

    shift_x_mm: float = 0.0
    shift_y_mm: float = 0.0
    rotation_deg: float = 0.0
    height_mm: float = 90.0

    def __post_init__(self) -> None:
        for name in ("shift_x_mm", "shift_y_mm", "rotation_deg"):
            object.__setattr__(self, name, _number(getattr(self, name), f"led_geometry.{name}"))
        object.__setattr__(
            self,
            "height_mm",
            _positive(
                self.height_mm,
                "led_geometry.height_mm",
                "give the LED-plane-to-sample distance in millimetres",
            ),
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "shift_x_mm": self.shift_x_mm,
            "shift_y_mm": self.shift_y_mm,
            "rotation_deg": self.rotation_deg,
            "height_mm": self.height_mm,
        }

    @classmethod
    def from_dict(cls, data: Any) -> LedGeometry:
        if not isinstance(data, Mapping):
            raise DatasetError(
                f"led_geometry must be an object {{shift_x_mm, shift_y_mm, rotation_deg, height_mm}} (got {data!r})"
            )
        known = {"shift_x_mm", "shift_y_mm", "rotation_deg", "height_mm"}
        unknown = set(data) - known
        if unknown:
            raise DatasetError(f"led_geometry has unknown fields {sorted(unknown)}: allowed are {sorted(known)}")
        if "height_mm" not in data:
            raise DatasetError("led_geometry.height_mm is missing: give the LED height in mm")
        return cls(**{key: data[key] for key in known if key in data})


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
            if not valid or index < 1:
                raise DatasetError(
                    f"zernike_rad key {key!r} is not a Noll index: use integers >= 1 "
                    '(written as strings in JSON, e.g. "4" for defocus)'
                )
            zernike[index] = _number(value, f"zernike_rad[{key!r}]")
        setter(self, "zernike_rad", dict(sorted(zernike.items())))

        if isinstance(self.frame_gain, (str, bytes)) or not isinstance(self.frame_gain, (Sequence, np.ndarray)):
            raise DatasetError(f"frame_gain must be a list of numbers (got {self.frame_gain!r})")
        gains = tuple(_number(g, f"frame_gain[{k}]") for k, g in enumerate(self.frame_gain))
        for k, gain in enumerate(gains):
            if gain <= 0:
                raise DatasetError(f"frame_gain[{k}] must be > 0 (got {gain}): gains scale frame intensities")
        setter(self, "frame_gain", gains)

        if isinstance(self.led_positions_mm, (str, bytes)) or not isinstance(
            self.led_positions_mm, (Sequence, np.ndarray)
        ):
            raise DatasetError(f"led_positions_mm must be a list of [X, Y] pairs (got {self.led_positions_mm!r})")
        positions = []
        for k, position in enumerate(self.led_positions_mm):
            if isinstance(position, (str, bytes)) or len(position) != 2:
                raise DatasetError(f"led_positions_mm[{k}] must be [X, Y] in mm (got {position!r})")
            positions.append(
                (
                    _number(position[0], f"led_positions_mm[{k}][0]"),
                    _number(position[1], f"led_positions_mm[{k}][1]"),
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
                _positive(
                    self.object_pixel_um,
                    "object_pixel_um",
                    "the reconstructed object's pixel size in micrometres",
                ),
            )
        if self.final_loss is not None:
            setter(self, "final_loss", _number(self.final_loss, "final_loss"))
        iterations = _number(self.iterations, "iterations")
        if iterations < 0 or iterations != int(iterations):
            raise DatasetError(f"iterations must be a whole number >= 0 (got {self.iterations!r})")
        setter(self, "iterations", int(iterations))
        elapsed = _number(self.elapsed_s, "elapsed_s")
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
        kwargs = {key: data[key] for key in _CALIBRATION_FIELDS if key in data}
        kwargs["led_geometry"] = LedGeometry.from_dict(data["led_geometry"])
        kwargs["extra"] = {k: v for k, v in data.items() if k not in _CALIBRATION_KNOWN}
        return cls(**kwargs)


_CALIBRATION_FIELDS = (
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
_CALIBRATION_KNOWN = frozenset(_CALIBRATION_FIELDS + ("format", "version"))


def save_calibration(path: str | os.PathLike[str], calibration: Calibration) -> Path:
    path = Path(path)
    text = json.dumps(calibration.to_dict(), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    path = Path(path)
    if path.is_dir():
        path = path / "calibration.json"
    if not path.exists():
        raise DatasetError(f"calibration file not found: {path}: check the path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno} (char {error.pos})"
        ) from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path} is not UTF-8 text: {error}") from None
    try:
        return Calibration.from_dict(data)
    except DatasetError as error:
        raise DatasetError(f"{path}: {error}") from None


# ------------------------------------------------------------------------- result folder


@dataclass(frozen=True, eq=False)
class Result:
    """A reconstruction read back from its folder."""

    amplitude: np.ndarray  # float32 (H', W')
    phase: np.ndarray  # float32 (H', W'), radians
    pupil: np.ndarray  # float32 (2, P, P): amplitude, phase (radians)
    calibration: Calibration
    object_pixel_um: float
    folder: Path | None = None
    extra_images: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def object_field(self) -> np.ndarray:
        """Complex object `amplitude * exp(i phase)` (complex64)."""
        return (self.amplitude * np.exp(1j * self.phase)).astype(np.complex64)

    @property
    def pupil_field(self) -> np.ndarray:
        """Complex pupil `A exp(i W)` (complex64)."""
        return (self.pupil[0] * np.exp(1j * self.pupil[1])).astype(np.complex64)


def _real_image(array: Any, name: str, ndim: int | tuple[int, ...] = 2) -> np.ndarray:
    array = np.asarray(array)
    if np.iscomplexobj(array):
        raise DatasetError(f"{name} must be real (got {array.dtype}): pass abs() or angle()")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if array.ndim not in dims:
        raise DatasetError(f"{name} must be {' or '.join(map(str, dims))}-D (got {array.shape})")
    out = array.astype(np.float32)
    if not np.isfinite(out).all():
        warnings.warn(f"{name} contains NaN/inf values; writing it anyway", stacklevel=3)
    return out


def _write_scaled(path: Path, image: np.ndarray, pixel_um: float | None, **metadata: Any) -> None:
    import tifffile

    kwargs: dict[str, Any] = {"imagej": True, "metadata": dict(metadata)}
    if pixel_um is not None:
        kwargs["resolution"] = (1.0 / pixel_um, 1.0 / pixel_um)
        kwargs["metadata"]["unit"] = "um"
    tifffile.imwrite(path, image, **kwargs)


def write_result(
    folder: str | os.PathLike[str],
    amplitude: np.ndarray,
    phase: np.ndarray,
    pupil_amplitude: np.ndarray,
    pupil_phase: np.ndarray,
    calibration: Calibration,
    extra_images: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a result folder (created if needed; existing result files are replaced).

    The sample-plane pixel size is `calibration.object_pixel_um`, stored in amplitude.tif,
    phase.tif (and 2-D/3-D extra images on the same grid) as ImageJ resolution tags.
    `extra_images` maps a plain name (letters, digits, `_`, `-`) to an array written as
    `<name>.tif`, float32.
    """
    folder = Path(folder)
    if calibration.object_pixel_um is None:
        raise DatasetError(
            "calibration.object_pixel_um is not set: give the reconstructed pixel size in "
            "micrometres so the images carry their scale"
        )
    pixel_um = calibration.object_pixel_um
    amplitude = _real_image(amplitude, "amplitude")
    phase = _real_image(phase, "phase")
    if amplitude.shape != phase.shape:
        raise DatasetError(f"amplitude {amplitude.shape} and phase {phase.shape} must be on the same grid")
    pupil_amplitude = _real_image(pupil_amplitude, "pupil_amplitude")
    pupil_phase = _real_image(pupil_phase, "pupil_phase")
    if pupil_amplitude.shape != pupil_phase.shape:
        raise DatasetError(
            f"pupil_amplitude {pupil_amplitude.shape} and pupil_phase {pupil_phase.shape} must have the same shape"
        )
    extras = {}
    for name, image in (extra_images or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name) or name.lower() in _RESERVED_IMAGE_NAMES:
            raise DatasetError(
                f"extra image name {name!r} is not allowed: use letters, digits, '_' or '-', "
                f"and none of {sorted(_RESERVED_IMAGE_NAMES)}"
            )
        extras[name] = _real_image(image, f"extra image {name!r}", (2, 3))

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(f"cannot create result folder {folder}: {error}") from None
    _write_scaled(folder / "amplitude.tif", amplitude, pixel_um)
    _write_scaled(folder / "phase.tif", phase, pixel_um)
    _write_scaled(
        folder / "pupil.tif",
        np.stack([pupil_amplitude, pupil_phase]),
        None,
        Labels=["pupil amplitude", "pupil phase (rad)"],
    )
    for name, image in extras.items():
        on_grid = image.shape[-2:] == amplitude.shape
        _write_scaled(folder / f"{name}.tif", image, pixel_um if on_grid else None)
    save_calibration(folder / "calibration.json", calibration)
    return folder


def read_pixel_size_um(path: str | os.PathLike[str]) -> float | None:
    """The pixel size a TIFF's resolution tags give, in micrometres (None when absent)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        tag = page.tags.get("XResolution")
        if tag is None:
            return None
        numerator, denominator = tag.value
        if numerator == 0:
            return None
        per_unit = denominator / numerator
        unit = (tif.imagej_metadata or {}).get("unit", "")
        if unit in ("um", "micron", "\u00b5m", "\\u00B5m"):
            return per_unit
        unit_tag = page.tags.get("ResolutionUnit")
        resolution_unit = int(unit_tag.value) if unit_tag is not None else 2
        if resolution_unit == 3:  # centimetre
            return per_unit * 1e4
        if resolution_unit == 2 and not unit:  # the TIFF default (inch, 72 dpi): no real size
            return None
        if unit in ("nm", "nanometer"):
            return per_unit * 1e-3
        if unit in ("mm", "millimeter"):
            return per_unit * 1e3
        return None


def _read_image(path: Path) -> np.ndarray:
    import tifffile

    from uafp_gui.io.dataset import quiet_tifffile

    if not path.exists():
        raise DatasetError(
            f"{path.parent} has no {path.name}: is it a uafp result folder? (expected {', '.join(RESULT_FILES)})"
        )
    try:
        with quiet_tifffile():
            return np.asarray(tifffile.imread(path), dtype=np.float32)
    except Exception as error:
        raise DatasetError(f"cannot read {path}: {error}") from None


def read_result(folder: str | os.PathLike[str]) -> Result:
    """Read a result folder written by `write_result`; `DatasetError` names what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"result folder not found: {folder}: check the path")
    calibration = load_calibration(folder / "calibration.json")
    amplitude = _read_image(folder / "amplitude.tif")
    phase = _read_image(folder / "phase.tif")
    pupil = _read_image(folder / "pupil.tif")
    if amplitude.ndim != 2 or amplitude.shape != phase.shape:
        raise DatasetError(
            f"{folder}: amplitude.tif {amplitude.shape} and phase.tif {phase.shape} must be 2-D images of the same size"
        )
    if pupil.ndim != 3 or pupil.shape[0] != 2:
        raise DatasetError(f"{folder / 'pupil.tif'} has shape {pupil.shape}, expected (2, P, P): amplitude and phase")
    pixel_um = calibration.object_pixel_um
    if pixel_um is None:
        pixel_um = read_pixel_size_um(folder / "amplitude.tif")
    if pixel_um is None:
        raise DatasetError(
            f"{folder}: neither calibration.json nor amplitude.tif gives the pixel size: add "
            '"object_pixel_um" to calibration.json'
        )
    extras = {}
    for path in sorted(folder.glob("*.tif")):
        if path.stem not in _RESERVED_IMAGE_NAMES:
            extras[path.stem] = _read_image(path)
    return Result(
        amplitude=amplitude,
        phase=phase,
        pupil=pupil,
        calibration=calibration,
        object_pixel_um=float(pixel_um),
        folder=folder,
        extra_images=extras,
    )
