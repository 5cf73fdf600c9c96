"""Public FP layouts: Caltech FPM-INR / APIC MATLAB files (v5 and v7.3) and PtyLab FPM HDF5.

Each test writes a small file in the published layout from a simulated acquisition whose LED array
is misaligned, imports it, and checks that the frames are the same pixels and that the forward
model built from the imported dataset illuminates every frame exactly as the file's calibrated NAs
say (so reconstruction uses them as its nominal illumination).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from uafp_gui.cli import main
from uafp_gui.errors import DatasetError
from uafp_gui.io.dataset import read_dataset
from uafp_gui.physics.forward import ForwardModel, OpticalSetup
from uafp_gui.simulate import PRESETS, simulate, true_microscope_model

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.usefixtures("single_thread")

SETTINGS = replace(
    PRESETS["ideal"],
    led_grid=5,
    frame_size=32,
    upsample=2,
    shift_x_mm=1.1,
    shift_y_mm=-0.7,
    rotation_deg=3.0,
    height_error_mm=5.0,
    photons_per_pixel=5000.0,
)


@pytest.fixture(scope="module")
def acquisition():
    """Frames (N, H, W), true per-frame illumination NA [na_x, na_y] (LED direction), true LED
    positions [X, Y] mm and the true height."""
    sim = simulate(SETTINGS)
    frames = sim.frames.astype(np.float32) - SETTINGS.camera_offset  # published stacks are dark-subtracted
    model, _, _ = true_microscope_model(SETTINGS, sim.meta)
    with torch.no_grad():
        u = model.illumination_frequencies()[model.entry_led].numpy().astype(np.float64)
        positions = model.frame_led_positions_mm().numpy().astype(np.float64)
    na = -u * SETTINGS.wavelength_um  # the published convention: the NA vector points at the LED
    return frames, na, positions, SETTINGS.true_geometry.height_mm


def frame_frequencies(dataset) -> np.ndarray:
    setup = OpticalSetup.from_meta(dataset.meta, dataset.frames.shape[1:], upsample=2)
    model = ForwardModel(setup)
    with torch.no_grad():
        return model.illumination_frequencies()[model.entry_led].numpy().astype(np.float64)


def write_fpm_inr_v73(path, frames, na, *, wavelength_um=None, name="I_low"):
    """MATLAB v7.3 = HDF5 with column-major arrays: h5py sees every array with its axes reversed.
    `na` is the LED direction; FPM-INR's na_calib is the illumination's direction of travel (-na)."""
    matlab_stack = np.moveaxis(frames, 0, 2).astype(np.float64)  # MATLAB I_low(:, :, k)
    with h5py.File(path, "w", userblock_size=512) as h5:
        h5.create_dataset(name, data=matlab_stack.T)
        h5.create_dataset("na_calib", data=-na.T)
        h5.create_dataset("na_cal", data=np.array([[SETTINGS.objective_na]]))
        h5.create_dataset("mag", data=np.array([[SETTINGS.magnification]]))
        h5.create_dataset("dpix_c", data=np.array([[SETTINGS.camera_pixel_um]]))
        if wavelength_um is not None:
            h5.create_dataset("lambda", data=np.array([[wavelength_um]]))
    with open(path, "r+b") as fh:  # the MATLAB header in the user block
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by uafp_gui tests".ljust(116))


@pytest.mark.parametrize("version", ["v7.3", "v5"])
def test_fpm_inr_mat_import_keeps_frames_and_calibrated_illumination(acquisition, tmp_path, capsys, version):
    frames, na, _, true_height = acquisition
    mat = tmp_path / f"BloodSmearTilt_g_{version}.mat"
    if version == "v7.3":
        write_fpm_inr_v73(mat, frames, na)  # FPM-INR files carry no wavelength
        extra = ["--wavelength-um", str(SETTINGS.wavelength_um)]
    else:
        import scipy.io

        scipy.io.savemat(
            mat,
            {
                "imlow": np.moveaxis(frames, 0, 2),
                "na_calib": -na,
                "na_cal": SETTINGS.objective_na,
                "mag": SETTINGS.magnification,
                "dpix_c": SETTINGS.camera_pixel_um,
                "lambda": SETTINGS.wavelength_um,
            },
        )
        extra = []
    out = tmp_path / "imported.tif"
    assert main(["import", "fpm-mat", str(mat), str(out), *extra]) == 0
    assert "25 frames 32x32" in capsys.readouterr().out
    dataset = read_dataset(out)
    np.testing.assert_array_equal(dataset.frames, frames.astype(dataset.frames.dtype))
    meta = dataset.meta
    assert meta.objective_na == SETTINGS.objective_na and meta.magnification == SETTINGS.magnification
    assert meta.wavelength_um == pytest.approx(SETTINGS.wavelength_um)
    np.testing.assert_allclose([f.extra["illumination_na"] for f in meta.frames], na, atol=1e-12)
    # the grid fitted to the NAs: 4 mm pitch, and the height that puts them on it
    assert meta.led_pitch_mm == 4.0
    assert meta.led_height_mm == pytest.approx(true_height, rel=0.02)
    # the forward model lights every frame exactly as calibrated: u = -na / wavelength
    np.testing.assert_allclose(frame_frequencies(dataset), -na / SETTINGS.wavelength_um, atol=1e-6)


def test_calibrated_illumination_beats_the_rigid_grid_in_reconstruction(acquisition, tmp_path):
    """Classic FP on the imported file (calibrated NAs) recovers the object better than on the same
    frames described by the nominal rigid grid, which misses the array's misalignment (seeded; on this
    set-up 0.66 vs 0.42 SSIM, 0.109 vs 0.112 rad phase RMSE against the truth; 0.08 vs 0.11 while the
    simulator passed an LED just outside the NA part of its unscattered wave, as classic's pixel-fraction
    pupil support does)."""
    from uafp_gui.io.dataset import Dataset
    from uafp_gui.metrics import score
    from uafp_gui.recon.classic import ClassicSettings, ClassicSolver
    from uafp_gui.simulate import nominal_meta

    frames, na, _, _ = acquisition
    mat = tmp_path / "calibrated.mat"
    write_fpm_inr_v73(mat, frames, na, wavelength_um=SETTINGS.wavelength_um)
    assert main(["import", "fpm-mat", str(mat), str(tmp_path / "c.tif")]) == 0
    calibrated = read_dataset(tmp_path / "c.tif")
    sim = simulate(SETTINGS)
    rigid_meta = nominal_meta(SETTINGS, [f.leds[0] for f in sim.meta.frames])
    rigid = Dataset(meta=replace(rigid_meta, camera_offset=0.0), frames=frames)
    settings = ClassicSettings(upsample=2, iterations=8, device="cpu")
    scores = {
        name: score(sim.object_truth, ClassicSolver(dataset, settings).run().object_field)
        for name, dataset in (("calibrated", calibrated), ("rigid", rigid))
    }
    assert scores["calibrated"].amplitude_ssim > scores["rigid"].amplitude_ssim + 0.15, scores
    assert scores["calibrated"].phase_rmse_rad < scores["rigid"].phase_rmse_rad, scores


def test_ptylab_fpm_hdf5_import(acquisition, tmp_path):
    frames, na, positions, true_height = acquisition
    path = tmp_path / "ptylab_fpm.hdf5"
    with h5py.File(path, "w") as h5:
        h5["ptychogram"] = frames.astype(np.float32)
        h5["encoder"] = positions[:, ::-1] * 1e-3  # [y, x] in metres, PtyLab's row-column order
        h5["dxd"] = SETTINGS.camera_pixel_um * 1e-6
        h5["magnification"] = SETTINGS.magnification
        h5["wavelength"] = SETTINGS.wavelength_um * 1e-6
        h5["zled"] = true_height * 1e-3
        h5["NA"] = SETTINGS.objective_na
    out = tmp_path / "ptylab.tif"
    assert main(["import", "ptylab", str(path), str(out)]) == 0
    dataset = read_dataset(out)
    np.testing.assert_array_equal(dataset.frames, frames.astype(np.float32))
    meta = dataset.meta
    assert meta.camera_pixel_um == pytest.approx(SETTINGS.camera_pixel_um)
    assert meta.led_height_mm == pytest.approx(true_height)
    assert meta.led_pitch_mm == pytest.approx(4.0, rel=0.05)  # the median spacing of a rotated 4 mm grid
    np.testing.assert_allclose(frame_frequencies(dataset), -na / SETTINGS.wavelength_um, atol=1e-6)


def test_ptylab_orientation_is_applied_to_the_frames(acquisition, tmp_path):
    frames, _, positions, true_height = acquisition
    path = tmp_path / "oriented.h5"
    with h5py.File(path, "w") as h5:
        h5["ptychogram"] = frames
        h5["encoder"] = (positions[:, ::-1] * 1e-3).T  # (2, N) is accepted, as PtyLab does
        h5["dxd"], h5["magnification"], h5["wavelength"] = 3.69e-6, 2.0, 0.532e-6
        h5["zled"], h5["NA"], h5["orientation"] = true_height * 1e-3, 0.1, 5
    assert main(["import", "ptylab", str(path), str(tmp_path / "o.tif")]) == 0
    expected = np.swapaxes(frames, 1, 2)[:, :, ::-1]  # 5: transpose, then flip columns
    np.testing.assert_array_equal(read_dataset(tmp_path / "o.tif").frames, expected)


def test_public_importers_name_what_is_missing(tmp_path, capsys):
    mat = tmp_path / "partial.mat"
    with h5py.File(mat, "w") as h5:
        h5["I_low"] = np.zeros((3, 8, 8))
        h5["mag"] = 2.0
    assert main(["import", "fpm-mat", str(mat), str(tmp_path / "x.tif")]) == 2
    assert "lacks na_calib, na_cal, dpix_c" in capsys.readouterr().err
    h5path = tmp_path / "partial.h5"
    with h5py.File(h5path, "w") as h5:
        h5["ptychogram"] = np.zeros((3, 8, 8))
    assert main(["import", "ptylab", str(h5path), str(tmp_path / "y.tif")]) == 2
    assert "lacks encoder, dxd, magnification, wavelength, zled" in capsys.readouterr().err


def test_frames_on_one_grid_point_are_refused(tmp_path):
    from uafp_gui.io.import_public import illumination_grid

    with pytest.raises(DatasetError, match="fall on the same LED"):
        illumination_grid(np.array([[0.0, 0.0], [0.5, 0.0], [4.0, 0.0]]), 4.0)


def test_fpm_inr_sign_convention_reproduces_their_forward_model(tmp_path):
    """FPM-INR's own model, written here in numpy from its published loader: frame k is
    |ifft2(ifftshift(crop of fftshift(fft2(object)) centred at k0 * (-na_calib[k]), times the
    pupil))|^2. The dataset imported from a file in that layout must give the same frames through
    our forward model -- and would not with the opposite sign (the test object is complex, so its
    spectrum is not symmetric)."""
    import scipy.io

    from uafp_gui.sample import load_sample

    wavelength, na_obj, mag, dpix = 0.5126, 0.1, 4.0, 6.5
    size, upsample = 32, 2
    pixel = dpix / mag
    step = 1.0 / (size * pixel)  # cycles/um between spectrum samples of a frame
    offsets = [(i, j) for j in (-1, 0, 1) for i in (-1, 0, 1)]
    na_calib = np.array([[4 * i * step * wavelength, 4 * j * step * wavelength] for i, j in offsets])
    obj = load_sample((size * upsample, size * upsample)).astype(np.complex64)

    def fpm_inr_frames(sign: float) -> np.ndarray:
        spectrum = np.fft.fftshift(np.fft.fft2(obj))
        big = size * upsample
        f_big = np.arange(-big // 2, big // 2) / (size * pixel)  # cycles/um
        f_small = np.arange(-size // 2, size // 2) / (size * pixel)
        pupil = (f_small[None, :] ** 2 + f_small[:, None] ** 2) <= (na_obj / wavelength) ** 2
        out = []
        for na_x, na_y in na_calib:
            cx = int(np.argmin(np.abs(f_big - sign * -na_x / wavelength)))
            cy = int(np.argmin(np.abs(f_big - sign * -na_y / wavelength)))
            crop = spectrum[cy - size // 2 : cy + size // 2, cx - size // 2 : cx + size // 2] * pupil
            out.append(np.abs(np.fft.ifft2(np.fft.ifftshift(crop))) ** 2)
        return np.stack(out)

    reference = fpm_inr_frames(+1.0)
    mat = tmp_path / "convention.mat"
    scipy.io.savemat(
        mat,
        {"I_low": np.moveaxis(reference, 0, 2), "na_calib": na_calib, "na_cal": na_obj, "mag": mag, "dpix_c": dpix},
    )
    assert main(["import", "fpm-mat", str(mat), str(tmp_path / "c.tif"), "--wavelength-um", str(wavelength)]) == 0
    dataset = read_dataset(tmp_path / "c.tif")
    model = ForwardModel(OpticalSetup.from_meta(dataset.meta, (size, size), upsample=upsample))
    from uafp_gui.physics.forward import spectrum_of

    with torch.no_grad():
        ours = model(spectrum_of(torch.as_tensor(obj)), torch.arange(len(offsets))).numpy()

    def correlation(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    mirrored = fpm_inr_frames(-1.0)
    for k, (i, j) in enumerate(offsets):
        assert correlation(ours[k], reference[k]) > 0.98, (k, correlation(ours[k], reference[k]))
        if (i, j) != (0, 0):  # the other sign would image another part of the spectrum
            assert correlation(ours[k], mirrored[k]) < correlation(ours[k], reference[k]) - 0.05
