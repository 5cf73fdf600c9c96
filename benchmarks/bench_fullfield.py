"""Benchmark the whole-field reconstruction's execution: 1 vs 2 local workers, and a 2-worker Dask cluster.

A simulated field (default 2048^2 camera pixels x 225 frames: the reference simulator's `field2048`
preset when `benchmarks/refsim.py` has the full-field presets, else `uafp_gui.simulate` at that
frame size) is reconstructed whole (`uafp_gui.fullfield.reconstruct_full_field`: calibration tiles,
then every tile, then the aberration model and the stitching) through:

- `local-1`: `make_runner(workers=1)`, a local Dask cluster of 1 worker process (all cores' torch threads);
- `local-2`: `make_runner(workers=2)`, 2 worker processes (cores / 2 torch threads each);
- `dask-2`: an existing 2-worker `LocalCluster` (processes, 1 thread each), reached by its address
  (`make_runner(scheduler=...)`, the `--scheduler` path);
- optionally `serial`: the pipeline's own `run_serially` in this process (`--serial`).

Printed per configuration: wall time (and cluster start-up time apart), the tile stage's time,
seconds per tile, the peak resident memory of each worker process (its `ru_maxrss` after its last
tile), the workers' CPU seconds, then the speed-up local-1 -> local-2 and the Dask/local ratio. A
time is comparable only within one run on an otherwise idle machine; on a shared machine the CPU
seconds / wall seconds ratio says how many cores the run really had (two processes get twice one's
share of an oversubscribed machine, which inflates a speed-up).

    python benchmarks/bench_fullfield.py                         # 2048^2 x 225 frames (long on a CPU)
    python benchmarks/bench_fullfield.py --size 512 --iterations 5 --led-grid 9   # minutes
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# isort: off
import uafp_gui  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads OpenMP)

# isort: on

sys.path.insert(0, str(Path(__file__).resolve().parent))


def simulate(size: int, led_grid: int, folder: Path, seed: int) -> Path:
    """Write the field dataset; return its path."""
    path = folder / f"field{size}.tif"
    started = time.perf_counter()
    try:
        import refsim

        presets = refsim.FIELD_PRESETS
    except (ImportError, AttributeError):
        presets = None
    if presets is not None:
        spec = presets["field2048"]
        spec = replace(spec, micro=replace(spec.micro, frame_size=size, led_grid=led_grid, seed=seed))
        refsim.write_field_reference(refsim.simulate_field(spec), path)
        source = "refsim field2048 preset"
    else:
        from uafp_gui.simulate import PRESETS, write_simulation
        from uafp_gui.simulate import simulate as render

        settings = PRESETS["misaligned"].replace(frame_size=size, led_grid=led_grid, upsample=4, seed=seed)
        write_simulation(render(settings), path)
        source = "uafp_gui.simulate misaligned preset"
    print(f"simulated {size}x{size} x {led_grid ** 2} frames ({source}) in {time.perf_counter() - started:.1f} s")
    return path


def run(name: str, path: Path, runner, args) -> dict:
    from uafp_gui.fullfield.pipeline import UafpSettings, reconstruct_full_field, run_serially

    settings = UafpSettings(upsample=args.upsample, iterations=args.iterations, device="cpu")
    marks: dict[str, float] = {}

    def progress(update) -> None:
        marks.setdefault(f"{update.stage}_start", time.perf_counter())
        marks[f"{update.stage}_end"] = time.perf_counter()

    started = time.perf_counter()
    startup = 0.0
    if runner is not None:
        runner.start()
        startup = time.perf_counter() - started
    result = reconstruct_full_field(
        path, tile_size=args.tile, overlap=args.overlap, settings=settings,
        run_tasks=runner if runner is not None else run_serially, progress=progress,
        calibration_tiles=args.calibration_tiles,
    )
    wall = time.perf_counter() - started
    peaks: dict[int, float] = {}
    for stats in getattr(runner, "stats", []):
        peaks[stats.worker_pid] = max(peaks.get(stats.worker_pid, 0.0), stats.peak_rss_mb)
    if runner is None:
        import resource

        peaks[os.getpid()] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tiles_s = marks.get("tiles_end", 0.0) - marks.get("tiles_start", 0.0)
    cpu_s = sum(s.cpu_s for s in getattr(runner, "stats", []))
    figure = {"name": name, "wall_s": wall, "cpu_s": cpu_s, "startup_s": startup, "tiles_s": tiles_s,
              "tiles": len(result.tiles), "peak_mb": sorted(peaks.values(), reverse=True),
              "shape": result.amplitude.shape}
    print(f"{name:8s} wall {wall:8.1f} s (start-up {startup:5.1f} s), tile stage {tiles_s:8.1f} s = "
          f"{tiles_s / max(1, len(result.tiles)):6.1f} s/tile over {len(result.tiles)} tiles; workers' CPU "
          f"{cpu_s:7.1f} s; peak RSS per worker "
          f"{', '.join(f'{p:.0f}' for p in figure['peak_mb'])} MB; mosaic {result.amplitude.shape}", flush=True)
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="camera pixels a side (default 2048)")
    parser.add_argument("--led-grid", type=int, default=15, help="LEDs a side (default 15 = 225 frames)")
    parser.add_argument("--iterations", type=int, default=None, help="iterations per tile (default: engine's)")
    parser.add_argument("--upsample", type=int, default=4, help="object pixels per camera pixel (default 4)")
    parser.add_argument("--tile", type=int, default=None, help="tile size (default: from the optics)")
    parser.add_argument("--overlap", type=int, default=None)
    parser.add_argument("--calibration-tiles", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=["local-1", "local-2", "dask-2"],
                        choices=["serial", "local-1", "local-2", "dask-2"])
    parser.add_argument("--serial", action="store_true", help="also run in this process (run_serially)")
    parser.add_argument("--dataset", type=Path, default=None, help="use this dataset instead of simulating")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configs = list(args.configs) + (["serial"] if args.serial and "serial" not in args.configs else [])

    from distributed import LocalCluster

    from uafp_gui.fullfield.execute import LOCAL_HTTP, make_runner

    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="bench_fullfield_") as scratch:
        path = args.dataset or simulate(args.size, args.led_grid, Path(scratch), args.seed)
        figures = {}
        for name in configs:
            if name == "serial":
                figures[name] = run(name, path, None, args)
            elif name.startswith("local-"):
                with make_runner(workers=int(name.split("-")[1])) as runner:
                    figures[name] = run(name, path, runner, args)
            else:
                with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, scheduler_kwargs=LOCAL_HTTP,
                                  silence_logs=logging.ERROR) as cluster:
                    with make_runner(cluster.scheduler_address) as runner:
                        figures[name] = run(name, path, runner, args)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if "local-1" in figures and "local-2" in figures:
        one, two = figures["local-1"], figures["local-2"]
        print(f"speed-up 1 -> 2 local workers: wall {one['wall_s'] / two['wall_s']:.2f}x, tile stage "
              f"{one['tiles_s'] / max(two['tiles_s'], 1e-9):.2f}x")
    if "local-2" in figures and "dask-2" in figures:
        two, dask = figures["local-2"], figures["dask-2"]
        print(f"2-worker Dask LocalCluster (by address) / 2 local workers: wall {dask['wall_s'] / two['wall_s']:.2f}, "
              f"tile stage {dask['tiles_s'] / max(two['tiles_s'], 1e-9):.2f}")
    for name, figure in figures.items():
        if figure["cpu_s"] > 0:  # under load a process's CPU share, not the cores, limits: this ratio tells
            print(f"{name}: workers' CPU seconds / wall seconds = {figure['cpu_s'] / figure['wall_s']:.2f} "
                  f"(the cores the run actually got)")
    peak = max((p for f in figures.values() for p in f["peak_mb"]), default=float("nan"))
    print(f"largest worker peak RSS: {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
