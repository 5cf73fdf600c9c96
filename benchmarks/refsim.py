"""Independent reference simulator of an LED-array FP microscope, for validating the engine.

Every acceptance figure of UA-FP is measured on data from here (or real data), never only on
data from the engine's own `ForwardModel`: this module shares no physics code with the engine
(it imports nothing from `uafp_gui.physics`), so a convention or approximation the engine gets
wrong cannot cancel out (no "inverse crime"). It follows `shared/spec/dataset.md` section 2
literally, the slow and direct way:

- the object lives on a grid `subsamples` times finer than the camera's sample-plane pixel
  (>= 5 by default, finer than the engine's default grid of 4, and fine enough that the
  tilted exit wave never aliases into the pupil), over a field of view
  larger than the frame by a margin wider than the blur of the pupil, so nothing periodic wraps
  into the frame;
- each LED's tilted plane wave multiplies the object in real space, exp(i 2 pi u . x), with u
  from the true (rotated, shifted, per-LED perturbed) LED positions and the true height: the
  illumination is never rounded to a spectrum pixel. The object is a uniform background c plus
  the rest, which is brought smoothly to zero in the outer part of the margin; the background's
  tilted plane wave is imaged analytically (c P(u) exp(i 2 pi u . x)), so no wave is ever cut at
  the simulation grid's edge (a cut plane wave rings through the hard pupil edge into the
  frame, and in dark-field frames that ringing is a large part of the signal);
- a coherent imaging system with its own circular pupil and its own Noll Zernike polynomials
  (written out term by term below, not the engine's recursion) filters the exit wave;
- the intensity is integrated over each camera pixel from `subsamples` x `subsamples` samples;
- vignetting (smooth radial fall-off of the field), LED brightness spread and the LED's own
  inverse-square/cosine fall-off, Poisson shot noise, Gaussian read noise, a camera conversion
  gain, dark offset and quantisation to the bit depth make the raw counts.

The test object (`make_object`) is generated, not the engine's built-in sample: USAF-like bar
groups (amplitude and phase) spanning the synthetic resolution, and cell-like phase objects
with nuclei. The ground truth (`RefSimulation`) holds the object band-limited to the synthetic
aperture on the fine grid, the true geometry, per-LED offsets, Zernikes and frame gains.

The full-field presets (`FIELD_PRESETS`: field1024, field2048, field256) simulate a whole sensor with
field-dependent aberrations patch by patch (`simulate_field`, section "the whole field of view" below).

    python benchmarks/refsim.py OUT.tif [--preset misaligned|field1024|...] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

# ----------------------------------------------------------------------------- Zernike polynomials

# Noll-ordered, RMS-normalised on the unit disk (Noll 1976, table 1): written out term by term so it
# shares nothing with the engine's recursive implementation. Even j with m != 0 takes cos(m phi),
# odd j takes sin(m phi), as the dataset spec says.
_ZERNIKE_TERMS = {
    1: lambda r, p: np.ones_like(r),
    2: lambda r, p: 2 * r * np.cos(p),
    3: lambda r, p: 2 * r * np.sin(p),
    4: lambda r, p: math.sqrt(3) * (2 * r**2 - 1),
    5: lambda r, p: math.sqrt(6) * r**2 * np.sin(2 * p),
    6: lambda r, p: math.sqrt(6) * r**2 * np.cos(2 * p),
    7: lambda r, p: math.sqrt(8) * (3 * r**3 - 2 * r) * np.sin(p),
    8: lambda r, p: math.sqrt(8) * (3 * r**3 - 2 * r) * np.cos(p),
    9: lambda r, p: math.sqrt(8) * r**3 * np.sin(3 * p),
    10: lambda r, p: math.sqrt(8) * r**3 * np.cos(3 * p),
    11: lambda r, p: math.sqrt(5) * (6 * r**4 - 6 * r**2 + 1),
    12: lambda r, p: math.sqrt(10) * (4 * r**4 - 3 * r**2) * np.cos(2 * p),
    13: lambda r, p: math.sqrt(10) * (4 * r**4 - 3 * r**2) * np.sin(2 * p),
    14: lambda r, p: math.sqrt(10) * r**4 * np.cos(4 * p),
    15: lambda r, p: math.sqrt(10) * r**4 * np.sin(4 * p),
    16: lambda r, p: math.sqrt(12) * (10 * r**5 - 12 * r**3 + 3 * r) * np.cos(p),
    17: lambda r, p: math.sqrt(12) * (10 * r**5 - 12 * r**3 + 3 * r) * np.sin(p),
    18: lambda r, p: math.sqrt(12) * (5 * r**5 - 4 * r**3) * np.cos(3 * p),
    19: lambda r, p: math.sqrt(12) * (5 * r**5 - 4 * r**3) * np.sin(3 * p),
    20: lambda r, p: math.sqrt(12) * r**5 * np.cos(5 * p),
    21: lambda r, p: math.sqrt(12) * r**5 * np.sin(5 * p),
    22: lambda r, p: math.sqrt(7) * (20 * r**6 - 30 * r**4 + 12 * r**2 - 1),
}


def zernike_noll(j: int, rho: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """RMS-normalised Noll Zernike Z_j(rho, phi), j = 1..22 (not masked to the disk)."""
    if j not in _ZERNIKE_TERMS:
        raise ValueError(f"reference Zernike index {j} outside 1..22")
    return _ZERNIKE_TERMS[j](np.asarray(rho, dtype=float), np.asarray(phi, dtype=float))


def wavefront_rad(zernike_rad: dict[int, float], rho: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Pupil phase sum_j c_j Z_j (radians)."""
    total = np.zeros(np.broadcast(rho, phi).shape)
    for j, c in zernike_rad.items():
        if c:
            total = total + float(c) * zernike_noll(int(j), rho, phi)
    return total


# ----------------------------------------------------------------------------- the microscope


@dataclass(frozen=True)
class RefMicroscope:
    """A microscope, its hidden errors and the acquisition: everything the reference simulator needs."""

    wavelength_um: float = 0.532
    objective_na: float = 0.1
    magnification: float = 2.0
    camera_pixel_um: float = 3.69
    frame_size: int = 128
    led_pitch_mm: float = 4.0
    led_height_mm: float = 90.0  # nominal, as the user knows it
    led_array_shape: tuple[int, int] = (32, 32)
    led_on_axis: tuple[int, int] = (16, 16)
    led_grid: int = 15  # square n x n about the on-axis LED ...
    led_disk_na: float | None = None  # ... or, when set, every LED with nominal illumination NA below this
    order: str = "row"  # "row" (raster) or "spiral" (centre outward)
    # Hidden errors.
    shift_x_mm: float = 0.0
    shift_y_mm: float = 0.0
    rotation_deg: float = 0.0
    height_error_mm: float = 0.0
    led_position_error_mm: float = 0.0  # RMS per axis of each LED's offset from its grid place
    zernike_rad: dict[int, float] = field(default_factory=dict)
    led_brightness_spread: float = 0.0  # relative RMS
    vignetting: float = 0.0  # relative intensity drop at the frame corners
    # Camera.
    photons_per_pixel: float = 30000.0  # bright-field photons per pixel for a clear sample
    read_noise_e: float = 1.0
    bit_depth: int = 16
    camera_offset: float = 100.0
    exposure_ms: float = 10.0
    # Simulation.
    object_kind: str = "mixed"  # "usaf", "cells", "mixed", or "blank" (uniform: a diagnostic)
    subsamples: int | None = None  # fine object samples per camera pixel (None: >= 5, enough for the aperture)
    # A diagnostic, not a microscope: the object repeats with the frame's field of view, as the engine's
    # periodic model assumes (the sample around the field of view is a copy of what is inside).
    periodic_object: bool = False
    seed: int = 0

    @property
    def sample_pixel_um(self) -> float:
        return self.camera_pixel_um / self.magnification

    @property
    def true_height_mm(self) -> float:
        return self.led_height_mm + self.height_error_mm

    def true_geometry_dict(self) -> dict[str, float]:
        return {
            "shift_x_mm": self.shift_x_mm,
            "shift_y_mm": self.shift_y_mm,
            "rotation_deg": self.rotation_deg,
            "height_mm": self.true_height_mm,
        }


# The misaligned preset of `uafp_gui.simulate`, in the reference simulator (LEDs in row order, as
# the independent check used).
MISALIGNED = RefMicroscope(
    shift_x_mm=1.2,
    shift_y_mm=-0.8,
    rotation_deg=2.5,
    height_error_mm=4.0,
    zernike_rad={4: 1.5, 5: 0.5, 6: -0.4, 7: 0.3},
    led_brightness_spread=0.15,
    photons_per_pixel=3000.0,
    read_noise_e=2.0,
    bit_depth=12,
)
PRESETS = {"ideal": RefMicroscope(), "misaligned": MISALIGNED}


def led_list(micro: RefMicroscope) -> list[tuple[int, int]]:
    """The (row, col) LEDs lit, one per frame, in acquisition order."""
    r0, c0 = micro.led_on_axis
    rows, cols = micro.led_array_shape
    if micro.led_disk_na is not None:
        candidates = []
        for r in range(rows):
            for c in range(cols):
                x, y = (c - c0) * micro.led_pitch_mm, (r - r0) * micro.led_pitch_mm
                na = math.hypot(x, y) / math.sqrt(x * x + y * y + micro.led_height_mm**2)
                if na <= micro.led_disk_na:
                    candidates.append((r, c))
    else:
        half = micro.led_grid // 2
        lo_r, lo_c = int(round(r0)) - half, int(round(c0)) - half
        candidates = [(r, c) for r in range(lo_r, lo_r + micro.led_grid) for c in range(lo_c, lo_c + micro.led_grid)]
        if (
            min(min(p) for p in candidates) < 0
            or max(r for r, _ in candidates) >= rows
            or max(c for _, c in candidates) >= cols
        ):
            raise ValueError(f"a {micro.led_grid}x{micro.led_grid} square about {micro.led_on_axis} leaves the array")
    if micro.order == "spiral":
        candidates.sort(key=lambda p: (math.hypot(p[0] - r0, p[1] - c0), math.atan2(p[0] - r0, p[1] - c0)))
    elif micro.order != "row":
        raise ValueError(f"order must be 'row' or 'spiral' (got {micro.order!r})")
    return candidates


def true_led_positions_mm(
    micro: RefMicroscope, leds: list[tuple[int, int]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(L, 2) true [X', Y'] of each LED (rotate CCW, shift, per-LED offsets), and the offsets."""
    r0, c0 = micro.led_on_axis
    rc = np.asarray(leds, dtype=float)
    x, y = (rc[:, 1] - c0) * micro.led_pitch_mm, (rc[:, 0] - r0) * micro.led_pitch_mm
    t = math.radians(micro.rotation_deg)
    xr = x * math.cos(t) - y * math.sin(t) + micro.shift_x_mm
    yr = x * math.sin(t) + y * math.cos(t) + micro.shift_y_mm
    offsets = micro.led_position_error_mm * rng.standard_normal((len(leds), 2))
    return np.stack([xr, yr], axis=1) + offsets, offsets


def illumination_frequencies(positions_mm: np.ndarray, height_mm: float, wavelength_um: float) -> np.ndarray:
    """(L, 2) (u_x, u_y) cycles/um at the tile centre (0, 0): straight rays, no glass."""
    dx, dy = -positions_mm[:, 0], -positions_mm[:, 1]
    r = np.sqrt(dx * dx + dy * dy + height_mm * height_mm)
    return np.stack([dx / r, dy / r], axis=1) / wavelength_um


def choose_subsamples(micro: RefMicroscope, largest_frequency: float) -> int:
    """Fine samples per camera pixel: >= 5 (finer than the engine's default 4), and a fine-grid Nyquist
    1.3 x beyond the largest exit-wave frequency that can reach the pupil, so the real-space tilt
    never aliases into a frame."""
    if micro.subsamples is not None:
        if micro.subsamples < 4:
            raise ValueError("subsamples must be >= 4 (pixel integration from at least 4 x 4 samples)")
        return int(micro.subsamples)
    needed = 2 * micro.sample_pixel_um * 1.3 * (largest_frequency + micro.objective_na / micro.wavelength_um)
    return int(max(5, math.ceil(needed)))


def defocus_blur_px(micro: RefMicroscope) -> float:
    """Geometric blur radius (camera pixels) of the Zernike defocus and higher terms: sets the margin."""
    z = sum(abs(float(v)) for j, v in micro.zernike_rad.items() if int(j) >= 4)
    dz_um = 2 * math.sqrt(3) * z * micro.wavelength_um / (math.pi * micro.objective_na**2)
    return dz_um * micro.objective_na / micro.sample_pixel_um


# ----------------------------------------------------------------------------- the test object


def make_object(
    shape: tuple[int, int], pixel_um: float, resolution_um: float, rng: np.random.Generator, kind: str = "mixed"
) -> np.ndarray:
    """Complex test object on a fine grid: USAF-like bars and cell-like phase objects.

    `resolution_um` is the finest period the synthetic aperture passes (wavelength / synthetic NA):
    bar groups run from just below it to several times it, so the truth band-limited to the
    aperture keeps some and loses others.
    """
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(float)
    amplitude = np.full(shape, 0.92)
    phase = np.zeros(shape)
    fov = min(rows, cols) * pixel_um
    if kind not in ("cells", "mixed", "usaf", "blank"):
        raise ValueError(f"object kind must be 'usaf', 'cells', 'mixed' or 'blank' (got {kind!r})")
    if kind in ("cells", "mixed"):
        n_cells = int(rng.integers(10, 22))
        for _ in range(n_cells):
            radius = rng.uniform(0.04, 0.10) * fov
            cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
            a, b = radius * rng.uniform(0.7, 1.0), radius * rng.uniform(0.7, 1.0)
            angle = rng.uniform(0, np.pi)
            dx, dy = (xx - cx) * pixel_um, (yy - cy) * pixel_um
            u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
            v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
            d2 = u * u + v * v
            inside = d2 < 1
            phase += rng.uniform(0.4, 1.4) * np.sqrt(np.clip(1 - d2, 0, None))
            amplitude[inside] *= rng.uniform(0.85, 0.98)
            nucleus = d2 * 9 < 1
            phase += rng.uniform(0.2, 0.6) * np.sqrt(np.clip(1 - 9 * d2, 0, None))
            amplitude[nucleus] *= rng.uniform(0.6, 0.85)
    if kind in ("usaf", "mixed"):
        periods = resolution_um * np.geomspace(0.8, 8.0, 9)
        periods = periods[periods * 5 < 0.3 * fov]
        spots = rng.permutation(len(periods))
        for index, period in enumerate(periods):
            length = 5 * period
            # Place the group (3 bars and 3 orthogonal bars) somewhere inside the frame.
            cy = rng.uniform(0.15, 0.85) * rows * pixel_um
            cx = rng.uniform(0.15, 0.85) * cols * pixel_um
            y_um, x_um = yy * pixel_um - cy, xx * pixel_um - cx
            in_box_h = (np.abs(y_um) < length / 2) & (x_um >= 0) & (x_um < 2.5 * period)
            bars_h = in_box_h & ((x_um / period) % 1.0 < 0.5)
            in_box_v = (np.abs(x_um + length / 2 + period) < length / 2) & (y_um >= 0) & (y_um < 2.5 * period)
            bars_v = in_box_v & ((y_um / period) % 1.0 < 0.5)
            bars = bars_h | bars_v
            if spots[index] % 2 == 0:
                amplitude[bars] *= 0.35
            else:
                phase[bars] += 0.9
    # Edges softened over a fixed physical width (not a number of grid samples), so the object does
    # not depend on the grid it is drawn on.
    sigma = 0.15 * resolution_um / pixel_um
    amplitude = ndimage.gaussian_filter(np.clip(amplitude, 0.05, 1.0), sigma)
    phase = ndimage.gaussian_filter(phase, sigma)
    return amplitude * np.exp(1j * (phase - phase.mean()))


def lowpass_fine(field: np.ndarray, pixel_um: float, cutoff_per_um: float) -> np.ndarray:
    """`field` with every spatial frequency above `cutoff_per_um` removed (circular)."""
    fy = np.fft.fftfreq(field.shape[0], d=pixel_um)
    fx = np.fft.fftfreq(field.shape[1], d=pixel_um)
    mask = (fy[:, None] ** 2 + fx[None, :] ** 2) <= cutoff_per_um**2
    return np.fft.ifft2(np.fft.fft2(field) * mask)


# ----------------------------------------------------------------------------- imaging


def edge_taper_px(micro: RefMicroscope, margin_px: int) -> int:
    """Width (camera pixels) of the outer part of the margin where the object is brought to its
    background: beyond the aberrations' blur from the frame, so the frames see the object itself."""
    return int(max(2, margin_px - math.ceil(defocus_blur_px(micro)) - 2))


def split_background(
    field: np.ndarray, margin: int, taper: int, periodic: bool = False
) -> tuple[complex, np.ndarray]:
    """(c, rest): `field` = c + rest inside the grid but for its outer `taper` samples, where `rest`
    falls smoothly (raised cosine) to zero; c is the field's mean over the margin. `periodic` (the
    periodic-object diagnostic) keeps the whole field as it is: c = 0."""
    if periodic:
        return 0j, field
    rows, cols = field.shape
    inner = np.ones(field.shape, dtype=bool)
    inner[margin : rows - margin, margin : cols - margin] = False
    background = complex(field[inner].mean()) if inner.any() else complex(field.mean())

    def ramp(n: int) -> np.ndarray:
        distance = np.minimum(np.arange(n), np.arange(n)[::-1]) + 0.5  # samples from the nearer edge
        return np.where(distance >= taper, 1.0, np.sin(0.5 * np.pi * np.clip(distance / taper, 0, 1)) ** 2)

    window = ramp(rows)[:, None] * ramp(cols)[None, :]
    return background, (field - background) * window


@dataclass
class RefSimulation:
    """A reference dataset and its ground truth."""

    micro: RefMicroscope
    meta: object  # uafp_gui.io.schema.DatasetMeta (nominal geometry, errors hidden)
    frames: np.ndarray  # (N, H, W) uint16 raw counts
    expected_counts: np.ndarray  # (N, H, W) float noise-free counts above the offset
    leds: list[tuple[int, int]]
    led_positions_mm: np.ndarray  # (N, 2) true positions
    led_offsets_mm: np.ndarray  # (N, 2) per-LED placement errors
    frequencies: np.ndarray  # (N, 2) true illumination (u_x, u_y) cycles/um
    frame_gain: np.ndarray  # (N,) true gains in the engine's units (counts per ms at |object| = 1)
    object_fine: np.ndarray  # complex, the frame's field of view on the fine grid
    fine_pixel_um: float
    synthetic_na: float
    subsamples: int

    @property
    def truth(self) -> np.ndarray:
        """The object band-limited to the synthetic aperture (what any reconstruction can reach)."""
        return lowpass_fine(self.object_fine, self.fine_pixel_um, self.synthetic_na / self.micro.wavelength_um)

    @property
    def true_zernike(self) -> dict[int, float]:
        return {j: float(self.micro.zernike_rad.get(j, 0.0)) for j in range(2, 22)}

    def calibration_dict(self) -> dict:
        """The true system as a `uafp-calibration` dictionary (per-LED offsets as an extra field)."""
        return {
            "format": "uafp-calibration",
            "version": 1,
            "led_geometry": self.micro.true_geometry_dict(),
            "zernike_rad": {str(j): v for j, v in self.true_zernike.items()},
            "frame_gain": [float(g) for g in self.frame_gain],
            "led_positions_mm": self.led_positions_mm.tolist(),
            "object_pixel_um": self.fine_pixel_um,
            "final_loss": 0.0,
            "iterations": 0,
            "elapsed_s": 0.0,
            "source_dataset": "",
            "software": "benchmarks/refsim.py",
            "ground_truth": True,
            "synthetic_aperture_na": self.synthetic_na,
            "led_offsets_mm": self.led_offsets_mm.tolist(),
            "refsim": {k: v for k, v in asdict(self.micro).items() if k != "zernike_rad"}
            | {"zernike_rad": {str(k): v for k, v in self.micro.zernike_rad.items()}},
        }

    def dataset(self):
        from uafp_gui.io.dataset import Dataset

        return Dataset(meta=self.meta, frames=self.frames)


def nominal_meta(micro: RefMicroscope, leds: list[tuple[int, int]]):
    """The dataset metadata as the microscope's user knows it (errors hidden)."""
    from uafp_gui.io.schema import DatasetMeta

    return DatasetMeta.from_dict(
        {
            "format": "uafp-dataset",
            "version": 1,
            "wavelength_um": micro.wavelength_um,
            "objective_na": micro.objective_na,
            "magnification": micro.magnification,
            "camera_pixel_um": micro.camera_pixel_um,
            "led_pitch_mm": micro.led_pitch_mm,
            "led_height_mm": micro.led_height_mm,
            "led_array_shape": list(micro.led_array_shape),
            "led_on_axis": list(micro.led_on_axis),
            "frames": [{"leds": [list(led)], "exposure_ms": micro.exposure_ms} for led in leds],
            "camera_offset": micro.camera_offset,
            "bit_depth": micro.bit_depth,
            "sample": f"refsim {micro.object_kind} object",
            "notes": "simulated by benchmarks/refsim.py (independent reference simulator)",
        }
    )


def simulate(micro: RefMicroscope, batch: int = 8) -> RefSimulation:
    """Simulate the raw frames of `micro` and keep the ground truth."""
    rng = np.random.default_rng(micro.seed)
    leds = led_list(micro)
    positions, offsets = true_led_positions_mm(micro, leds, rng)
    frequencies = illumination_frequencies(positions, micro.true_height_mm, micro.wavelength_um)
    largest = float(np.linalg.norm(frequencies, axis=1).max())
    q = choose_subsamples(micro, largest)
    n = micro.frame_size
    p = micro.sample_pixel_um
    dx = p / q
    margin = int(math.ceil(1.5 * defocus_blur_px(micro) + 8))
    padded = n + 2 * margin
    padded += (-padded) % 8
    margin = (padded - n) // 2
    size = padded * q
    synthetic_na = micro.objective_na + largest * micro.wavelength_um

    object_big = make_object((size, size), dx, micro.wavelength_um / synthetic_na, rng, micro.object_kind)
    crop = slice(margin * q, (margin + n) * q)
    if micro.periodic_object:
        object_big = np.pad(object_big[crop, crop], margin * q, mode="wrap")

    coordinates = (np.arange(size) - size / 2) * dx
    f = np.fft.fftfreq(size, d=dx)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    cutoff = micro.objective_na / micro.wavelength_um
    rho = np.sqrt(fx**2 + fy**2) / cutoff
    phi = np.arctan2(fy, fx)
    pupil = np.where(rho <= 1.0, np.exp(1j * wavefront_rad(micro.zernike_rad, rho, phi)), 0.0)

    brightness = np.clip(1 + micro.led_brightness_spread * rng.standard_normal(len(leds)), 0.2, None)
    # The LED's own fall-off at the sample: inverse square and cosine (relative to the on-axis LED).
    cos_theta = micro.true_height_mm / np.sqrt((positions**2).sum(axis=1) + micro.true_height_mm**2)
    brightness = brightness * cos_theta**3
    yy, xx = np.mgrid[0:n, 0:n]
    r2 = ((yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2) / (2 * ((n - 1) / 2) ** 2)
    vignette = 1 - micro.vignetting * r2

    background, rest = split_background(object_big, margin * q, edge_taper_px(micro, margin) * q, micro.periodic_object)
    # The pupil at each LED's own illumination frequency: what the background's plane wave passes.
    rho_u = np.linalg.norm(frequencies, axis=1) / cutoff
    phi_u = np.arctan2(frequencies[:, 1], frequencies[:, 0])
    pupil_at_u = np.where(rho_u <= 1.0, np.exp(1j * wavefront_rad(micro.zernike_rad, rho_u, phi_u)), 0.0)
    obj_t = torch.as_tensor(rest, dtype=torch.complex64)
    pupil_t = torch.as_tensor(pupil, dtype=torch.complex64)
    intensities = np.empty((len(leds), n, n))
    with torch.no_grad():
        for start in range(0, len(leds), batch):
            # exp(i 2 pi (u_x x + u_y y)) is separable: two 1-D phase ramps (float64 phases, then complex64).
            u = frequencies[start : start + batch]
            ramp_x = torch.as_tensor(np.exp(2j * np.pi * u[:, 0, None] * coordinates[None]), dtype=torch.complex64)
            ramp_y = torch.as_tensor(np.exp(2j * np.pi * u[:, 1, None] * coordinates[None]), dtype=torch.complex64)
            plane_wave = ramp_y[:, :, None] * ramp_x[:, None, :]
            field_ = torch.fft.ifft2(torch.fft.fft2(obj_t[None] * plane_wave) * pupil_t[None])
            passed = torch.as_tensor(background * pupil_at_u[start : start + batch], dtype=torch.complex64)
            field_ = field_ + passed[:, None, None] * plane_wave
            intensity = (field_.real**2 + field_.imag**2)[:, crop, crop]
            intensities[start : start + batch] = intensity.reshape(-1, n, q, n, q).mean(dim=(2, 4)).numpy()

    electrons_per_count = max(1.0, 2.5 * micro.photons_per_pixel / 2**micro.bit_depth)
    expected_e = micro.photons_per_pixel * brightness[:, None, None] * vignette[None] * intensities
    electrons = rng.poisson(np.clip(expected_e, 0, None)).astype(float)
    electrons += micro.read_noise_e * rng.standard_normal(electrons.shape)
    counts = np.clip(np.round(electrons / electrons_per_count + micro.camera_offset), 0, 2**micro.bit_depth - 1)
    frame_gain = micro.photons_per_pixel * brightness / (electrons_per_count * micro.exposure_ms)
    return RefSimulation(
        micro=micro,
        meta=nominal_meta(micro, leds),
        frames=counts.astype(np.uint16),
        expected_counts=expected_e / electrons_per_count,
        leds=leds,
        led_positions_mm=positions,
        led_offsets_mm=offsets,
        frequencies=frequencies,
        frame_gain=frame_gain,
        object_fine=object_big[crop, crop],
        fine_pixel_um=dx,
        synthetic_na=float(synthetic_na),
        subsamples=q,
    )


def write_reference(simulation: RefSimulation, dataset_path: Path) -> Path:
    """Write the dataset (the project's writer) and `<stem>_truth/` (band-limited object, true system)."""
    from uafp_gui.io.calibration import Calibration
    from uafp_gui.io.result import write_result
    from uafp_gui.io.writer import write_dataset

    dataset_path = Path(dataset_path)
    write_dataset(dataset_path, simulation.meta, simulation.frames)
    truth_folder = dataset_path.with_name(dataset_path.stem + "_truth")
    micro = simulation.micro
    cutoff = micro.objective_na / micro.wavelength_um
    grid = (np.arange(micro.frame_size) - micro.frame_size // 2) / (micro.frame_size * micro.sample_pixel_um)
    fy, fx = np.meshgrid(grid, grid, indexing="ij")
    rho, phi = np.sqrt(fx**2 + fy**2) / cutoff, np.arctan2(fy, fx)
    truth = simulation.truth
    write_result(
        truth_folder,
        amplitude=np.abs(truth).astype(np.float32),
        phase=np.angle(truth).astype(np.float32),
        pupil_amplitude=(rho <= 1).astype(np.float32),
        pupil_phase=np.where(rho <= 1, wavefront_rad(micro.zernike_rad, rho, phi), 0).astype(np.float32),
        calibration=Calibration.from_dict(dict(simulation.calibration_dict(), source_dataset=dataset_path.name)),
    )
    return truth_folder




# ----------------------------------------------------------------------------- the whole field of view
#
# A full sensor (1024^2, 2048^2) seen through a lens whose aberrations vary over the field. The frames
# are simulated patch by patch (a space-variant PSF, piecewise constant over patches of `patch_px`
# camera pixels, blended smoothly): in each patch the pupil is the lens's at the patch centre, and the
# illumination is each LED's exact spherical wave (its direction changes across the patch and across
# the field, so a bright/dark-field boundary can cross the field where it really does). The object is
# a list of features (cells, bar groups) drawn only where a window needs them, so no array ever spans
# the whole field on the fine grid.

FIELD_TERMS = ("1", "x", "y", "x^2", "xy", "y^2")


def field_zernike(field_zernike_rad: dict[int, tuple[float, ...]], u: np.ndarray | float, v: np.ndarray | float):
    """{Noll j: c_j} at normalised field position (u, v) = (x, y) / field half-width, from the
    polynomial coefficients (1, u, v, u^2, uv, v^2) of each j."""
    out = {}
    for j, coefficients in field_zernike_rad.items():
        c = tuple(coefficients) + (0.0,) * (6 - len(coefficients))
        out[int(j)] = c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v
    return out


# Field curvature (defocus growing as r^2), astigmatism and coma growing off axis, a little spherical.
FIELD_ZERNIKE_RAD: dict[int, tuple[float, ...]] = {
    4: (0.3, 0.0, 0.0, 0.5, 0.0, 0.5),
    5: (0.0, 0.0, 0.0, 0.0, 0.5, 0.0),
    6: (0.1, 0.0, 0.0, 0.3, 0.0, -0.3),
    7: (0.0, 0.0, 0.3, 0.0, 0.0, 0.0),
    8: (0.0, 0.3, 0.0, 0.0, 0.0, 0.0),
    11: (0.1, 0.0, 0.0, 0.0, 0.0, 0.0),
}


@dataclass(frozen=True)
class RefField:
    """A full-field acquisition: the microscope (its `frame_size` is the sensor's side, its
    `zernike_rad` ignored), the lens's field-dependent Zernikes, the simulation's patch size."""

    micro: RefMicroscope = field(default_factory=lambda: FIELD_MICROSCOPE)
    field_zernike_rad: dict[int, tuple[float, ...]] = field(default_factory=lambda: dict(FIELD_ZERNIKE_RAD))
    patch_px: int = 128
    patch_overlap_px: int = 32
    # Camera pixels of object simulated around each patch beyond the aberrations' blur (the hard pupil's
    # sinc tails reach further: frames simulated in different patches differ by ~1-2 % mean, most for
    # LEDs near the pupil's edge; ~14 extra px about halve that).
    extra_margin_px: int = 0

    @property
    def half_width_um(self) -> float:
        return self.micro.frame_size * self.micro.sample_pixel_um / 2

    def zernike_at(self, x_um, y_um) -> dict[int, np.ndarray | float]:
        """The lens's Zernikes (rad) at sample-plane positions relative to the optical axis (field centre)."""
        return field_zernike(self.field_zernike_rad, np.asarray(x_um) / self.half_width_um,
                             np.asarray(y_um) / self.half_width_um)

    def max_abs_zernike(self) -> float:
        """The largest sum of |c_j| (j >= 4) over the field (corners included): sets the margins."""
        grid = np.linspace(-1, 1, 9)
        uu, vv = np.meshgrid(grid, grid)
        values = field_zernike(self.field_zernike_rad, uu, vv)
        return float(np.max(sum(np.abs(v) for j, v in values.items() if j >= 4)))


FIELD_MICROSCOPE = RefMicroscope(
    frame_size=1024,
    shift_x_mm=0.6,
    shift_y_mm=-0.4,
    rotation_deg=1.0,
    height_error_mm=2.0,
    led_brightness_spread=0.1,
    photons_per_pixel=5000.0,
    read_noise_e=2.0,
    bit_depth=12,
    vignetting=0.3,
)
FIELD_PRESETS = {
    "field1024": RefField(),
    "field2048": RefField(micro=replace(FIELD_MICROSCOPE, frame_size=2048), patch_px=256, patch_overlap_px=48),
    # the test field: 256^2, 81 frames
    "field256": RefField(micro=replace(FIELD_MICROSCOPE, frame_size=256, led_grid=9), patch_px=64,
                         patch_overlap_px=16),
}


class FieldObject:
    """A large test object as a list of features (cells with nuclei, USAF-like bar groups), drawn on any
    window of any grid: the same object however the field is cut. Densities as `make_object`'s."""

    def __init__(self, extent_um: tuple[float, float, float, float], resolution_um: float,
                 rng: np.random.Generator, kind: str = "mixed"):
        if kind not in ("cells", "mixed", "usaf", "blank"):
            raise ValueError(f"object kind must be 'usaf', 'cells', 'mixed' or 'blank' (got {kind!r})")
        x0, x1, y0, y1 = extent_um
        area = (x1 - x0) * (y1 - y0)
        fov = 128 * 1.845  # make_object's frame: 10-22 cells and one set of bar groups per fov^2
        self.resolution_um = resolution_um
        self.cells: list[tuple] = []
        self.bars: list[tuple] = []
        if kind in ("cells", "mixed"):
            for _ in range(int(rng.poisson(16 * area / fov**2))):
                radius = rng.uniform(0.04, 0.10) * fov
                self.cells.append((
                    rng.uniform(x0, x1), rng.uniform(y0, y1), radius * rng.uniform(0.7, 1.0),
                    radius * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi), rng.uniform(0.4, 1.4),
                    rng.uniform(0.85, 0.98), rng.uniform(0.2, 0.6), rng.uniform(0.6, 0.85),
                ))
        if kind in ("usaf", "mixed"):
            periods = resolution_um * np.geomspace(0.8, 8.0, 9)
            periods = periods[periods * 5 < 0.3 * fov]
            for _ in range(max(1, int(round(area / fov**2)))):
                for period in periods:
                    self.bars.append((rng.uniform(x0, x1), rng.uniform(y0, y1), float(period), bool(rng.integers(2))))

    def render(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """The complex object at sample centres `x_um` (columns) x `y_um` (rows): evenly spaced 1-D arrays."""
        dx = float(x_um[1] - x_um[0]) if len(x_um) > 1 else 1.0
        sigma = 0.15 * self.resolution_um / dx
        pad = int(math.ceil(4 * sigma)) + 1
        xs = x_um[0] + (np.arange(-pad, len(x_um) + pad)) * dx
        ys = y_um[0] + (np.arange(-pad, len(y_um) + pad)) * dx
        amplitude = np.full((len(ys), len(xs)), 0.92)
        phase = np.zeros((len(ys), len(xs)))

        def window(cx: float, cy: float, reach: float):
            c0, c1 = np.searchsorted(xs, [cx - reach, cx + reach])
            r0, r1 = np.searchsorted(ys, [cy - reach, cy + reach])
            if c1 <= c0 or r1 <= r0:
                return None
            return slice(r0, r1), slice(c0, c1)

        for cx, cy, a, b, angle, cell_phase, cell_amp, nucleus_phase, nucleus_amp in self.cells:
            region = window(cx, cy, max(a, b))
            if region is None:
                continue
            dx_, dy_ = np.meshgrid(xs[region[1]] - cx, ys[region[0]] - cy)
            u = (dx_ * np.cos(angle) + dy_ * np.sin(angle)) / a
            v = (-dx_ * np.sin(angle) + dy_ * np.cos(angle)) / b
            d2 = u * u + v * v
            phase[region] += cell_phase * np.sqrt(np.clip(1 - d2, 0, None))
            phase[region] += nucleus_phase * np.sqrt(np.clip(1 - 9 * d2, 0, None))
            amplitude[region] *= np.where(d2 < 1, cell_amp, 1.0) * np.where(9 * d2 < 1, nucleus_amp, 1.0)
        for cx, cy, period, is_amplitude in self.bars:
            length = 5 * period
            region = window(cx, cy, length + 3 * period)
            if region is None:
                continue
            x, y = np.meshgrid(xs[region[1]] - cx, ys[region[0]] - cy)
            in_h = (np.abs(y) < length / 2) & (x >= 0) & (x < 2.5 * period) & ((x / period) % 1.0 < 0.5)
            in_v = (np.abs(x + length / 2 + period) < length / 2) & (y >= 0) & (y < 2.5 * period) & (
                (y / period) % 1.0 < 0.5)
            bars = in_h | in_v
            if is_amplitude:
                amplitude[region] = np.where(bars, amplitude[region] * 0.35, amplitude[region])
            else:
                phase[region] = phase[region] + 0.9 * bars
        amplitude = ndimage.gaussian_filter(np.clip(amplitude, 0.05, 1.0), sigma)[pad:-pad, pad:-pad]
        phase = ndimage.gaussian_filter(phase, sigma)[pad:-pad, pad:-pad]
        return amplitude * np.exp(1j * phase)


def _blend_weights(length: int, starts: list[int], size: int) -> list[np.ndarray]:
    """1-D weights of patches [s, s + size) covering 0..length: a partition of unity, raised cosine over overlaps."""
    weights = []
    for k, start in enumerate(starts):
        x = np.arange(start, start + size) + 0.5
        weight = np.ones(size)
        if k > 0 and starts[k - 1] + size > start:
            a, b = start, starts[k - 1] + size
            weight *= np.sin(0.5 * np.pi * np.clip((x - a) / (b - a), 0, 1)) ** 2
        if k + 1 < len(starts) and start + size > starts[k + 1]:
            a, b = starts[k + 1], start + size
            t = np.clip((x - a) / (b - a), 0, 1)
            weight *= np.where(t >= 1, 0.0, np.cos(0.5 * np.pi * t) ** 2)
        weights.append(weight)
    return weights


def _starts(length: int, size: int, overlap: int) -> list[int]:
    if size >= length:
        return [0]
    count = max(2, math.ceil((length - overlap) / (size - overlap)))
    return [int(round(k * (length - size) / (count - 1))) for k in range(count)]


@dataclass
class RefFieldSimulation:
    """A full-field reference dataset and its ground truth."""

    spec: RefField
    meta: object  # DatasetMeta (nominal geometry, errors hidden)
    frames: np.ndarray  # (N, H, W) uint16
    leds: list[tuple[int, int]]
    led_positions_mm: np.ndarray  # (N, 2) true positions
    frame_gain: np.ndarray  # (N,) true gains at the field centre (engine units)
    vignetting: np.ndarray  # (H, W) relative intensity of the field
    object: FieldObject
    synthetic_na: float
    subsamples: int
    seconds: float

    @property
    def micro(self) -> RefMicroscope:
        return self.spec.micro

    def pixel_centres_um(self, upsample: int = 1) -> np.ndarray:
        """Sample-plane coordinates (relative to the optical axis) of a grid `upsample` x finer than the camera's."""
        n, p = self.micro.frame_size, self.micro.sample_pixel_um
        return (np.arange(n * upsample) + 0.5) * p / upsample - n * p / 2

    def truth(self, upsample: int = 4, region: tuple[slice, slice] | None = None) -> np.ndarray:
        """The object band-limited to the synthetic aperture (at the field centre) on the camera grid times
        `upsample`, the whole field or the camera-pixel `region` (rows, cols) of it."""
        coordinates = self.pixel_centres_um(upsample)
        rows, cols = (slice(None), slice(None)) if region is None else region
        ys = coordinates[slice(*(None if v is None else v * upsample for v in (rows.start, rows.stop)))]
        xs = coordinates[slice(*(None if v is None else v * upsample for v in (cols.start, cols.stop)))]
        p = self.micro.sample_pixel_um / upsample
        pad = int(math.ceil(8 * self.micro.wavelength_um / self.synthetic_na / p)) + 8
        xs_pad = xs[0] + np.arange(-pad, len(xs) + pad) * p
        ys_pad = ys[0] + np.arange(-pad, len(ys) + pad) * p
        obj = self.object.render(xs_pad, ys_pad)
        band = lowpass_fine(obj, p, self.synthetic_na / self.micro.wavelength_um)
        return band[pad:-pad, pad:-pad]

    def zernike_at(self, x_um, y_um):
        return self.spec.zernike_at(x_um, y_um)

    def simulated_zernike_at(self, x_um, y_um) -> dict[int, np.ndarray]:
        """The lens's Zernikes (rad) as the frames carry them: each patch was simulated with the Zernikes at
        its centre and the patches' intensities blended (raised cosine), so a point sees the blend of its
        patches' values -- held at the outermost patch centres' (+-0.75 of the half-width for field256)
        towards the frame's edges, where `zernike_at` goes on growing (up to ~0.5 rad apart at field256's corners)."""
        micro, spec = self.micro, self.spec
        n, p = micro.frame_size, micro.sample_pixel_um
        starts = _starts(n, spec.patch_px, spec.patch_overlap_px)
        size = min(spec.patch_px, n)
        weights = _blend_weights(n, starts, size)
        x_um, y_um = np.broadcast_arrays(np.asarray(x_um, dtype=float), np.asarray(y_um, dtype=float))
        half = n * p / 2
        cols = np.clip(np.floor((x_um + half) / p).astype(int), 0, n - 1)
        rows = np.clip(np.floor((y_um + half) / p).astype(int), 0, n - 1)
        out: dict[int, np.ndarray] = {int(j): np.zeros(x_um.shape) for j in spec.field_zernike_rad}
        for a, y_start in enumerate(starts):
            wy = np.where((rows >= y_start) & (rows < y_start + size),
                          weights[a][np.clip(rows - y_start, 0, size - 1)], 0)
            for b, x_start in enumerate(starts):
                wx = np.where((cols >= x_start) & (cols < x_start + size),
                              weights[b][np.clip(cols - x_start, 0, size - 1)], 0)
                centre = spec.zernike_at((x_start + size / 2) * p - half, (y_start + size / 2) * p - half)
                for j, value in centre.items():
                    out[int(j)] = out[int(j)] + wy * wx * float(value)
        return out

    def calibration_dict(self) -> dict:
        micro = self.micro
        return {
            "format": "uafp-calibration",
            "version": 1,
            "led_geometry": micro.true_geometry_dict(),
            "zernike_rad": {str(j): float(v) for j, v in self.zernike_at(0.0, 0.0).items()},
            "frame_gain": [float(g) for g in self.frame_gain],
            "led_positions_mm": self.led_positions_mm.tolist(),
            "software": "benchmarks/refsim.py (field)",
            "ground_truth": True,
            "synthetic_aperture_na": self.synthetic_na,
            "field_zernike_rad": {str(j): list(c) for j, c in self.spec.field_zernike_rad.items()},
            "field_half_width_um": self.spec.half_width_um,
            "field_zernike_terms": list(FIELD_TERMS),
        }


def simulate_field(spec: RefField, batch: int = 8, progress=None) -> RefFieldSimulation:
    """Simulate a full-field acquisition patch by patch (module section above) and keep the ground truth."""
    import time

    started = time.perf_counter()
    micro = spec.micro
    rng = np.random.default_rng(micro.seed)
    leds = led_list(micro)
    positions, _ = true_led_positions_mm(micro, leds, rng)
    height = micro.true_height_mm
    frequencies = illumination_frequencies(positions, height, micro.wavelength_um)
    largest = float(np.linalg.norm(frequencies, axis=1).max()) + spec.half_width_um * math.sqrt(2) / (
        height * 1000 * micro.wavelength_um)
    q = choose_subsamples(micro, largest)
    n, p = micro.frame_size, micro.sample_pixel_um
    dx = p / q
    wavelength = micro.wavelength_um
    cutoff = micro.objective_na / wavelength
    synthetic_na = micro.objective_na + float(np.linalg.norm(frequencies, axis=1).max()) * wavelength
    blur_micro = replace(micro, zernike_rad={4: spec.max_abs_zernike()})
    margin = int(math.ceil(1.5 * defocus_blur_px(blur_micro) + 8)) + spec.extra_margin_px
    taper = edge_taper_px(blur_micro, margin - spec.extra_margin_px)
    half = n * p / 2
    obj = FieldObject((-half - margin * p, half + margin * p, -half - margin * p, half + margin * p),
                      wavelength / synthetic_na, rng, micro.object_kind)

    brightness = np.clip(1 + micro.led_brightness_spread * rng.standard_normal(len(leds)), 0.2, None)
    starts = _starts(n, spec.patch_px, spec.patch_overlap_px)
    size = min(spec.patch_px, n)
    weights = _blend_weights(n, starts, size)
    window = size + 2 * margin
    window += (-window) % 8
    margin_px = (window - size) // 2
    grid = window * q
    f = np.fft.fftfreq(grid, d=dx)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    rho, phi = np.sqrt(fx**2 + fy**2) / cutoff, np.arctan2(fy, fx)
    leds_um = positions * 1000.0
    height_um = height * 1000.0
    intensities = np.zeros((len(leds), n, n), dtype=np.float32)
    total = len(starts) ** 2
    done = 0
    for row, y_start in enumerate(starts):
        for col, x_start in enumerate(starts):
            xc = (x_start + size / 2) * p - half
            yc = (y_start + size / 2) * p - half
            zernike = {j: float(v) for j, v in spec.zernike_at(xc, yc).items()}
            pupil = np.where(rho <= 1.0, np.exp(1j * wavefront_rad(zernike, rho, phi)), 0.0)
            pupil_t = torch.as_tensor(pupil, dtype=torch.complex64)
            # fine sample centres of the window (camera pixels x_start - margin_px ...)
            xs = (x_start - margin_px) * p - half + (np.arange(grid) + 0.5) * dx
            ys = (y_start - margin_px) * p - half + (np.arange(grid) + 0.5) * dx
            background, rest = split_background(obj.render(xs, ys), margin_px * q, taper * q)
            rest_t = torch.as_tensor(rest, dtype=torch.complex64)
            # the background's pupil response at each camera pixel's local illumination direction
            coarse_x = xs.reshape(window, q).mean(axis=1)
            coarse_y = ys.reshape(window, q).mean(axis=1)
            crop = slice(margin_px * q, (margin_px + size) * q)
            weight = (weights[row][:, None] * weights[col][None, :]).astype(np.float32)
            for start in range(0, len(leds), batch):
                chunk = slice(start, min(start + batch, len(leds)))
                dxl = xs[None, None, :] - leds_um[chunk, 0, None, None]
                dyl = ys[None, :, None] - leds_um[chunk, 1, None, None]
                r = np.sqrt(dxl**2 + dyl**2 + height_um**2)
                r_c = np.sqrt((xc - leds_um[chunk, 0]) ** 2 + (yc - leds_um[chunk, 1]) ** 2 + height_um**2)
                wave = np.exp(2j * np.pi / wavelength * (r - r_c[:, None, None])).astype(np.complex64)
                wave_t = torch.as_tensor(wave)
                with torch.no_grad():
                    field_ = torch.fft.ifft2(torch.fft.fft2(rest_t[None] * wave_t) * pupil_t[None])
                # local direction of each camera pixel of the window: the background's passed fraction
                cdx = coarse_x[None, None, :] - leds_um[chunk, 0, None, None]
                cdy = coarse_y[None, :, None] - leds_um[chunk, 1, None, None]
                cr = np.sqrt(cdx**2 + cdy**2 + height_um**2)
                u_rho = np.sqrt((cdx / cr) ** 2 + (cdy / cr) ** 2) / wavelength / cutoff
                u_phi = np.arctan2(cdy, cdx)
                passed = np.where(u_rho <= 1.0, np.exp(1j * wavefront_rad(zernike, u_rho, u_phi)), 0.0)
                passed = np.repeat(np.repeat(passed, q, axis=1), q, axis=2)
                field_ = field_ + torch.as_tensor(background * passed, dtype=torch.complex64) * wave_t
                intensity = (field_.real**2 + field_.imag**2)[:, crop, crop]
                pixels = intensity.reshape(-1, size, q, size, q).mean(dim=(2, 4)).numpy()
                intensities[chunk, y_start : y_start + size, x_start : x_start + size] += pixels * weight[None]
            done += 1
            if progress is not None:
                progress(done, total)

    cos_theta = height / np.sqrt((positions**2).sum(axis=1) + height**2)
    brightness = brightness * cos_theta**3
    yy, xx = np.mgrid[0:n, 0:n]
    r2 = ((yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2) / (2 * ((n - 1) / 2) ** 2)
    vignette = 1 - micro.vignetting * r2
    electrons_per_count = max(1.0, 2.5 * micro.photons_per_pixel / 2**micro.bit_depth)
    frames = np.empty((len(leds), n, n), dtype=np.uint16)
    for k in range(len(leds)):  # frame by frame: no (N, H, W) float64 array
        expected = micro.photons_per_pixel * brightness[k] * vignette * intensities[k]
        electrons = rng.poisson(np.clip(expected, 0, None)).astype(float)
        electrons += micro.read_noise_e * rng.standard_normal(electrons.shape)
        counts = np.round(electrons / electrons_per_count + micro.camera_offset)
        frames[k] = np.clip(counts, 0, 2**micro.bit_depth - 1).astype(np.uint16)
    frame_gain = micro.photons_per_pixel * brightness / (electrons_per_count * micro.exposure_ms)
    return RefFieldSimulation(
        spec=spec,
        meta=nominal_meta(micro, leds),
        frames=frames,
        leds=leds,
        led_positions_mm=positions,
        frame_gain=frame_gain,
        vignetting=vignette,
        object=obj,
        synthetic_na=float(synthetic_na),
        subsamples=q,
        seconds=time.perf_counter() - started,
    )


def write_field_reference(simulation: RefFieldSimulation, dataset_path: Path, truth_upsample: int = 2) -> Path:
    """Write the dataset and `<stem>_truth/`: the band-limited object (at `truth_upsample` x the camera grid,
    times the square root of the vignetting, as a reconstruction with global gains sees it) and the true
    system with the field-dependent Zernikes (`field_zernike_rad`, polynomials in x, y / field half-width)."""
    from uafp_gui.io.calibration import Calibration
    from uafp_gui.io.result import write_result
    from uafp_gui.io.writer import write_dataset

    dataset_path = Path(dataset_path)
    write_dataset(dataset_path, simulation.meta, simulation.frames)
    truth_folder = dataset_path.with_name(dataset_path.stem + "_truth")
    vignette = np.sqrt(np.repeat(np.repeat(simulation.vignetting, truth_upsample, 0), truth_upsample, 1))
    truth = simulation.truth(truth_upsample) * vignette
    micro = simulation.micro
    size = 128
    grid = (np.arange(size) - size // 2) / (size * micro.sample_pixel_um)
    fy, fx = np.meshgrid(grid, grid, indexing="ij")
    cutoff = micro.objective_na / micro.wavelength_um
    rho, phi = np.sqrt(fx**2 + fy**2) / cutoff, np.arctan2(fy, fx)
    centre = {j: float(v) for j, v in simulation.zernike_at(0.0, 0.0).items()}
    calibration = dict(simulation.calibration_dict(), source_dataset=dataset_path.name,
                       object_pixel_um=micro.sample_pixel_um / truth_upsample)
    write_result(
        truth_folder,
        amplitude=np.abs(truth).astype(np.float32),
        phase=np.angle(truth).astype(np.float32),
        pupil_amplitude=(rho <= 1).astype(np.float32),
        pupil_phase=np.where(rho <= 1, wavefront_rad(centre, rho, phi), 0).astype(np.float32),
        calibration=Calibration.from_dict(calibration),
    )
    return truth_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="misaligned", choices=sorted(PRESETS) + sorted(FIELD_PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.preset in FIELD_PRESETS:
        spec = FIELD_PRESETS[args.preset]
        field_simulation = simulate_field(replace(spec, micro=replace(spec.micro, seed=args.seed)))
        truth_path = write_field_reference(field_simulation, args.out)
        print(f"wrote {args.out} ({field_simulation.frames.shape}, {field_simulation.seconds:.0f} s) and {truth_path}")
        return
    simulation = simulate(replace(PRESETS[args.preset], seed=args.seed))
    truth = write_reference(simulation, args.out)
    print(f"wrote {args.out} ({len(simulation.frames)} frames, {simulation.subsamples} sub-samples) and {truth}/")


if __name__ == "__main__":
    main()
