"""`uafp reconstruct DATASET --tiles auto|SIZE`: the whole field, tile by tile, in parallel, stitched.

The options are checked (and the tiles planned from the metadata alone) before any work starts.
Tiles run on local worker processes (`--workers`, default all cores; one with a GPU) or on an
existing Dask cluster (`--scheduler tcp://HOST:PORT`); a bar per stage shows every finished tile.
Ctrl-C (or SIGTERM) stops the run: the tiles already finished are written to the result folder
(`tiles/`, `tiles.json` marked partial, and their mosaic as `mosaic.ome.zarr` / `mosaic.ome.tif`
with NaN where tiles are missing) and the exit code is 130 (143). Tiles that fail after their
retries do not stop the others; then the finished tiles are written the same way (`tiles.json` and
the mosaic's metadata also list the failed tiles and why), one error line says what to try, and the
exit code is 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from uafp_gui.cli.options import whole_number
from uafp_gui.errors import ConfigError, ReconstructionError

if TYPE_CHECKING:
    from tqdm import tqdm

    from uafp_gui.fullfield.pipeline import FullFieldProgress, RunTasks, TileTask
    from uafp_gui.fullfield.region import FieldInfo
    from uafp_gui.fullfield.tiles import TileResult

AUTO = "auto"


def tile_size(text: str) -> int | str:
    """`--tiles`: "auto" (the size from the optics) or camera pixels."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return whole_number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: give auto or a tile size in camera pixels") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "whole field of view (tiles reconstructed in parallel with one shared calibration, then stitched)"
    )
    group.add_argument(
        "--tiles",
        type=tile_size,
        default=None,
        metavar="auto|SIZE",
        help="reconstruct the whole field in square tiles of SIZE camera pixels (auto: from the optics, "
        "128-256 px); writes the mosaic, OME-Zarr and OME-TIFF pyramids, per-tile results and the aberration map",
    )
    group.add_argument("--overlap", type=whole_number, default=None, metavar="PX",
                       help="tile overlap in camera pixels (default: from the optics, >= 12.5 %% of the tile)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run the tiles on an existing Dask cluster (tcp://HOST:PORT); its workers need uafp_gui "
                       "and the dataset at the same path")
    group.add_argument("--workers", type=whole_number, default=None, metavar="N",
                       help="local worker processes (default: all cores; 1 with a GPU)")
    group.add_argument("--calibration-tiles", type=whole_number, default=3, metavar="N",
                       help="tiles that self-calibrate the shared LED geometry and gains (default 3)")


def wanted(args: argparse.Namespace) -> bool:
    """The full-field options are in use (then `--tiles` is required)."""
    used = [flag for flag, value in (("--overlap", args.overlap), ("--scheduler", args.scheduler),
                                     ("--workers", args.workers)) if value is not None]
    if args.tiles is None:
        if used:
            raise ConfigError(f"{', '.join(used)}: for a tiled run; add --tiles auto (or --tiles SIZE)")
        return False
    return True


def check_options(args: argparse.Namespace) -> None:
    """What can be refused from the command line alone (before the dataset is opened)."""
    from uafp_gui.fullfield.execute import check_scheduler_address

    if args.method != "uafp":
        raise ConfigError("--tiles runs UA-FP (one shared calibration for every tile): drop --method classic")
    if isinstance(args.tiles, int) and args.tiles < 1:
        raise ConfigError(f"--tiles {args.tiles}: give a tile size of 1 or more camera pixels, or auto")
    if args.overlap is not None and args.overlap < 0:
        raise ConfigError(f"--overlap {args.overlap}: give 0 or more pixels")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give 1 or more worker processes")
    if args.calibration_tiles < 1:
        raise ConfigError(f"--calibration-tiles {args.calibration_tiles}: give 1 or more")
    if args.scheduler is not None:
        args.scheduler = check_scheduler_address(args.scheduler)
        if args.workers is not None:
            raise ConfigError("--workers sets local worker processes: a --scheduler cluster has its own workers")
    if args.freeze_system and args.calibration is None:
        raise ConfigError("--freeze-system with --tiles needs --calibration (the system to hold fixed)")


class RecordingRunner:
    """Wraps a `RunTasks`: keeps each stage's finished results (what Ctrl-C writes) and its start calibration."""

    def __init__(self, runner: RunTasks) -> None:
        self.runner = runner
        self.finished: list[TileResult] = []
        self.planned = 0
        self.calibration: dict | None = None

    def __call__(
        self,
        fn: Callable[[TileTask], TileResult],
        tasks: Sequence[TileTask],
        on_done: Callable[[int, TileResult], None],
    ) -> list[TileResult]:
        self.finished, self.planned = [], len(tasks)
        self.calibration = tasks[0].calibration if tasks else None

        def done(position: int, result: TileResult) -> None:
            if result.amplitude.size:  # not a failed calibration tile (empty images)
                self.finished.append(result)
            on_done(position, result)

        return self.runner(fn, tasks, done)


class StageBars:
    """One bar per stage (calibration tiles, then all tiles), a step per finished tile."""

    NAMES = {"calibration": "calibration tiles", "tiles": "tiles"}

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage = ""

    def __call__(self, update: FullFieldProgress) -> None:
        from uafp_gui.cli.progress import progress_bar

        if update.stage not in self.NAMES:
            return
        if update.stage != self.stage:
            self.close()
            self.stage = update.stage
            self.bar = progress_bar(update.total, self.NAMES[update.stage], "tile")
        if update.result is not None and self.bar is not None and update.tile is not None:
            self.bar.update(update.done - self.bar.n)
            self.bar.set_postfix(tile=update.tile.index, misfit=f"{update.result.data_misfit:.3g}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace, out: Path) -> int:
    """The full-field run of `uafp reconstruct` (its options, output folder and dataset already checked)."""
    from uafp_gui.cli.reconstruct import _signals_held, _sigterm_as_interrupt, check_partial, uafp_settings
    from uafp_gui.fullfield.execute import make_runner
    from uafp_gui.fullfield.region import field_info
    from uafp_gui.fullfield.tiles import plan_tiles
    from uafp_gui.io.calibration import load_calibration

    info = field_info(args.dataset)
    check_partial(_PartialView(info), args.allow_partial)
    size = None if args.tiles == AUTO else int(args.tiles)
    tiles = plan_tiles(info.frame_shape, info.meta, size, args.overlap)  # ConfigError for a size that cannot tile
    calibration = load_calibration(args.calibration) if args.calibration else None
    settings = uafp_settings(args)
    runner = make_runner(args.scheduler, args.workers)
    rows, cols = info.frame_shape
    overlap = (tiles[0].x0 + tiles[0].width - tiles[1].x0) if len(tiles) > 1 else 0
    print(f"uafp reconstruct: {args.dataset.name}: {info.meta.frame_count} frames of {rows}x{cols} -> {len(tiles)} "
          f"tiles of {tiles[0].height} px (overlap {overlap} px) on a {runner.description}; Ctrl-C stops and keeps "
          "the finished tiles", file=sys.stderr, flush=True)

    from uafp_gui.fullfield.output import write_finished_tiles, write_full_field
    from uafp_gui.fullfield.pipeline import FullFieldIncomplete, partial_field_aberrations, reconstruct_full_field

    recorder = RecordingRunner(runner)
    bars = StageBars()
    started = time.perf_counter()
    try:
        with _sigterm_as_interrupt(), runner:
            result = reconstruct_full_field(
                args.dataset, tile_size=size, overlap=args.overlap, settings=settings, run_tasks=recorder,
                progress=bars, calibration_tiles=args.calibration_tiles, calibration=calibration,
            )
    except KeyboardInterrupt as interrupt:
        from uafp_gui.cli.reconstruct import Terminated

        bars.close()
        how = "SIGTERM" if isinstance(interrupt, Terminated) else "Ctrl-C"
        finished = list(recorder.finished)
        if finished:
            with _signals_held():
                aberrations = partial_field_aberrations(args.dataset, finished, recorder.calibration, tiles)
                write_finished_tiles(out, finished, info.meta.sample_pixel_um / settings.upsample,
                                     planned=recorder.planned, calibration=recorder.calibration,
                                     source_dataset=args.dataset.name, layout=tiles,
                                     not_finished=f"not finished: stopped by {how}", aberrations=aberrations)
            # what the folder holds (a mosaic or picture that could not be made is left out, with a warning)
            mosaic = ("their mosaic (NaN where tiles are missing) to mosaic.ome.zarr and mosaic.ome.tif"
                      if (out / "mosaic.ome.zarr").exists() else "no mosaic (tiles.json says why)")
            lens = ", their aberration map to aberration_map.png" if (out / "aberration_map.png").exists() else ""
            where = (f"the {len(finished)} finished of {recorder.planned} tiles are written to {out}/tiles/, "
                     f"{mosaic}{lens}")
        else:
            where = "no tile had finished: nothing to write"
        print(f"uafp reconstruct: {how}: stopped; {where}", file=sys.stderr)
        return 143 if how == "SIGTERM" else 130
    except FullFieldIncomplete as incomplete:  # tiles failed after their retries: keep the others
        bars.close()
        written = None
        if incomplete.finished_tiles:
            with _signals_held():
                aberrations = partial_field_aberrations(args.dataset, incomplete.finished_tiles,
                                                        incomplete.calibration, tiles)
                written = write_finished_tiles(
                    out, incomplete.finished_tiles, info.meta.sample_pixel_um / settings.upsample,
                    planned=incomplete.planned, calibration=incomplete.calibration,
                    source_dataset=args.dataset.name, failed=incomplete.failed, layout=tiles,
                    aberrations=aberrations,
                )
        raise ReconstructionError(incomplete.advice(written)) from None  # one line, exit code 2
    finally:
        bars.close()
    with _signals_held():
        write_full_field(out, result, source_dataset=args.dataset.name)
    elapsed = time.perf_counter() - started
    height, width = result.amplitude.shape
    print(f"full field: {len(result.tiles)} tiles in {elapsed:.1f} s; mosaic {width}x{height} at "
          f"{result.pixel_um:.4g} um")
    for line in summary_lines(result.calibration):
        print(line)
    print(f"wrote {out}/ (mosaic.ome.zarr, mosaic.ome.tif, tiles/, aberration_map.png)")
    return 0


def summary_lines(calibration: dict) -> list[str]:
    geometry = calibration.get("led_geometry", {})
    lines = [
        "calibration (shared): LED shift {:+.3f}, {:+.3f} mm, rotation {:+.2f} deg, height {:.2f} mm".format(
            geometry.get("shift_x_mm", 0.0), geometry.get("shift_y_mm", 0.0), geometry.get("rotation_deg", 0.0),
            geometry.get("height_mm", float("nan")))
    ]
    summary = (calibration.get("field_aberrations") or {}).get("summary")
    if summary:
        lines.append(
            f"aberrations across the field: max RMS {summary['max_rms_waves']:.3f} waves, min Strehl "
            f"{summary['min_strehl']:.2f}, {100 * summary['diffraction_limited_fraction']:.0f} % diffraction-limited "
            "(Marechal)"
        )
    return lines


class _PartialView:
    """`check_partial`'s view of a `FieldInfo` (no pixels read)."""

    def __init__(self, info: FieldInfo) -> None:
        self.path = info.path
        self.complete = info.complete
        self.frame_count = info.meta.frame_count
        self.planned_frame_count = info.planned_frame_count
