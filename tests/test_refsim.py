"""The independent reference simulator (`benchmarks/refsim.py`): its conventions are pinned here.

Its Zernikes against hand-computed values and orthonormality; its frames against the engine's
forward model for the true system (so both follow the same spec convention: a sign or scale
slip in either shows as a mismatch); its dataset and ground truth on disk; LED errors, order and
camera noise. Cases are small so the file runs in seconds.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import refsim
import torch
from scipy import ndimage

from uafp_gui.io.dataset import read_dataset
from uafp_gui.io.result import read_result
from uafp_gui.metrics import resample_to
from uafp_gui.model import LedGeometry
from uafp_gui.physics.forward import ForwardModel, OpticalSetup, spectrum_of
from uafp_gui.physics.zernike import zernike as engine_zernike

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = replace(refsim.MISALIGNED, frame_size=48, led_grid=5, led_brightness_spread=0.0)


def test_reference_zernikes_match_hand_computed_values():
    """Noll, RMS-normalised, even j cos / odd j sin (spec section 2), at rho = 0.5, phi = 30 deg."""
    rho, phi = 0.5, math.pi / 6
    hand = {
        4: -0.866025,  # sqrt(3) (2 rho^2 - 1)
        5: 0.530330,  # sqrt(6) rho^2 sin(2 phi)
        6: 0.306186,  # sqrt(6) rho^2 cos(2 phi)
        7: -0.883883,  # sqrt(8) (3 rho^3 - 2 rho) sin(phi)
        8: -1.530931,  # sqrt(8) (3 rho^3 - 2 rho) cos(phi)
        9: 0.353553,  # sqrt(8) rho^3 sin(3 phi)
        10: 0.0,  # sqrt(8) rho^3 cos(3 phi)
        11: -0.279508,  # sqrt(5) (6 rho^4 - 6 rho^2 + 1)
    }
    for j, value in hand.items():
        assert float(refsim.zernike_noll(j, rho, phi)) == pytest.approx(value, abs=1e-6), j


@pytest.mark.slow  # numerical: the slow lane
def test_reference_zernikes_are_orthonormal_and_agree_with_the_engine():
    grid = (np.arange(400) + 0.5) / 200 - 1
    y, x = np.meshgrid(grid, grid, indexing="ij")
    rho, phi = np.hypot(x, y), np.arctan2(y, x)
    inside = rho <= 1
    basis = np.stack([refsim.zernike_noll(j, rho, phi)[inside] for j in range(1, 23)])
    gram = basis @ basis.T / inside.sum()
    assert np.abs(gram - np.eye(22)).max() < 0.02
    # The engine's recursive implementation gives the same functions (indices 1..21).
    for j in range(1, 22):
        engine = engine_zernike(j, torch.as_tensor(rho), torch.as_tensor(phi)).numpy()
        assert np.allclose(engine[inside], basis[j - 1], atol=1e-9), j


def engine_frames(simulation, zernike: dict[int, float], upsample: int = 4) -> np.ndarray:
    """The engine's forward model of `simulation`'s frames for the true geometry and `zernike`."""
    micro = simulation.micro
    setup = OpticalSetup.from_meta(simulation.meta, (micro.frame_size,) * 2, upsample, pixel_integration=4)
    model = ForwardModel(setup)
    obj = resample_to(simulation.object_fine, setup.object_shape)
    # Reference camera pixel i integrates [i, i + 1) pixels of its fine grid; the engine's pixel i is
    # centred on object sample i * upsample: move the object by the difference.
    q = simulation.subsamples
    obj = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(obj), -(q - 1) / (2 * q) * upsample))
    with torch.no_grad():
        model.system.set_geometry(LedGeometry(**micro.true_geometry_dict()))
        model.system.set_zernike(zernike)
        return model(spectrum_of(torch.as_tensor(obj, dtype=torch.complex64))).numpy()


def relative_misfit(reference: np.ndarray, model: np.ndarray, frames: np.ndarray) -> float:
    """Median over `frames` of the relative misfit on the central half (best per-frame scale)."""
    n = reference.shape[-1]
    centre = slice(n // 4, 3 * n // 4)
    errors = []
    for k in frames:
        a, b = reference[k][centre, centre], model[k][centre, centre]
        scale = (a * b).sum() / (b * b).sum()
        errors.append(np.linalg.norm(a - scale * b) / np.linalg.norm(a))
    return float(np.median(errors))


def test_reference_frames_follow_the_engines_convention():
    """Geometry, illumination direction and Zernike signs agree between the two implementations.

    Bright-field frames of the true system agree to a few % (measured 1.5 %: finite pupil edge, periodic
    object and pixel integration differ); a conjugated, sine-flipped or 2/3-scaled pupil is far off.
    """
    simulation = refsim.simulate(replace(SMALL, photons_per_pixel=1e12, read_noise_e=0.0))
    bright = np.nonzero(np.linalg.norm(simulation.frequencies, axis=1) * SMALL.wavelength_um < 0.09)[0]
    assert len(bright) >= 5
    z = SMALL.zernike_rad
    truth = relative_misfit(simulation.expected_counts, engine_frames(simulation, z), bright)
    print(f"bright-field misfit, true system: {truth:.4f}")
    assert truth < 0.04
    for wrong in (
        {j: -v for j, v in z.items()},
        {j: (-v if j % 2 else v) for j, v in z.items()},
        {**z, 4: z[4] * 2 / 3},
    ):
        assert relative_misfit(simulation.expected_counts, engine_frames(simulation, wrong), bright) > 3 * truth


def test_reference_dataset_and_truth_on_disk(tmp_path):
    simulation = refsim.simulate(replace(SMALL, led_position_error_mm=0.1, vignetting=0.05))
    truth_folder = refsim.write_reference(simulation, tmp_path / "ref.tif")
    dataset = read_dataset(tmp_path / "ref.tif")
    assert dataset.frames.shape == (25, 48, 48) and dataset.frames.dtype == np.uint16
    assert dataset.meta.led_height_mm == SMALL.led_height_mm  # nominal: the errors are hidden
    result = read_result(truth_folder)
    assert result.calibration.led_geometry == LedGeometry(**SMALL.true_geometry_dict())
    assert result.calibration.zernike_rad[4] == pytest.approx(1.5)
    assert len(result.calibration.led_positions_mm) == 25
    # The truth is band-limited to the synthetic aperture.
    truth = result.object_field
    spectrum = np.abs(np.fft.fft2(truth))
    f = np.fft.fftfreq(truth.shape[0], d=simulation.fine_pixel_um)
    radius = np.hypot(f[:, None], f[None, :]) * SMALL.wavelength_um
    assert spectrum[radius > simulation.synthetic_na * 1.02].max() < 1e-3 * spectrum.max()
    assert spectrum[radius < simulation.synthetic_na * 0.9].max() > 0


@pytest.mark.slow  # numerical: the slow lane
def test_reference_led_errors_order_and_camera():
    micro = replace(SMALL, led_position_error_mm=0.12, order="row", photons_per_pixel=20000, bit_depth=12)
    simulation = refsim.simulate(micro)
    assert simulation.leds[:3] == [(14, 14), (14, 15), (14, 16)]  # raster order from the first row
    offsets = simulation.led_offsets_mm
    assert 0.06 < offsets.std() < 0.18
    rigid = simulation.led_positions_mm - offsets
    spiral = refsim.simulate(replace(micro, order="spiral"))
    assert spiral.leds[0] == (16, 16)
    # Rigid part follows the spec: rotate counter-clockwise, then shift.
    t = math.radians(micro.rotation_deg)
    x, y = 2 * micro.led_pitch_mm, 0.0  # LED (16, 18)
    k = simulation.leds.index((16, 18))
    expected = (
        x * math.cos(t) - y * math.sin(t) + micro.shift_x_mm,
        x * math.sin(t) + y * math.cos(t) + micro.shift_y_mm,
    )
    assert np.allclose(rigid[k], expected)
    assert simulation.frames.max() <= 4095
    # Shot noise: bright-field frames scatter about their expectation by about sqrt(N) electrons.
    centre = simulation.leds.index((16, 16))
    expected_counts = simulation.expected_counts[centre]
    residual = simulation.frames[centre].astype(float) - micro.camera_offset - expected_counts
    electrons_per_count = max(1.0, 2.5 * micro.photons_per_pixel / 2**micro.bit_depth)
    predicted = np.sqrt(expected_counts.mean() / electrons_per_count)
    assert 0.7 < residual.std() / predicted < 1.3


def test_a_uniform_object_gives_dark_dark_field_frames():
    """The background's tilted plane wave is imaged analytically and the rest of the object is brought
    to zero at the grid's edge: no wave is cut there, so nothing rings into dark-field frames (cut at
    the edge, a blank object put 2e-4 of the bright-field level into them, 0.2 % at the worst pixel)."""
    simulation = refsim.simulate(replace(SMALL, object_kind="blank", photons_per_pixel=1e12, read_noise_e=0.0))
    illumination_na = np.linalg.norm(simulation.frequencies, axis=1) * SMALL.wavelength_um
    expected = simulation.expected_counts
    bright = expected[illumination_na < 0.09]
    dark = expected[illumination_na > 0.105]
    assert len(dark) >= 5 and dark.max() < 1e-9 * bright.mean()
    # Bright field of a uniform object is uniform (up to vignetting, none here).
    assert bright.std(axis=(1, 2)).max() < 1e-4 * bright.mean()
    with pytest.raises(ValueError, match="object kind"):
        refsim.simulate(replace(SMALL, object_kind="stars"))
