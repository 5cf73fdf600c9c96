"""UA-FP across the microscopes people build: random set-ups from the reference simulator.

Each draw is a microscope drawn (seeded) from the distribution below, simulated by the
independent reference simulator (`benchmarks/refsim.py`, not the engine's forward model), then
reconstructed three ways:
  - UA-FP from the nominal geometry with the engine's defaults (what a new user gets),
  - classic FP (EPRY) with its defaults,
  - UA-FP given the true system (rigid geometry, per-LED offsets, Zernikes, gains), frozen: the
    best this engine can do with a perfect calibration.
It reports the calibration errors, amplitude PSNR and phase RMSE against the object band-limited
to the synthetic aperture, wall times, the outcome (ok / failed: an engine error reported as
such / crash: anything else) and whether the result could be saved, then the issue-10 pass
criteria per draw and as fractions, and, where the engine reports standard errors (`*_std`
fields in calibration.json), their 2-sigma coverage.

The distribution (issue 10, "Build" 2), every parameter independent unless a constraint says:
  wavelength            uniform 0.45 - 0.65 um
  objective             one of 2x/0.06, 2x/0.1, 4x/0.1, 4x/0.13, 10x/0.25 (equal odds)
  camera pixel          uniform 1.85 - 6.5 um, and the camera must sample the coherent pupil:
                        sample-plane pixel <= wavelength / (2 NA) (redrawn otherwise)
  LED pitch / height    uniform 2.5 - 10 mm / uniform 40 - 200 mm, redrawn until neighbouring
                        on-axis LEDs' pupils overlap by 40 - 88 % (area)
  LEDs                  a square n x n, n odd in 7..15 (3 draws in 4), or every LED inside an
                        illumination-NA disk of the same reach (1 in 4); raster or spiral order;
                        shrunk (fewer rings) until the engine's object grid needs upsample <= 4
  frames                64, 80, 96, 128, 160, 192 or 256 px square (capped by --max-frame)
  LED misalignment      shift uniform +-3 mm per axis, rotation +-5 deg, height error +-10 %
  per-LED placement     RMS uniform 0 - 0.15 mm per axis
  aberrations           Z4 uniform +-2.5 rad; Z5..Z11 (astigmatism, coma, trefoil, spherical)
                        each uniform +-0.6 rad
  LEDs' brightness      relative spread uniform 0 - 20 %; vignetting 0 - 5 % at the corners
  camera                300 - 20000 photons per bright-field pixel (log-uniform), 12 or 16 bit,
                        read noise uniform 1 - 3 e
  object                refsim's generated USAF bars, cells, or both
The engine runs with its defaults except `upsample`, set to the smallest value (>= 2) whose
object grid holds the synthetic aperture, as a user answering the engine's own message would.

Pass criteria (issue 10, "Must show"), per draw: shift error <= max(0.1 mm, 2 % of pitch) per
axis, rotation <= 0.2 deg, height <= 1.5 % of the height, Zernike 4..11 RMS error <= max(0.1 rad,
10 % of the true RMS); amplitude PSNR within 1.5 dB of the true-system run and not below classic;
no crash; a result folder written.

    python benchmarks/bench_robustness.py [--draws 40] [--seed 0] [--jobs 2] [--max-frame 128]
    python benchmarks/bench_robustness.py --quick          # a few small draws (the test suite runs it)
    python benchmarks/bench_robustness.py --preset misaligned   # the misaligned preset's optics
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import refsim  # noqa: E402

OBJECTIVES = ((2.0, 0.06), (2.0, 0.1), (4.0, 0.1), (4.0, 0.13), (10.0, 0.25))
FRAME_SIZES = (64, 80, 96, 128, 160, 192, 256)
MAX_UPSAMPLE = 4
ZERNIKE_RMS_INDICES = range(4, 12)


def pupil_overlap(distance: float, radius: float) -> float:
    """Area fraction shared by two circles of `radius` whose centres are `distance` apart."""
    x = distance / (2 * radius)
    if x >= 1:
        return 0.0
    return float(2 / math.pi * (math.acos(x) - x * math.sqrt(1 - x * x)))


def needed_upsample(micro: refsim.RefMicroscope) -> int:
    """Smallest object-grid factor whose spectrum holds every LED's (true) pupil, with a pixel to spare."""
    leds = refsim.led_list(micro)
    rng = np.random.default_rng(0)
    positions, _ = refsim.true_led_positions_mm(micro, leds, rng)
    largest = np.linalg.norm(
        refsim.illumination_frequencies(positions, micro.true_height_mm, micro.wavelength_um), axis=1
    ).max()
    # Nominal too: the engine checks the nominal geometry before it calibrates.
    nominal, _ = refsim.true_led_positions_mm(
        replace(micro, shift_x_mm=0, shift_y_mm=0, rotation_deg=0, led_position_error_mm=0), leds, rng
    )
    largest = max(
        largest,
        np.linalg.norm(
            refsim.illumination_frequencies(nominal, micro.led_height_mm, micro.wavelength_um), axis=1
        ).max(),
    )
    reach = largest + micro.objective_na / micro.wavelength_um
    n = micro.frame_size
    df = 1 / (n * micro.sample_pixel_um)
    # The engine crops n x n spectrum pixels around the shift: needs upsample * n / 2 > shift + n / 2 (+ 1).
    need = (largest / df + n / 2 + 2) / (n / 2)
    return int(max(2, math.ceil(need))) if reach > 0 else 2


def draw_microscope(seed: int, max_frame: int = 256, max_leds: int = 15) -> refsim.RefMicroscope:
    """One microscope from the documented distribution (deterministic in `seed`)."""
    rng = np.random.default_rng([10, seed])
    wavelength = rng.uniform(0.45, 0.65)
    while True:
        magnification, na = OBJECTIVES[rng.integers(len(OBJECTIVES))]
        largest_pixel = min(6.5, magnification * wavelength / (2 * na))
        if largest_pixel >= 1.85:
            break
    camera_pixel = rng.uniform(1.85, largest_pixel)
    radius = na / wavelength
    while True:
        pitch, height = rng.uniform(2.5, 10.0), rng.uniform(40.0, 200.0)
        step = pitch / math.hypot(pitch, height) / wavelength
        if 0.40 <= pupil_overlap(step, radius) <= 0.88:
            break
    frame = int(rng.choice([f for f in FRAME_SIZES if f <= max_frame]))
    n_leds = int(rng.choice([n for n in (7, 9, 11, 13, 15) if n <= max_leds]))
    disk = rng.uniform() < 0.25
    order = "spiral" if rng.uniform() < 0.5 else "row"
    zernike = {4: float(rng.uniform(-2.5, 2.5))}
    zernike.update({j: float(rng.uniform(-0.6, 0.6)) for j in range(5, 12)})
    micro = refsim.RefMicroscope(
        wavelength_um=float(wavelength),
        objective_na=na,
        magnification=magnification,
        camera_pixel_um=float(camera_pixel),
        frame_size=frame,
        led_pitch_mm=float(pitch),
        led_height_mm=float(height),
        led_array_shape=(32, 32),
        led_on_axis=(16, 16),
        led_grid=n_leds,
        order=order,
        shift_x_mm=float(rng.uniform(-3, 3)),
        shift_y_mm=float(rng.uniform(-3, 3)),
        rotation_deg=float(rng.uniform(-5, 5)),
        height_error_mm=float(height * rng.uniform(-0.1, 0.1)),
        led_position_error_mm=float(rng.uniform(0, 0.15)),
        zernike_rad=zernike,
        led_brightness_spread=float(rng.uniform(0, 0.2)),
        vignetting=float(rng.uniform(0, 0.05)),
        photons_per_pixel=float(math.exp(rng.uniform(math.log(300), math.log(20000)))),
        read_noise_e=float(rng.uniform(1, 3)),
        bit_depth=int(rng.choice([12, 16])),
        object_kind=str(rng.choice(["mixed", "cells", "usaf"])),
        seed=int(seed),
    )
    if disk:
        half = n_leds // 2
        reach = half * pitch / math.hypot(half * pitch, height)
        micro = replace(micro, led_disk_na=float(reach))
    # Fewer outer LEDs until the engine's default grid (upsample <= 4) holds the synthetic aperture.
    while needed_upsample(micro) > MAX_UPSAMPLE:
        if micro.led_disk_na is not None:
            micro = replace(micro, led_disk_na=micro.led_disk_na * 0.9)
        elif micro.led_grid > 3:
            micro = replace(micro, led_grid=micro.led_grid - 2)
        else:
            break
    return micro


def quick_microscope(seed: int) -> refsim.RefMicroscope:
    """A small draw for `--quick`: 64 px frames and at most 7 x 7 LEDs, the rest from the distribution."""
    micro = draw_microscope(seed, max_frame=64, max_leds=7)
    return micro


# ----------------------------------------------------------------------------- one draw


def _truth_calibration(simulation):
    from uafp_gui.io.calibration import Calibration

    return Calibration.from_dict(simulation.calibration_dict())


def _set_led_offsets(recon, simulation) -> None:
    """Give the frozen true-system run the per-LED placement errors too (the rigid calibration cannot)."""
    import torch

    model = recon.model
    offsets = {tuple(led): off for led, off in zip(simulation.leds, simulation.led_offsets_mm, strict=True)}
    with torch.no_grad():
        for i, led in enumerate(model.distinct_leds):
            model.system.led_offsets_mm[i] = torch.as_tensor(offsets[tuple(int(v) for v in led)], dtype=torch.float32)


def _errors(result, simulation) -> dict:
    micro = simulation.micro
    g = result.geometry
    truth = micro.true_geometry_dict()
    z_true = np.array([micro.zernike_rad.get(j, 0.0) for j in ZERNIKE_RMS_INDICES])
    z_est = np.array([result.zernike_rad.get(j, 0.0) for j in ZERNIKE_RMS_INDICES])
    return {
        "err_shift_x_mm": g.shift_x_mm - truth["shift_x_mm"],
        "err_shift_y_mm": g.shift_y_mm - truth["shift_y_mm"],
        "err_rotation_deg": g.rotation_deg - truth["rotation_deg"],
        "err_height_mm": g.height_mm - truth["height_mm"],
        "err_zernike_rms_rad": float(np.sqrt(np.mean((z_est - z_true) ** 2))),
        "true_zernike_rms_rad": float(np.sqrt(np.mean(z_true**2))),
        "err_z4_rad": float(z_est[0] - z_true[0]),
        "est_z4_rad": float(z_est[0]),
    }


def _coverage(calibration: dict, truth: dict, prefix: str = "") -> dict[str, bool]:
    """For each `X_std` the engine reports next to `X`: whether |X - truth X| <= 2 std ("undetermined" skipped)."""
    covered = {}
    for key, value in calibration.items():
        if key.endswith("_std") and key[:-4] in calibration and key[:-4] in truth:
            estimate, true, std = calibration[key[:-4]], truth[key[:-4]], value
            if isinstance(std, dict):
                for sub, s in std.items():
                    if isinstance(s, int | float) and math.isfinite(s) and sub in estimate and sub in true:
                        covered[f"{prefix}{key[:-4]}.{sub}"] = abs(estimate[sub] - true[sub]) <= 2 * s
            elif isinstance(std, int | float) and math.isfinite(std):
                covered[f"{prefix}{key[:-4]}"] = abs(estimate - true) <= 2 * std
        elif isinstance(value, dict) and isinstance(truth.get(key), dict):
            covered.update(_coverage(value, truth[key], f"{prefix}{key}."))
    return covered


def run_draw(
    micro: refsim.RefMicroscope, draw: int, iterations: int | None = None, classic: bool = True,
    overrides: dict | None = None,
) -> dict:
    """Simulate one microscope and reconstruct it three ways; never raises."""
    import torch

    torch.set_num_threads(1)
    from uafp_gui.errors import UafpError
    from uafp_gui.metrics import score
    from uafp_gui.recon.classic import ClassicSettings, ClassicSolver
    from uafp_gui.recon.common import save_result
    from uafp_gui.recon.uafp import UafpReconstruction, UafpSettings

    row: dict = {"draw": draw, "seed": micro.seed}
    row.update(describe(micro))
    try:
        started = time.perf_counter()
        simulation = refsim.simulate(micro)
        row["simulate_s"] = time.perf_counter() - started
    except Exception as error:  # the simulator itself: not the engine's outcome
        row.update(outcome="simulator-error", error=f"{type(error).__name__}: {error}")
        return row
    dataset = simulation.dataset()
    truth = simulation.truth
    upsample = needed_upsample(micro)
    row["upsample"] = upsample
    row["frames"] = len(simulation.frames)
    settings = UafpSettings(device="cpu", upsample=upsample)
    if iterations is not None:
        settings = settings.replace(iterations=iterations)
    if overrides:
        settings = settings.replace(**overrides)

    # UA-FP from the nominal geometry.
    started = time.perf_counter()
    try:
        recon = UafpReconstruction.from_dataset(dataset, settings)
        for _ in recon.run():
            pass
        result = recon.result()
        row["uafp_s"] = time.perf_counter() - started
        row["outcome"] = "ok"
        row.update(_errors(result, simulation))
        scores = score(truth, result.object_field.astype(complex))
        row["uafp_psnr_db"], row["uafp_phase_rmse_rad"] = scores.amplitude_psnr_db, scores.phase_rmse_rad
        with tempfile.TemporaryDirectory() as folder:
            save_result(result, Path(folder) / "result")
            row["saved"] = True
            calibration = json.loads((Path(folder) / "result" / "calibration.json").read_text())
        covered = _coverage(calibration, simulation.calibration_dict())
        row["coverage"] = covered
    except UafpError as error:
        row.update(uafp_s=time.perf_counter() - started, outcome="failed", saved=False, error=str(error))
    except Exception as error:
        row.update(
            uafp_s=time.perf_counter() - started,
            outcome="crash",
            saved=False,
            error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(limit=4),
        )

    if classic:
        started = time.perf_counter()
        try:
            result = ClassicSolver(dataset, ClassicSettings(upsample=upsample, device="cpu")).run()
            row["classic_s"] = time.perf_counter() - started
            scores = score(truth, result.object_field.astype(complex))
            row["classic_psnr_db"], row["classic_phase_rmse_rad"] = scores.amplitude_psnr_db, scores.phase_rmse_rad
        except Exception as error:
            row["classic_error"] = f"{type(error).__name__}: {error}"

    started = time.perf_counter()
    try:
        frozen = UafpReconstruction.from_dataset(
            dataset, settings.replace(freeze_system=True), _truth_calibration(simulation)
        )
        _set_led_offsets(frozen, simulation)
        for _ in frozen.run():
            pass
        result = frozen.result()
        row["frozen_s"] = time.perf_counter() - started
        scores = score(truth, result.object_field.astype(complex))
        row["frozen_psnr_db"], row["frozen_phase_rmse_rad"] = scores.amplitude_psnr_db, scores.phase_rmse_rad
    except Exception as error:
        row["frozen_error"] = f"{type(error).__name__}: {error}"
    row.update(criteria(row, micro))
    return row


def describe(micro: refsim.RefMicroscope) -> dict:
    leds = f"disk{micro.led_disk_na:.2f}" if micro.led_disk_na is not None else f"{micro.led_grid}x{micro.led_grid}"
    return {
        "optics": f"{micro.magnification:g}x/{micro.objective_na:g}",
        "wavelength_um": micro.wavelength_um,
        "camera_pixel_um": micro.camera_pixel_um,
        "frame_px": micro.frame_size,
        "leds": leds,
        "order": micro.order,
        "pitch_mm": micro.led_pitch_mm,
        "height_mm": micro.true_height_mm,
        "photons": micro.photons_per_pixel,
        "true_z4_rad": micro.zernike_rad.get(4, 0.0),
    }


def criteria(row: dict, micro: refsim.RefMicroscope) -> dict:
    """The issue's pass criteria for one draw (False when the run did not give the figure)."""
    ok = row.get("outcome") == "ok"
    shift_tolerance = max(0.1, 0.02 * micro.led_pitch_mm)
    out = {
        "pass_shift": ok and max(abs(row["err_shift_x_mm"]), abs(row["err_shift_y_mm"])) <= shift_tolerance,
        "pass_rotation": ok and abs(row["err_rotation_deg"]) <= 0.2,
        "pass_height": ok and abs(row["err_height_mm"]) <= 0.015 * micro.true_height_mm,
        "pass_zernike": ok and row["err_zernike_rms_rad"] <= max(0.1, 0.1 * row["true_zernike_rms_rad"]),
        "pass_psnr_vs_true": ok and "frozen_psnr_db" in row and row["uafp_psnr_db"] >= row["frozen_psnr_db"] - 1.5,
        "pass_not_below_classic": ok and "classic_psnr_db" in row and row["uafp_psnr_db"] >= row["classic_psnr_db"],
        "no_crash": row.get("outcome") != "crash",
        "result_saved": bool(row.get("saved")),
    }
    out["pass_all"] = all(out.values())
    return out


CRITERIA = (
    "pass_shift",
    "pass_rotation",
    "pass_height",
    "pass_zernike",
    "pass_psnr_vs_true",
    "pass_not_below_classic",
    "no_crash",
    "result_saved",
    "pass_all",
)


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'draw':>4} {'seed':>4} {'optics':>8} {'px':>4} {'leds':>9} {'N':>4} {'up':>2} {'photons':>7} "
        f"{'dx mm':>7} {'dy mm':>7} {'rot deg':>7} {'dh %':>6} {'Z4 true':>7} {'Z4 est':>7} {'Zrms err':>8} "
        f"{'UA dB':>6} {'true dB':>7} {'cls dB':>6} {'UA ph':>6} {'s':>5} {'outcome':>8} pass"
    )
    print(header)
    for r in rows:
        marks = "".join("x" if not r.get(c) else "." for c in CRITERIA[:-1])
        print(
            f"{r['draw']:4d} {r['seed']:4d} {r['optics']:>8} {r['frame_px']:4d} {r['leds']:>9} {r.get('frames', 0):4d} "
            f"{r.get('upsample', 0):2d} {r['photons']:7.0f} {_fmt(r.get('err_shift_x_mm'), '+7.3f')} "
            f"{_fmt(r.get('err_shift_y_mm'), '+7.3f')} {_fmt(r.get('err_rotation_deg'), '+7.3f')} "
            f"{_fmt(100 * r['err_height_mm'] / r['height_mm'] if 'err_height_mm' in r else None, '+6.2f')} "
            f"{r['true_z4_rad']:+7.2f} {_fmt(r.get('est_z4_rad'), '+7.2f')} "
            f"{_fmt(r.get('err_zernike_rms_rad'), '8.3f')} "
            f"{_fmt(r.get('uafp_psnr_db'), '6.2f')} {_fmt(r.get('frozen_psnr_db'), '7.2f')} "
            f"{_fmt(r.get('classic_psnr_db'), '6.2f')} {_fmt(r.get('uafp_phase_rmse_rad'), '6.3f')} "
            f"{_fmt(r.get('uafp_s'), '5.0f')} {r.get('outcome', '?'):>8} {marks}"
        )
    print(
        "pass marks (x = fails): shift, rotation, height, Zernike, PSNR vs true system, PSNR vs classic, "
        "no crash, saved"
    )


def summary(rows: list[dict]) -> dict:
    n = len(rows)
    out = {"draws": n, "seeds": [r["seed"] for r in rows]}
    for c in CRITERIA:
        out[f"fraction_{c}"] = sum(bool(r.get(c)) for r in rows) / max(n, 1)
    out["crashes"] = sum(r.get("outcome") == "crash" for r in rows)
    out["failed"] = sum(r.get("outcome") == "failed" for r in rows)
    times = [r["uafp_s"] for r in rows if "uafp_s" in r]
    out["median_uafp_s"] = float(np.median(times)) if times else float("nan")
    coverage: dict[str, list[bool]] = {}
    for r in rows:
        for key, hit in (r.get("coverage") or {}).items():
            coverage.setdefault(key, []).append(bool(hit))
    out["coverage_2sigma"] = {k: sum(v) / len(v) for k, v in sorted(coverage.items())}
    return out


def print_summary(s: dict) -> None:
    print(f"{s['draws']} draws (seeds {s['seeds']}):")
    for c in CRITERIA:
        print(f"  {c:24s} {100 * s[f'fraction_{c}']:5.1f} %")
    print(
        f"  crashes {s['crashes']}, engine-reported failures {s['failed']}, "
        f"median UA-FP wall time {s['median_uafp_s']:.1f} s"
    )
    if s["coverage_2sigma"]:
        print("  2-sigma coverage: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in s["coverage_2sigma"].items()))
    else:
        print("  2-sigma coverage: the engine reports no standard errors (*_std) yet")


def write_outputs(rows: list[dict], s: dict, out: Path) -> None:
    out = Path(out)
    out.with_suffix(".json").write_text(json.dumps({"summary": s, "draws": rows}, indent=1, default=str))
    keys = sorted({k for r in rows for k in r if k not in ("coverage", "traceback")})
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="first draw's seed; draw k uses seed + k")
    parser.add_argument("--jobs", type=int, default=1, help="draws run in parallel processes (one thread each)")
    parser.add_argument("--max-frame", type=int, default=256, help="cap on the drawn frame size (px)")
    parser.add_argument("--max-leds", type=int, default=15, help="cap on the drawn LED square (n of n x n)")
    parser.add_argument("--iterations", type=int, default=None, help="override the engine's default iterations")
    parser.add_argument("--quick", action="store_true", help="2 small draws (64 px, <= 7x7 LEDs, 15 iterations)")
    parser.add_argument("--preset", choices=sorted(refsim.PRESETS), help="one run of a refsim preset instead of draws")
    parser.add_argument("--no-classic", action="store_true")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="an engine setting for every UA-FP run (VALUE as JSON, e.g. start_rim_min_response=0): A/B runs",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_robustness"), help="writes OUT.json and OUT.csv")
    args = parser.parse_args(argv)
    if args.preset:
        micros = [replace(refsim.PRESETS[args.preset], seed=args.seed)]
    elif args.quick:
        micros = [quick_microscope(args.seed + k) for k in range(2)]
        args.iterations = args.iterations or 15
    else:
        micros = [draw_microscope(args.seed + k, args.max_frame, args.max_leds) for k in range(args.draws)]
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name.strip()] = json.loads(value)
    jobs = [(micro, k, args.iterations, not args.no_classic, overrides) for k, micro in enumerate(micros)]
    rows: list[dict] = []

    def finished(row: dict) -> None:
        """Keep a draw's row as soon as it is done: OUT.json/OUT.csv hold every finished draw, so a
        long run stopped half-way (or killed) loses nothing it measured."""
        row["microscope"] = asdict(micros[row["draw"]])
        rows.append(row)
        rows.sort(key=lambda r: r["draw"])
        write_outputs(rows, summary(rows) | {"planned_draws": len(jobs)}, args.out)
        print(f"draw {row['draw']} done: {row.get('outcome')}, {row.get('uafp_s', 0):.0f} s", flush=True)

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for future in as_completed([pool.submit(run_draw, *job) for job in jobs]):
                finished(future.result())
    else:
        for job in jobs:
            finished(run_draw(*job))
    print_table(rows)
    s = summary(rows)
    print_summary(s)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.csv')}")
    return s


if __name__ == "__main__":
    main()
