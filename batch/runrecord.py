"""The run's record (SPEC §2): its `batch_runs` row (opened `running`, its progress, closed with
the summary), the job records of its global steps, the counts of what was committed (`Tally`,
`RunRecord.job_counts`) and the summary dict the CLI prints and the row keeps."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from batch.db import describe_error, jsonable, write_session
from batch.errors import Interrupted
from batch.persist import JobRecord, UnitResult, add_job_records
from models import BatchRun

if TYPE_CHECKING:
    from batch.plan import RunRequest

log = structlog.get_logger()

FINAL_RECORD_RETRY_SECONDS = 30.0  # how long a failing database is retried for the run's final record


@dataclass
class Tally:
    """The run's unit counts and stage times, for the summary (a worker keeps its own, merged)."""

    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    deadline_skips: int = 0
    failed_portfolios: list[dict[str, str]] = field(default_factory=list)
    # sync, global_engines, portfolios (wall); unit_writes: Σ over units of their bulk writes
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def merge(self, other: Tally) -> None:
        """Add a worker's unit counts and its `unit_writes` seconds."""
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.skipped += other.skipped
        self.deadline_skips += other.deadline_skips
        self.failed_portfolios.extend(other.failed_portfolios)
        for stage, seconds in other.stage_seconds.items():
            self.add_time(stage, seconds)

    def count(self, as_of: date, unit: UnitResult) -> None:
        """Count a written unit and log its outcome."""
        structlog.contextvars.bind_contextvars(portfolio_id=str(unit.portfolio_id), as_of=as_of.isoformat())
        if unit.outcome == "succeeded":
            self.succeeded += 1
            log.info("portfolio_succeeded", duration_ms=unit.duration_ms)
        elif unit.outcome == "failed":
            assert unit.failure is not None
            self.failed += 1
            self.failed_portfolios.append({"portfolio_id": str(unit.portfolio_id), "as_of": as_of.isoformat(),
                                           "job": unit.failure.job, "error": unit.failure.error})
            log.error("portfolio_failed", job=unit.failure.job, error=unit.failure.error)
        else:
            self.skipped += 1
            self.deadline_skips += unit.deadline
        structlog.contextvars.unbind_contextvars("portfolio_id")


class RunRecord:
    """The `batch_runs` row of run `run_id` and the job records counted against it. A worker
    holds one too, only to count the job records it commits (`job_counts`)."""

    def __init__(self, engine: Engine, run_id: uuid.UUID, utcnow: Callable[[], datetime]) -> None:
        self.engine = engine
        self.run_id = run_id
        self.utcnow = utcnow
        self.job_counts: dict[str, dict[str, int]] = {}  # job → status → records this run

    def open(self, request: RunRequest) -> None:
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

    def set_progress(self, **values: Any) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(update(BatchRun).where(BatchRun.id == self.run_id).values(**values))

    def record_jobs(self, as_of: date | None, portfolio_id: uuid.UUID | None,
                    records: Sequence[JobRecord]) -> None:
        """Insert job records (and, for a portfolio unit, advance the progress) in a transaction
        of their own."""
        with Session(self.engine) as s, s.begin():
            add_job_records(s, self.run_id, as_of, [(portfolio_id, records)])
        self.count_jobs(records)

    def count_jobs(self, records: Sequence[JobRecord]) -> None:
        """Count committed job records in `job_counts` (job → status → n)."""
        for r in records:
            counts = self.job_counts.setdefault(r.job, {})
            counts[r.status] = counts.get(r.status, 0) + 1

    def add_counts(self, job_counts: dict[str, dict[str, int]]) -> None:
        """Add a worker's `job_counts`."""
        for job, counts in job_counts.items():
            mine = self.job_counts.setdefault(job, {})
            for status, n in counts.items():
                mine[status] = mine.get(status, 0) + n

    def close(self, summary: dict[str, Any], watchdog_grace_seconds: float) -> bool:
        """Write the run's final state. A failing database (an outage, a full disk) is tried again
        with backoff for up to FINAL_RECORD_RETRY_SECONDS, at most half the watchdog grace. False
        if it never succeeded: the record stays `running` until the next run closes it."""
        give_up = time.monotonic() + min(FINAL_RECORD_RETRY_SECONDS, watchdog_grace_seconds / 2)
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


def summarize(run_id: uuid.UUID, request: RunRequest, tally: Tally, job_counts: dict[str, dict[str, int]],
              market: dict[str, Any], profiles: dict[str, Any], global_failures: list[dict[str, str]],
              interrupted: Interrupted | None, duration: float, lock_lost: str | None = None,
              error: str | None = None) -> dict[str, Any]:
    """The SPEC §2 summary. `lock_lost`: why the run lock was lost mid-run; `error`: what stopped
    the run outside a unit. Either makes it `failed`, exit 1 (reason `lock_lost` or `aborted`)."""
    if interrupted is not None:
        status, exit_code = "interrupted", interrupted.exit_code
    elif lock_lost is not None or error is not None:
        status, exit_code = "failed", 1
    elif request.skip_reason is not None:
        status, exit_code = "skipped", 0
    elif tally.failed or tally.deadline_skips or global_failures:
        status = "partial" if tally.succeeded else "failed"
        exit_code = 1
    else:
        status, exit_code = "success", 0
    summary = {
        "run_id": str(run_id),
        "status": status,
        "reason": request.skip_reason or ("lock_lost" if lock_lost else None)
        or ("aborted" if error is not None else None)
        or ("deadline" if tally.deadline_skips else None),
        "as_of_dates": [d.isoformat() for d in request.as_of_dates],
        "catch_up": [d.isoformat() for d in request.catch_up],  # sessions a missed night left incomplete
        "portfolios": {"succeeded": tally.succeeded, "failed": tally.failed, "skipped": tally.skipped},
        "failed_portfolios": tally.failed_portfolios + global_failures,
        "market_data": market,
        "company_profiles": profiles,
        "jobs": job_counts,
        "stage_seconds": {stage: round(seconds, 3) for stage, seconds in tally.stage_seconds.items()},
        "duration_seconds": round(duration, 3),
        "exit_code": exit_code,
    }
    if error is not None:
        summary["error"] = error
    return summary
