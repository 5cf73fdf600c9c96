"""Reconstruction results (docs/dataset_format.md section 3): the result folder, written whole or not at all.

A result folder holds `amplitude.tif` and `phase.tif` (float32, the sample-plane pixel size
stored as TIFF resolution in pixels per centimetre with ResolutionUnit CENTIMETER, so any TIFF
reader gets the scale, plus the ImageJ unit "um", so Fiji shows micrometres), `pupil.tif`
(float32 (2, P, P): amplitude, then phase in radians) and `calibration.json` (`Calibration`,
the estimated system, `uafp_gui.io.calibration`), plus a manifest of every file's size and
SHA-256 so a folder that mixes runs is refused.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.io._files import new_file_mode
from uafp_gui.io.calibration import Calibration, load_calibration, save_calibration
from uafp_gui.io.tiff import page_errors, quiet_tifffile
from uafp_gui.limits import MAX_FRAME_PIXELS

RESULT_FILES = ("amplitude.tif", "phase.tif", "pupil.tif", "calibration.json")
_RESERVED_IMAGE_NAMES = {"amplitude", "phase", "pupil", "calibration", "manifest"}


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
        # Pixels per centimetre with ResolutionUnit CENTIMETER: every TIFF reader gets a real size (the
        # TIFF standard knows inch and cm only); ImageJ/Fiji read the 'um' unit and convert cm -> um.
        per_cm = 1e4 / pixel_um
        kwargs["resolution"] = (per_cm, per_cm)
        kwargs["resolutionunit"] = "CENTIMETER"
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
    extra_files: Mapping[str, Any] | None = None,
) -> Path:
    """Write a whole result folder atomically (see `write_folder_atomically`): either the new
    result is complete in `folder`, or `folder` is unchanged.

    `extra_files` maps a file name (e.g. "report.png") to a callable `write(path)` that writes
    it; it runs inside the temporary folder, before the rename, so it is part of the same result.

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

    def write_images(staging: Path) -> None:
        _write_scaled(staging / "amplitude.tif", amplitude, pixel_um)
        _write_scaled(staging / "phase.tif", phase, pixel_um)
        _write_scaled(
            staging / "pupil.tif",
            np.stack([pupil_amplitude, pupil_phase]),
            None,
            Labels=["pupil amplitude", "pupil phase (rad)"],
        )
        for name, image in extras.items():
            on_grid = image.shape[-2:] == amplitude.shape
            _write_scaled(staging / f"{name}.tif", image, pixel_um if on_grid else None)
        save_calibration(staging / "calibration.json", calibration)
        for name, writer in (extra_files or {}).items():
            writer(staging / name)

    _check_extra_file_names(extra_files or {}, extras)
    return write_folder_atomically(folder, write_images)


def _check_extra_file_names(extra_files: Mapping[str, Any], extras: Mapping[str, Any]) -> None:
    # a plain file name ("report.png", "mosaic.ome.tif"), or a folder's ("tiles", "mosaic.ome.zarr")
    taken = set(RESULT_FILES) | {MANIFEST_NAME} | {f"{name}.tif" for name in extras}
    for name in extra_files:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9]+)*", name) or name in taken:
            raise DatasetError(
                f"extra file name {name!r} is not allowed: a plain file or folder name, none of {sorted(taken)}"
            )


MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "uafp-result-manifest"
_KNOWN_RESULT_NAMES = set(RESULT_FILES) | {MANIFEST_NAME, "report.png"}


def _digest(path: Path) -> str:
    import hashlib

    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _looks_like_result_folder(folder: Path) -> bool:
    """Only a folder holding result files (ours, or an older uafp's) may be replaced as a whole."""
    names = {entry.name for entry in folder.iterdir()}
    if MANIFEST_NAME in names or not names:
        return True
    return all(name in _KNOWN_RESULT_NAMES or name.endswith(".tif") for name in names)


def write_folder_atomically(folder: str | os.PathLike[str], write: Any) -> Path:
    """Write a whole result folder, or nothing: `write(staging)` fills a temporary folder beside
    `folder`; a manifest (name, size, SHA-256 of every file) is added last; then the temporary
    folder is renamed to `folder`. A failure at any point (full disk, a non-finite number, kill)
    leaves an existing `folder` exactly as it was. An existing folder is replaced only when it
    holds result files alone (nothing else of the user's is ever deleted).
    """
    import shutil
    import tempfile
    from datetime import datetime, timezone

    from uafp_gui import __version__

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"{folder} is a file: give a folder for the result")
    if folder.is_dir() and not _looks_like_result_folder(folder):
        raise DatasetError(
            f"{folder} holds files that are not part of a uafp result: choose a new or empty folder for the result"
        )
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=parent))
    except OSError as error:
        raise DatasetError(f"cannot create result folder {folder}: {error.strerror or error}") from None
    old: Path | None = None
    try:
        write(staging)
        files = {}  # every file, in sub-folders too ("tiles/r00_c00/amplitude.tif", an OME-Zarr's chunks)
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            files[path.relative_to(staging).as_posix()] = {"bytes": path.stat().st_size, "sha256": _digest(path)}
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": 1,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": f"uafp_gui {__version__}",
            "files": files,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.chmod(staging, new_file_mode(0o777))
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=parent))
            os.rename(folder, old / folder.name)  # the previous result moves aside, then is removed
        os.rename(staging, folder)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not folder.exists() and (old / folder.name).exists():
            os.rename(old / folder.name, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise DatasetError(
            f"cannot write result folder {folder}: {error.strerror or error}; nothing was changed there"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not folder.exists() and (old / folder.name).exists():
            os.rename(old / folder.name, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def verify_result_folder(folder: str | os.PathLike[str], *, require_manifest: bool = True) -> None:
    """Check that `folder` is one complete result: every file its manifest lists is there with
    the same size and SHA-256, and no other result file is. `DatasetError` otherwise."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        if require_manifest:
            raise DatasetError(
                f"{folder} has no {MANIFEST_NAME}: it is incomplete (a write was interrupted) or was "
                "written by an older uafp; reconstruct again to write a complete result folder"
            )
        return
    from uafp_gui.io.jsontext import parse_json

    try:
        manifest = parse_json(manifest_path.read_bytes(), str(manifest_path))
    except OSError as error:
        raise DatasetError(f"cannot read {manifest_path}: {error.strerror or error}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise DatasetError(f"{manifest_path} is not a uafp result manifest: reconstruct again")
    for name, entry in files.items():
        path = folder / str(name)
        if not isinstance(entry, dict) or not path.is_file():
            raise DatasetError(f"{folder} is incomplete: {name} is missing; reconstruct again")
        if path.stat().st_size != entry.get("bytes") or _digest(path) != entry.get("sha256"):
            raise DatasetError(
                f"{folder} mixes files from different runs: {name} is not the file this result was "
                "written with; reconstruct again into a new folder"
            )
    for path in folder.iterdir():
        if (path.name in RESULT_FILES or path.suffix == ".tif") and path.is_file() and path.name not in files:
            raise DatasetError(f"{folder} mixes files from different runs: {path.name} is not in its manifest")


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
        unit_tag = page.tags.get("ResolutionUnit")
        resolution_unit = int(unit_tag.value) if unit_tag is not None else 2
        if resolution_unit == 3:  # centimetre (what uafp writes; ImageJ's 'um' unit then names the display unit)
            return per_unit * 1e4
        if unit in ("um", "micron", "\u00b5m", "\\u00B5m"):
            return per_unit
        if resolution_unit == 2 and not unit:  # the TIFF default (inch, 72 dpi): no real size
            return None
        if unit in ("nm", "nanometer"):
            return per_unit * 1e-3
        if unit in ("mm", "millimeter"):
            return per_unit * 1e3
        return None


def _read_image(path: Path) -> np.ndarray:
    import tifffile

    if not path.exists():
        raise DatasetError(
            f"{path.parent} has no {path.name}: is it a uafp result folder? (expected {', '.join(RESULT_FILES)})"
        )
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            shape = tif.series[0].shape
            if int(np.prod(shape, dtype=np.float64)) > 4 * MAX_FRAME_PIXELS:
                raise DatasetError(f"{path} is {shape}: larger than a result image may be")
            return np.asarray(tif.series[0].asarray(), dtype=np.float32)
    except DatasetError:
        raise
    except page_errors() as error:
        raise DatasetError(f"cannot read {path}: {error}") from None


def read_result(folder: str | os.PathLike[str], *, require_manifest: bool = False) -> Result:
    """Read a result folder written by `write_result`; `DatasetError` names what is wrong.

    A folder with a manifest must match it (no missing, changed or foreign result files);
    `require_manifest=True` also refuses a folder without one (incomplete, or hand-made)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"result folder not found: {folder}: check the path")
    verify_result_folder(folder, require_manifest=require_manifest)
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
    for path in sorted(folder.glob("*.tif")):  # not an OME-TIFF export beside them (a full field's mosaic pyramid)
        if path.stem not in _RESERVED_IMAGE_NAMES and not path.name.endswith(".ome.tif"):
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
