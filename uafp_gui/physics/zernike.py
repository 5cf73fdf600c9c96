"""Zernike polynomials in Noll order, RMS-normalised on the unit disk (spec section 2).

Even j with m != 0 takes cos(m phi), odd j takes sin(m phi). Coefficients are radians of
phase at the working wavelength. `defocus_um_from_z4` converts the defocus term into a
physical sample defocus so a calibration can be read in micrometres.
"""

from __future__ import annotations

import math

import torch

from uafp_gui.limits import MAX_NOLL_INDEX  # noqa: E402, F401  (physics.forward and tests import it from here)


def noll_to_nm(j: int) -> tuple[int, int]:
    """Radial order n and signed azimuthal frequency m of Noll index j (m < 0: sin term)."""
    if j < 1:
        raise ValueError(f"Noll index must be >= 1, got {j}")
    n = 0
    remainder = j - 1
    while remainder > n:
        n += 1
        remainder -= n
    m = (n % 2) + 2 * ((remainder + ((n + 1) % 2)) // 2)
    return n, (m if j % 2 == 0 else -m)


def _radial(n: int, m: int, rho: torch.Tensor) -> torch.Tensor:
    m = abs(m)
    result = torch.zeros_like(rho)
    for k in range((n - m) // 2 + 1):
        coefficient = (
            (-1) ** k
            * math.factorial(n - k)
            / (math.factorial(k) * math.factorial((n + m) // 2 - k) * math.factorial((n - m) // 2 - k))
        )
        result = result + coefficient * rho ** (n - 2 * k)
    return result


def zernike(j: int, rho: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """RMS-normalised Noll Zernike Z_j evaluated at (rho, phi); not masked to the disk."""
    n, m = noll_to_nm(j)
    radial = _radial(n, m, rho)
    if m == 0:
        return math.sqrt(n + 1) * radial
    norm = math.sqrt(2 * (n + 1))
    angular = torch.cos(m * phi) if m > 0 else torch.sin(-m * phi)
    return norm * radial * angular


def zernike_basis(indices: list[int] | range, rho: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Stack of Z_j for the given Noll indices, shape (len(indices), *rho.shape)."""
    return torch.stack([zernike(j, rho, phi) for j in indices])


def defocus_um_from_z4(z4_rad: float, wavelength_um: float, objective_na: float) -> float:
    """Sample defocus (um, positive = sample above focus) equivalent to a Z4 coefficient.

    Paraxial defocus dz multiplies the spectrum by exp(-i pi wavelength dz f^2); its rho^2
    term equals that of c4 * sqrt(3) * (2 rho^2 - 1) when
    dz = -2 sqrt(3) c4 wavelength / (pi NA^2).
    """
    return -2.0 * math.sqrt(3.0) * z4_rad * wavelength_um / (math.pi * objective_na**2)


def z4_from_defocus_um(defocus_um: float, wavelength_um: float, objective_na: float) -> float:
    """Inverse of `defocus_um_from_z4`."""
    return -defocus_um * math.pi * objective_na**2 / (2.0 * math.sqrt(3.0) * wavelength_um)
