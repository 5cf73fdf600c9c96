"""Real data: the shared blood-smear capture, classic FP against UA-FP from the nominal geometry.

Imports `../shared/data/zheng-bloodsmear/bloodsmear_green.mat`, reconstructs it with both
engines (no defocus or calibration given), prints each one's data misfit, the UA-FP
calibration next to the authors' own (shift (0, 0.35) mm, rotation 0 deg, +10 um defocus),
and writes a side-by-side PNG of the two amplitudes (and phases).

    python benchmarks/bloodsmear_compare.py [--out bloodsmear_compare.png] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from uafp_gui.io.dataset import read_dataset  # noqa: E402
from uafp_gui.io.importers import import_zheng_mat  # noqa: E402
from uafp_gui.physics.zernike import defocus_um_from_z4  # noqa: E402
from uafp_gui.recon.classic import ClassicSettings, ClassicSolver  # noqa: E402
from uafp_gui.recon.uafp import UafpSettings, reconstruct_dataset  # noqa: E402

MAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "zheng-bloodsmear" / "bloodsmear_green.mat"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mat", type=Path, default=MAT)
    parser.add_argument("--out", type=Path, default=Path("bloodsmear_compare.png"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        dataset = read_dataset(import_zheng_mat(args.mat, Path(folder) / "blood.tif"))
    classic = ClassicSolver(dataset, ClassicSettings(device=args.device)).run()
    uafp = reconstruct_dataset(dataset, UafpSettings(device=args.device))
    meta = dataset.meta
    g = uafp.geometry
    z4 = uafp.zernike_rad.get(4, 0.0)
    defocus_um = defocus_um_from_z4(z4, meta.wavelength_um, meta.objective_na)
    misfit_classic, misfit_uafp = classic.extra["data_misfit"], uafp.extra["data_misfit"]
    print(
        f"data misfit (relative, amplitude): classic {misfit_classic:.4f}, UA-FP {misfit_uafp:.4f} "
        f"({misfit_classic / misfit_uafp:.1f}x lower)"
    )
    print(
        f"UA-FP calibration: shift ({g.shift_x_mm:+.3f}, {g.shift_y_mm:+.3f}) mm, rotation "
        f"{g.rotation_deg:+.3f} deg, height {g.height_mm:.2f} mm (nominal {meta.led_height_mm} mm)"
    )
    print("authors' calibration: shift (0, 0.35) mm, rotation 0 deg, defocus +10 um")
    print(f"Zernike 4 = {z4:+.3f} rad = defocus {defocus_um:+.1f} um")
    figure, axes = plt.subplots(2, 2, figsize=(12, 12))
    for column, (name, result) in enumerate((("classic FP", classic), ("UA-FP", uafp))):
        amplitude = np.abs(result.object_field)
        low, high = np.percentile(amplitude, [0.5, 99.5])
        axes[0, column].imshow(amplitude, cmap="gray", vmin=low, vmax=high)
        axes[0, column].set_title(f"{name}: amplitude (misfit {result.extra['data_misfit']:.4f})")
        axes[1, column].imshow(np.angle(result.object_field), cmap="twilight")
        axes[1, column].set_title(f"{name}: phase")
        for axis in axes[:, column]:
            axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
