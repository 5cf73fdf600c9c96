"""Tiling the whole field of view: overlapping camera-pixel tiles, each with its own sample-plane centre.

A tile is reconstructed as a dataset of its own whose `tile_center_um` (spec section 2) is the tile's
centre, so each tile sees the LEDs from its own angle. The defaults come from the optics:

- size: 256 camera pixels (128 for small frames), smaller when the illumination angle of one LED
  changes across the tile by more than a quarter of the angle between neighbouring LEDs (the plane-wave
  approximation of one tile; it also keeps a bright/dark-field boundary from sweeping through a tile);
- overlap: at least 12.5 % of the size and at least twice the pupil's blur width (4 coherent
  resolution lengths lambda / NA), so the feathered blend never uses a tile's edge artefacts.

Tiles cover the whole frame; the first and last tile of a row (column) are flush with the frame's
edges and the others are spread evenly between them (the overlaps then are the requested one or a
little more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from uafp_gui.errors import ConfigError

DEFAULT_TILE_PX = 256
SMALL_TILE_PX = 128
MIN_TILE_PX = 32
OVERLAP_FRACTION = 0.125
BLUR_RESOLUTION_LENGTHS = 4.0  # the coherent PSF's extent that matters, in units of lambda / NA
ANGLE_CHANGE_FRACTION = 0.25  # of the angle between neighbouring LEDs, across one tile


@dataclass(frozen=True)
class Tile:
    """One tile of the field: where it lies in the raw frames and where its centre is in the sample plane."""

    index: int  # 0..n-1, row-major
    grid_row: int
    grid_col: int
    y0: int  # top-left corner in camera pixels of the raw frames
    x0: int
    height: int  # camera pixels
    width: int
    # sample-plane (x, y) of the tile centre relative to the optical axis, micrometres:
    # the dataset's tile_center_um + ((x0 + width/2 - W/2), (y0 + height/2 - H/2)) * camera_pixel_um / magnification
    center_um: tuple[float, float]

    @property
    def y1(self) -> int:
        return self.y0 + self.height

    @property
    def x1(self) -> int:
        return self.x0 + self.width

    @property
    def rows(self) -> slice:
        return slice(self.y0, self.y1)

    @property
    def cols(self) -> slice:
        return slice(self.x0, self.x1)


@dataclass
class TileResult:
    """One tile's reconstruction (picklable: numpy and plain values only, no torch tensors)."""

    tile: Tile
    amplitude: np.ndarray  # float32 (height * upsample, width * upsample)
    phase: np.ndarray  # float32, radians
    calibration: dict  # the tile's Calibration.to_dict()
    data_misfit: float
    stop_reason: str
    wall_s: float
    pupil: np.ndarray | None = None  # float32 (2, P, P): pupil amplitude and phase (rad), as in pupil.tif


def blur_width_px(meta) -> int:
    """The pupil's blur width in camera pixels (4 coherent resolution lengths lambda / NA)."""
    return int(math.ceil(BLUR_RESOLUTION_LENGTHS * meta.wavelength_um / meta.objective_na / meta.sample_pixel_um))


def max_tile_px(meta) -> int:
    """The widest tile (camera pixels) across which one LED's illumination angle changes by at most
    `ANGLE_CHANGE_FRACTION` of the angle between neighbouring LEDs (pitch / height)."""
    width_um = ANGLE_CHANGE_FRACTION * meta.led_pitch_mm * 1000.0  # angle change ~ width / height
    return max(MIN_TILE_PX, int(width_um / meta.sample_pixel_um))


def default_tile_size(frame_shape: tuple[int, int], meta) -> int:
    """256 camera pixels, 128 for frames under 512, never wider than `max_tile_px` or the frame."""
    frame = min(int(frame_shape[0]), int(frame_shape[1]))
    size = DEFAULT_TILE_PX if frame >= 2 * DEFAULT_TILE_PX else SMALL_TILE_PX
    return int(max(min(size, max_tile_px(meta), frame), min(MIN_TILE_PX, frame)))


def default_overlap(size: int, meta) -> int:
    """max(12.5 % of the size, twice the pupil's blur width), at most half the tile."""
    return int(min(size // 2, max(math.ceil(OVERLAP_FRACTION * size), 2 * blur_width_px(meta))))


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start positions of tiles of `size` covering 0..length with at least `overlap` between neighbours;
    the first at 0, the last flush with the end, the rest evenly spread."""
    if size >= length:
        return [0]
    count = math.ceil((length - overlap) / (size - overlap))
    count = max(count, 2)
    return [int(round(k * (length - size) / (count - 1))) for k in range(count)]


def tile_center_um(
    meta, frame_shape: tuple[int, int], y0: int, x0: int, height: int, width: int
) -> tuple[float, float]:
    """Sample-plane (x, y) of a region's centre relative to the optical axis (the interface's formula)."""
    rows, cols = int(frame_shape[0]), int(frame_shape[1])
    pixel_um = meta.camera_pixel_um / meta.magnification
    cx, cy = meta.tile_center_um
    return (float(cx + (x0 + width / 2 - cols / 2) * pixel_um), float(cy + (y0 + height / 2 - rows / 2) * pixel_um))


def plan_tiles(
    frame_shape: tuple[int, int], meta, size: int | None = None, overlap: int | None = None
) -> list[Tile]:
    """Overlapping tiles covering frames of `frame_shape` (rows, cols) of a dataset with metadata `meta`.

    `size` (camera pixels, square tiles; clipped to the frame) and `overlap` default from the optics
    (module docstring). `ConfigError` for a size or overlap that cannot tile.
    """
    rows, cols = int(frame_shape[0]), int(frame_shape[1])
    if rows < 1 or cols < 1:
        raise ConfigError(f"frames of shape {frame_shape} cannot be tiled")
    if size is None:
        size = default_tile_size((rows, cols), meta)
    size = int(size)
    if size < MIN_TILE_PX and size < min(rows, cols):
        raise ConfigError(f"tile size must be at least {MIN_TILE_PX} camera pixels (got {size})")
    if overlap is None:
        overlap = default_overlap(size, meta)
    overlap = int(overlap)
    if overlap < 0 or (overlap >= size and size < max(rows, cols)):
        raise ConfigError(f"overlap must be 0 to {size - 1} pixels for {size} px tiles (got {overlap})")
    tile_h, tile_w = min(size, rows), min(size, cols)
    ys = tile_starts(rows, tile_h, overlap)
    xs = tile_starts(cols, tile_w, overlap)
    tiles: list[Tile] = []
    for r, y0 in enumerate(ys):
        for c, x0 in enumerate(xs):
            tiles.append(
                Tile(
                    index=len(tiles), grid_row=r, grid_col=c, y0=y0, x0=x0, height=tile_h, width=tile_w,
                    center_um=tile_center_um(meta, (rows, cols), y0, x0, tile_h, tile_w),
                )
            )
    return tiles


def grid_shape(tiles: list[Tile]) -> tuple[int, int]:
    """(rows, cols) of the tile grid."""
    return (max(t.grid_row for t in tiles) + 1, max(t.grid_col for t in tiles) + 1)


def neighbours(tiles: list[Tile]) -> list[tuple[int, int]]:
    """(i, j) index pairs, i < j, of tiles that overlap (horizontal, vertical and diagonal)."""
    pairs = []
    for i, a in enumerate(tiles):
        for j in range(i + 1, len(tiles)):
            b = tiles[j]
            if min(a.y1, b.y1) > max(a.y0, b.y0) and min(a.x1, b.x1) > max(a.x0, b.x0):
                pairs.append((i, j))
    return pairs


def central_order(tiles: list[Tile]) -> list[int]:
    """Tile indices from the field's centre outward (ties by index)."""
    cy = np.mean([t.y0 + t.height / 2 for t in tiles])
    cx = np.mean([t.x0 + t.width / 2 for t in tiles])
    distance = [math.hypot(t.y0 + t.height / 2 - cy, t.x0 + t.width / 2 - cx) for t in tiles]
    return sorted(range(len(tiles)), key=lambda k: (round(distance[k], 6), k))
