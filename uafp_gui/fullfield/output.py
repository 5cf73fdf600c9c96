"""A full-field reconstruction written as one result folder, whole or not at all.

The folder (written by `io.result.write_result`, atomically, with a manifest of every file, the
sub-folders' too):

- `amplitude.tif`, `phase.tif`, `pupil.tif`, `calibration.json`: spec section 3 for the stitched
  mosaic (the pupil of the tile nearest the field centre; the calibration is the global one: LED
  geometry, frame gains, the field centre's Zernikes, and the field-dependent aberrations and
  aberration map as extra keys),
- `mosaic.ome.zarr` (multiscale OME-Zarr v0.5, opens in napari) and `mosaic.ome.tif` (pyramidal
  OME-TIFF, Fiji/QuPath): amplitude and phase as two channels, physical pixel size in um,
- `tiles/rRR_cCC/`: each tile's own spec-section-3 result; `tiles.json`: the tile table (grid place,
  camera-pixel box, sample-plane centre, misfit, stop reason, seconds),
- `aberration_map.png` when the calibration carries an aberration map.

`write_finished_tiles` writes what a stopped run, or one where tiles failed, had finished (tiles/ and
tiles.json, marked partial, with the failed tiles and why) so neither a Ctrl-C nor a failing tile
loses finished work; given the planned tile `layout`, also the finished tiles' mosaic, stitched as a
whole run's is, as `mosaic.ome.zarr` and `mosaic.ome.tif` (same writers, pixel size and channels).
Its holes, the pixels no finished tile covers, are NaN in both channels (Fiji's and napari's "no
data": left out of measurements, drawn transparent); the files' metadata (the `uafp` group attribute,
the OME-TIFF's description) and tiles.json say `partial`: which tiles are missing, where, and why.
There are no amplitude.tif / phase.tif then: a partial folder never reads as a whole result.
`read_partial_summary` reads such a folder's tiles.json back as what a front end tells its user: how
many tiles finished, which are missing and why, where the mosaic is (or why there is none).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from uafp_gui.io.calibration import CALIBRATION_FIELDS, CALIBRATION_FORMAT, Calibration, save_calibration
from uafp_gui.io.ome import DEFAULT_MIN_SIZE, write_ome_tiff, write_ome_zarr
from uafp_gui.io.result import write_folder_atomically, write_result

if TYPE_CHECKING:
    from uafp_gui.fullfield.pipeline import FullFieldResult
    from uafp_gui.fullfield.tiles import Tile, TileResult

__all__ = [
    "ABERRATION_MAP",
    "draw_aberration_picture",
    "field_aberrations_of",
    "MOSAIC_TIFF",
    "MOSAIC_ZARR",
    "TILES",
    "TILE_TABLE",
    "mosaic_calibration",
    "NOT_FINISHED",
    "PartialSummary",
    "partial_mosaic",
    "read_partial_summary",
    "tile_folder_name",
    "write_finished_tiles",
    "write_full_field",
]

MOSAIC_ZARR = "mosaic.ome.zarr"
MOSAIC_TIFF = "mosaic.ome.tif"
ABERRATION_MAP = "aberration_map.png"
TILES = "tiles"
TILE_TABLE = "tiles.json"
ZARR_CHUNKS = (1, 1024, 1024)  # one channel, 4 MiB of float32: a viewer reads a large mosaic piece by piece
PUPIL_STAND_IN_SIZE = 64


def plain(value: object) -> object:
    """JSON-ready: numpy arrays and scalars as lists and numbers, tuples as lists, keys as strings, a
    non-finite number as null (JSON has none; e.g. the spread of a value estimated from one tile)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    return value


def _calibration(data: dict, pixel_um: float, source_dataset: str = "") -> Calibration:
    data = dict(plain(dict(data)))  # type: ignore[call-overload]
    if data.get("format") == CALIBRATION_FORMAT:
        calibration = Calibration.from_dict(data)
    else:
        known = {key: data[key] for key in CALIBRATION_FIELDS if key in data}
        extra = {k: v for k, v in data.items() if k not in known and k not in ("format", "version")}
        calibration = Calibration(**known, extra=extra)
    return dataclasses.replace(
        calibration,
        object_pixel_um=float(pixel_um),
        source_dataset=calibration.source_dataset or source_dataset,
    )


def mosaic_calibration(result: FullFieldResult, source_dataset: str = "") -> Calibration:
    """The full field's `Calibration` (global system + field-dependent extras) at the mosaic's pixel size."""
    return _calibration(result.calibration, result.pixel_um, source_dataset)


def tile_folder_name(tile: Tile) -> str:
    return f"r{int(tile.grid_row):02d}_c{int(tile.grid_col):02d}"


def _stand_in_pupil(zernike_rad: dict, size: int = PUPIL_STAND_IN_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The pupil drawn from Zernike coefficients on a unit-disk grid (when a tile carries no pupil array)."""
    import torch

    from uafp_gui.physics.zernike import zernike_basis

    axis = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    rho, phi = torch.hypot(x, y), torch.atan2(y, x)
    inside = rho <= 1.0
    phase = torch.zeros_like(rho)
    indices = sorted(int(j) for j in zernike_rad)
    if indices:
        coefficients = torch.tensor([float(zernike_rad[j] if j in zernike_rad else zernike_rad[str(j)])
                                     for j in indices], dtype=torch.float64)
        phase = torch.einsum("j,jyx->yx", coefficients, zernike_basis(indices, rho, phi))
    amplitude = inside.to(torch.float32).numpy()
    return amplitude, (phase * inside).to(torch.float32).numpy()


def _pupil_of(tile_result: TileResult | None, calibration: Calibration) -> tuple[np.ndarray, np.ndarray]:
    pupil = getattr(tile_result, "pupil", None) if tile_result is not None else None
    if pupil is not None:
        pupil = np.asarray(pupil)
        if np.iscomplexobj(pupil):
            return np.abs(pupil).astype(np.float32), np.angle(pupil).astype(np.float32)
        return pupil[0].astype(np.float32), pupil[1].astype(np.float32)
    return _stand_in_pupil(calibration.zernike_rad)


def _centre_tile(tiles: Sequence[TileResult]) -> TileResult | None:
    if not tiles:
        return None
    return min(tiles, key=lambda t: math.hypot(*t.tile.center_um))


def tile_table(
    tiles: Sequence[TileResult], *, planned: int | None = None, failed: Sequence[tuple[Tile, str]] = ()
) -> dict:
    """tiles.json: a row per written tile; with `planned`, whether the result is partial; `failed`: the
    tiles that failed after their retries, each with where it lies and why."""
    rows = []
    for result in sorted(tiles, key=lambda r: r.tile.index):
        tile = result.tile
        rows.append(
            {
                "index": int(tile.index),
                "folder": f"{TILES}/{tile_folder_name(tile)}",
                "grid_row": int(tile.grid_row),
                "grid_col": int(tile.grid_col),
                "y0": int(tile.y0),
                "x0": int(tile.x0),
                "height": int(tile.height),
                "width": int(tile.width),
                "center_um": [float(c) for c in tile.center_um],
                "data_misfit": float(result.data_misfit),
                "stop_reason": str(result.stop_reason),
                "wall_s": float(result.wall_s),
            }
        )
    table: dict[str, object] = {"format": "uafp-tiles", "version": 1, "tiles": rows}
    if planned is not None:
        table["planned"] = int(planned)
        table["partial"] = len(rows) < planned
    if failed:
        table["failed"] = [
            {"index": int(tile.index), "grid_row": int(tile.grid_row), "grid_col": int(tile.grid_col),
             "y0": int(tile.y0), "x0": int(tile.x0), "height": int(tile.height), "width": int(tile.width),
             "error": str(reason)}
            for tile, reason in sorted(failed, key=lambda item: item[0].index)
        ]
    return table


def _write_tiles(folder: Path, tiles: Sequence[TileResult], pixel_um: float, source_dataset: str) -> None:
    folder.mkdir()
    for result in tiles:
        calibration = _calibration(result.calibration, pixel_um, source_dataset)
        pupil_amplitude, pupil_phase = _pupil_of(result, calibration)
        write_result(
            folder / tile_folder_name(result.tile),
            result.amplitude,
            result.phase,
            pupil_amplitude,
            pupil_phase,
            calibration,
        )


def _json_writer(data: dict) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(json.dumps(plain(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")

    return write


def field_aberrations_of(calibration: dict) -> dict | None:
    """The calibration's field-dependent aberrations (model, map, summary), when it has a map."""
    aberrations = calibration.get("field_aberrations")
    return aberrations if isinstance(aberrations, dict) and aberrations.get("map") else None


def draw_aberration_picture(calibration: dict, path: str | os.PathLike[str]) -> Path | None:
    """aberration_map.png from a full-field calibration (None when it has no map)."""
    from uafp_gui.fullfield.aberration import draw_aberration_map

    aberrations = field_aberrations_of(calibration)
    if aberrations is None:
        return None
    return draw_aberration_map(aberrations, Path(path))


def write_full_field(
    folder: str | os.PathLike[str],
    result: FullFieldResult,
    *,
    source_dataset: str = "",
    min_size: int = DEFAULT_MIN_SIZE,
    zarr_chunks: tuple[int, ...] = ZARR_CHUNKS,
) -> Path:
    """Write a `FullFieldResult` as the result folder described in the module docstring; returns it."""
    folder = Path(folder)
    calibration = mosaic_calibration(result, source_dataset)
    calibration_dict = calibration.to_dict()
    pixel_um = float(result.pixel_um)
    amplitude = np.asarray(result.amplitude, dtype=np.float32)
    phase = np.asarray(result.phase, dtype=np.float32)
    stack = np.stack([amplitude, phase])
    name = f"{Path(source_dataset).stem or folder.name} (uafp full field)"
    pupil_amplitude, pupil_phase = _pupil_of(_centre_tile(result.tiles), calibration)

    def zarr(path: Path) -> None:
        write_ome_zarr(path, stack, pixel_um, name=name, attributes={"calibration": calibration_dict},
                       min_size=min_size, chunks=zarr_chunks)

    def tiff(path: Path) -> None:
        description = json.dumps({"calibration": calibration_dict}, allow_nan=False)
        write_ome_tiff(path, stack, pixel_um, name=name, description=description, min_size=min_size)

    extra_files: dict[str, Callable[[Path], object]] = {
        TILE_TABLE: _json_writer(tile_table(result.tiles, planned=len(result.tiles))),
        TILES: lambda path: _write_tiles(path, result.tiles, pixel_um, source_dataset),
        MOSAIC_ZARR: zarr,
        MOSAIC_TIFF: tiff,
    }
    if field_aberrations_of(calibration_dict) is not None:
        extra_files[ABERRATION_MAP] = lambda path: draw_aberration_picture(calibration_dict, path)
    return write_result(folder, amplitude, phase, pupil_amplitude, pupil_phase, calibration, extra_files=extra_files)


NOT_FINISHED = "not finished: the run was stopped"


def partial_mosaic(
    tiles: Sequence[TileResult],
    layout: Sequence[Tile],
    *,
    failed: Sequence[tuple[Tile, str]] = (),
    not_finished: str = NOT_FINISHED,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The finished `tiles` stitched in the planned `layout` (NaN where no finished tile lies), and what
    is missing: (amplitude, phase, partial), `partial` the metadata block (module docstring). A tile of
    the layout neither finished nor `failed` is missing for the reason `not_finished`."""
    from uafp_gui.fullfield.stitch import stitch

    ordered = sorted(tiles, key=lambda r: r.tile.index)
    first = ordered[0]
    upsample = max(1, int(round(first.amplitude.shape[0] / first.tile.height)))
    frame_shape = (max(t.y1 for t in layout), max(t.x1 for t in layout))
    amplitude, phase, alignment = stitch(
        [r.tile for r in ordered], [r.amplitude for r in ordered], [r.phase for r in ordered], frame_shape, upsample,
        layout=layout,
    )
    hole = np.isnan(amplitude)
    why = {tile.index: str(reason) for tile, reason in failed}
    done = {r.tile.index for r in ordered}
    missing = []
    for tile in sorted(layout, key=lambda t: t.index):
        if tile.index in done:
            continue
        box = (tile.y0 * upsample, tile.x0 * upsample, tile.y1 * upsample, tile.x1 * upsample)
        missing.append({
            "index": int(tile.index), "grid_row": int(tile.grid_row), "grid_col": int(tile.grid_col),
            "reason": "failed" if tile.index in why else "not finished",
            "error": why.get(tile.index, not_finished),
            "mosaic_box_px": [int(v) for v in box],  # y0, x0, y1, x1 in mosaic pixels
            "hole_px": int(hole[box[0] : box[2], box[1] : box[3]].sum()),  # its pixels no finished tile covers
        })
    stitching: dict[str, object] = {
        "reference_tile": int(ordered[alignment.reference].tile.index),
        "max_overlap_phase_rms_rad": float(max(alignment.pair_residual_rad.values(), default=0.0)),
    }
    unlinked = [{"tiles": sorted(int(ordered[k].tile.index) for k in group),
                 "reference_tile": int(ordered[group[0]].tile.index)} for group in alignment.components[1:]]
    if unlinked:  # islands: missing tiles cut them off from the reference (stitch's module docstring)
        stitching["unlinked_groups"] = unlinked
        stitching["note"] = (
            "missing tiles cut these finished tiles off from the reference tile: each group is aligned within "
            "itself to its own reference tile's phase offset and amplitude scale, not aligned to the rest (no "
            "overlap measures it)")
    partial = {
        "partial": True,
        "holes": "NaN in amplitude and phase where no finished tile lies",
        "finished_tiles": sorted(done),
        "planned_tiles": len(layout),
        "missing_tiles": missing,
        "hole_fraction": float(hole.mean()),
        "mosaic_shape": [int(v) for v in amplitude.shape],
        "upsample": upsample,
        "stitching": stitching,
    }
    return amplitude, phase, partial


def write_finished_tiles(
    folder: str | os.PathLike[str],
    tiles: Sequence[TileResult],
    pixel_um: float,
    *,
    planned: int,
    calibration: dict | None = None,
    source_dataset: str = "",
    failed: Sequence[tuple[Tile, str]] = (),
    layout: Sequence[Tile] | None = None,
    not_finished: str = NOT_FINISHED,
    aberrations: dict | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    zarr_chunks: tuple[int, ...] = ZARR_CHUNKS,
) -> Path:
    """A stopped run's (or one whose `failed` tiles failed) finished tiles: `tiles/`, `tiles.json`
    (partial, with the planned count and the failed tiles and why) and, when known, the shared
    `calibration.json`; with the planned tile `layout`, the mosaic of the finished tiles with holes
    (`partial_mosaic`) as OME-Zarr and OME-TIFF; atomically like a whole result.

    `aberrations`: the finished tiles' lens-inspection report (`pipeline.partial_field_aberrations`, marked
    partial): `field_aberrations` of calibration.json (and so of the mosaic's metadata), its picture
    `aberration_map.png` when it has a map, and a line in tiles.json ("aberrations": tiles used, picture,
    note; the whole report there when there is no calibration to carry it)."""
    table = tile_table(tiles, planned=planned, failed=failed)
    mosaic = None
    if aberrations is not None:
        aberrations = dict(plain(aberrations))  # type: ignore[call-overload]
        has_map = field_aberrations_of({"field_aberrations": aberrations}) is not None
        partial = aberrations.get("partial") or {}
        table["aberrations"] = {
            "in": "calibration.json field_aberrations" if calibration is not None else "here (report)",
            "picture": ABERRATION_MAP if has_map else None,
            "tiles_used": partial.get("tiles_used"),
            "note": partial.get("note", ""),
            **({"report": aberrations} if calibration is None else {}),
        }
        if has_map:
            table["aberrations"]["max_rms_waves"] = aberrations["summary"]["max_rms_waves"]

    def no_mosaic(error: Exception) -> None:
        # the finished tiles matter more than their picture: written all the same, the reason beside them
        reason = f"{type(error).__name__}: {error}"
        table["mosaic"] = {"error": reason}
        warnings.warn(f"the finished tiles' mosaic could not be written ({reason}); the tiles are written without it",
                      stacklevel=3)

    if layout is not None and tiles:
        try:
            mosaic = partial_mosaic(tiles, layout, failed=failed, not_finished=not_finished)
        except Exception as error:  # noqa: BLE001 - reported by no_mosaic
            no_mosaic(error)

    def write(staging: Path) -> None:
        _write_tiles(staging / TILES, tiles, pixel_um, source_dataset)
        calibration_dict = None
        if calibration is not None:
            shared = _calibration(calibration, pixel_um, source_dataset)
            if aberrations is not None:
                shared = dataclasses.replace(shared, extra={**shared.extra, "field_aberrations": aberrations})
            save_calibration(staging / "calibration.json", shared)
            calibration_dict = shared.to_dict()
        if aberrations is not None and table["aberrations"]["picture"]:
            from uafp_gui.fullfield.aberration import draw_aberration_map

            used = len(aberrations["partial"]["tiles_used"])
            try:
                draw_aberration_map(aberrations, staging / ABERRATION_MAP,
                                    title=f"Aberration map (partial: {used} of {planned} tiles)")
            except Exception as error:  # noqa: BLE001 - the report stays in the JSON; the tiles are written
                (staging / ABERRATION_MAP).unlink(missing_ok=True)
                table["aberrations"].update(picture=None, picture_error=f"{type(error).__name__}: {error}")
                warnings.warn(f"the aberration map's picture could not be drawn ({type(error).__name__}: {error})",
                              stacklevel=3)
        if mosaic is not None:
            amplitude, phase, partial = mosaic
            stack = np.stack([amplitude, phase]).astype(np.float32)
            name = f"{Path(source_dataset).stem or Path(folder).name} (uafp full field, partial)"
            metadata = plain({"partial": partial, **({"calibration": calibration_dict} if calibration_dict else {})})
            try:
                write_ome_zarr(staging / MOSAIC_ZARR, stack, pixel_um, name=name,
                               attributes=metadata, min_size=min_size, chunks=zarr_chunks)  # type: ignore[arg-type]
                write_ome_tiff(staging / MOSAIC_TIFF, stack, pixel_um, name=name,
                               description=json.dumps(metadata, allow_nan=False), min_size=min_size)
                table["mosaic"] = {"files": [MOSAIC_ZARR, MOSAIC_TIFF], **partial}
            except Exception as error:  # noqa: BLE001 - reported by no_mosaic
                shutil.rmtree(staging / MOSAIC_ZARR, ignore_errors=True)
                (staging / MOSAIC_TIFF).unlink(missing_ok=True)
                no_mosaic(error)
        _json_writer(table)(staging / TILE_TABLE)

    return write_folder_atomically(folder, write)


MISSING_LISTED = 6  # tiles named one by one in a summary line; tiles.json lists them all


def _tile_numbers(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:MISSING_LISTED])
    more = len(indices) - MISSING_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


@dataclasses.dataclass(frozen=True)
class PartialSummary:
    """A partial result folder as its user needs it (`read_partial_summary`): `missing` lists each missing
    tile's {index, grid_row, grid_col, reason ("failed" | "not finished"), error}; `mosaic_files` the
    mosaic's paths (empty when it could not be made: `mosaic_error` says why); `hole_fraction` the share
    of the field no finished tile covers (None without a mosaic)."""

    folder: Path
    finished: int
    planned: int
    missing: tuple[dict, ...]
    mosaic_files: tuple[Path, ...] = ()
    mosaic_error: str | None = None
    hole_fraction: float | None = None
    aberration_map: Path | None = None  # the finished tiles' aberration map (partial), when there is one
    aberration_note: str = ""  # what the finished tiles' aberration report is (a map, or each tile's values)
    unlinked_groups: tuple[tuple[int, ...], ...] = ()  # finished tiles cut off from the reference by holes

    def missing_text(self, count: bool = True) -> str:
        """'3 missing: tiles 6, 7, 8 not finished' / '2 missing: tiles 0, 3 failed; tile 5 not finished'
        (without `count`: from 'tiles')."""
        if not self.missing:
            return "none missing"
        parts = []
        for reason in ("failed", "not finished"):
            of_reason = [m.get("index") for m in self.missing if m.get("reason") == reason]
            named = [int(i) for i in of_reason if i is not None]
            if named:
                parts.append(f"tile{'s' if len(named) > 1 else ''} {_tile_numbers(named)} {reason}")
            if len(of_reason) > len(named):  # a folder without a mosaic counts its unfinished tiles only
                parts.append(f"{len(of_reason) - len(named)} {'more ' if named else ''}{reason}")
        return (f"{len(self.missing)} missing: " if count else "") + "; ".join(parts)

    def where_text(self) -> str:
        """Where the partial mosaic is (its holes NaN), or why there is none and where the tiles are."""
        if self.mosaic_files:
            names = " and ".join(str(path) if k == 0 else path.name for k, path in enumerate(self.mosaic_files))
            holes = f", {100 * self.hole_fraction:.0f} % of the field" if self.hole_fraction is not None else ""
            return f"partial mosaic (NaN in the holes{holes}): {names}"
        if self.mosaic_error:
            return f"no mosaic ({self.mosaic_error}); the finished tiles: {self.folder / TILES}"
        return f"the finished tiles: {self.folder / TILES}"

    def short_where_text(self) -> str:
        """`where_text` for a narrow status line: the folder's name, not its path."""
        name = f"{self.folder.name}/"
        if self.mosaic_files:
            holes = f" (NaN holes: {100 * self.hole_fraction:.0f} % of the field)" if self.hole_fraction is not None \
                else ""
            return f"partial mosaic in {name}{holes}"
        if self.mosaic_error:
            return f"no mosaic ({self.mosaic_error}); tiles in {name}"
        return f"tiles in {name}"

    def text(self) -> str:
        """The whole sentence: what finished, what is missing and why, where everything is."""
        first = f"{self.finished} of {self.planned} tiles finished ({self.missing_text()})"
        errors = sorted({str(m["error"]) for m in self.missing if m.get("reason") == "failed" and m.get("error")})
        why = f"; failed with: {'; '.join(errors[:3])}" if errors else ""
        lens = ""
        if self.aberration_map is not None:
            lens = f" Aberration map of the finished tiles (partial: {self.aberration_note}): {self.aberration_map}."
        elif self.aberration_note:
            lens = f" Aberrations: {self.aberration_note} (calibration.json)."
        islands = ""
        if self.unlinked_groups:
            groups = "; ".join(_tile_numbers(list(group)) for group in self.unlinked_groups)
            islands = (f" Tiles cut off from the rest by holes ({groups}) keep a phase offset of their own: "
                       "compare phases only within a linked group.")
        return (f"{first}{why}. {self.where_text()[0].upper()}{self.where_text()[1:]}; tiles/ and {TILE_TABLE} "
                f"(which tiles are missing and why) in {self.folder}.{lens}{islands}")


def read_partial_summary(folder: str | os.PathLike[str]) -> PartialSummary:
    """What a partial result folder (`write_finished_tiles`) holds, from its tiles.json."""
    folder = Path(folder)
    table = json.loads((folder / TILE_TABLE).read_text(encoding="utf-8"))
    finished = len(table.get("tiles", []))
    planned = int(table.get("planned", finished))
    mosaic = table.get("mosaic") or {}
    if "missing_tiles" in mosaic:
        missing = tuple(dict(m) for m in mosaic["missing_tiles"])
    else:  # no mosaic: the failed tiles are listed, the unfinished ones only counted
        missing = tuple({"index": int(f["index"]), "grid_row": f.get("grid_row"), "grid_col": f.get("grid_col"),
                         "reason": "failed", "error": f.get("error", "")} for f in table.get("failed", []))
        missing += tuple({"index": None, "reason": "not finished"} for _ in range(planned - finished - len(missing)))
    files = tuple(folder / name for name in mosaic.get("files", ()))
    lens = table.get("aberrations") or {}
    picture = folder / lens["picture"] if lens.get("picture") else None
    islands = tuple(tuple(int(k) for k in group["tiles"])
                    for group in (mosaic.get("stitching") or {}).get("unlinked_groups", []))
    return PartialSummary(folder, finished, planned, missing, files, mosaic.get("error"), mosaic.get("hole_fraction"),
                          picture, str(lens.get("note", "")), islands)
