"""UA-FP's start geometry: from the data alone, before the first iteration.

The boundary grid and the pupil circles (`selfcal`), the rim fit where the circles fail, and the start
search by short frozen-geometry probe reconstructions where the circles scatter. Functions of the
reconstruction they start (`uafp.UafpReconstruction` calls them from its initialisation).

A probe geometry is a candidate: one that would light an outer LED beyond the reconstructed bandwidth
scores as infeasible (infinite misfit) and the search goes on. Only the start finally chosen must fit;
where it does not (the data put the LEDs there), `ConfigError` says so and what to change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from uafp_gui.errors import ConfigError
from uafp_gui.model import LedGeometry

if TYPE_CHECKING:
    from uafp_gui.physics.forward import ForwardModel
    from uafp_gui.recon.uafp import UafpReconstruction

# Phases a run reports through `UafpReconstruction.on_phase(phase, done, total)` before its first iteration.
PHASE_START_GEOMETRY = "fitting the start geometry"
PHASE_START_SEARCH = "searching the start geometry"


def fit_start(recon: UafpReconstruction, bright: np.ndarray) -> None:
    from uafp_gui.recon.selfcal import fit_geometry_from_boundary, fit_geometry_from_circles, within_search_range

    available = torch.nonzero(recon.available).squeeze(1)
    cancelled = recon._cancel_requested
    boundary = fit_geometry_from_boundary(
        recon.model, recon.measurements, available, cancelled=cancelled,
        progress=lambda done, total: recon._report(PHASE_START_GEOMETRY, done, total + 1),  # + the circle fit
    )
    saved = recon.model.system.led_geometry()
    recon.model.system.set_geometry(boundary.geometry)
    try:
        circles = fit_geometry_from_circles(recon.model, recon.measurements, bright, cancelled=cancelled)
    except Exception:
        recon.model.system.set_geometry(saved)
        raise
    recon.circle_fit = None
    recon.rim_fit = None
    if (
        circles is not None
        and circles.residual_px < 2.0
        and within_search_range(circles.geometry, recon.model.setup.led_height_mm)
    ):
        recon.model.system.set_geometry(circles.geometry)
        recon.circle_fit = circles
    elif recon.settings.start_rim_min_response > 0:
        fit_start_from_rims(recon, bright, available, boundary.geometry)
    recon._keep_system_physical()
    recon.start_geometry = recon.model.system.led_geometry()
    recon._geometry_initialised_with = len(bright)
    if not start_search_due(recon):  # else the search chooses (a start beyond the bandwidth costs it nothing)
        check_start_fits_bandwidth(recon)


def geometry_fits_bandwidth(model: ForwardModel, geometry: LedGeometry) -> bool:
    """Whether `geometry` keeps every LED of `model` within its reconstructed bandwidth (the model's own
    geometry is left as it was)."""
    saved = model.system.led_geometry()
    model.system.set_geometry(geometry)
    try:
        return model.fits_bandwidth()
    finally:
        model.system.set_geometry(saved)


def check_start_fits_bandwidth(recon: UafpReconstruction) -> None:
    """The start geometry fitted from the data must light every LED within the reconstructed bandwidth
    (the nominal one was checked when the reconstruction was made); `ConfigError` if not.

    While frames are still arriving (a live reconstruction during acquisition) the fit rests on the few
    frames in so far and is fitted again as more come: a start beyond the bandwidth then falls back to
    the nominal geometry instead of ending the run; only the whole dataset's start is held to it."""
    if recon.model.fits_bandwidth():
        return
    if recon._pending or not bool(recon.available.all()):
        nominal = LedGeometry(height_mm=recon.model.setup.led_height_mm)
        if geometry_fits_bandwidth(recon.model, nominal):
            recon.model.system.set_geometry(nominal)
            recon.start_geometry = recon.model.system.led_geometry()
            return
    g = recon.model.system.led_geometry()
    raise ConfigError(
        f"the LED geometry fitted from the data (shift {g.shift_x_mm:+.3f}, {g.shift_y_mm:+.3f} mm, rotation "
        f"{g.rotation_deg:+.2f} deg, height {g.height_mm:.2f} mm) puts an LED beyond the reconstructed bandwidth: "
        f"increase the upsample factor (now {recon.model.setup.upsample}) or use fewer outer LEDs"
    )


def fit_start_from_rims(
    recon: UafpReconstruction, bright: np.ndarray, available: torch.Tensor, boundary: LedGeometry
) -> None:
    """Where no circle fit holds (small frames, low light), the geometry whose pupil circles match the
    bright-field spectra's rims best (`selfcal.fit_geometry_from_rims`), when those rims are visible
    (`start_rim_min_response`) and it matches them better than the boundary start does.
    The short probe reconstructions of the start search cannot make this choice: on a small field the
    object turns with the LEDs and a 4-degree error costs them nothing (measured: a probe preferred a
    start 3.9 deg off to the truth)."""
    from uafp_gui.recon.selfcal import fit_geometry_from_rims

    rim = fit_geometry_from_rims(
        recon.model, recon.measurements, bright, available, boundary, cancelled=recon._cancel_requested
    )
    recon.rim_fit = rim
    if rim is not None and rim_fit_taken(recon):
        recon.model.system.set_geometry(rim.geometry)


def rim_fit_taken(recon: UafpReconstruction) -> bool:
    rim = recon.rim_fit
    return (
        rim is not None
        and rim.rim_response >= recon.settings.start_rim_min_response
        and rim.rim_response - rim.mismatched_frames > rim.start_rim_response - rim.start_mismatched_frames
    )


def probe_frames(recon: UafpReconstruction) -> torch.Tensor:
    """The frames a start-search probe reconstructs: bright field and the first dark-field rings."""
    with torch.no_grad():
        frame_na = recon.model.frame_illumination_na().cpu()
    return torch.nonzero(frame_na <= recon.model.setup.objective_na + recon.settings.start_search_extra_na).squeeze(1)


def start_search_due(recon: UafpReconstruction) -> bool:
    circles = recon.circle_fit
    return (
        recon.start_search is None
        and recon.settings.start_search_evaluations > 0
        and circles is not None
        and circles.residual_px > recon.settings.start_search_residual_px
        and bool(np.all(np.isfinite(circles.uncertainty)))
        and bool(recon.available[probe_frames(recon)].all())
    )


def probe_loss_function(recon: UafpReconstruction, progress: Callable[[int], None] | None = None):
    """A function geometry -> misfit of a short frozen-geometry reconstruction of the probe frames
    (bright field and the first dark-field rings, see `_probe_frames`), each from the same start
    (infinite for a geometry that lights an LED beyond the reconstructed bandwidth); and a function
    that puts the probe back to that start. Stop raises `selfcal.Cancelled`."""
    from uafp_gui.recon.selfcal import Cancelled

    recon._build_optimisers()
    frames = probe_frames(recon).to(recon.device)
    probe = probe_reconstruction(recon)
    probe._cancel_requested = recon._cancel_requested
    snapshot = probe._snapshot()
    system = probe.model.system
    evaluations = 0

    def probe_loss(geometry: LedGeometry) -> float:
        nonlocal evaluations
        if progress is not None:
            progress(evaluations)
        if recon._cancel_requested():
            raise Cancelled
        evaluations += 1
        # A candidate that lights an LED beyond the bandwidth (of the run, or of the probe's crop) cannot
        # be the start: infeasible, not an error.
        if not geometry_fits_bandwidth(recon.model, geometry) or (
            probe is not recon and not geometry_fits_bandwidth(probe.model, geometry)
        ):
            return math.inf
        probe._restore(snapshot)
        system.set_geometry(geometry)
        generator = torch.Generator().manual_seed(recon.settings.seed)
        for _ in range(recon.settings.start_search_iterations):
            for phase in ("system", "object"):
                if phase in probe.optimisers:
                    order = frames[torch.randperm(len(frames), generator=generator).to(recon.device)]
                    probe._step_batches(phase, order, freeze_geometry=True)
        with torch.no_grad():
            total = sum(float(probe.loss(batch)) * len(batch) for batch in torch.split(frames, probe.batch_size()))
        return total / len(frames)

    def reset(geometry: LedGeometry) -> None:
        probe._restore(snapshot)
        system.set_geometry(geometry)

    return probe_loss, reset


def search_start(recon: UafpReconstruction) -> None:
    """Search the start geometry within the circle fit's uncertainty (see `selfcal.search_start_geometry`)."""
    from uafp_gui.recon.selfcal import Cancelled, search_start_geometry

    limit = recon.settings.start_search_evaluations
    first_simplex = 5  # selfcal.search_start_geometry stops after it unless a vertex gains
    evaluations = 0

    def progress(done: int) -> None:
        nonlocal evaluations
        evaluations = done
        recon._report(PHASE_START_SEARCH, done, first_simplex if done < first_simplex else limit)

    circles = recon.circle_fit
    assert circles is not None  # start_search_due: the search starts from an accepted circle fit
    probe_loss, reset = probe_loss_function(recon, progress)
    started = time.perf_counter()
    start = circles.geometry
    recon._searching = True
    try:
        geometry, start_loss, loss = search_start_geometry(
            probe_loss,
            start,
            circles.uncertainty,
            recon.settings.start_search_evaluations,
            recon.settings.start_search_min_gain,
            recon.settings.start_search_patience,
        )
    except Cancelled:  # back to the circle fit; the search runs again when the run continues
        reset(start)
        recon.model.system.set_geometry(start)
        return
    finally:
        recon._searching = False
    evaluations += 1
    recon._report(PHASE_START_SEARCH, evaluations, evaluations)
    reset(geometry)
    recon.model.system.set_geometry(geometry)
    recon._keep_system_physical()
    geometry = recon.start_geometry = recon.model.system.led_geometry()
    check_start_fits_bandwidth(recon)  # every probe beyond the bandwidth, the circle fit's start too
    recon.start_search = {
        "from": start,
        "to": geometry,
        "probe_loss_from": start_loss if math.isfinite(start_loss) else None,  # None: the start was infeasible
        "probe_loss_to": loss,
        "evaluations": evaluations,
        "seconds": time.perf_counter() - started,
    }


def probe_reconstruction(recon: UafpReconstruction) -> UafpReconstruction:
    """What the start search's probes reconstruct: this reconstruction, or, for frames larger than
    `start_search_crop_px`, a reconstruction of the frames' centred crops (same tile centre, so the
    same illumination angles: the geometry is a property of the microscope, not of the field of view;
    a 260 px frame costs 4x a 128 px crop). It starts from this one's scale and system."""
    side = recon.settings.start_search_crop_px
    rows, cols = recon.model.setup.frame_shape
    if side <= 0 or (rows <= side and cols <= side):
        return recon
    crop_rows, crop_cols = min(rows, side), min(cols, side)
    top, left = rows // 2 - crop_rows // 2, cols // 2 - crop_cols // 2
    window = (slice(top, top + crop_rows), slice(left, left + crop_cols))
    settings = recon.settings.replace(
        init_geometry_from_data=False, start_search_evaluations=0, uncertainty=False, device=str(recon.device)
    )
    probe = type(recon)(recon.meta, (crop_rows, crop_cols), settings, source_dataset=recon.source_dataset)
    probe.measurements = recon.measurements[:, window[0], window[1]].clone()
    probe.available = recon.available.clone()
    probe.scale = recon.scale
    probe.unsaturated = {k: mask[window] for k, mask in recon.unsaturated.items()}
    mine, theirs = recon.model.system, probe.model.system
    with torch.no_grad():
        for name, parameter in mine.named_parameters():
            target = getattr(theirs, name)
            if target.shape == parameter.shape:  # not the per-pixel pupil maps (zero at the start)
                target.copy_(parameter)
    probe._initialise()  # the object from the cropped bright-field frames, the optimisers
    return probe
