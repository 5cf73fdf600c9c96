"""Are UA-FP's error bars honest? 2-sigma coverage of the truth across seeded draws.

For each seed: draw a misaligned, aberrated microscope (shift, rotation, height error, Zernike 4..8),
simulate its dataset, run UA-FP from the nominal geometry with the defaults, compute the standard
errors (`uafp_gui.recon.uncertainty`), and record z = (estimate - truth) / std for every reported
parameter. Coverage is the fraction with |z| <= 2 (the issue asks for 85-99 %).

    python benchmarks/bench_uncertainty.py --seeds 0-7 --out coverage.json [--simulator refsim]

`--simulator refsim` draws the data from the independent reference simulator
(`benchmarks/refsim.py`) instead of `uafp_gui.simulate` (the solver's own forward model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from uafp_gui.io.dataset import Dataset  # noqa: E402
from uafp_gui.recon.uafp import UafpReconstruction, UafpSettings  # noqa: E402
from uafp_gui.recon.uncertainty import GEOMETRY, calibration_uncertainty  # noqa: E402
from uafp_gui.simulate import PRESETS, simulate  # noqa: E402

ZERNIKE_REPORTED = tuple(range(4, 12))


def draw_errors(seed: int) -> dict:
    rng = np.random.default_rng(1000 + seed)
    return {
        "shift_x_mm": float(rng.uniform(-1.5, 1.5)),
        "shift_y_mm": float(rng.uniform(-1.5, 1.5)),
        "rotation_deg": float(rng.uniform(-3, 3)),
        "height_error_mm": float(rng.uniform(-5, 5)),
        "zernike_rad": {4: float(rng.uniform(-1.5, 1.5)), **{j: float(rng.uniform(-0.4, 0.4)) for j in (5, 6, 7, 8)}},
    }


def simulated_case(seed: int, frame_size: int, led_grid: int):
    errors = draw_errors(seed)
    settings = replace(PRESETS["misaligned"], frame_size=frame_size, led_grid=led_grid, seed=seed, **errors)
    simulation = simulate(settings, device="cpu")
    truth = settings.true_geometry.to_dict() | {f"zernike_{j}": settings.zernike_rad.get(j, 0.0) for j in range(4, 22)}
    return Dataset(meta=simulation.meta, frames=simulation.frames), truth


def refsim_case(seed: int, frame_size: int, led_grid: int):
    """A microscope drawn from bench_robustness's distribution (frames <= frame_size px, <= led_grid^2
    LEDs), simulated by the independent reference simulator; returns (dataset, truth, upsample)."""
    import bench_robustness
    import refsim

    micro = bench_robustness.draw_microscope(seed, max_frame=frame_size, max_leds=led_grid)
    simulation = refsim.simulate(micro)
    truth = micro.true_geometry_dict() | {f"zernike_{j}": micro.zernike_rad.get(j, 0.0) for j in range(4, 22)}
    return simulation.dataset(), truth, bench_robustness.needed_upsample(micro)


def run(seed: int, args) -> dict:
    if args.simulator == "refsim":
        dataset, truth, upsample = refsim_case(seed, args.frame_size, args.led_grid)
    else:
        (dataset, truth), upsample = simulated_case(seed, args.frame_size, args.led_grid), args.upsample
    settings = UafpSettings(
        upsample=upsample, iterations=args.iterations, device="cpu", seed=seed, polish_steps=args.polish
    )
    started = time.perf_counter()
    recon = UafpReconstruction.from_dataset(dataset, settings)
    for _ in recon.run():
        pass
    run_s = time.perf_counter() - started
    started = time.perf_counter()
    uncertainty = calibration_uncertainty(recon)
    uncertainty_s = time.perf_counter() - started
    estimate = recon.model.system.led_geometry().to_dict() | {
        f"zernike_{j}": v for j, v in recon.model.system.zernike_dict(4).items()
    }
    rows = {}
    for name in list(GEOMETRY) + [f"zernike_{j}" for j in ZERNIKE_REPORTED]:
        std = uncertainty.std.get(name, float("nan"))
        error = estimate[name] - truth[name]
        step = uncertainty.extra["gauss_newton_step"].get(name, float("nan"))
        rows[name] = {
            "error": error,
            "std": std,
            "z": error / std if np.isfinite(std) and std > 0 else None,
            "gauss_newton_step": step,
            "noise_std": uncertainty.extra["noise_std"].get(name, float("nan")),
            "robust_std": uncertainty.extra["robust_std"].get(name, float("nan")),
        }
    return {
        "seed": seed,
        "run_s": run_s,
        "uncertainty_s": uncertainty_s,
        "undetermined": list(uncertainty.undetermined),
        "noise_rms": uncertainty.noise_rms,
        "misfit": recon.data_misfit(),
        "polished_steps": recon.polished_steps,
        "parameters": rows,
    }


def summarise(records: list[dict]) -> dict:
    z = np.array([p["z"] for r in records for p in r["parameters"].values() if p["z"] is not None], dtype=float)
    by_name: dict[str, list[float]] = {}
    for r in records:
        for name, p in r["parameters"].items():
            if p["z"] is not None:
                by_name.setdefault(name, []).append(abs(p["z"]))
    return {
        "draws": len(records),
        "coverage_2sigma": float(np.mean(np.abs(z) <= 2)) if z.size else float("nan"),
        "coverage_1sigma": float(np.mean(np.abs(z) <= 1)) if z.size else float("nan"),
        "median_abs_z": float(np.median(np.abs(z))) if z.size else float("nan"),
        "inflation_for_95": float(np.quantile(np.abs(z), 0.95) / 2) if z.size else float("nan"),
        "per_parameter_coverage": {k: float(np.mean(np.asarray(v) <= 2)) for k, v in by_name.items()},
    }


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-3")
    parser.add_argument("--simulator", choices=["simulate", "refsim"], default="simulate")
    parser.add_argument("--frame-size", type=int, default=96)
    parser.add_argument("--led-grid", type=int, default=7)
    parser.add_argument("--upsample", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--polish", type=int, default=0, help="Gauss-Newton polish steps after the run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = []
    for seed in parse_seeds(args.seeds):
        record = run(seed, args)
        records.append(record)
        zs = ", ".join(
            f"{k}:{p['z']:+.1f}" if p["z"] is not None else f"{k}:undet" for k, p in record["parameters"].items()
        )
        print(f"seed {seed}: {record['run_s']:.0f} s + {record['uncertainty_s']:.0f} s; z {zs}", flush=True)
        if args.out:
            args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "records": records,
                                            "summary": summarise(records)}, indent=1))
    print(json.dumps(summarise(records), indent=1))


if __name__ == "__main__":
    main()
