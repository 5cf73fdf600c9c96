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
# The height range scales with the nominal height (a ruler's error is a fraction of what it measures:
# +-10 % of a 200 mm stand is 20 mm), and is never under 12 mm.
HEIGHT_RANGE_FRACTION = 0.13
HEIGHT_RANGE_MIN_MM = 12.0


def height_range_mm(nominal_height_mm: float) -> float:
    """Half-width of the LED-height range the start covers about the nominal height."""
    return max(HEIGHT_RANGE_MIN_MM, HEIGHT_RANGE_FRACTION * nominal_height_mm)


def within_search_range(geometry: LedGeometry, nominal_height_mm: float) -> bool:
    """Whether `geometry` lies inside the misalignment the boundary grid search covers.

    On small frames the pupil circles wrap around the spectrum and the circle fit can settle on a
    self-consistent but wrong answer (twice the LED height); such an answer leaves this range.
    """
    return (
        max(abs(geometry.shift_x_mm), abs(geometry.shift_y_mm)) <= SHIFT_RANGE_MM
        and abs(geometry.rotation_deg) <= ROTATION_RANGE_DEG
        and abs(geometry.height_mm - nominal_height_mm) <= height_range_mm(nominal_height_mm)
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
    height_range: float | None = None,
    height_step_mm: float | None = None,
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
    # None: `height_range_mm` of the nominal height, in steps of 1/30 of it (3 mm at 90 mm: the
    # illumination angles move with height / nominal height, so the step is relative too).
    span = height_range_mm(setup.led_height_mm) if height_range is None else height_range
    step = setup.led_height_mm / 30.0 if height_step_mm is None else height_step_mm
    heights = setup.led_height_mm + torch.arange(-span, span + 1e-9, step, device=device)
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


@dataclass(frozen=True)
class RimFit:
    geometry: LedGeometry
    rim_response: float  # mean rim response of the bright-field frames at `geometry` (units of their noise)
    mismatched_frames: float  # frames `geometry` puts on the wrong side of the bright/dark-field boundary
    start_rim_response: float  # the same two at the geometry it started from
    start_mismatched_frames: float
    frames: np.ndarray


def rim_responses(images: np.ndarray, radius_px: tuple[float, float], smooth_px: float) -> np.ndarray:
    """(K, H, W) how strongly each frame's intensity spectrum shows a pupil rim for every circle centre.

    The log spectrum is whitened (its mean at each spectral radius removed: the object's spectrum falls
    off from the centre, which would otherwise pull every circle towards it), then correlated on the
    periodic grid with a ring kernel: just inside the pupil radius minus just outside. The camera
    aliases the intensity spectrum, and the correlation wraps exactly as the aliasing does. Each map is
    divided by its spread, so a frame's response is in units of its own noise. Centres are in spectrum
    pixels in FFT order (index k is frequency k, negative ones wrapped)."""
    count, rows, cols = images.shape
    fy = np.fft.fftfreq(rows) * rows
    fx = np.fft.fftfreq(cols) * cols
    grid_y, grid_x = np.meshgrid(fy, fx, indexing="ij")
    mean_radius = 0.5 * (radius_px[0] + radius_px[1])
    distance = (np.hypot(grid_x / radius_px[0], grid_y / radius_px[1]) - 1.0) * mean_radius  # to the rim, px
    inner = np.clip(1.0 - np.abs(distance + 1.5), 0.0, None)
    outer = np.clip(1.0 - np.abs(distance - 1.5), 0.0, None)
    kernel = np.conj(np.fft.fft2(inner / inner.sum() - outer / outer.sum()))
    radial_bin = np.round(np.hypot(grid_x, grid_y)).astype(int).ravel()
    per_bin = np.maximum(np.bincount(radial_bin), 1)
    maps = np.empty((count, rows, cols))
    for k, image in enumerate(images):
        magnitude = np.abs(np.fft.fft2(image - image.mean()))
        log_spectrum = np.log(magnitude + 1e-6 * magnitude.max() + 1e-30)
        log_spectrum -= (np.bincount(radial_bin, log_spectrum.ravel()) / per_bin)[radial_bin].reshape(rows, cols)
        log_spectrum[0, 0] = 0.0
        response = np.real(np.fft.ifft2(np.fft.fft2(log_spectrum) * kernel))
        if smooth_px > 0:
            response = ndimage.gaussian_filter(response, smooth_px, mode="wrap")
        maps[k] = response / (response.std() + 1e-12)
    return maps


def _periodic_lookup(maps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear periodic lookup of (K, H, W) maps at (C, K) pixel positions -> (C, K)."""
    _, rows, cols = maps.shape
    x0, y0 = np.floor(x), np.floor(y)
    ax, ay = x - x0, y - y0
    x0, y0 = x0.astype(int) % cols, y0.astype(int) % rows
    x1, y1 = (x0 + 1) % cols, (y0 + 1) % rows
    k = np.arange(maps.shape[0])[None, :]
    return (1 - ay) * ((1 - ax) * maps[k, y0, x0] + ax * maps[k, y0, x1]) + ay * (
        (1 - ax) * maps[k, y1, x0] + ax * maps[k, y1, x1]
    )


def fit_geometry_from_rims(
    model,
    measurements: torch.Tensor,
    bright: np.ndarray,
    frames: torch.Tensor,
    start: LedGeometry,
    candidates: int = 8,
    cancelled: Callable[[], bool] | None = None,
) -> RimFit | None:
    """Rigid geometry whose predicted pupil circles best match the rims in the bright-field spectra.

    Where the circle fit needs each circle found on its own (it fails on small frames, where the
    circles wrap around the spectrum, and in low light), this scores a whole candidate geometry at
    once: the rim responses (`rim_responses`) at its predicted circle centres, averaged over the
    bright-field frames, minus its count of frames it predicts on the wrong side of the bright/dark-
    field boundary (`frames`: all frames available). A grid over the whole supported misalignment
    (steps that move the outermost bright-field circle ~1.5 px) on smoothed responses, then Nelder-Mead
    from the best `candidates` on sharper ones, kept inside the supported range. None with fewer than
    three bright-field frames (the circles of two LEDs cannot tell shift, rotation and height apart).
    """
    bright = np.asarray(bright, dtype=int)
    if len(bright) < 3:
        return None
    setup = model.setup
    df_y, df_x = setup.frame_frequency_step  # the circles are sought in the frames' own spectra
    radius = (setup.pupil_cutoff / df_x, setup.pupil_cutoff / df_y)
    tile_mm = (setup.tile_center_um[0] / 1000.0, setup.tile_center_um[1] / 1000.0)

    def leds_of(frame_indices) -> torch.Tensor:
        entries = torch.stack([torch.nonzero(model.entry_frame == int(k))[0, 0] for k in frame_indices])
        return model.distinct_row_col[model.entry_led[entries]].cpu().double()

    frames = frames.cpu()
    leds_bright, leds_all = leds_of(bright), leds_of(frames.tolist())
    brightness = measured_brightness(measurements, frames.to(measurements.device)).cpu().double().numpy()

    def sines(leds: torch.Tensor, params: np.ndarray) -> np.ndarray:
        p = torch.as_tensor(params, dtype=torch.float64)
        positions = led_positions_mm(
            leds[None], setup.led_on_axis, setup.led_pitch_mm,
            shift_x_mm=p[:, 0, None], shift_y_mm=p[:, 1, None], rotation_deg=p[:, 2, None],
        )
        return illumination_sines(
            positions, p[:, 3, None], tile_mm, setup.glass_thickness_mm, setup.glass_index
        ).numpy()

    def rims(maps: np.ndarray, params: np.ndarray) -> np.ndarray:
        u = sines(leds_bright, params) / setup.wavelength_um
        return _periodic_lookup(maps, u[..., 0] / df_x, u[..., 1] / df_y).mean(axis=1)

    def mismatched(params: np.ndarray) -> np.ndarray:
        predicted = (np.linalg.norm(sines(leds_all, params), axis=-1) < setup.objective_na).astype(float)
        return np.abs(predicted - brightness[None]).sum(axis=1)

    def score(maps: np.ndarray, params: np.ndarray) -> np.ndarray:
        return rims(maps, params) - mismatched(params)

    images = measurements[torch.as_tensor(bright, device=measurements.device)].cpu().double().numpy()
    coarse = rim_responses(images, radius, smooth_px=2.0)
    _check(cancelled)
    fine = rim_responses(images, radius, smooth_px=0.7)
    height = setup.led_height_mm
    span_h = height_range_mm(height)
    # Steps: the outermost bright-field circle moves about 1.5 spectrum pixels per step.
    px_per_mm = 1.0 / (height * setup.wavelength_um * min(df_x, df_y))
    nominal = led_positions_mm(leds_bright, setup.led_on_axis, setup.led_pitch_mm)
    reach_mm = float(nominal.norm(dim=-1).max()) + setup.led_pitch_mm / 2
    shift_step = 1.5 / px_per_mm
    rotation_step = min(1.0, float(np.degrees(shift_step / reach_mm)))
    height_step = min(0.03 * height, 1.5 * height / (px_per_mm * reach_mm))
    low = np.array([-SHIFT_RANGE_MM, -SHIFT_RANGE_MM, -ROTATION_RANGE_DEG, height - span_h])
    high = np.array([SHIFT_RANGE_MM, SHIFT_RANGE_MM, ROTATION_RANGE_DEG, height + span_h])
    axes = [
        np.arange(low[0], high[0] + 1e-9, shift_step),
        np.arange(low[1], high[1] + 1e-9, shift_step),
        np.arange(low[2], high[2] + 1e-9, rotation_step),
        np.arange(low[3], high[3] + 1e-9, height_step),
    ]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 4)
    values = []
    for chunk in np.array_split(grid, max(1, len(grid) // 20000)):
        _check(cancelled)
        values.append(score(coarse, chunk))
    values = np.concatenate(values)

    def objective(p: np.ndarray) -> float:
        inside = np.clip(p, low, high)
        return -float(score(fine, inside[None])[0]) + 10.0 * float(np.abs(p - inside).sum())

    best, best_value = None, np.inf
    for index in np.argsort(-values)[:candidates]:
        _check(cancelled)
        found = optimize.minimize(objective, grid[index], method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-4})
        if found.fun < best_value:
            best, best_value = np.clip(found.x, low, high), float(found.fun)
    start_params = np.array([[start.shift_x_mm, start.shift_y_mm, start.rotation_deg, start.height_mm]])
    return RimFit(
        geometry=LedGeometry(*[float(v) for v in best]),
        rim_response=float(rims(fine, best[None])[0]),
        mismatched_frames=float(mismatched(best[None])[0]),
        start_rim_response=float(rims(fine, start_params)[0]),
        start_mismatched_frames=float(mismatched(start_params)[0]),
        frames=bright,
    )


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
    df_y, df_x = setup.frame_frequency_step  # the circles are sought in the frames' own spectra
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
    height = setup.led_height_mm
    low = np.array([-2 * SHIFT_RANGE_MM, -2 * SHIFT_RANGE_MM, -45.0, 0.5 * height])
    high = np.array([2 * SHIFT_RANGE_MM, 2 * SHIFT_RANGE_MM, 45.0, 2.0 * height])
    for _ in range(rounds):
        guess = probe(params)
        signs = np.where(np.linalg.norm(found - guess, axis=1) <= np.linalg.norm(found + guess, axis=1), 1.0, -1.0)
        target = found * signs[:, None]

        def residuals(values, target=target):
            return ((probe(values) - target) / step)[usable].ravel()

        # The model is float32: finite differences need steps well above its rounding. Bounded: an
        # unconstrained step once tried a height below zero (no geometry, a crash instead of a fit).
        fit = optimize.least_squares(
            residuals, np.clip(params, low, high), x_scale=[0.5, 0.5, 1.0, 5.0], loss="soft_l1", diff_step=1e-3,
            bounds=(low, high),
        )
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
    patience: int = 0,
) -> tuple[LedGeometry, float, float]:
    """Best geometry near `start` by the data themselves: a derivative-free search (Nelder-Mead)
    of `probe_loss` in units of the start's standard errors, first simplex two of them wide.

    `probe_loss` is a short frozen-geometry reconstruction's misfit: unlike the circles of the
    few bright-field LEDs, it weighs every frame it uses. Returns (geometry, loss at start, loss at
    the answer). The start is kept unless the answer explains the data clearly better (by
    `min_gain`, relative): differences at the noise level must not move it; and when no vertex of
    the first simplex gains half that, the search stops there (5 probes instead of `evaluations`).

    With `patience` > 0 the search also ends once that many probes in a row after the first simplex
    lowered the best misfit by no more than `min_gain` / 10 (relative), with the best probe so far:
    on the probes' flat valley further probes buy nothing, and on simulated data with a known truth
    they walked the geometry away from it (the probe misfit's minimum is not the true geometry).
    """
    centre = np.array([start.shift_x_mm, start.shift_y_mm, start.rotation_deg, start.height_mm])
    scale = np.asarray(uncertainty, dtype=float)
    cache: dict[tuple[float, ...], float] = {}
    best = {"z": np.zeros(4), "loss": np.inf, "since_gain": 0}

    def geometry(z: np.ndarray) -> LedGeometry:
        return LedGeometry(*[float(v) for v in centre + scale * z])

    def loss(z: np.ndarray) -> float:
        key = tuple(np.round(z, 9))
        if key not in cache:
            value = cache[key] = probe_loss(geometry(z))
            best["since_gain"] = 0 if value < best["loss"] * (1 - min_gain / 10) else best["since_gain"] + 1
            if value < best["loss"]:
                best["z"], best["loss"] = np.array(z, dtype=float), value
            if patience > 0 and len(cache) > len(simplex) and best["since_gain"] >= patience:
                raise _Stalled
        return cache[key]

    simplex = np.vstack([np.zeros(4), 2.0 * np.eye(4)])
    start_loss = loss(simplex[0])
    if min(loss(vertex) for vertex in simplex[1:]) > start_loss * (1 - min_gain / 2):
        return start, start_loss, start_loss
    try:
        found = optimize.minimize(
            loss,
            np.zeros(4),
            method="Nelder-Mead",
            options={"initial_simplex": simplex, "maxfev": evaluations, "xatol": 0.25, "fatol": 0.0},
        )
        z, found_loss = found.x, float(found.fun)
    except _Stalled:
        z, found_loss = best["z"], float(best["loss"])
    if found_loss < start_loss * (1 - min_gain):
        return geometry(z), start_loss, found_loss
    return start, start_loss, start_loss


class _Stalled(Exception):
    """The start search's probes stopped gaining (`search_start_geometry`'s `patience`)."""
