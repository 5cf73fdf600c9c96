"""Data-driven starting geometry from the bright-field / dark-field boundary of the frames.

A frame is bright field when its LED's illumination angle lies inside the objective NA, which
shows directly as the frame's mean brightness. For every candidate rigid geometry (shift,
rotation, height) on a grid wide enough for several mm and several degrees of misalignment,
we predict which frames are bright and compare with the measured brightness; the centre of
the best-agreeing region is the start. The gradient refinement of UA-FP (which grows the set of
frames outward from the centre) then resolves what the boundary leaves open.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage, optimize

from uafp_gui.model import LedGeometry, led_positions_mm
from uafp_gui.physics.geometry import illumination_sines

# The misalignment the boundary grid search covers about the nominal geometry: what the start supports.
SHIFT_RANGE_MM = 4.0
ROTATION_RANGE_DEG = 6.0
HEIGHT_RANGE_MM = 12.0


def within_search_range(geometry: LedGeometry, nominal_height_mm: float) -> bool:
    """Whether `geometry` lies inside the misalignment the boundary grid search covers.

    On small frames the pupil circles wrap around the spectrum and the circle fit can settle on a
    self-consistent but wrong answer (twice the LED height); such an answer leaves this range.
    """
    return (
        max(abs(geometry.shift_x_mm), abs(geometry.shift_y_mm)) <= SHIFT_RANGE_MM
        and abs(geometry.rotation_deg) <= ROTATION_RANGE_DEG
        and abs(geometry.height_mm - nominal_height_mm) <= HEIGHT_RANGE_MM
    )


class Cancelled(Exception):
    """A start fit or search was stopped by its `cancelled` callable (the run's Stop)."""


def _check(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled


@dataclass(frozen=True)
class BoundaryFit:
    geometry: LedGeometry
    mismatched_frames: float  # frames whose predicted bright/dark class disagrees with the data
    candidates: int  # grid candidates as good as the best (spread of the answer)


def measured_brightness(measurements: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean brightness of each frame relative to a typical bright-field frame, clipped to [0, 1]."""
    means = measurements[frames].mean(dim=(1, 2))
    bright = means[means > 0.5 * means.max()]
    return (means / bright.median()).clamp(0, 1)


def fit_geometry_from_boundary(
    model,
    measurements: torch.Tensor,
    frames: torch.Tensor,
    shift_range_mm: float = SHIFT_RANGE_MM,
    shift_step_mm: float = 0.2,
    rotation_range_deg: float = ROTATION_RANGE_DEG,
    rotation_step_deg: float = 1.0,
    height_range_mm: float = HEIGHT_RANGE_MM,
    height_step_mm: float = 3.0,
    cancelled: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BoundaryFit:
    """Grid search of the rigid LED geometry that best reproduces the bright/dark-field split.

    Between chunks of candidates `progress(done, total)` is told how far it is and `cancelled` is
    checked (`Cancelled` is raised when it says so)."""
    setup = model.setup
    device = measurements.device
    frames = frames.to(device)
    brightness = measured_brightness(measurements, frames)
    entries = torch.stack([torch.nonzero(model.entry_frame == k)[0, 0] for k in frames.tolist()])
    leds = model.distinct_row_col[model.entry_led[entries]].to(device)

    shifts = torch.arange(-shift_range_mm, shift_range_mm + 1e-9, shift_step_mm, device=device)
    rotations = torch.arange(-rotation_range_deg, rotation_range_deg + 1e-9, rotation_step_deg, device=device)
    heights = setup.led_height_mm + torch.arange(
        -height_range_mm, height_range_mm + 1e-9, height_step_mm, device=device
    )
    sx, sy, rot, h = torch.meshgrid(shifts, shifts, rotations, heights, indexing="ij")
    candidates = torch.stack([sx.ravel(), sy.ravel(), rot.ravel(), h.ravel()], dim=1)
    tile_mm = (setup.tile_center_um[0] / 1000.0, setup.tile_center_um[1] / 1000.0)
    scores = []
    chunks = torch.split(candidates, 1024)  # small chunks: Stop is checked often (each well under a second)
    for done, chunk in enumerate(chunks):
        _check(cancelled)
        if progress is not None:
            progress(done, len(chunks))
        positions = led_positions_mm(
            leds[None], setup.led_on_axis, setup.led_pitch_mm,
            shift_x_mm=chunk[:, 0, None], shift_y_mm=chunk[:, 1, None], rotation_deg=chunk[:, 2, None],
        )
        sines = illumination_sines(
            positions, chunk[:, 3, None], tile_mm, setup.glass_thickness_mm, setup.glass_index
        ).norm(dim=-1)
        predicted = (sines < setup.objective_na).float()
        scores.append((predicted - brightness[None]).abs().sum(dim=1))
    scores = torch.cat(scores)
    best = scores.min()
    tied = candidates[scores <= best + 0.25]
    centre = tied.mean(dim=0).cpu().numpy()
    return BoundaryFit(
        geometry=LedGeometry(*[float(v) for v in centre]),
        mismatched_frames=float(best),
        candidates=int(len(tied)),
    )


@dataclass(frozen=True)
class CircleFit:
    frames: np.ndarray  # bright-field frames whose circles were found
    frequencies: np.ndarray  # (K, 2) (u_x, u_y) cycles/um, sign resolved against the fitted geometry
    contrast: np.ndarray  # (K,) rim contrast of each circle (log-spectrum units)
    geometry: LedGeometry
    residual_px: float  # RMS distance between fitted and found centres, spectrum pixels
    # Standard errors of (shift x mm, shift y mm, rotation deg, height mm) from the scatter of the
    # circles about the rigid fit: how far the start may be off when LEDs sit off their grid.
    uncertainty: np.ndarray


def _log_spectrum(frame: np.ndarray) -> np.ndarray:
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(frame - frame.mean())))
    return ndimage.gaussian_filter(np.log(spectrum + 1e-6 * spectrum.max() + 1e-30), 1.0)


def find_circle_centre(
    frame: np.ndarray, radius_px: float, guess_px: tuple[float, float], search_px: float
) -> tuple[np.ndarray, float]:
    """(x, y) spectrum-pixel centre of the pupil circle near `guess_px`, and its rim contrast.

    The rim contrast is the mean log spectrum just inside minus just outside a circle of the
    pupil radius, summed over the circle at +c and its mirror at -c (|F| is symmetric). The
    camera aliases the intensity spectrum, so circles are sampled with periodic wrap-around.
    """
    log_spectrum = _log_spectrum(frame)
    rows, cols = frame.shape
    angles = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    span = np.arange(-search_px, search_px + 0.5, 1.0)
    cx = guess_px[0] + span[None, :, None]
    cy = guess_px[1] + span[:, None, None]

    def rim(radius: float) -> np.ndarray:
        total = 0.0
        for sign in (1, -1):
            xs, ys = np.broadcast_arrays(
                cols // 2 + sign * cx + radius * np.cos(angles)[None, None, :],
                rows // 2 + sign * cy + radius * np.sin(angles)[None, None, :],
            )
            values = ndimage.map_coordinates(log_spectrum, [ys.ravel(), xs.ravel()], order=1, mode="grid-wrap")
            total = total + values.reshape(xs.shape).mean(axis=-1)
        return total / 2

    contrast = rim(radius_px - 1.5) - rim(radius_px + 1.5)
    iy, ix = np.unravel_index(np.argmax(contrast), contrast.shape)
    centre = np.array([guess_px[0] + span[ix], guess_px[1] + span[iy]], dtype=float)
    for axis, line, index in ((0, contrast[iy, :], ix), (1, contrast[:, ix], iy)):
        if 0 < index < len(span) - 1:
            a, b, c = line[index - 1], line[index], line[index + 1]
            if a - 2 * b + c < 0:
                centre[axis] += float(np.clip(0.5 * (a - c) / (a - 2 * b + c), -0.5, 0.5))
    return centre, float(contrast[iy, ix])


def _geometry_probe(model, led_index: torch.Tensor):
    """A function geometry parameters -> (K, 2) illumination frequencies of the given LEDs (model untouched)."""
    system = model.system
    parameters = (system.shift_x_mm, system.shift_y_mm, system.rotation_deg, system.height_mm)

    def frequencies(values) -> np.ndarray:
        with torch.no_grad():
            saved = [p.detach().clone() for p in parameters]
            system.set_geometry(LedGeometry(*[float(v) for v in values]))
            result = model.illumination_frequencies()[led_index].cpu().numpy()
            for parameter, value in zip(parameters, saved, strict=True):
                parameter.copy_(value)
        return result

    return frequencies


def fit_geometry_from_circles(
    model,
    measurements: torch.Tensor,
    frames,
    search_px: float = 12.0,
    rounds: int = 3,
    cancelled: Callable[[], bool] | None = None,
) -> CircleFit | None:
    """Rigid geometry that best explains the pupil circles of the given bright-field frames.

    Starts from the model's current geometry; returns None when fewer than four circles are found.
    `cancelled` is checked between frames (`Cancelled` is raised when it says so).
    """
    frames = np.asarray(frames, dtype=int)
    setup = model.setup
    df_y, df_x = setup.frequency_step
    step = np.array([df_x, df_y])
    radius_px = setup.pupil_cutoff / min(df_x, df_y)
    entries = torch.stack([torch.nonzero(model.entry_frame == int(k))[0, 0] for k in frames])
    probe = _geometry_probe(model, model.entry_led[entries])
    start = model.system.led_geometry()
    params = np.array([start.shift_x_mm, start.shift_y_mm, start.rotation_deg, start.height_mm])
    guesses = probe(params) / step
    images = measurements[torch.as_tensor(frames)].cpu().numpy()
    found, contrast = [], []
    for image, guess in zip(images, guesses, strict=True):
        _check(cancelled)
        centre, score = find_circle_centre(image, radius_px, (guess[0], guess[1]), search_px)
        found.append(centre * step)
        contrast.append(score)
    found, contrast = np.asarray(found), np.asarray(contrast)
    usable = contrast > 0.5 * np.median(contrast)
    if usable.sum() < 4:
        return None
    target = found
    for _ in range(rounds):
        guess = probe(params)
        signs = np.where(np.linalg.norm(found - guess, axis=1) <= np.linalg.norm(found + guess, axis=1), 1.0, -1.0)
        target = found * signs[:, None]

        def residuals(values, target=target):
            return ((probe(values) - target) / step)[usable].ravel()

        # The model is float32: finite differences need steps well above its rounding.
        fit = optimize.least_squares(residuals, params, x_scale=[0.5, 0.5, 1.0, 5.0], loss="soft_l1", diff_step=1e-3)
        params = fit.x
    final = residuals(params)
    return CircleFit(
        frames=frames,
        frequencies=target,
        contrast=contrast,
        geometry=LedGeometry(*[float(v) for v in params]),
        residual_px=float(np.sqrt(np.mean(final**2))),
        uncertainty=_standard_errors(fit.jac, final),
    )


def _standard_errors(jacobian: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Gauss-Newton standard errors of a least-squares fit (inf where the data do not constrain it)."""
    dof = max(len(residuals) - jacobian.shape[1], 1)
    variance = float(residuals @ residuals) / dof
    try:
        covariance = variance * np.linalg.inv(jacobian.T @ jacobian)
    except np.linalg.LinAlgError:
        return np.full(jacobian.shape[1], np.inf)
    return np.sqrt(np.clip(np.diag(covariance), 0, None))


def search_start_geometry(
    probe_loss: Callable[[LedGeometry], float],
    start: LedGeometry,
    uncertainty: np.ndarray,
    evaluations: int,
    min_gain: float = 0.05,
) -> tuple[LedGeometry, float, float]:
    """Best geometry near `start` by the data themselves: a derivative-free search (Nelder-Mead)
    of `probe_loss` in units of the start's standard errors, first simplex two of them wide.

    `probe_loss` is a short frozen-geometry reconstruction's misfit: unlike the circles of the
    few bright-field LEDs, it weighs every frame it uses. Returns (geometry, loss at start, loss at
    the answer). The start is kept unless the answer explains the data clearly better (by
    `min_gain`, relative): differences at the noise level must not move it; and when no vertex of
    the first simplex gains half that, the search stops there (5 probes instead of `evaluations`).
    """
    centre = np.array([start.shift_x_mm, start.shift_y_mm, start.rotation_deg, start.height_mm])
    scale = np.asarray(uncertainty, dtype=float)
    cache: dict[tuple[float, ...], float] = {}

    def geometry(z: np.ndarray) -> LedGeometry:
        return LedGeometry(*[float(v) for v in centre + scale * z])

    def loss(z: np.ndarray) -> float:
        key = tuple(np.round(z, 9))
        if key not in cache:
            cache[key] = probe_loss(geometry(z))
        return cache[key]

    simplex = np.vstack([np.zeros(4), 2.0 * np.eye(4)])
    start_loss = loss(simplex[0])
    if min(loss(vertex) for vertex in simplex[1:]) > start_loss * (1 - min_gain / 2):
        return start, start_loss, start_loss
    found = optimize.minimize(
        loss,
        np.zeros(4),
        method="Nelder-Mead",
        options={"initial_simplex": simplex, "maxfev": evaluations, "xatol": 0.25, "fatol": 0.0},
    )
    if found.fun < start_loss * (1 - min_gain):
        return geometry(found.x), start_loss, float(found.fun)
    return start, start_loss, start_loss
