"""The built-in complex test sample: a resolution target in amplitude plus cells in phase.

`render_sample` draws it procedurally (deterministic, anti-aliased); the shipped PNGs in
`uafp_gui/resources/` are its 512 x 512 rendering, and `load_sample` resamples them to any
grid. Amplitude lies in [0.25, 1]; phase in [0, ~1.6] rad, both with detail down to 1 um.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
from PIL import Image
from scipy import ndimage

SAMPLE_SIZE = 512
SAMPLE_PIXEL_UM = 0.46
PHASE_SCALE_RAD = 2.5  # phase PNG: 0..65535 maps to 0..PHASE_SCALE_RAD


def _bars(canvas, x0, y0, period_px, length_px, vertical, value):
    """Three bars of width period/2 drawn into canvas (float, oversampled grid)."""
    width = period_px / 2
    for k in range(3):
        start = k * period_px
        if vertical:
            canvas[int(y0) : int(y0 + length_px), int(x0 + start) : int(x0 + start + width)] = value
        else:
            canvas[int(y0 + start) : int(y0 + start + width), int(x0) : int(x0 + length_px)] = value


def render_sample(
    size: int = SAMPLE_SIZE, oversample: int = 4, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude and phase (float64, size x size) of the test sample, 0.46 um pixels at 512."""
    rng = np.random.default_rng(seed)
    n = size * oversample
    px = SAMPLE_PIXEL_UM * SAMPLE_SIZE / size / oversample  # um per oversampled pixel
    absorption = np.zeros((n, n))
    phase = np.zeros((n, n))

    # Resolution target (amplitude) in the top half: periods from 12 um to 1 um.
    periods_um = [12, 9, 7, 5.5, 4.4, 3.5, 2.8, 2.2, 1.8, 1.5, 1.25, 1.05]
    x, y = 0.04 * n, 0.05 * n
    for period in periods_um:
        p = period / px
        length = 5 * p / 2
        _bars(absorption, x, y, p, length, True, 0.7)
        _bars(absorption, x, y + length + p, p, length, False, 0.7)
        x += 3 * p + 0.02 * n
        if x > 0.9 * n:
            x = 0.04 * n
            y += 2 * length + 3 * p
    # Phase-only bars beside it (0.9 rad), periods 6 um to 1.2 um.
    x, y = 0.05 * n, 0.36 * n
    for period in [6, 4, 3, 2.4, 2.0, 1.6, 1.35, 1.2]:
        p = period / px
        length = 3 * p
        _bars(phase, x, y, p, length, True, 0.9)
        x += 3 * p + 0.025 * n

    # Cells in the bottom half: smooth phase bodies, nuclei, granules, weak absorption.
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    for _ in range(20):
        cy = rng.uniform(0.55, 0.95) * n
        cx = rng.uniform(0.06, 0.94) * n
        a = rng.uniform(9, 16) / px
        b = a * rng.uniform(0.65, 1.0)
        angle = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
        r2 = u * u + v * v
        body = np.clip(1 - r2, 0, None) ** 0.5
        phase += 0.7 * body
        absorption += 0.08 * (r2 < 1)
        nucleus = np.clip(1 - ((dx - 0.2 * a) ** 2 + dy**2) / (0.35 * a) ** 2, 0, None) ** 0.5
        phase += 0.3 * nucleus
        absorption += 0.15 * (nucleus > 0)
        for _ in range(12):
            gx = cx + rng.uniform(-0.7, 0.7) * a
            gy = cy + rng.uniform(-0.7, 0.7) * b
            sigma = rng.uniform(0.4, 0.9) / px
            phase += 0.25 * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * sigma**2)) * (r2 < 1)

    # Sub-cellular granules and debris everywhere: fine detail in every direction, so dark-field
    # frames at every angle carry signal (what real smears and tissue give the calibration).
    for _ in range(700):
        gx, gy = rng.uniform(0, n, 2)
        sigma = rng.uniform(0.3, 1.0) / px
        half = int(4 * sigma) + 1
        r0, r1 = max(int(gy) - half, 0), min(int(gy) + half, n)
        c0, c1 = max(int(gx) - half, 0), min(int(gx) + half, n)
        blob = np.exp(-((xx[r0:r1, c0:c1] - gx) ** 2 + (yy[r0:r1, c0:c1] - gy) ** 2) / (2 * sigma**2))
        phase[r0:r1, c0:c1] += rng.uniform(0.15, 0.5) * blob
        absorption[r0:r1, c0:c1] += rng.uniform(0.0, 0.25) * blob
    amplitude = 1.0 - np.clip(absorption, 0, 0.75)
    if oversample > 1:
        amplitude = amplitude.reshape(size, oversample, size, oversample).mean(axis=(1, 3))
        phase = phase.reshape(size, oversample, size, oversample).mean(axis=(1, 3))
    return amplitude, np.clip(phase, 0, PHASE_SCALE_RAD)


def save_sample_pngs(folder) -> None:
    """Write the shipped 16-bit PNGs (run once; the files live in uafp_gui/resources/)."""
    from pathlib import Path

    amplitude, phase = render_sample()
    folder = Path(folder)
    Image.fromarray(np.round(amplitude * 65535).astype(np.uint16)).save(folder / "sample_amplitude.png")
    Image.fromarray(np.round(phase / PHASE_SCALE_RAD * 65535).astype(np.uint16)).save(
        folder / "sample_phase.png"
    )


def load_sample(shape: tuple[int, int] = (SAMPLE_SIZE, SAMPLE_SIZE)) -> np.ndarray:
    """The shipped sample as a complex128 array of the given shape (resampled, tiled if larger)."""
    base = resources.files("uafp_gui.resources")
    with base.joinpath("sample_amplitude.png").open("rb") as f:
        amplitude = np.asarray(Image.open(f), dtype=np.float64) / 65535
    with base.joinpath("sample_phase.png").open("rb") as f:
        phase = np.asarray(Image.open(f), dtype=np.float64) / 65535 * PHASE_SCALE_RAD
    if amplitude.shape != tuple(shape):
        zoom = (shape[0] / amplitude.shape[0], shape[1] / amplitude.shape[1])
        amplitude = ndimage.zoom(amplitude, zoom, order=3, mode="grid-wrap")
        phase = ndimage.zoom(phase, zoom, order=3, mode="grid-wrap")
    return np.clip(amplitude, 0.05, None) * np.exp(1j * phase)
