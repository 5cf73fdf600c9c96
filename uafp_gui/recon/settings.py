"""UA-FP's settings: everything a user may tune, validated on construction (no torch needed)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from uafp_gui.errors import ConfigError
from uafp_gui.limits import MAX_UPSAMPLE
from uafp_gui.recon.choices import Device, Loss, parse_device

LOSSES = tuple(Loss)


@dataclass(frozen=True)
class UafpSettings:
    """Everything a user may tune; the defaults are meant to work from the dataset alone."""

    upsample: int = 4
    iterations: int | None = None  # None: 40 passes for 225 frames, more for fewer frames (same work)
    batch_size: int | None = None  # None: ~5 mini-batches per pass over the frames, at most 45 frames each
    device: Device = Device.AUTO
    loss: Loss = Loss.AMPLITUDE
    tv_weight: float = 0.0
    pixel_integration: int = 2
    # Camera pixels the modelled field extends beyond each edge of the frame (`OpticalSetup.margin`):
    # None sizes it from the optics (`recon.common.field_margin`), 0 models the frame alone (periodic).
    field_margin_px: int | None = None
    # The sharpest pupil edge (spectrum pixels) the unscattered wave may pass through: a run starts with the
    # anti-aliasing ramp (1) and sharpens towards this as far as the data fit it better (`ForwardModel.dc_edge_px`,
    # `UafpReconstruction._sharpen_edge`; 1 keeps the ramp). On 40 reference-simulator draws (issue 10's
    # benchmark, with the field margin) a fixed 0.1 held the shift criterion in 21 draws, rotation 21, height 30,
    # Zernike 28 (the periodic one-pixel model before: 17, 14, 23, 25).
    pupil_dc_edge_px: float = 0.1
    learn_geometry: bool = True
    learn_zernike: bool = True
    zernike_min_index: int = 4  # Z2/Z3 (tilt) equal a translation of the object: degenerate
    learn_freeform: bool = False
    learn_led_residuals: bool = False
    learn_gains: bool = True
    learn_background: bool = False
    # Pixels at the camera's full scale (2**bit_depth - 1, when the dataset records its bit depth) are
    # clipped: their true value is unknown, only that it is at least the full scale. They leave the
    # data term as measurements (amplitude loss: kept as that lower bound only; Poisson: left out).
    mask_saturated: bool = True
    freeze_system: bool = False
    init_geometry_from_data: bool = True
    # When the bright-field circles scatter about their rigid fit by more than this (LEDs off their
    # grid: the few central circles then leave the start uncertain), the start geometry is searched
    # within that uncertainty by short frozen-geometry reconstructions of the inner frames.
    start_search_residual_px: float = 0.5
    start_search_evaluations: int = 40
    start_search_iterations: int = 2  # per probe (3 before: same start on the blood smear, no worse on refsim draws)
    start_search_extra_na: float = 0.1
    start_search_min_gain: float = 0.05  # relative probe-misfit gain needed to leave the circle fit
    # The search ends once this many probes in a row (after the first simplex) gained no more than
    # start_search_min_gain / 10 on the best (0: only the evaluation count ends it):
    # see `selfcal.search_start_geometry`.
    start_search_patience: int = 8
    # Larger frames are searched on their centred crop of this side (0: whole frames): see `start.probe_reconstruction`.
    start_search_crop_px: int = 128
    # When the circle fit fails, the rim fit's start is taken when its bright-field rims are visible: a mean
    # response of at least this many noise units at its geometry (0: the rim fit is not tried).
    start_rim_min_response: float = 1.0
    warmup_iterations: int = 2
    growth_fraction: float = 0.2
    # The geometry joins after the first iterations, while the frames still grow outward from the centre,
    # and its Gauss-Newton steps track it as they come in, so the outer frames enter at a calibrated
    # place. Joined at half the run (the earlier default), the object had by then absorbed the outer
    # frames' misplacement and the run often stopped `converged` well below the same engine given the
    # true system: on 40 reference-simulator draws (issue 10's benchmark) the amplitude PSNR criterion
    # held in 17 draws at 0.5 / 4 steps, 28 at 0.1 / 6 steps; height 19 -> 23, all criteria 4 -> 7.
    geometry_start_fraction: float = 0.1
    lr_object: float = 0.05
    lr_shift_mm: float = 0.05
    # None: the step that moves the outermost LED as far as `lr_shift_mm` moves every LED (a fixed
    # step in degrees is a small fraction of that on a large array: the rotation then stays near its start).
    lr_rotation_deg: float | None = None
    lr_height_mm: float = 0.3
    lr_zernike_rad: float = 0.03
    lr_freeform_rad: float = 0.01
    lr_led_residual_mm: float = 0.01
    lr_gain: float = 0.01
    lr_background: float = 0.001
    final_lr_fraction: float = 0.05
    # A run ends (partial, last good state kept) after this many roll-backs in a row.
    max_consecutive_rollbacks: int = 4
    # The iteration count is a cap: a run ends `converged` once every frame is in, the geometry has had its
    # iterations, and the misfit fell by less than `convergence_tolerance` (relative, per iteration) over the
    # last `convergence_window` iterations. A window of 0 always runs to the cap.
    convergence_window: int = 3
    convergence_tolerance: float = 0.005
    update_every: int = 1
    # Gauss-Newton steps on the system (and the object along its most coupled modes) after the last
    # iteration, each kept only if it lowers the data misfit (`uafp_gui.recon.uncertainty`).
    polish_steps: int = 2
    # Gauss-Newton steps on the LED geometry alone during the run: the first when the geometry joins
    # (`geometry_start_fraction`), then one every `geometry_newton_every` iterations (0 steps: none).
    geometry_newton_steps: int = 6
    geometry_newton_every: int = 2
    uncertainty: bool = True  # standard errors of the calibration at the end of a run (recon.uncertainty)
    preview_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()
        # Plain strings ("poisson", "cpu") are taken and kept as their enum members.
        object.__setattr__(self, "loss", Loss(self.loss))
        object.__setattr__(self, "device", parse_device(self.device))

    def replace(self, **changes) -> UafpSettings:
        return replace(self, **changes)

    def validate(self) -> None:
        """Every field checked (type, finite, range): `ConfigError` names the first bad one.
        Runs on construction (and on `replace`): a `UafpSettings` that exists is valid."""
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)} (got {self.loss!r})")
        parse_device(self.device)
        for name, low, high in (
            ("upsample", 1, MAX_UPSAMPLE), ("pixel_integration", 1, 8), ("iterations", 0, 1_000_000),
            ("batch_size", 1, 100_000), ("zernike_min_index", 1, 66), ("polish_steps", 0, 1000),
            ("geometry_newton_steps", 0, 1000), ("geometry_newton_every", 1, 1000),
            ("start_search_evaluations", 0, 10_000), ("start_search_patience", 0, 10_000),
            ("start_search_iterations", 0, 1000), ("warmup_iterations", 0, 1_000_000), ("update_every", 1, 1_000_000),
            ("convergence_window", 0, 1_000_000), ("start_search_crop_px", 0, 1_000_000),
            ("preview_size", 16, 4096), ("seed", 0, 2**63 - 1), ("field_margin_px", 0, 4096),
        ):
            value = getattr(self, name)
            if value is None and name in ("iterations", "batch_size", "field_margin_px"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise ConfigError(f"{name} must be a whole number {low} to {high} (got {value!r})")
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{item.name} must be a finite number (got {value!r})")
            if isinstance(value, float) and value < 0:
                raise ConfigError(f"{item.name} must be >= 0 (got {value!r})")


def default_iterations(n_frames: int) -> int:
    """Iterations (passes over the frames) for a dataset of `n_frames`: 40 for the usual 15 x 15 LEDs,
    proportionally more for sparser acquisitions so the optimiser does the same number of frame visits."""
    return int(min(120, max(40, round(40 * 225 / max(n_frames, 1)))))
