"""Persisting a chunk of (portfolio, as-of date) units (SPEC §7 "Whole or absent").

Computing a chunk (batch/compute.py) yields a `ChunkResult`: per unit, its staged result rows and
its job records, or only its records when it failed or was skipped. `persist_chunk` writes all of
it inside the caller's transaction with a handful of statements whatever the chunk's size: one
DELETE per result table for every unit's key, one COPY (PostgreSQL) or `executemany` (SQLite)
per table, the snapshot re-chaining of every portfolio written (SPEC §6.7), one insert of every
job record and one progress update, inside the caller's session. `ChunkWriter` owns the
transactions: one per chunk, committed after the run's stop check and lock confirmation; if it
fails, rolled back and the units written one by one, so only the offending unit fails."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import structlog
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from batch import repository
from batch.db import bulk_insert, bulk_replace, describe_error
from batch.errors import Interrupted, ParentDeleted
from batch.stopping import Hooks
from calculations.snapshot import PriorSnapshot
from models import BatchJobResult, BatchRun, PortfolioSnapshot

log = structlog.get_logger()

UnitOutcome = Literal["succeeded", "failed", "skipped"]


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One `batch_job_results` row of a unit (or of a global step): `status` is success, skipped
    or failed; `result` the engine's JSON summary or skip payload (SPEC §8), None when failed."""

    job: str
    status: str
    duration_ms: int = 0
    error: str | None = None
    result: Any = None


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a unit failed: the job that failed first (`write` for its rows' write, `inputs` for a
    stored row that cannot be used) and a one-line error."""

    job: str
    error: str


@dataclass(frozen=True, slots=True)
class Replacement:
    """The rows of `table` for one unit's `key` (portfolio_id and the date column): the stored
    rows for the key are deleted, then `rows` inserted with the key columns set."""

    table: type
    key: dict[str, Any]
    rows: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class UnitResult:
    """What computing one unit produced. `writes` is empty unless `outcome` is succeeded: a
    failed or skipped unit leaves only its job records. `deadline`: skipped for the run deadline."""

    portfolio_id: uuid.UUID
    outcome: UnitOutcome
    records: tuple[JobRecord, ...]
    writes: tuple[Replacement, ...] = ()
    failure: Failure | None = None
    duration_ms: int = 0
    deadline: bool = False

    def snapshot(self) -> PriorSnapshot | None:
        """The snapshot this unit writes, as the link later snapshots chain from (None: none)."""
        for w in self.writes:
            if w.table is PortfolioSnapshot and w.rows:
                row = w.rows[0]
                return PriorSnapshot(w.key["snapshot_date"], row["total_value"], row["cumulative_pnl"])
        return None


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """The units of one chunk for one as-of date, in the order they were computed."""

    as_of: date
    units: tuple[UnitResult, ...]


def persist_chunk(session: Session, run_id: uuid.UUID, chunk: ChunkResult) -> int:
    """Write `chunk` in the session's transaction (never commits): every succeeded unit's rows
    (one DELETE and one bulk insert per table), the re-chaining of the snapshots dated after each
    written one, every unit's job records and the run's progress. Raises ParentDeleted, before
    anything commits, when a portfolio, position or stress scenario the rows name was deleted
    since the run read it (`repository.deleted_parents`). Returns the rows inserted."""
    inserted = bulk_replace(session, [(w.table, w.key, w.rows) for u in chunk.units for w in u.writes])
    gone = repository.deleted_parents(session, *_parents(chunk))
    if gone:  # deleted while the run computed: the unit's rows would be orphans
        more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
        raise ParentDeleted(f"deleted during the run: {', '.join(gone[:3])}{more}")
    written = {u.portfolio_id: s for u in chunk.units if (s := u.snapshot()) is not None}
    if written:  # the series always chains (SPEC §6.7)
        repository.rechain_later_snapshots_of(session, written)
    add_job_records(session, run_id, chunk.as_of, [(u.portfolio_id, u.records) for u in chunk.units])
    return inserted


def _parents(chunk: ChunkResult) -> tuple[set[uuid.UUID], set[uuid.UUID], set[str]]:
    """The portfolios, positions and stress scenarios the rows of `chunk` name."""
    portfolios: set[uuid.UUID] = set()
    positions: set[uuid.UUID] = set()
    scenarios: set[str] = set()
    for unit in chunk.units:
        for w in unit.writes:
            portfolios.add(w.key["portfolio_id"])
            if w.rows and "position_id" in w.rows[0]:
                positions.update(row["position_id"] for row in w.rows)
            elif w.rows and "scenario_id" in w.rows[0]:
                scenarios.update(row["scenario_id"] for row in w.rows)
    return portfolios, positions, scenarios


def add_job_records(session: Session, run_id: uuid.UUID, as_of: date | None,
                    units: Sequence[tuple[uuid.UUID | None, Sequence[JobRecord]]]) -> None:
    """Insert the job records of each (portfolio_id or None for a global step, records) in one
    bulk insert, and advance the run's progress by the number of portfolio units among them in
    one UPDATE (an increment, so concurrent workers count correctly)."""
    bulk_insert(session, BatchJobResult, [
        {"run_id": run_id, "as_of_date": as_of, "portfolio_id": portfolio_id, "job": r.job,
         "status": r.status, "duration_ms": int(r.duration_ms), "error": r.error, "result": r.result}
        for portfolio_id, records in units for r in records])
    portfolio_ids = [portfolio_id for portfolio_id, _ in units if portfolio_id is not None]
    if portfolio_ids:
        session.execute(update(BatchRun).where(BatchRun.id == run_id).values(
            completed_units=BatchRun.completed_units + len(portfolio_ids),
            current_unit=f"{portfolio_ids[-1]}@{as_of.isoformat() if as_of else None}"))


def rolled_back(records: Sequence[JobRecord], failure: Failure, elapsed_ms: int) -> tuple[JobRecord, ...]:
    """Job records of a unit that is not written: engines that had succeeded become skipped
    (`rolled_back`). A unit with no record at all gets one for its failure (`elapsed_ms` long)."""
    out = tuple(r if r.status != "success" else
                JobRecord(r.job, "skipped", r.duration_ms, f"rolled_back: {failure.job} failed", r.result)
                for r in records)
    return out or (JobRecord(failure.job, "failed", elapsed_ms, failure.error),)


class ChunkWriter:
    """Writes the chunks of run `run_id`, each in a transaction of its own committed after
    `before_commit(session)` (the run's stop check and run-lock confirmation) passes."""

    def __init__(self, engine: Engine, run_id: uuid.UUID, hooks: Hooks,
                 before_commit: Callable[[Session], None]) -> None:
        self.engine = engine
        self.run_id = run_id
        self.hooks = hooks
        self.before_commit = before_commit

    def write(self, chunk: ChunkResult, committed: Callable[[UnitResult], None]) -> None:
        """Write `chunk` in one transaction (`persist_chunk`), then call `committed(unit)` for each
        unit. If that write fails (e.g. a constraint one unit's rows violate), it is rolled back
        and each unit is written in its own transaction instead, so only the offending unit fails
        (job `write`; `committed` gets the failed unit, as it was recorded, after each commit).
        An interrupt loses the whole chunk: nothing of it is committed."""
        if not chunk.units:
            return
        try:
            self._transaction(lambda s: persist_chunk(s, self.run_id, chunk))
        except Exception as exc:
            self.hooks.raise_if_stopping(exc)
            if len(chunk.units) == 1 and not chunk.units[0].writes:
                raise  # job records alone cannot be written: the database fails (the run stops)
            log.warning("chunk_write_failed", error=describe_error(exc), units=len(chunk.units))
            for unit in chunk.units:
                committed(self._write_alone(chunk.as_of, unit))
            return
        for unit in chunk.units:
            committed(unit)

    def _write_alone(self, as_of: date, unit: UnitResult) -> UnitResult:
        """Write one unit in its own transaction; if its rows cannot be written, record it failed
        (job `write`, its engines `skipped` as rolled back) and return that instead."""
        t0 = self.hooks.monotonic()
        try:
            self._transaction(lambda s: persist_chunk(s, self.run_id, ChunkResult(as_of, (unit,))))
            return unit
        except Exception as exc:
            self.hooks.raise_if_stopping(exc)
            if not unit.writes:
                raise  # job records alone cannot be written: the database fails (the run stops)
            structlog.contextvars.bind_contextvars(portfolio_id=str(unit.portfolio_id), as_of=as_of.isoformat())
            error = describe_error(exc)
            log.exception("unit_write_failed")
            failure = Failure("write", error)
            elapsed = self.hooks.ms(t0)
            records = rolled_back([*unit.records, JobRecord("write", "failed", elapsed, error)], failure, elapsed)
        failed = UnitResult(unit.portfolio_id, "failed", records, failure=failure, duration_ms=unit.duration_ms)
        self._transaction(lambda s: add_job_records(s, self.run_id, as_of, [(unit.portfolio_id, records)]))
        return failed

    def _transaction(self, body: Callable[[Session], Any]) -> None:
        """Run `body` in one transaction and commit it after `before_commit`. On an interrupt the
        connection is discarded (the signal may have landed mid-statement, e.g. in a COPY not
        ended: closing it rolls back on any connection state); on an error the transaction is
        rolled back and the error raised."""
        with Session(self.engine) as s:
            s.begin()
            try:
                body(s)
                self.before_commit(s)
                s.commit()
            except Interrupted:
                _discard(s)
                raise
            except Exception:
                _roll_back_or_discard(s)
                raise


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
