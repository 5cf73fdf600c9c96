"""Illumination geometry: the direction and spatial frequency of each LED's light at the sample.

Implements spec section 2 from LED positions [X, Y] in mm (`uafp_gui.model.led_positions_mm`,
which places the LEDs: nominal grid, then rotation and shift). Image axes: x along frame
columns, y along frame rows; the LEDs are h below the sample. Every function is torch,
differentiable in the geometry parameters, and broadcasts over leading dimensions (a batch of
candidate geometries).
"""

from __future__ import annotations

import torch

GLASS_NEWTON_STEPS = 12


def illumination_sines(
    led_positions_mm: torch.Tensor,
    height_mm: torch.Tensor,
    tile_center_mm: tuple[float, float] = (0.0, 0.0),
    glass_thickness_mm: float = 0.0,
    glass_index: float = 1.0,
) -> torch.Tensor:
    """(..., L, 2) direction sines (sin_x, sin_y) of the light reaching the tile centre in air.

    Without glass the ray is straight: sin = (xc - X) / r. A slide of thickness t and index
    n just below the sample bends the ray; the lateral offset rho must then satisfy
    rho = (h - t) tan(a) + t tan(g), sin(a) = n sin(g). We solve for sin(a) with a fixed
    number of Newton steps so the result stays differentiable in the geometry.
    """
    dx = tile_center_mm[0] - led_positions_mm[..., 0]
    dy = tile_center_mm[1] - led_positions_mm[..., 1]
    rho = torch.sqrt(dx * dx + dy * dy + 1e-18)
    straight = rho / torch.sqrt(rho * rho + height_mm * height_mm)
    if glass_thickness_mm <= 0.0:
        sine = straight
    else:
        air_mm = height_mm - glass_thickness_mm
        sine = straight
        for _ in range(GLASS_NEWTON_STEPS):
            sine = sine.clamp(0.0, 0.999999)
            cos_air = torch.sqrt(1 - sine * sine)
            sine_glass = sine / glass_index
            cos_glass = torch.sqrt(1 - sine_glass * sine_glass)
            residual = air_mm * sine / cos_air + glass_thickness_mm * sine_glass / cos_glass - rho
            slope = air_mm / cos_air**3 + glass_thickness_mm / (glass_index * cos_glass**3)
            sine = sine - residual / slope
    return torch.stack([sine * dx / rho, sine * dy / rho], dim=-1)


def illumination_frequencies(
    led_positions_mm: torch.Tensor,
    height_mm: torch.Tensor,
    wavelength_um: float,
    tile_center_mm: tuple[float, float] = (0.0, 0.0),
    glass_thickness_mm: float = 0.0,
    glass_index: float = 1.0,
) -> torch.Tensor:
    """(L, 2) illumination spatial frequencies (u_x, u_y) in cycles per um."""
    sines = illumination_sines(led_positions_mm, height_mm, tile_center_mm, glass_thickness_mm, glass_index)
    return sines / wavelength_um
