"""Importers for the layouts published FP datasets use: Caltech FPM-INR / APIC MATLAB files and PtyLab FPM HDF5.

Both layouts carry a calibrated illumination per frame instead of a rigid LED-array geometry:

- FPM-INR / APIC (`.mat`, MATLAB v5 or v7.3 = HDF5): the frames `I_low` (or `imlow`), (H, W, N) in
  MATLAB order; `na_calib` (N, 2) the calibrated illumination NA of each frame, columns
  [na_x, na_y], in the sense of those codes' forward model: frame k images the object spectrum
  (numpy/torch FFT) around -na_calib[k] / wavelength, i.e. na_calib is the direction the
  illumination travels, the opposite of the LED direction stored here (illumination_na =
  -na_calib; the spec's u = na_calib / wavelength); `na_cal` the calibrated objective NA; `mag`
  the magnification; `dpix_c` the camera pixel in micrometres; optionally `lambda`/`wavelength`
  (micrometres; FPM-INR files carry none: give it). The LED pitch is not in the file (4 mm for the
  arrays these datasets were taken with).
- PtyLab FPM (`.hdf5`/`.h5`): `ptychogram` (N, Ny, Nx), `encoder` (N, 2) LED positions in metres in
  PtyLab's row-column order [y, x] (a (2, N) array is accepted too; PtyLab's FPM model crops its
  Fourier-space object at -encoder / (r wavelength) and reaches the camera with a forward FFT, which
  makes `encoder` the LED position in the spec's axes), `dxd` detector pixel (m),
  `magnification`, `wavelength` (m), `zled` LED-to-sample distance (m), optional `NA` and
  `orientation` (PtyLab's flip/transpose code, applied to the frames as PtyLab does).

Each frame becomes one LED of a dataset (docs/dataset_format.md) on the grid that fits the illumination
best (pitch and height from the file, or estimated from the nearest-neighbour spacing), and keeps
its calibrated illumination as the optional per-frame field `illumination_na` = [na_x, na_y]: the
sine of the angle under which the frame's LED is seen from the tile centre, image axes (an LED at
+X gives +na_x, the published convention; the spec's illumination frequency is u = -na / wavelength).
The reconstruction places each LED exactly there (`ForwardModel.apply_frame_illumination_na`):
the calibrated NAs are the nominal illumination, refined rigidly when the geometry is learned and
used frozen with `--no-geometry` (or `--freeze-system`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.io._importcheck import (
    H5_READER_ERRORS,
    MAT_READER_ERRORS,
    check_stack_size,
    frame_stack,
    numbers,
    one_line,
)
from uafp_gui.io.schema import SOFTWARE_NAME, DatasetMeta, FrameSpec
from uafp_gui.io.writer import write_dataset
from uafp_gui.model import Optics

FPM_MAT_FRAMES = ("I_low", "imlow")
FPM_MAT_WAVELENGTH = ("lambda", "wavelength", "lambda_g")
PTYLAB_REQUIRED = ("ptychogram", "encoder", "dxd", "magnification", "wavelength", "zled")
DEFAULT_LED_PITCH_MM = 4.0

__all__ = [
    "illumination_grid",
    "import_fpm_mat",
    "import_ptylab_hdf5",
    "read_mat",
]


# ------------------------------------------------------------------------------- MATLAB files


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(520)
    return b"\x89HDF\r\n\x1a\n" in head[:8] or head[512:520] == b"\x89HDF\r\n\x1a\n"


def _check_variable(name: str, shape: tuple[int, ...], itemsize: int, source: Path, frames: tuple[str, ...]) -> None:
    """A variable's size from its header, before it is read: a frame stack within the dataset
    limits, anything else a small per-frame field."""
    if name in frames:
        check_stack_size(tuple(sorted(shape)), itemsize, name, source)  # (N, H, W) in any axis order
    elif int(np.prod(shape, dtype=np.float64)) > 1_000_000:
        raise DatasetError(f"{name} in {source} has shape {tuple(shape)}: too large for a per-frame field")


def read_mat(
    path: str | os.PathLike[str], names: tuple[str, ...] | None = None, frames: tuple[str, ...] = FPM_MAT_FRAMES
) -> dict[str, np.ndarray]:
    """Variables of a MATLAB file as numpy arrays in MATLAB's own axis order.

    v5/v7 files are read by `scipy.io.loadmat`, v7.3 files (HDF5) by `h5py`; h5py sees MATLAB's
    column-major arrays with reversed axes, so they are transposed back. `names` limits what is read;
    each variable's size is checked from the file's header before it is read (`frames` name the
    frame stacks, checked against the dataset limits).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"file not found: {path}: check the path")
    if _is_hdf5(path):
        import h5py

        out: dict[str, np.ndarray] = {}
        try:
            with h5py.File(path, "r") as h5:
                for name in h5:
                    if name.startswith("#") or (names is not None and name not in names):
                        continue
                    item = h5[name]
                    if isinstance(item, h5py.Dataset):
                        _check_variable(name, item.shape or (), item.dtype.itemsize, path, frames)
                        out[name] = np.asarray(item[()]).T
        except DatasetError:
            raise
        except H5_READER_ERRORS as error:
            raise DatasetError(f"cannot read {path} as MATLAB v7.3 (HDF5): {one_line(error)}") from None
        return out
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        for name, shape, _ in scipy.io.whosmat(path):
            if names is None or name in names:
                _check_variable(name, shape, 8, path, frames)
        data = scipy.io.loadmat(path, variable_names=list(names) if names else None)
    except DatasetError:
        raise
    except (*MAT_READER_ERRORS, MatReadError) as error:
        raise DatasetError(
            f"cannot read {path} as a MATLAB file ({one_line(error)}): save it with -v7 or -v7.3"
        ) from None
    return {k: np.asarray(v) for k, v in data.items() if not k.startswith("__")}


def _scalar(value: Any, name: str, source: Path) -> float:
    array = numbers(value, name, source).ravel()
    if array.size != 1:
        raise DatasetError(f"{source}: {name} must be one number (got shape {np.asarray(value).shape})")
    return float(array[0])


# ------------------------------------------------------------------------------- LED grid


def illumination_grid(
    positions_mm: np.ndarray, pitch_mm: float | None = None
) -> tuple[list[tuple[int, int]], tuple[int, int], tuple[float, float], float]:
    """The LED grid that fits positions (N, 2) [X, Y] in mm: per-frame [row, col], array shape,
    on-axis index (where X = Y = 0 falls) and the pitch (given, or the median nearest-neighbour
    distance). Raises `DatasetError` when two frames fall on one grid point."""
    positions = np.asarray(positions_mm, dtype=np.float64)
    if pitch_mm is None:
        if len(positions) < 2:
            raise DatasetError("one frame only: give the LED pitch, it cannot be estimated")
        distance = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
        np.fill_diagonal(distance, np.inf)
        pitch_mm = float(np.median(distance.min(axis=1)))
    if not pitch_mm > 0:
        raise DatasetError(f"the LED pitch must be > 0 mm (got {pitch_mm})")
    index = np.rint(positions / pitch_mm).astype(int)  # [ix, iy]
    low = index.min(axis=0)
    cols = index[:, 0] - low[0]
    rows = index[:, 1] - low[1]
    leds = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
    seen: dict[tuple[int, int], int] = {}
    for k, led in enumerate(leds):
        if led in seen:
            raise DatasetError(
                f"frames {seen[led]} and {k} fall on the same LED of a {pitch_mm:g} mm grid: the illumination "
                "is not one LED per frame on a grid of that pitch; give the pitch of the array (--led-pitch-mm)"
            )
        seen[led] = k
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    on_axis = (float(-low[1]), float(-low[0]))
    return leds, shape, on_axis, float(pitch_mm)


def _frames_with_na(leds: list[tuple[int, int]], na: np.ndarray, exposure_ms: float = 1.0) -> tuple[FrameSpec, ...]:
    return tuple(
        FrameSpec(leds=(led,), exposure_ms=exposure_ms, extra={"illumination_na": [float(x), float(y)]})
        for led, (x, y) in zip(leds, na, strict=True)
    )


def _frame_stack(stack: np.ndarray, name: str = "the frames", source: Any = "the file") -> np.ndarray:
    """uint8/uint16 stay uint16; other real numbers become float32 (never scaled); complex, boolean,
    all-dark or non-finite frames are refused (`uafp_gui.io._importcheck.frame_stack`)."""
    return frame_stack(stack, name, source)


# --------------------------------------------------------------------------- FPM-INR / APIC


def import_fpm_mat(
    mat_path: str | os.PathLike[str],
    out_tif: str | os.PathLike[str],
    *,
    wavelength_um: float | None = None,
    led_pitch_mm: float = DEFAULT_LED_PITCH_MM,
    led_height_mm: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a Caltech FPM-INR / APIC MATLAB file (`I_low`, `na_calib`, `na_cal`, `mag`, `dpix_c`).

    The LED height, when not given, is the one that puts the calibrated NAs on a grid of
    `led_pitch_mm`: height = pitch / (median nearest-neighbour spacing of tan(angle)).
    """
    mat_path = Path(mat_path)
    wanted = (*FPM_MAT_FRAMES, *FPM_MAT_WAVELENGTH, "na_calib", "na_cal", "mag", "dpix_c")
    mat = read_mat(mat_path, wanted)
    frames_name = next((name for name in FPM_MAT_FRAMES if name in mat), None)
    missing = [name for name in ("na_calib", "na_cal", "mag", "dpix_c") if name not in mat]
    if frames_name is None or missing:
        absent = missing + ([] if frames_name else ["I_low (or imlow)"])
        raise DatasetError(
            f"{mat_path} lacks {', '.join(absent)}: an FPM-INR/APIC file holds I_low, na_calib, na_cal, mag and dpix_c"
        )
    stack = np.asarray(mat[frames_name])
    if stack.ndim != 3:
        raise DatasetError(f"{frames_name} in {mat_path} has shape {stack.shape}, expected (H, W, N)")
    frames = _frame_stack(np.moveaxis(stack, 2, 0), frames_name, mat_path)
    na = numbers(mat["na_calib"], "na_calib", mat_path)
    if na.ndim == 2 and na.shape[0] == 2 and na.shape[1] != 2:
        na = na.T
    if na.shape != (len(frames), 2):
        raise DatasetError(
            f"na_calib in {mat_path} has shape {na.shape}, expected ({len(frames)}, 2): one [na_x, na_y] per frame"
        )
    if not np.all(np.hypot(na[:, 0], na[:, 1]) < 1):
        raise DatasetError(f"na_calib in {mat_path} holds an NA >= 1: it should be the sine of each illumination angle")
    if wavelength_um is None:
        name = next((n for n in FPM_MAT_WAVELENGTH if n in mat), None)
        if name is None:
            raise DatasetError(
                f"{mat_path} carries no wavelength (FPM-INR files do not): pass --wavelength-um, e.g. 0.5126 "
                "for the green, 0.632 red, 0.471 blue channel of those datasets"
            )
        wavelength_um = _scalar(mat[name], name, mat_path)
        if wavelength_um < 1e-3:  # stored in metres
            wavelength_um *= 1e6
    na = -na  # the direction of propagation -> the LED's direction (see the module docstring)
    tangent = na / np.sqrt(1 - (na**2).sum(axis=1, keepdims=True))
    if led_height_mm is None:
        distance = np.linalg.norm(tangent[:, None, :] - tangent[None, :, :], axis=-1)
        np.fill_diagonal(distance, np.inf)
        if len(tangent) < 2:
            raise DatasetError("one frame only: give --led-height-mm")
        led_height_mm = led_pitch_mm / float(np.median(distance.min(axis=1)))
    leds, shape, on_axis, pitch = illumination_grid(tangent * led_height_mm, led_pitch_mm)
    objective_na = _scalar(mat["na_cal"], "na_cal", mat_path)
    magnification = _scalar(mat["mag"], "mag", mat_path)
    camera_pixel_um = _scalar(mat["dpix_c"], "dpix_c", mat_path)
    meta = DatasetMeta(
        optics=Optics(
            wavelength_um=float(wavelength_um),
            objective_na=objective_na,
            magnification=magnification,
            camera_pixel_um=camera_pixel_um,
            led_pitch_mm=pitch,
            led_height_mm=float(led_height_mm),
            led_array_shape=shape,
            led_on_axis=on_axis,
        ),
        frames=_frames_with_na(leds, na),
        sample=mat_path.stem,
        notes=(
            f"Imported from {mat_path.name} (FPM-INR/APIC layout: {frames_name}, na_calib, na_cal, mag, dpix_c). "
            "Each frame keeps its calibrated illumination NA (illumination_na); the LED grid "
            f"({pitch:g} mm pitch, height {led_height_mm:.2f} mm) is the nearest rigid description of it. "
            "exposure_ms is nominal."
        ),
        software=SOFTWARE_NAME,
    )
    return write_dataset(out_tif, meta, frames, overwrite=overwrite)


# ------------------------------------------------------------------------------- PtyLab FPM


def _apply_orientation(frames: np.ndarray, orientation: float) -> np.ndarray:
    """PtyLab's orientation code (ptypy convention): 1 flip columns, 2 flip rows, 3 both, 4 transpose,
    5 transpose + flip columns, 6 transpose + flip rows, 7 transpose + both; 0 nothing."""
    if orientation not in range(8) or orientation != int(orientation):
        raise DatasetError(f"orientation {orientation} is not a PtyLab orientation code (0..7)")
    if orientation >= 4:
        frames = np.swapaxes(frames, 1, 2)
    if orientation in (1, 3, 5, 7):
        frames = frames[:, :, ::-1]
    if orientation in (2, 3, 6, 7):
        frames = frames[:, ::-1, :]
    return np.ascontiguousarray(frames)


def import_ptylab_hdf5(
    path: str | os.PathLike[str],
    out_tif: str | os.PathLike[str],
    *,
    objective_na: float | None = None,
    led_pitch_mm: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a PtyLab FPM HDF5 file (ptychogram, encoder, dxd, magnification, wavelength, zled[, NA])."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"file not found: {path}: check the path")
    try:
        with h5py.File(path, "r") as h5:
            missing = [name for name in PTYLAB_REQUIRED if name not in h5]
            if missing:
                raise DatasetError(
                    f"{path} lacks {', '.join(missing)}: a PtyLab FPM file holds {', '.join(PTYLAB_REQUIRED)} (and NA)"
                )
            data = {}
            for name in (*PTYLAB_REQUIRED, "NA", "orientation"):
                if name not in h5:
                    continue
                item = h5[name]
                if not isinstance(item, h5py.Dataset):
                    raise DatasetError(f"{name} in {path} is a {type(item).__name__}, not an array")
                _check_variable(name, item.shape or (), item.dtype.itemsize, path, ("ptychogram",))
                data[name] = np.asarray(item[()])
    except DatasetError:
        raise
    except H5_READER_ERRORS as error:
        raise DatasetError(f"cannot read {path} as HDF5: {one_line(error)}") from None
    frames = np.asarray(data["ptychogram"])
    if frames.ndim != 3:
        raise DatasetError(f"ptychogram in {path} has shape {frames.shape}, expected (N, Ny, Nx)")
    if "orientation" in data:
        frames = _apply_orientation(frames, _scalar(data["orientation"], "orientation", path))
    frames = _frame_stack(frames, "ptychogram", path)
    encoder = numbers(data["encoder"], "encoder", path)
    if encoder.ndim == 2 and encoder.shape[0] == 2 and encoder.shape[1] != 2:
        encoder = encoder.T
    if encoder.shape != (len(frames), 2):
        raise DatasetError(f"encoder in {path} has shape {encoder.shape}, expected ({len(frames)}, 2)")
    height_mm = _scalar(data["zled"], "zled", path) * 1e3
    wavelength_um = _scalar(data["wavelength"], "wavelength", path) * 1e6
    camera_pixel_um = _scalar(data["dxd"], "dxd", path) * 1e6
    magnification = _scalar(data["magnification"], "magnification", path)
    if objective_na is None:
        if "NA" not in data:
            raise DatasetError(f"{path} has no NA field: pass --objective-na, e.g. 0.1")
        objective_na = _scalar(data["NA"], "NA", path)
    positions_mm = encoder[:, ::-1] * 1e3  # PtyLab's [y, x] -> [X, Y]
    radius = np.sqrt((positions_mm**2).sum(axis=1) + height_mm**2)
    na = positions_mm / radius[:, None]
    leds, shape, on_axis, pitch = illumination_grid(positions_mm, led_pitch_mm)
    meta = DatasetMeta(
        optics=Optics(
            wavelength_um=wavelength_um,
            objective_na=float(objective_na),
            magnification=magnification,
            camera_pixel_um=camera_pixel_um,
            led_pitch_mm=pitch,
            led_height_mm=height_mm,
            led_array_shape=shape,
            led_on_axis=on_axis,
        ),
        frames=_frames_with_na(leds, na),
        sample=path.stem,
        notes=(
            f"Imported from {path.name} (PtyLab FPM HDF5: ptychogram, encoder [y, x] in m, dxd, magnification, "
            f"wavelength, zled). Each frame keeps its LED's illumination NA (illumination_na); the grid pitch "
            f"{pitch:g} mm is {'given' if led_pitch_mm else 'the median LED spacing'}. exposure_ms is nominal."
        ),
        software=SOFTWARE_NAME,
    )
    return write_dataset(out_tif, meta, frames, overwrite=overwrite)
