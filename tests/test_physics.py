"""The forward model against spec section 2, each check built from an independent reference.

References are written out here in plain numpy (real-space tilt and FFT, explicit sums over
spectrum lines, Zernike formulas from Noll's table, Snell's law by root finding) and never call
the code under test. Small grids (16 x 16 frames) keep the whole file to a few seconds; the
model runs in float64 so the comparisons can be tight.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from uafp_gui.io.dataset import Dataset
from uafp_gui.io.schema import DatasetMeta
from uafp_gui.model import led_positions_mm
from uafp_gui.physics import forward as forward_module
from uafp_gui.physics.forward import ForwardModel, OpticalSetup, spectrum_of
from uafp_gui.physics.geometry import illumination_frequencies, illumination_sines
from uafp_gui.physics.zernike import (
    MAX_NOLL_INDEX,
    defocus_um_from_z4,
    noll_to_nm,
    z4_from_defocus_um,
    zernike,
    zernike_basis,
)

WAVELENGTH_UM = 0.532
NA = 0.1
SAMPLE_PIXEL_UM = 1.845
PITCH_MM = 4.0
ON_AXIS = (16, 16)
FRAME = 16
UPSAMPLE = 2
FINE = FRAME * UPSAMPLE
DF = 1.0 / (FRAME * SAMPLE_PIXEL_UM)  # spectrum line spacing, cycles/um
CUTOFF = NA / WAVELENGTH_UM

# Noll (1976) Table 1, written out independently of the code under test.
NOLL_TABLE = {
    1: (0, 0), 2: (1, 1), 3: (1, -1), 4: (2, 0), 5: (2, -2), 6: (2, 2), 7: (3, -1),
    8: (3, 1), 9: (3, -3), 10: (3, 3), 11: (4, 0), 12: (4, 2), 13: (4, -2), 14: (4, 4),
    15: (4, -4), 16: (5, 1), 17: (5, -1), 18: (5, 3), 19: (5, -3), 20: (5, 5), 21: (5, -5),
}  # fmt: skip
SQ3, SQ5, SQ6, SQ8 = math.sqrt(3), math.sqrt(5), math.sqrt(6), math.sqrt(8)
ZERNIKE_FORMULAS = {
    1: lambda r, p: np.ones_like(r),
    2: lambda r, p: 2 * r * np.cos(p),
    3: lambda r, p: 2 * r * np.sin(p),
    4: lambda r, p: SQ3 * (2 * r**2 - 1),
    5: lambda r, p: SQ6 * r**2 * np.sin(2 * p),
    6: lambda r, p: SQ6 * r**2 * np.cos(2 * p),
    7: lambda r, p: SQ8 * (3 * r**3 - 2 * r) * np.sin(p),
    8: lambda r, p: SQ8 * (3 * r**3 - 2 * r) * np.cos(p),
    9: lambda r, p: SQ8 * r**3 * np.sin(3 * p),
    10: lambda r, p: SQ8 * r**3 * np.cos(3 * p),
    11: lambda r, p: SQ5 * (6 * r**4 - 6 * r**2 + 1),
}


pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- helpers


def make_setup(leds, frame=FRAME, upsample=UPSAMPLE, pixel_integration=1, **changes) -> OpticalSetup:
    """Setup with one frame per entry of `leds`, each an (drow, dcol) offset or a tuple of them."""
    frames = []
    for entry in leds:
        group = entry if isinstance(entry[0], tuple) else (entry,)
        frames.append(tuple((ON_AXIS[0] + dr, ON_AXIS[1] + dc) for dr, dc in group))
    fields = dict(
        wavelength_um=WAVELENGTH_UM,
        objective_na=NA,
        sample_pixel_um=SAMPLE_PIXEL_UM,
        frame_shape=(frame, frame),
        frame_leds=tuple(frames),
        led_pitch_mm=PITCH_MM,
        led_on_axis=ON_AXIS,
        led_height_mm=90.0,
        upsample=upsample,
        pixel_integration=pixel_integration,
    )
    fields.update(changes)
    return OpticalSetup(**fields)


def make_model(setup: OpticalSetup, zernike_rad: dict[int, float] | None = None) -> ForwardModel:
    model = ForwardModel(setup).to(torch.float64)
    model.system.set_zernike(zernike_rad or {})
    return model


def height_for(offset_rows_cols: tuple[int, int], frequency_lines: float) -> float:
    """LED height (mm) that makes the LED at that offset light the centre with |u| = lines * DF."""
    rho_mm = PITCH_MM * math.hypot(*offset_rows_cols)
    sine = frequency_lines * DF * WAVELENGTH_UM
    return rho_mm * math.sqrt(1.0 / sine**2 - 1.0)


def set_height(model: ForwardModel, height_mm: float) -> np.ndarray:
    with torch.no_grad():
        model.system.height_mm.fill_(height_mm)
        return model.illumination_frequencies().numpy()


def reference_pupil(fx, fy, zernike_rad: dict[int, float]) -> np.ndarray:
    """Spec pupil: 1 on |f| <= NA/wavelength, phase sum_j c_j Z_j from the explicit formulas."""
    rho = np.hypot(fx, fy) / CUTOFF
    phi = np.arctan2(fy, fx)
    phase = sum(c * ZERNIKE_FORMULAS[j](rho, phi) for j, c in zernike_rad.items()) if zernike_rad else 0.0
    return (rho <= 1.0) * np.exp(1j * phase)


def line_indices(n: int) -> np.ndarray:
    return np.fft.fftfreq(n) * n


def object_lines(rng, shift_per_um, clear_edge=True) -> np.ndarray:
    """Random smooth object spectrum O_m (fftfreq order) of a FINE x FINE object.

    Lines whose tilted frequency m DF + u lies within 0.75 lines of the pupil edge are zeroed:
    there the model's anti-aliased support (a pixel-fraction edge) and the spec's hard disk
    legitimately differ, and everything else must agree to rounding error.
    """
    m_y, m_x = np.meshgrid(line_indices(FINE), line_indices(FINE), indexing="ij")
    lines = (rng.normal(size=(FINE, FINE)) + 1j * rng.normal(size=(FINE, FINE))) * np.exp(-(m_x**2 + m_y**2) / 50.0)
    lines[0, 0] += 3.0
    if clear_edge:
        for u in np.atleast_2d(shift_per_um):
            radius = np.hypot(m_x * DF + u[0], m_y * DF + u[1])
            lines[np.abs(radius - CUTOFF) < 0.75 * DF] = 0.0
    return lines


def object_from_lines(lines: np.ndarray) -> np.ndarray:
    return np.fft.ifft2(lines) * lines.size


def explicit_intensity(lines, u, positions_x_um, positions_y_um, zernike_rad) -> np.ndarray:
    """I(x) = |sum_m P(m DF + u) O_m exp(i 2 pi m DF x)|^2 at the given camera positions."""
    m_y, m_x = np.meshgrid(line_indices(FINE), line_indices(FINE), indexing="ij")
    weighted = reference_pupil(m_x * DF + u[0], m_y * DF + u[1], zernike_rad) * lines
    basis_x = np.exp(2j * np.pi * np.outer(positions_x_um, line_indices(FINE) * DF))
    basis_y = np.exp(2j * np.pi * np.outer(positions_y_um, line_indices(FINE) * DF))
    return np.abs(basis_y @ weighted @ basis_x.T) ** 2


def run_model(model: ForwardModel, obj: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(spectrum_of(torch.as_tensor(obj))).numpy()


def relative_error(actual, expected) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


CAMERA_X_UM = np.arange(FRAME) * SAMPLE_PIXEL_UM


# ------------------------------------------------------------------ sign convention, geometry


def test_led_at_plus_x_gives_negative_u_x_as_spec_says():
    # LED one column right of the axis (col > c0): X = +pitch, so u_x = (0 - X) / r / wavelength < 0.
    model = make_model(make_setup([(0, 1), (1, 0), (-2, -1)]))
    with torch.no_grad():  # per distinct LED (sorted); entry_led maps frames to them
        u = model.illumination_frequencies()[model.entry_led].numpy()
    for (dr, dc), (u_x, u_y) in zip([(0, 1), (1, 0), (-2, -1)], u, strict=True):
        x_mm, y_mm = dc * PITCH_MM, dr * PITCH_MM
        r = math.sqrt(x_mm**2 + y_mm**2 + 90.0**2)
        assert u_x == pytest.approx(-x_mm / r / WAVELENGTH_UM, rel=1e-9, abs=1e-12)
        assert u_y == pytest.approx(-y_mm / r / WAVELENGTH_UM, rel=1e-9, abs=1e-12)
    assert u[0, 0] < 0 and u[1, 1] < 0 and u[2, 0] > 0 and u[2, 1] > 0


def test_tile_centre_enters_with_the_spec_sign():
    xc_um, yc_um = 700.0, -300.0
    u = illumination_frequencies(
        torch.zeros(1, 2, dtype=torch.float64),
        torch.tensor(90.0, dtype=torch.float64),
        WAVELENGTH_UM,
        (xc_um / 1000, yc_um / 1000),
    ).numpy()[0]
    r_mm = math.sqrt((xc_um / 1000) ** 2 + (yc_um / 1000) ** 2 + 90.0**2)
    assert u == pytest.approx(np.array([xc_um / 1000, yc_um / 1000]) / r_mm / WAVELENGTH_UM, rel=1e-9)


def test_misalignment_rotates_then_shifts_per_spec():
    rows_cols = torch.tensor([[16.0, 19.0], [14.0, 16.0], [20.5, 11.0]], dtype=torch.float64)
    nominal = led_positions_mm(rows_cols, (15.5, 16.0), PITCH_MM).numpy()
    assert nominal == pytest.approx(np.array([[12.0, 2.0], [0.0, -6.0], [-20.0, 20.0]]))
    assert led_positions_mm(rows_cols.numpy(), (15.5, 16.0), PITCH_MM) == pytest.approx(nominal)  # numpy too
    theta_deg, sx, sy = 2.5, 1.2, -0.8
    moved = led_positions_mm(
        rows_cols,
        (15.5, 16.0),
        PITCH_MM,
        shift_x_mm=torch.tensor(sx, dtype=torch.float64),
        shift_y_mm=torch.tensor(sy, dtype=torch.float64),
        rotation_deg=torch.tensor(theta_deg, dtype=torch.float64),
    ).numpy()
    t = math.radians(theta_deg)
    x, y = nominal[:, 0], nominal[:, 1]
    expected = np.stack([x * math.cos(t) - y * math.sin(t) + sx, x * math.sin(t) + y * math.cos(t) + sy], -1)
    assert moved == pytest.approx(expected, abs=1e-12)
    # +90 degrees takes +x to +y (counter-clockwise in image axes as the formula defines it).
    quarter = led_positions_mm(
        torch.tensor([[15.5, 16.0 + 1 / PITCH_MM]], dtype=torch.float64),  # nominal [X, Y] = [1, 0]
        (15.5, 16.0),
        PITCH_MM,
        rotation_deg=torch.tensor(90.0, dtype=torch.float64),
    ).numpy()[0]
    assert quarter == pytest.approx([0.0, 1.0], abs=1e-12)


# -------------------------------------------------------------- image formation vs references


@pytest.mark.parametrize("lines_off_axis", [2, 3], ids=["bright-field", "dark-field"])
@pytest.mark.parametrize("zernike_rad", [{}, {4: 1.0, 6: -0.4, 7: 0.3}], ids=["no-aberration", "aberrated"])
def test_integer_shift_frame_equals_real_space_tilt_reference(lines_off_axis, zernike_rad):
    """o(x) exp(i 2 pi u.x) on the fine grid, FFT, pupil, inverse FFT, keep every camera pixel."""
    offset = (1, 2)  # LED 1 row down, 2 columns right: u = -(2k, k) lines exactly with this height
    model = make_model(make_setup([offset]), zernike_rad)
    u = set_height(model, height_for(offset, lines_off_axis * math.sqrt(5)))[0]
    assert u / DF == pytest.approx([-2 * lines_off_axis, -lines_off_axis], abs=1e-6)

    obj = object_from_lines(object_lines(np.random.default_rng(11), u))
    x_um = np.arange(FINE) * SAMPLE_PIXEL_UM / UPSAMPLE
    exit_wave = obj * np.exp(2j * np.pi * (u[0] * x_um[None, :] + u[1] * x_um[:, None]))
    spectrum = np.fft.fftshift(np.fft.fft2(exit_wave))
    f = (np.arange(FINE) - FINE // 2) * DF
    spectrum *= reference_pupil(f[None, :], f[:, None], zernike_rad)
    reference = np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum))[::UPSAMPLE, ::UPSAMPLE]) ** 2

    assert relative_error(run_model(model, obj)[0], reference) < 1e-4


@pytest.mark.parametrize("target_lines", [(-4.3, -2.15), (-6.4, -3.2), (3.7, 1.85)])
@pytest.mark.parametrize("zernike_rad", [{}, {4: 0.5, 5: 0.3}], ids=["no-aberration", "defocus-astig"])
def test_subpixel_shift_frame_equals_explicit_line_sum(target_lines, zernike_rad):
    offset = (1, 2) if target_lines[0] < 0 else (-1, -2)
    model = make_model(make_setup([offset]), zernike_rad)
    u = set_height(model, height_for(offset, math.hypot(*target_lines)))[0]
    fraction = u / DF - np.round(u / DF)
    assert np.all(np.abs(fraction) > 0.1), "the test must exercise a non-integer shift"

    lines = object_lines(np.random.default_rng(12), u)
    reference = explicit_intensity(lines, u, CAMERA_X_UM, CAMERA_X_UM, zernike_rad)
    assert relative_error(run_model(model, object_from_lines(lines))[0], reference) < 1e-4


def test_subpixel_shift_is_not_rounded():
    """Moving u by 0.3 of a line changes the frame as the continuous model says, not by zero."""
    offset = (1, 2)
    model = make_model(make_setup([offset]), {4: 0.5})
    lines = object_lines(np.random.default_rng(13), np.array([[-4.0 * DF, -2.0 * DF], [-4.3 * DF, -2.15 * DF]]))
    obj = object_from_lines(lines)
    frames = []
    for target in (4.0, 4.3):
        u = set_height(model, height_for(offset, target * math.sqrt(5) / 2))[0]
        frames.append(run_model(model, obj)[0])
        reference = explicit_intensity(lines, u, CAMERA_X_UM, CAMERA_X_UM, {4: 0.5})
        assert relative_error(frames[-1], reference) < 1e-4
    assert relative_error(frames[1], frames[0]) > 1e-2


def test_shifted_pupil_phase_follows_the_aberrations_on_a_full_size_grid():
    """Bilinear evaluation of the pupil phase at f + remainder stays within 3e-3 rad (128 px).

    Coefficients of the `misaligned` preset, frames of the presets' size.
    """
    zernike_rad = {4: 1.5, 5: 0.5, 6: -0.4, 7: 0.3}
    model = make_model(make_setup([(0, 1)], frame=128, upsample=1), zernike_rad)
    step = 1.0 / (128 * SAMPLE_PIXEL_UM)
    remainder = torch.tensor([[0.37 * step, -0.41 * step]], dtype=torch.float64)
    with torch.no_grad():
        pupil = model.shifted_pupils(remainder)[0].numpy()
        fx = (model.grid_fx.double() + remainder[0, 0]).numpy()
        fy = (model.grid_fy.double() + remainder[0, 1]).numpy()
    reference = reference_pupil(fx, fy, zernike_rad)
    inside = np.hypot(fx, fy) < CUTOFF - step
    assert np.abs(pupil[inside]) == pytest.approx(1.0, abs=1e-9)
    difference = np.angle(pupil[inside] * np.conj(reference[inside]))
    # A constant phase offset is invisible in intensities; what varies across the pupil must be tiny.
    assert np.abs(difference - difference.mean()).max() < 3e-3


def test_intensity_is_continuous_across_a_half_line_boundary():
    offset = (1, 2)
    model = make_model(make_setup([offset]), {4: 0.8, 7: 0.3})
    lines = object_lines(np.random.default_rng(14), None, clear_edge=False)
    obj = object_from_lines(lines)
    frames, wholes = {}, {}
    for epsilon in (-1e-7, 1e-7, 0.05):
        u = set_height(model, height_for(offset, (4.5 + epsilon) * math.sqrt(5) / 2))
        with torch.no_grad():
            whole_y, whole_x, _ = model.crop_plan(torch.as_tensor(u))
        wholes[epsilon] = (int(whole_y[0]), int(whole_x[0]))
        frames[epsilon] = run_model(model, obj)[0]
    assert wholes[-1e-7] != wholes[1e-7], "the two heights must straddle the rounding boundary"
    jump = relative_error(frames[1e-7], frames[-1e-7])
    drift = relative_error(frames[0.05], frames[1e-7])
    assert drift > 1e-3  # the frame does depend on u here ...
    assert jump < 1e-6  # ... yet not by a jump where the integer crop changes


@pytest.mark.parametrize(
    "name, step", [("shift_x_mm", 1e-4), ("shift_y_mm", 1e-4), ("rotation_deg", 1e-4), ("height_mm", 1e-3)]
)
def test_gradients_reach_the_led_geometry_and_match_finite_differences(name, step):
    model = make_model(make_setup([(1, 2), (-2, 1), (0, -3), (3, 3)]), {4: 0.8, 7: 0.3})
    rng = np.random.default_rng(15)
    obj = np.exp(0.5j * rng.normal(size=(FINE, FINE))) * (1 + 0.2 * rng.normal(size=(FINE, FINE)))
    spectrum = spectrum_of(torch.as_tensor(obj))
    weights = torch.as_tensor(rng.normal(size=(4, FRAME, FRAME)))
    with torch.no_grad():
        model.system.shift_x_mm.fill_(0.37)
        model.system.shift_y_mm.fill_(-0.21)
        model.system.rotation_deg.fill_(1.3)

    def loss() -> torch.Tensor:
        return (weights * model(spectrum)).sum()

    loss().backward()
    parameter = getattr(model.system, name)
    analytic = float(parameter.grad)
    with torch.no_grad():
        parameter += step
        plus = float(loss())
        parameter -= 2 * step
        minus = float(loss())
        parameter += step
    numeric = (plus - minus) / (2 * step)
    assert analytic != 0.0
    assert abs(numeric) > 1e-6
    assert analytic == pytest.approx(numeric, rel=0.1)


# ------------------------------------------------------------------------------- Zernikes


def test_noll_order_matches_nolls_table():
    for j, (n, m) in NOLL_TABLE.items():
        assert noll_to_nm(j) == (n, m), f"Noll index {j}"
    with pytest.raises(ValueError):
        noll_to_nm(0)


def test_zernikes_equal_the_explicit_formulas():
    rng = np.random.default_rng(16)
    rho = torch.as_tensor(rng.uniform(0, 1, 200))
    phi = torch.as_tensor(rng.uniform(-np.pi, np.pi, 200))
    for j, formula in ZERNIKE_FORMULAS.items():
        assert zernike(j, rho, phi).numpy() == pytest.approx(formula(rho.numpy(), phi.numpy()), abs=1e-12), j


def test_zernikes_are_orthonormal_on_the_unit_disk():
    """(1/pi) integral Z_i Z_j over the disk = delta_ij, by Gauss-Legendre in rho x uniform phi."""
    nodes, weights = np.polynomial.legendre.leggauss(24)
    rho = 0.5 * (nodes + 1)
    rho_weights = 0.5 * weights * rho  # includes the Jacobian rho d rho
    phi = np.arange(64) * 2 * np.pi / 64
    grid_rho, grid_phi = np.meshgrid(rho, phi, indexing="ij")
    area_weights = (rho_weights[:, None] * np.full(64, 2 * np.pi / 64)[None, :]) / np.pi
    basis = zernike_basis(range(1, MAX_NOLL_INDEX + 1), torch.as_tensor(grid_rho), torch.as_tensor(grid_phi))
    flat = basis.numpy().reshape(MAX_NOLL_INDEX, -1)
    gram = (flat * area_weights.ravel()) @ flat.T
    assert gram == pytest.approx(np.eye(MAX_NOLL_INDEX), abs=1e-10)


def test_even_j_is_cos_and_odd_j_is_sin():
    rng = np.random.default_rng(17)
    rho = torch.as_tensor(rng.uniform(0.2, 1, 50))
    phi = torch.as_tensor(rng.uniform(0.1, 1.4, 50))
    for j in range(2, MAX_NOLL_INDEX + 1):
        n, m = noll_to_nm(j)
        if m == 0:
            continue
        plus, minus = zernike(j, rho, phi).numpy(), zernike(j, rho, -phi).numpy()
        if j % 2 == 0:  # cos(|m| phi): even in phi
            assert plus == pytest.approx(minus, abs=1e-12), j
        else:  # sin(|m| phi): odd in phi
            assert plus == pytest.approx(-minus, abs=1e-12), j
        assert np.abs(plus).max() > 1e-3


def test_model_pupil_phase_uses_image_axes():
    """Z5 = sqrt(6) rho^2 sin(2 phi), phi = atan2(f_y, f_x) with f_y along rows, f_x along columns."""
    model = make_model(make_setup([(0, 1)]), {5: 0.7, 8: -0.3})
    with torch.no_grad():
        phase = model.pupil_phase().numpy()
        support = model.support.numpy()
    f = (np.arange(FRAME) - FRAME // 2) * DF
    fy, fx = np.meshgrid(f, f, indexing="ij")
    rho, phi = np.hypot(fx, fy) / CUTOFF, np.arctan2(fy, fx)
    expected = 0.7 * ZERNIKE_FORMULAS[5](rho, phi) - 0.3 * ZERNIKE_FORMULAS[8](rho, phi)
    inside = support > 0
    assert phase[inside] == pytest.approx(expected[inside], abs=1e-6)
    # Z8 ~ cos(phi) varies along columns (f_x) only: it is odd in f_x and even in f_y.
    centre = FRAME // 2
    assert phase[centre, centre + 3] - phase[centre, centre - 3] == pytest.approx(
        -0.6 * ZERNIKE_FORMULAS[8](3 * DF / CUTOFF, 0.0)
    )


def test_defocus_conversion_round_trips_and_matches_paraxial_defocus():
    z4 = 1.5
    dz = defocus_um_from_z4(z4, WAVELENGTH_UM, NA)
    assert z4_from_defocus_um(dz, WAVELENGTH_UM, NA) == pytest.approx(z4)
    # Paraxial defocus phase -pi wavelength dz f^2; its rho^2 coefficient equals Z4's 2 sqrt(3) c4.
    rho2_coefficient = -math.pi * WAVELENGTH_UM * dz * CUTOFF**2
    assert rho2_coefficient == pytest.approx(2 * SQ3 * z4)


# --------------------------------------------------------------- multiplexing, pixels, gains


def test_multiplexed_frame_is_the_incoherent_sum_of_single_led_frames():
    leds = [(1, 2), (-2, 1), (0, -3)]
    single = make_model(make_setup(leds), {4: 0.6})
    together = make_model(make_setup([tuple(leds), (leds[0], leds[2])]), {4: 0.6})
    rng = np.random.default_rng(18)
    obj = np.exp(0.5j * rng.normal(size=(FINE, FINE))) * (1 + 0.2 * rng.normal(size=(FINE, FINE)))
    singles = run_model(single, obj)
    multiplexed = run_model(together, obj)
    assert multiplexed[0] == pytest.approx(singles.sum(axis=0), rel=1e-9, abs=1e-12)
    assert multiplexed[1] == pytest.approx(singles[0] + singles[2], rel=1e-9, abs=1e-12)
    # A coherent sum would differ: the test can tell the two apart.
    with torch.no_grad():
        spectra = single.field_spectra(spectrum_of(torch.as_tensor(obj)), torch.arange(3))
        coherent = single.intensity_of(spectra.sum(dim=0, keepdim=True)).numpy()[0]
    assert relative_error(coherent, singles.sum(axis=0)) > 0.05
    # Frames can be evaluated in any batch: asking for frame 1 alone gives the same frame.
    with torch.no_grad():
        alone = together(spectrum_of(torch.as_tensor(obj)), torch.tensor([1])).numpy()[0]
    assert alone == pytest.approx(multiplexed[1], rel=1e-12)


@pytest.mark.parametrize("q", [1, 2])
def test_a_margin_models_the_larger_field_and_keeps_the_frames_pixels(q):
    """A camera frame is a crop of a larger sample. With a margin the model images the frame plus the
    margin and keeps the frame's pixels: exactly the larger field's frames cropped (same grid, same
    spectrum lines); without one, the periodic grid wraps the frame's opposite edge into its border."""
    leds = [(0, 0), (1, 2), (-2, 1)]
    aberration = {4: 1.5, 6: 0.4}
    frame, margin = 16, 4
    large = make_model(make_setup(leds, frame=frame + 2 * margin, pixel_integration=q), aberration)
    framed = make_model(make_setup(leds, frame=frame, pixel_integration=q, margin=(margin, margin)), aberration)
    periodic = make_model(make_setup(leds, frame=frame, pixel_integration=q), aberration)
    assert framed.setup.object_shape == large.setup.object_shape
    rng = np.random.default_rng(31)
    side = (frame + 2 * margin) * UPSAMPLE
    obj = np.exp(0.8j * rng.normal(size=(side, side))) * (1 + 0.3 * rng.normal(size=(side, side)))
    expected = run_model(large, obj)[:, margin : margin + frame, margin : margin + frame]
    assert relative_error(run_model(framed, obj), expected) < 1e-12
    # The frame's field of view on the object grid, and the same frames modelled without a margin.
    window = framed.setup.object_window()
    assert obj[window].shape == (frame * UPSAMPLE, frame * UPSAMPLE)
    assert relative_error(run_model(periodic, np.ascontiguousarray(obj[window])), expected) > 0.05
    # A result reports the pupil on the frame's own spectrum grid, whatever the margin.
    with torch.no_grad():
        assert torch.allclose(framed.frame_pupil(), periodic.pupil(), atol=1e-9)
        assert framed.pupil().shape == (frame + 2 * margin, frame + 2 * margin)
        # The per-pixel maps are interpolated to the frame's grid: a free-form phase linear in f stays so.
        framed.system.freeform_phase.copy_(40.0 * framed.grid_fx + 25.0 * framed.grid_fy)
        periodic.system.freeform_phase.copy_(40.0 * periodic.grid_fx + 25.0 * periodic.grid_fy)
        assert torch.allclose(framed.frame_pupil(), periodic.pupil(), atol=1e-9)


def test_pixel_integration_changes_the_frames():
    rng = np.random.default_rng(19)
    obj = np.exp(0.5j * rng.normal(size=(FINE, FINE))) * (1 + 0.2 * rng.normal(size=(FINE, FINE)))
    point = run_model(make_model(make_setup([(1, 2)], pixel_integration=1)), obj)
    integrated = run_model(make_model(make_setup([(1, 2)], pixel_integration=2)), obj)
    assert relative_error(integrated, point) > 0.02
    # Integration only redistributes light within the frame: total power is nearly the same.
    assert integrated.sum() == pytest.approx(point.sum(), rel=0.02)


@pytest.mark.parametrize("q", [2, 3])
def test_pixel_integration_is_the_average_over_the_pixel_centred_where_q1_samples(q):
    offset = (1, 2)
    model = make_model(make_setup([offset], pixel_integration=q), {4: 0.5})
    u = set_height(model, height_for(offset, 4.3 * math.sqrt(5) / 2))[0]
    lines = object_lines(np.random.default_rng(20), u)
    sub = (np.arange(q) - (q - 1) / 2) / q * SAMPLE_PIXEL_UM
    reference = np.mean(
        [explicit_intensity(lines, u, CAMERA_X_UM + sx, CAMERA_X_UM + sy, {4: 0.5}) for sy in sub for sx in sub],
        axis=0,
    )
    assert relative_error(run_model(model, object_from_lines(lines))[0], reference) < 1e-4


@pytest.mark.parametrize(("q", "frame"), [(1, 6), (1, 5), (2, 6), (2, 7), (3, 5)])
@pytest.mark.parametrize("chunked", [False, True])
def test_camera_intensity_backward_matches_finite_differences(q, frame, chunked, monkeypatch):
    """The camera intensity's hand-written backward pass (closed-form, no autograd) is the derivative
    of its forward pass, with and without pixel integration, on even and odd frames, in one piece and
    one entry at a time (`CAMERA_CHUNK_BYTES`)."""
    if chunked:
        monkeypatch.setattr(forward_module, "CAMERA_CHUNK_BYTES", 1)
    model = make_model(make_setup([(0, 0)], frame=frame, pixel_integration=q))
    generator = torch.Generator().manual_seed(23)
    spectra = torch.randn(3, frame, frame, dtype=torch.complex128, generator=generator).requires_grad_(True)
    per_chunk = model._entries_per_chunk(spectra)
    assert per_chunk == 1 if chunked else per_chunk >= 3
    assert torch.autograd.gradcheck(model.intensity_of, (spectra,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_camera_intensity_in_chunks_is_the_zero_padded_transform_in_one_piece(q, monkeypatch):
    """The sub-sample grids (`_camera_fields`) give the intensity of the spectrum zero-padded to q times
    the frame, centred on the pixel (the straightforward way, written here), whatever the chunking."""
    frame = 7
    model = make_model(make_setup([(0, 0)], frame=frame, pixel_integration=q))
    generator = torch.Generator().manual_seed(29)
    spectra = torch.randn(4, frame, frame, dtype=torch.complex128, generator=generator)
    whole = model.intensity_of(spectra)
    monkeypatch.setattr(forward_module, "CAMERA_CHUNK_BYTES", 1)
    assert torch.equal(model.intensity_of(spectra), whole)
    # Reference: place the centred spectrum in a q-times larger centred spectrum, shift the fine grid
    # by -(q - 1) / (2q) pixel so the sub-samples centre on the pixel, inverse FFT, average q x q blocks.
    size, pad = q * frame, (q - 1) * frame // 2
    padded = torch.zeros(4, size, size, dtype=torch.complex128)
    padded[:, pad : pad + frame, pad : pad + frame] = spectra
    step = model.setup.frequency_step[0]
    frequencies = (torch.arange(size, dtype=torch.float64) - size // 2) * step
    shift_um = -(q - 1) / (2 * q) * model.setup.sample_pixel_um
    ramp = torch.exp(2j * torch.pi * shift_um * (frequencies[:, None] + frequencies[None, :]))
    fields = torch.fft.ifft2(torch.fft.ifftshift(padded * ramp, dim=(-2, -1)))
    fine = fields.abs().square() * (size * size / (model.setup.object_shape[0] * model.setup.object_shape[1])) ** 2
    reference = fine.reshape(4, frame, q, frame, q).mean(dim=(2, 4))
    assert relative_error(whole.numpy(), reference.numpy()) < 1e-12


def test_kept_illumination_frequencies_follow_every_change_of_the_geometry():
    """The model keeps its LED frequencies while the geometry is unchanged and no gradient is wanted;
    any change (in place, by replacing a parameter's data, a per-LED offset) gives fresh ones."""
    model = make_model(make_setup([(1, 2), (0, -3)], glass_thickness_mm=1.0, glass_index=1.52))

    def fresh() -> torch.Tensor:
        model.__dict__.pop("_frequency_cache", None)
        with torch.no_grad():
            return model.illumination_frequencies()

    system = model.system
    with torch.no_grad():
        first = model.illumination_frequencies()
        assert model.illumination_frequencies() is first  # kept
        system.height_mm.fill_(80.0)
        assert torch.equal(model.illumination_frequencies(), fresh()) and not torch.equal(fresh(), first)
        original = system.rotation_deg.data
        system.rotation_deg.data = original + 2.0
        assert torch.equal(model.illumination_frequencies(), fresh())
        system.rotation_deg.data = original
        system.led_offsets_mm[1, 0] += 0.3
        assert torch.equal(model.illumination_frequencies(), fresh())
    # With gradients wanted, the frequencies carry them.
    assert model.illumination_frequencies().requires_grad


def test_kept_pupils_are_the_computed_ones_and_follow_every_change_of_the_system():
    """While the system takes no gradient the model keeps each entry's crop and shifted pupil (computed
    once per entry, not per batch): the same numbers as computing them, after any change of what they
    depend on (geometry, Zernikes, the pupil maps), and never kept when the system takes a gradient."""
    from uafp_gui.physics import forward

    model = make_model(make_setup([(1, 2), (0, -3), (2, 0)]))
    spectrum = spectrum_of(torch.as_tensor(np.exp(0.3j * np.random.default_rng(4).normal(size=(FINE, FINE)))))
    system = model.system

    def computed(entries: torch.Tensor) -> torch.Tensor:
        kept, forward.KEPT_PUPILS_BYTES = forward.KEPT_PUPILS_BYTES, 0
        try:
            return model.field_spectra(spectrum, entries)
        finally:
            forward.KEPT_PUPILS_BYTES = kept

    def check(*batches) -> None:
        for entries in batches:
            assert torch.equal(model.field_spectra(spectrum, torch.tensor(entries)), computed(torch.tensor(entries)))

    with torch.no_grad():
        check([0, 2], [1], [2, 1, 0])
        assert model.__dict__["_pupil_cache"][1].all()  # every entry kept once seen
        system.zernike_rad[4] += 0.5
        check([2], [0, 1])
        system.rotation_deg.data = system.rotation_deg.data + 3.0
        check([1, 2])
        system.log_pupil_amplitude[3, 4] = 0.2
        system.freeform_phase[5, 5] = -0.4
        check([0], [0, 1, 2])
    system.requires_grad_(True)  # a gradient wanted: computed, with its graph
    assert model.field_spectra(spectrum, torch.tensor([0, 1])).requires_grad


def test_gain_and_background_enter_linearly():
    rng = np.random.default_rng(21)
    obj = np.exp(0.5j * rng.normal(size=(FINE, FINE)))
    model = make_model(make_setup([(1, 2), (0, 1)]))
    base = run_model(model, obj)
    with torch.no_grad():
        model.system.frame_gain.copy_(torch.tensor([2.5, 0.4], dtype=torch.float64))
        model.system.background.fill_(0.03)
    changed = run_model(model, obj)
    assert changed[0] == pytest.approx(2.5 * base[0] + 0.03, rel=1e-12)
    assert changed[1] == pytest.approx(0.4 * base[1] + 0.03, rel=1e-12)


def test_unit_object_gives_unit_bright_field_intensity():
    """The field scale: a clear sample under an on-axis LED images to intensity 1 everywhere."""
    model = make_model(make_setup([(0, 0)]), {4: 0.7})
    frame = run_model(model, np.ones((FINE, FINE), dtype=complex))[0]
    assert frame == pytest.approx(np.ones((FRAME, FRAME)), rel=1e-9)


@pytest.mark.parametrize("lines_from_edge", [-0.3, -0.05, 0.05, 0.3])
def test_the_unscattered_wave_sees_a_sharp_pupil_edge(lines_from_edge):
    """A clear sample under an LED near the NA: a real (hard) pupil passes the plane wave or blocks it.
    The one-pixel anti-aliasing ramp passed part of it; `dc_edge_px` sharpens the edge it sees."""
    offset = (1, 2)
    expected = 1.0 if lines_from_edge < 0 else 0.0  # inside the NA: the whole wave; outside: none
    clear = np.ones((FINE, FINE), dtype=complex)
    frames = {}
    for width in (1.0, 0.02):  # the anti-aliasing ramp, and a nearly hard edge
        model = make_model(make_setup([offset]), {4: 0.7})
        model.dc_edge_px = width
        set_height(model, height_for(offset, CUTOFF / DF + lines_from_edge))
        frames[width] = run_model(model, clear)[0]
    assert frames[0.02] == pytest.approx(np.full((FRAME, FRAME), expected), abs=1e-9)
    ramp = 0.5 - lines_from_edge  # the ramp's pass fraction, squared into intensity
    assert frames[1.0].mean() == pytest.approx(ramp**2, rel=1e-4)


def test_frames_at_reduced_led_drive_compare_after_normalisation():
    meta = DatasetMeta.from_dict(
        {
            "format": "uafp-dataset", "version": 1, "wavelength_um": WAVELENGTH_UM, "objective_na": NA,
            "magnification": 2.0, "camera_pixel_um": 2 * SAMPLE_PIXEL_UM, "led_pitch_mm": PITCH_MM,
            "led_height_mm": 90.0, "led_array_shape": [32, 32], "led_on_axis": list(ON_AXIS),
            "frames": [
                {"leds": [[16, 17]], "exposure_ms": 10.0},
                {"leds": [[16, 17]], "exposure_ms": 10.0, "intensity": 0.5},
            ],
        }
    )  # fmt: skip
    setup = OpticalSetup.from_meta(meta, (FRAME, FRAME), UPSAMPLE)
    model = make_model(setup)
    rng = np.random.default_rng(22)
    obj = np.exp(0.5j * rng.normal(size=(FINE, FINE)))
    truth = run_model(make_model(make_setup([(0, 1)])), obj)[0]
    # Physically, half the drive gives half the counts at the same exposure.
    raw = np.stack([10.0 * truth, 10.0 * 0.5 * truth]).astype(np.float32)
    measured = Dataset(meta=meta, frames=raw).normalised_frames(np.float64)
    assert measured[1] == pytest.approx(measured[0], rel=1e-6)
    predicted = run_model(model, obj)
    assert predicted == pytest.approx(measured, rel=1e-5)


# ----------------------------------------------------------------------------------- glass


def snell_sine(rho_mm: float, height_mm: float, thickness_mm: float, index: float) -> float:
    """sin(angle in air) of the ray that reaches lateral offset rho through a slab, by brentq."""

    def miss(sine_air: float) -> float:
        sine_glass = sine_air / index
        tan_air = sine_air / math.sqrt(1 - sine_air**2)
        tan_glass = sine_glass / math.sqrt(1 - sine_glass**2)
        return (height_mm - thickness_mm) * tan_air + thickness_mm * tan_glass - rho_mm

    return brentq(miss, 0.0, 1 - 1e-12, xtol=1e-15, rtol=1e-14)


@pytest.mark.parametrize("thickness_mm, index", [(1.0, 1.52), (5.0, 1.8)])
def test_glass_refraction_obeys_snells_law(thickness_mm, index):
    rows_cols = torch.tensor([[16.0, 17.0], [9.0, 24.0], [2.0, 2.0], [16.0, 16.0]], dtype=torch.float64)
    positions = led_positions_mm(rows_cols, (15.5, 16.0), PITCH_MM)
    height = torch.tensor(60.0, dtype=torch.float64)
    with_glass = illumination_sines(positions, height, (0.0, 0.0), thickness_mm, index).numpy()
    without = illumination_sines(positions, height).numpy()
    for k, (x_mm, y_mm) in enumerate(positions.numpy()):
        rho = math.hypot(x_mm, y_mm)
        expected = snell_sine(rho, 60.0, thickness_mm, index)
        assert np.hypot(*with_glass[k]) == pytest.approx(expected, rel=1e-9)
        # Direction stays from the LED towards the sample (same azimuth as without glass).
        assert with_glass[k] == pytest.approx(without[k] * expected / np.hypot(*without[k]), rel=1e-9)
        # Inside the glass the ray is steeper than the straight line LED -> sample ...
        assert expected / index < np.hypot(*without[k])
        # ... so to cover the same lateral offset it leaves the glass at a larger angle in air.
        assert expected > np.hypot(*without[k])


def test_glass_in_the_model_changes_the_illumination_frequencies():
    plain = make_model(make_setup([(0, 3), (2, -1)]))
    slide = make_model(make_setup([(0, 3), (2, -1)], glass_thickness_mm=1.0, glass_index=1.52))
    with torch.no_grad():
        u_plain = plain.illumination_frequencies()[plain.entry_led].numpy()
        u_slide = slide.illumination_frequencies()[slide.entry_led].numpy()
    for k, (dr, dc) in enumerate([(0, 3), (2, -1)]):
        expected = snell_sine(PITCH_MM * math.hypot(dr, dc), 90.0, 1.0, 1.52) / WAVELENGTH_UM
        assert np.hypot(*u_slide[k]) == pytest.approx(expected, rel=1e-6)
        assert np.hypot(*u_slide[k]) != pytest.approx(np.hypot(*u_plain[k]), rel=1e-4)


def test_gradient_reaches_height_through_the_glass_solver():
    positions = torch.tensor([[8.0, -4.0]], dtype=torch.float64)
    height = torch.tensor(60.0, dtype=torch.float64, requires_grad=True)
    sine = illumination_sines(positions, height, (0.0, 0.0), 1.0, 1.52).norm()
    sine.backward()
    step = 1e-4
    rho = math.hypot(8, 4)
    numeric = (snell_sine(rho, 60 + step, 1.0, 1.52) - snell_sine(rho, 60 - step, 1.0, 1.52)) / (2 * step)
    assert float(height.grad) == pytest.approx(numeric, rel=1e-4)


# ---------------------------------------------------------------------------------- devices


def test_runs_on_cpu_in_float32_close_to_float64():
    rng = np.random.default_rng(23)
    obj = np.exp(0.5j * rng.normal(size=(FINE, FINE)))
    setup = make_setup([(1, 2), (0, -3)])
    single = ForwardModel(setup, device="cpu")
    single.system.set_zernike({4: 0.5})
    assert single.device.type == "cpu"
    with torch.no_grad():
        frames32 = single(spectrum_of(torch.as_tensor(obj, dtype=torch.complex64))).numpy()
    frames64 = run_model(make_model(setup, {4: 0.5}), obj)
    assert frames32.dtype == np.float32
    assert relative_error(frames32, frames64) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_and_cuda_agree():
    rng = np.random.default_rng(24)
    obj = np.exp(0.5j * rng.normal(size=(FINE, FINE))) * (1 + 0.2 * rng.normal(size=(FINE, FINE)))
    setup = make_setup([(1, 2), (0, -3), ((2, 2), (-1, 0))], pixel_integration=2)
    results = {}
    for device in ("cpu", "cuda"):
        model = ForwardModel(setup, device=device)
        model.system.set_zernike({4: 0.5, 7: 0.2})
        with torch.no_grad():
            model.system.shift_x_mm.fill_(0.3)
        spectrum = spectrum_of(torch.as_tensor(obj, dtype=torch.complex64, device=device))
        frames = model(spectrum)
        (frames**2).sum().backward()
        results[device] = (frames.detach().cpu().numpy(), float(model.system.shift_x_mm.grad))
    assert relative_error(results["cuda"][0], results["cpu"][0]) < 1e-4
    assert results["cuda"][1] == pytest.approx(results["cpu"][1], rel=1e-3)
