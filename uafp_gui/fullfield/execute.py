"""Running the tiles of a full-field reconstruction in parallel: on this machine, or on a Dask cluster.

`make_runner()` returns a `TileRunner`, a `RunTasks` callable (`runner(fn, tasks, on_done)`, see
`uafp_gui.fullfield.pipeline`) that runs `fn(task)` for every task on Dask distributed workers:

- Local (no `scheduler`): a `LocalCluster` of worker *processes* started on first use (127.0.0.1, no
  dashboard), one tile at a time per worker, torch threads per worker = cores / workers; with a GPU,
  one worker (the tiles queue for the one device). Dask rather than a bare process pool, because a
  worker process that dies (out of memory, killed) costs only its tiles there: the nanny starts a
  new one and the scheduler runs the lost tiles again; a `concurrent.futures` pool breaks whole.
- `scheduler="tcp://host:8786"`: an existing Dask cluster. Its workers need uafp_gui installed (the
  same version: checked on connect) and the dataset at the same path (a shared file system); each
  reads only its tile's region of the raw stack.

Results stream back as each tile finishes (`distributed.as_completed`): `on_done(position, result)`
is called at once, on the caller's thread, so a view fills the mosaic tile by tile. A tile whose
task raises is tried again up to `retries` times (Dask `retries=`); a tile on a worker that is lost
is run again on another (up to the scheduler's `allowed-failures`). Tiles that still fail do not stop
the others: when all have ended, `TilesFailed` carries the finished results and each failure's
reason. `cancel()` (any thread), Ctrl-C, or the `cancel` event stop the run: nothing more is
submitted, the futures are cancelled, and `RunCancelled` is raised (the tiles already finished were
delivered to `on_done`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from uafp_gui.errors import ConfigError, ReconstructionError, RunCancelled, TilesFailed

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster

__all__ = ["RunCancelled", "TaskStats", "TileRunner", "check_scheduler_address", "make_runner"]

Task = TypeVar("Task")
Result = TypeVar("Result")

CONNECT_TIMEOUT_S = 15.0  # to reach a scheduler, or to start the local cluster's scheduler
POLL_S = 0.05  # how often a waiting run looks at its cancel flag
LOCAL_HTTP = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://[^\s/]+(:\d{1,5})?/?$")


def check_scheduler_address(address: str) -> str:
    """`tcp://host:port` (also tls://, ucx://, inproc://), or `host:port` taken as tcp; else `ConfigError`."""
    text = str(address).strip()
    if re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}", text):
        text = "tcp://" + text
    if not _ADDRESS.match(text):
        raise ConfigError(
            f"scheduler address {str(address)[:80]!r} is not a Dask scheduler address: give tcp://HOST:PORT "
            "(what `dask scheduler` prints), e.g. tcp://192.168.1.10:8786"
        )
    return text


@dataclass(frozen=True)
class TaskStats:
    """What one task cost on its worker: wall time, CPU time (the worker process's, all its threads), the
    worker process's peak resident memory so far."""

    position: int
    worker_pid: int
    host: str
    wall_s: float
    peak_rss_mb: float
    torch_threads: int | None
    cpu_s: float = float("nan")


def _peak_rss_mb() -> float:
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20  # kB on Linux, bytes on macOS
    except ImportError:  # Windows
        import psutil

        return float(psutil.Process().memory_info().peak_wset) / 2**20


def _set_torch_threads(threads: int) -> int | None:
    """Before the task: torch's intra-op threads (torch not imported yet: through OMP_NUM_THREADS, which
    the OpenMP runtime reads when torch loads; Dask's nanny sets it to 1 for its workers)."""
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
        return threads
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def run_one(
    fn: Callable[[Task], Result], task: Task, position: int, torch_threads: int | None
) -> tuple[Result, TaskStats]:
    """What a worker runs for one task (top-level, so it pickles by reference)."""
    import socket

    threads = _set_torch_threads(torch_threads) if torch_threads else None
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn(task)
    stats = TaskStats(
        position=position,
        worker_pid=os.getpid(),
        host=socket.gethostname(),
        wall_s=time.perf_counter() - start,
        peak_rss_mb=_peak_rss_mb(),
        torch_threads=threads,
        cpu_s=time.process_time() - cpu_start,
    )
    return result, stats


def _installed_version() -> str:
    """On a worker: the uafp_gui version it imports (an ImportError there says it lacks the package)."""
    from uafp_gui import __version__

    return __version__


def _gpu_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TileRunner:
    """A `RunTasks` on Dask distributed (see the module docstring). Use it as a context manager, or
    call `close()`: it owns the local cluster it started (never a cluster it connected to)."""

    def __init__(
        self,
        scheduler: str | None = None,
        workers: int | None = None,
        retries: int = 2,
        *,
        cancel: threading.Event | None = None,
        gpu: bool | None = None,
        quiet: bool = True,
    ) -> None:
        if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 1):
            raise ConfigError(f"workers {workers!r}: give 1 or more worker processes")
        if isinstance(retries, bool) or int(retries) != retries or retries < 0:
            raise ConfigError(f"retries {retries!r}: give 0 or more")
        if scheduler is not None and workers is not None:
            raise ConfigError(
                "workers is for the local cluster only: an existing Dask cluster (scheduler) has its own workers"
            )
        self.scheduler = check_scheduler_address(scheduler) if scheduler is not None else None
        self.workers = workers
        self.retries = int(retries)
        self.cancel_event = cancel if cancel is not None else threading.Event()
        self.gpu = gpu
        self.quiet = quiet
        self.stats: list[TaskStats] = []  # one per finished task, in finishing order (every run)
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        self.torch_threads: int | None = None
        self._lock = threading.Lock()

    # ---- the cluster ---------------------------------------------------------------------------
    @property
    def description(self) -> str:
        if self.scheduler is not None:
            return f"Dask cluster at {self.scheduler}"
        count = self.workers if self.workers is not None else "all-core"
        return f"local Dask cluster ({count} worker processes)"

    def start(self) -> TileRunner:
        """Connect to the scheduler, or start the local cluster (done by the first run when not yet)."""
        with self._lock:
            if self.client is not None:
                return self
            try:
                from distributed import Client, LocalCluster
            except ImportError as error:
                raise ConfigError(
                    f"running tiles in parallel needs Dask distributed: pip install 'dask[distributed]' ({error})"
                ) from None
            level = logging.ERROR if self.quiet else logging.WARNING
            if self.scheduler is not None:
                try:
                    self.client = Client(self.scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
                except (OSError, TimeoutError) as error:
                    raise ConfigError(
                        f"no Dask scheduler answered at {self.scheduler} within {CONNECT_TIMEOUT_S:.0f} s: is "
                        f"`dask scheduler` running there, and is the port open? ({error})"
                    ) from None
                self._check_workers()
                return self
            cores = os.cpu_count() or 1
            gpu = _gpu_present() if self.gpu is None else self.gpu
            workers = self.workers or (1 if gpu else cores)
            self.torch_threads = max(1, cores // workers)
            self.cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,  # one tile at a time per process; torch's own threads inside it
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                # no dashboard; the scheduler's small HTTP server (health, metrics) on a free port of 127.0.0.1
                scheduler_kwargs=LOCAL_HTTP,
                silence_logs=level,
            )
            self.client = Client(self.cluster, timeout=f"{CONNECT_TIMEOUT_S}s")
            self.workers = workers
            return self

    @property
    def connected_client(self) -> Client:
        if self.client is None:
            raise ReconstructionError("the tile runner is not started (or closed): call start() first")
        return self.client

    def _check_workers(self) -> None:
        from uafp_gui import __version__

        client = self.connected_client
        if not client.scheduler_info().get("workers"):
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            except TimeoutError:
                raise ConfigError(
                    f"the Dask cluster at {self.scheduler} has no workers (none joined within "
                    f"{CONNECT_TIMEOUT_S:.0f} s): start some with `dask worker {self.scheduler}`"
                ) from None
        try:
            versions = client.run(_installed_version)
        except ImportError as error:
            raise ConfigError(
                f"a worker of the Dask cluster at {self.scheduler} cannot import uafp_gui ({error}): install "
                "it on every worker (the same version as here)"
            ) from None
        others = {worker: v for worker, v in versions.items() if v != __version__}
        if others:
            raise ConfigError(
                f"workers of {self.scheduler} run uafp_gui {sorted(set(others.values()))}, this is {__version__}: "
                "install the same version everywhere"
            )

    def close(self) -> None:
        with self._lock:
            client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        if client is not None:
            client.close(timeout=CONNECT_TIMEOUT_S)
        if cluster is not None:
            cluster.close(timeout=CONNECT_TIMEOUT_S)

    def __enter__(self) -> TileRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- a run -----------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the run in progress (any thread): it raises `RunCancelled` within `POLL_S` seconds."""
        self.cancel_event.set()

    def __call__(
        self,
        fn: Callable[[Task], Result],
        tasks: Sequence[Task],
        on_done: Callable[[int, Result], None] | None = None,
    ) -> list[Result]:
        """Run `fn(task)` for every task; results in task order; `on_done(position, result)` as each ends."""
        tasks = list(tasks)
        if not tasks:
            return []
        if self.cancel_event.is_set():
            raise RunCancelled(f"cancelled before any of {len(tasks)} tiles started")
        client = self.start().connected_client
        from distributed import as_completed

        tag = uuid.uuid4().hex[:8]
        futures = {}
        try:
            for position, task in enumerate(tasks):
                if self.cancel_event.is_set():
                    break
                future = client.submit(
                    run_one, fn, task, position, self.torch_threads,
                    key=f"uafp-tile-{position}-{tag}", retries=self.retries, pure=False,
                )
                futures[future] = position
            results: dict[int, Result] = {}
            failures: dict[int, BaseException] = {}
            pending = as_completed(list(futures), with_results=False)
            while not pending.is_empty():
                if self.cancel_event.is_set():
                    raise RunCancelled(
                        f"stopped: {len(results)} of {len(tasks)} tiles had finished", tiles_done=len(results)
                    )
                batch = pending.next_batch(block=False)
                if not batch:
                    time.sleep(POLL_S)
                    continue
                for future in batch:
                    position = futures[future]
                    if future.status != "finished":
                        failures[position] = _failure(future)
                        continue
                    result, stats = future.result()
                    self.stats.append(stats)
                    results[position] = result
                    if on_done is not None:
                        on_done(position, result)
            if len(futures) < len(tasks):
                raise RunCancelled(
                    f"stopped: {len(results)} of {len(tasks)} tiles had finished", tiles_done=len(results)
                )
        except BaseException:  # cancelled, Ctrl-C, on_done raised: nothing more runs for this call
            client.cancel(list(futures), force=True)
            raise
        if failures:
            position, error = min(failures.items())
            raise TilesFailed(
                f"{len(failures)} of {len(tasks)} tiles failed (tile {position} after {self.retries + 1} tries: "
                f"{type(error).__name__}: {error}); the other {len(results)} finished",
                finished=results,
                failures={k: f"{type(e).__name__}: {e}" for k, e in sorted(failures.items())},
                planned=len(tasks),
                tries=self.retries + 1,
            )
        return [results[k] for k in range(len(tasks))]


def _failure(future: Future) -> BaseException:
    try:
        error = future.exception(timeout=CONNECT_TIMEOUT_S)
    except BaseException as raised:  # noqa: BLE001 - cancelled by the scheduler: that is the failure
        return raised
    return error if error is not None else RuntimeError(f"tile ended as {future.status}")


def make_runner(
    scheduler: str | None = None,
    workers: int | None = None,
    retries: int = 2,
    *,
    cancel: threading.Event | None = None,
    gpu: bool | None = None,
    quiet: bool = True,
) -> TileRunner:
    """The `RunTasks` for `reconstruct_full_field`: local worker processes (default: all cores, or one
    with a GPU), or the Dask cluster at `scheduler`. Options are checked here; nothing starts until
    the first run (or `start()`)."""
    return TileRunner(scheduler, workers, retries, cancel=cancel, gpu=gpu, quiet=quiet)
