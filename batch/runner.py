"""The run loop (SPEC §2, §7): `Runner` orchestrates the pieces. Under the run lock it opens the
run record (batch/runrecord.py), runs the global sync steps, plans the (portfolio, as-of date)
units (batch/plan.py), and per date runs the global engines, then the units in chunks — each
chunk's inputs loaded together, computed in memory (batch/compute.py) and written in one
transaction (batch/persist.py) — here or on an executor's workers (batch/executors.py), with a
soft deadline, a watchdog and the stop signals (batch/stopping.py); then closes the record with
the summary."""

from __future__ import annotations

import contextlib
import gc
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from batch import calendar, repository
from batch.compute import compute_chunk, deadline_skips
from batch.db import DATABASE_ERRORS, LockRef, describe, describe_error, make_engine, run_lock, write_session
from batch.engines import ENGINES, GLOBAL_ENGINES, DateContext, GlobalEngine, PriceWindow
from batch.engines import Engine as CalcEngine
from batch.errors import Interrupted, InvalidInputRow, LockLost, WorkerLost
from batch.log import configure_logging
from batch.observability import Observers
from batch.persist import ChunkResult, ChunkWriter, JobRecord, UnitResult
from batch.plan import DEFAULT_CHUNK_SIZE, Plan, RunRequest, plan_run, with_catch_up
from batch.providers import MarketDataProvider
from batch.redact import error_text, remember
from batch.runrecord import RunRecord, Tally, summarize
from batch.settings import Settings
from batch.stopping import Hooks, StopSignals, arm_watchdog, cancel_watchdog
from batch.sync import (
    HISTORY_SESSIONS,
    SYNC_SHARE_OF_BUDGET,
    MarketDataResult,
    sync_company_profiles,
    sync_market_data,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "ENGINES", "GLOBAL_ENGINES", "ChunkOutcome", "ChunkTask", "Executor",
           "RunRequest", "Runner", "run_chunk_task"]

log = structlog.get_logger()

WINDOW_DATES = 260  # as-of dates one price window covers (about a year: bounds its memory)


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
    tally: Tally
    job_counts: dict[str, dict[str, int]]


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


_WORKER_ENGINES: dict[str, Engine] = {}  # one engine per database URL per worker process


def run_chunk_task(task: ChunkTask, shared: DateContext) -> ChunkOutcome:
    """Worker entry point: run a chunk with this process's own engine, exactly as the serial
    run does (the task's portfolios are one chunk: one transaction, job records and progress
    with it)."""
    engine = _WORKER_ENGINES.get(task.settings.database_url)
    if engine is None:
        remember(task.settings.secrets())
        configure_logging(task.settings.log_format, task.settings.log_level)
        engine = _WORKER_ENGINES[task.settings.database_url] = make_engine(task.settings.database_url)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(run_id=str(task.run_id))
    runner = Runner(task.settings, engine, provider=None, monotonic=time.time)
    runner.attach(task.run_id, task.lock)
    tally = Tally()
    # the worker's own watchdog: a hung chunk ends its process as a hung serial run would
    arm_watchdog(max(1.0, task.deadline_at - time.time()) + task.settings.watchdog_grace_seconds)
    try:
        with fewer_collections():
            runner.run_chunk(task.as_of, task.portfolios, set(task.complete),
                             task.deadline_at - task.settings.batch_timeout_seconds, tally, shared)
    finally:
        cancel_watchdog()
        structlog.contextvars.clear_contextvars()
    return ChunkOutcome(tally, runner.record.job_counts)


# The cyclic garbage collector's youngest-generation threshold while a run computes: a chunk
# allocates ~10⁵–10⁶ short-lived containers (rows, records) and is not cyclic; with the default
# (700) the collector ran ~900 times and took 18 % of a 300-portfolio run (0.84 of 4.75 s).
FRESHNESS_SESSIONS = 5  # sessions the summary's `incomplete_sessions` looks back over
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


class Runner:
    """Executes one RunRequest against a database. The clocks are injectable for tests."""

    def __init__(self, settings: Settings, engine: Engine, provider: MarketDataProvider | None,
                 engines: Sequence[CalcEngine] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 utcnow: Callable[[], datetime] = lambda: datetime.now(UTC),
                 executor: Executor | None = None, observers: Observers | None = None) -> None:
        """`executor`: where the per-portfolio stage runs (None: in this process, serially).
        Workers run the registered engines, so a custom `engines` list needs the serial run.
        `observers`: told when the run has its lock and starts (SPEC §11)."""
        if executor is not None and engines is not None:
            raise ValueError("a custom engine list runs only in-process (executor=None)")
        self.settings = settings
        self.engine = engine
        self.provider = provider
        self.executor = executor
        self.observers = observers
        self.engines = list(ENGINES if engines is None else engines)
        self.global_engines: list[GlobalEngine] = list(GLOBAL_ENGINES)
        self.stop = StopSignals()
        self.hooks = Hooks(self.stop.check, self.stop.raise_if_stopping, monotonic)
        self.lock_ref: LockRef | None = None  # set while the run holds the lock
        self.lock_lost: str | None = None  # why the run lock was lost mid-run
        self.chunk_size = DEFAULT_CHUNK_SIZE  # units per transaction (the request's, once it runs)
        self.window: PriceWindow | None = None  # the closes the run's global engines slice
        self.monotonic = monotonic
        self.utcnow = utcnow

    def attach(self, run_id: uuid.UUID, lock_ref: LockRef | None) -> None:
        """Work for run `run_id` (its record, job counts) under `lock_ref` (a worker: the parent's)."""
        self.run_id = run_id
        self.record = RunRecord(self.engine, run_id, self.utcnow)
        self.writer = ChunkWriter(self.engine, run_id, self.hooks, self._before_commit)
        self.lock_ref = lock_ref

    # -- public -----------------------------------------------------------------------------

    def run(self, request: RunRequest, run_id: uuid.UUID | None = None) -> dict[str, Any]:
        """Run under the run lock (raises LockHeld at once if another run has it) and return the
        SPEC §2 summary, whose `exit_code` the caller exits with."""
        run_id = run_id or uuid.uuid4()
        structlog.contextvars.bind_contextvars(run_id=str(run_id))
        previous_handlers = self.stop.install()  # from here every stop signal counts
        try:
            with fewer_collections(), run_lock(self.engine) as lock_ref:
                self.attach(run_id, lock_ref)
                if request.catch_up_sessions:  # which recent sessions a missed night left incomplete
                    with Session(self.engine) as s:
                        request = with_catch_up(s, request)
                    if request.catch_up:
                        log.warning("catching_up", sessions=[d.isoformat() for d in request.catch_up])
                if self.observers is not None:
                    self.observers.run_started(str(run_id))
                if self.executor is None:
                    return self._run_locked(request)
                with self.executor:
                    return self._run_locked(request)
        finally:
            cancel_watchdog()
            self.stop.restore(previous_handlers)

    # -- the run ------------------------------------------------------------------------------

    def _run_locked(self, request: RunRequest) -> dict[str, Any]:
        started = self.monotonic()
        self.chunk_size = request.chunk_size
        self.record.open(request)
        tally = Tally()
        market = {"symbols_requested": 0, "symbols_updated": 0, "rows_written": 0,
                  "failed_symbols": [], "status": "skipped"}
        profiles = {"status": "skipped", "total": 0, "successful": 0, "failed": 0, "duration_seconds": 0.0}
        global_failures: list[dict[str, str]] = []
        interrupted: Interrupted | None = None
        error: str | None = None
        grace = self.settings.watchdog_grace_seconds
        arm_watchdog(self.settings.batch_timeout_seconds + grace)  # dump stacks and exit if hung
        self.stop.raising = True
        try:
            self.stop.check()  # a signal that came before the run record
            if request.skip_reason is None:
                last = request.as_of_dates[-1]
                with write_session(self.engine) as s, s.begin():  # reads, then writes
                    repository.ensure_factor_definitions(s, self.provider.name)
                    repository.ensure_stress_scenarios(s)
                    plan = plan_run(s, request)
                if not request.skip_sync:
                    t0 = self.monotonic()
                    sync_deadline = started + SYNC_SHARE_OF_BUDGET * self.settings.batch_timeout_seconds
                    market = self._market_data_step(request, last, global_failures, sync_deadline)
                    if not request.skip_profiles:
                        profiles = self._profiles_step(request, last, sync_deadline)
                    tally.add_time("sync", self.monotonic() - t0)
                self.record.set_progress(total_units=plan.total_units)
                for as_of in plan.as_of_dates:
                    self._run_date(request, plan, as_of, started, tally, global_failures)
                self.stop.check()
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
            self.stop.raising = False  # a signal now is only noted: the bookkeeping completes
            arm_watchdog(grace)  # which gets a grace of its own
        if self.stop.received is not None:  # the stop wins over an error it caused (e.g. in a driver)
            interrupted, error = interrupted or Interrupted(self.stop.received), None
        summary = summarize(self.run_id, request, tally, self.record.job_counts, market, profiles,
                            global_failures, interrupted, self.monotonic() - started, self.lock_lost, error)
        summary["incomplete_sessions"] = self._incomplete_sessions(request)
        if not self.record.close(summary, grace):
            summary["error"] = "; ".join(filter(None, [
                summary.get("error"), "the run record could not be written (the next run marks it failed)"]))
            summary["exit_code"] = summary["exit_code"] or 1
        structlog.contextvars.unbind_contextvars("portfolio_id", "as_of")
        log.info("run_finished", **summary)
        return summary

    def _incomplete_sessions(self, request: RunRequest) -> list[str] | None:
        """Freshness for the summary (SPEC §11): which of the FRESHNESS_SESSIONS sessions up to the
        run's last as-of date (or the requested date) still lack complete results for some active
        portfolio of the run's filter, after the run. None when it cannot be read (the database
        failed): the run's outcome stands."""
        end = request.as_of_dates[-1] if request.as_of_dates else request.requested_end
        try:
            window = calendar.sessions_back(calendar.session_on_or_before(end), FRESHNESS_SESSIONS)
            with Session(self.engine) as s:
                return [d.isoformat() for d in repository.sessions_missing_results(s, window, request.portfolio_ids)]
        except Exception as exc:  # noqa: BLE001 a report, not the run
            log.warning("freshness_unknown", error=error_text(exc))
            return None

    def _run_date(self, request: RunRequest, plan: Plan, as_of: date, started: float, tally: Tally,
                  global_failures: list[dict[str, str]]) -> None:
        """One as-of date: which units are done, the date's global engines, then its chunks."""
        with Session(self.engine) as s:  # once per date: which units are done
            complete = plan.complete(s, as_of)
        t0 = self.monotonic()
        shared = self._date_step(request, as_of, plan.portfolios, complete, started, global_failures)
        tally.add_time("global_engines", self.monotonic() - t0)
        t0 = self.monotonic()
        if self.executor is None:
            for chunk in plan.chunks(self.chunk_size):
                self.run_chunk(as_of, chunk, complete, started, tally, shared)
        else:
            self._run_chunks_elsewhere(as_of, plan, complete, started, tally, shared)
        tally.add_time("portfolios", self.monotonic() - t0)

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
            self.stop.raise_if_stopping(exc)
            log.exception("market_data_failed")
            error = error_text(exc)
            self.record.record_jobs(as_of, None, [JobRecord("market_data", "failed", self._ms(started), error)])
            global_failures.append({"portfolio_id": None, "job": "market_data", "error": error})
            return {"symbols_requested": 0, "symbols_updated": 0, "rows_written": 0,
                    "failed_symbols": [], "status": "failed"}
        status = "failed" if result.all_failed else "success"
        error = "every requested symbol failed" if result.all_failed else None
        self.record.record_jobs(as_of, None, [JobRecord("market_data", status, self._ms(started), error, result.result())])
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
            self.stop.raise_if_stopping(exc)
            log.exception("company_profiles_failed")
            summary = {"status": "failed", "total": 0, "successful": 0, "failed": 0,
                       "duration_seconds": round((self.monotonic() - started), 3),
                       "error": error_text(exc)}
        status = "failed" if summary["status"] == "failed" else "success"
        self.record.record_jobs(as_of, None, [JobRecord("company_profiles", status, self._ms(started),
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
            self.stop.check()
            t0 = self.monotonic()
            try:
                with Session(self.engine) as s, s.begin():
                    shared.session = s
                    outcome = engine.run(shared)
                    self._confirm_lock(s)
            except Exception as exc:  # a global step fails alone; its dependants skip
                self.stop.raise_if_stopping(exc)
                error = error_text(exc)
                log.exception("global_engine_failed", job=engine.name)
                shared.failed[engine.name] = error
                global_failures.append({"portfolio_id": None, "as_of": as_of.isoformat(),
                                        "job": engine.name, "error": error})
                self.record.record_jobs(as_of, None, [JobRecord(engine.name, "failed", self._ms(t0), error)])
                continue
            finally:
                shared.session = None
            self.record.record_jobs(as_of, None, [JobRecord(engine.name, outcome.status, self._ms(t0), None, outcome.result)])
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
            self.stop.raise_if_stopping(exc)
            log.warning("price_window_failed", error=describe_error(exc))
            self.window = None
        return self.window

    def _run_chunks_elsewhere(self, as_of: date, plan: Plan, complete: set[uuid.UUID], started: float,
                              tally: Tally, shared: DateContext | None) -> None:
        """The per-portfolio stage on the executor's workers: about four chunks per worker, so a
        slow chunk does not leave the others idle. A chunk whose worker was lost (process killed,
        task error) counts every unit of it as failed; units of it without a job record get one."""
        assert self.executor is not None
        size = max(1, min(self.chunk_size, math.ceil(len(plan.portfolios) / (4 * self.executor.workers))))
        remaining = self.settings.batch_timeout_seconds - (self.monotonic() - started)
        tasks = [ChunkTask(self.settings, self.run_id, as_of, chunk,
                           frozenset(p.id for p in chunk if p.id in complete),
                           time.time() + remaining, self.lock_ref)
                 for chunk in plan.chunks(size)]
        if shared is None:  # deadline passed or nothing to compute: the skips need no workers
            for task in tasks:
                self.run_chunk(as_of, task.portfolios, complete, started, tally, None)
            return
        try:
            for task, outcome in self.executor.map(tasks, shared):
                self.stop.check()
                self._take_outcome(as_of, task, outcome, tally)
        except BaseException:  # an interrupt: no unit is left running on a local worker
            self.executor.stop()
            raise

    def _take_outcome(self, as_of: date, task: ChunkTask, outcome: ChunkOutcome | BaseException,
                      tally: Tally) -> None:
        if isinstance(outcome, ChunkOutcome):
            if outcome.tally.deadline_skips:  # deadline bookkeeping in progress, not a hang
                arm_watchdog(self.settings.watchdog_grace_seconds)
            tally.merge(outcome.tally)
            self.record.add_counts(outcome.job_counts)
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
                self.record.record_jobs(as_of, portfolio.id, [JobRecord("worker", "failed", 0, error)])

    def run_chunk(self, as_of: date, chunk: Sequence[repository.PortfolioRow], complete: set[uuid.UUID],
                  started: float, tally: Tally, shared: DateContext | None) -> None:
        """Run (or skip) the units of `chunk` for `as_of`: their inputs loaded in one go, each unit
        computed in memory (`compute_chunk`), then the whole chunk written in one transaction
        (`_persist_chunk`). Past the deadline, the units not started are recorded skipped."""
        todo = [p.id for p in chunk if p.id not in complete]
        inputs: dict[uuid.UUID, repository.UnitInputs | InvalidInputRow] = {}
        load_error = None
        if todo and shared is not None and self.monotonic() - started <= self.settings.batch_timeout_seconds:
            self.stop.check()
            self._confirm_lock()
            try:
                with Session(self.engine) as s:
                    inputs = repository.load_unit_inputs(s, todo, as_of, shared.market_symbols, HISTORY_SESSIONS)
            except Exception as exc:  # every unit of the chunk fails with it, the run goes on
                self.stop.raise_if_stopping(exc)
                log.exception("unit_inputs_failed")
                load_error = error_text(exc)
        self.stop.check()
        if self.monotonic() - started > self.settings.batch_timeout_seconds:
            # the bookkeeping the deadline asks for, not a hang: the watchdog gets a fresh grace
            arm_watchdog(self.settings.watchdog_grace_seconds)
            structlog.contextvars.unbind_contextvars("portfolio_id")
            log.warning("units_skipped", reason="deadline", as_of=as_of.isoformat(), units=len(chunk))
            units = deadline_skips(self.engines, as_of, chunk)
        else:
            units = compute_chunk(self.engines, self.settings, as_of, chunk, complete, shared, inputs,
                                  load_error, self.hooks)
        self._persist_chunk(ChunkResult(as_of, tuple(units)), tally)

    def _persist_chunk(self, chunk: ChunkResult, tally: Tally) -> None:
        """Write `chunk` (`ChunkWriter`: one transaction, or unit by unit if that fails) and count
        each unit as it commits: its job records and its outcome."""
        def committed(unit: UnitResult) -> None:
            self.record.count_jobs(unit.records)
            tally.count(chunk.as_of, unit)

        if not chunk.units:
            return
        t0 = self.monotonic()
        self.writer.write(chunk, committed)
        tally.add_time("unit_writes", self.monotonic() - t0)

    def _before_commit(self, session: Session) -> None:
        """Before any result commits: no stop signal came, and the run still holds its lock."""
        self.stop.check()
        self._confirm_lock(session)

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

    def _ms(self, since: float) -> int:
        return self.hooks.ms(since)
