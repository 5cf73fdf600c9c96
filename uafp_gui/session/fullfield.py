"""Full-field and region reconstructions for a front end (the GUI), Qt-free.

- `crop_region(dataset, y0, x0, height, width)`: a region of a dataset as a dataset of its own, its
  `tile_center_um` moved to the region's centre (spec section 2), so the one-field reconstruction
  (`LiveReconstruction`) runs on it with each LED's own angle there.
- `FullFieldJob`: `reconstruct_full_field` on a `TileRunner` (local worker processes or a Dask
  cluster), run on a thread of its own while `run()` yields every `FullFieldProgress` as it comes (a
  GUI worker iterates it; `stop()` cancels the tiles at once); at the end the result folder is
  written (or, when stopped or when tiles failed after their retries, the finished tiles and their
  mosaic with NaN holes; then `run()` raises a `ReconstructionError` that says where they are and
  what to try, and `partial` says what finished, what is missing and where the mosaic is).
- `MosaicCanvas`: the mosaic as tiles arrive (each pasted where it lies, at most `max_side` pixels
  a side for the view), for a view to fill tile by tile.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from uafp_gui.errors import ConfigError, ReconstructionError, RunCancelled

if TYPE_CHECKING:
    from uafp_gui.fullfield.execute import TileRunner
    from uafp_gui.fullfield.output import PartialSummary
    from uafp_gui.fullfield.pipeline import FullFieldProgress, FullFieldResult
    from uafp_gui.fullfield.tiles import Tile, TileResult
    from uafp_gui.io.calibration import Calibration
    from uafp_gui.io.dataset import Dataset
    from uafp_gui.recon.settings import UafpSettings

__all__ = ["FullFieldJob", "MosaicCanvas", "crop_region", "full_field_folder_for", "local_workers_beside_a_ui"]

MOSAIC_VIEW_SIDE = 2048  # the mosaic the view holds: a large field is shown decimated


def local_workers_beside_a_ui() -> int:
    """Local worker processes for a run beside a UI: all cores but one."""
    return max(1, (os.cpu_count() or 2) - 1)


def crop_region(dataset: Dataset, y0: int, x0: int, height: int, width: int) -> Dataset:
    """`dataset`'s frames in rows y0..y0+height, columns x0..x0+width, with the region's centre as its
    `tile_center_um`. `ConfigError` for a region outside the frames."""
    from uafp_gui.fullfield.tiles import tile_center_um
    from uafp_gui.io.dataset import Dataset

    count, rows, cols = dataset.frames.shape
    if height < 8 or width < 8 or y0 < 0 or x0 < 0 or y0 + height > rows or x0 + width > cols:
        raise ConfigError(
            f"region x {x0}, y {y0}, {width} x {height} px is not inside the {cols} x {rows} frames "
            "(at least 8 px a side)"
        )
    center = tile_center_um(dataset.meta, (rows, cols), y0, x0, height, width)
    meta = dataset.meta.replace(tile_center_um=center)
    frames = np.ascontiguousarray(dataset.frames[:, y0 : y0 + height, x0 : x0 + width])
    return Dataset(meta, frames, path=dataset.path, complete=dataset.complete,
                   planned_frame_count=dataset.planned_frame_count)


class MosaicCanvas:
    """Amplitude and phase mosaics filled tile by tile (NaN where no tile has arrived), decimated by
    `step` so the longer side is at most `max_side` pixels."""

    def __init__(self, frame_shape: tuple[int, int], upsample: int, max_side: int = MOSAIC_VIEW_SIDE) -> None:
        self.upsample = int(upsample)
        full = (int(frame_shape[0]) * self.upsample, int(frame_shape[1]) * self.upsample)
        self.step = max(1, math.ceil(max(full) / max_side))
        shape = (math.ceil(full[0] / self.step), math.ceil(full[1] / self.step))
        self.amplitude = np.full(shape, np.nan, dtype=np.float32)
        self.phase = np.full(shape, np.nan, dtype=np.float32)
        self.tiles_done: list[int] = []

    def paste(self, result: TileResult) -> None:
        """Put a `TileResult` where its tile lies (a later tile covers the overlap)."""
        tile, u, s = result.tile, self.upsample, self.step
        y0, x0 = math.ceil(tile.y0 * u / s), math.ceil(tile.x0 * u / s)
        offset_y, offset_x = y0 * s - tile.y0 * u, x0 * s - tile.x0 * u
        amplitude = np.asarray(result.amplitude)[offset_y::s, offset_x::s]
        phase = np.asarray(result.phase)[offset_y::s, offset_x::s]
        h = min(amplitude.shape[0], self.amplitude.shape[0] - y0)
        w = min(amplitude.shape[1], self.amplitude.shape[1] - x0)
        self.amplitude[y0 : y0 + h, x0 : x0 + w] = amplitude[:h, :w]
        self.phase[y0 : y0 + h, x0 : x0 + w] = phase[:h, :w]
        self.tiles_done.append(int(tile.index))


_END = object()


class FullFieldJob:
    """One whole-field reconstruction (module docstring). After `run()`: `result` (a `FullFieldResult`),
    `written` (the result folder), `stopped` (and `finished_tiles`) or the error raised by `run()`."""

    def __init__(
        self,
        dataset_path: str | os.PathLike[str],
        settings: UafpSettings,
        *,
        tile_size: int | None = None,
        overlap: int | None = None,
        scheduler: str | None = None,
        workers: int | None = None,
        calibration: Calibration | dict | None = None,
        calibration_tiles: int = 3,
        out_folder: str | os.PathLike[str] | None = None,
        runner: TileRunner | None = None,
    ) -> None:
        from uafp_gui.fullfield.execute import make_runner
        from uafp_gui.fullfield.region import field_info
        from uafp_gui.fullfield.tiles import plan_tiles

        self.dataset_path = Path(dataset_path)
        self.info = field_info(self.dataset_path)  # metadata only: cheap, and names a bad file at once
        self.tiles = plan_tiles(self.info.frame_shape, self.info.meta, tile_size, overlap)  # ConfigError here
        self.settings = settings
        self.tile_size, self.overlap = tile_size, overlap
        self.calibration = calibration
        self.calibration_tiles = calibration_tiles
        self.out_folder = Path(out_folder) if out_folder is not None else None
        self.cancel = threading.Event()
        # options checked now, the cluster started in run(); `runner`: any RunTasks with cancel() (tests)
        self.runner = runner if runner is not None else make_runner(scheduler, workers, cancel=self.cancel)
        self.result: FullFieldResult | None = None
        self.written: Path | None = None
        self.stopped = False
        self.finished_tiles: list[TileResult] = []
        self.failed_tiles: list[tuple[Tile, str]] = []  # (tile, why) of tiles that failed after their retries
        self.write_error: BaseException | None = None
        self.partial: PartialSummary | None = None  # a stopped or incomplete run's folder: what is where
        self.partial_aberrations: dict | None = None  # its finished tiles' aberration report (when they allow one)
        self.shared_calibration: dict | None = None  # the calibration the second stage's tiles run with

    @property
    def description(self) -> str:
        rows, cols = self.info.frame_shape
        where = getattr(self.runner, "description", "runner")
        return f"{len(self.tiles)} tiles of {self.tiles[0].height} px over {cols} x {rows} on a {where}"

    def stop(self) -> None:
        self.cancel.set()
        cancel = getattr(self.runner, "cancel", None)
        if cancel is not None:
            cancel()

    def run(self) -> Iterator[FullFieldProgress]:
        """Yields each `FullFieldProgress`; raises what the run raised (not `RunCancelled`: `stopped` is set)."""
        updates: queue.Queue = queue.Queue()
        failure: list[BaseException] = []

        def work() -> None:
            from uafp_gui.fullfield.pipeline import FullFieldIncomplete, reconstruct_full_field

            try:
                with self.runner:
                    self.result = reconstruct_full_field(
                        self.dataset_path, tile_size=self.tile_size, overlap=self.overlap, settings=self.settings,
                        run_tasks=self.runner, progress=self._progress(updates),
                        calibration_tiles=self.calibration_tiles, calibration=self.calibration,
                    )
                self._write()
            except RunCancelled:
                self.stopped = True
                self._write_finished(calibration=self.shared_calibration)
            except FullFieldIncomplete as incomplete:  # tiles failed after their retries: keep the others
                self.failed_tiles = list(incomplete.failed)
                self.finished_tiles = list(incomplete.finished_tiles)
                self._write_finished(failed=incomplete.failed, calibration=incomplete.calibration)
                failure.append(ReconstructionError(incomplete.advice(self.written)))
            except BaseException as error:  # raised by run() on the worker's thread
                failure.append(error)
            finally:
                updates.put(_END)

        thread = threading.Thread(target=work, name="uafp-fullfield", daemon=True)
        thread.start()
        while True:
            item = updates.get()
            if item is _END:
                break
            yield item
        thread.join()
        if failure:
            raise failure[0]

    def _progress(self, updates: queue.Queue):
        stage = [""]

        def report(update: FullFieldProgress) -> None:
            if update.stage in ("calibration", "tiles") and update.stage != stage[0]:
                # what a stop writes: the current stage's tiles (each tile once)
                stage[0] = update.stage
                self.finished_tiles = []
            if update.stage == "tiles" and update.calibration is not None:
                self.shared_calibration = update.calibration
            if update.result is not None and update.result.amplitude.size:  # not a failed calibration tile
                self.finished_tiles.append(update.result)
            updates.put(update)

        return report

    def _write(self) -> None:
        if self.out_folder is None or self.result is None:
            return
        from uafp_gui.fullfield.output import write_full_field

        try:
            self.written = write_full_field(self.out_folder, self.result, source_dataset=self.dataset_path.name)
        except Exception as error:  # noqa: BLE001 - shown by the front end beside the result on screen
            self.write_error = error

    def _write_finished(self, failed: list | tuple = (), calibration: dict | None = None) -> None:
        if self.out_folder is None or not self.finished_tiles:
            return
        from uafp_gui.fullfield.output import read_partial_summary, write_finished_tiles
        from uafp_gui.fullfield.pipeline import partial_field_aberrations

        pixel_um = self.info.meta.sample_pixel_um / self.settings.upsample
        try:
            self.partial_aberrations = partial_field_aberrations(self.dataset_path, self.finished_tiles, calibration,
                                                                 self.tiles)
            self.written = write_finished_tiles(self.out_folder, self.finished_tiles, pixel_um,
                                                planned=len(self.tiles), calibration=calibration,
                                                source_dataset=self.dataset_path.name, failed=failed,
                                                layout=self.tiles, not_finished="not finished: the run was stopped",
                                                aberrations=self.partial_aberrations)
            self.partial = read_partial_summary(self.written)
        except Exception as error:  # noqa: BLE001 - as in _write
            self.write_error = error


def full_field_folder_for(dataset_path: Path, fallback: Path) -> Path:
    """Where a full-field run of `dataset_path` is written: `<stem>_fullfield/` beside the dataset when
    that folder can be written, else `fallback/<stem>_fullfield/`."""
    stem = Path(dataset_path).stem
    parent = Path(dataset_path).parent
    if os.access(parent, os.W_OK | os.X_OK):
        return parent / f"{stem}_fullfield"
    return Path(fallback) / f"{stem}_fullfield"
