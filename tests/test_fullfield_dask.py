"""Full-field execution on Dask (fullfield.execute) and the mosaic outputs (fullfield.output).

The cluster tests run a real LocalCluster of worker processes on 127.0.0.1 (no dashboard, no
network), 2 workers of 1 thread, with a timeout on every wait; they are in the slow lane (a
cluster takes seconds to start). One of them kills a worker process in the middle of a run: the
run must still complete with every tile, through Dask's rescheduling of the lost work.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest

from uafp_gui.errors import ConfigError, ReconstructionError, RunCancelled, TilesFailed
from uafp_gui.fullfield.execute import LOCAL_HTTP, check_scheduler_address, make_runner

# The toy tasks below run in worker processes that cannot import this test module: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CLUSTER_WAIT_S = 60


def slow_square(x: int) -> tuple[int, int]:
    time.sleep(0.6)
    return x * x, os.getpid()


def always_fails(task: object) -> object:
    """A tile task that fails on every try."""
    raise RuntimeError("this tile always fails")


def always_fails_on_odd(x: int) -> int:
    if x % 2:
        raise RuntimeError(f"odd tile {x}")
    return x * x


def reconstruct_unless_last_tile(task):
    """The pipeline's tile task, but the field's last tile (index 3 of 2 x 2) fails on every try."""
    from uafp_gui.fullfield.pipeline import reconstruct_tile

    if task.calibration is not None and task.tile.index == 3:
        raise RuntimeError("tile 3 always fails")
    return reconstruct_tile(task)


def fails_first_time(marker: str) -> str:
    """Raises on the first try (leaves a marker file), succeeds on the next."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first try fails")
    return marker


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs=LOCAL_HTTP,
        silence_logs=logging.ERROR,
    ) as local:
        distributed.Client(local, timeout=CLUSTER_WAIT_S).wait_for_workers(2, timeout=CLUSTER_WAIT_S)
        yield local


def test_scheduler_addresses_are_checked_before_anything_starts():
    assert check_scheduler_address("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert check_scheduler_address("localhost:8786") == "tcp://localhost:8786"
    for bad in ("", "http://host:8786", "tcp://", "host port", "tcp://a b:1"):
        with pytest.raises(ConfigError, match="not a Dask scheduler address"):
            check_scheduler_address(bad)
    with pytest.raises(ConfigError, match="1 or more"):
        make_runner(workers=0)
    with pytest.raises(ConfigError, match="0 or more"):
        make_runner(retries=-1)
    with pytest.raises(ConfigError, match="local cluster only"):
        make_runner("tcp://127.0.0.1:8786", workers=2)


def test_no_scheduler_there_is_a_config_error_not_a_hang(monkeypatch):
    import socket

    from uafp_gui.fullfield import execute

    monkeypatch.setattr(execute, "CONNECT_TIMEOUT_S", 2.0)
    with socket.socket() as probe:  # a free port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = make_runner(f"tcp://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="no Dask scheduler answered"):
        runner.start()
    assert time.monotonic() - started < 30


def test_nothing_to_run_starts_no_cluster():
    runner = make_runner(workers=1)
    assert runner([].append, [], None) == []
    assert runner.client is None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_killed_mid_run_costs_only_its_tiles(cluster):
    killed: dict[str, object] = {}

    with make_runner(cluster.scheduler_address, retries=1) as runner:
        client = runner.start().client
        done: list[int] = []

        def on_done(position: int, result: tuple[int, int]) -> None:
            done.append(position)
            if killed:
                return
            busy = {worker: keys for worker, keys in client.processing().items() if keys}
            assert busy, "no worker was running a tile after the first one finished"
            worker = sorted(busy)[0]
            pid = client.run(os.getpid, workers=[worker])[worker]
            killed.update(worker=worker, pid=pid, keys=list(busy[worker]))
            os.kill(pid, signal.SIGKILL)

        tasks = list(range(8))
        results = runner(slow_square, tasks, on_done)

    assert killed, "the test did not kill a worker"
    assert [value for value, _ in results] == [x * x for x in tasks]
    assert sorted(done) == tasks  # every tile delivered once, as it finished
    # the tile it was running was run again elsewhere: no result comes from the dead process
    lost_positions = {int(str(key).split("-")[2]) for key in killed["keys"]}
    assert lost_positions
    assert all(results[p][1] != killed["pid"] for p in lost_positions)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_failing_tile_is_retried_then_reported(cluster, tmp_path):
    with make_runner(cluster.scheduler_address, retries=1) as runner:
        marker = str(tmp_path / "tried")
        assert runner(fails_first_time, [marker]) == [marker]
    with make_runner(cluster.scheduler_address, retries=0) as runner:
        marker = str(tmp_path / "tried-again")
        with pytest.raises(ReconstructionError, match="1 of 2 tiles failed.*RuntimeError: first try fails") as failed:
            runner(fails_first_time, [marker, str(tmp_path / "tried")])
    # the finished tile comes with the error, and the failed one's reason (nothing finished is lost)
    assert isinstance(failed.value, TilesFailed)
    assert failed.value.finished == {1: str(tmp_path / "tried")} and failed.value.planned == 2
    assert failed.value.failures == {0: "RuntimeError: first try fails"}
    with make_runner(cluster.scheduler_address, retries=1) as runner:
        delivered: list[int] = []
        with pytest.raises(TilesFailed) as failed:
            runner(always_fails_on_odd, [0, 1, 2, 3], lambda position, result: delivered.append(position))
    assert sorted(delivered) == [0, 2] and failed.value.finished == {0: 0, 2: 4}
    assert failed.value.failures == {1: "RuntimeError: odd tile 1", 3: "RuntimeError: odd tile 3"}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cancel_stops_the_run_and_keeps_the_finished_tiles(cluster):
    with make_runner(cluster.scheduler_address) as runner:
        delivered: list[int] = []

        def on_done(position: int, result: object) -> None:
            delivered.append(position)
            threading.Timer(0.05, runner.cancel).start()  # the Stop button, from another thread

        started = time.monotonic()
        with pytest.raises(RunCancelled) as stopped:
            runner(slow_square, list(range(20)), on_done)
        assert time.monotonic() - started < 20 * 0.6 / 2  # well before all 20 would have run
        assert stopped.value.tiles_done == len(delivered) >= 1
        deadline = time.monotonic() + CLUSTER_WAIT_S
        while any(runner.client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(runner.client.processing().values()), "cancelled tiles still running"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_local_runner_starts_its_own_processes_and_sets_torch_threads():
    with make_runner(workers=2) as runner:
        results = runner(slow_square, [1, 2, 3, 4])
        assert [value for value, _ in results] == [1, 4, 9, 16]
        assert runner.cluster is not None and len(runner.client.scheduler_info()["workers"]) == 2
        assert {pid for _, pid in results} != {os.getpid()}
        assert all(s.torch_threads == max(1, (os.cpu_count() or 1) // 2) for s in runner.stats)
        assert all(s.peak_rss_mb > 0 for s in runner.stats)
    assert runner.client is None and runner.cluster is None


# ------------------------------------------------------------------------------------ the result folder


PIXEL_UM = 0.4625


def _full_field_result(upsample: int = 2):
    """A FullFieldResult of 4 tiles (2 x 2) cut from one random field, with an aberration model and map."""
    from uafp_gui.fullfield.aberration import field_aberrations
    from uafp_gui.fullfield.pipeline import FullFieldResult
    from uafp_gui.fullfield.tiles import Tile, TileResult
    from uafp_gui.io.calibration import Calibration
    from uafp_gui.model import LedGeometry

    rng = np.random.default_rng(5)
    rows, cols = 80, 88
    amplitude = (0.5 + rng.random((rows * upsample, cols * upsample))).astype(np.float32)
    phase = rng.uniform(-np.pi, np.pi, amplitude.shape).astype(np.float32)
    geometry = LedGeometry(0.1, -0.2, 0.5, 88.0)
    results = []
    for k, (y0, x0) in enumerate([(0, 0), (0, 40), (32, 0), (32, 40)]):
        tile = Tile(k, k // 2, k % 2, y0, x0, 48, 48, ((x0 + 24 - cols / 2) * 4.0, (y0 + 24 - rows / 2) * 4.0))
        box = (slice(y0 * upsample, (y0 + 48) * upsample), slice(x0 * upsample, (x0 + 48) * upsample))
        calibration = Calibration(led_geometry=geometry, zernike_rad={4: 0.1 * k, 5: 0.05}, frame_gain=(1.0, 0.9),
                                  led_positions_mm=((0.0, 0.0), (4.0, 0.0)), object_pixel_um=PIXEL_UM)
        pupil = np.stack([np.ones((16, 16)), np.full((16, 16), 0.1 * k)]).astype(np.float32)
        results.append(TileResult(tile, amplitude[box], phase[box], calibration.to_dict(), 0.01 * k, "converged",
                                  1.5, pupil) if _has_pupil() else
                       TileResult(tile, amplitude[box], phase[box], calibration.to_dict(), 0.01 * k, "converged", 1.5))
    aberrations = field_aberrations(
        [r.tile.center_um for r in results], [{4: 0.1 * k, 5: 0.05} for k in range(4)], None,
        field_extent_um=(-176.0, 176.0, -160.0, 160.0), led_geometry=geometry.to_dict(),
    )
    calibration = Calibration(led_geometry=geometry, zernike_rad={4: 0.15, 5: 0.05}, frame_gain=(1.0, 0.9),
                              led_positions_mm=((0.0, 0.0), (4.0, 0.0))).to_dict()
    calibration["field_aberrations"] = aberrations
    calibration["fullfield"] = {"frame_shape": [rows, cols]}
    return FullFieldResult(amplitude, phase, PIXEL_UM, results, calibration, frame_shape=(rows, cols),
                           upsample=upsample, dataset_path="field.tif")


def _has_pupil() -> bool:
    from uafp_gui.fullfield.tiles import TileResult

    return "pupil" in {f.name for f in __import__("dataclasses").fields(TileResult)}


@pytest.fixture
def written(tmp_path):
    from uafp_gui.fullfield.output import write_full_field

    result = _full_field_result()
    folder = write_full_field(tmp_path / "field_result", result, source_dataset="field.tif", min_size=32)
    return folder, result


@pytest.mark.slow  # imports torch, matplotlib and zarr, draws the aberration map: seconds
def test_full_field_folder_is_one_complete_result_with_its_tiles(written):
    import json

    from uafp_gui.io.result import read_result, verify_result_folder

    folder, result = written
    names = {p.name for p in folder.iterdir()}
    assert {"amplitude.tif", "phase.tif", "pupil.tif", "calibration.json", "manifest.json", "tiles", "tiles.json",
            "mosaic.ome.zarr", "mosaic.ome.tif", "aberration_map.png"} <= names
    verify_result_folder(folder)  # the manifest lists the sub-folders' files too
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "tiles/r01_c01/amplitude.tif" in manifest["files"] and "mosaic.ome.zarr/zarr.json" in manifest["files"]
    mosaic = read_result(folder, require_manifest=True)
    np.testing.assert_array_equal(mosaic.amplitude, result.amplitude)
    assert mosaic.object_pixel_um == pytest.approx(PIXEL_UM)
    assert mosaic.extra_images == {}  # the OME-TIFF mosaic is not read as an extra image
    calibration = mosaic.calibration
    assert calibration.led_geometry.height_mm == 88.0 and calibration.zernike_rad == {4: 0.15, 5: 0.05}
    assert calibration.extra["field_aberrations"]["model"] == result.calibration["field_aberrations"]["model"]
    assert calibration.source_dataset == "field.tif"
    table = json.loads((folder / "tiles.json").read_text())
    assert [row["folder"] for row in table["tiles"]] == ["tiles/r00_c00", "tiles/r00_c01", "tiles/r01_c00",
                                                          "tiles/r01_c01"]
    assert table["partial"] is False
    for tile_result in result.tiles:
        tile = read_result(folder / "tiles" / f"r{tile_result.tile.grid_row:02d}_c{tile_result.tile.grid_col:02d}")
        np.testing.assert_array_equal(tile.phase, tile_result.phase)
        assert tile.calibration.zernike_rad[4] == pytest.approx(0.1 * tile_result.tile.index)
        assert tile.object_pixel_um == pytest.approx(PIXEL_UM)
    assert (folder / "aberration_map.png").stat().st_size > 10_000
    # a second write replaces the folder whole (it holds only result files and folders)
    from uafp_gui.fullfield.output import write_full_field

    write_full_field(folder, result, min_size=32)
    verify_result_folder(folder)


@pytest.mark.slow  # imports torch, matplotlib and zarr, draws the aberration map: seconds
def test_mosaic_ome_zarr_opens_in_napari_and_validates(written):
    zarr = pytest.importorskip("zarr")
    folder, result = written
    path = folder / "mosaic.ome.zarr"
    group = zarr.open_group(path, mode="r")
    multiscale = group.attrs["ome"]["multiscales"][0]
    shapes = [group[d["path"]].shape for d in multiscale["datasets"]]
    assert shapes == [(2, 160, 176), (2, 80, 88), (2, 40, 44)]
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales[1] == pytest.approx([1.0, 2 * PIXEL_UM, 2 * PIXEL_UM])
    np.testing.assert_array_equal(group["0"][1], result.phase)
    pytest.importorskip("yaozarrs").validate_zarr_store(str(path))
    reader = pytest.importorskip("napari_ome_zarr._reader")  # the reader napari uses for OME-Zarr
    read = reader.napari_get_reader(str(path))
    assert read is not None
    layers = read(str(path))
    data, kwargs = layers[0][0], layers[0][1]
    levels = data if isinstance(data, list) else [data]
    assert [tuple(level.shape) for level in levels][0] in {(2, 160, 176), (160, 176)}
    scale = kwargs.get("scale")
    assert scale is not None and scale[-1] == pytest.approx(PIXEL_UM)


@pytest.mark.slow  # imports torch, matplotlib and zarr, draws the aberration map: seconds
def test_mosaic_ome_tiff_is_a_pyramid_with_its_pixel_size(written):
    import tifffile

    folder, result = written
    with tifffile.TiffFile(folder / "mosaic.ome.tif") as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert [level.shape for level in series.levels] == [(2, 160, 176), (2, 80, 88), (2, 40, 44)]
        np.testing.assert_array_equal(series.levels[0].asarray()[0], result.amplitude)
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert pixels["PhysicalSizeX"] == pytest.approx(PIXEL_UM)
        assert pixels["PhysicalSizeY"] == pytest.approx(PIXEL_UM)


@pytest.mark.slow  # imports torch, matplotlib and zarr, draws the aberration map: seconds
def test_a_stopped_runs_finished_tiles_are_written(tmp_path):
    import json

    from uafp_gui.fullfield.output import write_finished_tiles
    from uafp_gui.io.result import read_result, verify_result_folder

    result = _full_field_result()
    folder = write_finished_tiles(tmp_path / "stopped", result.tiles[:3], PIXEL_UM, planned=4,
                                  calibration=result.calibration)
    verify_result_folder(folder)
    table = json.loads((folder / "tiles.json").read_text())
    assert table["partial"] is True and table["planned"] == 4 and len(table["tiles"]) == 3
    assert read_result(folder / "tiles" / "r01_c00").amplitude.shape == (96, 96)


def test_a_mosaic_that_cannot_be_made_never_costs_the_finished_tiles(tmp_path, monkeypatch):
    """Stitching, or an OME writer, failing on a partial run: the finished tiles are written all the same,
    tiles.json says why there is no mosaic, a warning says it too, and no half-written mosaic is left."""
    import json

    from uafp_gui.fullfield import output, stitch
    from uafp_gui.io.result import verify_result_folder

    result = _full_field_result()
    layout = [r.tile for r in result.tiles]

    def broken(*_args, **_kwargs):
        raise RuntimeError("no memory for the mosaic")

    for module, name in ((stitch, "stitch"), (output, "write_ome_tiff")):
        with monkeypatch.context() as patch:
            patch.setattr(module, name, broken)
            with pytest.warns(UserWarning, match="mosaic could not be written .*RuntimeError: no memory"):
                folder = output.write_finished_tiles(tmp_path / name, result.tiles[:3], PIXEL_UM, planned=4,
                                                     layout=layout, min_size=32)
        verify_result_folder(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "tiles", "tiles.json"]
        table = json.loads((folder / "tiles.json").read_text())
        assert table["mosaic"] == {"error": "RuntimeError: no memory for the mosaic"} and len(table["tiles"]) == 3
    folder = output.write_finished_tiles(tmp_path / "fine", result.tiles[:3], PIXEL_UM, planned=4, layout=layout,
                                         min_size=32)
    assert {"mosaic.ome.zarr", "mosaic.ome.tif"} <= {p.name for p in folder.iterdir()}


# ----------------------------------------------------------------------- end to end, a worker killed


@pytest.fixture(scope="module")
def small_field(tmp_path_factory):
    """A simulated 256 x 256 field of 25 frames (5 x 5 LEDs)."""
    from uafp_gui.simulate import SimulationSettings, simulate, write_simulation

    folder = tmp_path_factory.mktemp("field")
    simulation = simulate(SimulationSettings(frame_size=256, led_grid=5, upsample=2, pixel_integration=1, seed=1))
    write_simulation(simulation, folder / "field.tif")
    return folder / "field.tif", simulation


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_full_field_end_to_end_on_dask_with_a_worker_killed(cluster, small_field, tmp_path):
    """4 tiles (144 px, 32 px overlap) through the real pipeline on the 2-worker cluster; one worker is
    killed while it runs a tile of the second stage; every tile still comes back, and the folder is written."""
    from uafp_gui.fullfield.output import write_full_field
    from uafp_gui.fullfield.pipeline import UafpSettings, reconstruct_full_field
    from uafp_gui.io.result import read_result

    path, simulation = small_field
    killed: dict[str, object] = {}
    stages: list[tuple[str, int]] = []
    with make_runner(cluster.scheduler_address, retries=1) as runner:
        client = runner.start().client

        def progress(update) -> None:
            if update.result is None:
                return
            stages.append((update.stage, update.tile.index))
            if update.stage == "tiles" and not killed:
                busy = {worker: keys for worker, keys in client.processing().items() if keys}
                if busy:
                    worker = sorted(busy)[0]
                    pid = client.run(os.getpid, workers=[worker])[worker]
                    killed.update(pid=pid, keys=list(busy[worker]))
                    os.kill(pid, signal.SIGKILL)

        settings = UafpSettings(upsample=2, iterations=3, device="cpu", pixel_integration=1)
        result = reconstruct_full_field(path, tile_size=144, overlap=32, settings=settings, run_tasks=runner,
                                        progress=progress, calibration_tiles=1)
    assert killed, "no tile was running when the first tile of the second stage finished"
    assert sorted(index for stage, index in stages if stage == "tiles") == [0, 1, 2, 3]
    assert [t.tile.index for t in result.tiles] == [0, 1, 2, 3]
    assert result.amplitude.shape == (512, 512) and np.isfinite(result.amplitude).all()
    # the mosaic is the sample: its amplitude correlates with the truth's
    truth = np.abs(simulation.object_truth)
    assert np.corrcoef(truth.ravel(), result.amplitude.ravel())[0, 1] > 0.85  # 0.94 serially, 3 iterations
    folder = write_full_field(tmp_path / "field_result", result, source_dataset=path.name)
    assert read_result(folder, require_manifest=True).amplitude.shape == (512, 512)
    assert len(list((folder / "tiles").iterdir())) == 4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_tile_failing_on_every_try_on_dask_leaves_a_mosaic_with_its_hole(cluster, small_field, tmp_path):
    """The real pipeline on the 2-worker cluster, tile 3 (bottom right) failing on both of its tries: the
    3 finished tiles are written with their mosaic; its hole is where only tile 3 lay, the rest is the sample."""
    from uafp_gui.fullfield.output import write_finished_tiles
    from uafp_gui.fullfield.pipeline import FullFieldIncomplete, UafpSettings, reconstruct_full_field
    from uafp_gui.fullfield.region import field_info
    from uafp_gui.fullfield.tiles import plan_tiles

    path, simulation = small_field
    settings = UafpSettings(upsample=2, iterations=3, device="cpu", pixel_integration=1)
    with make_runner(cluster.scheduler_address, retries=1) as runner:

        def run_tasks(fn, tasks, on_done):
            return runner(reconstruct_unless_last_tile if fn.__name__ == "reconstruct_tile" else fn, tasks, on_done)

        with pytest.raises(FullFieldIncomplete) as failed:
            reconstruct_full_field(path, tile_size=144, overlap=32, settings=settings, run_tasks=run_tasks,
                                   calibration_tiles=1)
    incomplete = failed.value
    assert str(incomplete).startswith("1 of 4 tiles failed after their retries, 2 tries each (tile 3, row 1 column 1: "
                                      "RuntimeError: tile 3 always fails)")
    layout = plan_tiles(field_info(path).frame_shape, field_info(path).meta, 144, 32)
    folder = write_finished_tiles(tmp_path / "partial", incomplete.finished_tiles, 0.5, planned=4,
                                  calibration=incomplete.calibration, failed=incomplete.failed, layout=layout)
    mosaic = _read_partial_mosaic(folder)
    amplitude = mosaic["zarr"][0]
    hole = np.zeros((512, 512), dtype=bool)
    hole[288:, 288:] = True  # tile 3 covers camera pixels 112..256; tiles 1 and 2 reach 144
    np.testing.assert_array_equal(np.isnan(amplitude), hole)
    np.testing.assert_array_equal(np.isnan(mosaic["levels"][0][1]), hole)
    truth = np.abs(simulation.object_truth)
    assert np.corrcoef(truth[~hole], amplitude[~hole])[0, 1] > 0.85  # the complete run's criterion, on the rest
    assert mosaic["tiff_meta"]["partial"]["missing_tiles"][0]["error"] == "RuntimeError: tile 3 always fails"


# ------------------------------------------------------------------------- the CLI (a stand-in runner)


class StandInRunner:
    """A RunTasks that makes each tile's result itself (a flat object, the tile's own Zernikes) in this
    process, and can raise KeyboardInterrupt (Ctrl-C) in the second stage after `interrupt_after` tiles."""

    description = "stand-in runner"

    def __init__(self, interrupt_after: int | None = None, failing: tuple[int, ...] = (), tries: int = 3) -> None:
        self.interrupt_after = interrupt_after
        self.failing = failing  # second-stage positions whose task always fails (run like TileRunner: the rest go on)
        self.tries = tries  # what TilesFailed says (3: TileRunner's default 2 retries; 1: run_serially)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def __call__(self, fn, tasks, on_done):
        from uafp_gui.fullfield.tiles import TileResult

        results, failures = {}, {}
        for position, task in enumerate(tasks):
            if task.calibration is not None and position == self.interrupt_after:
                raise KeyboardInterrupt
            if task.calibration is not None and position in self.failing:
                try:
                    always_fails(task)
                except RuntimeError as error:
                    failures[position] = f"{type(error).__name__}: {error}"
                    continue
            tile, upsample = task.tile, task.settings["upsample"]
            shape = (tile.height * upsample, tile.width * upsample)
            calibration = {
                "format": "uafp-calibration", "version": 1,
                "led_geometry": {"shift_x_mm": 0.1, "shift_y_mm": -0.1, "rotation_deg": 0.2, "height_mm": 90.5},
                "zernike_rad": {"4": 0.2 + tile.center_um[0] / 1e4, "5": 0.05}, "frame_gain": [1.0] * 5,
                "led_positions_mm": [[0.0, 0.0]] * 5,
            }
            result = TileResult(tile, np.ones(shape, np.float32), np.zeros(shape, np.float32), calibration, 0.01,
                                "converged", 0.1)
            on_done(position, result)
            results[position] = result
        if failures:
            raise TilesFailed(f"{len(failures)} of {len(tasks)} tiles failed", finished=results, failures=failures,
                              planned=len(tasks), tries=self.tries)
        return [results[k] for k in range(len(tasks))]


def _read_partial_mosaic(folder, napari: bool = False):
    """The mosaic of a partial folder read back as a user would: (OME-TIFF levels, OME-Zarr level 0, the
    metadata in the Zarr group and in the OME-TIFF's description); with `napari`, also through the reader
    napari uses (its layer's level 0 and scale)."""
    import json

    import tifffile
    import zarr

    with tifffile.TiffFile(folder / "mosaic.ome.tif") as tif:
        assert tif.is_ome
        levels = [level.asarray() for level in tif.series[0].levels]
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        tiff_meta = json.loads(pixels["Description"])
        size_um = pixels["Pixels"]["PhysicalSizeX"]
    group = zarr.open_group(folder / "mosaic.ome.zarr", mode="r")
    zarr_level = np.asarray(group["0"][:])
    zarr_meta = group.attrs["uafp"]
    out = {"levels": levels, "zarr": zarr_level, "zarr_meta": zarr_meta, "tiff_meta": tiff_meta, "size_um": size_um}
    if napari:
        reader = pytest.importorskip("napari_ome_zarr._reader")  # the reader napari uses for OME-Zarr
        path = str(folder / "mosaic.ome.zarr")
        data, kwargs = reader.napari_get_reader(path)(path)[0][:2]
        level0 = np.asarray((data if isinstance(data, list) else [data])[0])
        out.update(napari=level0, napari_scale=kwargs.get("scale"))
    return out


@pytest.fixture
def small_dataset(tmp_path):
    from uafp_gui.io.schema import DatasetMeta
    from uafp_gui.io.writer import write_dataset
    from uafp_gui.model import Optics

    leds = [[16, 16], [16, 17], [17, 16], [15, 16], [16, 15]]
    meta = DatasetMeta(optics=Optics(), frames=tuple({"leds": [led], "exposure_ms": 10.0} for led in leds))
    frames = np.random.default_rng(3).integers(0, 4095, size=(5, 96, 112)).astype(np.uint16)
    path = tmp_path / "field.tif"
    write_dataset(path, meta, frames)
    return path


def test_cli_checks_full_field_options_before_any_work(small_dataset, capsys):
    from uafp_gui.cli import main

    cases = [
        (["--overlap", "8"], "add --tiles auto"),
        (["--tiles", "auto", "--scheduler", "http://host:80"], "not a Dask scheduler address"),
        (["--tiles", "auto", "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "has its own workers"),
        (["--tiles", "64", "--overlap", "64"], "overlap must be 0 to 63"),
        (["--tiles", "8"], "at least 32 camera pixels"),
        (["--tiles", "auto", "--method", "classic"], "drop --method classic"),
        (["--tiles", "auto", "--workers", "0"], "1 or more worker processes"),
    ]
    for flags, message in cases:
        assert main(["reconstruct", str(small_dataset), *flags]) == 2, flags
        assert message in capsys.readouterr().err, flags
    with pytest.raises(SystemExit):
        main(["reconstruct", str(small_dataset), "--tiles", "big"])
    assert "give auto or a tile size" in capsys.readouterr().err
    assert not small_dataset.with_name("field_result").exists()


@pytest.mark.slow  # stitching, the aberration map and the OME writers for real: seconds
def test_cli_full_field_run_and_ctrl_c_keeps_the_finished_tiles(small_dataset, monkeypatch, capsys):
    import json

    from uafp_gui.cli import main
    from uafp_gui.fullfield import execute
    from uafp_gui.io.result import read_result

    flags = ["--tiles", "64", "--overlap", "16", "--upsample", "2", "--calibration-tiles", "1"]
    out = small_dataset.with_name("field_result")
    monkeypatch.setattr(execute, "make_runner", lambda scheduler=None, workers=None: StandInRunner(2))
    assert main(["reconstruct", str(small_dataset), *flags]) == 130
    err = capsys.readouterr().err
    assert "Ctrl-C: stopped; the 2 finished of 4 tiles are written" in err and "mosaic.ome.zarr" in err
    assert "aberration_map" not in err  # 2 tiles: each tile's own values in calibration.json, no map
    table = json.loads((out / "tiles.json").read_text())
    assert table["partial"] is True and [row["index"] for row in table["tiles"]] == [0, 1]
    assert read_result(out / "tiles" / "r00_c01").amplitude.shape == (128, 128)
    # the mosaic of the first row's tiles: rows beyond them (camera 64..96) are holes, stopped by Ctrl-C
    mosaic = _read_partial_mosaic(out)
    hole = np.zeros((192, 224), dtype=bool)
    hole[128:] = True
    np.testing.assert_array_equal(np.isnan(mosaic["zarr"][0]), hole)
    missing = mosaic["zarr_meta"]["partial"]["missing_tiles"]
    assert [(m["index"], m["reason"], m["error"]) for m in missing] == [
        (2, "not finished", "not finished: stopped by Ctrl-C"), (3, "not finished", "not finished: stopped by Ctrl-C")]

    monkeypatch.setattr(execute, "make_runner", lambda scheduler=None, workers=None: StandInRunner())
    assert main(["reconstruct", str(small_dataset), *flags]) == 0
    printed = capsys.readouterr().out
    assert "full field: 4 tiles" in printed and "mosaic 224x192" in printed
    assert "calibration (shared): LED shift +0.100, -0.100 mm" in printed
    mosaic = read_result(out, require_manifest=True)  # the partial folder was replaced whole
    assert mosaic.amplitude.shape == (192, 224)
    assert json.loads((out / "tiles.json").read_text())["partial"] is False
    assert (out / "mosaic.ome.zarr").is_dir() and (out / "aberration_map.png").is_file()


def test_cli_ctrl_c_says_what_the_folder_holds_when_the_mosaic_could_not_be_made(small_dataset, monkeypatch, capsys):
    """Ctrl-C after 3 tiles with stitching broken: the line says there is no mosaic (tiles.json says why) and
    names the aberration map of the 3 finished tiles, which was drawn."""
    from uafp_gui.cli import main
    from uafp_gui.fullfield import execute, stitch

    def broken(*_args, **_kwargs):
        raise RuntimeError("no memory for the mosaic")

    monkeypatch.setattr(stitch, "stitch", broken)
    monkeypatch.setattr(execute, "make_runner", lambda scheduler=None, workers=None: StandInRunner(3))
    flags = ["--tiles", "64", "--overlap", "16", "--upsample", "2", "--calibration-tiles", "1"]
    assert main(["reconstruct", str(small_dataset), *flags]) == 130
    err = capsys.readouterr().err
    assert "mosaic could not be written (RuntimeError: no memory for the mosaic)" in err  # the warning's line
    out = small_dataset.with_name("field_result")
    assert (f"Ctrl-C: stopped; the 3 finished of 4 tiles are written to {out}/tiles/, no mosaic (tiles.json says "
            "why), their aberration map to aberration_map.png") in err
    assert not (out / "mosaic.ome.zarr").exists() and (out / "aberration_map.png").is_file()


def test_cli_a_tile_that_always_fails_keeps_the_finished_tiles(small_dataset, monkeypatch, capsys):
    """Tile 2 of 4 fails on every try: the other three are written as a partial result, tiles.json says
    which tile failed and why, one error line says where they are and what to try, exit code 2."""
    import json

    from uafp_gui.cli import main
    from uafp_gui.fullfield import execute
    from uafp_gui.io.result import read_result, verify_result_folder

    flags = ["--tiles", "64", "--overlap", "16", "--upsample", "2", "--calibration-tiles", "1"]
    out = small_dataset.with_name("field_result")
    monkeypatch.setattr(execute, "make_runner", lambda scheduler=None, workers=None: StandInRunner(failing=(2,)))
    assert main(["reconstruct", str(small_dataset), *flags]) == 2
    err = capsys.readouterr().err
    assert "error: 1 of 4 tiles failed after their retries, 3 tries each (tile 2, row 1 column 0: RuntimeError: " \
           "this tile " in err
    assert f"the 3 finished tiles are written to {out}" in err and "Try: run it again (a tile lost" in err
    assert "mosaic.ome.zarr and mosaic.ome.tif with NaN where tiles are missing" in err
    verify_result_folder(out)
    assert not (out / "amplitude.tif").exists()  # a partial folder never reads as a whole result
    # The mosaic of the 3 finished tiles, through the same writers as a whole run's: tile 2 (camera rows
    # 32..96, columns 0..64) is a hole where no other tile covers it (rows 64..96, columns 0..48): NaN.
    mosaic = _read_partial_mosaic(out, napari=True)
    hole = np.zeros((192, 224), dtype=bool)
    hole[128:192, 0:96] = True
    for image in (mosaic["levels"][0], mosaic["zarr"], mosaic["napari"]):
        assert image.shape == (2, 192, 224)
        np.testing.assert_array_equal(np.isnan(image[0]), hole)
        np.testing.assert_array_equal(np.isnan(image[1]), hole)
        np.testing.assert_allclose(image[0][~hole], 1.0, atol=1e-6)  # the stand-in tiles' flat object
    assert mosaic["levels"][1].shape == (2, 96, 112) and np.isnan(mosaic["levels"][1][0, 64:96, 0:48]).all()
    assert np.isfinite(mosaic["levels"][1][0, :64]).all()
    assert mosaic["size_um"] == pytest.approx(mosaic["napari_scale"][-1])
    for meta in (mosaic["zarr_meta"], mosaic["tiff_meta"]):
        partial = meta["partial"]
        assert partial["partial"] is True and partial["finished_tiles"] == [0, 1, 3] and partial["planned_tiles"] == 4
        assert partial["missing_tiles"] == [{"index": 2, "grid_row": 1, "grid_col": 0, "reason": "failed",
                                             "error": "RuntimeError: this tile always fails",
                                             "mosaic_box_px": [64, 0, 192, 128], "hole_px": 64 * 96}]
        assert partial["hole_fraction"] == pytest.approx(64 * 96 / (192 * 224))
        assert meta["calibration"]["led_geometry"]["shift_x_mm"] == 0.1  # the shared calibration beside it
    table = json.loads((out / "tiles.json").read_text())
    assert table["partial"] is True and table["planned"] == 4
    assert [row["index"] for row in table["tiles"]] == [0, 1, 3]
    assert table["failed"] == [{"index": 2, "grid_row": 1, "grid_col": 0, "y0": 32, "x0": 0, "height": 64,
                                "width": 64, "error": "RuntimeError: this tile always fails"}]
    assert table["mosaic"]["missing_tiles"] == mosaic["zarr_meta"]["partial"]["missing_tiles"]
    assert sorted(p.name for p in (out / "tiles").iterdir()) == ["r00_c00", "r00_c01", "r01_c01"]
    assert read_result(out / "tiles" / "r01_c01").amplitude.shape == (128, 128)
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["led_geometry"]["shift_x_mm"] == 0.1
    # the lens-inspection report of the 3 finished tiles, marked partial: the stand-in tiles' defocus grows
    # as 0.2 + x_um / 1e4, which the model (1, x, y from 3 tiles) predicts at the failed tile's centre
    from uafp_gui.fullfield.aberration import evaluate_model

    aberrations = calibration["field_aberrations"]
    assert aberrations["partial"]["tiles_used"] == [0, 1, 3] and aberrations["partial"]["planned_tiles"] == 4
    (x2, y2), = aberrations["partial"]["missing_tile_centres_um"]
    predicted = evaluate_model(aberrations["model"], np.array([x2]), np.array([y2]))
    assert predicted[4][0] == pytest.approx(0.2 + x2 / 1e4, abs=1e-9) and predicted[5][0] == pytest.approx(0.05)
    assert abs(x2) > 1.0  # not the field centre: a constant model would miss it
    assert (out / "aberration_map.png").stat().st_size > 10_000
    assert table["aberrations"]["picture"] == "aberration_map.png" and table["aberrations"]["tiles_used"] == [0, 1, 3]
    assert mosaic["tiff_meta"]["calibration"]["field_aberrations"]["partial"]["tiles_used"] == [0, 1, 3]
    assert "aberration_map.png" in err


def test_a_tile_that_failed_once_on_an_executor_without_retries_is_not_said_retried(small_dataset, tmp_path):
    """run_serially (and a runner with 0 retries) tries each tile once: the message says "failed", not "after
    their retries", and the advice does not blame a lost worker. The pipeline's own serial path, for real."""
    from uafp_gui.fullfield import pipeline
    from uafp_gui.fullfield.pipeline import FullFieldIncomplete, reconstruct_full_field, run_serially
    from uafp_gui.recon.settings import UafpSettings

    stand_in = StandInRunner()

    def serially_with_tile_1_failing(fn, tasks, on_done):
        def task_fn(task):
            if task.calibration is not None and task.tile.index == 1:
                raise RuntimeError("tile 1 breaks")
            return stand_in(fn, [task], lambda _p, _r: None)[0]  # the stand-in's result, in this process

        return run_serially(task_fn, tasks, on_done)

    with pytest.raises(FullFieldIncomplete) as failed:
        reconstruct_full_field(small_dataset, tile_size=64, overlap=16, settings=UafpSettings(upsample=2),
                               run_tasks=serially_with_tile_1_failing, calibration_tiles=1)
    assert failed.value.tries == 1
    assert str(failed.value) == "1 of 4 tiles failed (tile 1, row 0 column 1: RuntimeError: tile 1 breaks)"
    advice = failed.value.advice(tmp_path)
    assert "retries" not in advice and "lost with its worker" not in advice and "tried once" in advice
    assert [r.tile.index for r in failed.value.finished_tiles] == [0, 2, 3]
    retried = pipeline.FullFieldIncomplete(failed.value.finished_tiles, failed.value.failed, 4, None, tries=3)
    assert "failed after their retries, 3 tries each (tile 1" in str(retried)
    assert "lost with its worker" in retried.advice(tmp_path)


def test_session_a_tile_that_always_fails_keeps_the_finished_tiles(small_dataset, tmp_path):
    """The GUI's job: the same partial folder, `failed_tiles` set, and run() raises one error that says it."""
    import json

    from uafp_gui.recon.settings import UafpSettings
    from uafp_gui.session.fullfield import FullFieldJob

    job = FullFieldJob(small_dataset, UafpSettings(upsample=2), tile_size=64, overlap=16, calibration_tiles=1,
                       out_folder=tmp_path / "out", runner=StandInRunner(failing=(0, 3)))
    stages = []
    expected = r"2 of 4 tiles failed after their retries, 3 tries each \(tile 0.*Try: "
    with pytest.raises(ReconstructionError, match=expected) as failed:
        for update in job.run():
            stages.append(update.stage)
    assert f"the 2 finished tiles are written to {tmp_path / 'out'}" in str(failed.value)
    assert "stitching" not in stages and not job.stopped and job.result is None
    assert [tile.index for tile, _ in job.failed_tiles] == [0, 3] and job.written == tmp_path / "out"
    table = json.loads((job.written / "tiles.json").read_text())
    assert [row["index"] for row in table["tiles"]] == [1, 2] and table["partial"] is True
    assert [row["index"] for row in table["failed"]] == [0, 3]
    # the mosaic of tiles 1 and 2 (diagonal neighbours): tile 0's and tile 3's own corners are holes
    mosaic = _read_partial_mosaic(job.written)
    hole = np.zeros((192, 224), dtype=bool)
    hole[0:64, 0:96] = True  # tile 0 beyond tiles 1 (columns 48..) and 2 (rows 32..): camera rows 0..32, cols 0..48
    hole[128:192, 128:224] = True  # tile 3 beyond tiles 1 (rows ..64) and 2 (cols ..64)
    np.testing.assert_array_equal(np.isnan(mosaic["zarr"][0]), hole)
    np.testing.assert_array_equal(np.isnan(mosaic["levels"][0][1]), hole)
    missing = mosaic["tiff_meta"]["partial"]["missing_tiles"]
    assert [(m["index"], m["reason"], m["hole_px"]) for m in missing] == [(0, "failed", 6144), (3, "failed", 6144)]


def test_a_partial_folder_says_what_is_missing_and_where_its_mosaic_is(small_dataset, tmp_path, monkeypatch):
    """What a front end tells its user about a partial folder (`read_partial_summary`): the finished and
    missing tiles and why, where the mosaic is and how much of the field its holes take; without a mosaic,
    why not and where the tiles are."""
    import json
    import math

    from uafp_gui.fullfield import stitch
    from uafp_gui.fullfield.output import read_partial_summary, write_finished_tiles
    from uafp_gui.recon.settings import UafpSettings
    from uafp_gui.session.fullfield import FullFieldJob

    job = FullFieldJob(small_dataset, UafpSettings(upsample=2), tile_size=64, overlap=16, calibration_tiles=1,
                       out_folder=tmp_path / "out", runner=StandInRunner(failing=(0, 3)))
    with pytest.raises(ReconstructionError):
        list(job.run())
    summary = job.partial
    assert summary is not None and (summary.finished, summary.planned) == (2, 4)
    assert summary.missing_text() == "2 missing: tiles 0, 3 failed"
    where = summary.where_text()
    assert where == (f"partial mosaic (NaN in the holes, 29 % of the field): {tmp_path / 'out' / 'mosaic.ome.zarr'} "
                     "and mosaic.ome.tif")  # 2 x 6144 hole pixels of 192 x 224
    assert summary.hole_fraction == pytest.approx(2 * 6144 / (192 * 224))
    assert "failed with: RuntimeError: this tile always fails" in summary.text()
    assert str(tmp_path / "out") in summary.text()
    # 2 finished tiles: too few for a field model; each tile's own aberrations are kept, no map drawn
    aberrations = json.loads((tmp_path / "out" / "calibration.json").read_text())["field_aberrations"]
    assert "map" not in aberrations and aberrations["partial"]["tiles_used"] == [1, 2]
    assert [t["zernike_rad"]["5"] for t in aberrations["tiles"]] == [0.05, 0.05]
    assert all(t["rms_rad"] == pytest.approx(math.hypot(float(t["zernike_rad"]["4"]), 0.05))
               for t in aberrations["tiles"])
    assert not (tmp_path / "out" / "aberration_map.png").exists() and summary.aberration_map is None
    assert "too few finished tiles for a field model (2 < 3)" in summary.text()

    # a stop: one tile failed, the rest not finished, and no mosaic (stitching broke)
    tiles = job.tiles
    finished = [r for r in job.finished_tiles if r.tile.index == 1]

    def broken(*_args, **_kwargs):
        raise RuntimeError("no memory for the mosaic")

    monkeypatch.setattr(stitch, "stitch", broken)
    with pytest.warns(UserWarning, match="mosaic could not be written"):
        folder = write_finished_tiles(tmp_path / "no_mosaic", finished, 0.5, planned=4, layout=tiles,
                                      failed=[(tiles[2], "RuntimeError: tile 2 broke")])
    summary = read_partial_summary(folder)
    assert summary.missing_text() == "3 missing: tile 2 failed; 2 not finished"
    assert summary.where_text() == f"no mosaic (RuntimeError: no memory for the mosaic); the finished tiles: " \
                                   f"{folder / 'tiles'}"
    assert summary.mosaic_files == () and summary.hole_fraction is None
    assert summary.short_where_text() == "no mosaic (RuntimeError: no memory for the mosaic); tiles in no_mosaic/"
    assert summary.missing_text(count=False) == "tile 2 failed; 2 not finished"
    # the error's advice says what the folder holds: no mosaic here
    from uafp_gui.fullfield.pipeline import FullFieldIncomplete

    advice = FullFieldIncomplete(finished, [(tiles[2], "RuntimeError: tile 2 broke")], 4, None).advice(folder)
    assert "and no mosaic (tiles.json says why);" in advice and "mosaic.ome" not in advice


def test_a_stopped_session_keeps_its_finished_tiles_aberration_map(small_dataset, tmp_path):
    """Stop after 3 of the 4 second-stage tiles (the GUI's Stop): the shared calibration the tiles ran with
    is written, with the 3 tiles' aberration map (partial) and its picture; the summary names it."""
    import json

    from uafp_gui.recon.settings import UafpSettings
    from uafp_gui.session.fullfield import FullFieldJob

    runner = StoppedStandInRunner(stop_after=3)
    job = FullFieldJob(small_dataset, UafpSettings(upsample=2), tile_size=64, overlap=16, calibration_tiles=1,
                       out_folder=tmp_path / "out", runner=runner)
    for update in job.run():
        if update.stage == "tiles" and update.done == 3:
            job.stop()
    assert job.stopped and [r.tile.index for r in job.finished_tiles] == [0, 1, 2]
    calibration = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert calibration["led_geometry"]["shift_x_mm"] == 0.1  # the stage-1 result every tile ran with
    aberrations = calibration["field_aberrations"]
    assert aberrations["partial"]["tiles_used"] == [0, 1, 2] and len(aberrations["map"]["rms_rad"]) == 9
    assert job.partial_aberrations["summary"] == aberrations["summary"]
    summary = job.partial
    assert summary.aberration_map == tmp_path / "out" / "aberration_map.png" and summary.aberration_map.is_file()
    assert "Aberration map of the finished tiles (partial: fitted on the finished tiles only" in summary.text()


def test_pipeline_survives_a_calibration_tile_lost_on_every_try(small_dataset):
    """Stage 1: a calibration tile whose task fails in the runner (not in the engine) counts as failed;
    the others calibrate the field and every tile of stage 2 runs."""
    from uafp_gui.fullfield.pipeline import reconstruct_full_field
    from uafp_gui.recon.settings import UafpSettings

    class FailingFirstCalibrationTile(StandInRunner):
        def __call__(self, fn, tasks, on_done):
            if tasks[0].calibration is None:  # stage 1: the first calibration tile always fails
                finished = {}
                for position, task in enumerate(tasks[1:], start=1):
                    finished[position] = super().__call__(fn, [task], lambda _p, r, k=position: on_done(k, r))[0]
                raise TilesFailed("1 failed", finished=finished, failures={0: "KilledWorker: lost"},
                                  planned=len(tasks))
            return super().__call__(fn, tasks, on_done)

    result = reconstruct_full_field(small_dataset, tile_size=64, overlap=16, settings=UafpSettings(upsample=2),
                                    run_tasks=FailingFirstCalibrationTile(), calibration_tiles=2)
    assert [r.stop_reason for r in result.calibration_tiles][0] == "engine_error"
    assert result.calibration_tiles[0].calibration == {"error": "KilledWorker: lost"}
    assert len(result.tiles) == 4 and result.calibration["led_geometry"]["shift_x_mm"] == pytest.approx(0.1)


# ------------------------------------------------------------------- the session layer and the GUI


def test_crop_region_moves_the_illumination_centre_and_the_canvas_fills_tile_by_tile(small_dataset):
    from uafp_gui.fullfield.tiles import Tile, TileResult, tile_center_um
    from uafp_gui.io.dataset import read_dataset
    from uafp_gui.session.fullfield import MosaicCanvas, crop_region

    dataset = read_dataset(small_dataset)
    region = crop_region(dataset, 16, 40, 64, 48)
    np.testing.assert_array_equal(region.frames, dataset.frames[:, 16:80, 40:88])
    assert region.meta.tile_center_um == tile_center_um(dataset.meta, (96, 112), 16, 40, 64, 48)
    assert region.meta.tile_center_um[0] > 0  # right of the centre: x grows with the column
    with pytest.raises(ConfigError, match="not inside"):
        crop_region(dataset, 60, 0, 64, 48)

    canvas = MosaicCanvas((96, 112), upsample=2, max_side=112)  # decimated by 2 for the view
    assert canvas.step == 2 and canvas.amplitude.shape == (96, 112) and np.isnan(canvas.amplitude).all()
    tile = Tile(3, 1, 1, 32, 48, 64, 64, (0.0, 0.0))
    values = np.arange(128 * 128, dtype=np.float32).reshape(128, 128)
    canvas.paste(TileResult(tile, values, -values, {}, 0.0, "converged", 0.0))
    np.testing.assert_array_equal(canvas.amplitude[32:96, 48:112], values[::2, ::2])
    assert np.isnan(canvas.amplitude[:32]).all() and canvas.tiles_done == [3]


@pytest.mark.slow  # a window, the engine loaded, stitching and the writers
@pytest.mark.timeout(300)
def test_gui_full_field_fills_the_mosaic_and_shows_the_aberration_map(small_dataset, tmp_path, monkeypatch, qtbot):
    pytest.importorskip("PySide6")
    import functools

    from factories import GUI_SIMULATION
    from PySide6.QtCore import QSettings

    from uafp_gui.gui import main_window
    from uafp_gui.gui.dialogs import shown_errors
    from uafp_gui.session.fullfield import FullFieldJob

    monkeypatch.setattr(main_window, "FullFieldJob", functools.partial(FullFieldJob, runner=StandInRunner()))
    settings = QSettings(str(tmp_path / "uafp-gui.ini"), QSettings.Format.IniFormat)
    window = main_window.MainWindow(settings, simulation=GUI_SIMULATION, probe_hardware=False,
                                    connect_on_start=False)
    qtbot.addWidget(window)
    window.show()
    try:
        qtbot.waitUntil(lambda: window.engine_ready, timeout=180000)
        window.open_path(small_dataset)
        qtbot.waitUntil(lambda: window.dataset is not None, timeout=20000)
        panel = window.recon_panel
        # a region: typed numbers move the rectangle on the live view, and a drawn one fills the numbers
        panel.set_mode("region")
        assert window.live_view.region.isVisible()
        panel.region_spins["x"].setValue(20)
        assert tuple(window.live_view.region.pos()) == (20, 0)
        window.live_view.region.setPos((8, 12))  # as a drag would (emits sigRegionChangeFinished)
        assert panel.region()[:2] == (8, 12)
        # the full field
        panel.set_mode("tiles")
        assert not window.live_view.region.isVisible()
        panel.upsample.setValue(2)
        panel.tile_px.setValue(64)
        panel.overlap_px.setValue(16)
        window.start_reconstruction()
        qtbot.waitUntil(lambda: window.field_worker is not None and window.field_worker.isFinished(), timeout=120000)
        qtbot.waitUntil(lambda: "aberration map" in panel.spectrum.titleLabel.text, timeout=20000)
        assert not shown_errors, [box.text() for box in shown_errors]
        assert window.mosaic is not None and set(window.mosaic.tiles_done) == {0, 1, 2, 3}  # (+ calibration tiles)
        assert "4 tiles stitched" in panel.status.text()
        assert "diffraction-limited" in panel.calibration.text()
        folder = small_dataset.with_name("field_fullfield")
        assert (folder / "mosaic.ome.zarr").is_dir() and (folder / "aberration_map.png").is_file()
    finally:
        window.close()
        for box in list(shown_errors):
            box.close()


class StoppedStandInRunner(StandInRunner):
    """A StandInRunner whose second stage, after `stop_after` tiles, waits for the GUI's Stop (`cancel`) and
    then raises `RunCancelled`, as `TileRunner` does."""

    def __init__(self, stop_after: int) -> None:
        super().__init__()
        self.stop_after = stop_after
        self.waiting = threading.Event()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def __call__(self, fn, tasks, on_done):
        if tasks[0].calibration is None:  # stage 1 runs through
            return super().__call__(fn, tasks, on_done)
        super().__call__(fn, tasks[: self.stop_after], on_done)
        self.waiting.set()
        assert self.cancelled.wait(CLUSTER_WAIT_S), "the window's Stop never reached the runner"
        raise RunCancelled(f"cancelled with {self.stop_after} of {len(tasks)} tiles finished")


@pytest.mark.slow  # a window and two runs through the writers (~18 s): the slow lane, as the test above
@pytest.mark.timeout(300)
def test_gui_says_where_the_partial_mosaic_of_a_failed_or_stopped_full_field_is(small_dataset, tmp_path,
                                                                                  monkeypatch, qtbot):
    """After tiles failed, and after Stop: the status line names the finished and the missing tiles and
    the partial mosaic's files (NaN holes), its tooltip the whole account; the next run clears it."""
    pytest.importorskip("PySide6")

    from factories import GUI_SIMULATION
    from PySide6.QtCore import QSettings, Qt

    from uafp_gui.gui import main_window
    from uafp_gui.gui.dialogs import shown_errors
    from uafp_gui.session.fullfield import FullFieldJob

    runners = [StandInRunner(failing=(0, 3)), StoppedStandInRunner(stop_after=3)]
    monkeypatch.setattr(main_window, "FullFieldJob", lambda *a, **k: FullFieldJob(*a, runner=runners.pop(0), **k))
    settings = QSettings(str(tmp_path / "uafp-gui.ini"), QSettings.Format.IniFormat)
    window = main_window.MainWindow(settings, simulation=GUI_SIMULATION, probe_hardware=False,
                                    connect_on_start=False)
    qtbot.addWidget(window)
    window.show()
    shown_errors.clear()
    folder = small_dataset.with_name("field_fullfield")
    try:
        window.open_path(small_dataset)
        qtbot.waitUntil(lambda: window.dataset is not None, timeout=20000)
        panel = window.recon_panel
        panel.set_mode("tiles")
        panel.upsample.setValue(2)
        panel.tile_px.setValue(64)
        panel.overlap_px.setValue(16)

        # tiles 0 and 3 fail on every try
        window.start_reconstruction()
        qtbot.waitUntil(lambda: window.field_worker is not None and window.field_worker.isFinished()
                        and not panel.stop_button.isEnabled(), timeout=120000)
        qtbot.waitUntil(lambda: "incomplete" in panel.status.text(), timeout=20000)
        lines = panel.status.text().split("\n")
        assert lines == ["Full field incomplete: 2 of 4 tiles, tiles 0, 3 failed.",
                         "partial mosaic in field_fullfield/ (NaN holes: 29 % of the field)"]
        assert window.statusBar().currentMessage() == (
            f"Partial full field (2 of 4 tiles) written: partial mosaic (NaN in the holes, 29 % of the field): "
            f"{folder / 'mosaic.ome.zarr'} and mosaic.ome.tif")
        assert f"{folder / 'mosaic.ome.zarr'} and mosaic.ome.tif" in panel.status.toolTip()
        assert (folder / "mosaic.ome.zarr").is_dir() and (folder / "mosaic.ome.tif").is_file()
        assert "RuntimeError: this tile always fails" in panel.status.toolTip()
        assert [box.windowTitle() for box in shown_errors] == ["Full-field reconstruction failed"]
        for box in list(shown_errors):
            box.close()
        shown_errors.clear()

        assert "aberration map" not in panel.spectrum.titleLabel.text  # 2 tiles: too few for a map

        # stopped after 3 of the 4 tiles of the second stage: their aberration map is shown, marked partial
        window.start_reconstruction()
        assert panel.status.toolTip() == ""  # the last run's account is gone
        runner = window.field_job.runner
        qtbot.waitUntil(runner.waiting.is_set, timeout=60000)
        qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: window.field_worker.isFinished() and "stopped" in panel.status.text(),
                        timeout=60000)
        lines = panel.status.text().split("\n")
        assert lines[0] == "Full field stopped: 3 of 4 tiles, tile 3 not finished."
        assert lines[1].startswith("partial mosaic in field_fullfield/ (NaN holes: ")
        assert window.statusBar().currentMessage().endswith(f"{folder / 'mosaic.ome.zarr'} and mosaic.ome.tif")
        assert "not finished: the run was stopped" not in panel.status.toolTip()  # no failure to explain
        assert f"tiles/ and tiles.json (which tiles are missing and why) in {folder}" in panel.status.toolTip()
        assert f"{folder / 'aberration_map.png'}" in panel.status.toolTip()
        assert panel.spectrum.titleLabel.text == "aberration map: RMS (waves) (partial: 3 of 4 tiles)"
        assert panel.calibration.text().startswith("Aberrations across the field (partial: 3 of 4 tiles): max RMS")
        assert not shown_errors, [box.text() for box in shown_errors]
    finally:
        window.close()
        for box in list(shown_errors):
            box.close()
