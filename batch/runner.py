"""The run loop (SPEC §2, §7): lock, run record, global sync steps, then the (portfolio, as-of
date) units in chunks — each unit computed in memory, each chunk written in one transaction
(batch/persist.py) — with a soft deadline, a watchdog and signals."""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import structlog
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from batch import calendar, repository
from batch.db import (
    DATABASE_ERRORS,
    LockRef,
    describe,
    describe_error,
    jsonable,
    make_engine,
    run_lock,
    write_session,
)
from batch.engines import (
    ENGINES,
    GLOBAL_ENGINES,
    DateContext,
    GlobalEngine,
    ChunkEngine,
    PriceWindow,
    UnitContext,
    skipped_result,
)
from batch.engines import Engine as CalcEngine
from batch.errors import Interrupted, InvalidInputRow, LockLost, WorkerLost
from batch.log import configure_logging
from batch.persist import (
    ChunkResult,
    Failure,
    JobRecord,
    Replacement,
    UnitResult,
    add_job_records,
    persist_chunk,
)
from batch.providers import MarketDataProvider
from batch.settings import Settings
from batch.sync import (
    HISTORY_SESSIONS,
    SYNC_SHARE_OF_BUDGET,
    MarketDataResult,
    sync_company_profiles,
    sync_market_data,
)
from models import BatchRun

log = structlog.get_logger()

# units per chunk (--chunk-size): their inputs are loaded together and their results committed in
# one transaction (SPEC §7); bounds memory and what an interruption loses
DEFAULT_CHUNK_SIZE = 200
WINDOW_DATES = 260  # as-of dates one price window covers (about a year: bounds its memory)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each: roll back, record `interrupted`
FINAL_RECORD_RETRY_SECONDS = 30.0  # how long a failing database is retried for the run's final record


@dataclass(frozen=True)
class RunRequest:
    """A resolved run: the sessions to compute (ascending; empty when the run is skipped)."""

    as_of_dates: list[date]
    requested_start: date
    requested_end: date
    skip_reason: str | None = None
    force: bool = False
    portfolio_ids: list[uuid.UUID] = field(default_factory=list)  # empty: every portfolio
    skip_sync: bool = False
    skip_profiles: bool = False
    trigger: str = "manual"
    chunk_size: int = DEFAULT_CHUNK_SIZE  # units written per transaction (SPEC §7)


@dataclass
class _Tally:
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    deadline_skips: int = 0
    failed_portfolios: list[dict[str, str]] = field(default_factory=list)
    # sync, global_engines, portfolios (wall); unit_writes: Σ over units of their bulk writes
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def merge(self, other: _Tally) -> None:
        """Add a worker's unit counts and its `unit_writes` seconds."""
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.skipped += other.skipped
        self.deadline_skips += other.deadline_skips
        self.failed_portfolios.extend(other.failed_portfolios)
        for stage, seconds in other.stage_seconds.items():
            self.add_time(stage, seconds)


@dataclass(frozen=True)
class ChunkTask:
    """A chunk of portfolios for one as-of date, run by a worker (`run_chunk_task`)."""

    settings: Settings
    run_id: uuid.UUID
    as_of: date
    portfolios: list[repository.PortfolioRow]
    complete: frozenset[uuid.UUID]  # portfolios with results for as_of (skipped unless --force)
    deadline_at: float  # epoch seconds (time.time()) past which no unit is started
    lock: LockRef | None = None  # the parent's run lock, confirmed before each commit


@dataclass
class ChunkOutcome:
    tally: _Tally
    job_counts: dict[str, dict[str, int]]


@dataclass
class _UnitWork:
    """One unit while its chunk is computed: its context (None when its inputs were not
    loaded), the job records so far, engine → the failure it inherits, and its first failure."""

    portfolio: repository.PortfolioRow
    started: float
    broken: dict[str, str]
    ctx: UnitContext | None = None
    records: list[JobRecord] = field(default_factory=list)
    failure: Failure | None = None


class Executor(ABC):
    """Runs chunk tasks somewhere else and yields (task, outcome or the exception that lost it),
    in completion order. Implementations: batch/executors.py. Used as a context manager around
    the run: leaving it with an exception (an interrupt) stops the workers."""

    workers: int

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @abstractmethod
    def map(self, tasks: Sequence[ChunkTask],
            shared: DateContext) -> Iterator[tuple[ChunkTask, ChunkOutcome | BaseException]]:
        """Run every task (each with `run_chunk_task(task, shared)`) and yield as they finish."""

    @abstractmethod
    def stop(self) -> None:
        """Stop at once: cancel what has not started and end the units in progress (their
        transactions roll back)."""


def _arm_watchdog(seconds: float) -> None:
    """(Re)arm this process's watchdog: in `seconds`, dump every thread's stack and exit 1."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.__stderr__)


_WORKER_ENGINES: dict[str, Engine] = {}  # one engine per database URL per worker process


def run_chunk_task(task: ChunkTask, shared: DateContext) -> ChunkOutcome:
    """Worker entry point: run a chunk with this process's own engine, exactly as the serial
    run does (the task's portfolios are one chunk: one transaction, job records and progress
    with it)."""
    engine = _WORKER_ENGINES.get(task.settings.database_url)
    if engine is None:
        configure_logging(task.settings.log_format, task.settings.log_level)
        engine = _WORKER_ENGINES[task.settings.database_url] = make_engine(task.settings.database_url)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(run_id=str(task.run_id))
    runner = Runner(task.settings, engine, provider=None, monotonic=time.time)
    runner.run_id = task.run_id
    runner.lock_ref = task.lock
    tally = _Tally()
    # the worker's own watchdog: a hung chunk ends its process as a hung serial run would
    _arm_watchdog(max(1.0, task.deadline_at - time.time()) + task.settings.watchdog_grace_seconds)
    try:
        with fewer_collections():
            runner.run_chunk(task.as_of, task.portfolios, set(task.complete),
                             task.deadline_at - task.settings.batch_timeout_seconds, tally, shared)
    finally:
        faulthandler.cancel_dump_traceback_later()
        structlog.contextvars.clear_contextvars()
    return ChunkOutcome(tally, runner.job_counts)


# The cyclic garbage collector's youngest-generation threshold while a run computes: a chunk
# allocates ~10⁵–10⁶ short-lived containers (rows, records) and is not cyclic; with the default
# (700) the collector ran ~900 times and took 18 % of a 300-portfolio run (0.84 of 4.75 s).
COLLECT_AFTER_ALLOCATIONS = 100_000


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the body with the young-generation threshold at COLLECT_AFTER_ALLOCATIONS, then
    restore the previous thresholds (garbage is still collected, just less often)."""
    previous = gc.get_threshold()
    gc.set_threshold(COLLECT_AFTER_ALLOCATIONS, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def _discard(session: Session) -> None:
    """Close the session's connections instead of returning them to the pool: the server rolls
    their transaction back, whatever state the connection was left in (never raises)."""
    try:
        session.invalidate()
    except Exception:  # noqa: BLE001 nothing left to discard
        pass


def _roll_back_or_discard(session: Session) -> None:
    """Roll the session back; if that fails too (a connection an outage left unusable), discard
    its connections instead of raising from the cleanup."""
    try:
        session.rollback()
    except Exception:  # noqa: BLE001
        _discard(session)


class Runner:
    """Executes one RunRequest against a database. The clocks are injectable for tests."""

    def __init__(self, settings: Settings, engine: Engine, provider: MarketDataProvider | None,
                 engines: Sequence[CalcEngine] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 utcnow: Callable[[], datetime] = lambda: datetime.now(UTC),
                 executor: Executor | None = None) -> None:
        """`executor`: where the per-portfolio stage runs (None: in this process, serially).
        Workers run the registered engines, so a custom `engines` list needs the serial run."""
        if executor is not None and engines is not None:
            raise ValueError("a custom engine list runs only in-process (executor=None)")
        self.settings = settings
        self.engine = engine
        self.provider = provider
        self.executor = executor
        self.engines = list(ENGINES if engines is None else engines)
        self.global_engines: list[GlobalEngine] = list(GLOBAL_ENGINES)
        self.stop_signal: int | None = None
        self._signals_raise = False  # True while a signal may unwind the run (not in its bookkeeping)
        self.lock_ref: LockRef | None = None  # set while the run holds the lock
        self.lock_lost: str | None = None  # why the run lock was lost mid-run
        self.job_counts: dict[str, dict[str, int]] = {}  # job → status → records this run
        self.chunk_size = DEFAULT_CHUNK_SIZE  # units per transaction (the request's, once it runs)
        self.window: PriceWindow | None = None  # the closes the run's global engines slice
        self.monotonic = monotonic
        self.utcnow = utcnow

    # -- public -----------------------------------------------------------------------------

    def run(self, request: RunRequest, run_id: uuid.UUID | None = None) -> dict[str, Any]:
        """Run under the run lock (raises LockHeld at once if another run has it) and return the
        SPEC §2 summary, whose `exit_code` the caller exits with."""
        run_id = run_id or uuid.uuid4()
        structlog.contextvars.bind_contextvars(run_id=str(run_id))
        previous_handlers = self._install_signal_handlers()  # from here every stop signal counts
        try:
            with fewer_collections(), run_lock(self.engine) as self.lock_ref:
                if self.executor is None:
                    return self._run_locked(run_id, request)
                with self.executor:
                    return self._run_locked(run_id, request)
        finally:
            faulthandler.cancel_dump_traceback_later()
            self._restore_signal_handlers(previous_handlers)

    # -- the run ------------------------------------------------------------------------------

    def _run_locked(self, run_id: uuid.UUID, request: RunRequest) -> dict[str, Any]:
        started = self.monotonic()
        self.run_id = run_id
        self.chunk_size = request.chunk_size
        self._create_run_record(request)
        tally = _Tally()
        market = {"symbols_requested": 0, "symbols_updated": 0, "rows_written": 0,
                  "failed_symbols": [], "status": "skipped"}
        profiles = {"status": "skipped", "total": 0, "successful": 0, "failed": 0, "duration_seconds": 0.0}
        global_failures: list[dict[str, str]] = []
        interrupted: Interrupted | None = None
        error: str | None = None
        grace = self.settings.watchdog_grace_seconds
        _arm_watchdog(self.settings.batch_timeout_seconds + grace)  # dump stacks and exit if hung
        self._signals_raise = True
        try:
            self._check_stop()  # a signal that came before the run record
            if request.skip_reason is None:
                last = request.as_of_dates[-1]
                with write_session(self.engine) as s, s.begin():  # reads, then writes
                    repository.ensure_factor_definitions(s, self.provider.name)
                    repository.ensure_stress_scenarios(s)
                    portfolios = repository.active_portfolios(s, request.portfolio_ids)
                if not request.skip_sync:
                    t0 = self.monotonic()
                    sync_deadline = started + SYNC_SHARE_OF_BUDGET * self.settings.batch_timeout_seconds
                    market = self._market_data_step(request, last, global_failures, sync_deadline)
                    if not request.skip_profiles:
                        profiles = self._profiles_step(request, last, sync_deadline)
                    tally.add_time("sync", self.monotonic() - t0)
                self._set_progress(total_units=len(request.as_of_dates) * len(portfolios))
                for as_of in request.as_of_dates:
                    with Session(self.engine) as s:  # once per date: which units are done
                        complete = set() if request.force else repository.portfolios_with_snapshot(s, as_of)
                    t0 = self.monotonic()
                    shared = self._date_step(request, as_of, portfolios, complete, started, global_failures)
                    tally.add_time("global_engines", self.monotonic() - t0)
                    t0 = self.monotonic()
                    if self.executor is None:
                        for start in range(0, len(portfolios), self.chunk_size):
                            self.run_chunk(as_of, portfolios[start:start + self.chunk_size], complete, started,
                                           tally, shared)
                    else:
                        self._run_chunks_elsewhere(as_of, portfolios, complete, started, tally, shared)
                    tally.add_time("portfolios", self.monotonic() - t0)
                self._check_stop()
            else:
                log.info(request.skip_reason, requested=request.requested_end.isoformat())
        except LockLost as exc:  # another run may now start: stop writing results at once
            self.lock_lost = str(exc)
            log.error("run_lock_lost", error=self.lock_lost)
        except Interrupted as exc:
            interrupted = exc
        except Exception as exc:  # outside a unit (units catch their own): a database outage, a full disk
            error = describe_error(exc)
            if isinstance(exc, DATABASE_ERRORS):
                error = f"database error on {describe(self.engine)}: {error}"
            log.exception("run_aborted", error=error)
        finally:
            self._signals_raise = False  # a signal now is only noted: the bookkeeping completes
            _arm_watchdog(grace)  # which gets a grace of its own
        if self.stop_signal is not None:  # the stop wins over an error it caused (e.g. in a driver)
            interrupted, error = interrupted or Interrupted(self.stop_signal), None
        summary = self._summary(request, tally, market, profiles, global_failures, interrupted,
                                self.monotonic() - started, error)
        if not self._finish_run_record(summary):
            summary["error"] = "; ".join(filter(None, [
                summary.get("error"), "the run record could not be written (the next run marks it failed)"]))
            summary["exit_code"] = summary["exit_code"] or 1
        structlog.contextvars.unbind_contextvars("portfolio_id", "as_of")
        log.info("run_finished", **summary)
        return summary

    def _market_data_step(self, request: RunRequest, as_of: date, global_failures: list[dict[str, str]],
                          deadline: float) -> dict[str, Any]:
        started = self.monotonic()
        try:
            with Session(self.engine) as s, s.begin():
                result: MarketDataResult = sync_market_data(
                    s, self.provider, request.as_of_dates, request.portfolio_ids or None, self.utcnow(),
                    deadline=deadline, clock=self.monotonic)
                self._confirm_lock(s)
        except Exception as exc:  # a global step fails alone; engines run on stored data
            self._raise_if_stopping(exc)
            log.exception("market_data_failed")
            error = f"{type(exc).__name__}: {exc}"
            self._record_jobs(as_of, None, [JobRecord("market_data", "failed", self._ms(started), error)])
            global_failures.append({"portfolio_id": None, "job": "market_data", "error": error})
            return {"symbols_requested": 0, "symbols_updated": 0, "rows_written": 0,
                    "failed_symbols": [], "status": "failed"}
        status = "failed" if result.all_failed else "success"
        error = "every requested symbol failed" if result.all_failed else None
        self._record_jobs(as_of, None, [JobRecord("market_data", status, self._ms(started), error, result.result())])
        if result.all_failed:
            global_failures.append({"portfolio_id": None, "job": "market_data", "error": error})
        return {**result.summary(), "status": status}

    def _profiles_step(self, request: RunRequest, as_of: date, deadline: float) -> dict[str, Any]:
        """Non-blocking: a failure here is recorded but never changes the exit code."""
        started = self.monotonic()
        try:
            with Session(self.engine) as s, s.begin():
                symbols = repository.symbols_held(s, request.as_of_dates[0], as_of,
                                                  request.portfolio_ids or None)
                symbols = sorted(set(symbols) | set(repository.active_factor_proxies(s)))
                summary = sync_company_profiles(s, self.provider, symbols, self.utcnow(), deadline=deadline,
                                                clock=self.monotonic)
                self._confirm_lock(s)
        except Exception as exc:
            self._raise_if_stopping(exc)
            log.exception("company_profiles_failed")
            summary = {"status": "failed", "total": 0, "successful": 0, "failed": 0,
                       "duration_seconds": round((self.monotonic() - started), 3),
                       "error": f"{type(exc).__name__}: {exc}"}
        status = "failed" if summary["status"] == "failed" else "success"
        self._record_jobs(as_of, None, [JobRecord("company_profiles", status, self._ms(started),
                                         summary.get("error"), summary)])
        return {k: summary[k] for k in ("status", "total", "successful", "failed", "duration_seconds")}

    def _date_step(self, request: RunRequest, as_of: date, portfolios: Sequence[repository.PortfolioRow],
                   complete: set[uuid.UUID], started: float,
                   global_failures: list[dict[str, str]]) -> DateContext | None:
        """Run the per-date global engines (symbol betas, factor covariance), each committing on
        its own, unless every portfolio is already `complete` for `as_of` or the deadline has
        passed. Returns the shared context the portfolio engines read, or None when skipped."""
        if self.monotonic() - started > self.settings.batch_timeout_seconds:
            return None
        if all(p.id in complete for p in portfolios):
            return None
        structlog.contextvars.bind_contextvars(as_of=as_of.isoformat())
        structlog.contextvars.unbind_contextvars("portfolio_id")
        shared = DateContext(self.settings, as_of, [p.id for p in portfolios] if request.portfolio_ids else None,
                             window=self._price_window(request, as_of))
        with Session(self.engine) as s:
            shared.stress_scenarios = repository.active_stress_scenarios(s)
        for engine in self.global_engines:
            self._check_stop()
            t0 = self.monotonic()
            try:
                with Session(self.engine) as s, s.begin():
                    shared.session = s
                    outcome = engine.run(shared)
                    self._confirm_lock(s)
            except Exception as exc:  # a global step fails alone; its dependants skip
                self._raise_if_stopping(exc)
                error = f"{type(exc).__name__}: {exc}"
                log.exception("global_engine_failed", job=engine.name)
                shared.failed[engine.name] = error
                global_failures.append({"portfolio_id": None, "as_of": as_of.isoformat(),
                                        "job": engine.name, "error": error})
                self._record_jobs(as_of, None, [JobRecord(engine.name, "failed", self._ms(t0), error)])
                continue
            finally:
                shared.session = None
            self._record_jobs(as_of, None, [JobRecord(engine.name, outcome.status, self._ms(t0), None, outcome.result)])
        return shared

    def _price_window(self, request: RunRequest, as_of: date) -> PriceWindow | None:
        """The closes the global engines of `as_of` slice (no look-ahead: each date's slice ends
        at that date): read once for `as_of` and up to WINDOW_DATES - 1 later dates of the request
        — every market symbol held in that range and every factor proxy, HISTORY_SESSIONS sessions
        before the first date through the last — and kept while the next dates fall inside it. A
        window that cannot be read is None: each global engine then reads its own closes (and
        fails alone if the database does)."""
        if self.window is not None and self.window.first_session <= calendar.sessions_back(
                as_of, HISTORY_SESSIONS)[0] and as_of <= self.window.last_session:
            return self.window
        dates = [d for d in request.as_of_dates if d >= as_of][:WINDOW_DATES]
        try:
            with Session(self.engine) as s:
                symbols = set(repository.symbols_held(s, dates[0], dates[-1], request.portfolio_ids or None))
                symbols |= set(repository.active_factor_proxies(s))
                self.window = PriceWindow.load(s, symbols, dates[0], dates[-1], HISTORY_SESSIONS)
        except Exception as exc:  # noqa: BLE001 the global engines read (and fail) on their own
            self._raise_if_stopping(exc)
            log.warning("price_window_failed", error=describe_error(exc))
            self.window = None
        return self.window

    def _run_chunks_elsewhere(self, as_of: date, portfolios: Sequence[repository.PortfolioRow],
                              complete: set[uuid.UUID], started: float, tally: _Tally,
                              shared: DateContext | None) -> None:
        """The per-portfolio stage on the executor's workers: about four chunks per worker, so a
        slow chunk does not leave the others idle. A chunk whose worker was lost (process killed,
        task error) counts every unit of it as failed; units of it without a job record get one."""
        assert self.executor is not None
        size = max(1, min(self.chunk_size, math.ceil(len(portfolios) / (4 * self.executor.workers))))
        remaining = self.settings.batch_timeout_seconds - (self.monotonic() - started)
        tasks = [ChunkTask(self.settings, self.run_id, as_of, list(portfolios[i:i + size]),
                           frozenset(p.id for p in portfolios[i:i + size] if p.id in complete),
                           time.time() + remaining, self.lock_ref)
                 for i in range(0, len(portfolios), size)]
        if shared is None:  # deadline passed or nothing to compute: the skips need no workers
            for task in tasks:
                self.run_chunk(as_of, task.portfolios, complete, started, tally, None)
            return
        try:
            for task, outcome in self.executor.map(tasks, shared):
                self._check_stop()
                self._take_outcome(as_of, task, outcome, tally)
        except BaseException:  # an interrupt: no unit is left running on a local worker
            self.executor.stop()
            raise

    def _take_outcome(self, as_of: date, task: ChunkTask, outcome: ChunkOutcome | BaseException,
                      tally: _Tally) -> None:
        if isinstance(outcome, ChunkOutcome):
            if outcome.tally.deadline_skips:  # deadline bookkeeping in progress, not a hang
                _arm_watchdog(self.settings.watchdog_grace_seconds)
            tally.merge(outcome.tally)
            for job, counts in outcome.job_counts.items():
                mine = self.job_counts.setdefault(job, {})
                for status, n in counts.items():
                    mine[status] = mine.get(status, 0) + n
            return
        # the worker's own error (e.g. a database error), or how the worker was lost
        lost = isinstance(outcome, WorkerLost)
        error = f"worker lost: {outcome}" if lost else f"{type(outcome).__name__}: {outcome}"
        log.error("chunk_failed", error=error, portfolios=len(task.portfolios))
        with Session(self.engine) as s:
            recorded = repository.portfolios_with_job_records(s, self.run_id, as_of,
                                                              [p.id for p in task.portfolios])
        for portfolio in task.portfolios:
            tally.failed += 1
            tally.failed_portfolios.append({"portfolio_id": str(portfolio.id), "as_of": as_of.isoformat(),
                                            "job": "worker", "error": error})
            if portfolio.id not in recorded:
                self._record_jobs(as_of, portfolio.id, [JobRecord("worker", "failed", 0, error)])

    def run_chunk(self, as_of: date, chunk: Sequence[repository.PortfolioRow], complete: set[uuid.UUID],
                  started: float, tally: _Tally, shared: DateContext | None) -> None:
        """Run (or skip) the units of `chunk` for `as_of`: their inputs loaded in one go, each unit
        computed in memory (`_compute_chunk`), then the whole chunk written in one transaction
        (`_persist_chunk`). Past the deadline, the units not started are recorded skipped."""
        todo = [p.id for p in chunk if p.id not in complete]
        inputs: dict[uuid.UUID, repository.UnitInputs | InvalidInputRow] = {}
        load_error = None
        if todo and shared is not None and self.monotonic() - started <= self.settings.batch_timeout_seconds:
            self._check_stop()
            self._confirm_lock()
            try:
                with Session(self.engine) as s:
                    inputs = repository.load_unit_inputs(s, todo, as_of, shared.market_symbols, HISTORY_SESSIONS)
            except Exception as exc:  # every unit of the chunk fails with it, the run goes on
                self._raise_if_stopping(exc)
                log.exception("unit_inputs_failed")
                load_error = f"{type(exc).__name__}: {exc}"
        self._check_stop()
        if self.monotonic() - started > self.settings.batch_timeout_seconds:
            units = self._deadline_skips(as_of, chunk)
        else:
            units = self._compute_chunk(as_of, chunk, complete, shared, inputs, load_error)
        self._persist_chunk(ChunkResult(as_of, tuple(units)), tally)

    def _deadline_skips(self, as_of: date, portfolios: Sequence[repository.PortfolioRow]) -> list[UnitResult]:
        """Past the soft deadline: every unit of `portfolios` skipped (`deadline`), recorded with
        the chunk. This is the bookkeeping the deadline asks for, not a hang: the watchdog is
        re-armed with a fresh grace for it."""
        _arm_watchdog(self.settings.watchdog_grace_seconds)
        structlog.contextvars.unbind_contextvars("portfolio_id")
        log.warning("units_skipped", reason="deadline", as_of=as_of.isoformat(), units=len(portfolios))
        return [UnitResult(p.id, "skipped", tuple(
            JobRecord(e.name, "skipped", 0, "deadline",
                      skipped_result(e.name, p, as_of, None, "deadline", "run deadline passed"))
            for e in self.engines), deadline=True) for p in portfolios]

    def _compute_chunk(self, as_of: date, chunk: Sequence[repository.PortfolioRow], complete: set[uuid.UUID],
                       shared: DateContext | None,
                       inputs: dict[uuid.UUID, repository.UnitInputs | InvalidInputRow],
                       load_error: str | None) -> list[UnitResult]:
        """Compute the (portfolio, as_of) units of `chunk` in memory (nothing is written here), in
        chunk order. A unit with results already (`complete`, no --force) is skipped; one with a
        stored input row that cannot be used (`InvalidInputRow`) fails as job `inputs`, nothing
        computed. The others go through the engines in registration order, each engine over all
        of them at once (`_run_engine`). A unit's first failure loses it: nothing of it is
        written, its engines after it are recorded `skipped` (`upstream_failed` if they depend on
        it, else `rolled_back`) and those that had succeeded become `skipped` (`rolled_back`).
        Engines depending on a failed global engine are skipped with `upstream_failed` and the unit
        fails (the next run computes it again)."""
        results: dict[uuid.UUID, UnitResult] = {}
        live: list[_UnitWork] = []
        for portfolio in chunk:
            if portfolio.id in complete:  # results exist and no --force
                results[portfolio.id] = UnitResult(portfolio.id, "skipped", tuple(
                    JobRecord(e.name, "skipped", 0, None, skipped_result(
                        e.name, portfolio, as_of, None, "already_complete",
                        "results exist for this date; use --force to recompute"))
                    for e in self.engines))
                continue
            assert shared is not None, "the date step runs whenever a unit of the date needs computing"
            unit_inputs = inputs.get(portfolio.id)
            invalid = unit_inputs if isinstance(unit_inputs, InvalidInputRow) else portfolio.invalid
            if invalid is not None:
                failure = Failure("inputs", str(invalid))
                results[portfolio.id] = UnitResult(
                    portfolio.id, "failed", (JobRecord("inputs", "failed", 0, failure.error),), failure=failure)
                continue
            work = _UnitWork(portfolio, self.monotonic(), {name: name for name in shared.failed})
            if unit_inputs is None:
                work.failure = Failure("unit", f"RuntimeError: inputs not loaded: {load_error}")
            else:
                work.ctx = UnitContext(self.settings, portfolio, as_of, unit_inputs, shared)
            live.append(work)
        if live:
            log.info("chunk_computing", as_of=as_of.isoformat(), units=len(live))
        for engine in self.engines:
            self._check_stop()
            runnable = [w for w in live if self._ready(engine, w, as_of, shared)]
            if runnable:
                self._run_engine(engine, runnable)
        for work in live:
            results[work.portfolio.id] = self._unit_result(work)
        return [results[p.id] for p in chunk]

    def _ready(self, engine: CalcEngine | ChunkEngine, work: _UnitWork, as_of: date,
               shared: DateContext | None) -> bool:
        """Whether `engine` runs for the unit; if not, record why (its skip payload)."""
        if work.ctx is None:
            return False
        root = next((work.broken[d] for d in engine.depends_on if d in work.broken), None)
        held = len(work.ctx.held)
        if root is None and work.failure is not None:  # the unit is lost: do not compute
            work.records.append(JobRecord(engine.name, "skipped", 0, f"rolled_back: {work.failure.job} failed",
                                          skipped_result(engine.name, work.portfolio, as_of, held,
                                                         "rolled_back", f"{work.failure.job} failed")))
            return False
        if root is not None:
            work.broken[engine.name] = root
            work.records.append(JobRecord(engine.name, "skipped", 0, f"upstream_failed: {root}",
                                          skipped_result(engine.name, work.portfolio, as_of, held,
                                                         "upstream_failed", f"{root} failed")))
            # a failed global step leaves this portfolio-date incomplete: it fails so that the
            # next run computes it again
            if shared is not None and root in shared.failed and work.failure is None:
                work.failure = Failure(engine.name, f"upstream_failed: {root}: {shared.failed[root]}")
            return False
        return True

    def _run_engine(self, engine: CalcEngine | ChunkEngine, units: list[_UnitWork]) -> None:
        """Run `engine` for `units` and record each unit's outcome or error. A `ChunkEngine`
        computes them all in one call (each unit's record gets an equal share of its time); if
        that call raises, it is run again for each unit alone, so only the units it fails for
        fail. A per-unit `Engine` runs unit by unit."""
        if isinstance(engine, ChunkEngine) and len(units) > 1:
            t0 = self.monotonic()
            try:
                outcomes = engine.run([w.ctx for w in units])
            except Interrupted:
                raise
            except Exception as exc:
                self._raise_if_stopping(exc)
                log.warning("chunk_engine_failed", job=engine.name, error=describe_error(exc), units=len(units))
            else:
                share = self._ms(t0) // len(units)
                for work, outcome in zip(units, outcomes, strict=True):
                    work.records.append(JobRecord(engine.name, outcome.status, share, None, outcome.result))
                return
        for work in units:
            self._check_stop()
            structlog.contextvars.bind_contextvars(portfolio_id=str(work.portfolio.id))
            t0 = self.monotonic()
            try:
                outcome = engine.run([work.ctx])[0] if isinstance(engine, ChunkEngine) else engine.run(work.ctx)
            except Interrupted:
                raise
            except Exception as exc:
                self._raise_if_stopping(exc)
                error = f"{type(exc).__name__}: {exc}"
                log.exception("engine_failed", job=engine.name)
                work.broken[engine.name] = engine.name
                work.failure = work.failure or Failure(engine.name, error)
                work.records.append(JobRecord(engine.name, "failed", self._ms(t0), error))
                continue
            finally:
                structlog.contextvars.unbind_contextvars("portfolio_id")
            work.records.append(JobRecord(engine.name, outcome.status, self._ms(t0), None, outcome.result))

    def _unit_result(self, work: _UnitWork) -> UnitResult:
        """What a computed unit leaves: its staged rows and records, or, when it failed, only its
        records (the successful ones turned `rolled_back`)."""
        if work.failure is not None:
            return UnitResult(work.portfolio.id, "failed",
                              self._rolled_back(work.records, work.failure, work.started),
                              failure=work.failure, duration_ms=self._ms(work.started))
        assert work.ctx is not None
        writes = tuple(Replacement(table, key, rows) for table, (key, rows) in work.ctx.writes.items())
        return UnitResult(work.portfolio.id, "succeeded", tuple(work.records), writes,
                          duration_ms=self._ms(work.started))

    def _persist_chunk(self, chunk: ChunkResult, tally: _Tally) -> None:
        """Write `chunk` in one transaction (`persist_chunk`, the run lock confirmed before the
        commit). If that write fails (e.g. a constraint one unit's rows violate), it is rolled back
        and each unit is written in its own transaction instead, so only the offending unit fails
        (job `write`). An interrupt loses the whole chunk: nothing of it is committed."""
        if not chunk.units:
            return
        t0 = self.monotonic()
        try:
            self._write(lambda s: persist_chunk(s, self.run_id, chunk))
        except Exception as exc:
            self._raise_if_stopping(exc)
            if len(chunk.units) == 1 and not chunk.units[0].writes:
                raise  # job records alone cannot be written: the database fails (the run stops)
            log.warning("chunk_write_failed", error=describe_error(exc), units=len(chunk.units))
            for unit in chunk.units:  # each counted as it commits
                written = self._persist_alone(chunk.as_of, unit)
                self._count_jobs(written.records)
                self._account(chunk.as_of, written, tally)
            tally.add_time("unit_writes", self.monotonic() - t0)
            return
        tally.add_time("unit_writes", self.monotonic() - t0)
        for unit in chunk.units:
            self._count_jobs(unit.records)
            self._account(chunk.as_of, unit, tally)

    def _persist_alone(self, as_of: date, unit: UnitResult) -> UnitResult:
        """Write one unit in its own transaction; if its rows cannot be written, record it failed
        (job `write`, its engines `skipped` as rolled back) and return that instead."""
        t0 = self.monotonic()
        try:
            self._write(lambda s: persist_chunk(s, self.run_id, ChunkResult(as_of, (unit,))))
            return unit
        except Exception as exc:
            self._raise_if_stopping(exc)
            if not unit.writes:
                raise  # job records alone cannot be written: the database fails (the run stops)
            structlog.contextvars.bind_contextvars(portfolio_id=str(unit.portfolio_id), as_of=as_of.isoformat())
            error = describe_error(exc)
            log.exception("unit_write_failed")
            failure = Failure("write", error)
            records = self._rolled_back([*unit.records, JobRecord("write", "failed", self._ms(t0), error)],
                                        failure, t0)
        failed = UnitResult(unit.portfolio_id, "failed", records, failure=failure, duration_ms=unit.duration_ms)
        self._write(lambda s: add_job_records(s, self.run_id, as_of, [(unit.portfolio_id, records)]))
        return failed

    def _write(self, body: Callable[[Session], Any]) -> None:
        """Run `body` in one transaction and commit it after confirming the run lock. On an
        interrupt the connection is discarded (the signal may have landed mid-statement, e.g. in a
        COPY not ended: closing it rolls back on any connection state); on an error the
        transaction is rolled back and the error raised."""
        with Session(self.engine) as s:
            s.begin()
            try:
                body(s)
                self._check_stop()
                self._confirm_lock(s)
                s.commit()
            except Interrupted:
                _discard(s)
                raise
            except Exception:
                _roll_back_or_discard(s)
                raise

    def _account(self, as_of: date, unit: UnitResult, tally: _Tally) -> None:
        """Count a written unit in the tally and log its outcome."""
        structlog.contextvars.bind_contextvars(portfolio_id=str(unit.portfolio_id), as_of=as_of.isoformat())
        if unit.outcome == "succeeded":
            tally.succeeded += 1
            log.info("portfolio_succeeded", duration_ms=unit.duration_ms)
        elif unit.outcome == "failed":
            assert unit.failure is not None
            tally.failed += 1
            tally.failed_portfolios.append({"portfolio_id": str(unit.portfolio_id), "as_of": as_of.isoformat(),
                                            "job": unit.failure.job, "error": unit.failure.error})
            log.error("portfolio_failed", job=unit.failure.job, error=unit.failure.error)
        else:
            tally.skipped += 1
            tally.deadline_skips += unit.deadline
        structlog.contextvars.unbind_contextvars("portfolio_id")

    def _rolled_back(self, records: Sequence[JobRecord], failure: Failure,
                     unit_started: float) -> tuple[JobRecord, ...]:
        """Job records of a unit that is not written: engines that had succeeded become skipped."""
        out = tuple(r if r.status != "success" else
                    JobRecord(r.job, "skipped", r.duration_ms, f"rolled_back: {failure.job} failed", r.result)
                    for r in records)
        return out or (JobRecord(failure.job, "failed", self._ms(unit_started), failure.error),)

    # -- records ------------------------------------------------------------------------------

    def _create_run_record(self, request: RunRequest) -> None:
        """Insert this run's `running` record, closing any other `running` record first: this
        run holds the run lock, so no other run is alive on this database and such a record is
        one whose process died (killed, or lost its database) before recording its end. It is
        closed `failed` with reason `abandoned` (`history` shows it so) and no exit code."""
        now = self.utcnow()
        with write_session(self.engine) as s, s.begin():  # reads, then writes
            abandoned = s.scalars(select(BatchRun.id).where(BatchRun.status == "running")).all()
            if abandoned:
                s.execute(update(BatchRun).where(BatchRun.id.in_(abandoned)).values(
                    status="failed", finished_at=now,
                    summary={"status": "failed", "reason": "abandoned", "closed_by": str(self.run_id),
                             "error": "the run ended without recording its outcome (killed, or its "
                                      "database failed); closed by the next run"}))
            s.add(BatchRun(
                id=self.run_id, started_at=now, status="running", trigger=request.trigger,
                as_of_start=request.as_of_dates[0] if request.as_of_dates else request.requested_start,
                as_of_end=request.as_of_dates[-1] if request.as_of_dates else request.requested_end,
                portfolio_filter=[str(p) for p in request.portfolio_ids] or None,
                total_units=0, completed_units=0, hostname=socket.gethostname(), pid=os.getpid(),
            ))
        if abandoned:
            log.warning("abandoned_runs_closed", run_ids=[str(run_id) for run_id in abandoned])
        log.info("run_started", trigger=request.trigger,
                 as_of_dates=[d.isoformat() for d in request.as_of_dates], force=request.force)

    def _set_progress(self, **values: Any) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(update(BatchRun).where(BatchRun.id == self.run_id).values(**values))

    def _record_jobs(self, as_of: date | None, portfolio_id: uuid.UUID | None,
                     records: Sequence[JobRecord]) -> None:
        """Insert job records (and, for a portfolio unit, advance the progress) in a transaction
        of their own."""
        with Session(self.engine) as s, s.begin():
            add_job_records(s, self.run_id, as_of, [(portfolio_id, records)])
        self._count_jobs(records)

    def _count_jobs(self, records: Sequence[JobRecord]) -> None:
        """Count committed job records in `job_counts` (job → status → n)."""
        for r in records:
            counts = self.job_counts.setdefault(r.job, {})
            counts[r.status] = counts.get(r.status, 0) + 1

    def _finish_run_record(self, summary: dict[str, Any]) -> bool:
        """Write the run's final state. A failing database (an outage, a full disk) is tried again
        with backoff for up to FINAL_RECORD_RETRY_SECONDS, at most half the watchdog grace. False
        if it never succeeded: the record stays `running` until the next run closes it."""
        give_up = time.monotonic() + min(FINAL_RECORD_RETRY_SECONDS, self.settings.watchdog_grace_seconds / 2)
        pause = 0.2
        while True:
            try:
                with Session(self.engine) as s, s.begin():
                    s.execute(update(BatchRun).where(BatchRun.id == self.run_id).values(
                        status=summary["status"], finished_at=self.utcnow(), exit_code=summary["exit_code"],
                        summary=json.loads(json.dumps(jsonable(summary)))))
                return True
            except Exception as exc:  # noqa: BLE001 reported, and the next run closes the record
                if time.monotonic() + pause > give_up:
                    log.error("run_record_not_written", error=describe_error(exc))
                    return False
                time.sleep(pause)
                pause = min(2 * pause, 5.0)

    def _summary(self, request: RunRequest, tally: _Tally, market: dict[str, Any],
                 profiles: dict[str, Any], global_failures: list[dict[str, str]],
                 interrupted: Interrupted | None, duration: float, error: str | None = None) -> dict[str, Any]:
        """The SPEC §2 summary; `error`: what stopped the run outside a unit (then `failed`, exit 1,
        reason `aborted`)."""
        if interrupted is not None:
            status, exit_code = "interrupted", interrupted.exit_code
        elif self.lock_lost is not None or error is not None:
            status, exit_code = "failed", 1
        elif request.skip_reason is not None:
            status, exit_code = "skipped", 0
        elif tally.failed or tally.deadline_skips or global_failures:
            status = "partial" if tally.succeeded else "failed"
            exit_code = 1
        else:
            status, exit_code = "success", 0
        summary = {
            "run_id": str(self.run_id),
            "status": status,
            "reason": request.skip_reason or ("lock_lost" if self.lock_lost else None)
            or ("aborted" if error is not None else None)
            or ("deadline" if tally.deadline_skips else None),
            "as_of_dates": [d.isoformat() for d in request.as_of_dates],
            "portfolios": {"succeeded": tally.succeeded, "failed": tally.failed, "skipped": tally.skipped},
            "failed_portfolios": tally.failed_portfolios + global_failures,
            "market_data": market,
            "company_profiles": profiles,
            "jobs": self.job_counts,
            "stage_seconds": {stage: round(seconds, 3) for stage, seconds in tally.stage_seconds.items()},
            "duration_seconds": round(duration, 3),
            "exit_code": exit_code,
        }
        if error is not None:
            summary["error"] = error
        return summary

    # -- signals -----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT, SIGTERM and SIGHUP stop the run. The first one is noted, and raised if the run
        is in its body (`_signals_raise`); later ones are ignored, so the stop's own cleanup
        (rollback, the final record, the lock) always completes."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def _stop(signum: int, _frame: Any) -> None:
            if self.stop_signal is not None:  # already stopping
                return
            # Recorded first: an exception raised inside a weakref callback or __del__ is
            # swallowed by Python, so the loop also checks the flag at every boundary.
            self.stop_signal = signum
            if self._signals_raise:
                raise Interrupted(signum)

        return {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _confirm_lock(self, session: Session | None = None) -> None:
        """Raise LockLost unless the run still holds the run lock (`LockRef.confirm`): in
        `session`'s write transaction just before its commit, else in a short session of its own."""
        if self.lock_ref is None:
            return
        if session is not None:
            self.lock_ref.confirm(session)
            return
        with Session(self.engine) as s:
            self.lock_ref.confirm(s)

    def _check_stop(self) -> None:
        """Raise Interrupted if a stop signal arrived (even if its exception was swallowed)."""
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)

    def _raise_if_stopping(self, exc: Exception) -> None:
        """In an `except Exception`: a signal that landed inside a driver call (e.g. during a COPY)
        can surface as the driver's error. The stop wins: nothing is recorded as failed for it."""
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal) from exc

    def _ms(self, since: float) -> int:
        return int(round((self.monotonic() - since) * 1000))
