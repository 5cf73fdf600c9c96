"""UA-FP: the self-calibrating reconstruction that optimises the object with every system unknown.

One differentiable forward model (`uafp_gui.physics.forward`) of the real, imperfect microscope;
a first-order optimiser (Adam, one step size per parameter group) alternates an image phase
(object only) and a system phase (LED geometry, Zernike and free-form pupil, frame gains,
background) over mini-batches of frames. The start is robust to large misalignment: the
object comes from the bright-field frames and the LED geometry from the data itself
(`uafp_gui.recon.selfcal`).

Streaming: a `UafpReconstruction` takes frames as they arrive (`add_frames`), `run()` continues
from its state and yields small immutable `ReconstructionUpdate`s, stops between mini-batches
when cancelled, and rolls back to the last good state (with smaller steps) if the loss
diverges or turns NaN. `save_state`/`load_state` resume a reconstruction later.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from uafp_gui.errors import ConfigError, ReconstructionError, UafpError
from uafp_gui.io.calibration import Calibration
from uafp_gui.model import LedGeometry
from uafp_gui.physics.forward import ForwardModel, OpticalSetup, object_of, spectrum_of
from uafp_gui.recon.choices import Loss, StopReason
from uafp_gui.recon.common import (
    ReconstructionResult,
    amplitude_misfit_terms,
    apply_calibration,
    field_margin,
    resolve_device,
    result_from_model,
    upsampled_amplitude,
)
from uafp_gui.recon.report import nominal_frame_positions_mm
from uafp_gui.recon.settings import UafpSettings, default_iterations
from uafp_gui.recon.start import PHASE_START_GEOMETRY, fit_start, rim_fit_taken, search_start, start_search_due
from uafp_gui.recon.state import load_state, save_state

# Tries of `UafpReconstruction._sharpen_edge` (one every `geometry_newton_every` iterations from the geometry's
# join): from the one-pixel ramp to `pupil_dc_edge_px` in this many kept steps.
EDGE_SHARPENING_STEPS = 6

if TYPE_CHECKING:
    from uafp_gui.recon.selfcal import CircleFit, RimFit  # scipy: imported when a start is fitted

# Phases a run reports through `on_phase(phase, done, total)` after its last iteration (the start's: `recon.start`).
PHASE_POLISH = "polishing the calibration"
PHASE_ERROR_BARS = "computing the error bars"
# A polish step after the first is a chord step (the first pass's curvature J^T J, the gradient of the new
# state) only while its model predicts a decrease of the squared residuals below this fraction: a small
# step near the optimum, where the curvature has not changed. Larger ones (measured: predicted 4.7-7.7 %
# on small-frame refsim draws, where the exact step differs) compute a fresh Jacobian; the bench cases
# predicted 0.003-0.06 % and their chord steps matched the exact ones (notes/s5_i11.md).
CHORD_STEP_MAX_DECREASE = 0.005

# The engine's short names for the reasons.
STOP_COMPLETED, STOP_CONVERGED, STOP_CANCELLED = StopReason.COMPLETED, StopReason.CONVERGED, StopReason.CANCELLED
STOP_INTERRUPTED, STOP_DIVERGED = StopReason.INTERRUPTED, StopReason.DIVERGED
STOP_ENGINE_ERROR, STOP_ERROR = StopReason.ENGINE_ERROR, StopReason.ERROR
STOP_REASONS = tuple(StopReason)


@dataclass(frozen=True)
class ReconstructionUpdate:
    """A small immutable snapshot for views: numpy arrays, never tensors."""

    iteration: int
    loss: float
    frames_used: int
    amplitude: np.ndarray
    phase: np.ndarray
    log_spectrum: np.ndarray
    pupil_amplitude: np.ndarray
    pupil_phase: np.ndarray
    geometry: LedGeometry
    zernike_rad: dict[int, float]
    frame_gain: np.ndarray
    led_positions_mm: np.ndarray
    nominal_led_positions_mm: np.ndarray
    elapsed_s: float
    rolled_back: bool = False
    loss_history: tuple[float, ...] = field(default=())
    stop_reason: StopReason | None = None  # set on the last update of a run (see `UafpReconstruction.stop_reason`)


class UafpReconstruction:
    """A UA-FP reconstruction that can grow with the acquisition and be resumed."""

    def __init__(
        self,
        meta,
        frame_shape: tuple[int, int],
        settings: UafpSettings = UafpSettings(),
        calibration: Calibration | None = None,
        source_dataset: str = "",
    ):
        self.meta = meta
        if settings.iterations is None:
            settings = settings.replace(iterations=default_iterations(len(meta.frames)))
        self.settings = settings
        self.source_dataset = source_dataset
        self.device = resolve_device(settings.device)
        from uafp_gui.recon.common import check_work_size

        margin = field_margin(meta, tuple(frame_shape), settings.field_margin_px)
        modelled = (int(frame_shape[0]) + 2 * margin[0], int(frame_shape[1]) + 2 * margin[1])
        check_work_size(modelled, settings.upsample, settings.pixel_integration)
        setup = OpticalSetup.from_meta(meta, frame_shape, settings.upsample, settings.pixel_integration, margin)
        try:
            self.model = ForwardModel(setup, device=self.device)
            with torch.no_grad():
                self.model.crop_indices(*self.model.crop_plan(self.model.illumination_frequencies())[:2])
        except ValueError as error:
            raise ConfigError(str(error)) from None
        apply_calibration(self.model, calibration)
        self.calibrated = calibration is not None
        n = setup.n_frames
        rows, cols = setup.frame_shape
        self.measurements = torch.zeros(n, rows, cols, device=self.device)
        self.available = torch.zeros(n, dtype=torch.bool)
        self.counts_per_unit = torch.as_tensor(
            [f.exposure_ms * f.intensity for f in meta.frames], dtype=torch.float32, device=self.device
        )
        self.scale: float | None = None
        # Usable-pixel masks (True: not clipped) of the frames with saturated pixels; none for the others.
        self.full_scale = float(2 ** int(meta.bit_depth) - 1) if getattr(meta, "bit_depth", None) else None
        self.unsaturated: dict[int, torch.Tensor] = {}
        self.object: torch.nn.Parameter | None = None
        self.iteration = 0
        self.loss_history: list[float] = []
        self.elapsed_s = 0.0
        self.learning_rate_factor = 1.0
        self._lock = threading.Lock()
        self._pending: list[tuple[int, np.ndarray]] = []
        self._geometry_initialised_with = 0
        self._generator = torch.Generator().manual_seed(settings.seed)
        self._nominal_positions = nominal_frame_positions_mm(meta)
        self._last_good: dict | None = None
        self.stop_reason: StopReason | None = None  # why the last run ended; None while running
        self.stop_detail = ""
        self._uncertainty: tuple | None = None
        self.polished_steps = 0
        self.geometry_newton_kept = 0
        self.start_geometry: LedGeometry | None = None
        self.circle_fit: CircleFit | None = None
        self.rim_fit: RimFit | None = None
        self.start_search: dict | None = None  # outcome of the start search, when one ran
        self._searching = False
        self.optimisers: dict[str, torch.optim.Optimizer] = {}
        # Progress before the first iteration (the start fits and search can take minutes on a CPU):
        # called as on_phase(phase, done, total) with PHASE_* names; None reports nothing.
        self.on_phase: Callable[[str, int, int], None] | None = None
        self._cancel_requested: Callable[[], bool] = lambda: False
        self._constant_spectrum: torch.Tensor | None = None  # the object's spectrum while it is held constant
        self.model.dc_edge_px = max(1.0, settings.pupil_dc_edge_px)  # sharpened by `_sharpen_edge`
        self.edge_sharpened = 0

    # ------------------------------------------------------------------ frames
    @classmethod
    def from_dataset(cls, dataset, settings: UafpSettings = UafpSettings(), calibration=None) -> UafpReconstruction:
        recon = cls(
            dataset.meta,
            dataset.frames.shape[1:],
            settings,
            calibration,
            source_dataset=dataset.path.name if dataset.path else "",
        )
        recon.add_frames(dataset.frames, 0)
        return recon

    def add_frames(self, raw_frames: np.ndarray, first_index: int) -> None:
        """Queue raw camera frames (dataset order from `first_index`); thread-safe, taken at the next iteration."""
        raw_frames = np.asarray(raw_frames)
        if raw_frames.ndim == 2:
            raw_frames = raw_frames[None]
        if first_index < 0 or first_index + len(raw_frames) > self.model.setup.n_frames:
            raise ReconstructionError(
                f"frames {first_index}..{first_index + len(raw_frames) - 1} are outside the "
                f"{self.model.setup.n_frames} frames the dataset plans"
            )
        if raw_frames.shape[1:] != tuple(self.model.setup.frame_shape):
            raise ReconstructionError(
                f"frame shape {raw_frames.shape[1:]} differs from the reconstruction's {self.model.setup.frame_shape}"
            )
        with self._lock:
            for k, frame in enumerate(raw_frames):
                self._pending.append((first_index + k, frame))

    @property
    def frames_available(self) -> int:
        return int(self.available.sum()) + len(self._pending)

    def _take_pending(self) -> bool:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return False
        offset = float(self.meta.camera_offset)
        for index, frame in pending:
            normalised = (
                torch.as_tensor(frame.astype(np.float32), device=self.device) - offset
            ) / self.counts_per_unit[index]
            if not torch.isfinite(normalised).all():
                raise ReconstructionError(f"frame {index} holds NaN or infinite values")
            self.measurements[index] = normalised.clamp(min=0)
            self.available[index] = True
            if self.full_scale is not None:
                clipped = np.asarray(frame) >= self.full_scale
                if clipped.any():
                    self.unsaturated[index] = torch.as_tensor(~clipped, device=self.device)
                else:
                    self.unsaturated.pop(index, None)
        return True

    # ------------------------------------------------------------ initial state
    def _bright_field_frames(self) -> np.ndarray:
        available = torch.nonzero(self.available).squeeze(1)
        means = self.measurements[available].mean(dim=(1, 2))
        bright = available[means > 0.5 * means.max()]
        return bright.cpu().numpy()

    def _initialise(self) -> None:
        """Object from the brightest frames, scale, and (once enough frames exist) the geometry."""
        bright = self._bright_field_frames()
        if self.scale is None:
            self.scale = float(self.measurements[bright].mean())
            with torch.no_grad():
                if not self.calibrated:
                    self.model.system.frame_gain.fill_(1.0)
                else:
                    self.model.system.frame_gain.div_(self.scale)
        if self.object is None:
            central = int(bright[np.argmin(np.linalg.norm(self._nominal_positions[bright], axis=1))])
            setup = self.model.setup
            start = upsampled_amplitude(self.measurements[central], self.scale, setup.object_shape, setup.margin)
            self.object = torch.nn.Parameter(start)
        if (
            self.settings.init_geometry_from_data
            and self.settings.learn_geometry
            and not self.settings.freeze_system
            and not self.calibrated
            and self.model.setup.frame_illumination_na is None  # calibrated per-LED NAs are the start
            # While streaming, more bright-field frames sharpen the start; once the geometry is being
            # refined by gradients, it is not thrown away.
            and self.iteration < self.settings.geometry_start_fraction * self.settings.iterations
        ):
            if len(bright) > self._geometry_initialised_with:
                from uafp_gui.recon.selfcal import Cancelled

                self._report(PHASE_START_GEOMETRY, 0, 1)
                try:
                    fit_start(self, bright)
                except Cancelled:  # stopped: the fit runs again when the run continues
                    self._build_optimisers()
                    return
                self._report(PHASE_START_GEOMETRY, 1, 1)
            if start_search_due(self):
                search_start(self)
        self._build_optimisers()

    def _report(self, phase: str, done: int, total: int) -> None:
        if self.on_phase is not None:
            self.on_phase(phase, done, total)

    def _build_optimisers(self) -> None:
        s = self.settings
        system = self.model.system
        for parameter in system.parameters():
            parameter.requires_grad_(False)
        groups = []
        if not s.freeze_system:
            if s.learn_geometry:
                groups += [
                    {"params": [system.shift_x_mm, system.shift_y_mm], "lr": s.lr_shift_mm},
                    {"params": [system.rotation_deg], "lr": self.rotation_step_deg()},
                    {"params": [system.height_mm], "lr": s.lr_height_mm},
                ]
            if s.learn_zernike:
                groups.append({"params": [system.zernike_rad], "lr": s.lr_zernike_rad})
            if s.learn_freeform:
                groups.append({"params": [system.freeform_phase], "lr": s.lr_freeform_rad})
            if s.learn_led_residuals:
                groups.append({"params": [system.led_offsets_mm], "lr": s.lr_led_residual_mm})
            if s.learn_gains:
                groups.append({"params": [system.frame_gain], "lr": s.lr_gain})
            if s.learn_background:
                groups.append({"params": [system.background], "lr": s.lr_background})
        for group in groups:
            for parameter in group["params"]:
                parameter.requires_grad_(True)
            group["base_lr"] = group["lr"]
        if "object" not in self.optimisers:
            self.optimisers["object"] = torch.optim.Adam(
                [{"params": [self.object], "lr": s.lr_object, "base_lr": s.lr_object}]
            )
        if groups and "system" not in self.optimisers:
            self.optimisers["system"] = torch.optim.Adam(groups)

    def rotation_step_deg(self) -> float:
        """The rotation's base step: as set, or the angle that moves the outermost LED by `lr_shift_mm`."""
        if self.settings.lr_rotation_deg is not None:
            return self.settings.lr_rotation_deg
        reach_mm = float(np.max(np.linalg.norm(self._nominal_positions, axis=1), initial=0.0))
        return float(np.degrees(self.settings.lr_shift_mm / max(reach_mm, self.model.setup.led_pitch_mm)))

    # ---------------------------------------------------------------- the loss
    def usable_pixels(self, frames: torch.Tensor) -> torch.Tensor | None:
        """(B, H, W) float mask of the pixels the data term uses (clipped ones are 0), or None when every
        pixel of these frames is usable (the common case costs nothing)."""
        if not self.unsaturated or not self.settings.mask_saturated:
            return None
        indices = frames.tolist()
        if not any(index in self.unsaturated for index in indices):
            return None
        mask = torch.ones(len(indices), *self.measurements.shape[1:], device=self.device)
        for row, index in enumerate(indices):
            if index in self.unsaturated:
                mask[row] = self.unsaturated[index]
        return mask

    def loss(self, frames: torch.Tensor) -> torch.Tensor:
        """Mean data misfit of `frames` over their usable pixels (normalised per pixel), plus regularisers."""
        spectrum = self._constant_spectrum  # set while the object is a constant (the system phase)
        predicted = self.model(spectrum_of(self.object) if spectrum is None else spectrum, frames)
        measured = self.measurements[frames] / self.scale
        usable = self.usable_pixels(frames)

        def mean(values: torch.Tensor) -> torch.Tensor:
            return values.mean() if usable is None else (values * usable).sum() / usable.sum().clamp(min=1)

        if self.settings.loss is Loss.AMPLITUDE:
            residual = torch.sqrt(predicted.clamp(min=0) + 1e-8) - torch.sqrt(measured)
            if usable is not None:
                # A clipped pixel says only "at least this bright" (censored data): no penalty above the
                # clip level, the usual one below it, so a clipped region stays bright rather than free.
                residual = torch.where(usable > 0, residual, residual.clamp(max=0))
            misfit = residual.square().mean()
        else:
            counts = (self.counts_per_unit[frames] * self.scale)[:, None, None]
            expected = predicted.clamp(min=1e-6) * counts
            observed = measured * counts
            # Poisson deviance / 2: the negative log-likelihood minus its value at a perfect fit, so
            # it is >= 0 (same gradients) and the divergence check (loss > 3x best) stays meaningful.
            deviance = expected - observed * torch.log(expected) - observed + torch.special.xlogy(observed, observed)
            misfit = mean(deviance) / counts.mean()
        if self.settings.tv_weight > 0:
            o = self.object
            tv = (o[1:, :] - o[:-1, :]).abs().mean() + (o[:, 1:] - o[:, :-1]).abs().mean()
            misfit = misfit + self.settings.tv_weight * tv
        return misfit

    def _zernike_mask(self) -> torch.Tensor:
        mask = torch.zeros_like(self.model.system.zernike_rad)
        mask[self.settings.zernike_min_index - 1 :] = 1
        return mask

    def _mask_system_gradients(self) -> None:
        """Keep degenerate Zernikes fixed, and the geometry for its first iterations
        (`geometry_start_fraction`): in the very first ones the object is little more than the blurred
        bright-field image, and a geometry step would absorb what is really aberration or object."""
        system = self.model.system
        if system.zernike_rad.grad is not None:
            system.zernike_rad.grad.mul_(self._zernike_mask())
        if self._geometry_waits():
            for parameter in (system.shift_x_mm, system.shift_y_mm, system.rotation_deg, system.height_mm):
                parameter.grad = None

    def _geometry_waits(self) -> bool:
        """Whether the geometry (started from the data) waits for object and pupil to settle: see
        `_mask_system_gradients`."""
        return (
            self.start_geometry is not None
            and self.iteration < self.settings.geometry_start_fraction * self.settings.iterations
        )

    def _set_learning_rates(self) -> None:
        total = max(self.settings.iterations, 1)
        progress = min(self.iteration / total, 1.0)
        # Cosine decay to a small fraction so the calibration settles instead of jittering.
        fraction = self.settings.final_lr_fraction
        factor = fraction + (1 - fraction) * 0.5 * (1 + np.cos(np.pi * progress))
        for optimiser in self.optimisers.values():
            for group in optimiser.param_groups:
                group["lr"] = group["base_lr"] * factor * self.learning_rate_factor

    def batch_size(self) -> int:
        """Frames per mini-batch: as set, or enough batches per pass that system and pupil get several
        optimiser steps per iteration however many frames there are."""
        if self.settings.batch_size is not None:
            return self.settings.batch_size
        return int(min(45, max(4, -(-self.model.setup.n_frames // 5))))

    def eligible_frames(self) -> torch.Tensor:
        """Available frames inside the current illumination-NA limit, which grows from the centre outward.

        Starting with bright field and the first dark-field ring keeps geometry errors of outer LEDs
        (which grow with their distance) from trapping the object before the geometry has settled.
        """
        available = torch.nonzero(self.available).squeeze(1)
        if self.settings.freeze_system or not self.settings.learn_geometry:
            return available
        with torch.no_grad():
            frame_na = self.model.frame_illumination_na()
        frame_na = frame_na[available.to(frame_na.device)]
        growth = max(1.0, self.settings.growth_fraction * self.settings.iterations)
        start = self.model.setup.objective_na + 0.05
        limit = start + (float(frame_na.max()) - start) * min(1.0, (self.iteration + 1) / growth)
        return available[(frame_na <= limit + 1e-6).cpu()]

    def _epoch(self, phase: str) -> float:
        available = self.eligible_frames()
        order = available[torch.randperm(len(available), generator=self._generator)].to(self.device)
        total = self._step_batches(phase, order)
        if phase == "system":
            with torch.no_grad():
                gain = self.model.system.frame_gain
                gain.clamp_(min=1e-3)
                mean = gain[self.available.to(gain.device)].mean()
                gain.div_(mean)
                self.object.mul_(torch.sqrt(mean))
        return total / max(len(order), 1)

    def _step_batches(self, phase: str, order: torch.Tensor, freeze_geometry: bool = False) -> float:
        """One optimiser step of `phase` per mini-batch of `order`; returns the summed batch losses."""
        from uafp_gui.recon.selfcal import Cancelled

        optimiser = self.optimisers[phase]
        total = 0.0
        with self._gradients_for(phase, freeze_geometry):
            for batch in torch.split(order, self.batch_size()):
                if self._cancel_requested():  # Stop acts within one mini-batch, not one iteration or search
                    raise Cancelled
                total += self._step_batch(phase, optimiser, batch, freeze_geometry)
        return total

    @contextlib.contextmanager
    def _gradients_for(self, phase: str, freeze_geometry: bool = False) -> Iterator[None]:
        """Autograd through this phase's own parameters only: the other side is a constant of the phase,
        so its gradients (the pupil interpolation's backward, the object's FFT) are never computed, and
        the system phase transforms the object once for all its mini-batches (`loss`). A geometry that
        does not move in this phase (frozen, or waiting to join: `_geometry_waits`) is a constant too:
        no gradient through the LED frequencies, the pupil support and the interpolation grid."""
        system = self.model.system
        others = [self.object] if phase == "system" else [p for p in system.parameters() if p.requires_grad]
        if phase == "system" and (freeze_geometry or self._geometry_waits()):
            geometry = [system.shift_x_mm, system.shift_y_mm, system.rotation_deg, system.height_mm]
            learned = [p for p in system.parameters() if p.requires_grad and all(p is not g for g in geometry)]
            if learned:  # something else takes the step (else the phase runs as before: nothing moves)
                others += [p for p in geometry if p.requires_grad]
        for parameter in others:
            parameter.requires_grad_(False)
        if phase == "system":
            with torch.no_grad():
                self._constant_spectrum = spectrum_of(self.object)
        try:
            yield
        finally:
            self._constant_spectrum = None
            for parameter in others:
                parameter.requires_grad_(True)

    def _step_batch(
        self, phase: str, optimiser: torch.optim.Optimizer, batch: torch.Tensor, freeze_geometry: bool
    ) -> float:
        """One optimiser step of `phase` on one mini-batch; returns its loss times its frame count."""
        system = self.model.system
        optimiser.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        if phase == "system":
            self._mask_system_gradients()
            if freeze_geometry:
                for parameter in (system.shift_x_mm, system.shift_y_mm, system.rotation_deg, system.height_mm):
                    parameter.grad = None
        optimiser.step()
        if phase == "system":
            self._keep_system_physical()
        return float(loss.detach()) * len(batch)

    def geometry_bounds(self) -> dict[str, tuple[float, float]]:
        """The physical range each LED-geometry estimate is kept in (see `_keep_system_physical`).

        The height stays within a factor of 2 of the dataset's (never at or below zero); the
        rotation within +-45 deg (beyond, the LED grid's labels would be a different grid); the
        shift within twice the start search's range or two pitches, whichever is larger.
        """
        from uafp_gui.recon.selfcal import SHIFT_RANGE_MM

        height = self.model.setup.led_height_mm
        shift = max(2 * SHIFT_RANGE_MM, 2 * self.model.setup.led_pitch_mm)
        return {
            "shift_x_mm": (-shift, shift),
            "shift_y_mm": (-shift, shift),
            "rotation_deg": (-45.0, 45.0),
            "height_mm": (0.5 * height, 2.0 * height),
        }

    def _keep_system_physical(self) -> None:
        """Project the system onto its physical range after every step: by construction no estimate can
        leave it (a height walking below zero, a gain at or below zero), so the result is always valid."""
        system = self.model.system
        with torch.no_grad():
            for name, (low, high) in self.geometry_bounds().items():
                parameter = getattr(system, name)
                if bool(parameter.isfinite()):  # a NaN is caught (and rolled back) by the run
                    parameter.clamp_(low, high)
            system.frame_gain.clamp_(min=1e-3)

    def at_bounds(self) -> list[str]:
        """The geometry parameters sitting on a bound of `geometry_bounds` (the data pulled them there)."""
        geometry = self.model.system.led_geometry().to_dict()
        return [
            name
            for name, (low, high) in self.geometry_bounds().items()
            if min(geometry[name] - low, high - geometry[name]) <= 1e-6 * max(1.0, abs(high))
        ]

    # ------------------------------------------------------------ checkpoints
    def _snapshot(self) -> dict:
        return {
            "object": self.object.detach().clone(),
            "system": copy.deepcopy(self.model.system.state_dict()),
            "optimisers": {k: copy.deepcopy(v.state_dict()) for k, v in self.optimisers.items()},
            "dc_edge_px": self.model.dc_edge_px,
        }

    def _restore(self, snapshot: dict) -> None:
        with torch.no_grad():
            self.object.copy_(snapshot["object"])
        self.model.system.load_state_dict(snapshot["system"])
        self.model.dc_edge_px = snapshot.get("dc_edge_px", self.model.dc_edge_px)
        for name, state in snapshot["optimisers"].items():
            # a copy: the optimiser takes the state's tensors as its own and steps them in place
            self.optimisers[name].load_state_dict(copy.deepcopy(state))

    # ------------------------------------------------------------------- run
    def run(
        self, iterations: int | None = None, cancel: threading.Event | Callable[[], bool] | None = None
    ) -> Iterator[ReconstructionUpdate]:
        """Iterate from the current state; yields an update every `update_every` iterations and at the end.

        However the run ends, the state is the last good one and `stop_reason` says why it ended
        (`STOP_REASONS`); `partial` is true unless it ran its iterations (or converged). Divergence and
        engine failures (NaN, an exploding loss, a torch error) roll back to the last good state with
        smaller steps; `max_consecutive_rollbacks` of them in a row end the run. Ctrl-C (or any
        `KeyboardInterrupt`, e.g. the CLI's SIGTERM) restores the last good state and propagates;
        an unexpected engine exception outside an iteration restores it and becomes a
        `ReconstructionError` that says it is the engine's fault and what to try.
        """
        target = self.settings.iterations if iterations is None else iterations
        cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
        self._cancel_requested = cancelled  # the start search checks it between mini-batches
        self._take_pending()
        if not bool(self.available.any()):
            raise ReconstructionError("no frame has arrived yet: add frames before running the reconstruction")
        if not bool((self.measurements[self.available] > 0).any()):
            raise ReconstructionError(
                f"every pixel of every frame is at or below the dark level (camera_offset "
                f"{float(self.meta.camera_offset):g}): nothing to reconstruct; check camera_offset and the LEDs"
            )
        self.stop_reason, self.stop_detail = None, ""
        try:
            yield from self._iterate(target, cancelled)
        except GeneratorExit:
            if self.stop_reason is None:
                self._end(STOP_CANCELLED, "the caller stopped iterating")
            raise
        except KeyboardInterrupt as interrupt:
            self._restore_last_good()
            self._end(STOP_INTERRUPTED, str(interrupt) or "interrupted (Ctrl-C)")
            raise
        except UafpError as error:  # bad input (a frame with NaN pixels...): the user's to fix
            self._restore_last_good()
            self._end(STOP_ERROR, str(error))
            raise
        except Exception as error:
            self._restore_last_good()
            self._end(STOP_ENGINE_ERROR, f"{type(error).__name__}: {error}")
            raise ReconstructionError(self.failure_message()) from error

    def _iterate(self, target: int, cancelled: Callable[[], bool]) -> Iterator[ReconstructionUpdate]:
        from uafp_gui.recon.selfcal import Cancelled

        self._initialise()
        done = 0
        last_yielded = -1
        failures = 0  # roll-backs in a row
        while done < target and not cancelled():
            started = time.perf_counter()
            if self._take_pending():
                self._initialise()
                if cancelled():  # stopped during the start search the new frames set off
                    break
            self._set_learning_rates()
            if self._last_good is None:
                self._last_good = self._snapshot()
            rolled_back = False
            best = min(self.loss_history) if self.loss_history else np.inf
            try:
                # System first: frames newly admitted by the growing NA limit pull the geometry before
                # the object has a chance to absorb their misplacement.
                if "system" in self.optimisers and self.iteration >= self.settings.warmup_iterations:
                    self._epoch("system")
                    if self._geometry_newton_due():
                        self.geometry_newton_step()
                if self._edge_sharpening_due():
                    self._sharpen_edge()
                loss = self._epoch("object")
                failure = "" if np.isfinite(loss) and loss <= 3 * best else f"the loss became {loss:.4g}"
                if not failure and not self._state_is_finite():
                    failure = "a parameter became NaN or infinite"
            except Cancelled:  # Stop between two mini-batches: back to the end of the last whole iteration
                self._restore_last_good()
                self.elapsed_s += time.perf_counter() - started
                break
            except UafpError:
                raise
            except Exception as error:  # a torch error, an LED pushed outside the bandwidth...: the engine's
                failure = f"{type(error).__name__}: {error}"
                if not self._state_is_finite():  # a NaN step, and what it broke downstream: a divergence
                    failure = f"a parameter became NaN or infinite ({failure})"
                loss = np.nan
            if failure:
                self._restore(self._last_good)
                self.learning_rate_factor *= 0.5
                rolled_back = True
                failures += 1
                self.stop_detail = failure
                loss = best
            else:
                failures = 0
                self._last_good = self._snapshot()
            self.iteration += 1
            done += 1
            self.loss_history.append(float(loss))
            self.elapsed_s += time.perf_counter() - started
            if failures >= max(1, self.settings.max_consecutive_rollbacks):
                reason = STOP_DIVERGED if failure.startswith(("the loss", "a parameter")) else STOP_ENGINE_ERROR
                self._end(reason, f"{failures} roll-backs in a row at iteration {self.iteration}, last: {failure}")
                last_yielded = done
                yield self.update(rolled_back)
                return
            converged = not rolled_back and self._converged()
            if done % self.settings.update_every == 0 or done == target or converged:
                if converged or done == target:
                    try:
                        self._finish(converged)
                    except Cancelled:  # Stop while polishing or computing the error bars: the last iteration's state
                        self._restore_last_good()
                        self._end(STOP_CANCELLED, f"stopped after iteration {self.iteration}, before its polish "
                                  "and error bars")
                last_yielded = done
                yield self.update(rolled_back)
                if converged or self.stop_reason is STOP_CANCELLED:
                    return
        if self.stop_reason is None:
            if done < target:
                self._end(STOP_CANCELLED, f"stopped at iteration {self.iteration} of {self.iteration + target - done}")
            else:
                self._end(STOP_COMPLETED)
        if last_yielded != done and done > 0:
            yield self.update()

    def _converged(self) -> bool:
        """Whether the misfit has stopped improving (see `UafpSettings.convergence_window`)."""
        s = self.settings
        window = s.convergence_window
        if window <= 0 or len(self.loss_history) <= window:
            return False
        if self._pending or not bool(self.available.all()):  # streaming: more frames are coming
            return False
        if self.model.dc_edge_px > s.pupil_dc_edge_px and self.iteration < self._edge_sharpening_window()[1]:
            return False  # the pupil edge may still sharpen
        settled = s.growth_fraction  # every frame is eligible from here on
        if self.start_geometry is not None and s.learn_geometry and not s.freeze_system:
            settled = max(settled, s.geometry_start_fraction)  # the geometry joins here (`_mask_system_gradients`)
        # The window's first loss (iteration `self.iteration - window`, counted from 1) comes after the join.
        if self.iteration - window - 1 < math.ceil(settled * s.iterations):
            return False
        first, last = self.loss_history[-window - 1], self.loss_history[-1]
        if not (math.isfinite(first) and math.isfinite(last)) or first <= 0:
            return False
        # A misfit that rose is not settled (the geometry just moved, a Newton step...): never a stop.
        return 0 <= (first - last) / first < window * s.convergence_tolerance

    def _convergence_detail(self) -> str:
        window = self.settings.convergence_window
        first, last = self.loss_history[-window - 1], self.loss_history[-1]
        return (
            f"the misfit improved by {100 * (first - last) / first:.2f} % over the last {window} iterations "
            f"(below {100 * self.settings.convergence_tolerance:g} % per iteration): stopped at iteration "
            f"{self.iteration} of at most {self.settings.iterations}"
        )

    def interrupted(self, detail: str = "interrupted") -> None:
        """Mark the run as interrupted from outside (Ctrl-C, SIGTERM, quit) and return to the last good state."""
        self._restore_last_good()
        self._end(STOP_INTERRUPTED, detail)

    def _finish(self, converged: bool) -> None:
        """The end of a run's last iteration: at the end of the schedule (converged, or the iteration cap
        reached) the Gauss-Newton polish and the error bars, each reporting its progress (`on_phase`)
        and stopping between frame batches (`Cancelled`); then the stop reason."""
        at_the_end = converged or self.iteration >= self.settings.iterations
        if at_the_end and self.settings.polish_steps > 0:
            self.polish()
        if converged:
            self._end(STOP_CONVERGED, self._convergence_detail())
        else:
            self._end(STOP_COMPLETED)
        if at_the_end:
            self.calibration_uncertainty(report=True)  # cached: `result()` reuses them

    def polish(self) -> int:
        """Gauss-Newton steps on the system parameters, the gains and the object's most coupled modes
        (the first-order optimiser stops short of the optimum on these few, stiff directions). A step
        is halved until it lowers the relative amplitude misfit of all frames, or dropped; returns the
        steps kept."""
        if self.settings.freeze_system or self.object is None:
            self.polished_steps = 0
            return 0
        self.polished_steps = self._gauss_newton_steps(self.settings.polish_steps, PHASE_POLISH)
        return self.polished_steps

    def _gauss_newton_steps(self, steps: int, phase: str | None = None, **restrict) -> int:
        """Up to `steps` Gauss-Newton steps (`uncertainty.jacobian_terms` with `restrict`), each halved
        until it lowers the data misfit of all frames, or dropped (and the rest with it). The first step
        computes every Jacobian column; the next ones are chord steps: the gradient at the new state
        (`uncertainty.rescored_terms`, one adjoint per frame batch) with the first pass's curvature J^T J,
        unless that predicts a large step (`CHORD_STEP_MAX_DECREASE`) or the misfit refuses it: then a
        fresh Jacobian's exact step.
        Reports as `phase` (when given) and stops between frame batches (`Cancelled`)."""
        from uafp_gui.recon.uncertainty import BATCH_FRAMES, jacobian_terms, rescored_terms, uncertainty_from_terms

        kept = 0
        self._uncertainty = None
        passes = [0, -(-int(self.available.sum()) // BATCH_FRAMES)]  # passes made, batches per pass
        if phase is not None:
            self._report(phase, 0, steps * passes[1])

        def progress(done: int, total: int) -> None:
            passes[1] = total
            if phase is not None:
                self._report(phase, passes[0] * total + done, max(steps, passes[0] + 1) * total)

        hooks = {"progress": progress, "cancelled": self._cancel_requested}
        before = self.data_misfit()
        terms = None
        for _ in range(steps):
            fresh = terms is None
            terms = jacobian_terms(self, **restrict, **hooks) if fresh else rescored_terms(self, terms, **hooks)
            passes[0] += 1
            uncertainty = uncertainty_from_terms(terms)
            large = 2 * uncertainty.extra["predicted_decrease"] > CHORD_STEP_MAX_DECREASE * terms.residual_sq.sum()
            misfit = None if not fresh and large else self._try_gauss_newton_step(uncertainty, before)
            if misfit is None and not fresh:  # a large chord step, or one the misfit refused: the exact step
                terms, fresh = jacobian_terms(self, **restrict, **hooks), True
                passes[0] += 1
                uncertainty = uncertainty_from_terms(terms)
                misfit = self._try_gauss_newton_step(uncertainty, before)
            if misfit is None:
                # Dropped: the state is the one this pass was computed at. A full pass is the error bars there.
                if not restrict and self.settings.uncertainty:
                    self._uncertainty = (self.iteration, uncertainty)
                break
            kept, before = kept + 1, misfit
        if phase is not None:
            self._report(phase, passes[0] * passes[1], passes[0] * passes[1])
        return kept

    def _try_gauss_newton_step(self, uncertainty, before: float) -> float | None:
        """Apply the Gauss-Newton step of `uncertainty`, halved until the data misfit falls below `before`:
        the new misfit, or None (the state unchanged) when even a quarter step does not lower it."""
        from uafp_gui.recon.uncertainty import apply_gauss_newton_step

        snapshot = self._snapshot()
        for fraction in (1.0, 0.5, 0.25):
            apply_gauss_newton_step(self, uncertainty, fraction)
            self._keep_system_physical()
            if self._state_is_finite():
                misfit = self.data_misfit()
                if misfit < before:
                    return misfit
            self._restore(snapshot)
        return None

    def _geometry_join(self) -> int:
        """The iteration at which the LED geometry joins the optimisation."""
        s = self.settings
        join = math.ceil(s.geometry_start_fraction * s.iterations) if self.start_geometry is not None else 0
        return max(join, s.warmup_iterations)  # never before the system's first steps

    def _edge_sharpening_window(self) -> tuple[int, int]:
        """Iterations [first, last) at which the unscattered wave's pupil edge may sharpen (`_sharpen_edge`):
        every `geometry_newton_every` from the geometry's join, `EDGE_SHARPENING_STEPS` times."""
        start = self._geometry_join()
        return start, start + EDGE_SHARPENING_STEPS * self.settings.geometry_newton_every

    def _edge_sharpening_due(self) -> bool:
        first, last = self._edge_sharpening_window()
        after = self.iteration - first
        return (
            self.model.dc_edge_px > self.settings.pupil_dc_edge_px
            and 0 <= after < last - first
            and after % self.settings.geometry_newton_every == 0
        )

    def _sharpen_edge(self) -> bool:
        """One step of the unscattered wave's pupil edge towards `pupil_dc_edge_px`, kept only if the data fit
        it better at the current state; returns whether it was kept.

        A point LED's plane wave is passed or blocked by the pupil: a sharp edge. But the misfit is then
        nearly a step function of the geometry where an LED meets the NA (no gradient tells the geometry
        which side it belongs to), so a run starts with the one-pixel ramp and sharpens it geometrically
        while the geometry's Gauss-Newton steps pin it; and a real LED has an angular size, which softens
        the edge as much: the data decide how far it sharpens (on the shared blood smear, a 0.1 px edge
        fitted 3.5 % worse than the ramp at the end of a run)."""
        current, target = self.model.dc_edge_px, self.settings.pupil_dc_edge_px
        candidate = max(target, current * target ** (1.0 / EDGE_SHARPENING_STEPS))
        before = self.data_misfit()
        self.model.dc_edge_px = candidate
        if self.data_misfit() <= before:  # equal: no LED near the edge, where the two edges differ
            self.edge_sharpened += 1
            return True
        self.model.dc_edge_px = current
        return False

    def _geometry_newton_due(self) -> bool:
        """Whether a Gauss-Newton step on the LED geometry is due at this iteration: at the iteration the
        geometry joins the optimisation and every `geometry_newton_every` iterations after it, up to
        `geometry_newton_steps` (early, so a run that converges soon after the join still gets them)."""
        s = self.settings
        if s.geometry_newton_steps <= 0 or s.freeze_system or not s.learn_geometry or self.object is None:
            return False
        after = self.iteration - self._geometry_join()
        return (
            self.iteration < s.iterations
            and 0 <= after < s.geometry_newton_steps * s.geometry_newton_every
            and after % s.geometry_newton_every == 0
        )

    def geometry_newton_step(self) -> int:
        """One Gauss-Newton step on the four LED-geometry parameters (the object moving along its phase
        ramps, which mimic a common shift), kept only if it lowers the data misfit; returns 1 if kept.

        Adam's mini-batch steps on the rotation are each a small fraction of the error, and their
        signs scatter from batch to batch: from a start a few degrees off it crept less than half way
        in the run. A second-order step on the whole data set moves it most of the way at once."""
        from uafp_gui.recon.uncertainty import GEOMETRY

        kept = self._gauss_newton_steps(1, None, system_names=GEOMETRY, spectral_modes=False, gains=False)
        self.geometry_newton_kept += kept
        return kept

    def _end(self, reason: StopReason, detail: str = "") -> None:
        self.stop_reason, self.stop_detail = reason, detail

    @property
    def partial(self) -> bool:
        """Whether the state is not what the run set out to reach (it was stopped, diverged or failed)."""
        return self.stop_reason not in (None, STOP_COMPLETED, STOP_CONVERGED)

    @property
    def failed(self) -> bool:
        """Whether the last run ended because the engine failed (it diverged, or raised in every retry)."""
        return self.stop_reason in (STOP_DIVERGED, STOP_ENGINE_ERROR)

    def failure_message(self) -> str:
        """One line for an engine failure: whose fault it is, what was kept, what to try."""
        return (
            f"the UA-FP engine failed at iteration {self.iteration} ({self.stop_reason}: {self.stop_detail}); "
            "this is a fault of the reconstruction, not of your data or settings. The last good state is "
            "kept. Try: --loss poisson or fewer unknowns (--no-geometry, --no-zernike), a larger --upsample, "
            "--device cpu; please report it with the dataset"
        )

    def _restore_last_good(self) -> None:
        if self._last_good is not None and self.object is not None:
            self._restore(self._last_good)

    def _state_is_finite(self) -> bool:
        return bool(torch.isfinite(self.object).all()) and all(
            bool(torch.isfinite(p).all()) for p in self.model.system.parameters()
        )

    def update(self, rolled_back: bool = False) -> ReconstructionUpdate:
        with torch.no_grad():
            obj = self.object.detach()[self.model.setup.object_window()]
            size = self.settings.preview_size
            factor = max(1, max(obj.shape) // size)
            preview = obj
            if factor > 1:
                preview = torch.nn.functional.avg_pool2d(torch.view_as_real(obj).permute(2, 0, 1)[None], factor)[0]
                preview = torch.complex(preview[0], preview[1])
            spectrum = torch.log1p(spectrum_of(obj).abs())
            if factor > 1:
                spectrum = torch.nn.functional.avg_pool2d(spectrum[None, None], factor)[0, 0]
            pupil = self.model.frame_pupil()
            system = self.model.system
            return ReconstructionUpdate(
                iteration=self.iteration,
                loss=self.loss_history[-1] if self.loss_history else float("nan"),
                frames_used=int(self.available.sum()),
                amplitude=preview.abs().cpu().numpy(),
                phase=preview.angle().cpu().numpy(),
                log_spectrum=spectrum.cpu().numpy(),
                pupil_amplitude=pupil.abs().cpu().numpy(),
                pupil_phase=pupil.angle().cpu().numpy(),
                geometry=system.led_geometry(),
                zernike_rad=system.zernike_dict(),
                frame_gain=(system.frame_gain.detach() * (self.scale or 1.0)).cpu().numpy(),
                led_positions_mm=self.model.frame_led_positions_mm().cpu().numpy(),
                nominal_led_positions_mm=self._nominal_positions,
                elapsed_s=self.elapsed_s,
                rolled_back=rolled_back,
                loss_history=tuple(self.loss_history),
                stop_reason=self.stop_reason,
            )

    def calibration_uncertainty(self, report: bool = False):
        """Standard errors of the calibration at the current state (`uafp_gui.recon.uncertainty`), cached
        per iteration; None when not asked for, or when the run did not reach a solution (partial).
        `report`: as the run's last phase (`PHASE_ERROR_BARS` progress, `Cancelled` on Stop)."""
        if not self.settings.uncertainty or self.partial or self.stop_reason is None or self.object is None:
            return None
        if self._uncertainty is None or self._uncertainty[0] != self.iteration:
            from uafp_gui.recon.selfcal import Cancelled
            from uafp_gui.recon.uncertainty import calibration_uncertainty

            hooks = {}
            if report:
                from uafp_gui.recon.uncertainty import BATCH_FRAMES

                self._report(PHASE_ERROR_BARS, 0, -(-int(self.available.sum()) // BATCH_FRAMES))
                hooks = {"progress": lambda done, total: self._report(PHASE_ERROR_BARS, done, total),
                         "cancelled": self._cancel_requested}
            try:
                self._uncertainty = (self.iteration, calibration_uncertainty(self, **hooks))
            except Cancelled:
                raise
            except Exception as error:  # noqa: BLE001 - error bars must never cost the result itself
                message = f"the calibration's error bars could not be computed ({type(error).__name__}: {error})"
                warnings.warn(message, stacklevel=2)
                self._uncertainty = (self.iteration, None)
        return self._uncertainty[1]

    def result(self) -> ReconstructionResult:
        if self.object is None:
            raise ReconstructionError("the reconstruction has not run yet")
        result = result_from_model(
            self.model,
            spectrum_of(self.object.detach()),
            "uafp",
            self.iteration,
            time.perf_counter() - self.elapsed_s,
            self.loss_history,
            self.source_dataset,
        )
        result.frame_gain = result.frame_gain * (self.scale or 1.0)
        result.extra = {
            "frames_used": int(self.available.sum()),
            # clipped pixels left out of the data term (0 when none, or when mask_saturated is off)
            "saturated_pixels_excluded": int(sum(int((~mask).sum()) for mask in self.unsaturated.values()))
            if self.settings.mask_saturated else 0,
            "loss": self.settings.loss,
            "data_misfit": self.data_misfit(),
            # the pupil edge the unscattered wave passes at the end, spectrum pixels (`_sharpen_edge`)
            "pupil_dc_edge_px": self.model.dc_edge_px,
            "partial": self.partial,
            "stop_reason": self.stop_reason or STOP_CANCELLED,
        }
        uncertainty = self.calibration_uncertainty()
        if uncertainty is not None:
            result.extra.update(uncertainty.to_calibration_fields())
        bounded = self.at_bounds()
        if bounded:  # the data pulled these to the edge of the physical range: not a calibration to trust
            result.extra["at_bounds"] = bounded
        if self.stop_detail:
            result.extra["stop_detail"] = self.stop_detail
        if self.start_search:
            search = self.start_search
            result.extra["start_search"] = {
                **{key: search[key] for key in ("probe_loss_from", "probe_loss_to", "evaluations", "seconds")},
                "from": search["from"].to_dict(),
                "to": search["to"].to_dict(),
                "circle_residual_px": self.circle_fit.residual_px if self.circle_fit else float("nan"),
            }
        if self.rim_fit is not None:
            rim = self.rim_fit
            result.extra["start_rim_fit"] = {
                "geometry": rim.geometry.to_dict(),
                "rim_response": rim.rim_response,
                "mismatched_frames": rim.mismatched_frames,
                "taken": rim_fit_taken(self),
                "bright_field_frames": len(rim.frames),
            }
        return result

    def data_misfit(self) -> float:
        """Relative amplitude misfit of every available frame under this engine's model."""
        residual = total = 0.0
        with torch.no_grad():
            spectrum = spectrum_of(self.object.detach())
            available = torch.nonzero(self.available).squeeze(1).to(self.device)
            for batch in torch.split(available, self.batch_size()):
                predicted = self.model(spectrum, batch).clamp(min=0).sqrt()
                measured = (self.measurements[batch] / self.scale).sqrt()
                usable = self.usable_pixels(batch)
                if usable is not None:  # clipped pixels say nothing about the model
                    predicted, measured = predicted * usable, measured * usable
                terms = amplitude_misfit_terms(predicted, measured)
                residual, total = residual + terms[0], total + terms[1]
        return residual / max(total, 1e-30)

    # ----------------------------------------------------------- save / load
    def save_state(self, path: str | Path) -> Path:
        """Write this reconstruction's state (`recon.state`): `load_state` continues from it."""
        return save_state(self, path)

    def load_state(self, path: str | Path) -> None:
        """Continue from a saved state (frames must be added again from the dataset), see `recon.state`."""
        load_state(self, path)


def reconstruct_dataset(
    dataset,
    settings: UafpSettings = UafpSettings(),
    calibration: Calibration | None = None,
    progress: Callable[[ReconstructionUpdate], None] | None = None,
) -> ReconstructionResult:
    """Run UA-FP on a whole dataset (the CLI's path)."""
    recon = UafpReconstruction.from_dataset(dataset, settings, calibration)
    for update in recon.run():
        if progress is not None:
            progress(update)
    return recon.result()


__all__ = [
    "STOP_REASONS", "Loss", "StopReason",
    "ReconstructionUpdate", "UafpReconstruction", "UafpSettings", "object_of", "reconstruct_dataset"]
