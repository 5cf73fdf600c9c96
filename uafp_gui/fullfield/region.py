"""Reading one tile's region of a raw dataset: only the pixels it needs from each TIFF page.

A worker reconstructing one tile never holds the whole stack: uncompressed pages (what this
project's writer makes) are memory-mapped and sliced, so only the tile's rows are read from disk;
compressed or tiled pages go through tifffile's Zarr view of the page, which decodes only the
strips or tiles the region touches. The metadata is read as `uafp_gui.io.dataset` reads it (a
sidecar `<stem>.json` wins over the embedded JSON; a file cut short gives the frames it holds with
a `PartialDatasetWarning`), and the tile's centre becomes the region's `tile_center_um`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.fullfield.tiles import Tile
from uafp_gui.io.dataset import _resolve_tiff_path, present_frames, read_dataset_meta
from uafp_gui.io.pixels import common_dtype, stored_pixels
from uafp_gui.io.schema import DatasetMeta
from uafp_gui.io.tiff import check_frame_size, open_tiff, page_errors, quiet_tifffile, walk_pages


@dataclass(frozen=True)
class FieldInfo:
    """What a dataset holds, without its pixels: the metadata (of the frames present), frame shape, type."""

    path: Path
    meta: DatasetMeta
    frame_shape: tuple[int, int]
    dtype: np.dtype
    complete: bool
    planned_frame_count: int


def _pages(tif, path: Path, meta: DatasetMeta):
    pages, truncated, more = walk_pages(tif, path, path.stat().st_size, len(meta.frames))
    if more:
        raise DatasetError(
            f"{path} holds more than {len(meta.frames)} frames but its metadata lists only {len(meta.frames)}: add "
            "the missing entries to 'frames' (one per frame, in acquisition order) or remove extra pages"
        )
    if not pages:
        raise DatasetError(
            f"{path} holds no complete frame: the acquisition was interrupted before the first "
            "frame was written, or the file is corrupt"
        )
    return pages, truncated


def _frame_shape(page, path: Path) -> tuple[int, int]:
    shape = tuple(n for n in page.shape if n != 1) if len(page.shape) > 2 else page.shape
    if len(shape) != 2:
        raise DatasetError(f"frame {page.index} of {path} has shape {page.shape}, expected a 2-D grey image")
    return (int(shape[0]), int(shape[1]))


def field_info(dataset_path: str | os.PathLike[str]) -> FieldInfo:
    """The dataset's metadata (of the frames present), frame shape and pixel type; reads no pixels."""
    path = _resolve_tiff_path(Path(dataset_path))
    meta = read_dataset_meta(path)
    with quiet_tifffile(), open_tiff(path) as tif:
        pages, truncated = _pages(tif, path, meta)
        shape = _frame_shape(pages[0], path)
        dtype = common_dtype(
            [np.dtype(np.float32) if p.dtype.kind == "f" or p.dtype.itemsize > 2 else np.dtype(np.uint16)
             for p in pages]
        )
    planned = len(meta.frames)
    present = present_frames(meta, len(pages), path, truncated)
    return FieldInfo(path, present, shape, np.dtype(dtype), len(pages) == planned, planned)


def _read_page_region(tif, page, path: Path, rows: slice, cols: slice) -> np.ndarray:
    """Rows `rows` and columns `cols` of one page, read without decoding the rest of the page."""
    tiff_page = page.tiff_page
    shape = tuple(int(n) for n in tiff_page.shape)
    if int(tiff_page.compression) == 1 and tiff_page.is_contiguous and len(shape) == 2:
        dtype = np.dtype(tiff_page.dtype).newbyteorder(tif.byteorder)
        mapped = np.memmap(path, dtype=dtype, mode="r", offset=int(tiff_page.dataoffsets[0]), shape=shape)
        try:
            return np.array(mapped[rows, cols])
        finally:
            del mapped
    import zarr

    array = zarr.open_array(tiff_page.aszarr(), mode="r")
    if array.ndim == 2:
        return np.asarray(array[rows, cols])
    return np.asarray(array[..., rows, cols]).squeeze()


def read_region(dataset_path: str | os.PathLike[str], tile: Tile) -> tuple[np.ndarray, DatasetMeta]:
    """(frames (N, h, w) in the dataset's stored type, metadata with `tile_center_um` = the tile's centre).

    Only the tile's pixels are read from each page (module docstring). `DatasetError` when the tile
    lies outside the frames or the file is not a dataset.
    """
    path = _resolve_tiff_path(Path(dataset_path))
    meta = read_dataset_meta(path)
    rows, cols = slice(tile.y0, tile.y1), slice(tile.x0, tile.x1)
    regions: list[np.ndarray] = []
    with quiet_tifffile(), open_tiff(path) as tif:
        pages, truncated = _pages(tif, path, meta)
        frame_shape = _frame_shape(pages[0], path)
        if tile.y0 < 0 or tile.x0 < 0 or tile.y1 > frame_shape[0] or tile.x1 > frame_shape[1]:
            raise DatasetError(
                f"tile {tile.index} (rows {tile.y0}..{tile.y1}, columns {tile.x0}..{tile.x1}) lies outside the "
                f"{frame_shape[0]} x {frame_shape[1]} frames of {path}: plan the tiles for this dataset"
            )
        check_frame_size((tile.height, tile.width), pages[0].dtype, path, 0, len(pages))
        for page in pages:
            if _frame_shape(page, path) != frame_shape:
                raise DatasetError(
                    f"frame {page.index} of {path} has shape {page.shape} but frame 0 has {frame_shape}: all "
                    "frames of a dataset must be the same size"
                )
            try:
                region = _read_page_region(tif, page, path, rows, cols)
            except page_errors():
                truncated = True
                pages = pages[: page.index]
                break
            regions.append(stored_pixels(region, f"frame {page.index} of {path}"))
    if not regions:
        raise DatasetError(f"{path} holds no complete frame: the file is corrupt")
    dtype = common_dtype(r.dtype for r in regions)
    frames = np.stack([r.astype(dtype, copy=False) for r in regions])
    present = present_frames(meta, len(regions), path, truncated)
    return frames, present.replace(tile_center_um=tile.center_um)
