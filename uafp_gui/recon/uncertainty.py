"""Standard errors of a UA-FP calibration from the curvature of the data misfit at the solution.

What is estimated
-----------------
The calibrated system parameters theta (LED shift x/y, rotation, height; each learned Zernike
coefficient) and the per-frame gains g, at the reconstruction's solution. The object has millions
of unknowns; holding it fixed would make the error bars far too small, because some object
changes mimic system changes (a phase ramp on the object moves its spectrum exactly as a common
shift of the illumination angles does; a smooth phase on the object's spectrum trades off
against the pupil). So the object also moves along a reduced basis of its directions most
coupled to the system (`object_modes`): phase ramps in x and y, and low-order Zernike phase
maps on its spectrum over the synthetic aperture. The covariance of theta is the theta block of
the inverse over [theta, object modes, gains]: the Schur complement, i.e. the object's
coupling is accounted for along those modes.

The model
---------
Residuals r = sqrt(I_model) - sqrt(I_measured) per pixel (the engine's amplitude data term; the
square root also stabilises the Poisson variance, so it is used for `loss="poisson"` too).
Linearised at the solution, r(p + dp) = r + J dp with J the Jacobian over all parameters p, and
A = sum_k J_k^T J_k (k: frames). Three pieces make the reported standard error:

1. noise: the sandwich A^-1 B A^-1, B = sum_k s_k^2 J_k^T J_k, with s_k^2 frame k's residual
   variance per pixel scaled by M / (M - d) for the d = 2 x (object spectrum pixels the data reach)
   degrees of freedom the object spends (M data pixels). The engine weights every frame alike while
   the noise differs between frames (bright and dark field), hence the sandwich.
2. misfit: the cluster-robust sandwich, B = sum_k g_k g_k^T with g_k = J_k^T r_k the score of frame
   k (Huber-White, frames as clusters). Residuals correlated within a frame -- what the model does
   not explain, a wrong object, the reference simulator's physics the engine lacks -- widen the bars
   as much as they can move the estimate. The larger of 1 and 2 is used.
3. distance to the optimum: the Gauss-Newton step -A^-1 J^T r, in quadrature. The engine stops
   (fixed iteration count, stochastic mini-batches) before its state is at the optimum.

J is computed in float64, frame batch by frame batch, analytically: every column is the derivative
of the camera intensity along a change dS of the batch's field spectra, dI = pool(2 Re(conj(psi)
F^-1{dS})) with the base fields psi kept (`ForwardModel.intensity_derivative`, one inverse FFT),
through gain, clamp and square root. A Zernike or object-mode coefficient c multiplies S by
exp(i c map), so dS = i map S. The geometry moves each LED's illumination frequency u; for a small
move the integer crop stays and the pupil is evaluated at a new sub-pixel remainder, so dS =
crop x (dP/du_x du_x/dtheta + dP/du_y du_y/dtheta): two inverse FFTs per batch serve all four
geometry columns (dP/du by a central difference of the interpolated pupil, du/dtheta by a central
difference of the illumination frequencies: neither needs an FFT). The gains' columns are analytic
too (dr/dg_k = I_k / (2 g_k sqrt(I_k)) on frame k only). They agree with central differences of
the whole forward model to ~1e-6 relative (the differences' truncation error).

Undetermined parameters
-----------------------
In units of each parameter's physically meaningful range (`meaningful_range`: an LED pitch of
shift, 5 deg, a quarter of the height, 1 rad of Zernike), A is eigen-decomposed; directions with
an eigenvalue below `FLAT_EIGENVALUE` x the largest are flat (the data do not constrain them).
A parameter that loads on a flat direction, or whose standard error exceeds half its range,
is reported as undetermined, not as a number.

Calibration of the error bars
-----------------------------
Even so, on data from the independent reference simulator the engine's calibration errors are
mostly biases (wrong local optima, model differences) that no local curvature sees; `INFLATION`
multiplies every standard error to account for them. It is measured, not assumed: the factor that
brings the 2-sigma coverage of the truth to about 95 % across seeded reference-simulator draws of
issue 10's microscope distribution (`python benchmarks/bench_uncertainty.py --simulator refsim`;
figures and seeds in the closing note of issue 10, helper i10b). Re-measure it whenever the
engine's accuracy changes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from uafp_gui.physics.forward import spectrum_of
from uafp_gui.physics.zernike import zernike_basis

GEOMETRY = ("shift_x_mm", "shift_y_mm", "rotation_deg", "height_mm")
BATCH_FRAMES = 8  # frames per batch of the Jacobian (float64 columns: memory)
FLAT_EIGENVALUE = 1e-9
UNDETERMINED_FRACTION = 0.5  # a standard error above half the meaningful range says nothing
INFLATION = 6.0  # measured: see "Calibration of the error bars" above
STEP_WEIGHT = 1.0
OBJECT_SPECTRAL_MODES = tuple(range(2, 12))  # Noll 2..11 over the synthetic aperture
# Central-difference steps of the illumination frequencies in the geometry (no FFT: cheap and smooth).
FD_STEP = {"shift_x_mm": 1e-3, "shift_y_mm": 1e-3, "rotation_deg": 1e-3, "height_mm": 1e-2}
PUPIL_STEP = 1e-6  # of a spectrum pixel: the central difference of the interpolated pupil in u


def meaningful_range(name: str, led_pitch_mm: float, led_height_mm: float) -> float:
    """The scale a parameter's standard error is judged against (see the module docstring)."""
    if name in ("shift_x_mm", "shift_y_mm"):
        return led_pitch_mm
    if name == "rotation_deg":
        return 5.0
    if name == "height_mm":
        return 0.25 * led_height_mm
    return 1.0  # radians of Zernike


@dataclass(frozen=True)
class CalibrationUncertainty:
    """Standard errors of a calibration; `undetermined` names what the data cannot pin down."""

    std: dict[str, float]  # GEOMETRY names and "zernike_<j>"; NaN where undetermined
    undetermined: tuple[str, ...]
    frame_gain_std: np.ndarray  # (N,) relative standard error per frame (NaN for frames not used)
    noise_rms: float  # residual RMS per pixel (normalised amplitude units), dof-corrected
    object_modes: int
    inflation: float = INFLATION
    extra: dict = field(default_factory=dict)

    def geometry_std(self) -> dict[str, float]:
        return {name: self.std[name] for name in GEOMETRY if name in self.std}

    def zernike_std(self) -> dict[int, float]:
        return {int(name.split("_")[1]): v for name, v in self.std.items() if name.startswith("zernike_")}

    def to_calibration_fields(self) -> dict:
        """The optional calibration.json fields (NaN, i.e. undetermined, written as null)."""

        def number(value: float) -> float | None:
            return float(value) if np.isfinite(value) else None

        used = self.frame_gain_std[np.isfinite(self.frame_gain_std)]
        out = {
            "led_geometry_std": {k: number(v) for k, v in self.geometry_std().items()},
            "zernike_rad_std": {str(j): number(v) for j, v in self.zernike_std().items()},
            "frame_gain_std": [number(v) for v in self.frame_gain_std],
            "frame_gain_std_summary": {
                "median_relative": number(float(np.median(used))) if used.size else None,
                "max_relative": number(float(np.max(used))) if used.size else None,
            },
            "undetermined": list(self.undetermined),
            "uncertainty": {
                "method": "sandwich Gauss-Newton at the solution, object coupled along "
                f"{self.object_modes} modes (uafp_gui.recon.uncertainty)",
                "inflation": self.inflation,
                "noise_rms": self.noise_rms,
            },
        }
        if not self.geometry_std():
            del out["led_geometry_std"]
        if not self.zernike_std():
            del out["zernike_rad_std"]
        return out


def format_value(value: float, std: float | None, digits: int = 3, undetermined: bool = False) -> str:
    """`+1.234 +- 0.012`, or the value with `(undetermined)`."""
    if undetermined:
        return f"{value:+.{digits}f} (undetermined)"
    if std is None or not math.isfinite(std):
        return f"{value:+.{digits}f}"
    return f"{value:+.{digits}f} +- {std:.{digits}f}"


def calibration_lines(geometry, zernike_rad: dict, extra: dict, max_zernike: int = 11) -> list[str]:
    """A calibration as text, `value +- std` where error bars exist (`extra`: the calibration.json
    fields written by `CalibrationUncertainty.to_calibration_fields`); shared by the CLI and the GUI."""
    geometry_std = extra.get("led_geometry_std", {})
    zernike_std = extra.get("zernike_rad_std", {})
    undetermined = set(extra.get("undetermined", []))

    def show(name: str, value: float, digits: int = 3) -> str:
        return format_value(value, geometry_std.get(name), digits, undetermined=name in undetermined)

    g = geometry
    lines = [
        f"LED shift ({show('shift_x_mm', g.shift_x_mm)}, {show('shift_y_mm', g.shift_y_mm)}) mm, "
        f"rotation {show('rotation_deg', g.rotation_deg)} deg, height {show('height_mm', g.height_mm, 2)} mm"
    ]
    indices = [int(j) for j in zernike_std] or [j for j in sorted(zernike_rad) if 4 <= int(j) <= max_zernike]
    terms = [
        f"Z{j} "
        + format_value(zernike_rad.get(j, 0.0), zernike_std.get(str(j)), undetermined=f"zernike_{j}" in undetermined)
        for j in indices
        if j <= max_zernike
    ]
    if terms:
        lines.append("Zernike (rad): " + ", ".join(terms))
    gains = extra.get("frame_gain_std_summary") or {}
    if gains.get("median_relative") is not None:
        lines.append(
            f"frame gains: median relative error {100 * gains['median_relative']:.2f} % "
            f"(largest {100 * gains['max_relative']:.2f} %)"
        )
    if undetermined:
        lines.append(f"undetermined by these data (no value to trust): {', '.join(sorted(undetermined))}")
    return lines


def _object_modes(
    shape: tuple[int, int], object_pixel_um: float, synthetic_cutoff: float, step: tuple, spectral: bool = True
):
    """Phase maps of the object's reduced basis: ('real', map) multiply exp(i c map) on the object,
    ('spectral', map) multiply exp(i c map) on its spectrum (`spectral=False`: none of these).
    Scaled so c = 1 is about 1 rad at the edge."""
    rows, cols = shape
    y = (torch.arange(rows, dtype=torch.float64) - rows // 2) / (rows / 2)
    x = (torch.arange(cols, dtype=torch.float64) - cols // 2) / (cols / 2)
    modes = [("real", x[None, :].expand(rows, cols)), ("real", y[:, None].expand(rows, cols))]
    if not spectral:
        return modes
    df_y, df_x = step
    fy = (torch.arange(rows, dtype=torch.float64) - rows // 2) * df_y
    fx = (torch.arange(cols, dtype=torch.float64) - cols // 2) * df_x
    grid_y, grid_x = torch.meshgrid(fy, fx, indexing="ij")
    rho = torch.sqrt(grid_x**2 + grid_y**2) / synthetic_cutoff
    phi = torch.atan2(grid_y, grid_x)
    inside = (rho <= 1).double()
    for basis in zernike_basis(list(OBJECT_SPECTRAL_MODES), rho, phi):
        modes.append(("spectral", basis * inside))
    return modes


def calibration_uncertainty(
    recon,
    batch_frames: int = BATCH_FRAMES,
    system_names: tuple[str, ...] | None = None,
    spectral_modes: bool = True,
    gains: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> CalibrationUncertainty:
    """Standard errors of `recon`'s learned system parameters (a `UafpReconstruction` after a run).

    `system_names` (GEOMETRY names, "zernike_<j>") restricts the system parameters to those of them
    that are learned; `spectral_modes=False` moves the object along its phase ramps only, and
    `gains=False` leaves the gains out: a cheaper Jacobian for a Gauss-Newton step on a few of them.
    `progress(done, total)` is told after every frame batch; `cancelled()` is checked before each
    (`selfcal.Cancelled` is raised when it says so)."""
    settings = recon.settings
    if recon.object is None:
        raise ValueError("the reconstruction has not run yet")
    model = copy.deepcopy(recon.model).double()
    model.requires_grad_(False)
    system = model.system
    setup = model.setup
    names: list[str] = []
    if not settings.freeze_system and settings.learn_geometry:
        names += list(GEOMETRY)
    zernike_indices: list[int] = []
    if not settings.freeze_system and settings.learn_zernike:
        zernike_indices = list(range(settings.zernike_min_index, system.zernike_rad.numel() + 1))
        names += [f"zernike_{j}" for j in zernike_indices]
    if system_names is not None:
        names = [name for name in names if name in system_names]
        zernike_indices = [j for j in zernike_indices if f"zernike_{j}" in system_names]
    learn_gains = gains and not settings.freeze_system and settings.learn_gains

    obj = recon.object.detach().to(torch.complex128)
    spectrum = spectrum_of(obj)
    with torch.no_grad():
        synthetic_cutoff = setup.pupil_cutoff + float(model.illumination_frequencies().norm(dim=-1).max())
    df_y, df_x = setup.frequency_step
    modes = _object_modes(setup.object_shape, setup.object_pixel_um, synthetic_cutoff, (df_y, df_x), spectral_modes)
    n_system, n_modes = len(names), len(modes)
    available = torch.nonzero(recon.available).squeeze(1).to(model.device)
    frame_slot = {int(k): i for i, k in enumerate(available.tolist())}
    n_gains = len(frame_slot) if learn_gains else 0
    n_total = n_system + n_modes + n_gains

    geometry_names = [name for name in names if name in GEOMETRY]
    frequency_derivatives = {}  # name -> (L, 2) d u / d name of every distinct LED
    for name in geometry_names:
        parameter = getattr(system, name)
        original = parameter.detach().clone()
        moved = []
        for sign in (1.0, -1.0):
            parameter.data = original + sign * FD_STEP[name]
            moved.append(model.illumination_frequencies())
        parameter.data = original
        frequency_derivatives[name] = (moved[0] - moved[1]) / (2 * FD_STEP[name])

    # A phase ramp's derivative of the object spectrum, spectrum_of(i x map x object): once for every batch.
    real_derivatives = {
        m: spectrum_of(obj * (1j * phase_map)) for m, (kind, phase_map) in enumerate(modes) if kind == "real"
    }

    def batch_columns(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted frames, Jacobian columns of the amplitudes (B, p, H, W)) of one frame batch
        (see the module docstring: every column is one directional derivative of the intensity)."""
        entries, position = model.entries_for(batch)
        frequencies = model.illumination_frequencies()[model.entry_led[entries]]
        whole_y, whole_x, remainder = model.crop_plan(frequencies)
        index_y, index_x = model.crop_indices(whole_y, whole_x)

        def crop(image: torch.Tensor) -> torch.Tensor:
            return image[index_y[:, :, None], index_x[:, None, :]]

        whole = torch.stack([whole_y, whole_x], dim=1)
        pupils = model.shifted_pupils(remainder, whole)
        spectra = crop(spectrum) * pupils
        intensity, fields = model.intensity_and_fields(spectra)
        gain = system.frame_gain[batch.to(system.frame_gain.device)][:, None, None]
        unclamped = gain * model.sum_entries(intensity, batch, position) + system.background
        predicted = unclamped.clamp(min=0)
        # d sqrt(max(I, 0) + 1e-8) / dI, zero where the clamp holds.
        chain = (unclamped > 0) / (2 * torch.sqrt(predicted + 1e-8))

        def column(change: torch.Tensor) -> torch.Tensor:
            return chain * gain * model.sum_entries(change, batch, position)

        def analytic(spectra_derivative: torch.Tensor) -> torch.Tensor:
            return column(model.intensity_derivative(fields, spectra_derivative))

        if geometry_names:
            # dP/du_x, dP/du_y at each entry's remainder (the integer crop does not move for a small step).
            df_y, df_x = setup.frequency_step
            h = remainder.new_tensor([[PUPIL_STEP * df_x, 0.0], [0.0, PUPIL_STEP * df_y]])
            offsets = torch.cat([remainder + h[0], remainder - h[0], remainder + h[1], remainder - h[1]])
            moved = model.shifted_pupils(offsets, whole.repeat(4, 1))
            moved = moved.view(4, len(remainder), *moved.shape[1:])
            crops = crop(spectrum)
            change_x = model.intensity_derivative(fields, crops * ((moved[0] - moved[1]) / (2 * h[0, 0])))
            change_y = model.intensity_derivative(fields, crops * ((moved[2] - moved[3]) / (2 * h[1, 1])))
            entry_led = model.entry_led[entries]

        columns = []
        for index in range(n_system + n_modes):
            if index < n_system and names[index] in GEOMETRY:
                du = frequency_derivatives[names[index]][entry_led]  # (E, 2)
                columns.append(column(du[:, 0, None, None] * change_x + du[:, 1, None, None] * change_y))
            elif index < n_system:
                j = int(names[index].split("_")[1])
                if j < 2:  # the piston does not enter the pupil phase
                    columns.append(torch.zeros_like(predicted))
                    continue
                zernike = model.sampled_maps(model.zernike_basis[j - 1][None], remainder)[:, 0]
                columns.append(analytic(spectra * (1j * zernike)))
            else:
                m = index - n_system
                kind, phase_map = modes[m]
                if kind == "real":
                    columns.append(analytic(crop(real_derivatives[m]) * pupils))
                else:
                    columns.append(analytic(spectra * (1j * crop(phase_map))))
        dense = torch.stack(columns, dim=1) if columns else predicted.new_zeros(len(batch), 0, *predicted.shape[1:])
        return predicted, dense

    information = np.zeros((n_total, n_total))  # A = sum J^T J
    gradient = np.zeros(n_total)  # J^T r
    scores: list[np.ndarray] = []
    weighted = np.zeros((n_total, n_total))  # B = sum s_k^2 J_k^T J_k
    residual_sq = torch.zeros(len(available), dtype=torch.float64)
    pixels_per_frame = setup.frame_shape[0] * setup.frame_shape[1]
    frame_terms = []  # per batch: (frames, per-frame J^T J blocks) to weight once s_k is known
    scale = float(recon.scale or 1.0)
    batches = torch.split(available, batch_frames)
    with torch.no_grad():
        for done, batch in enumerate(batches):
            if cancelled is not None and cancelled():
                from uafp_gui.recon.selfcal import Cancelled

                raise Cancelled
            measured = torch.sqrt(recon.measurements[batch].double() / scale)
            predicted, dense = batch_columns(batch)
            amplitude = torch.sqrt(predicted + 1e-8)
            residual = amplitude - measured
            dense = dense.reshape(len(batch), n_system + n_modes, -1)  # (B, p, pixels)
            if learn_gains:
                gains = system.frame_gain[batch.to(system.frame_gain.device)].double()
                gain_column = ((predicted - system.background.double()) / (2 * gains[:, None, None] * amplitude))
                gain_column = gain_column.reshape(len(batch), -1)
            blocks = []
            flat_residual = residual.reshape(len(batch), -1)
            for b, frame in enumerate(batch.tolist()):
                k = frame_slot[frame]
                residual_sq[k] = residual[b].square().sum()
                score = np.zeros(n_total)  # this frame's J_k^T r_k
                score[: n_system + n_modes] = (dense[b] @ flat_residual[b]).cpu().numpy()
                if learn_gains:
                    score[n_system + n_modes + k] = float(gain_column[b] @ flat_residual[b])
                gradient += score
                scores.append(score)
                block = np.zeros((n_total, n_total))
                jj = (dense[b] @ dense[b].T).cpu().numpy()
                block[: n_system + n_modes, : n_system + n_modes] = jj
                if learn_gains:
                    g = n_system + n_modes + k
                    cross = (dense[b] @ gain_column[b]).cpu().numpy()
                    block[: n_system + n_modes, g] = cross
                    block[g, : n_system + n_modes] = cross
                    block[g, g] = float(gain_column[b].square().sum())
                blocks.append((k, block))
            frame_terms.extend(blocks)
            if progress is not None:
                progress(done + 1, len(batches))

    # Residual variance per frame, corrected for the object's degrees of freedom.
    data_pixels = len(available) * pixels_per_frame
    object_dof = 2 * _object_support_pixels(model)
    dof_factor = data_pixels / max(data_pixels - object_dof - n_total, 0.1 * data_pixels)
    frame_variance = (residual_sq / pixels_per_frame * dof_factor).numpy()
    for k, block in frame_terms:
        information += block
        weighted += frame_variance[k] * block

    ranges = np.array(
        [meaningful_range(n, setup.led_pitch_mm, setup.led_height_mm) for n in names]
        + [1.0] * n_modes
        + [1.0] * n_gains
    )
    # Cluster-robust (per-frame) middle: residuals correlated within a frame (model error, a wrong
    # object) widen the bars as much as they move the estimate; frames are the independent units.
    clustered = np.zeros_like(information)
    if scores:
        centred = np.stack(scores) - np.mean(scores, axis=0)
        clustered = centred.T @ centred * len(scores) / max(len(scores) - 1, 1)
    robust_covariance, _, _ = _sandwich(information, clustered, ranges)
    robust_std = np.sqrt(np.clip(np.diag(robust_covariance), 0, None))
    covariance, flat_loading, inverse = _sandwich(information, weighted, ranges)
    # The Gauss-Newton step to the linearised optimum: how far the state is from where the noise-only
    # error bars apply (the engine stops before its object has fully converged).
    step = -inverse @ gradient
    noise_std = np.sqrt(np.clip(np.diag(covariance), 0, None))
    std = INFLATION * np.sqrt(np.maximum(robust_std, noise_std) ** 2 + (STEP_WEIGHT * step) ** 2)
    results: dict[str, float] = {}
    undetermined: list[str] = []
    for i, name in enumerate(names):
        if flat_loading[i] > 1e-3 or not np.isfinite(std[i]) or std[i] > UNDETERMINED_FRACTION * ranges[i]:
            undetermined.append(name)
            results[name] = float("nan")
        else:
            results[name] = float(std[i])
    gain_std = np.full(setup.n_frames, np.nan)
    if learn_gains:
        gains = system.frame_gain.detach().cpu().numpy()
        for frame, k in frame_slot.items():
            i = n_system + n_modes + k
            if flat_loading[i] <= 1e-3:
                gain_std[frame] = std[i] / gains[frame]
    noise_rms = float(np.sqrt(frame_variance.mean())) if len(frame_variance) else float("nan")
    return CalibrationUncertainty(
        std=results,
        undetermined=tuple(undetermined),
        frame_gain_std=gain_std,
        noise_rms=noise_rms,
        object_modes=n_modes,
        extra={
            "step_vector": step,  # every parameter: system, object modes, gains (`apply_gauss_newton_step`)
            "gradient": gradient,  # J^T r, every parameter: d(|r|^2 / 2)/dp
            "layout": (names, modes, frame_slot),
            "gauss_newton_step": {name: float(step[i]) for i, name in enumerate(names)},
            "noise_std": {name: float(noise_std[i]) for i, name in enumerate(names)},
            "robust_std": {name: float(robust_std[i]) for i, name in enumerate(names)},
        },
    )


def apply_gauss_newton_step(recon, uncertainty: CalibrationUncertainty, fraction: float = 1.0) -> None:
    """Move `recon`'s system (geometry, Zernikes, gains) and its object (along the object modes) by
    `fraction` of the Gauss-Newton step computed with `uncertainty` (`calibration_uncertainty`)."""
    step = uncertainty.extra["step_vector"] * fraction
    names, modes, frame_slot = uncertainty.extra["layout"]
    system = recon.model.system
    with torch.no_grad():
        for i, name in enumerate(names):
            if name in GEOMETRY:
                getattr(system, name).add_(float(step[i]))
            else:
                system.zernike_rad[int(name.split("_")[1]) - 1] += float(step[i])
        obj = recon.object.detach().to(torch.complex128)
        spectral = torch.zeros_like(obj.real)
        real = torch.zeros_like(obj.real)
        for m, (kind, phase_map) in enumerate(modes):
            target = real if kind == "real" else spectral
            target += float(step[len(names) + m]) * phase_map.to(target.device)
        obj = obj * torch.polar(torch.ones_like(real), real)
        spectrum = spectrum_of(obj) * torch.polar(torch.ones_like(spectral), spectral)
        from uafp_gui.physics.forward import object_of

        recon.object.copy_(object_of(spectrum).to(recon.object.dtype))
        if len(step) > len(names) + len(modes):
            offset = len(names) + len(modes)
            for frame, k in frame_slot.items():
                system.frame_gain[frame] += float(step[offset + k])


def _sandwich(information: np.ndarray, weighted: np.ndarray, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A^-1 B A^-1 in the parameters' units, pseudo-inverting A on its non-flat directions; and, per
    parameter, how much of it lies in A's flat directions (0: none, 1: entirely)."""
    d = np.diag(ranges)
    scaled = d @ information @ d
    eigenvalues, vectors = np.linalg.eigh(0.5 * (scaled + scaled.T))
    largest = float(eigenvalues.max()) if eigenvalues.size else 0.0
    flat = eigenvalues <= FLAT_EIGENVALUE * max(largest, 1e-300)
    inverse = (vectors[:, ~flat] / eigenvalues[~flat]) @ vectors[:, ~flat].T
    scaled_b = d @ weighted @ d
    covariance_scaled = inverse @ scaled_b @ inverse
    covariance = d @ covariance_scaled @ d
    flat_loading = (vectors[:, flat] ** 2).sum(axis=1)
    return covariance, flat_loading, d @ inverse @ d


def _object_support_pixels(model) -> int:
    """Object spectrum pixels inside at least one frame's pupil: what the data constrain."""
    with torch.no_grad():
        frequencies = model.illumination_frequencies()
        whole_y, whole_x, _ = model.crop_plan(frequencies)
        index_y, index_x = model.crop_indices(whole_y, whole_x)
        covered = torch.zeros(model.setup.object_shape, dtype=torch.bool, device=model.device)
        support = (model.support > 0.5).expand(len(whole_y), -1, -1)
        # every entry's pupil support placed at its crop, all entries in one indexed write
        covered[index_y[:, :, None].expand_as(support)[support], index_x[:, None, :].expand_as(support)[support]] = True
    return int(covered.sum())


__all__ = [
    "CalibrationUncertainty",
    "calibration_lines",
    "apply_gauss_newton_step",
    "calibration_uncertainty",
    "format_value",
    "meaningful_range",
]
