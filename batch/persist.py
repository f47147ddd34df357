"""Persisting a chunk of (portfolio, as-of date) units (SPEC §7 "Whole or absent").

Computing a chunk (batch/runner.py) yields a `ChunkResult`: per unit, its staged result rows and
its job records, or only its records when it failed or was skipped. `persist_chunk` writes all of
it inside the caller's transaction with a handful of statements whatever the chunk's size: one
DELETE per result table for every unit's key, one COPY (PostgreSQL) or `executemany` (SQLite)
per table, the snapshot re-chaining of every portfolio written (SPEC §6.7), one insert of every
job record and one progress update. The caller owns the session: it confirms the run lock and
commits (or rolls back, and retries the units one by one)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.orm import Session

from batch import repository
from batch.db import bulk_insert, bulk_replace
from calculations.snapshot import PriorSnapshot
from models import BatchJobResult, BatchRun, PortfolioSnapshot

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
    written one, every unit's job records and the run's progress. Returns the rows inserted."""
    inserted = bulk_replace(session, [(w.table, w.key, w.rows) for u in chunk.units for w in u.writes])
    written = {u.portfolio_id: s for u in chunk.units if (s := u.snapshot()) is not None}
    if written:  # the series always chains (SPEC §6.7)
        repository.rechain_later_snapshots_of(session, written)
    add_job_records(session, run_id, chunk.as_of, [(u.portfolio_id, u.records) for u in chunk.units])
    return inserted


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
