"""Data-driven starting geometry from the bright-field / dark-field boundary of the frames.

A frame is bright field when its LED's illumination angle lies inside the objective NA, which
shows directly as the frame's mean brightness. For every candidate rigid geometry (shift,
rotation, height) on a grid wide enough for several mm and several degrees of misalignment,
we predict which frames are bright and compare with the measured brightness; the centre of
the best-agreeing region is the start. The gradient refinement of UA-FP (which grows the set of
frames outward from the centre) then resolves what the boundary leaves open.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from uafp_gui.io.result import LedGeometry
from uafp_gui.physics.geometry import illumination_sines, misaligned_positions_mm, nominal_led_positions_mm


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
    shift_range_mm: float = 4.0,
    shift_step_mm: float = 0.2,
    rotation_range_deg: float = 6.0,
    rotation_step_deg: float = 1.0,
    height_range_mm: float = 12.0,
    height_step_mm: float = 3.0,
) -> BoundaryFit:
    """Grid search of the rigid LED geometry that best reproduces the bright/dark-field split."""
    setup = model.setup
    device = measurements.device
    frames = frames.to(device)
    brightness = measured_brightness(measurements, frames)
    entries = torch.stack([torch.nonzero(model.entry_frame == k)[0, 0] for k in frames.tolist()])
    leds = model.distinct_row_col[model.entry_led[entries]].to(device)
    nominal = nominal_led_positions_mm(leds, setup.led_on_axis, setup.led_pitch_mm)

    shifts = torch.arange(-shift_range_mm, shift_range_mm + 1e-9, shift_step_mm, device=device)
    rotations = torch.arange(-rotation_range_deg, rotation_range_deg + 1e-9, rotation_step_deg, device=device)
    heights = setup.led_height_mm + torch.arange(
        -height_range_mm, height_range_mm + 1e-9, height_step_mm, device=device
    )
    sx, sy, rot, h = torch.meshgrid(shifts, shifts, rotations, heights, indexing="ij")
    candidates = torch.stack([sx.ravel(), sy.ravel(), rot.ravel(), h.ravel()], dim=1)
    tile_mm = (setup.tile_center_um[0] / 1000.0, setup.tile_center_um[1] / 1000.0)
    scores = []
    for chunk in torch.split(candidates, 8192):
        positions = misaligned_positions_mm(nominal[None], chunk[:, 0, None], chunk[:, 1, None], chunk[:, 2, None])
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
