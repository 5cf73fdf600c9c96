"""The UA-FP acceptance runs: calibration accuracy and image quality against classic FP.

For each case a dataset is simulated, then reconstructed three ways from the nominal
geometry: classic FP, UA-FP, and UA-FP with the true system given and frozen (the best this
engine can do with a perfect calibration). Prints amplitude PSNR (truth low-passed to the
synthetic aperture), the calibration errors and the run times. Cases:
  misaligned (seeds 0 and 1), lowlight, misaligned with every other LED removed.

    python benchmarks/bench_calibration.py [--cases misaligned,lowlight,sparse] [--device auto]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from uafp_gui.io.calibration import Calibration
from uafp_gui.io.dataset import Dataset
from uafp_gui.metrics import lowpass, score
from uafp_gui.recon.classic import ClassicSettings, ClassicSolver
from uafp_gui.recon.common import resolve_device
from uafp_gui.recon.uafp import UafpSettings, reconstruct_dataset
from uafp_gui.simulate import PRESETS, simulate


def every_other_led(simulation):
    """Keep frames whose LED has an even (row + col): about half the spectral overlap."""
    keep = [k for k, f in enumerate(simulation.meta.frames) if sum(f.leds[0]) % 2 == 0]
    meta = simulation.meta.with_frames([simulation.meta.frames[k] for k in keep])
    return Dataset(meta=meta, frames=simulation.frames[keep]), keep


def run_case(name: str, preset: str, seed: int, sparse: bool, device: str) -> dict:
    simulation = simulate(replace(PRESETS[preset], seed=seed), device=device)
    if sparse:
        dataset, keep = every_other_led(simulation)
    else:
        dataset, keep = Dataset(meta=simulation.meta, frames=simulation.frames), list(range(len(simulation.frames)))
    s = simulation.settings
    pixel_um = s.camera_pixel_um / s.magnification / s.upsample
    truth = lowpass(
        simulation.object_truth, pixel_um, simulation.calibration_truth["synthetic_aperture_na"] / s.wavelength_um
    )
    row = {"case": name, "frames": len(keep)}

    started = time.perf_counter()
    classic = ClassicSolver(dataset, ClassicSettings(device=device)).run()
    row["classic_s"] = time.perf_counter() - started
    row["classic_db"] = score(truth, classic.object_field.astype(complex)).amplitude_psnr_db

    started = time.perf_counter()
    result = reconstruct_dataset(dataset, UafpSettings(device=device))
    row["uafp_s"] = time.perf_counter() - started
    row["uafp_db"] = score(truth, result.object_field.astype(complex)).amplitude_psnr_db
    true_geometry = s.true_geometry
    row["shift_err_mm"] = (
        result.geometry.shift_x_mm - true_geometry.shift_x_mm,
        result.geometry.shift_y_mm - true_geometry.shift_y_mm,
    )
    row["rotation_err_deg"] = result.geometry.rotation_deg - true_geometry.rotation_deg
    row["height_err_mm"] = result.geometry.height_mm - true_geometry.height_mm
    row["zernike_rms_err_rad"] = float(
        np.sqrt(np.mean([(result.zernike_rad.get(j, 0.0) - s.zernike_rad.get(j, 0.0)) ** 2 for j in range(4, 12)]))
    )

    truth_calibration = Calibration.from_dict(
        dict(
            simulation.calibration_truth,
            frame_gain=[simulation.calibration_truth["frame_gain"][k] for k in keep],
            led_positions_mm=[simulation.calibration_truth["led_positions_mm"][k] for k in keep],
        )
    )
    frozen = reconstruct_dataset(dataset, UafpSettings(device=device, freeze_system=True), truth_calibration)
    row["frozen_db"] = score(truth, frozen.object_field.astype(complex)).amplitude_psnr_db
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="misaligned,misaligned-seed1,lowlight,sparse")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    args.device = str(resolve_device(args.device))
    cases = {
        "misaligned": ("misaligned", 0, False),
        "misaligned-seed1": ("misaligned", 1, False),
        "lowlight": ("lowlight", 0, False),
        "sparse": ("misaligned", 0, True),
    }
    rows = []
    for name in args.cases.split(","):
        row = run_case(name, *cases[name], device=args.device)
        rows.append(row)
        gain_classic = row["uafp_db"] - row["classic_db"]
        gap_frozen = row["uafp_db"] - row["frozen_db"]
        print(
            f"{row['case']:17s} {row['frames']:3d} frames | classic {row['classic_db']:5.2f} dB "
            f"({row['classic_s']:4.0f} s) | UA-FP {row['uafp_db']:5.2f} dB ({row['uafp_s']:4.0f} s) "
            f"| true system frozen {row['frozen_db']:5.2f} dB | UA-FP - classic {gain_classic:+5.2f} dB, "
            f"UA-FP - frozen {gap_frozen:+5.2f} dB | errors: shift ({row['shift_err_mm'][0]:+.3f}, "
            f"{row['shift_err_mm'][1]:+.3f}) mm, rotation {row['rotation_err_deg']:+.3f} deg, "
            f"height {row['height_err_mm']:+.2f} mm, Zernike 4..11 RMS {row['zernike_rms_err_rad']:.3f} rad",
            flush=True,
        )
    by_name = {row["case"]: row for row in rows}
    if "sparse" in by_name and "misaligned" in by_name:
        drop = by_name["misaligned"]["uafp_db"] - by_name["sparse"]["uafp_db"]
        print(f"every other LED removed: UA-FP PSNR drop {drop:+.2f} dB")


if __name__ == "__main__":
    main()
