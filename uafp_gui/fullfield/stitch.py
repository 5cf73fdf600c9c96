"""Stitching tile reconstructions into one amplitude and one phase mosaic, without seams.

Each tile's reconstruction is defined only up to a global phase and, when the gains differ between
tiles, an amplitude scale. Before blending, these are aligned to the neighbours: on every overlap the
wrapped phase difference gives a pairwise offset and the log-amplitude ratio a pairwise scale; a
least-squares solve over all overlaps (the tile nearest the field's centre fixed) gives each tile's
correction.

Phase ramps are not aligned by default: with the LED geometry shared (held fixed in every tile), a
tile's linear phase is the object's own low-frequency phase, measured from the bright-field frames.
A ramp fitted on a narrow overlap strip mostly measures the neighbours' low-order errors at their
edges (a curvature error q (x / half-width)^2 has slope 2 q / half-width there), and as a whole-tile
ramp it accumulates along chains of tiles: on refsim's field256 (3 x 3 tiles) offset + ramp alignment
gave a smooth error of up to ~2 rad across the mosaic (stitched phase RMSE 0.56 rad) where offsets
alone give 0.18 rad, and smaller overlap residuals (0.27 against 0.31 rad). `align_ramp=True`
aligns ramps too, for tiles whose linear phase really is arbitrary (e.g. each with its own geometry).

The blend is feathered: in every overlap one tile's weight falls and the other's rises
as cos^2 / sin^2 over the overlap's inner part (the outer quarter on each side weighs 0: a tile's
edge carries its reconstruction's boundary artefacts), so the weights are a partition of unity and
reach 0 at the tile edges. Sides on the frame's edge keep weight 1 (no neighbour to hand over to).

A partial mosaic (tiles failed, or the run was stopped) stitches the finished tiles with the weights
of the whole planned `layout`, normalised over the tiles there are: where a missing tile would have
taken over, the finished neighbour carries on alone (its plain value where every feathered weight
is 0). Pixels no finished tile covers are NaN in both mosaics: the "no data" value Fiji leaves out
of its measurements and napari draws transparent. Missing tiles can cut finished ones off from the
reference tile (an island: no chain of overlapping finished tiles links them): nothing measures their
phase offset or amplitude scale relative to the rest, so each such group is aligned within itself to
a reference of its own (its tile nearest the field's centre keeps its own offset and scale, as the
main reference does) and `TileAlignment.components` lists the groups for the result's metadata.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from uafp_gui.fullfield.tiles import Tile, central_order, neighbours

DEAD_FRACTION = 0.25  # of each overlap, at each tile edge, where the tile's weight is 0


@dataclass
class TileAlignment:
    """Per-tile corrections: phase + offset_rad + ramp . (r - centre) (rad, per mosaic pixel), amplitude * scale."""

    offset_rad: np.ndarray  # (n,)
    ramp_rad_per_px: np.ndarray  # (n, 2): (d/dy, d/dx)
    amplitude_scale: np.ndarray  # (n,)
    reference: int
    pair_residual_rad: dict = field(default_factory=dict)  # (i, j) -> RMS phase misfit on the overlap after alignment
    # groups of tiles linked by overlaps (positions in the tiles given), the reference's group first, each
    # group's own reference first in it; more than one only when missing tiles cut some off (module docstring)
    components: list[list[int]] = field(default_factory=list)


def _ramp_1d(length: int, rise: tuple[int, int] | None, fall: tuple[int, int] | None) -> np.ndarray:
    """1-D weight: rises over [rise[0], rise[1]) (0 before), falls over [fall[0], fall[1]) (0 after)."""
    weight = np.ones(length)
    x = np.arange(length) + 0.5
    if rise is not None:
        a, b = rise
        t = np.clip((x - a) / max(b - a, 1e-9), 0.0, 1.0)
        weight *= np.sin(0.5 * np.pi * t) ** 2
    if fall is not None:
        a, b = fall
        t = np.clip((x - a) / max(b - a, 1e-9), 0.0, 1.0)
        weight *= np.where(t >= 1.0, 0.0, np.cos(0.5 * np.pi * t) ** 2)
    return weight


def _interval(lo: int, hi: int) -> tuple[int, int]:
    """The inner part of the overlap [lo, hi): without DEAD_FRACTION of it at each end."""
    dead = int(round(DEAD_FRACTION * (hi - lo)))
    return lo + dead, max(hi - dead, lo + dead + 1)


def feather_weights(tiles: Sequence[Tile], tile_index: int, upsample: int = 1) -> np.ndarray:
    """(height * upsample, width * upsample) blend weight of one tile (module docstring)."""
    tile = tiles[tile_index]
    ys = sorted({t.y0 for t in tiles})
    xs = sorted({t.x0 for t in tiles})
    # Neighbours in the grid's row (column) above / below, left / right.
    above = max((t.y1 for t in tiles if t.y0 < tile.y0), default=None)
    below = min((t.y0 for t in tiles if t.y0 > tile.y0), default=None)
    left = max((t.x1 for t in tiles if t.x0 < tile.x0), default=None)
    right = min((t.x0 for t in tiles if t.x0 > tile.x0), default=None)
    del ys, xs

    def axis(start: int, length: int, before: int | None, after: int | None) -> np.ndarray:
        rise = fall = None
        if before is not None and before > start:
            a, b = _interval(start, before)
            rise = ((a - start) * upsample, (b - start) * upsample)
        if after is not None and after < start + length:
            a, b = _interval(after, start + length)
            fall = ((a - start) * upsample, (b - start) * upsample)
        return _ramp_1d(length * upsample, rise, fall)

    wy = axis(tile.y0, tile.height, above, below)
    wx = axis(tile.x0, tile.width, left, right)
    return wy[:, None] * wx[None, :]


def _overlap(a: Tile, b: Tile, upsample: int) -> tuple[tuple[slice, slice], tuple[slice, slice], tuple[float, float]]:
    """Slices of the overlap in tile a's and tile b's arrays, and its centre in mosaic pixels."""
    y0, y1 = max(a.y0, b.y0) * upsample, min(a.y1, b.y1) * upsample
    x0, x1 = max(a.x0, b.x0) * upsample, min(a.x1, b.x1) * upsample

    def local(t: Tile) -> tuple[slice, slice]:
        return (slice(y0 - t.y0 * upsample, y1 - t.y0 * upsample), slice(x0 - t.x0 * upsample, x1 - t.x0 * upsample))

    return local(a), local(b), ((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2)


def _inner(region: tuple[slice, slice], shape: tuple[int, int]) -> tuple[slice, slice]:
    """The inner part of an overlap region (DEAD_FRACTION trimmed at each end of its narrow axes)."""
    out = []
    for s, n in zip(region, shape, strict=True):
        start, stop = s.start, s.stop
        width = stop - start
        dead = int(round(DEAD_FRACTION * width)) if width < 0.9 * n else 0
        out.append(slice(start + dead, max(stop - dead, start + dead + 1)))
    return out[0], out[1]


def _pair_phase(z: np.ndarray) -> tuple[float, np.ndarray]:
    """Offset (at the region's centre) and ramp (d/dy, d/dx per pixel) of the phase of z, robust to wrapping."""
    gy = float(np.angle(np.sum(z[1:, :] * np.conj(z[:-1, :])))) if z.shape[0] > 1 else 0.0
    gx = float(np.angle(np.sum(z[:, 1:] * np.conj(z[:, :-1])))) if z.shape[1] > 1 else 0.0
    yy = np.arange(z.shape[0]) - (z.shape[0] - 1) / 2
    xx = np.arange(z.shape[1]) - (z.shape[1] - 1) / 2
    flat = z * np.exp(-1j * (gy * yy[:, None] + gx * xx[None, :]))
    offset = float(np.angle(np.sum(flat)))
    # Refine the ramp by least squares on the (now small) residual phase.
    residual = np.angle(flat * np.exp(-1j * offset))
    weight = np.abs(z)
    design = np.stack([np.ones(z.size), yy.repeat(z.shape[1]), np.tile(xx, z.shape[0])], axis=1)
    w = np.sqrt(weight.ravel() + 1e-30)
    solution, *_ = np.linalg.lstsq(design * w[:, None], residual.ravel() * w, rcond=None)
    return offset + float(solution[0]), np.array([gy + solution[1], gx + solution[2]])


def linked_groups(adjacency: dict[int, list[int]], order: Sequence[int]) -> list[list[int]]:
    """The connected groups of a graph, each started (and led) by its first node in `order`, in that
    order; within a group, breadth-first from its leader."""
    seen: set[int] = set()
    groups = []
    for start in order:
        if start in seen:
            continue
        group, queue = [start], deque([start])
        seen.add(start)
        while queue:
            for m in adjacency[queue.popleft()]:
                if m not in seen:
                    seen.add(m)
                    group.append(m)
                    queue.append(m)
        groups.append(group)
    return groups


def align_tiles(
    tiles: Sequence[Tile],
    amplitudes: Sequence[np.ndarray],
    phases: Sequence[np.ndarray],
    upsample: int,
    *,
    align_phase: bool = True,
    align_ramp: bool = False,
    align_amplitude: bool = True,
    reference: int | None = None,
) -> TileAlignment:
    """Each tile's phase offset, phase ramp (only with `align_ramp`: see the module docstring) and
    amplitude scale that best agree with its neighbours.

    Pairwise estimates on every overlap (the inner part, amplitude-weighted), then one least-squares
    solve (the reference tile fixed: the one nearest the field's centre). Phase offsets first follow a
    breadth-first tree from the reference so that 2 pi wraps never enter the solve; the solve then
    corrects the small loop residuals. Tiles no chain of overlaps links to the reference (a partial
    run's islands) are aligned within their own group, to its own reference (module docstring).
    """
    n = len(tiles)
    reference = central_order(list(tiles))[0] if reference is None else reference
    pairs = neighbours(list(tiles))
    centres = np.array([((t.y0 + t.height / 2) * upsample - 0.5, (t.x0 + t.width / 2) * upsample - 0.5) for t in tiles])
    measured: dict[tuple[int, int], tuple[float, np.ndarray, np.ndarray, float, float]] = {}
    for i, j in pairs:
        region_i, region_j, _ = _overlap(tiles[i], tiles[j], upsample)
        shape = (tiles[i].height * upsample, tiles[i].width * upsample)
        region_i = _inner(region_i, shape)
        region_j = _inner(region_j, shape)
        a_i, a_j = amplitudes[i][region_i], amplitudes[j][region_j]
        if a_i.size < 4:
            continue
        z = a_i * a_j * np.exp(1j * (phases[j][region_j] - phases[i][region_i]))  # phase_j - phase_i
        offset, ramp = _pair_phase(z)
        y0 = region_i[0].start + tiles[i].y0 * upsample
        x0 = region_i[1].start + tiles[i].x0 * upsample
        centre = np.array([y0 + (a_i.shape[0] - 1) / 2, x0 + (a_i.shape[1] - 1) / 2])
        ratio = float(np.log(np.median(a_j) + 1e-30) - np.log(np.median(a_i) + 1e-30))
        weight = float(np.sqrt(a_i.size))
        measured[(i, j)] = (offset, ramp, centre, ratio, weight)

    # Corrections: phase_k + a_k + b_k.(r - C_k), log amplitude + s_k. On the overlap of (i, j) the phase
    # difference phase_j - phase_i = o_ij + g_ij.(r - c_ij) vanishes after correction when
    # b_i - b_j = g_ij and a_i - a_j = o_ij + b_j.(c_ij - C_j) - b_i.(c_ij - C_i); likewise s_i - s_j = log A_j / A_i.
    ramps = np.zeros((n, 2))
    offsets = np.zeros(n)
    scales = np.zeros(n)
    adjacency: dict[int, list[int]] = {k: [] for k in range(n)}
    for i, j in measured:
        adjacency[i].append(j)
        adjacency[j].append(i)
    components = linked_groups(adjacency, [reference] + [k for k in central_order(list(tiles)) if k != reference])
    own_reference = np.empty(n, dtype=int)  # each tile's group's reference
    for group in components:
        own_reference[group] = group[0]

    def solve(rows: list[tuple[int, int, float, float]]) -> np.ndarray:
        """Least squares x_i - x_j = value (weighted), each group's reference at 0."""
        matrix = np.zeros((len(rows) + len(components), n))
        rhs = np.zeros(len(rows) + len(components))
        for k, (i, j, value, weight) in enumerate(rows):
            matrix[k, i], matrix[k, j], rhs[k] = weight, -weight, weight * value
        for k, group in enumerate(components):
            matrix[len(rows) + k, group[0]] = 1e3
        solution, *_ = np.linalg.lstsq(matrix, rhs, rcond=None)
        return solution - solution[own_reference]

    if measured and align_phase and align_ramp:
        for axis in range(2):
            ramps[:, axis] = solve([(i, j, m[1][axis], m[4]) for (i, j), m in measured.items()])
    if measured and align_amplitude:
        scales = solve([(i, j, m[3], m[4]) for (i, j), m in measured.items()])
    if measured and align_phase:

        def target(i: int, j: int) -> float:
            offset, _, centre, _, _ = measured[(i, j)]
            return offset + float(ramps[j] @ (centre - centres[j]) - ramps[i] @ (centre - centres[i]))

        # Breadth-first trees from each group's reference: a first solution with no 2 pi ambiguity ...
        for group in components:
            seen = {group[0]}
            queue = deque([group[0]])
            while queue:
                k = queue.popleft()
                for m in adjacency[k]:
                    if m not in seen:
                        offsets[m] = offsets[k] - target(k, m) if (k, m) in measured else offsets[k] + target(m, k)
                        seen.add(m)
                        queue.append(m)
        # ... then least squares on the (wrapped, small) loop residuals.
        rows = []
        for (i, j), pair in measured.items():
            residual = float(np.angle(np.exp(1j * (target(i, j) - (offsets[i] - offsets[j])))))
            rows.append((i, j, residual, pair[4]))
        offsets = offsets + solve(rows)
    scales = np.exp(scales - scales[own_reference])
    alignment = TileAlignment(offsets - offsets[own_reference], ramps, scales, reference, components=components)
    alignment.pair_residual_rad = pair_residuals(tiles, amplitudes, phases, upsample, alignment)
    return alignment


def corrected_phase(tile: Tile, phase: np.ndarray, alignment: TileAlignment, index: int, upsample: int) -> np.ndarray:
    """The tile's phase with its offset and ramp correction (not wrapped)."""
    rows, cols = phase.shape
    cy, cx = (tile.height / 2) * upsample - 0.5, (tile.width / 2) * upsample - 0.5
    yy = np.arange(rows) - cy
    xx = np.arange(cols) - cx
    ramp = alignment.ramp_rad_per_px[index]
    return phase + alignment.offset_rad[index] + ramp[0] * yy[:, None] + ramp[1] * xx[None, :]


def pair_residuals(tiles, amplitudes, phases, upsample, alignment: TileAlignment) -> dict:
    """RMS of the wrapped phase difference on each overlap's inner part after alignment (rad)."""
    out = {}
    for i, j in neighbours(list(tiles)):
        region_i, region_j, _ = _overlap(tiles[i], tiles[j], upsample)
        shape = (tiles[i].height * upsample, tiles[i].width * upsample)
        region_i, region_j = _inner(region_i, shape), _inner(region_j, shape)
        p_i = corrected_phase(tiles[i], phases[i], alignment, i, upsample)[region_i]
        p_j = corrected_phase(tiles[j], phases[j], alignment, j, upsample)[region_j]
        if p_i.size:
            out[(i, j)] = float(np.sqrt(np.mean(np.angle(np.exp(1j * (p_j - p_i))) ** 2)))
    return out


def stitch(
    tiles: Sequence[Tile],
    amplitudes: Sequence[np.ndarray],
    phases: Sequence[np.ndarray],
    frame_shape: tuple[int, int],
    upsample: int,
    *,
    align: bool = True,
    align_amplitude: bool = True,
    align_ramp: bool = False,
    layout: Sequence[Tile] | None = None,
) -> tuple[np.ndarray, np.ndarray, TileAlignment]:
    """(amplitude, phase (wrapped, rad), alignment) mosaics (float32) of shape frame_shape * upsample.
    `align_ramp`: also align each tile's phase ramp (module docstring: off for tiles that share one geometry).
    `layout`: every planned tile, when `tiles` are only the finished ones (a partial mosaic: NaN where no
    finished tile lies, module docstring); each of `tiles` must be one of them."""
    rows, cols = int(frame_shape[0]) * upsample, int(frame_shape[1]) * upsample
    layout = list(tiles) if layout is None else list(layout)
    place = {tile: k for k, tile in enumerate(layout)}
    missing = [tile.index for tile in tiles if tile not in place]
    if missing:
        raise ValueError(f"tiles {missing} are not in the layout")
    for tile, amplitude in zip(tiles, amplitudes, strict=True):
        if amplitude.shape != (tile.height * upsample, tile.width * upsample):
            raise ValueError(
                f"tile {tile.index}'s image is {amplitude.shape}, expected "
                f"{(tile.height * upsample, tile.width * upsample)} (upsample {upsample})"
            )
    alignment = align_tiles(
        tiles, amplitudes, phases, upsample,
        align_phase=align, align_ramp=align and align_ramp, align_amplitude=align and align_amplitude,
    )
    amplitude_sum = np.zeros((rows, cols))
    field_sum = np.zeros((rows, cols), dtype=complex)
    weight_sum = np.zeros((rows, cols))

    def region_of(tile: Tile) -> tuple[slice, slice]:
        return (slice(tile.y0 * upsample, tile.y1 * upsample), slice(tile.x0 * upsample, tile.x1 * upsample))

    def corrected(k: int) -> tuple[np.ndarray, np.ndarray]:
        phase = corrected_phase(tiles[k], phases[k], alignment, k, upsample)
        return amplitudes[k] * alignment.amplitude_scale[k], phase

    for k, tile in enumerate(tiles):
        weight = feather_weights(layout, place[tile], upsample)
        region = region_of(tile)
        amplitude, phase = corrected(k)
        amplitude_sum[region] += weight * amplitude
        field_sum[region] += weight * amplitude * np.exp(1j * phase)
        weight_sum[region] += weight
    covered = weight_sum > 0
    if not covered.all():  # a partial mosaic: where only missing tiles had weight, the finished ones plainly
        for k, tile in enumerate(tiles):
            region = region_of(tile)
            gap = ~covered[region]
            if gap.any():
                amplitude, phase = corrected(k)
                amplitude_sum[region][gap] += amplitude[gap]
                field_sum[region][gap] += amplitude[gap] * np.exp(1j * phase[gap])
                weight_sum[region][gap] += 1.0
        covered = weight_sum > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        amplitude = np.where(covered, amplitude_sum / weight_sum, np.nan)
    phase = np.where(covered, np.angle(field_sum), np.nan)
    return amplitude.astype(np.float32), phase.astype(np.float32), alignment
