"""`uafp score RESULT_DIR TRUTH_DIR`: quality of a reconstruction against a simulated truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a result folder against a ground-truth folder",
        description="Amplitude PSNR/SSIM and phase RMSE of RESULT_DIR against TRUTH_DIR (as written by "
        "`uafp simulate`). The headline figures use the truth low-passed to the synthetic aperture "
        "(objective NA + largest illumination NA): nothing beyond it is measured. Full-band figures "
        "are printed beside them.",
    )
    parser.add_argument("result", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.set_defaults(func=run)


MIN_SCORED_SIDE_PX = 16


def score_folders(result_dir: Path, truth_dir: Path) -> dict:
    import numpy as np

    from uafp_gui.errors import DatasetError
    from uafp_gui.io.result import read_result
    from uafp_gui.metrics import lowpass, score

    # Both folders must be complete and unmixed (their manifest matches every file).
    result = read_result(result_dir, require_manifest=True)
    truth = read_result(truth_dir, require_manifest=True)
    extra = truth.calibration.extra
    simulation = extra.get("simulation")
    aperture = extra.get("synthetic_aperture_na")
    if (
        not isinstance(simulation, dict)
        or isinstance(aperture, bool)
        or not isinstance(aperture, (int, float))
        or not 0 < aperture < 2
        or isinstance(simulation.get("wavelength_um"), bool)
        or not isinstance(simulation.get("wavelength_um"), (int, float))
        or not 0 < simulation["wavelength_um"] < 100
    ):
        raise DatasetError(
            f"{truth_dir}: not a ground-truth folder (calibration.json needs synthetic_aperture_na and "
            "simulation.wavelength_um); give the *_truth folder written by `uafp simulate`"
        )
    for folder, content in ((result_dir, result), (truth_dir, truth)):
        if min(content.amplitude.shape) < MIN_SCORED_SIDE_PX:
            raise DatasetError(
                f"{folder}: amplitude.tif is {content.amplitude.shape[0]}x{content.amplitude.shape[1]} pixels, "
                f"too small to score (at least {MIN_SCORED_SIDE_PX}x{MIN_SCORED_SIDE_PX})"
            )
        bad = int(np.size(content.object_field) - np.isfinite(content.object_field).sum())
        if bad:
            raise DatasetError(
                f"{folder}: amplitude.tif/phase.tif hold {bad} NaN/inf pixel(s): the reconstruction "
                "diverged or the files are corrupt; nothing to score"
            )
    wavelength_um = float(extra["simulation"]["wavelength_um"])
    truth_field = truth.object_field.astype(complex)
    band = lowpass(truth_field, truth.object_pixel_um, float(extra["synthetic_aperture_na"]) / wavelength_um)
    estimate = result.object_field.astype(complex)
    limited = score(band, estimate)
    full = score(truth_field, estimate)
    geometry_truth = truth.calibration.led_geometry
    geometry = result.calibration.led_geometry
    z_true = truth.calibration.zernike_rad
    z_est = result.calibration.zernike_rad
    zernike_error = float(
        np.sqrt(np.mean([(z_est.get(j, 0.0) - z_true.get(j, 0.0)) ** 2 for j in range(4, 12)]))
    )
    return {
        "amplitude_psnr_db": limited.amplitude_psnr_db,
        "amplitude_ssim": limited.amplitude_ssim,
        "phase_rmse_rad": limited.phase_rmse_rad,
        "full_band_amplitude_psnr_db": full.amplitude_psnr_db,
        "full_band_amplitude_ssim": full.amplitude_ssim,
        "full_band_phase_rmse_rad": full.phase_rmse_rad,
        "shift_x_error_mm": geometry.shift_x_mm - geometry_truth.shift_x_mm,
        "shift_y_error_mm": geometry.shift_y_mm - geometry_truth.shift_y_mm,
        "rotation_error_deg": geometry.rotation_deg - geometry_truth.rotation_deg,
        "height_error_mm": geometry.height_mm - geometry_truth.height_mm,
        "zernike_4_11_rms_error_rad": zernike_error,
    }


def run(args: argparse.Namespace) -> int:
    scores = score_folders(args.result, args.truth)
    if args.json:
        print(json.dumps(scores, indent=2))
        return 0
    print(
        f"synthetic-aperture band: amplitude PSNR {scores['amplitude_psnr_db']:.2f} dB, "
        f"SSIM {scores['amplitude_ssim']:.3f}, phase RMSE {scores['phase_rmse_rad']:.3f} rad"
    )
    print(
        f"full band:               amplitude PSNR {scores['full_band_amplitude_psnr_db']:.2f} dB, "
        f"SSIM {scores['full_band_amplitude_ssim']:.3f}, phase RMSE {scores['full_band_phase_rmse_rad']:.3f} rad"
    )
    print(
        f"calibration error:       shift ({scores['shift_x_error_mm']:+.3f}, {scores['shift_y_error_mm']:+.3f}) mm, "
        f"rotation {scores['rotation_error_deg']:+.3f} deg, height {scores['height_error_mm']:+.2f} mm, "
        f"Zernike 4..11 RMS {scores['zernike_4_11_rms_error_rad']:.3f} rad"
    )
    return 0
