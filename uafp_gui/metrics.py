"""Image-quality metrics of a reconstruction against a ground truth (numpy, no torch).

Amplitude: PSNR and SSIM after the best global scale. Phase: RMSE after removing the best
linear ramp and constant, computed on the wrapped difference so 2 pi jumps cost nothing.
Both after sub-pixel registration and over the central region (edges of FP reconstructions
carry periodic-boundary artefacts). `lowpass` restricts a truth to the synthetic aperture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity
from skimage.registration import phase_cross_correlation

CENTRAL_FRACTION = 0.8


@dataclass(frozen=True)
class Scores:
    amplitude_psnr_db: float
    amplitude_ssim: float
    phase_rmse_rad: float
    shift_px: tuple[float, float]

    def describe(self) -> str:
        return (
            f"amplitude PSNR {self.amplitude_psnr_db:.2f} dB, SSIM {self.amplitude_ssim:.3f}, "
            f"phase RMSE {self.phase_rmse_rad:.3f} rad"
        )


def lowpass(field: np.ndarray, pixel_um: float, cutoff_per_um: float) -> np.ndarray:
    """Complex field with every spatial frequency above `cutoff_per_um` removed (circular)."""
    rows, cols = field.shape
    fy = np.fft.fftfreq(rows, d=pixel_um)
    fx = np.fft.fftfreq(cols, d=pixel_um)
    mask = (fy[:, None] ** 2 + fx[None, :] ** 2) <= cutoff_per_um**2
    return np.fft.ifft2(np.fft.fft2(field) * mask)


def resample_to(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fourier-resample a complex field to `shape` (same field of view)."""
    if field.shape == tuple(shape):
        return field
    spectrum = np.fft.fftshift(np.fft.fft2(field))
    out = np.zeros(shape, dtype=complex)
    rows, cols = min(shape[0], field.shape[0]), min(shape[1], field.shape[1])
    src_r0, src_c0 = field.shape[0] // 2 - rows // 2, field.shape[1] // 2 - cols // 2
    dst_r0, dst_c0 = shape[0] // 2 - rows // 2, shape[1] // 2 - cols // 2
    out[dst_r0 : dst_r0 + rows, dst_c0 : dst_c0 + cols] = spectrum[
        src_r0 : src_r0 + rows, src_c0 : src_c0 + cols
    ]
    scale = (shape[0] * shape[1]) / (field.shape[0] * field.shape[1])
    return np.fft.ifft2(np.fft.ifftshift(out)) * scale


def central(image: np.ndarray, fraction: float = CENTRAL_FRACTION) -> np.ndarray:
    rows, cols = image.shape
    dr, dc = int(rows * (1 - fraction) / 2), int(cols * (1 - fraction) / 2)
    return image[dr : rows - dr, dc : cols - dc]


def register(reference: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """`moving` (complex) shifted by the sub-pixel offset that best aligns it to `reference`."""
    shift, _, _ = phase_cross_correlation(
        np.abs(reference), np.abs(moving), upsample_factor=20, normalization=None
    )
    spectrum = ndimage.fourier_shift(np.fft.fft2(moving), shift)
    return np.fft.ifft2(spectrum), (float(shift[0]), float(shift[1]))


def amplitude_psnr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """PSNR (dB) of `estimate` after the least-squares global scale; peak = reference max."""
    scale = float((reference * estimate).sum() / max((estimate * estimate).sum(), 1e-30))
    error = float(np.mean((reference - scale * estimate) ** 2))
    return float(10 * np.log10(reference.max() ** 2 / max(error, 1e-30)))


def amplitude_ssim(reference: np.ndarray, estimate: np.ndarray) -> float:
    scale = float((reference * estimate).sum() / max((estimate * estimate).sum(), 1e-30))
    span = float(reference.max() - reference.min()) or 1.0
    return float(structural_similarity(reference, scale * estimate, data_range=span))


def phase_rmse(reference: np.ndarray, estimate: np.ndarray, weight: np.ndarray | None = None) -> float:
    """RMSE (rad) of the wrapped phase difference after removing its best plane.

    The plane (constant + linear ramp) is fitted to the wrapped difference by a few
    re-wrapping passes, so a global 2 pi offset or a tilt from a mis-centred spectrum is free.
    """
    rows, cols = reference.shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    design = np.stack([np.ones(rows * cols), xx.ravel() / cols, yy.ravel() / rows], axis=1)
    difference = np.angle(np.exp(1j * (estimate - reference))).ravel()
    w = np.ones(rows * cols) if weight is None else weight.ravel()
    plane = np.zeros(rows * cols)
    for _ in range(4):
        residual = np.angle(np.exp(1j * (difference - plane)))
        coefficients, *_ = np.linalg.lstsq(design * w[:, None], (plane + residual) * w, rcond=None)
        plane = design @ coefficients
    residual = np.angle(np.exp(1j * (difference - plane)))
    return float(np.sqrt(np.sum(w * residual**2) / np.sum(w)))


def score(truth: np.ndarray, estimate: np.ndarray, fraction: float = CENTRAL_FRACTION) -> Scores:
    """Scores of complex `estimate` against complex `truth` on the truth's grid."""
    estimate = resample_to(estimate, truth.shape)
    aligned, shift = register(truth, estimate)
    reference_amplitude = central(np.abs(truth), fraction)
    estimate_amplitude = central(np.abs(aligned), fraction)
    # Phase is meaningless where the truth has (almost) no light; weight by truth amplitude.
    weight = central(np.abs(truth), fraction) ** 2
    return Scores(
        amplitude_psnr_db=amplitude_psnr(reference_amplitude, estimate_amplitude),
        amplitude_ssim=amplitude_ssim(reference_amplitude, estimate_amplitude),
        phase_rmse_rad=phase_rmse(
            central(np.angle(truth), fraction), central(np.angle(aligned), fraction), weight
        ),
        shift_px=shift,
    )
