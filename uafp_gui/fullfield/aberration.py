"""The lens-inspection report: the objective's field-dependent aberrations, apart from LED misalignment.

Every tile's run holds the LED geometry fixed (one global calibration: the LED array is one rigid
object seen from every tile) and frees its own pupil, so what varies from tile to tile is the lens:
the field-dependent pupil. Each Zernike coefficient is modelled as a low-order polynomial of the
field position (up to 2nd order: 1, x, y, x^2, xy, y^2 in field coordinates normalised to the field's
half-width; with 4 to 6 tiles 1, x, y, xy), fitted across the tiles by weighted least squares (weights
1 / standard error^2 when the tiles report error bars).

With enough tiles for 2nd order, each Zernike first gets the field dependence a lens's aberrations have
(Seidel, with the constant and linear terms a decentred or tilted element adds: nodal aberration theory),
`SEIDEL_TERMS`: defocus (field curvature) 1, x, y, r^2; astigmatism 1, x, y and x^2 - y^2 (Z6) or xy (Z5),
each with its own coefficient; coma 1, x, y; spherical and the higher terms a constant. The full quadratic
replaces it for a Zernike only when the tiles ask for it (F-test at `FULL_QUADRATIC_P`). Why: the map is
read up to the frame's corners, beyond the outermost tile centres, where a 6-term quadratic on 3 x 3 tiles
multiplies each tile's pupil error by ~3 (the corner's extrapolation); fewer, physical terms extrapolate
less noise and follow the lens's own field dependence (notes/s4_i12b.md: refsim field256, 3 x 3 tiles).
From the model, per field point:

- wavefront RMS sigma = sqrt(sum_{j >= 4} c_j^2) (Noll Zernikes are RMS-normalised; piston and tilt,
  a translation of the image, are not aberrations of the image quality), in radians and waves;
- Strehl ratio by the Marechal approximation exp(-sigma^2), and the Marechal criterion:
  diffraction-limited when Strehl >= 0.8 (sigma <= lambda / 14);
- the dominant Zernikes (largest |c_j|, by name).

`field_aberrations(...)` gives all of it as a dict for calibration.json; `draw_aberration_map` the picture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

MARECHAL_STREHL = 0.8
MARECHAL_RMS_RAD = math.sqrt(-math.log(MARECHAL_STREHL))  # 0.472 rad = lambda / 13.3
FIRST_ABERRATION = 4  # Noll index: piston (1) and tilts (2, 3) move the image, they do not blur it
TERMS = ("1", "x", "y", "x^2", "xy", "y^2")
# The Seidel (+ misalignment) field dependence of each Zernike, as combinations of TERMS' columns:
# {basis name: {TERMS name: factor}}; a Zernike not listed is constant over the field.
SEIDEL_BASIS = {
    "1": {"1": 1.0}, "x": {"x": 1.0}, "y": {"y": 1.0}, "xy": {"xy": 1.0},
    "r^2": {"x^2": 1.0, "y^2": 1.0}, "x^2-y^2": {"x^2": 1.0, "y^2": -1.0},
}
SEIDEL_TERMS: dict[int, tuple[str, ...]] = {
    4: ("1", "x", "y", "r^2"),  # defocus: field curvature ~ r^2 (a tilted image plane: x, y)
    5: ("1", "x", "y", "xy"),  # oblique astigmatism ~ 2xy
    6: ("1", "x", "y", "x^2-y^2"),  # vertical astigmatism ~ x^2 - y^2
    7: ("1", "x", "y"),  # coma ~ field position (y)
    8: ("1", "x", "y"),  # coma ~ field position (x)
}
FULL_QUADRATIC_P = 0.01  # the full quadratic replaces a Zernike's Seidel terms when the F-test's p is below
STD_FLOOR_RAD = 1e-3

ZERNIKE_NAMES = {
    1: "piston", 2: "tilt x", 3: "tilt y", 4: "defocus", 5: "oblique astigmatism", 6: "vertical astigmatism",
    7: "vertical coma", 8: "horizontal coma", 9: "vertical trefoil", 10: "oblique trefoil",
    11: "primary spherical", 12: "vertical secondary astigmatism", 13: "oblique secondary astigmatism",
    14: "vertical quadrafoil", 15: "oblique quadrafoil",
}


def zernike_name(j: int) -> str:
    return ZERNIKE_NAMES.get(int(j), f"Z{int(j)}")


def _design(x: np.ndarray, y: np.ndarray, terms: Sequence[str]) -> np.ndarray:
    columns = {"1": np.ones_like(x), "x": x, "y": y, "x^2": x * x, "xy": x * y, "y^2": y * y}
    return np.stack([columns[t] for t in terms], axis=-1)


def choose_order(tile_count: int, max_order: int = 2) -> int:
    """The highest polynomial order <= max_order the tiles can fit with a residual degree of freedom
    (order 1 as soon as 3 tiles give its exact fit)."""
    if max_order >= 2 and tile_count >= 7:
        return 2
    if max_order >= 1 and tile_count >= 3:
        return 1
    return 0


def choose_terms(tile_count: int, max_order: int = 2) -> tuple[str, ...]:
    """The polynomial's terms: all six of order 2 from 7 tiles; from 4 tiles (a 2 x 2 grid) 1, x, y and the
    bilinear xy (what four tile centres determine: an astigmatism growing as xy shows at them); 1, x, y
    from 3; the constant below."""
    order = choose_order(tile_count, max_order)
    if order == 2:
        return TERMS
    if order == 1:
        return ("1", "x", "y", "xy") if tile_count >= 4 and max_order >= 2 else ("1", "x", "y")
    return ("1",)


def fit_aberration_model(
    centers_um: Sequence[tuple[float, float]],
    zernikes: Sequence[Mapping[int, float]],
    stds: Sequence[Mapping[int, float | None]] | None = None,
    *,
    field_center_um: tuple[float, float] = (0.0, 0.0),
    field_half_width_um: float | None = None,
    max_order: int = 2,
    seidel: bool = True,
) -> dict:
    """Weighted least-squares polynomial of each Zernike coefficient over the field (module docstring).

    `centers_um`: each tile's (x, y); `zernikes`: each tile's {Noll j: rad}; `stds`: their standard errors
    (None or missing: equal weights); `seidel`: at 2nd order, each Zernike's Seidel field dependence unless
    the tiles ask for the full quadratic (False: the full quadratic for every Zernike). Returns the model as
    a JSON-ready dict.
    """
    centers = np.asarray(centers_um, dtype=float).reshape(-1, 2)
    n = len(centers)
    if n == 0 or len(zernikes) != n:
        raise ValueError("one Zernike set per tile centre is needed")
    if field_half_width_um is None:
        field_half_width_um = float(max(np.max(np.abs(centers - np.asarray(field_center_um)), initial=0.0), 1.0))
    x = (centers[:, 0] - field_center_um[0]) / field_half_width_um
    y = (centers[:, 1] - field_center_um[1]) / field_half_width_um
    order = choose_order(n, max_order)
    terms = choose_terms(n, max_order)
    design = _design(x, y, terms)
    indices = sorted({int(j) for z in zernikes for j in z})
    coefficients: dict[str, list[float]] = {}
    residual_rms: dict[str, float] = {}
    coefficient_std: dict[str, list[float]] = {}
    dependence: dict[str, list[str]] = {}
    for j in indices:
        values = np.array([float(z.get(j, z.get(str(j), 0.0))) for z in zernikes])  # type: ignore[call-overload]
        sigma = np.ones(n)
        if stds is not None:
            given = [s.get(j, s.get(str(j))) if s else None for s in stds]  # type: ignore[call-overload]
            if all(g is not None and np.isfinite(g) for g in given):
                sigma = np.maximum(np.array(given, dtype=float), STD_FLOOR_RAD)
        weights = 1.0 / sigma
        solution, *_ = np.linalg.lstsq(design * weights[:, None], values * weights, rcond=None)
        chosen, mix = list(terms), np.eye(len(terms))
        if seidel and order == 2 and j >= FIRST_ABERRATION:  # piston and tilt (not the lens's blur): as they were
            solution, chosen, mix = _seidel_or_full(j, design, values, weights, solution)
        dependence[str(j)] = chosen
        residual = values - design @ solution
        coefficients[str(j)] = [float(v) for v in solution]
        residual_rms[str(j)] = float(np.sqrt(np.mean(residual**2)))
        try:
            fitted = design @ mix  # the columns actually fitted
            covariance = mix @ np.linalg.pinv((fitted * weights[:, None] ** 2).T @ fitted) @ mix.T
            dof = max(n - fitted.shape[1], 0)
            scale = float(np.sum((residual * weights) ** 2) / dof) if dof else 1.0
            coefficient_std[str(j)] = [float(math.sqrt(max(covariance[k, k] * max(scale, 1.0), 0.0)))
                                       for k in range(design.shape[1])]
        except np.linalg.LinAlgError:
            coefficient_std[str(j)] = [float("nan")] * design.shape[1]
    return {
        "order": order,
        "terms": list(terms),
        "field_center_um": [float(field_center_um[0]), float(field_center_um[1])],
        "field_half_width_um": float(field_half_width_um),
        "coordinates": "x, y = (sample-plane position - field_center_um) / field_half_width_um",
        "coefficients_rad": coefficients,
        # each Zernike's field dependence actually fitted (SEIDEL_TERMS' names, or TERMS for the full quadratic);
        # the coefficients are always over `terms`
        "field_dependence": dependence,
        "coefficients_std_rad": coefficient_std,
        "residual_rms_rad": residual_rms,
        "tiles": int(n),
    }


def _seidel_or_full(j: int, design: np.ndarray, values: np.ndarray, weights: np.ndarray,
                    full: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Zernike j's coefficients over TERMS: its Seidel terms' weighted LS fit, unless the full quadratic
    (`full`, fitted over `design`) lowers the weighted residual by more than the F-test allows. Also the
    names fitted and the (6, k) matrix taking their coefficients to TERMS'."""
    names = SEIDEL_TERMS.get(int(j), ("1",))
    mix = np.array([[SEIDEL_BASIS[name].get(term, 0.0) for name in names] for term in TERMS])  # (6, k)
    reduced = design @ mix
    n, k, p = len(values), mix.shape[1], design.shape[1]
    identity = np.eye(len(TERMS))
    if np.linalg.matrix_rank(reduced * weights[:, None]) < k:
        return full, list(TERMS), identity
    solution, *_ = np.linalg.lstsq(reduced * weights[:, None], values * weights, rcond=None)
    if n > p:
        from scipy.stats import f as f_distribution

        rss_seidel = float(np.sum(((values - reduced @ solution) * weights) ** 2))
        rss_full = float(np.sum(((values - design @ full) * weights) ** 2))
        scale = float(np.sum((values * weights) ** 2)) + 1e-300
        if rss_full <= 1e-24 * scale:  # the quadratic fits exactly: Seidel only if it does too
            if rss_seidel > 1e-20 * scale:
                return full, list(TERMS), identity
        else:
            statistic = (rss_seidel - rss_full) / (p - k) / (rss_full / (n - p))
            if f_distribution.sf(statistic, p - k, n - p) < FULL_QUADRATIC_P:
                return full, list(TERMS), identity
    return mix @ solution, list(names), mix


def evaluate_model(model: Mapping, x_um: np.ndarray, y_um: np.ndarray) -> dict[int, np.ndarray]:
    """{Noll j: coefficient (rad)} of the model at sample-plane positions (arrays of any shape)."""
    x_um, y_um = np.broadcast_arrays(np.asarray(x_um, dtype=float), np.asarray(y_um, dtype=float))
    cx, cy = model["field_center_um"]
    scale = float(model["field_half_width_um"])
    design = _design((x_um - cx) / scale, (y_um - cy) / scale, model["terms"])
    return {int(j): design @ np.asarray(c, dtype=float) for j, c in model["coefficients_rad"].items()}


def wavefront_rms_rad(coefficients: Mapping[int, np.ndarray | float]) -> np.ndarray:
    """RMS wavefront error (rad) of RMS-normalised Noll coefficients, piston and tilt left out."""
    terms = [np.asarray(c, dtype=float) ** 2 for j, c in coefficients.items() if int(j) >= FIRST_ABERRATION]
    if not terms:
        return np.zeros(np.shape(next(iter(coefficients.values()), 0.0)))
    return np.sqrt(np.sum(terms, axis=0))


def strehl(rms_rad: np.ndarray | float) -> np.ndarray:
    """Marechal's approximation of the Strehl ratio, exp(-sigma^2)."""
    return np.exp(-np.asarray(rms_rad, dtype=float) ** 2)


def dominant_zernikes(coefficients: Mapping[int, float], count: int = 3) -> list[dict]:
    """The `count` largest aberration terms (j >= 4) by |c_j|: [{"noll", "name", "rad"}]."""
    items = sorted(
        ((int(j), float(c)) for j, c in coefficients.items() if int(j) >= FIRST_ABERRATION),
        key=lambda item: -abs(item[1]),
    )
    return [{"noll": j, "name": zernike_name(j), "rad": c} for j, c in items[:count]]


def point_report(coefficients: Mapping[int, float]) -> dict:
    """Wavefront RMS (rad, waves), Strehl, Marechal verdict and dominant Zernikes of one pupil."""
    rms = float(wavefront_rms_rad(coefficients))
    ratio = float(strehl(rms))
    return {
        "rms_rad": rms,
        "rms_waves": rms / (2 * math.pi),
        "strehl": ratio,
        "diffraction_limited": bool(ratio >= MARECHAL_STREHL),
        "dominant": dominant_zernikes(coefficients),
    }


def tile_reports(centers_um: Sequence[tuple[float, float]], zernikes: Sequence[Mapping[int, float]]) -> list[dict]:
    """Each tile's own pupil, read at its centre: {center_um, zernike_rad, `point_report`'s values}."""
    tiles = []
    for center_um, z in zip(centers_um, zernikes, strict=True):
        clean = {int(j): float(v) for j, v in z.items()}
        tiles.append({"center_um": [float(center_um[0]), float(center_um[1])], "zernike_rad": {
            str(j): v for j, v in sorted(clean.items())}, **point_report(clean)})
    return tiles


def field_aberrations(
    centers_um: Sequence[tuple[float, float]],
    zernikes: Sequence[Mapping[int, float]],
    stds: Sequence[Mapping[int, float | None]] | None = None,
    *,
    field_extent_um: tuple[float, float, float, float],
    led_geometry: Mapping | None = None,
    wavelength_um: float | None = None,
    grid: int = 9,
    max_order: int = 2,
    seidel: bool = True,
) -> dict:
    """The calibration.json `field_aberrations` entry: the model, a `grid` x `grid` map over the field
    (`field_extent_um` = x_min, x_max, y_min, y_max of the sample plane), each tile's own pupil
    report and a summary. `led_geometry` (the global LED misalignment) is recorded beside it: what is
    not the lens."""
    x_min, x_max, y_min, y_max = (float(v) for v in field_extent_um)
    center = ((x_min + x_max) / 2, (y_min + y_max) / 2)
    half_width = max((x_max - x_min) / 2, (y_max - y_min) / 2, 1e-6)
    model = fit_aberration_model(
        centers_um, zernikes, stds, field_center_um=center, field_half_width_um=half_width, max_order=max_order,
        seidel=seidel,
    )
    xs = np.linspace(x_min, x_max, grid)
    ys = np.linspace(y_min, y_max, grid)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    coefficients = evaluate_model(model, xx, yy)
    rms = wavefront_rms_rad(coefficients)
    ratio = strehl(rms)
    dominant = []
    for r in range(grid):
        dominant.append([
            [d["noll"] for d in dominant_zernikes({j: float(c[r, k]) for j, c in coefficients.items()})]
            for k in range(grid)
        ])
    # Each tile gives one pupil, read at its centre: beyond the outermost tile centres the map is the model's
    # extrapolation (its error grows there: notes/s4_i12b.md), marked so a reader of the report knows.
    centre_x = [float(c[0]) for c in centers_um]
    centre_y = [float(c[1]) for c in centers_um]
    covered = [min(centre_x), max(centre_x), min(centre_y), max(centre_y)]
    tolerance = 1e-6 * half_width
    extrapolated = ((xx < covered[0] - tolerance) | (xx > covered[1] + tolerance)
                    | (yy < covered[2] - tolerance) | (yy > covered[3] + tolerance))
    tiles = tile_reports(centers_um, zernikes)
    at_center = point_report({j: float(c[grid // 2, grid // 2]) for j, c in coefficients.items()})
    out: dict = {
        "description": "field-dependent pupil of the objective (lens aberrations), from the tiles' own pupils "
        "with the LED geometry held at the global calibration; Marechal: Strehl = exp(-rms_rad^2), "
        f"diffraction-limited when Strehl >= {MARECHAL_STREHL}",
        "model": model,
        "map": {
            "x_um": [float(v) for v in xs],
            "y_um": [float(v) for v in ys],
            "rms_rad": rms.tolist(),
            "rms_waves": (rms / (2 * math.pi)).tolist(),
            "strehl": ratio.tolist(),
            "diffraction_limited": (ratio >= MARECHAL_STREHL).tolist(),
            "dominant_noll": dominant,
            # grid points beyond the tile centres' extent (x_min, x_max, y_min, y_max = `tile_centres_extent_um`)
            "extrapolated": extrapolated.tolist(),
            "tile_centres_extent_um": covered,
        },
        "tiles": tiles,
        "summary": {
            "center": at_center,
            "max_rms_rad": float(rms.max()),
            "max_rms_waves": float(rms.max() / (2 * math.pi)),
            "min_strehl": float(ratio.min()),
            "diffraction_limited_fraction": float(np.mean(ratio >= MARECHAL_STREHL)),
            "max_rms_rad_within_tile_centres": float(rms[~extrapolated].max()) if (~extrapolated).any() else None,
        },
    }
    if led_geometry is not None:
        out["led_geometry"] = dict(led_geometry)
    if wavelength_um is not None:
        out["wavelength_um"] = float(wavelength_um)
    return out


def draw_aberration_map(aberrations: Mapping, path: str | Path, title: str = "Aberration map") -> Path:
    """The lens-inspection picture (PNG): wavefront RMS (waves) with the Marechal contour, Strehl, the
    dominant term's coefficient over the field, and the tiles' own values. `aberrations`: the
    `field_aberrations` dict, or a whole calibration dict holding it."""
    if "field_aberrations" in aberrations:
        aberrations = aberrations["field_aberrations"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    grid = aberrations["map"]
    xs, ys = np.asarray(grid["x_um"]) / 1000, np.asarray(grid["y_um"]) / 1000
    rms_waves = np.asarray(grid["rms_waves"])
    ratio = np.asarray(grid["strehl"])
    extent = (xs[0], xs[-1], ys[-1], ys[0])  # y grows downwards, as in the image
    model = aberrations["model"]
    yy, xx = np.meshgrid(np.asarray(grid["y_um"]), np.asarray(grid["x_um"]), indexing="ij")
    coefficients = evaluate_model(model, xx, yy)
    summary = aberrations["summary"]
    main = summary["center"]["dominant"][0]["noll"] if summary["center"]["dominant"] else FIRST_ABERRATION
    tiles = aberrations.get("tiles", [])
    tx = [t["center_um"][0] / 1000 for t in tiles]
    ty = [t["center_um"][1] / 1000 for t in tiles]
    missing = [(x / 1000, y / 1000) for x, y in (aberrations.get("partial") or {}).get("missing_tile_centres_um", [])]

    figure, axes = plt.subplots(1, 3, figsize=(13.5, 4.3))
    panels = (
        (rms_waves, "wavefront RMS (waves)", "viridis"),
        (ratio, "Strehl (Marechal)", "magma"),
        (coefficients.get(int(main), np.zeros_like(rms_waves)), f"Z{main} {zernike_name(main)} (rad)", "coolwarm"),
    )
    for axis, (values, label, cmap) in zip(axes, panels, strict=True):
        image = axis.imshow(values, extent=extent, cmap=cmap, interpolation="bilinear")
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        axis.set_title(label)
        axis.set_xlabel("x (mm)")
        axis.set_ylabel("y (mm)")
        axis.plot(tx, ty, "w+", markersize=6)
        if missing:  # a partial run's missing tiles: no pupil there, the model's guess
            axis.plot(*zip(*missing, strict=True), "rx", markersize=7)
        covered = grid.get("tile_centres_extent_um")
        if covered and covered[1] > covered[0] and covered[3] > covered[2]:  # beyond it: extrapolated
            x0, x1, y0, y1 = (v / 1000 for v in covered)
            axis.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], "w--", linewidth=0.8)
    if ratio.min() < MARECHAL_STREHL <= ratio.max():
        axes[1].contour(xs, ys, ratio, levels=[MARECHAL_STREHL], colors="cyan", linewidths=1.5)
    geometry = aberrations.get("led_geometry")
    subtitle = (
        f"{title}: max RMS {summary['max_rms_waves']:.3f} waves, min Strehl {summary['min_strehl']:.2f}, "
        f"{100 * summary['diffraction_limited_fraction']:.0f} % of the field diffraction-limited "
        f"(Strehl >= {MARECHAL_STREHL}, cyan)\noutside the dashed square (the tile centres) extrapolated"
    )
    if missing:
        subtitle += f"; partial: fitted on the {len(tiles)} finished tiles (+), red x: the missing tiles"
    if geometry:
        subtitle += (
            f"\nLED misalignment (global, not the lens): shift ({geometry.get('shift_x_mm', 0):.3f}, "
            f"{geometry.get('shift_y_mm', 0):.3f}) mm, rotation {geometry.get('rotation_deg', 0):.3f} deg, "
            f"height {geometry.get('height_mm', 0):.2f} mm"
        )
    figure.suptitle(subtitle, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
