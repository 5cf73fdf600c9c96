"""One calibration for the whole field: the LED geometry and frame gains are global.

The LED array is one rigid object: every tile sees the same array, from its own centre, and each
tile's run reports the geometry relative to the optical axis (its `tile_center_um` is in the forward
model), so the estimates of different tiles agree up to their errors. A few well-conditioned tiles
are self-calibrated with the engine's normal run; their geometries are combined robustly (median,
then estimates beyond 3 robust standard deviations dropped, then the mean weighted by 1 / error bar^2
when every tile reports one) and their gains by the per-frame median of each tile's relative gains.
Every tile then runs with the geometry and gains held at the combined values and its own pupil free.

Well-conditioned tiles: near the field's centre (the bright-field set of LEDs is the symmetric one
the start fit expects, vignetting is least) and crossed by as few bright/dark-field boundaries as
possible (an LED whose illumination NA straddles the objective NA within the tile is bright field in
part of it and dark field in the rest: the one-plane-wave model of a tile fits it worst).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from uafp_gui.fullfield.tiles import Tile, TileResult
from uafp_gui.io.calibration import Calibration
from uafp_gui.model import LedGeometry, led_positions_mm
from uafp_gui.recon.settings import UafpSettings

GEOMETRY_FIELDS = ("shift_x_mm", "shift_y_mm", "rotation_deg", "height_mm")
OUTLIER_SIGMAS = 3.0
FAILED_STOPS = ("error", "engine_error", "diverged")


def boundary_frames(meta, tile: Tile) -> int:
    """Frames with an LED whose nominal illumination NA crosses the objective NA within the tile."""
    pixel_um = meta.camera_pixel_um / meta.magnification
    half_x, half_y = tile.width * pixel_um / 2, tile.height * pixel_um / 2
    corners = np.array([[tile.center_um[0] + sx * half_x, tile.center_um[1] + sy * half_y]
                        for sx in (-1, 0, 1) for sy in (-1, 0, 1)]) / 1000.0  # mm
    count = 0
    for frame in meta.frames:
        positions = led_positions_mm(np.asarray(frame.leds, dtype=float), meta.led_on_axis, meta.led_pitch_mm)
        for x, y in np.atleast_2d(positions):
            dx, dy = corners[:, 0] - x, corners[:, 1] - y
            na = np.hypot(dx, dy) / np.sqrt(dx * dx + dy * dy + meta.led_height_mm**2)
            if na.min() < meta.objective_na < na.max():
                count += 1
                break
    return count


def choose_calibration_tiles(tiles: Sequence[Tile], meta, count: int = 3) -> list[int]:
    """Indices of the `count` best-conditioned tiles (module docstring): fewest boundary-crossing frames
    among the tiles nearest the optical axis."""
    count = max(1, min(int(count), len(tiles)))
    distance = {t.index: math.hypot(*t.center_um) for t in tiles}
    nearest = sorted(distance, key=lambda k: (round(distance[k], 3), k))
    pool = nearest[: max(count, min(len(tiles), 2 * count))]  # central ones only ...
    crossing = {k: boundary_frames(meta, tiles[k]) for k in pool}
    return sorted(pool, key=lambda k: (crossing[k], round(distance[k], 3), k))[:count]  # ... least crossed


def robust_combine(values: Sequence[float], stds: Sequence[float | None] | None = None) -> dict:
    """Median, then outliers (> 3 robust sigmas) out, then the (1 / std^2-weighted) mean.

    Returns {"value", "std", "used", "spread"}: `std` is the standard error of the combination (the
    error bars' when given, inflated by the scatter's Birge ratio when that exceeds 1; the scatter's
    standard error otherwise), `spread` the standard deviation of the estimates used."""
    v = np.asarray(values, dtype=float)
    s = None
    if stds is not None and len(stds) == len(v) and all(x is not None and np.isfinite(x) and x > 0 for x in stds):
        s = np.asarray(stds, dtype=float)
    median = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - median)))
    scale = max(mad, float(np.median(s)) if s is not None else 0.0, 1e-12)
    used = np.abs(v - median) <= OUTLIER_SIGMAS * scale if len(v) > 2 else np.ones(len(v), dtype=bool)
    vu = v[used]
    if s is not None:
        w = 1.0 / s[used] ** 2
        value = float(np.sum(w * vu) / np.sum(w))
        std = math.sqrt(1.0 / float(np.sum(w)))
        if len(vu) > 1:
            birge = math.sqrt(float(np.sum(w * (vu - value) ** 2)) / (len(vu) - 1))
            std *= max(1.0, birge)
    else:
        value = float(np.mean(vu))
        std = float(np.std(vu, ddof=1) / math.sqrt(len(vu))) if len(vu) > 1 else float("nan")
    spread = float(np.std(vu, ddof=1)) if len(vu) > 1 else 0.0
    return {"value": value, "std": std, "used": [int(k) for k in np.flatnonzero(used)], "spread": spread}


def _finite(value):
    """`value` with every non-finite number as None (calibration.json holds no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def usable(result: TileResult) -> bool:
    """A calibration tile whose geometry can be trusted: the run ended normally, nothing at a bound."""
    bounded = result.calibration.get("at_bounds") or []
    return str(result.stop_reason) not in FAILED_STOPS and not any(
        str(name).startswith(("shift", "rotation", "height", "led_geometry")) for name in bounded
    )


def combine_calibrations(results: Sequence[TileResult]) -> Calibration:
    """The shared calibration of the field from the calibration tiles' own runs (module docstring).

    Geometry: `robust_combine` per parameter; gains: each tile's gains over their geometric mean,
    the per-frame median across tiles, times the median tile level; Zernikes (only a start for every
    tile's own pupil): the mean. `extra["fullfield_calibration"]` records every tile's estimate.
    """
    good = [r for r in results if usable(r)] or list(results)
    if not good:
        raise ValueError("no calibration tile to combine")
    calibrations = [Calibration.from_dict(r.calibration) for r in good]
    geometry: dict[str, float] = {}
    geometry_std: dict[str, float | None] = {}
    details: dict[str, dict] = {}
    for name in GEOMETRY_FIELDS:
        values = [getattr(c.led_geometry, name) for c in calibrations]
        stds = [(r.calibration.get("led_geometry_std") or {}).get(name) for r in good]
        combined = robust_combine(values, stds)
        geometry[name] = combined["value"]
        geometry_std[name] = combined["std"] if np.isfinite(combined["std"]) else None
        details[name] = _finite({"per_tile": values, "per_tile_std": stds, **combined})

    gains = [np.asarray(c.frame_gain, dtype=float) for c in calibrations if len(c.frame_gain)]
    frame_gain: tuple[float, ...] = ()
    if gains and all(len(g) == len(gains[0]) for g in gains):
        stack = np.stack(gains)
        levels = np.exp(np.mean(np.log(np.maximum(stack, 1e-30)), axis=1))
        relative = stack / levels[:, None]
        frame_gain = tuple(float(g) for g in np.median(relative, axis=0) * float(np.median(levels)))
    indices = sorted({j for c in calibrations for j in c.zernike_rad})
    zernike = {j: float(np.mean([c.zernike_rad.get(j, 0.0) for c in calibrations])) for j in indices}
    first = calibrations[0]
    return Calibration(
        led_geometry=LedGeometry(**geometry),
        zernike_rad=zernike,
        frame_gain=frame_gain,
        led_positions_mm=first.led_positions_mm if len(first.led_positions_mm) == len(frame_gain) else (),
        object_pixel_um=first.object_pixel_um,
        source_dataset=first.source_dataset,
        software=first.software,
        extra={
            "led_geometry_std": geometry_std,
            "fullfield_calibration": {
                "method": "robust combination of the calibration tiles' self-calibrations (median, > 3 robust "
                "sigmas out, 1/std^2-weighted mean); gains: per-frame median of relative gains",
                "tiles": [int(r.tile.index) for r in good],
                "rejected_tiles": [int(r.tile.index) for r in results if r not in good],
                "tile_centers_um": [list(r.tile.center_um) for r in good],
                "geometry": details,
            },
        },
    )


def fixed_system_settings(settings: UafpSettings) -> UafpSettings:
    """The settings every tile runs with once the field is calibrated: geometry and gains held, pupil free."""
    return settings.replace(learn_geometry=False, learn_gains=False, init_geometry_from_data=False)


def tile_start_calibration(shared: Calibration, zernike: Mapping[int, float] | None = None) -> dict:
    """The calibration dict a tile starts from: the shared system, with the pupil start `zernike` when given."""
    if zernike is None:
        return shared.to_dict()
    data = shared.to_dict()
    data["zernike_rad"] = {str(j): float(v) for j, v in zernike.items()}
    return data
