"""The whole field of view: calibrate once, reconstruct every tile, fit the lens's aberrations, stitch.

`reconstruct_full_field` runs in stages, each a batch of `TileTask`s handed to an executor
(`run_tasks`: `run_serially` here; local-parallel and Dask ones in `fullfield.execute`):

1. calibration: the best-conditioned tiles (`calibrate.choose_calibration_tiles`) self-calibrate with
   the engine's normal run; their LED geometries and gains are combined into one calibration;
2. tiles: every tile runs with that geometry and those gains held fixed and its own pupil free;
3. the tiles' pupils give the field-dependent aberration model and map (`aberration`), the tiles are
   aligned and blended into amplitude and phase mosaics (`stitch`).

`reconstruct_tile` is the one task function: top-level and with picklable arguments, it reads only
its tile's region of the raw stack (`region.read_region`), so a worker never holds the whole stack.

A tile that fails (after its retries, on an executor that retries: `TilesFailed` from the executor)
never loses the others: in stage 1 it counts as a failed calibration tile; in stage 2
`FullFieldIncomplete` carries the finished tiles, the failed ones and why, and the shared calibration,
for the front end to write (the finished tiles and their mosaic with holes, and the lens-inspection report
of the finished tiles: `partial_field_aberrations`).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from uafp_gui.errors import TilesFailed
from uafp_gui.fullfield.aberration import evaluate_model, field_aberrations
from uafp_gui.fullfield.calibrate import (
    boundary_frames,
    choose_calibration_tiles,
    combine_calibrations,
    fixed_system_settings,
    tile_start_calibration,
)
from uafp_gui.fullfield.region import field_info, read_region
from uafp_gui.fullfield.stitch import stitch
from uafp_gui.fullfield.tiles import Tile, TileResult, plan_tiles
from uafp_gui.io.calibration import Calibration
from uafp_gui.recon.settings import UafpSettings

DEFAULT_CALIBRATION_TILES = 3


@dataclass(frozen=True)
class TileTask:
    """One tile's work, picklable: the dataset's path (the worker reads its region), the tile, the engine's
    settings as plain values, and the shared calibration to start from (or hold fixed), if any."""

    dataset_path: str
    tile: Tile
    settings: dict
    calibration: dict | None = None


RunTasks = Callable[
    [Callable[[TileTask], TileResult], Sequence[TileTask], Callable[[int, TileResult], None]], list[TileResult]
]


@dataclass(frozen=True)
class FullFieldProgress:
    """Where a full-field run is: `stage` "calibration" | "tiles" | "stitching" | "done"; `done` of `total`
    tasks of that stage; the tile just finished and its result (the GUI fills the mosaic from it)."""

    stage: str
    done: int
    total: int
    tile: Tile | None = None
    result: TileResult | None = None
    message: str = ""
    calibration: dict | None = None  # at the start of "tiles": the shared calibration every tile runs with


@dataclass
class FullFieldResult:
    """The stitched field and everything it came from."""

    amplitude: np.ndarray  # float32 (H * upsample, W * upsample)
    phase: np.ndarray  # float32, radians (wrapped)
    pixel_um: float  # mosaic pixel size in the sample plane
    tiles: list[TileResult]
    calibration: dict  # global geometry + gains, `field_aberrations`, `fullfield` (tiling, stitching)
    calibration_tiles: list[TileResult] = field(default_factory=list)  # the stage-1 runs
    frame_shape: tuple[int, int] = (0, 0)
    upsample: int = 1
    dataset_path: str = ""


def settings_to_dict(settings: UafpSettings) -> dict:
    """`UafpSettings` as plain values (enums as their strings): what a `TileTask` carries."""
    out = {}
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        out[item.name] = value.value if isinstance(value, Enum) else value
    return out


def run_serially(
    fn: Callable[[TileTask], TileResult], tasks: Sequence[TileTask], on_done: Callable[[int, TileResult], None]
) -> list[TileResult]:
    """The plain executor: one task after the other in this process, each tried once. A task that raises
    does not stop the others; when all have run, `TilesFailed` carries the finished results and the failures."""
    results: dict[int, TileResult] = {}
    failures: dict[int, str] = {}
    for position, task in enumerate(tasks):
        try:
            result = fn(task)
        except Exception as error:  # noqa: BLE001 - every failure is reported below, with its tile
            failures[position] = f"{type(error).__name__}: {error}"
            continue
        on_done(position, result)
        results[position] = result
    if failures:
        position, reason = min(failures.items())
        raise TilesFailed(
            f"{len(failures)} of {len(tasks)} tiles failed (tile {position}: {reason}); the other {len(results)} "
            "finished",
            finished=results, failures=failures, planned=len(tasks), tries=1,
        )
    return [results[k] for k in range(len(tasks))]


class FullFieldIncomplete(TilesFailed):
    """Tiles of the second stage failed (after their retries, when the executor retries) while the others finished.

    `finished`: the finished tiles' `TileResult`s (tile order); `failed`: (tile, reason) of each failed tile;
    `planned`: the tiles of the field; `calibration`: the shared calibration the tiles ran with (a dict);
    `tries`: how often each failed tile was tried (the executor's `TilesFailed.tries`; 1 for `run_serially`).
    A front end writes the finished tiles as a partial result (`output.write_finished_tiles(failed=...,
    layout=...)`: their tiles and their mosaic with holes) and says what to try (`advice`): nothing
    finished is lost.
    """

    def __init__(self, finished: list[TileResult], failed: list[tuple[Tile, str]], planned: int,
                 calibration: dict | None, tries: int | None = None) -> None:
        first, reason = failed[0]
        how = f"failed after their retries, {tries} tries each" if tries is not None and tries > 1 else "failed"
        super().__init__(
            f"{len(failed)} of {planned} tiles {how} (tile {first.index}, row {first.grid_row} "
            f"column {first.grid_col}: {reason})",
            finished={r.tile.index: r for r in finished},
            failures={tile.index: why for tile, why in failed},
            planned=planned,
            tries=tries,
        )
        self.finished_tiles = list(finished)
        self.failed = list(failed)
        self.calibration = calibration

    def advice(self, written: str | os.PathLike[str] | None) -> str:
        """The whole message for a user: what failed, where the finished tiles are (and what of their mosaic
        and aberration map the folder `written` holds), what to try."""
        if written is not None:
            folder = Path(written)
            mosaic = ("their mosaic.ome.zarr and mosaic.ome.tif with NaN where tiles are missing"
                      if (folder / "mosaic.ome.zarr").exists() else "no mosaic (tiles.json says why)")
            lens = ", their aberration map aberration_map.png" if (folder / "aberration_map.png").exists() else ""
            where = (f"the {len(self.finished_tiles)} finished tiles are written to {written} (tiles/, and "
                     f"{mosaic}{lens}; tiles.json marks the result partial and lists the failed tiles and why)")
        else:
            where = "no tile finished: nothing to write"
        if self.tries is not None and self.tries > 1:
            again = "run it again (a tile lost with its worker usually succeeds the next time); if the same tile " \
                    "fails again, use fewer workers when a worker ran out of memory, or another tile size or overlap " \
                    "so that its region changes"
        else:
            again = "run it again (these tiles were tried once); if the same tile fails again, another tile size " \
                    "or overlap so that its region changes"
        return f"{self}; {where}. Try: {again}"


def reconstruct_tile(task: TileTask) -> TileResult:
    """Reconstruct one tile: its region of the raw frames, the engine's run, numpy results only."""
    from uafp_gui.recon.uafp import UafpReconstruction

    started = time.perf_counter()
    frames, meta = read_region(task.dataset_path, task.tile)
    settings = UafpSettings(**task.settings)
    calibration = Calibration.from_dict(task.calibration) if task.calibration is not None else None
    recon = UafpReconstruction(
        meta, frames.shape[1:], settings, calibration, source_dataset=Path(task.dataset_path).name
    )
    recon.add_frames(frames, 0)
    for _ in recon.run():
        pass
    result = recon.result()
    data = result.calibration().to_dict()
    data["tile"] = {"index": task.tile.index, "y0": task.tile.y0, "x0": task.tile.x0, "height": task.tile.height,
                    "width": task.tile.width, "center_um": list(task.tile.center_um)}
    return TileResult(
        tile=task.tile,
        amplitude=np.abs(result.object_field).astype(np.float32),
        phase=np.angle(result.object_field).astype(np.float32),
        calibration=data,
        data_misfit=float(result.extra.get("data_misfit", float("nan"))),
        stop_reason=str(recon.stop_reason),
        wall_s=time.perf_counter() - started,
        pupil=np.stack([np.abs(result.pupil), np.angle(result.pupil)]).astype(np.float32),
    )


def calibrate_tile(task: TileTask) -> TileResult:
    """Stage 1's task: `reconstruct_tile`, but a tile whose run fails (the engine's or a setting's error) comes
    back as a result with stop_reason "engine_error" (and empty images) so the other calibration tiles still count."""
    from uafp_gui.errors import ConfigError, ReconstructionError

    started = time.perf_counter()
    try:
        return reconstruct_tile(task)
    except (ReconstructionError, ConfigError) as error:
        return _failed_tile(task.tile, str(error), time.perf_counter() - started)


def _failed_tile(tile: Tile, reason: str, wall_s: float = float("nan")) -> TileResult:
    """A calibration tile whose run failed: empty images, stop_reason "engine_error", the reason kept."""
    empty = np.zeros((0, 0), dtype=np.float32)
    return TileResult(tile, empty, empty, {"error": reason}, float("nan"), "engine_error", wall_s)


def _zernike_of(result: TileResult) -> dict[int, float]:
    return {int(j): float(v) for j, v in result.calibration.get("zernike_rad", {}).items()}


def _zernike_std_of(result: TileResult) -> dict[int, float | None]:
    return {int(j): v for j, v in (result.calibration.get("zernike_rad_std") or {}).items()}


def _field_extent_um(info) -> tuple[float, float, float, float]:
    """x_min, x_max, y_min, y_max of the whole frame in the sample plane (micrometres)."""
    meta = info.meta
    pixel_um = meta.camera_pixel_um / meta.magnification
    rows, cols = info.frame_shape
    cx, cy = meta.tile_center_um
    return cx - cols / 2 * pixel_um, cx + cols / 2 * pixel_um, cy - rows / 2 * pixel_um, cy + rows / 2 * pixel_um


MIN_MAP_TILES = 3  # a map needs a field dependence (1, x, y from 3 tile centres); fewer tiles: their own values


def partial_field_aberrations(
    dataset_path: str | os.PathLike[str],
    finished: Sequence[TileResult],
    calibration: Calibration | dict | None,
    layout: Sequence[Tile],
    *,
    aberration_order: int = 2,
) -> dict | None:
    """The lens-inspection report of a partial run (stopped, or tiles failed) from its finished second-stage
    tiles, so that it is not lost with the missing ones: from `MIN_MAP_TILES` finished tiles the field
    model and map as a whole run's (`aberration.field_aberrations`, fitted on these tiles only), from 1 or 2
    each tile's own values; marked `partial` with the tiles used and the missing tiles' centres (where the
    map is the model's guess). None without the shared `calibration` the tiles ran with (a stop during the
    calibration stage: those tiles' pupils share no LED geometry) or without a finished tile. A report that
    cannot be made never costs the finished tiles: a warning says why, and None."""
    tiles = sorted((r for r in finished if r.calibration.get("zernike_rad")), key=lambda r: r.tile.index)
    if calibration is None or not tiles:
        return None
    try:
        return _partial_field_aberrations(dataset_path, tiles, calibration, layout, aberration_order)
    except Exception as error:  # noqa: BLE001 - the finished tiles matter more than their report: said below
        warnings.warn(f"the finished tiles' aberration map could not be made ({type(error).__name__}: {error}); "
                      "the tiles are written without it", stacklevel=2)
        return None


def _partial_field_aberrations(dataset_path: str | os.PathLike[str], tiles: list[TileResult],
                               calibration: Calibration | dict, layout: Sequence[Tile], aberration_order: int) -> dict:
    from uafp_gui.fullfield.aberration import MARECHAL_STREHL, tile_reports

    shared = calibration if isinstance(calibration, Calibration) else Calibration.from_dict(calibration)
    info = field_info(dataset_path)
    used = {r.tile.index for r in tiles}
    missing = [t for t in layout if t.index not in used]
    centres, zernikes = [r.tile.center_um for r in tiles], [_zernike_of(r) for r in tiles]
    if len(tiles) >= MIN_MAP_TILES:
        out = field_aberrations(centres, zernikes, [_zernike_std_of(r) for r in tiles],
                                field_extent_um=_field_extent_um(info), led_geometry=shared.led_geometry.to_dict(),
                                wavelength_um=info.meta.wavelength_um, max_order=aberration_order)
        note = ("fitted on the finished tiles only: near the missing tiles' centres the map is the model's "
                "interpolation, beyond the finished tiles' centres its extrapolation")
    else:
        out = {
            "description": "each finished tile's own pupil (lens aberrations with the LED geometry held at the "
            f"global calibration); Marechal: Strehl = exp(-rms_rad^2), diffraction-limited when Strehl >= "
            f"{MARECHAL_STREHL}",
            "tiles": tile_reports(centres, zernikes),
            "led_geometry": shared.led_geometry.to_dict(),
            "wavelength_um": float(info.meta.wavelength_um),
        }
        note = f"too few finished tiles for a field model ({len(tiles)} < {MIN_MAP_TILES}): each tile's own values"
    out["partial"] = {
        "partial": True,
        "note": note,
        "tiles_used": sorted(used),
        "planned_tiles": len(layout),
        "missing_tile_centres_um": [[float(c) for c in t.center_um] for t in missing],
    }
    return out


def reconstruct_full_field(
    dataset_path: str | os.PathLike[str],
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    settings: UafpSettings = UafpSettings(),
    run_tasks: RunTasks = run_serially,
    progress: Callable[[FullFieldProgress], None] | None = None,
    calibration_tiles: int = DEFAULT_CALIBRATION_TILES,
    calibration: Calibration | dict | None = None,
    aberration_order: int = 2,
) -> FullFieldResult:
    """Reconstruct the whole field of a dataset (module docstring).

    `calibration_tiles`: how many tiles self-calibrate the LED geometry and gains (stage 1);
    `calibration`: a known calibration (e.g. a previous field's), which skips stage 1.
    """
    dataset_path = str(dataset_path)
    info = field_info(dataset_path)
    meta = info.meta
    tiles = plan_tiles(info.frame_shape, meta, tile_size, overlap)
    report = progress or (lambda _p: None)
    base = settings_to_dict(settings)

    def on_done_for(stage: str, batch: Sequence[TileTask]) -> Callable[[int, TileResult], None]:
        count = [0]

        def on_done(position: int, result: TileResult) -> None:
            count[0] += 1
            report(FullFieldProgress(stage, count[0], len(batch), batch[position].tile, result))

        return on_done

    calibration_results: list[TileResult] = []
    if calibration is None:
        chosen = choose_calibration_tiles(tiles, meta, calibration_tiles)
        batch = [TileTask(dataset_path, tiles[k], base, None) for k in chosen]
        report(FullFieldProgress("calibration", 0, len(batch), message=f"self-calibrating on tiles {chosen}"))
        try:
            calibration_results = run_tasks(calibrate_tile, batch, on_done_for("calibration", batch))
        except TilesFailed as failed:  # e.g. a worker lost on every try: as calibrate_tile's own engine errors
            calibration_results = [
                failed.finished[k] if k in failed.finished else _failed_tile(batch[k].tile, failed.failures[k])
                for k in range(len(batch))
            ]
        shared = combine_calibrations(calibration_results)
    else:
        shared = calibration if isinstance(calibration, Calibration) else Calibration.from_dict(calibration)

    fixed = settings_to_dict(fixed_system_settings(settings))
    start = tile_start_calibration(shared)
    batch = [TileTask(dataset_path, tile, fixed, start) for tile in tiles]
    report(FullFieldProgress("tiles", 0, len(batch), message=f"{len(batch)} tiles, geometry and gains fixed",
                             calibration=start))
    try:
        results = run_tasks(reconstruct_tile, batch, on_done_for("tiles", batch))
    except TilesFailed as failed:
        finished = [failed.finished[k] for k in sorted(failed.finished)]
        raise FullFieldIncomplete(
            finished, [(batch[k].tile, failed.failures[k]) for k in sorted(failed.failures)], len(batch), start,
            tries=failed.tries,
        ) from failed

    report(FullFieldProgress("stitching", 0, 1, message="aberration model and mosaic"))
    upsample = int(settings.upsample)
    amplitude, phase, alignment = stitch(
        tiles, [r.amplitude for r in results], [r.phase for r in results], info.frame_shape, upsample
    )
    pixel_um = meta.camera_pixel_um / meta.magnification
    rows, cols = info.frame_shape
    cx, cy = meta.tile_center_um
    aberrations = field_aberrations(
        [r.tile.center_um for r in results],
        [_zernike_of(r) for r in results],
        [_zernike_std_of(r) for r in results],
        field_extent_um=_field_extent_um(info),
        led_geometry=shared.led_geometry.to_dict(),
        wavelength_um=meta.wavelength_um,
        max_order=aberration_order,
    )
    out = shared.to_dict()
    # The calibration's own pupil is the lens's at the field centre (the model's); the field dependence is extra.
    centre = evaluate_model(aberrations["model"], np.array((cx,)), np.array((cy,)))
    out["zernike_rad"] = {str(j): float(v[0]) for j, v in sorted(centre.items())}
    out["object_pixel_um"] = pixel_um / upsample
    out["field_aberrations"] = aberrations
    out["fullfield"] = {
        "frame_shape": [int(rows), int(cols)],
        "tile_size": [tiles[0].height, tiles[0].width],
        "tiles": [dataclasses.asdict(t) for t in tiles],
        "calibration_tiles": [r.tile.index for r in calibration_results],
        # frames whose LED is bright field in part of the tile and dark field in the rest (nominal geometry)
        "boundary_frames": [boundary_frames(meta, t) for t in tiles],
        "calibration_given": calibration is not None,
        "stitching": {
            "reference_tile": int(alignment.reference),
            "phase_offset_rad": [float(v) for v in alignment.offset_rad],
            "phase_ramp_rad_per_px": [[float(a), float(b)] for a, b in alignment.ramp_rad_per_px],
            "amplitude_scale": [float(v) for v in alignment.amplitude_scale],
            "max_overlap_phase_rms_rad": float(max(alignment.pair_residual_rad.values(), default=0.0)),
        },
        "tile_stop_reasons": [r.stop_reason for r in results],
        "tile_data_misfit": [r.data_misfit for r in results],
        "tile_wall_s": [r.wall_s for r in results],
    }
    report(FullFieldProgress("done", 1, 1))
    return FullFieldResult(
        amplitude=amplitude,
        phase=phase,
        pixel_um=pixel_um / upsample,
        tiles=list(results),
        calibration=out,
        calibration_tiles=list(calibration_results),
        frame_shape=(int(rows), int(cols)),
        upsample=upsample,
        dataset_path=dataset_path,
    )


__all__ = [
    "FullFieldIncomplete", "FullFieldProgress", "FullFieldResult", "MIN_MAP_TILES", "RunTasks", "TileTask",
    "calibrate_tile", "partial_field_aberrations", "reconstruct_full_field", "reconstruct_tile", "run_serially",
    "settings_to_dict",
]
