"""Group commit (SPEC §7 "Whole or absent"): a chunk of K units is written in one transaction —
one DELETE and one bulk insert per result table, one insert of job records, one progress update,
one COMMIT; an engine error removes only its unit; a failing chunk write falls back to one
transaction per unit. Through the real entry point, on SQLite and PostgreSQL, demo portfolios.
(Signals and kill -9 with a chunk in flight: test_run_process.py.)"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from datetime import date

import psycopg
import pytest
from sqlalchemy import Engine as SAEngine
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from batch import engines as engines_module
from batch import runner as runner_module
from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, PRIVATE_ONLY, demo_id
from batch.engines import ENGINES, Engine, JobOutcome
from models import (
    BatchJobResult,
    BatchRun,
    CorrelationRun,
    MarketRiskResult,
    PortfolioSnapshot,
    PositionFactorExposure,
    StressTestResult,
)
from tests.conftest import RESULT_TABLES, dump_results, each_unit
from tests.batch.test_parallel import forget_results

AS_OF = "2022-12-28"
START = "2022-12-22"  # with AS_OF: 4 sessions (2022-12-26 was a holiday)
BOOKS = [demo_id("portfolio", k) for k in (INDIVIDUAL, HNW, HEDGE_FUND, PRIVATE_ONLY)]
PUBLIC_BOOKS = BOOKS[:3]
# tables every public demo book has rows in for a computed date
REQUIRED = (PositionFactorExposure, MarketRiskResult, StressTestResult, CorrelationRun, PortfolioSnapshot)
# the tables the portfolio engines stage for every unit (written per chunk)
UNIT_TABLES = {m.__tablename__ for m in RESULT_TABLES} - {"symbol_factor_betas", "factor_correlations"}


class Statements:
    """Counts, per kind, the statements and COMMITs the job sends: COMMITs through SQLAlchemy's
    `commit` event (every transaction of the job commits through it); DELETE/INSERT/COPY by table.
    SQLite: statements as SQLAlchemy sends them; PostgreSQL: as psycopg receives them (the bulk
    path talks to psycopg directly), which sees SQLAlchemy's own statements too."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        event.listen(SAEngine, "commit", self._commit)
        event.listen(SAEngine, "before_cursor_execute", self._sqlalchemy)
        real_execute, real_executemany, real_copy = psycopg.Cursor.execute, psycopg.Cursor.executemany, \
            psycopg.Cursor.copy
        counts = self  # the closures read self.counts, which take() replaces

        def execute(cursor, query, *args, **kwargs):
            counts.counts.update([_kind(str(query))])
            return real_execute(cursor, query, *args, **kwargs)

        def executemany(cursor, query, *args, **kwargs):
            counts.counts.update([_kind(str(query))])
            return real_executemany(cursor, query, *args, **kwargs)

        def copy(cursor, statement, *args, **kwargs):
            counts.counts.update([_kind(str(statement))])
            return real_copy(cursor, statement, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)
        monkeypatch.setattr(psycopg.Cursor, "executemany", executemany)
        monkeypatch.setattr(psycopg.Cursor, "copy", copy)

    def _commit(self, _conn) -> None:
        self.counts.update([("COMMIT", "")])

    def _sqlalchemy(self, conn, _cursor, statement, _params, _context, _many) -> None:
        if conn.dialect.name == "sqlite":
            self.counts.update([_kind(statement)])

    def close(self) -> None:
        event.remove(SAEngine, "commit", self._commit)
        event.remove(SAEngine, "before_cursor_execute", self._sqlalchemy)

    def take(self) -> Counter[tuple[str, str]]:
        counts, self.counts = Counter(self.counts), Counter()
        return counts


def _kind(statement: str) -> tuple[str, str]:
    """(verb, table) of a DELETE, INSERT, COPY or UPDATE statement; (other, '') otherwise."""
    match = re.match(r'\s*(DELETE FROM|INSERT INTO|COPY|UPDATE)\s+"?(\w+)"?', statement, re.IGNORECASE)
    if not match:
        return ("other", "")
    return (match.group(1).split()[0].upper(), match.group(2))


@pytest.fixture
def statements(monkeypatch):
    counter = Statements(monkeypatch)
    yield counter
    counter.close()


def _synced(seeded, engine) -> None:
    """Sync the prices up to AS_OF (a full run), then forget every result row: the next run
    computes AS_OF from scratch with --skip-sync."""
    assert seeded("--date", AS_OF).code == 0
    forget_results(engine)


def test_a_chunk_is_one_transaction_with_one_delete_and_one_insert_per_table(seeded, engine, statements):
    """4 units: --chunk-size 200 writes them with 1 COMMIT, 1 DELETE and at most 1 COPY/insert
    per unit table, 1 insert of job records and 1 progress UPDATE; --chunk-size 1 needs 4 of
    each; --chunk-size 3, 2. Everything else the run does is the same in the three runs, so
    the differences count the chunk transactions alone."""
    assert seeded("--date", AS_OF).code == 0  # prices synced; later runs recompute with --force
    counts = {}
    for size in (200, 1, 3):
        statements.take()
        result = seeded("--date", AS_OF, "--force", "--skip-sync", "--chunk-size", str(size), "--json")
        assert result.code == 0, result.summary
        assert result.summary["portfolios"] == {"succeeded": 4, "failed": 0, "skipped": 0}
        counts[size] = statements.take()
    big, one, three = counts[200], counts[1], counts[3]
    for table in UNIT_TABLES:
        assert big["DELETE", table] == 1, table
        assert one["DELETE", table] == 4, table
        assert three["DELETE", table] == 2, table
        inserts = {size: c["INSERT", table] + c["COPY", table] for size, c in counts.items()}
        assert inserts[200] <= 1 and inserts[3] <= 2 and inserts[1] <= 4, (table, inserts)
    assert big["DELETE", "portfolio_snapshots"] == 1 and big["INSERT", "portfolio_snapshots"] \
        + big["COPY", "portfolio_snapshots"] == 1
    # job records: 2 global steps + 1 chunk insert; progress: total, final record, 1 per chunk
    for size, chunks in ((200, 1), (1, 4), (3, 2)):
        c = counts[size]
        assert c["INSERT", "batch_job_results"] + c["COPY", "batch_job_results"] == 2 + chunks, size
    assert one["UPDATE", "batch_runs"] - big["UPDATE", "batch_runs"] == 3
    assert three["UPDATE", "batch_runs"] - big["UPDATE", "batch_runs"] == 1
    # one COMMIT per chunk
    assert big["COMMIT", ""] > 0
    assert one["COMMIT", ""] - big["COMMIT", ""] == 3
    assert three["COMMIT", ""] - big["COMMIT", ""] == 1
    with Session(engine) as s:
        run = s.scalars(select(BatchRun).order_by(BatchRun.started_at.desc()).limit(1)).one()
    assert (run.completed_units, run.total_units) == (4, 4)
    assert run.current_unit.endswith(f"@{AS_OF}")


def _register(monkeypatch, engine_double: Engine) -> None:
    """Run the registered engines plus `engine_double`, in this test only."""
    monkeypatch.setattr(runner_module, "ENGINES", list(engines_module.ENGINES) + [engine_double])


def test_an_engine_error_removes_only_its_unit_from_the_chunk(seeded, engine, monkeypatch, statements):
    """The second unit of a 4-unit chunk fails in an engine: it is absent (no result row, its
    engines `skipped`/`rolled_back`), the three others are written whole in the chunk's one
    transaction, which also holds the failed unit's records."""
    _synced(seeded, engine)
    victim = BOOKS[1]

    def explode(unit):
        if unit.portfolio_id == victim:
            raise RuntimeError("injected failure")
        return JobOutcome("success", {})

    _register(monkeypatch, Engine("exploder", each_unit(explode), depends_on=("snapshot",)))
    statements.take()
    result = seeded("--date", AS_OF, "--skip-sync", "--json")
    c = statements.take()
    assert result.code == 1
    assert result.summary["portfolios"] == {"succeeded": 3, "failed": 1, "skipped": 0}
    assert result.summary["failed_portfolios"] == [
        {"portfolio_id": str(victim), "as_of": AS_OF, "job": "exploder", "error": "RuntimeError: injected failure"}]
    with Session(engine) as s:
        victim_jobs = {j.job: (j.status, j.error) for j in s.scalars(select(BatchJobResult).where(
            BatchJobResult.run_id == uuid.UUID(result.summary["run_id"]), BatchJobResult.portfolio_id == victim))}
        run = s.get(BatchRun, uuid.UUID(result.summary["run_id"]))
    assert victim_jobs["exploder"] == ("failed", "RuntimeError: injected failure")
    assert victim_jobs["snapshot"] == ("skipped", "rolled_back: exploder failed")
    assert {status for job, (status, _) in victim_jobs.items() if job != "exploder"} == {"skipped"}
    assert _unit_rows_on(engine, victim, date.fromisoformat(AS_OF)) == 0
    with Session(engine) as s:
        others = s.scalars(select(PortfolioSnapshot.portfolio_id).where(
            PortfolioSnapshot.snapshot_date == date.fromisoformat(AS_OF))).all()
    assert sorted(others, key=str) == sorted((b for b in BOOKS if b != victim), key=str)
    _units_whole(engine, result.summary["run_id"], [b for b in BOOKS if b != victim], extra={"exploder"})
    assert c["DELETE", "portfolio_snapshots"] == 1  # one chunk write, the failed unit's records in it
    assert c["INSERT", "batch_job_results"] + c["COPY", "batch_job_results"] == 2 + 1
    assert (run.completed_units, run.total_units, run.status) == (4, 4, "partial")


def test_a_chunk_engine_that_raises_for_one_unit_fails_only_that_unit(seeded, engine, monkeypatch, statements):
    """A chunk engine is called once for the chunk; when that call raises because of one unit,
    it is run again for each unit alone: that unit fails (its error, its engines rolled back),
    the three others get the engine's outcome and are written whole in the chunk's transaction."""
    _synced(seeded, engine)
    victim = BOOKS[2]
    calls: list[int] = []

    def over_chunk(chunk):
        calls.append(len(chunk.units))
        if any(u.portfolio_id == victim for u in chunk.units):
            raise RuntimeError("injected chunk failure")
        return [JobOutcome("success", {"units_in_call": len(chunk.units)}) for _ in chunk.units]

    _register(monkeypatch, Engine("chunk_exploder", over_chunk, depends_on=("snapshot",)))
    statements.take()
    result = seeded("--date", AS_OF, "--skip-sync", "--json")
    c = statements.take()
    assert calls == [4, 1, 1, 1, 1]  # the chunk at once, then each unit alone
    assert result.code == 1
    assert result.summary["portfolios"] == {"succeeded": 3, "failed": 1, "skipped": 0}
    assert result.summary["failed_portfolios"] == [
        {"portfolio_id": str(victim), "as_of": AS_OF, "job": "chunk_exploder",
         "error": "RuntimeError: injected chunk failure"}]
    with Session(engine) as s:
        records = {(j.portfolio_id, j.job): j for j in s.scalars(select(BatchJobResult).where(
            BatchJobResult.run_id == uuid.UUID(result.summary["run_id"])))}
    assert records[victim, "snapshot"].status == "skipped"
    assert records[victim, "snapshot"].error == "rolled_back: chunk_exploder failed"
    for book in BOOKS:
        if book != victim:
            assert records[book, "chunk_exploder"].result == {"units_in_call": 1}
    assert _unit_rows_on(engine, victim, date.fromisoformat(AS_OF)) == 0
    _units_whole(engine, result.summary["run_id"], [b for b in BOOKS if b != victim], extra={"chunk_exploder"})
    assert c["DELETE", "portfolio_snapshots"] == 1  # still one chunk write


def _unit_rows_on(engine, book, day: date) -> int:
    """How many rows `book` has for `day` in the per-unit result tables."""
    with Session(engine) as s:
        total = 0
        for m in RESULT_TABLES:
            if not hasattr(m, "portfolio_id"):
                continue
            day_col = m.snapshot_date if m is PortfolioSnapshot else m.as_of_date
            total += len(s.scalars(select(m.portfolio_id).where(m.portfolio_id == book, day_col == day)).all())
    return total


def _units_whole(engine, run_id: str, books, extra: set[str]) -> None:
    """Each of `books` has, for AS_OF, rows in every required table (PRIVATE_ONLY: a snapshot)
    and, from run `run_id`, one `success` record per portfolio job and per `extra` engine."""
    day = date.fromisoformat(AS_OF)
    with Session(engine) as s:
        for book in books:
            tables = REQUIRED if book in PUBLIC_BOOKS else (PortfolioSnapshot,)
            for model in tables:
                day_col = model.snapshot_date if model is PortfolioSnapshot else model.as_of_date
                assert s.scalar(select(model.portfolio_id).where(
                    model.portfolio_id == book, day_col == day).limit(1)) == book, (book, model.__tablename__)
            jobs = s.execute(select(BatchJobResult.job, BatchJobResult.status).where(
                BatchJobResult.run_id == uuid.UUID(run_id), BatchJobResult.portfolio_id == book,
                BatchJobResult.as_of_date == day)).all()
            assert sorted(j for j, _ in jobs) == sorted([e.name for e in ENGINES] + list(extra)), book
            statuses = dict(jobs)
            assert statuses["snapshot"] == "success" and "failed" not in statuses.values(), (book, jobs)
            assert all(e is None for e in s.scalars(select(BatchJobResult.error).where(  # nothing rolled back
                BatchJobResult.run_id == uuid.UUID(run_id), BatchJobResult.portfolio_id == book))), book


def test_a_failing_chunk_write_falls_back_to_one_transaction_per_unit(seeded, engine, monkeypatch, statements):
    """One unit stages a market-risk row whose NOT NULL `pnl` is NaN (stored as NULL, so the
    database refuses it): the chunk's write fails and rolls back, each unit is then written in
    its own transaction — the three others commit whole, the offending one fails as job
    `write` with a one-line error and nothing of it is stored."""
    _synced(seeded, engine)
    victim = BOOKS[2]

    def nan_pnl(unit):
        if unit.portfolio_id == victim:
            _, rows = unit.writes[MarketRiskResult]
            unit.replace(MarketRiskResult, [*rows, {**rows[0], "scenario": "nan_pnl", "pnl": float("nan")}])
        return JobOutcome("success", {})

    _register(monkeypatch, Engine("nan_pnl", each_unit(nan_pnl), depends_on=("market_risk",)))
    statements.take()
    result = seeded("--date", AS_OF, "--skip-sync", "--json")
    c = statements.take()
    assert result.code == 1
    assert result.summary["portfolios"] == {"succeeded": 3, "failed": 1, "skipped": 0}
    [failure] = result.summary["failed_portfolios"]
    assert (failure["portfolio_id"], failure["job"]) == (str(victim), "write")
    assert re.search(r"NotNullViolation|IntegrityError", failure["error"]) and "\n" not in failure["error"]
    assert "pnl" in failure["error"]
    with Session(engine) as s:
        victim_jobs = {j.job: (j.status, j.error) for j in s.scalars(select(BatchJobResult).where(
            BatchJobResult.run_id == uuid.UUID(result.summary["run_id"]), BatchJobResult.portfolio_id == victim))}
        run = s.get(BatchRun, uuid.UUID(result.summary["run_id"]))
    assert victim_jobs["write"][0] == "failed"
    assert victim_jobs["market_risk"] == ("skipped", "rolled_back: write failed")
    assert victim_jobs["nan_pnl"] == ("skipped", "rolled_back: write failed")
    assert _unit_rows_on(engine, victim, date.fromisoformat(AS_OF)) == 0
    _units_whole(engine, result.summary["run_id"], [b for b in BOOKS if b != victim], extra={"nan_pnl"})
    # the chunk's attempt (rolled back), then one attempt per unit: 1 + 4 deletes of each table
    assert c["DELETE", "portfolio_snapshots"] == 1 + 4
    assert (run.completed_units, run.total_units, run.status) == (4, 4, "partial")


def test_chunk_size_below_one_is_a_usage_error(seeded, engine):
    for bad in ("0", "-3"):
        result = seeded("--date", AS_OF, "--skip-sync", "--chunk-size", bad)
        assert result.code == 2
        assert result.err.strip() == \
            f"sigmasight-batch: error: --chunk-size {bad} must be at least 1 (portfolio-dates per transaction)"
    result = seeded("--date", AS_OF, "--skip-sync", "--chunk-size", "many")
    assert result.code == 2 and "--chunk-size: invalid int value: 'many'" in result.err
    with Session(engine) as s:
        assert s.scalars(select(BatchRun)).first() is None  # nothing was run


def _job_payloads(engine, run_id: str) -> dict[tuple, tuple]:
    """(as_of, portfolio_id, job) → (status, error, result) of the run's unit records."""
    with Session(engine) as s:
        return {(j.as_of_date, j.portfolio_id, j.job): (j.status, j.error, json.dumps(j.result, sort_keys=True))
                for j in s.scalars(select(BatchJobResult).where(
                    BatchJobResult.run_id == uuid.UUID(run_id), BatchJobResult.portfolio_id.is_not(None)))}


def test_chunk_sizes_store_identical_results(seeded, engine):
    """A 4-session backfill of the demo with --chunk-size 200, then (results forgotten) 1, then
    3 (chunks straddling nothing: each date's 4 units split 3 + 1): every result table and every
    unit's job record (status, error, payload) are identical."""
    reference = seeded("--start", START, "--end", AS_OF, "--json")
    assert reference.code == 0, reference.summary
    expected, expected_jobs = dump_results(engine), _job_payloads(engine, reference.summary["run_id"])
    assert len(expected_jobs) == 4 * 4 * len(ENGINES)
    assert all(expected.values())  # every table has rows: the comparison is not vacuous
    for size in ("1", "3"):
        forget_results(engine)
        result = seeded("--start", START, "--end", AS_OF, "--skip-sync", "--chunk-size", size, "--json")
        assert result.code == 0, result.summary
        assert result.summary["portfolios"] == reference.summary["portfolios"]
        got = dump_results(engine)
        for table in expected:
            assert got[table] == expected[table], (size, table)
        assert _job_payloads(engine, result.summary["run_id"]) == expected_jobs, size
