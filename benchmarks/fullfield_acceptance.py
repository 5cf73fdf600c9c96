"""Full-field acceptance figures on the reference simulator's field preset (issue 12's closing figures).

Simulates a field (`benchmarks/refsim.py` `FIELD_PRESETS`), reconstructs it with
`uafp_gui.fullfield.reconstruct_full_field` (serially) and prints, and writes as JSON:

- the stitched amplitude PSNR against the truth, and the mean of the per-tile PSNRs (each on the
  central 80 % of its own region, `uafp_gui.metrics.score`; the truth is the object band-limited to the
  synthetic aperture times the square root of the simulated vignetting, which every reconstruction
  with global gains carries in its amplitude);
- the global LED geometry's errors against the tolerance: shift max(0.1 mm, 2 % pitch), rotation 0.2 deg,
  height 1.5 %;
- the aberration map's error: the fitted field-dependent wavefront (Noll j >= 4) against the true one,
  RMS over j per field point, on the map's grid and at the tile centres; and, from the same tiles, the
  field model with each Zernike's Seidel field dependence (the default) beside the full quadratic for every
  Zernike (before s4_i12b), each against the lens's polynomial (`zernike_at`) and against the aberrations
  the frames carry (`simulated_zernike_at`: the patch-wise simulation holds the outermost patches' values
  towards the frame's edges), over the whole frame and over the square spanned by the outer tile centres;
- a seam picture (stitched amplitude and phase, their error against the truth, tile outlines);
- the same tiles stitched with phase offsets only (the default) and with offsets + ramps, side by side.

In sittings (a run longer than one session): `--simulate-only`, then `uafp reconstruct OUT/PRESET.tif --tiles
auto --upsample 4 --out R` stopped with Ctrl-C and continued with `--resume` as often as needed, then `--result R`
scores the finished folder (same OUT, preset and options).

    python benchmarks/fullfield_acceptance.py OUT_DIR [--preset field256] [--tile-size 144] [--overlap 32]
        [--upsample 2 (field256) | 4 (field1024, field2048)] [--iterations 30] [--calibration-tiles 2]

Time (notes/s6_i12.md): field1024 (1024^2 x 225 frames, 5 x 5 tiles of 256 at upsample 4, 3 calibration tiles,
error bars on) is ~13,000 CPU-seconds on a CPU (simulation ~2,950, calibration tiles ~500 each, tiles ~350
each): hours on 2 cores; a GPU session, or slices of a resumable run.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import refsim  # noqa: E402

from uafp_gui.fullfield.aberration import FIRST_ABERRATION, evaluate_model  # noqa: E402
from uafp_gui.fullfield.pipeline import reconstruct_full_field  # noqa: E402
from uafp_gui.io.writer import write_dataset  # noqa: E402
from uafp_gui.metrics import score  # noqa: E402
from uafp_gui.recon.settings import UafpSettings  # noqa: E402

DEFAULT_UPSAMPLE = {"field256": 2}  # the others (15 x 15 LEDs, synthetic NA ~0.4): 4


def geometry_errors(estimated: dict, micro) -> dict:
    truth = micro.true_geometry_dict()
    shift_tolerance = max(0.1, 0.02 * micro.led_pitch_mm)
    errors = {name: float(estimated[name] - truth[name]) for name in truth}
    return {
        "errors": errors,
        "tolerance": {"shift_mm": shift_tolerance, "rotation_deg": 0.2, "height_mm": 0.015 * truth["height_mm"]},
        "within": {
            "shift_x_mm": abs(errors["shift_x_mm"]) <= shift_tolerance,
            "shift_y_mm": abs(errors["shift_y_mm"]) <= shift_tolerance,
            "rotation_deg": abs(errors["rotation_deg"]) <= 0.2,
            "height_mm": abs(errors["height_mm"]) <= 0.015 * truth["height_mm"],
        },
    }


def aberration_errors(calibration: dict, simulation) -> dict:
    """RMS over Noll j >= 4 of (fitted - true) coefficient, per field point."""
    aberrations = calibration["field_aberrations"]
    grid = aberrations["map"]
    yy, xx = np.meshgrid(np.asarray(grid["y_um"]), np.asarray(grid["x_um"]), indexing="ij")
    fitted = evaluate_model(aberrations["model"], xx, yy)
    truth = simulation.zernike_at(xx, yy)
    indices = sorted({j for j in list(fitted) + list(truth) if j >= FIRST_ABERRATION})
    error = np.sqrt(sum((np.asarray(fitted.get(j, 0.0)) - np.asarray(truth.get(j, 0.0))) ** 2 for j in indices))
    true_rms = np.sqrt(sum(np.asarray(truth.get(j, 0.0)) ** 2 for j in indices if j >= FIRST_ABERRATION))
    tiles = []
    for tile in aberrations["tiles"]:
        x, y = tile["center_um"]
        own = {int(j): v for j, v in tile["zernike_rad"].items()}
        true_here = simulation.zernike_at(x, y)
        tiles.append(float(math.sqrt(sum((own.get(j, 0.0) - float(true_here.get(j, 0.0))) ** 2 for j in indices))))
    model_at_tiles = []
    for tile in aberrations["tiles"]:
        x, y = tile["center_um"]
        here = evaluate_model(aberrations["model"], np.array([x]), np.array([y]))
        true_here = simulation.zernike_at(x, y)
        model_at_tiles.append(float(math.sqrt(sum(
            (float(np.asarray(here.get(j, [0.0]))[0]) - float(true_here.get(j, 0.0))) ** 2 for j in indices))))
    return {
        "model_at_tiles_error_rms_rad": model_at_tiles,
        "map_error_rms_rad_max": float(error.max()),
        "map_error_rms_rad_mean": float(error.mean()),
        "true_wavefront_rms_rad_range": [float(true_rms.min()), float(true_rms.max())],
        "tile_error_rms_rad": tiles,
        "per_index_max_error_rad": {
            str(j): float(np.max(np.abs(np.asarray(fitted.get(j, 0.0)) - np.asarray(truth.get(j, 0.0)))))
            for j in indices
        },
    }


def aberration_models(calibration: dict, simulation, grid: int = 9) -> dict:
    """The same tiles' pupils fitted with each Zernike's Seidel field dependence (the pipeline's default) and
    with the full quadratic for every Zernike; the map error (RMS over j >= 4, max and mean over a `grid` x
    `grid` grid) against the lens's polynomial and against what the frames carry, over the whole frame and
    over the square spanned by the outermost tile centres."""
    from uafp_gui.fullfield.aberration import fit_aberration_model

    aberrations = calibration["field_aberrations"]
    model = aberrations["model"]
    centres = [t["center_um"] for t in aberrations["tiles"]]
    zernikes = [{int(j): v for j, v in t["zernike_rad"].items()} for t in aberrations["tiles"]]
    fitted = {
        "seidel": fit_aberration_model(centres, zernikes, field_center_um=tuple(model["field_center_um"]),
                                       field_half_width_um=model["field_half_width_um"], seidel=True),
        "full quadratic": fit_aberration_model(centres, zernikes, field_center_um=tuple(model["field_center_um"]),
                                               field_half_width_um=model["field_half_width_um"], seidel=False),
    }
    grid_x, grid_y = np.asarray(aberrations["map"]["x_um"]), np.asarray(aberrations["map"]["y_um"])
    xs_c = [c[0] for c in centres]
    ys_c = [c[1] for c in centres]
    areas = {
        "frame": (np.linspace(grid_x[0], grid_x[-1], grid), np.linspace(grid_y[0], grid_y[-1], grid)),
        "tile centres": (np.linspace(min(xs_c), max(xs_c), grid), np.linspace(min(ys_c), max(ys_c), grid)),
    }
    truths = {"lens polynomial": simulation.zernike_at}
    if hasattr(simulation, "simulated_zernike_at"):
        truths["as simulated"] = simulation.simulated_zernike_at
    out: dict = {}
    for name, fit in fitted.items():
        entry: dict = {"field_dependence": {j: ("full" if len(t) == 6 else "+".join(t))
                                            for j, t in fit["field_dependence"].items() if int(j) >= FIRST_ABERRATION}}
        for area, (xs, ys) in areas.items():
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            values = evaluate_model(fit, xx, yy)
            for truth_name, truth_at in truths.items():
                truth = truth_at(xx, yy)
                indices = sorted({j for j in list(values) + list(truth) if j >= FIRST_ABERRATION})
                error = np.sqrt(sum((np.asarray(values.get(j, 0.0)) - np.asarray(truth.get(j, 0.0))) ** 2
                                    for j in indices))
                entry[f"{area} vs {truth_name}"] = {"max_rad": float(error.max()), "mean_rad": float(error.mean())}
        out[name] = entry
    return out


def quality(result, simulation, upsample: int) -> dict:
    vignette = np.sqrt(np.repeat(np.repeat(simulation.vignetting, upsample, 0), upsample, 1))
    truth = simulation.truth(upsample) * vignette
    tiles = []
    for tile_result in result.tiles:
        t = tile_result.tile
        region = (slice(t.y0 * upsample, t.y1 * upsample), slice(t.x0 * upsample, t.x1 * upsample))
        estimate = tile_result.amplitude * np.exp(1j * tile_result.phase)
        scores = score(truth[region], estimate)
        peak = float(np.abs(truth[region]).max())
        tiles.append({"index": t.index, "psnr_db": scores.amplitude_psnr_db, "phase_rmse_rad": scores.phase_rmse_rad,
                      "mse": peak**2 / 10 ** (scores.amplitude_psnr_db / 10)})
    stitched = score(truth, result.amplitude * np.exp(1j * result.phase))
    mean_tile = float(np.mean([t["psnr_db"] for t in tiles]))
    # The mean of dB values favours the tiles (Jensen; each tile also has its own peak and scale): the tiles'
    # pooled PSNR (mean squared error over all tiles against the field's peak) is the like-for-like figure.
    pooled = float(10 * np.log10(float(np.abs(truth).max()) ** 2 / np.mean([t["mse"] for t in tiles])))
    return {
        "tile_pooled_psnr_db": pooled,
        "stitched_minus_pooled_tile_db": stitched.amplitude_psnr_db - pooled,
        "stitched_psnr_db": stitched.amplitude_psnr_db,
        "stitched_phase_rmse_rad": stitched.phase_rmse_rad,
        "mean_tile_psnr_db": mean_tile,
        "stitched_minus_mean_tile_db": stitched.amplitude_psnr_db - mean_tile,
        "tiles": tiles,
    }, truth


def stitching_variants(result, truth: np.ndarray, upsample: int) -> dict:
    """The same tiles stitched with phase offsets only (the default) and with offsets + ramps (the
    alignment before s4_i12): stitched amplitude PSNR, phase RMSE, worst overlap phase residual."""
    from uafp_gui.fullfield.stitch import stitch

    tiles = [r.tile for r in result.tiles]
    out = {}
    for name, align_ramp in (("offsets", False), ("offsets+ramps", True)):
        amplitude, phase, alignment = stitch(tiles, [r.amplitude for r in result.tiles],
                                             [r.phase for r in result.tiles], result.frame_shape, upsample,
                                             align_ramp=align_ramp)
        scores = score(truth, amplitude * np.exp(1j * phase))
        out[name] = {"stitched_psnr_db": scores.amplitude_psnr_db, "stitched_phase_rmse_rad": scores.phase_rmse_rad,
                     "max_overlap_phase_rms_rad": float(max(alignment.pair_residual_rad.values(), default=0.0))}
    return out


def seam_picture(result, truth: np.ndarray, path: Path, upsample: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    amplitude, phase = result.amplitude, result.phase
    scale = float((np.abs(truth) * amplitude).sum() / (amplitude**2).sum())
    phase_error = np.angle(np.exp(1j * (phase - np.angle(truth))))
    phase_error -= np.angle(np.mean(np.exp(1j * phase_error)))
    phase_error = np.angle(np.exp(1j * phase_error))
    figure, axes = plt.subplots(2, 2, figsize=(12, 12))
    panels = (
        (amplitude, "stitched amplitude", "gray"),
        (phase, "stitched phase (rad)", "twilight"),
        (scale * amplitude - np.abs(truth), "amplitude - truth", "coolwarm"),
        (phase_error, "phase - truth (rad, offset removed)", "coolwarm"),
    )
    for axis, (values, title, cmap) in zip(axes.ravel(), panels, strict=True):
        limit = np.percentile(np.abs(values), 99.5) if "truth" in title else None
        image = axis.imshow(values, cmap=cmap, vmin=-limit if limit else None, vmax=limit)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        axis.set_title(title)
        for tile_result in result.tiles:
            t = tile_result.tile
            axis.add_patch(Rectangle((t.x0 * upsample - 0.5, t.y0 * upsample - 0.5), t.width * upsample,
                                     t.height * upsample, fill=False, edgecolor="yellow", linewidth=0.6, alpha=0.6))
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def read_full_field(folder: Path, dataset: Path):
    """A complete full-field result folder (`uafp reconstruct --tiles`, resumed or not) as the `FullFieldResult`
    this script scores: the mosaic, the calibration with its aberration map, every tile's own result. The
    calibration tiles' runs are not in the folder (their indices are)."""
    from uafp_gui.fullfield.pipeline import FullFieldResult
    from uafp_gui.fullfield.tiles import Tile, TileResult
    from uafp_gui.io.result import read_result

    whole = read_result(folder, require_manifest=True)
    calibration = whole.calibration.to_dict()
    planned = {d["index"]: Tile(**{**d, "center_um": tuple(d["center_um"])})
               for d in calibration["fullfield"]["tiles"]}
    table = json.loads((folder / "tiles.json").read_text())
    tiles = []
    for row in table["tiles"]:
        own = read_result(folder / row["folder"])
        tiles.append(TileResult(planned[row["index"]], own.amplitude, own.phase, own.calibration.to_dict(),
                                float(row["data_misfit"] if row.get("data_misfit") is not None else "nan"),
                                row["stop_reason"], float(row["wall_s"]), pupil=own.pupil))
    rows, cols = calibration["fullfield"]["frame_shape"]
    return FullFieldResult(amplitude=whole.amplitude, phase=whole.phase, pixel_um=whole.object_pixel_um, tiles=tiles,
                           calibration=calibration, frame_shape=(rows, cols),
                           upsample=whole.amplitude.shape[0] // rows, dataset_path=str(dataset))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="field256", choices=sorted(refsim.FIELD_PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--overlap", type=int, default=None)
    parser.add_argument("--upsample", type=int, default=None,
                        help="object pixels per camera pixel (default: 2 for field256, 4 for field1024/field2048, "
                             "whose 15 x 15 LEDs reach illumination NA 0.3: at 3 every calibration tile refuses an LED "
                             "beyond the reconstructed bandwidth, after the whole simulation)")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--calibration-tiles", type=int, default=3)
    parser.add_argument("--no-uncertainty", action="store_true", help="skip the error bars (faster)")
    parser.add_argument("--frame-size", type=int, default=None, help="the sensor's side (default: the preset's)")
    parser.add_argument("--led-disk-na", type=float, default=None,
                        help="light only the LEDs within this nominal illumination NA (default: the preset's grid)")
    parser.add_argument("--simulate-only", action="store_true",
                        help="write OUT/PRESET.tif and OUT/simulation.pkl (the truth) and stop: reconstruct with "
                        "`uafp reconstruct OUT/PRESET.tif --tiles auto --upsample U --out R` (Ctrl-C and --resume it "
                        "over several sittings), then score it with --result R")
    parser.add_argument("--result", type=Path, default=None,
                        help="score this full-field result folder of OUT/PRESET.tif instead of reconstructing "
                        "(the simulation read back from OUT/simulation.pkl)")
    args = parser.parse_args()
    if args.upsample is None:
        args.upsample = DEFAULT_UPSAMPLE.get(args.preset, 4)
    args.out.mkdir(parents=True, exist_ok=True)
    from dataclasses import replace

    spec = refsim.FIELD_PRESETS[args.preset]
    micro = replace(spec.micro, seed=args.seed, led_disk_na=args.led_disk_na)
    if args.frame_size is not None:
        micro = replace(micro, frame_size=args.frame_size)
    spec = replace(spec, micro=micro)
    dataset = args.out / f"{args.preset}.tif"
    saved = args.out / "simulation.pkl"
    started = time.perf_counter()
    if args.result is not None:  # the simulation of an earlier --simulate-only run, its frames in the dataset
        with saved.open("rb") as file:
            simulation = pickle.load(file)
        if simulation.spec != spec:
            raise SystemExit(f"{saved} was simulated with other options (preset, seed, frame size, LEDs)")
    else:
        simulation = refsim.simulate_field(spec)
        write_dataset(dataset, simulation.meta, simulation.frames)
        with saved.open("wb") as file:  # the truth without the frames (they are in the dataset)
            pickle.dump(replace(simulation, frames=np.zeros((0, 0, 0), np.uint16)), file)
    simulated_s = time.perf_counter() - started
    print(f"simulated {simulation.meta.frame_count} frames of {micro.frame_size}^2 in {simulated_s:.0f} s "
          f"({simulation.subsamples} sub-samples)", flush=True)
    if args.simulate_only:
        print(f"wrote {dataset} and {saved}")
        return

    settings = UafpSettings(upsample=args.upsample, iterations=args.iterations, device="cpu",
                            uncertainty=not args.no_uncertainty)
    started = time.perf_counter()

    def progress(update) -> None:
        if update.result is not None:
            print(f"  {update.stage} {update.done}/{update.total}: tile {update.tile.index} "
                  f"{update.result.wall_s:.0f} s, {update.result.stop_reason}", flush=True)

    if args.result is not None:
        result = read_full_field(args.result, dataset)
        args.upsample = result.upsample
    else:
        result = reconstruct_full_field(dataset, tile_size=args.tile_size, overlap=args.overlap, settings=settings,
                                        progress=progress, calibration_tiles=args.calibration_tiles)
    wall_s = time.perf_counter() - started
    figures, truth = quality(result, simulation, args.upsample)
    calibration = result.calibration
    out = {
        "command": " ".join(sys.argv),
        "preset": args.preset,
        "frames": list(simulation.frames.shape),
        "simulation_s": simulated_s,
        "reconstruction_s": wall_s,
        "tiles": len(result.tiles),
        "tile_wall_s": [r.wall_s for r in result.tiles],
        "calibration_tile_wall_s": [r.wall_s for r in result.calibration_tiles],
        "quality": figures,
        "geometry": geometry_errors(calibration["led_geometry"], simulation.micro),
        "calibration_tile_geometries": [r.calibration["led_geometry"] for r in result.calibration_tiles],
        "aberration": aberration_errors(calibration, simulation),
        "aberration_models": aberration_models(calibration, simulation),
        "stitching": calibration["fullfield"]["stitching"],
        "stitching_variants": stitching_variants(result, truth, args.upsample),
    }
    (args.out / "acceptance.json").write_text(json.dumps(out, indent=2))
    seam_picture(result, truth, args.out / "seams.png", args.upsample)
    from uafp_gui.fullfield.aberration import draw_aberration_map

    draw_aberration_map(calibration, args.out / "aberration_map.png")
    q = figures
    g = out["geometry"]
    print(f"stitched PSNR {q['stitched_psnr_db']:.2f} dB, mean tile PSNR {q['mean_tile_psnr_db']:.2f} dB "
          f"(difference {q['stitched_minus_mean_tile_db']:+.2f} dB), "
          f"pooled tile PSNR {q['tile_pooled_psnr_db']:.2f} dB "
          f"(difference {q['stitched_minus_pooled_tile_db']:+.2f} dB)")
    for name, variant in out["stitching_variants"].items():
        print(f"stitched with {name:13s}: phase RMSE {variant['stitched_phase_rmse_rad']:.3f} rad, amplitude PSNR "
              f"{variant['stitched_psnr_db']:.2f} dB, worst overlap phase residual "
              f"{variant['max_overlap_phase_rms_rad']:.3f} rad")
    print("per-tile phase RMSE (each after its own plane): "
          + ", ".join(f"{t['phase_rmse_rad']:.2f}" for t in q["tiles"]))
    print("geometry errors " + ", ".join(f"{k} {v:+.3f}" for k, v in g["errors"].items()) + f"; within {g['within']}")
    print(f"aberration map error: max {out['aberration']['map_error_rms_rad_max']:.3f} rad, "
          f"mean {out['aberration']['map_error_rms_rad_mean']:.3f} rad")
    for name, entry in out["aberration_models"].items():
        print(f"aberration map error, {name:14s} field model: " + "; ".join(
            f"{key} max {v['max_rad']:.3f} mean {v['mean_rad']:.3f} rad" for key, v in entry.items()
            if key != "field_dependence"))
    print(f"reconstruction {wall_s:.0f} s for {len(result.tiles)} tiles (+ {len(result.calibration_tiles)} "
          f"calibration runs); mean tile {np.mean(out['tile_wall_s']):.0f} s")


if __name__ == "__main__":
    main()
