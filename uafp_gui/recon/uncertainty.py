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

J is computed frame batch by frame batch, analytically (the columns' FFTs in `COLUMN_DTYPE`, their
products summed in float64; what is kept of it: `JacobianTerms`): every column is the derivative
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
from dataclasses import dataclass, field, replace

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
# The columns' inverse FFTs and products: float32 (half the time of float64); their products J^T J, J^T r
# are summed in float64. Measured against float64 columns on the same state (notes s5_i11): every standard
# error and the Gauss-Newton step agree to a few 1e-6 relative.
COLUMN_DTYPE = torch.float32


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


@dataclass(frozen=True)
class JacobianTerms:
    """What one pass over the frames keeps of the Jacobian J (no pixel-sized array): per frame k, the
    blocks J_k^T J_k and the scores J_k^T r_k of the dense parameters (system, then object modes), and
    frame k's own gain column against them. Everything the error bars and a Gauss-Newton step need;
    `moved` carries them along a step in the linearised model, without another pass."""

    names: tuple[str, ...]  # system parameters, in the order of the dense columns
    modes: tuple  # the object modes (`_object_modes`), after the system's columns
    frame_slot: dict[int, int]  # frame index -> k (its row below, its gain's parameter after the dense ones)
    learn_gains: bool
    dense_blocks: np.ndarray  # (K, p, p)
    dense_scores: np.ndarray  # (K, p)
    gain_cross: np.ndarray  # (K, p): J_k(dense)^T j_k (j_k: frame k's gain column); empty without gains
    gain_sq: np.ndarray  # (K,): |j_k|^2
    gain_scores: np.ndarray  # (K,): j_k^T r_k
    residual_sq: np.ndarray  # (K,): |r_k|^2
    frame_gain: np.ndarray  # (N,) every frame's gain at this state (the gains' relative errors)
    pixels_per_frame: int
    object_dof: int  # the object's degrees of freedom in the data (2 x its constrained spectrum pixels)
    ranges: np.ndarray  # (n_total,): each parameter's meaningful range (`meaningful_range`)

    @property
    def n_dense(self) -> int:
        return len(self.names) + len(self.modes)

    @property
    def n_total(self) -> int:
        return self.n_dense + (len(self.frame_slot) if self.learn_gains else 0)

    def information(self, weights: np.ndarray | None = None) -> np.ndarray:
        """sum_k w_k J_k^T J_k over every parameter (w_k = 1 when `weights` is None)."""
        w = np.ones(len(self.residual_sq)) if weights is None else np.asarray(weights)
        p, out = self.n_dense, np.zeros((self.n_total, self.n_total))
        out[:p, :p] = np.einsum("k,kij->ij", w, self.dense_blocks)
        if self.learn_gains:
            gain = p + np.arange(len(w))
            out[:p, gain] = (self.gain_cross * w[:, None]).T
            out[gain, :p] = self.gain_cross * w[:, None]
            out[gain, gain] = w * self.gain_sq
        return out

    def scores(self) -> np.ndarray:
        """(K, n_total): every frame's score J_k^T r_k over every parameter."""
        out = np.zeros((len(self.residual_sq), self.n_total))
        out[:, : self.n_dense] = self.dense_scores
        if self.learn_gains:
            k = np.arange(len(self.residual_sq))
            out[k, self.n_dense + k] = self.gain_scores
        return out

    def moved(self, step: np.ndarray) -> JacobianTerms:
        """These terms after the parameters moved by `step` (n_total), in the linearised model
        r_k -> r_k + J_k step with J unchanged: the scores gain J_k^T J_k step, |r_k|^2 gains
        2 step . J_k^T r_k + step^T J_k^T J_k step."""
        p = self.n_dense
        dense, gains = np.asarray(step[:p], dtype=float), np.zeros(len(self.residual_sq))
        if self.learn_gains:
            gains = np.asarray(step[p:], dtype=float)
        dense_change = np.einsum("kij,j->ki", self.dense_blocks, dense)
        gain_change = np.zeros_like(gains)
        if self.learn_gains:
            dense_change += self.gain_cross * gains[:, None]
            gain_change = self.gain_cross @ dense + self.gain_sq * gains
        dense_scores = self.dense_scores + dense_change
        gain_scores = self.gain_scores + gain_change if self.learn_gains else self.gain_scores
        residual_sq = (
            self.residual_sq
            + 2 * (self.dense_scores @ dense + (self.gain_scores * gains if self.learn_gains else 0.0))
            + np.einsum("ki,i->k", dense_change, dense)
            + (gain_change * gains if self.learn_gains else 0.0)
        )
        frame_gain = self.frame_gain.copy()
        if self.learn_gains:
            for frame, k in self.frame_slot.items():
                frame_gain[frame] += gains[k]
        return replace(
            self, dense_scores=dense_scores, gain_scores=gain_scores, residual_sq=np.maximum(residual_sq, 0.0),
            frame_gain=frame_gain,
        )


def calibration_uncertainty(
    recon,
    batch_frames: int = BATCH_FRAMES,
    system_names: tuple[str, ...] | None = None,
    spectral_modes: bool = True,
    gains: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    column_dtype: torch.dtype | None = None,
) -> CalibrationUncertainty:
    """Standard errors of `recon`'s learned system parameters (a `UafpReconstruction` after a run).

    `system_names` (GEOMETRY names, "zernike_<j>") restricts the system parameters to those of them
    that are learned; `spectral_modes=False` moves the object along its phase ramps only, and
    `gains=False` leaves the gains out: a cheaper Jacobian for a Gauss-Newton step on a few of them.
    `column_dtype`: the precision of the columns' inverse FFTs and products (None: `COLUMN_DTYPE`).
    `progress(done, total)` is told after every frame batch; `cancelled()` is checked before each
    (`selfcal.Cancelled` is raised when it says so)."""
    terms = jacobian_terms(recon, batch_frames, system_names, spectral_modes, gains, progress, cancelled, column_dtype)
    return uncertainty_from_terms(terms)


def jacobian_terms(
    recon,
    batch_frames: int = BATCH_FRAMES,
    system_names: tuple[str, ...] | None = None,
    spectral_modes: bool = True,
    gains: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    column_dtype: torch.dtype | None = None,
) -> JacobianTerms:
    """One pass over `recon`'s available frames: the `JacobianTerms` at its current state, every column
    computed (one inverse FFT per column and frame batch; arguments as `calibration_uncertainty`)."""
    lin = _Linearisation(recon, system_names, spectral_modes, gains, column_dtype or COLUMN_DTYPE)
    n_dense = lin.n_dense
    blocks = np.zeros((lin.n_frames, n_dense, n_dense))
    cross = np.zeros((lin.n_frames, n_dense if lin.learn_gains else 0))
    gain_sq = np.zeros(lin.n_frames)
    scores = _Scores(lin.n_frames, n_dense)
    for rows, batch in lin.batches(batch_frames, progress, cancelled):
        ctx = lin.batch_context(batch)
        residual = ctx.residual.reshape(len(batch), -1, 1)  # (B, pixels, 1)
        # Every frame's products at once, accumulated in float64 whatever the columns' precision.
        dense = lin.columns(ctx).reshape(len(batch), n_dense, -1).double()  # (B, p, pixels)
        blocks[rows] = (dense @ dense.transpose(1, 2)).cpu().numpy()
        scores.dense[rows] = (dense @ residual)[..., 0].cpu().numpy()
        scores.add_residuals(rows, ctx)
        if lin.learn_gains:
            gain_column = ctx.gain_column.reshape(len(batch), -1, 1)
            cross[rows] = (dense @ gain_column)[..., 0].cpu().numpy()
            gain_sq[rows] = gain_column.square().sum(dim=(1, 2)).cpu().numpy()
    return lin.terms(blocks, cross, gain_sq, scores)


def rescored_terms(
    recon,
    terms: JacobianTerms,
    batch_frames: int = BATCH_FRAMES,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> JacobianTerms:
    """`terms` with the scores J_k^T r_k, the residuals and the gains of `recon`'s current state, its
    blocks J_k^T J_k kept from the pass they were computed in: one forward and one adjoint FFT per frame
    batch instead of one per column. A Gauss-Newton step from these (`uncertainty_from_terms`) is a
    chord step: exact gradient, curvature of the earlier state; for the next of a few small steps."""
    names, modes = terms.names, terms.modes
    system_names = tuple(names)
    spectral = any(kind == "spectral" for kind, _ in modes)
    lin = _Linearisation(recon, system_names, spectral, terms.learn_gains, torch.float64)
    if lin.names != list(names) or len(lin.modes) != len(modes) or lin.frame_slot != terms.frame_slot:
        raise ValueError("the terms were computed for other parameters or frames")
    scores = _Scores(lin.n_frames, lin.n_dense)
    for rows, batch in lin.batches(batch_frames, progress, cancelled):
        ctx = lin.batch_context(batch, adjoint=True)
        scores.dense[rows] = lin.scores(ctx).cpu().numpy()
        scores.add_residuals(rows, ctx)
    return lin.terms(terms.dense_blocks, terms.gain_cross, terms.gain_sq, scores)


@dataclass
class _Scores:
    """Per-frame scores and residuals being filled batch by batch."""

    n_frames: int
    n_dense: int

    def __post_init__(self) -> None:
        self.dense = np.zeros((self.n_frames, self.n_dense))
        self.gain = np.zeros(self.n_frames)
        self.residual_sq = np.zeros(self.n_frames)

    def add_residuals(self, rows: slice, ctx: _BatchContext) -> None:
        residual = ctx.residual.reshape(ctx.residual.shape[0], -1)
        self.residual_sq[rows] = residual.square().sum(dim=1).cpu().numpy()
        if ctx.gain_column is not None:
            self.gain[rows] = (ctx.gain_column.reshape(residual.shape) * residual).sum(dim=1).cpu().numpy()


@dataclass
class _BatchContext:
    """One frame batch at the current state: its entries' crops, pupils, field spectra, and the residuals."""

    batch: torch.Tensor
    entries: torch.Tensor
    position: torch.Tensor
    index_y: torch.Tensor
    index_x: torch.Tensor
    remainder: torch.Tensor
    pupils: torch.Tensor
    spectra: torch.Tensor
    residual: torch.Tensor  # (B, H, W) float64
    weight: torch.Tensor | None = None  # (B, H, W) d amplitude / d (summed intensity) x gain (full pass)
    fields: torch.Tensor | None = None  # (E, qH, qW) camera fields (full pass)
    adjoint: torch.Tensor | None = None  # (E, H, W) d(|r|^2 / 2) / d spectra (torch's conjugate convention)
    gain_column: torch.Tensor | None = None  # (B, H, W) d amplitude / d gain
    whole: torch.Tensor | None = None  # (E, 2) [row, col] integer spectrum offsets (`ForwardModel.crop_plan`)

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        return image[self.index_y[:, :, None], self.index_x[:, None, :]]


class _Linearisation:
    """The parameters of a pass (system, object modes, gains) at `recon`'s current state, and their
    directions in each entry's field spectrum: the one definition both passes use (see the module docstring:
    every column is one directional derivative dS of the batch's field spectra)."""

    def __init__(self, recon, system_names, spectral_modes: bool, gains: bool, column_dtype: torch.dtype):
        settings = recon.settings
        if recon.object is None:
            raise ValueError("the reconstruction has not run yet")
        self.recon = recon
        model = copy.deepcopy(recon.model).double()
        model.requires_grad_(False)
        self.model = model
        # The columns' inverse FFTs and products (a full pass's bulk) in `column_dtype`: the engine's own model
        # when it already computes in it (its only state used is the FFT scale factor it caches).
        self.column_dtype = column_dtype
        self.complex_dtype = torch.complex64 if column_dtype == torch.float32 else torch.complex128
        self.fft_model = model
        if column_dtype != torch.float64:
            same = recon.model.grid_fx.dtype == column_dtype
            self.fft_model = recon.model if same else copy.deepcopy(recon.model).to(column_dtype)
        system, setup = model.system, model.setup
        names: list[str] = []
        if not settings.freeze_system and settings.learn_geometry:
            names += list(GEOMETRY)
        if not settings.freeze_system and settings.learn_zernike:
            names += [f"zernike_{j}" for j in range(settings.zernike_min_index, system.zernike_rad.numel() + 1)]
        if system_names is not None:
            names = [name for name in names if name in system_names]
        self.names = names
        self.learn_gains = gains and not settings.freeze_system and settings.learn_gains
        self.obj = recon.object.detach().to(torch.complex128)
        self.spectrum = spectrum_of(self.obj)
        with torch.no_grad():
            cutoff = setup.pupil_cutoff + float(model.illumination_frequencies().norm(dim=-1).max())
        self.modes = _object_modes(
            setup.object_shape, setup.object_pixel_um, cutoff, setup.frequency_step, spectral_modes
        )
        self.n_system, self.n_dense = len(names), len(names) + len(self.modes)
        self.available = torch.nonzero(recon.available).squeeze(1).to(model.device)
        self.frame_slot = {int(k): i for i, k in enumerate(self.available.tolist())}
        self.n_frames = len(self.available)
        self.geometry_names = [name for name in names if name in GEOMETRY]
        self.frequency_derivatives = {}  # name -> (L, 2) d u / d name of every distinct LED
        with torch.no_grad():
            for name in self.geometry_names:
                parameter = getattr(system, name)
                original = parameter.detach().clone()
                moved = []
                for sign in (1.0, -1.0):
                    parameter.data = original + sign * FD_STEP[name]
                    moved.append(model.illumination_frequencies())
                parameter.data = original
                self.frequency_derivatives[name] = (moved[0] - moved[1]) / (2 * FD_STEP[name])
            # A phase ramp's derivative of the object spectrum, spectrum_of(i x map x object): once for every batch.
            self.real_derivatives = {
                m: spectrum_of(self.obj * (1j * phase_map))
                for m, (kind, phase_map) in enumerate(self.modes)
                if kind == "real"
            }

    def batches(self, batch_frames: int, progress, cancelled):
        """(rows of the terms, frames) per batch, with progress and cancellation between batches."""
        from uafp_gui.recon.selfcal import Cancelled

        batches = torch.split(self.available, batch_frames)
        first = 0
        for done, batch in enumerate(batches):
            if cancelled is not None and cancelled():
                raise Cancelled
            yield slice(first, first + len(batch)), batch
            first += len(batch)
            if progress is not None:
                progress(done + 1, len(batches))

    def batch_context(self, batch: torch.Tensor, adjoint: bool = False) -> _BatchContext:
        """The batch's spectra, predicted frames and residuals; the camera fields and the amplitude's
        chain factor for the columns, or (`adjoint`) the adjoint of the residuals on the spectra."""
        model, system, recon = self.model, self.model.system, self.recon
        with torch.no_grad():
            entries, position = model.entries_for(batch)
            frequencies = model.illumination_frequencies()[model.entry_led[entries]]
            whole_y, whole_x, remainder = model.crop_plan(frequencies)
            index_y, index_x = model.crop_indices(whole_y, whole_x)
            whole = torch.stack([whole_y, whole_x], dim=1)
            pupils = model.shifted_pupils(remainder, whole)
            spectra = self.spectrum[index_y[:, :, None], index_x[:, None, :]] * pupils
            measured = torch.sqrt(recon.measurements[batch].double() / float(recon.scale or 1.0))
        gain = system.frame_gain[batch.to(system.frame_gain.device)][:, None, None]
        fields = weight = gradient = None
        with torch.set_grad_enabled(adjoint):
            if adjoint:  # the closed-form adjoint of the camera intensity (`ForwardModel.intensity_of`)
                spectra = spectra.detach().requires_grad_(True)
                intensity = model.intensity_of(spectra)
            else:
                intensity, fields = model.intensity_and_fields(spectra)
            unclamped = gain * model.sum_entries(intensity, batch, position) + system.background
            predicted = unclamped.clamp(min=0)
            amplitude = torch.sqrt(predicted + 1e-8)
            residual = amplitude - measured
            if adjoint:
                (gradient,) = torch.autograd.grad(0.5 * residual.square().sum(), spectra)
        with torch.no_grad():
            predicted, amplitude, residual = predicted.detach(), amplitude.detach(), residual.detach()
            if not adjoint:
                # d sqrt(max(I, 0) + 1e-8) / dI, zero where the clamp holds; times the gain.
                weight = ((unclamped > 0) / (2 * torch.sqrt(predicted + 1e-8)) * gain).to(self.column_dtype)
                fields = fields.to(self.complex_dtype)
            gain_column = None
            if self.learn_gains:
                gain_column = (predicted - system.background) / (2 * gain * amplitude)
        return _BatchContext(
            batch, entries, position, index_y, index_x, remainder, pupils, spectra.detach(), residual, weight,
            fields, gradient, gain_column, whole,
        )

    def geometry_directions(self, ctx: _BatchContext) -> tuple[torch.Tensor, torch.Tensor]:
        """dS/du_x, dS/du_y of each entry: the pupil moves with its illumination frequency u, the integer
        crop does not for a small step; dP/du by a central difference in float64 (1e-6 of a pixel)."""
        df_y, df_x = self.model.setup.frequency_step
        remainder = ctx.remainder
        h = remainder.new_tensor([[PUPIL_STEP * df_x, 0.0], [0.0, PUPIL_STEP * df_y]])
        offsets = torch.cat([remainder + h[0], remainder - h[0], remainder + h[1], remainder - h[1]])
        moved = self.model.shifted_pupils(offsets, ctx.whole.repeat(4, 1))
        moved = moved.view(4, len(remainder), *moved.shape[1:])
        crops = ctx.crop(self.spectrum)
        return crops * ((moved[0] - moved[1]) / (2 * h[0, 0])), crops * ((moved[2] - moved[3]) / (2 * h[1, 1]))

    def direction(self, ctx: _BatchContext, index: int) -> torch.Tensor | None:
        """dS of dense parameter `index` other than the geometry (None: the piston, which changes nothing)."""
        if index < self.n_system:
            j = int(self.names[index].split("_")[1])
            if j < 2:  # the piston does not enter the pupil phase
                return None
            zernike = self.model.sampled_maps(self.model.zernike_basis[j - 1][None], ctx.remainder)[:, 0]
            return ctx.spectra * (1j * zernike)
        m = index - self.n_system
        kind, phase_map = self.modes[m]
        if kind == "real":
            return ctx.crop(self.real_derivatives[m]) * ctx.pupils
        return ctx.spectra * (1j * ctx.crop(phase_map))

    def columns(self, ctx: _BatchContext) -> torch.Tensor:
        """(B, p, H, W) Jacobian columns of the batch's amplitudes in `column_dtype`: one inverse FFT each
        (two serve every geometry column)."""
        model = self.model

        def change_along(spectra_derivative: torch.Tensor) -> torch.Tensor:
            """The entries' intensity change (E, H, W) along dS (`ForwardModel.intensity_derivative`)."""
            return self.fft_model.intensity_derivative(ctx.fields, spectra_derivative.to(self.complex_dtype))

        def column(change: torch.Tensor) -> torch.Tensor:
            return ctx.weight * model.sum_entries(change, ctx.batch, ctx.position)

        with torch.no_grad():
            if self.geometry_names:
                change_x, change_y = (change_along(d) for d in self.geometry_directions(ctx))
                entry_led = model.entry_led[ctx.entries]
            dense = ctx.weight.new_zeros(len(ctx.batch), self.n_dense, *ctx.weight.shape[1:])
            for index in range(self.n_dense):
                if index < self.n_system and self.names[index] in GEOMETRY:
                    du = self.frequency_derivatives[self.names[index]][entry_led].to(self.column_dtype)  # (E, 2)
                    dense[:, index] = column(du[:, 0, None, None] * change_x + du[:, 1, None, None] * change_y)
                else:
                    direction = self.direction(ctx, index)
                    if direction is not None:
                        dense[:, index] = column(change_along(direction))
        return dense

    def scores(self, ctx: _BatchContext) -> torch.Tensor:
        """(B, p) J_k^T r_k of the batch's frames from the adjoint: per entry Re<adjoint, dS> (no FFT)."""
        model = self.model
        adjoint = ctx.adjoint

        def inner(direction: torch.Tensor) -> torch.Tensor:
            product = adjoint.real * direction.real + adjoint.imag * direction.imag
            return product.sum(dim=(1, 2))  # (E,)

        with torch.no_grad():
            per_entry = torch.zeros(len(ctx.entries), self.n_dense, dtype=torch.float64, device=adjoint.device)
            if self.geometry_names:
                along_x, along_y = (inner(d) for d in self.geometry_directions(ctx))
                entry_led = model.entry_led[ctx.entries]
            for index in range(self.n_dense):
                if index < self.n_system and self.names[index] in GEOMETRY:
                    du = self.frequency_derivatives[self.names[index]][entry_led]
                    per_entry[:, index] = du[:, 0] * along_x + du[:, 1] * along_y
                else:
                    direction = self.direction(ctx, index)
                    if direction is not None:
                        per_entry[:, index] = inner(direction)
            out = per_entry.new_zeros(len(ctx.batch), self.n_dense)
            return out.index_add_(0, ctx.position, per_entry)

    def terms(self, blocks, cross, gain_sq, scores: _Scores) -> JacobianTerms:
        setup = self.model.setup
        n_gains = self.n_frames if self.learn_gains else 0
        ranges = np.array(
            [meaningful_range(n, setup.led_pitch_mm, setup.led_height_mm) for n in self.names]
            + [1.0] * (len(self.modes) + n_gains)
        )
        return JacobianTerms(
            names=tuple(self.names),
            modes=tuple(self.modes),
            frame_slot=self.frame_slot,
            learn_gains=self.learn_gains,
            dense_blocks=blocks,
            dense_scores=scores.dense,
            gain_cross=cross,
            gain_sq=gain_sq,
            gain_scores=scores.gain,
            residual_sq=scores.residual_sq,
            frame_gain=self.model.system.frame_gain.detach().cpu().numpy().astype(float),
            pixels_per_frame=setup.frame_shape[0] * setup.frame_shape[1],
            object_dof=2 * _object_support_pixels(self.model),
            ranges=ranges,
        )


def uncertainty_from_terms(terms: JacobianTerms) -> CalibrationUncertainty:
    """The error bars (and the Gauss-Newton step) from one pass's `JacobianTerms`: see the module docstring."""
    names, n_dense, n_total = terms.names, terms.n_dense, terms.n_total
    # Residual variance per frame, corrected for the object's degrees of freedom.
    data_pixels = len(terms.residual_sq) * terms.pixels_per_frame
    dof_factor = data_pixels / max(data_pixels - terms.object_dof - n_total, 0.1 * data_pixels)
    frame_variance = terms.residual_sq / terms.pixels_per_frame * dof_factor
    information = terms.information()  # A = sum J^T J
    weighted = terms.information(frame_variance)  # B = sum s_k^2 J_k^T J_k
    scores = terms.scores()
    gradient = scores.sum(axis=0)  # J^T r
    ranges = terms.ranges
    # Cluster-robust (per-frame) middle: residuals correlated within a frame (model error, a wrong
    # object) widen the bars as much as they move the estimate; frames are the independent units.
    clustered = np.zeros_like(information)
    if len(scores):
        centred = scores - scores.mean(axis=0)
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
    gain_std = np.full(len(terms.frame_gain), np.nan)
    if terms.learn_gains:
        for frame, k in terms.frame_slot.items():
            i = n_dense + k
            if flat_loading[i] <= 1e-3:
                gain_std[frame] = std[i] / terms.frame_gain[frame]
    noise_rms = float(np.sqrt(frame_variance.mean())) if len(frame_variance) else float("nan")
    return CalibrationUncertainty(
        std=results,
        undetermined=tuple(undetermined),
        frame_gain_std=gain_std,
        noise_rms=noise_rms,
        object_modes=len(terms.modes),
        extra={
            "step_vector": step,  # every parameter: system, object modes, gains (`apply_gauss_newton_step`)
            "gradient": gradient,  # J^T r, every parameter: d(|r|^2 / 2)/dp
            "layout": (list(names), list(terms.modes), terms.frame_slot),
            "gauss_newton_step": {name: float(step[i]) for i, name in enumerate(names)},
            "noise_std": {name: float(noise_std[i]) for i, name in enumerate(names)},
            "robust_std": {name: float(robust_std[i]) for i, name in enumerate(names)},
            # the GN model's predicted decrease of |r|^2 / 2 along the whole step: -g.step / 2
            "predicted_decrease": float(-0.5 * gradient @ step),
            "residual_sq": float(terms.residual_sq.sum()),
            "terms": terms,  # `JacobianTerms.moved` + `uncertainty_from_terms`: the bars after a step, no new pass
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
