"""The full-field core (uafp_gui.fullfield): tiling, region reads, one shared calibration, the aberration
model, stitching, and the pipeline with an injected executor. Seeded; the end-to-end run on the
reference simulator's field preset is in the slow lane."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from uafp_gui.errors import ConfigError, DatasetError, ReconstructionError
from uafp_gui.fullfield import aberration, calibrate, pipeline, region, stitch, tiles
from uafp_gui.fullfield.tiles import Tile, TileResult
from uafp_gui.io.dataset import PartialDatasetWarning, read_dataset
from uafp_gui.io.schema import DatasetMeta
from uafp_gui.io.writer import write_dataset
from uafp_gui.model import Optics

REPO = Path(__file__).resolve().parents[1]


def _meta(n_frames: int = 3, **changes) -> DatasetMeta:
    leds = [[16, 16], [16, 17], [17, 16], [15, 16], [16, 15], [17, 17], [15, 15], [20, 20], [12, 12]]
    meta = DatasetMeta(
        optics=Optics(),
        frames=tuple({"leds": [leds[k % len(leds)]], "exposure_ms": 10.0} for k in range(n_frames)),
        camera_offset=100.0,
        bit_depth=12,
    )
    return meta.replace(**changes) if changes else meta


# ------------------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("shape,size,overlap", [((256, 256), 144, 32), ((1024, 1024), None, None),
                                                 ((300, 517), 128, 20), ((100, 90), 128, 16)])
def test_tiles_cover_the_frame_with_the_overlap_and_edges_flush(shape, size, overlap):
    meta = _meta()
    plan = tiles.plan_tiles(shape, meta, size, overlap)
    covered = np.zeros(shape, dtype=int)
    for k, tile in enumerate(plan):
        assert tile.index == k
        covered[tile.rows, tile.cols] += 1
        assert 0 <= tile.y0 and tile.y1 <= shape[0] and 0 <= tile.x0 and tile.x1 <= shape[1]
    assert covered.min() >= 1
    expected_overlap = overlap if overlap is not None else tiles.default_overlap(plan[0].height, meta)
    rows, cols = tiles.grid_shape(plan)
    assert len(plan) == rows * cols
    for tile in plan:
        if tile.grid_col == cols - 1:
            assert tile.x1 == shape[1]  # the last tile of a row is flush with the frame's edge
        else:
            right = plan[tile.index + 1]
            assert tile.x1 - right.x0 >= min(expected_overlap, tile.width)
        if tile.grid_row == rows - 1:
            assert tile.y1 == shape[0]
    assert plan[0].y0 == 0 and plan[0].x0 == 0


def test_tile_count_and_defaults_from_the_optics():
    meta = _meta()
    assert len(tiles.plan_tiles((256, 256), meta, 144, 32)) == 4
    plan = tiles.plan_tiles((1024, 1024), meta)
    assert plan[0].height == 256  # default for a 1024 frame
    overlap = tiles.default_overlap(256, meta)
    # >= 10 % of the tile and >= the pupil's blur width (lambda / NA / pixel = 2.9 px; x 4)
    assert overlap >= 0.1 * 256 and overlap >= tiles.blur_width_px(meta) >= 11
    # A very close LED array limits the tile: the angle of one LED changes by a quarter of a pitch angle at most.
    close = _meta().replace(led_pitch_mm=0.2)
    assert tiles.default_tile_size((1024, 1024), close) < 256
    with pytest.raises(ConfigError):
        tiles.plan_tiles((256, 256), meta, 64, 64)


def test_tile_centres_follow_the_convention():
    meta = _meta().replace(tile_center_um=(100.0, -50.0))
    plan = tiles.plan_tiles((200, 300), meta, 128, 16)
    pixel = meta.camera_pixel_um / meta.magnification
    for tile in plan:
        x = 100.0 + (tile.x0 + tile.width / 2 - 150) * pixel
        y = -50.0 + (tile.y0 + tile.height / 2 - 100) * pixel
        assert tile.center_um == pytest.approx((x, y), abs=1e-9)
    # x grows with the column, y with the row (spec section 2)
    assert plan[1].center_um[0] > plan[0].center_um[0]
    assert plan[-1].center_um[1] > plan[0].center_um[1]
    whole = tiles.plan_tiles((200, 300), meta, 400, 0)
    assert len(whole) == 1 and whole[0].center_um == pytest.approx((100.0, -50.0))


# ------------------------------------------------------------------------------------- region reads


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(3)
    meta = _meta(5)
    frames = rng.integers(0, 4095, size=(5, 96, 112)).astype(np.uint16)
    path = tmp_path / "field.tif"
    write_dataset(path, meta, frames)
    return path, frames, meta


def test_region_reads_equal_full_reads(stack):
    path, frames, _ = stack
    full = read_dataset(path)
    plan = tiles.plan_tiles(full.frame_shape, full.meta, 64, 16)
    assert len(plan) == 4
    for tile in plan:
        region_frames, meta = region.read_region(path, tile)
        assert region_frames.dtype == full.frames.dtype
        np.testing.assert_array_equal(region_frames, full.frames[:, tile.rows, tile.cols])
        assert meta.tile_center_um == tile.center_um
        assert meta.frames == full.meta.frames
    info = region.field_info(path)
    assert info.frame_shape == (96, 112) and info.complete and info.meta.frame_count == 5


def test_region_reads_compressed_pages_through_zarr_and_the_sidecar_wins(tmp_path):
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 4095, size=(3, 80, 64)).astype(np.uint16)
    path = tmp_path / "compressed.tif"
    tifffile.imwrite(path, frames, compression="zlib", rowsperstrip=8, photometric="minisblack")
    meta = _meta(3).replace(tile_center_um=(10.0, 20.0))
    path.with_suffix(".json").write_text(meta.to_json())
    tile = tiles.plan_tiles((80, 64), meta, 48, 16)[3]
    region_frames, region_meta = region.read_region(path, tile)
    np.testing.assert_array_equal(region_frames, frames[:, tile.rows, tile.cols])
    assert region_meta.tile_center_um == tile.center_um and region_meta.camera_offset == 100.0


def test_region_reads_never_decode_a_whole_page(stack, monkeypatch):
    path, frames, _ = stack
    tile = Tile(0, 0, 0, 40, 50, 30, 40, (0.0, 0.0))

    def whole_page(*args, **kwargs):
        raise AssertionError("a whole page was decoded")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", whole_page)
    region_frames, _ = region.read_region(path, tile)
    np.testing.assert_array_equal(region_frames, frames[:, 40:70, 50:90])


def test_region_read_memory_is_the_regions_not_the_stacks(tmp_path):
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 4095, size=(9, 512, 512)).astype(np.uint16)  # 4.7 MB on disk
    path = tmp_path / "big.tif"
    write_dataset(path, _meta(9), frames)
    tile = Tile(0, 0, 0, 200, 300, 32, 32, (0.0, 0.0))
    tracemalloc.start()
    region_frames, _ = region.read_region(path, tile)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(region_frames, frames[:, 200:232, 300:332])
    assert peak < 0.25 * frames.nbytes, peak  # a whole-page read would hold at least one 512 KB page per frame


def test_region_of_a_partial_dataset_and_a_tile_outside(stack):
    path, frames, meta = stack
    data = path.read_bytes()
    # Cut the file inside the last page's pixels: 4 complete frames remain.
    cut = path.with_name("cut.tif")
    with tifffile.TiffFile(path) as tif:
        last = tif.pages[4].dataoffsets[0]
    cut.write_bytes(data[: last + 100])
    tile = Tile(0, 0, 0, 10, 10, 20, 20, (0.0, 0.0))
    with pytest.warns(PartialDatasetWarning):
        region_frames, region_meta = region.read_region(cut, tile)
    assert region_frames.shape == (4, 20, 20) and region_meta.frame_count == 4
    np.testing.assert_array_equal(region_frames, frames[:4, 10:30, 10:30])
    with pytest.raises(DatasetError, match="outside"):
        region.read_region(path, Tile(0, 0, 0, 90, 0, 20, 20, (0.0, 0.0)))


# ---------------------------------------------------------------------------------------- stitching


def _field(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    amplitude = 0.4 + ndimage.gaussian_filter(rng.random(shape), 2.0) * 1.2
    phase = 5.0 * ndimage.gaussian_filter(rng.standard_normal(shape), 6.0) + 0.015 * np.arange(shape[1])[None, :]
    return amplitude, phase


def _cut(plan, amplitude, phase, upsample, rng, scales=True, ramps=True):
    amplitudes, phases = [], []
    for tile in plan:
        region_ = (slice(tile.y0 * upsample, tile.y1 * upsample), slice(tile.x0 * upsample, tile.x1 * upsample))
        yy, xx = np.mgrid[0 : tile.height * upsample, 0 : tile.width * upsample]
        offset = rng.uniform(-math.pi, math.pi)
        gy, gx = rng.normal(0.0, 0.03, 2) if ramps else (0.0, 0.0)
        amplitudes.append(amplitude[region_] * (rng.uniform(0.7, 1.4) if scales else 1.0))
        phases.append(np.angle(np.exp(1j * (phase[region_] + offset + gy * yy + gx * xx))).astype(np.float32))
    return amplitudes, phases


def _phase_error(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Wrapped difference after the best global plane (the mosaic's own offset and ramp are free)."""
    z = np.exp(1j * (estimate - truth))
    gy = np.angle(np.sum(z[1:] * np.conj(z[:-1])))
    gx = np.angle(np.sum(z[:, 1:] * np.conj(z[:, :-1])))
    yy, xx = np.mgrid[0 : z.shape[0], 0 : z.shape[1]]
    z = z * np.exp(-1j * (gy * yy + gx * xx))
    return np.angle(z * np.exp(-1j * np.angle(z.sum())))


def test_stitching_tiles_with_random_offsets_ramps_and_scales_reproduces_the_image():
    rng = np.random.default_rng(11)
    shape, upsample = (200, 260), 2
    plan = tiles.plan_tiles(shape, _meta(), 96, 24)
    assert len(plan) == 12
    amplitude, phase = _field((shape[0] * upsample, shape[1] * upsample), 1)
    amplitudes, phases = _cut(plan, amplitude, phase, upsample, rng)
    mosaic_amplitude, mosaic_phase, alignment = stitch.stitch(plan, amplitudes, phases, shape, upsample,
                                                              align_ramp=True)
    scale = float((amplitude * mosaic_amplitude).sum() / (mosaic_amplitude**2).sum())
    assert np.abs(scale * mosaic_amplitude - amplitude).max() < 1e-4 * amplitude.max()
    assert np.abs(_phase_error(mosaic_phase, phase)).max() < 1e-3
    assert max(alignment.pair_residual_rad.values()) < 1e-3
    # Without the alignment the same tiles leave seams: the test can fail.
    _, raw_phase, _ = stitch.stitch(plan, amplitudes, phases, shape, upsample, align=False)
    assert np.abs(_phase_error(raw_phase, phase)).max() > 0.5


def test_feather_weights_are_a_partition_of_unity_and_vanish_at_inner_edges():
    plan = tiles.plan_tiles((150, 170), _meta(), 80, 24)
    upsample = 2
    total = np.zeros((300, 340))
    for k, tile in enumerate(plan):
        weight = stitch.feather_weights(plan, k, upsample)
        total[tile.y0 * 2 : tile.y1 * 2, tile.x0 * 2 : tile.x1 * 2] += weight
        if tile.x1 < 170:
            assert weight[:, -1].max() == 0.0  # an inner edge weighs nothing
        else:
            assert weight[weight.shape[0] // 2, -1] > 0.99  # the frame's edge keeps its weight
        assert np.abs(np.diff(weight, axis=1)).max() < 0.2  # smooth
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_noisy_tiles_stitch_without_seams():
    """Each tile a noisy estimate of the same field: the mosaic's error is no worse than the tiles' (no seams)."""
    rng = np.random.default_rng(12)
    shape, upsample = (160, 160), 2
    plan = tiles.plan_tiles(shape, _meta(), 96, 32)
    amplitude, phase = _field((320, 320), 2)
    amplitudes, phases = _cut(plan, amplitude, phase, upsample, rng, ramps=False)
    amplitudes = [a + 0.02 * rng.standard_normal(a.shape) for a in amplitudes]
    phases = [p + 0.05 * rng.standard_normal(p.shape) for p in phases]
    mosaic_amplitude, mosaic_phase, _ = stitch.stitch(plan, amplitudes, phases, shape, upsample)
    error = np.abs(_phase_error(mosaic_phase, phase))
    assert np.sqrt(np.mean(error**2)) < 0.06
    # No seam: the error along the overlaps' centre lines is like the error elsewhere.
    seam_columns = [int((plan[0].x1 + plan[1].x0) / 2 * upsample)]
    assert error[:, seam_columns].mean() < 1.5 * error.mean()


def test_tiles_own_low_order_errors_do_not_drift_across_the_mosaic():
    """Each tile = the field + its own offset + a smooth error of its own (curvature, 0.5 rad at its edges, as
    FP tiles carry), no ramp (the shared geometry fixes the linear phase). Offsets alone stitch it with the
    tiles' own error; aligning ramps on the overlaps takes the curvature's slope at the tile edges for a
    ramp and carries it from tile to tile: a low-frequency drift across the mosaic (the test can fail)."""
    rng = np.random.default_rng(13)
    shape, upsample = (240, 240), 2
    plan = tiles.plan_tiles(shape, _meta(), 80, 24)
    assert len(plan) == 16
    amplitude, phase = _field((480, 480), 3)
    amplitudes, phases = _cut(plan, amplitude, phase, upsample, rng, scales=False, ramps=False)
    own_error = np.zeros_like(phase)
    for k, tile in enumerate(plan):
        yy, xx = np.mgrid[0 : tile.height * upsample, 0 : tile.width * upsample]
        y, x = (yy - yy.mean()) / (yy.max() / 2), (xx - xx.mean()) / (xx.max() / 2)  # -1..1 at the edges
        curvature = rng.uniform(-0.5, 0.5, 3)
        error = curvature[0] * y**2 + curvature[1] * x * y + curvature[2] * x**2
        phases[k] = np.angle(np.exp(1j * (phases[k] + error))).astype(np.float32)
        own_error[tile.y0 * upsample : tile.y1 * upsample, tile.x0 * upsample : tile.x1 * upsample] = error
    own_rms = float(np.sqrt(np.mean(_phase_error(phase + own_error, phase) ** 2)))
    _, offsets_only, alignment = stitch.stitch(plan, amplitudes, phases, shape, upsample)
    assert not alignment.ramp_rad_per_px.any()
    drift = float(np.sqrt(np.mean(_phase_error(offsets_only, phase) ** 2)))
    assert drift < 1.2 * own_rms, (drift, own_rms)
    _, with_ramps, _ = stitch.stitch(plan, amplitudes, phases, shape, upsample, align_ramp=True)
    ramped = float(np.sqrt(np.mean(_phase_error(with_ramps, phase) ** 2)))
    assert ramped > 2 * drift, (ramped, drift)


def test_a_partial_mosaic_has_nan_holes_exactly_where_no_finished_tile_lies():
    """12 tiles, 2 missing (an inner tile and a corner tile): the finished tiles stitch as in a whole run
    (the image, up to one global offset and scale) with the planned layout's weights; every pixel no
    finished tile covers is NaN, every other is finite, also in the zones where the missing tile alone
    would have weighed (a finished tile's dead edge: there a plain stitch gave 0, the test can fail)."""
    rng = np.random.default_rng(14)
    shape, upsample = (200, 260), 2
    plan = tiles.plan_tiles(shape, _meta(), 96, 24)
    amplitude, phase = _field((shape[0] * upsample, shape[1] * upsample), 4)
    amplitudes, phases = _cut(plan, amplitude, phase, upsample, rng, ramps=False)
    missing = {5, 11}  # row 1 column 1 (inner), row 2 column 3 (the bottom-right corner)
    kept = [k for k in range(len(plan)) if k not in missing]
    assert plan[5].grid_row == 1 and plan[5].grid_col == 1 and plan[11].grid_row == 2 and plan[11].grid_col == 3
    covered = np.zeros((shape[0] * upsample, shape[1] * upsample), dtype=bool)
    for k in kept:
        t = plan[k]
        covered[t.y0 * upsample : t.y1 * upsample, t.x0 * upsample : t.x1 * upsample] = True
    assert 0.01 < (~covered).mean() < 0.1
    mosaic_amplitude, mosaic_phase, _ = stitch.stitch(
        [plan[k] for k in kept], [amplitudes[k] for k in kept], [phases[k] for k in kept], shape, upsample,
        layout=plan,
    )
    np.testing.assert_array_equal(np.isnan(mosaic_amplitude), ~covered)
    np.testing.assert_array_equal(np.isnan(mosaic_phase), ~covered)
    scale = float((amplitude[covered] * mosaic_amplitude[covered]).sum() / (mosaic_amplitude[covered] ** 2).sum())
    assert np.abs(scale * mosaic_amplitude[covered] - amplitude[covered]).max() < 1e-4 * amplitude.max()
    error = np.angle(np.exp(1j * (mosaic_phase - phase)))[covered]
    error = np.angle(np.exp(1j * (error - np.angle(np.exp(1j * error).sum()))))
    assert np.abs(error).max() < 1e-3
    # the finished tiles' dead edges towards a missing tile (feathered weight 0) hold their values too
    feathered = np.zeros_like(covered, dtype=float)
    for k in kept:
        t = plan[k]
        feathered[t.y0 * upsample : t.y1 * upsample, t.x0 * upsample : t.x1 * upsample] += \
            stitch.feather_weights(plan, k, upsample)
    dead = covered & (feathered == 0)
    assert dead.sum() > 100
    assert np.abs(scale * mosaic_amplitude[dead] - amplitude[dead]).max() < 1e-4 * amplitude.max()
    with pytest.raises(ValueError, match="not in the layout"):
        stitch.stitch(plan[:1], amplitudes[:1], phases[:1], shape, upsample, layout=plan[1:])


def test_finished_tiles_cut_off_by_holes_are_aligned_to_a_reference_of_their_own(tmp_path):
    """3 x 4 tiles, the two middle columns missing: the right column is an island no overlap links to the
    reference. Its tiles are aligned among themselves (the image up to one offset and scale there) with
    its most central tile's own offset and scale kept, as the reference's are (before: the least-squares
    minimum norm, an offset nobody chose); the partial mosaic's metadata names the unlinked group."""
    from uafp_gui.fullfield.output import partial_mosaic, read_partial_summary, write_finished_tiles

    rng = np.random.default_rng(21)
    shape, upsample = (200, 280), 1
    plan = tiles.plan_tiles(shape, _meta(), 96, 24)
    assert tiles.grid_shape(plan) == (3, 4)
    amplitude, phase = _field(shape, 5)
    amplitudes, phases = _cut(plan, amplitude, phase, upsample, rng, ramps=False)
    left, right = [0, 4, 8], [3, 7, 11]
    kept = left + right
    finished = [plan[k] for k in kept]
    alignment = stitch.align_tiles(finished, [amplitudes[k] for k in kept], [phases[k] for k in kept], upsample)
    assert [sorted(kept[k] for k in group) for group in alignment.components] == [left, right]
    assert [kept[group[0]] for group in alignment.components] == [4, 7]  # each group's most central tile
    island = alignment.components[1]
    assert alignment.offset_rad[island[0]] == 0.0 and alignment.amplitude_scale[island[0]] == 1.0
    mosaic_amplitude, mosaic_phase, _ = stitch.stitch(
        finished, [amplitudes[k] for k in kept], [phases[k] for k in kept], shape, upsample, layout=plan)
    # on the island, the stitched field is tile 7's own (offset and scale), continued into tiles 3 and 11
    t3, t11 = plan[3], plan[11]
    region = (slice(t3.y0, t11.y1), slice(t3.x0, t3.x1))
    t7 = plan[7]
    own = (slice(t7.y0, t7.y1), slice(t7.x0, t7.x1))
    offset_7 = float(np.angle(np.mean(np.exp(1j * (phases[7] - phase[own])))))
    scale_7 = float(np.median(amplitudes[7] / amplitude[own]))
    error = np.angle(np.exp(1j * (mosaic_phase[region] - phase[region] - offset_7)))
    assert np.abs(error).max() < 1e-3
    np.testing.assert_allclose(mosaic_amplitude[region], scale_7 * amplitude[region], rtol=1e-4)
    # the metadata says it
    results = [TileResult(plan[k], amplitudes[k].astype(np.float32), phases[k], {}, 0.0, "converged", 0.0)
               for k in kept]
    _, _, partial = partial_mosaic(results, plan)
    assert partial["stitching"]["reference_tile"] == 4
    assert partial["stitching"]["unlinked_groups"] == [{"tiles": [3, 7, 11], "reference_tile": 7}]
    assert "not aligned to the rest" in partial["stitching"]["note"]
    summary = read_partial_summary(write_finished_tiles(tmp_path / "islands", results, 1.0, planned=12, layout=plan))
    assert summary.unlinked_groups == ((3, 7, 11),)
    assert "Tiles cut off from the rest by holes (3, 7, 11) keep a phase offset of their own" in summary.text()


# ------------------------------------------------------------------------- calibration and aberrations


def test_robust_combination_weights_by_error_bars_and_drops_outliers():
    combined = calibrate.robust_combine([1.0, 1.1, 0.9, 5.0], [0.1, 0.1, 0.1, 0.1])
    assert combined["used"] == [0, 1, 2] and combined["value"] == pytest.approx(1.0)
    weighted = calibrate.robust_combine([1.0, 2.0], [0.1, 1.0])
    assert weighted["value"] == pytest.approx((1.0 / 0.01 + 2.0) / (1 / 0.01 + 1))
    plain = calibrate.robust_combine([1.0, 2.0, 3.0], [None, 0.1, 0.1])
    assert plain["value"] == pytest.approx(2.0) and plain["std"] == pytest.approx(1 / math.sqrt(3))


def _tile_result(tile: Tile, geometry: dict, zernike: dict, gains, std=None, shape=(8, 8)) -> TileResult:
    calibration = {
        "format": "uafp-calibration", "version": 1, "led_geometry": geometry,
        "zernike_rad": {str(j): v for j, v in zernike.items()}, "frame_gain": list(gains),
        "led_positions_mm": [[0.0, 0.0]] * len(gains),
    }
    if std is not None:
        calibration["led_geometry_std"] = std
    ones, zeros = np.ones(shape, np.float32), np.zeros(shape, np.float32)
    return TileResult(tile, ones, zeros, calibration, 0.01, "converged", 1.0)


def test_combined_calibration_agrees_with_the_tiles_and_gains_are_relative():
    plan = tiles.plan_tiles((256, 256), _meta(), 144, 32)
    truth = {"shift_x_mm": 1.2, "shift_y_mm": -0.8, "rotation_deg": 2.5, "height_mm": 94.0}
    rng = np.random.default_rng(2)
    gains = rng.uniform(0.8, 1.2, 5)
    results = []
    for k, tile in enumerate(plan):
        geometry = {name: value + (3.0 if k == 3 and name == "shift_x_mm" else 0.01 * rng.standard_normal())
                    for name, value in truth.items()}
        std = {name: 0.02 for name in truth}
        results.append(_tile_result(tile, geometry, {4: 0.5 + 0.1 * k}, gains * (k + 1), std))
    shared = calibrate.combine_calibrations(results)
    geometry = shared.led_geometry.to_dict()
    for name, value in truth.items():
        assert geometry[name] == pytest.approx(value, abs=0.05), name
    ratio = np.asarray(shared.frame_gain) / gains
    assert np.ptp(ratio) < 1e-9  # the relative gains are the tiles' own, whatever each tile's level
    details = shared.extra["fullfield_calibration"]["geometry"]["shift_x_mm"]
    assert 3 not in details["used"]
    # One calibration tile without error bars: no NaN anywhere (calibration.json refuses it).
    import json

    single = calibrate.combine_calibrations(results[:1])
    json.dumps(single.to_dict(), allow_nan=False)
    assert single.led_geometry.shift_x_mm == pytest.approx(results[0].calibration["led_geometry"]["shift_x_mm"])


def test_calibration_tiles_are_central_and_least_crossed_by_the_brightfield_boundary():
    meta = _meta(9)
    plan = tiles.plan_tiles((1024, 1024), meta, 256, 32)
    chosen = calibrate.choose_calibration_tiles(plan, meta, 3)
    distances = sorted(math.hypot(*t.center_um) for t in plan)
    assert all(math.hypot(*plan[k].center_um) <= distances[5] + 1e-9 for k in chosen)
    # An LED on the bright/dark-field boundary at some tile: counted there.
    edge_meta = _meta(1).replace(
        frames=({"leds": [[16, 18]], "exposure_ms": 10.0},), led_height_mm=8.0 / math.tan(math.asin(0.1))
    )
    counts = [calibrate.boundary_frames(edge_meta, t) for t in plan]
    assert max(counts) == 1 and min(counts) == 0


def test_aberration_model_recovers_a_quadratic_field_dependence():
    rng = np.random.default_rng(7)
    centres = [(x, y) for y in np.linspace(-800, 800, 4) for x in np.linspace(-800, 800, 4)]

    def truth(x, y):
        u, v = x / 1000.0, y / 1000.0
        return {4: 0.3 + 0.4 * (u * u + v * v), 5: 0.2 * u * v, 6: 0.15 * (u * u - v * v), 8: 0.1 * u, 7: 0.1 * v}

    zernikes = [{j: c + 0.01 * rng.standard_normal() for j, c in truth(x, y).items()} for x, y in centres]
    stds = [{j: 0.01 for j in z} for z in zernikes]
    out = aberration.field_aberrations(centres, zernikes, stds, field_extent_um=(-1000, 1000, -1000, 1000),
                                       led_geometry={"shift_x_mm": 0.1}, wavelength_um=0.532)
    assert out["model"]["order"] == 2
    xs, ys = np.meshgrid(np.linspace(-1000, 1000, 7), np.linspace(-1000, 1000, 7))
    fitted = aberration.evaluate_model(out["model"], xs, ys)
    for j in (4, 5, 6, 7, 8):
        expected = np.vectorize(lambda x, y, j=j: truth(x, y)[j])(xs, ys)
        assert np.abs(fitted[j] - expected).max() < 0.03, j
    rms = np.asarray(out["map"]["rms_rad"])
    assert rms.shape == (9, 9)
    strehl = np.asarray(out["map"]["strehl"])
    np.testing.assert_allclose(strehl, np.exp(-(rms**2)))
    assert np.array_equal(np.asarray(out["map"]["diffraction_limited"]), strehl >= 0.8)
    assert out["summary"]["center"]["dominant"][0]["name"] == "defocus"
    assert 0 < out["summary"]["diffraction_limited_fraction"] < 1  # the corners are worse (0.7 rad defocus)
    # beyond the tile centres (+-800 um) the map is extrapolated: the grid's outer ring (+-1000 um)
    extrapolated = np.asarray(out["map"]["extrapolated"])
    assert extrapolated.sum() == 81 - 49 and not extrapolated[1:-1, 1:-1].any()
    assert out["map"]["tile_centres_extent_um"] == pytest.approx([-800, 800, -800, 800])
    assert out["summary"]["max_rms_rad_within_tile_centres"] == pytest.approx(rms[1:-1, 1:-1].max())
    assert aberration.choose_order(4) == 1 and aberration.choose_order(2) == 0
    assert aberration.choose_terms(4) == ("1", "x", "y", "xy") and aberration.choose_terms(3) == ("1", "x", "y")


def _field256_like_lens(x, y, half=1000.0):
    """refsim.FIELD_ZERNIKE_RAD's lens: field curvature, astigmatism ~ field^2, coma ~ field, spherical."""
    u, v = x / half, y / half
    return {4: 0.3 + 0.5 * (u * u + v * v), 5: 0.5 * u * v, 6: 0.1 + 0.3 * (u * u - v * v), 7: 0.3 * v, 8: 0.3 * u,
            9: 0.0, 11: 0.1, 12: 0.0}


def test_seidel_field_dependence_extrapolates_less_noise_to_the_frame_corners():
    """3 x 3 tiles whose centres reach +-0.5625 of the half-width (refsim field256 with 112 px tiles) and whose
    own pupils are off by 0.04 rad per Zernike: the map over the whole frame (corners at +-1) with each
    Zernike's Seidel field dependence vs the full quadratic for every Zernike (the model before s4_i12b).
    Measured: mean over 30 seeded draws of the map's worst point 0.18 vs 0.41 rad (mean 0.08 vs 0.16)."""
    half = 1000.0
    centres = [(x, y) for y in (-562.5, 0.0, 562.5) for x in (-562.5, 0.0, 562.5)]
    xs, ys = np.meshgrid(np.linspace(-half, half, 9), np.linspace(-half, half, 9))
    truth = {j: np.vectorize(lambda x, y, j=j: _field256_like_lens(x, y)[j])(xs, ys) for j in _field256_like_lens(0, 0)}
    rng = np.random.default_rng(12)
    worst = {True: [], False: []}
    full_quadratic_chosen = 0
    for _ in range(30):
        zernikes = [{j: c + 0.04 * rng.standard_normal() for j, c in _field256_like_lens(x, y).items()}
                    for x, y in centres]
        for seidel in (True, False):
            model = aberration.fit_aberration_model(centres, zernikes, field_half_width_um=half, seidel=seidel)
            fitted = aberration.evaluate_model(model, xs, ys)
            error = np.sqrt(sum((fitted[j] - truth[j]) ** 2 for j in truth))
            worst[seidel].append(float(error.max()))
            if seidel:
                full_quadratic_chosen += sum(len(t) == 6 for j, t in model["field_dependence"].items())
    assert np.mean(worst[True]) < 0.25 < 0.35 < np.mean(worst[False])
    assert np.mean(worst[True]) < 0.6 * np.mean(worst[False])
    assert full_quadratic_chosen <= 4  # the F-test (p < 0.01) rarely takes noise for a non-Seidel term
    model = aberration.fit_aberration_model(centres, zernikes, field_half_width_um=half)
    assert model["field_dependence"]["4"] == ["1", "x", "y", "r^2"] and model["field_dependence"]["11"] == ["1"]
    assert model["terms"] == list(aberration.TERMS) and len(model["coefficients_rad"]["4"]) == 6
    c4 = dict(zip(model["terms"], model["coefficients_rad"]["4"], strict=True))
    assert c4["x^2"] == c4["y^2"] and c4["xy"] == 0.0  # defocus grows as r^2: one coefficient


def test_a_field_dependence_beyond_seidel_is_kept_when_the_tiles_show_it():
    """Defocus growing along x only (a cylindrical element, not a rotationally symmetric lens): the F-test
    gives Z4 the full quadratic, the map follows it; the other Zernikes keep their Seidel terms."""
    half = 1000.0
    centres = [(x, y) for y in (-562.5, 0.0, 562.5) for x in (-562.5, 0.0, 562.5)]
    rng = np.random.default_rng(3)

    def lens(x, y):
        u, v = x / half, y / half
        return {4: 0.3 + 0.6 * u * u, 5: 0.0, 7: 0.3 * v}

    zernikes = [{j: c + 0.02 * rng.standard_normal() for j, c in lens(x, y).items()} for x, y in centres]
    model = aberration.fit_aberration_model(centres, zernikes, field_half_width_um=half)
    assert model["field_dependence"]["4"] == list(aberration.TERMS)
    assert model["field_dependence"]["7"] == ["1", "x", "y"]
    xs, ys = np.meshgrid(np.linspace(-half, half, 9), np.linspace(-half, half, 9))
    fitted = aberration.evaluate_model(model, xs, ys)
    assert np.abs(fitted[4] - (0.3 + 0.6 * (xs / half) ** 2)).max() < 0.15
    # exact (noise-free) Seidel data stay Seidel; exact non-Seidel data get the quadratic
    exact = [_field256_like_lens(x, y) for x, y in centres]
    model = aberration.fit_aberration_model(centres, exact, field_half_width_um=half)
    assert all(len(model["field_dependence"][str(j)]) < 6 for j in (4, 5, 6, 7, 8, 11))
    exact = [lens(x, y) for x, y in centres]
    assert aberration.fit_aberration_model(centres, exact, field_half_width_um=half)["field_dependence"]["4"] == list(
        aberration.TERMS)


def test_aberration_map_picture(tmp_path):
    centres = [(x, y) for y in (-500, 0, 500) for x in (-500, 0, 500)]
    zernikes = [{4: 0.2 + 0.5 * (x * x + y * y) / 500**2, 6: 0.1} for x, y in centres]
    out = aberration.field_aberrations(centres, zernikes, None, field_extent_um=(-600, 600, -600, 600),
                                       led_geometry={"shift_x_mm": 0.1, "shift_y_mm": 0, "rotation_deg": 0,
                                                     "height_mm": 90})
    path = aberration.draw_aberration_map(out, tmp_path / "aberration_map.png")
    assert path.stat().st_size > 10_000


# ------------------------------------------------------------------------------- the pipeline's logic


def test_pipeline_with_an_injected_executor(stack, monkeypatch):
    """Stage 1 on the chosen tiles, stage 2 on every tile with geometry and gains held, stitched mosaic."""
    path, _, _ = stack
    seen: list[tuple[str, int, dict | None]] = []
    progress = []
    upsample = 2
    geometry = {"shift_x_mm": 0.3, "shift_y_mm": -0.2, "rotation_deg": 0.5, "height_mm": 91.0}
    amplitude, phase = _field((96 * upsample, 112 * upsample), 3)

    def fake_reconstruct(task):
        t = task.tile
        seen.append(("fixed" if not task.settings["learn_geometry"] else "calibrate", t.index, task.calibration))
        region_ = (slice(t.y0 * upsample, t.y1 * upsample), slice(t.x0 * upsample, t.x1 * upsample))
        x, y = t.center_um
        result = _tile_result(t, geometry, {4: 0.2 + x / 1000.0, 5: 0.1}, [1.0] * 5,
                              shape=(t.height * upsample, t.width * upsample))
        return dataclasses.replace(result, amplitude=amplitude[region_].astype(np.float32),
                                   phase=np.angle(np.exp(1j * (phase[region_] + t.index))).astype(np.float32))

    monkeypatch.setattr(pipeline, "reconstruct_tile", fake_reconstruct)
    functions = []

    def run_tasks(fn, tasks, on_done):
        functions.append(fn)
        out = []
        for k in reversed(range(len(tasks))):  # finishing out of order must not matter
            result = fn(tasks[k])
            on_done(k, result)
            out.append(result)
        return out[::-1]

    settings = pipeline.UafpSettings(upsample=upsample, iterations=2)
    result = pipeline.reconstruct_full_field(path, tile_size=64, overlap=16, settings=settings, run_tasks=run_tasks,
                                             progress=progress.append, calibration_tiles=2)
    stages = [s for s, _, _ in seen]
    assert stages == ["calibrate"] * 2 + ["fixed"] * 4
    assert functions == [pipeline.calibrate_tile, fake_reconstruct]
    assert all(c is None for s, _, c in seen if s == "calibrate")
    fixed_starts = [c for s, _, c in seen if s == "fixed"]
    assert all(c["led_geometry"] == pytest.approx(geometry) for c in fixed_starts)
    assert result.amplitude.shape == (192, 224) and result.amplitude.dtype == np.float32
    assert np.abs(_phase_error(result.phase, phase)).max() < 1e-3
    assert result.calibration["led_geometry"] == pytest.approx(geometry)
    model = result.calibration["field_aberrations"]["model"]
    assert model["order"] == 1 and model["coefficients_rad"]["4"][1] == pytest.approx(
        model["field_half_width_um"] / 1000.0, rel=1e-6)
    assert [p.stage for p in progress if p.result is not None] == ["calibration"] * 2 + ["tiles"] * 4
    assert progress[-1].stage == "done"
    assert result.pixel_um == pytest.approx(_meta().sample_pixel_um / upsample)
    # calibration.json: a valid calibration whose own pupil is the lens's at the field centre (x = 0 here)
    from uafp_gui.io.calibration import Calibration

    assert Calibration.from_dict(result.calibration).zernike_rad[4] == pytest.approx(0.2, abs=1e-9)
    assert Calibration.from_dict(result.calibration).extra["field_aberrations"]["summary"]["max_rms_rad"] > 0
    # A given calibration skips stage 1.
    seen.clear()
    pipeline.reconstruct_full_field(path, tile_size=64, overlap=16, settings=settings, run_tasks=run_tasks,
                                    calibration=result.calibration)
    assert [s for s, _, _ in seen] == ["fixed"] * 4

    # A calibration tile whose run fails does not count; when none is left the error says what to do.
    def failing(task):
        if task.settings["learn_geometry"] and task.tile.index == 0:
            raise ReconstructionError("an LED illuminates beyond the reconstructed bandwidth")
        return fake_reconstruct(task)

    monkeypatch.setattr(pipeline, "reconstruct_tile", failing)
    result = pipeline.reconstruct_full_field(path, tile_size=64, overlap=16, settings=settings, run_tasks=run_tasks,
                                             calibration_tiles=2)
    assert result.calibration["fullfield_calibration"]["rejected_tiles"] == [0]
    assert [r.stop_reason for r in result.calibration_tiles].count("engine_error") == 1
    assert result.calibration["led_geometry"] == pytest.approx(geometry)
    with pytest.raises(ReconstructionError, match="no calibration tile"):
        pipeline.reconstruct_full_field(path, tile_size=64, overlap=16, settings=settings, run_tasks=run_tasks,
                                        calibration_tiles=1)


def test_tile_tasks_pickle_and_settings_round_trip():
    import pickle

    settings = pipeline.UafpSettings(upsample=2, loss="poisson", device="cpu")
    plain = pipeline.settings_to_dict(settings)
    assert pipeline.UafpSettings(**plain) == settings
    task = pipeline.TileTask("x.tif", Tile(0, 0, 0, 0, 0, 8, 8, (1.0, 2.0)), plain, None)
    assert pickle.loads(pickle.dumps(task)) == task


# --------------------------------------------------------------------- the full-field reference simulator


def _refsim():
    import refsim  # benchmarks/ is on the tests' path (pyproject's pythonpath)

    return refsim


def test_field_object_is_the_same_however_the_field_is_cut():
    refsim = _refsim()
    rng = np.random.default_rng(0)
    obj = refsim.FieldObject((-200, 200, -200, 200), 1.2, rng)
    assert obj.cells and obj.bars
    xs = np.arange(-150, 150, 0.5)
    whole = obj.render(xs, xs)
    part = obj.render(xs[100:300], xs[250:400])
    np.testing.assert_allclose(part, whole[250:400, 100:300], atol=1e-9)


def test_field_zernikes_follow_their_polynomials():
    refsim = _refsim()
    spec = refsim.FIELD_PRESETS["field256"]
    half = spec.half_width_um
    centre, corner = spec.zernike_at(0.0, 0.0), spec.zernike_at(half, half)
    assert centre[4] == pytest.approx(0.3) and corner[4] == pytest.approx(1.3)
    assert centre[8] == pytest.approx(0.0) and corner[8] == pytest.approx(0.3)
    assert spec.zernike_at(-half, 0.0)[8] == pytest.approx(-0.3)  # coma grows with x, sign with x


def test_field_simulation_is_consistent_across_patches():
    """With a lens the same everywhere, the frames do not depend on how the field is cut into patches
    (the blend is seamless and each patch's spherical illumination continues its neighbour's)."""
    refsim = _refsim()
    micro = dataclasses.replace(refsim.FIELD_MICROSCOPE, frame_size=64, led_grid=3, vignetting=0.0,
                                led_brightness_spread=0.0, read_noise_e=0.0, photons_per_pixel=1e9, bit_depth=16,
                                seed=2)
    flat = {4: (0.4,), 6: (0.2,)}
    spec = refsim.RefField(micro=micro, field_zernike_rad=flat, patch_px=64, patch_overlap_px=0, extra_margin_px=12)
    one = refsim.simulate_field(spec)
    many = refsim.simulate_field(dataclasses.replace(spec, patch_px=32, patch_overlap_px=12))
    assert one.frames.shape == many.frames.shape == (9, 64, 64)
    a = one.frames.astype(float) - micro.camera_offset
    b = many.frames.astype(float) - micro.camera_offset
    seams = [16, 32, 47, 48]  # the patches' overlaps: 16..32, 32..48
    for k in range(9):
        difference = np.abs(a[k] - b[k])
        # The windows differ in the object around them (the pupil's sinc tails reach it): ~1-2 %, never a seam.
        assert difference.mean() < 0.03 * a[k].mean(), k
        assert difference[:, seams].mean() < 2 * difference.mean() + 0.002 * a[k].mean(), k
    truth = one.truth(2)
    assert truth.shape == (128, 128) and 0.5 < np.abs(truth).mean() < 1.0


# ------------------------------------------------------------------------ end to end on the reference field


@pytest.mark.slow
def test_full_field_on_the_reference_simulator(tmp_path):
    """A 192^2 field, 37 frames (LEDs within illumination NA 0.15), 4 tiles: the global geometry within
    tolerance, the field-dependent Zernikes recovered, the stitched mosaic as good as its tiles
    (benchmarks/fullfield_acceptance.py measures the same on the larger presets)."""
    refsim = _refsim()
    from fullfield_acceptance import geometry_errors, quality

    spec = refsim.FIELD_PRESETS["field256"]
    micro = dataclasses.replace(spec.micro, frame_size=192, led_disk_na=0.15, subsamples=4)
    simulation = refsim.simulate_field(dataclasses.replace(spec, micro=micro))
    path = tmp_path / "field.tif"
    write_dataset(path, simulation.meta, simulation.frames)
    settings = pipeline.UafpSettings(upsample=2, iterations=15, device="cpu", uncertainty=False)
    result = pipeline.reconstruct_full_field(path, tile_size=112, overlap=32, settings=settings, calibration_tiles=2)
    assert len(result.tiles) == 4 and len(simulation.leds) == 37
    print(result.calibration["led_geometry"], result.calibration["field_aberrations"]["model"])
    geometry = geometry_errors(result.calibration["led_geometry"], simulation.micro)
    assert all(geometry["within"].values()), geometry
    # The field dependence: 4 tiles fit 1, x, y, xy; at the tile centres the model is the lens's pupil there.
    model = result.calibration["field_aberrations"]["model"]
    assert model["terms"] == ["1", "x", "y", "xy"]
    for tile_result in result.tiles:
        x, y = tile_result.tile.center_um
        fitted = aberration.evaluate_model(model, np.array([x]), np.array([y]))
        truth = simulation.zernike_at(x, y)
        error = math.sqrt(sum((float(fitted.get(j, [0.0])[0]) - float(truth.get(j, 0.0))) ** 2 for j in range(4, 12)))
        assert error < 0.25, (tile_result.tile.index, error)
    coefficients = {int(j): dict(zip(model["terms"], c, strict=True)) for j, c in model["coefficients_rad"].items()}
    # coma grows with x (Z8) and y (Z7), astigmatism Z5 with xy (refsim.FIELD_ZERNIKE_RAD); the tile centres sit at
    # x, y = +-0.42 of the half-width, so the slopes are measured over a lever arm of 0.84
    assert coefficients[8]["x"] == pytest.approx(0.3, abs=0.12) and abs(coefficients[8]["y"]) < 0.12
    assert coefficients[7]["y"] == pytest.approx(0.3, abs=0.12) and abs(coefficients[7]["x"]) < 0.12
    assert coefficients[5]["xy"] == pytest.approx(0.5, abs=0.3)
    figures, _ = quality(result, simulation, 2)
    assert figures["stitched_psnr_db"] >= figures["mean_tile_psnr_db"] - 0.5, figures
