"""Where the per-portfolio stage runs when not in the run's own process.

- `LocalProcesses` (`--workers N`): N worker processes on this machine;
- `DaskCluster` (`DASK_SCHEDULER_ADDRESS`, or `--executor dask`): the workers of a Dask cluster,
  or, with no address, a local Dask cluster of N worker processes.

Either way the unit shipped is a `ChunkTask` (a few portfolios for one as-of date) and the
worker runs it with `batch.runner.run_chunk_task`: its own database engine, the serial code path,
one transaction per chunk of units (SPEC §7). The run lock stays with the parent for the whole run;
workers never take it, but confirm it before each commit (`LockRef.confirm`). The date's
shared inputs (symbol betas, factor covariance, market closes) are computed once by the parent
and shipped to the workers.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from batch.engines import DateContext
from batch.errors import ConfigError, WorkerLost
from batch.redact import error_text
from batch.runner import ChunkOutcome, ChunkTask, Executor, run_chunk_task

EXECUTORS = ("serial", "processes", "dask")
MAX_WORKERS = 256
CONNECT_TIMEOUT_SECONDS = 10.0  # reaching a Dask scheduler
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def make_executor(kind: str | None, workers: int, scheduler_address: str | None) -> Executor | None:
    """The executor for the run flags (None: serial, in this process). Default: Dask when a
    scheduler address is configured, local processes when `workers` > 1, else serial. Raises
    ConfigError for impossible combinations or a missing optional package."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers {workers} is outside [1, {MAX_WORKERS}]")
    if kind is None:
        kind = "dask" if scheduler_address else ("processes" if workers > 1 else "serial")
    if kind == "serial":
        if workers != 1:
            raise ConfigError(f"--executor serial runs in this process; it cannot use --workers {workers}")
        return None
    if kind == "processes":
        return LocalProcesses(workers)
    if kind == "dask":
        try:
            import distributed  # noqa: F401, PLC0415 - optional dependency, checked up front
        except ImportError:
            raise ConfigError("the dask executor needs the distributed package: "
                              "pip install 'sigmasight-batch[dask]'") from None
        return DaskCluster(scheduler_address, workers)
    raise ConfigError(f"--executor {kind!r} is not one of {', '.join(EXECUTORS)}")


def _init_worker(parent_pid: int) -> None:
    """Worker processes leave Ctrl-C to the parent, which stops them, and die with the parent:
    on Linux the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG; e.g. the OOM killer
    picked the parent). A parent already gone ends the worker at once. (Every unit commit also
    confirms that the run's process and its lock are alive: `LockRef.confirm`.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def _completed(futures: dict[Any, ChunkTask], wait: Any) -> Iterator[tuple[ChunkTask, ChunkOutcome | BaseException]]:
    """(task, outcome) as they finish; a chunk's error as raised in the worker (e.g. a database
    error), or WorkerLost when the worker itself died. The runner reports the chunk."""
    for future in wait(futures):
        try:
            yield futures[future], future.result()
        except Exception as exc:
            lost = isinstance(exc, BrokenProcessPool) or type(exc).__name__ == "KilledWorker"  # Dask's
            yield futures[future], WorkerLost(error_text(exc)) if lost else exc


class LocalProcesses(Executor):
    """`workers` processes started with `spawn` (no state inherited from the parent: no open
    connections, locks or threads)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalProcesses:
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker, initargs=(os.getpid(),))
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.stop()
        elif self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool = None

    def map(self, tasks: Sequence[ChunkTask],
            shared: DateContext) -> Iterator[tuple[ChunkTask, ChunkOutcome | BaseException]]:
        assert self._pool is not None, "use the executor as a context manager"
        futures: dict[Future, ChunkTask] = {self._pool.submit(run_chunk_task, t, shared): t for t in tasks}
        yield from _completed(futures, as_completed)

    def stop(self) -> None:
        if self._pool is None:
            return
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in multiprocessing.active_children():  # their chunks in flight roll back
            process.terminate()
        for process in multiprocessing.active_children():
            process.join(timeout=10)
        self._pool = None


class DaskCluster(Executor):
    """The workers of the Dask scheduler at `address`, or a local cluster of `workers` worker
    processes (one thread each) when `address` is None. Every Dask worker needs this package
    installed and the database reachable. On a remote cluster an interrupt cancels the chunks
    not yet started; chunks already running finish (each chunk still commits or rolls back
    whole); a local cluster is shut down at once."""

    def __init__(self, address: str | None, workers: int) -> None:
        self.address = address
        self.workers = workers
        self._cluster: Any = None
        self._client: Any = None
        self._futures: list[Any] = []

    def __enter__(self) -> DaskCluster:
        from distributed import Client, LocalCluster  # noqa: PLC0415 - optional dependency

        if self.address:
            try:
                self._client = Client(self.address, timeout=CONNECT_TIMEOUT_SECONDS)
            except (OSError, TimeoutError) as exc:  # before anything is computed: a config error
                raise ConfigError(f"Dask scheduler {self.address} (DASK_SCHEDULER_ADDRESS) unreachable: "
                                  f"{type(exc).__name__}") from None
            self.workers = max(1, len(self._client.scheduler_info().get("workers", {})))
        else:
            # ":0": the scheduler's HTTP server on a free port (None still means :8787, which a
            # second cluster on the machine finds taken)
            self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                         dashboard_address=":0")
            self._client = Client(self._cluster)
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.stop()
        self._close()

    def map(self, tasks: Sequence[ChunkTask],
            shared: DateContext) -> Iterator[tuple[ChunkTask, ChunkOutcome | BaseException]]:
        from distributed import as_completed as dask_completed  # noqa: PLC0415

        assert self._client is not None, "use the executor as a context manager"
        shared_data = self._client.scatter(shared, broadcast=True)
        futures = {self._client.submit(run_chunk_task, t, shared_data, pure=False): t for t in tasks}
        self._futures = list(futures)
        try:
            yield from _completed(futures, dask_completed)
        finally:
            self._futures = []
            del shared_data

    def stop(self) -> None:
        if self._client is not None and self._futures:
            self._client.cancel(self._futures, force=True)
        self._close()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None
