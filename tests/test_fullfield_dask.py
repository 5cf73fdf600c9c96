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
import pytest

from uafp_gui.errors import ConfigError, ReconstructionError, RunCancelled
from uafp_gui.fullfield.execute import LOCAL_HTTP, check_scheduler_address, make_runner

# The toy tasks below run in worker processes that cannot import this test module: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CLUSTER_WAIT_S = 60


def slow_square(x: int) -> tuple[int, int]:
    time.sleep(0.6)
    return x * x, os.getpid()


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
        with pytest.raises(ReconstructionError, match="1 of 2 tiles failed.*RuntimeError: first try fails"):
            runner(fails_first_time, [marker, str(tmp_path / "tried")])


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
