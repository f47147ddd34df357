"""Reliability of the job as a real process (SPEC §2 exit codes, §7 running safely): a SIGKILL
mid-backfill leaves only whole (portfolio, date) units and the next run completes them to the same
state as an uninterrupted run; concurrent runs are serialised by the run lock; `history` shows a
killed run. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import date
from pathlib import Path

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from batch import calendar, db
from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, PRIVATE_ONLY, demo_id
from models import (
    BatchJobResult,
    BatchRun,
    CompanyProfile,
    CorrelationCluster,
    CorrelationMatrix,
    CorrelationRun,
    FactorCorrelation,
    MarketPrice,
    MarketRiskResult,
    PairwiseCorrelation,
    PortfolioFactorExposure,
    PortfolioSnapshot,
    PositionFactorExposure,
    PositionGreeks,
    StressTestResult,
    SymbolFactorBeta,
)

PUBLIC_BOOKS = [demo_id("portfolio", k) for k in (INDIVIDUAL, HNW, HEDGE_FUND)]
ALL_BOOKS = PUBLIC_BOOKS + [demo_id("portfolio", PRIVATE_ONLY)]
PORTFOLIO_JOBS = {"valuation", "greeks", "factors", "market_risk", "stress_tests", "correlations", "snapshot"}
# per-(portfolio, date) result tables; a non-private demo book has rows in each of the first four
REQUIRED_TABLES = (PositionFactorExposure, MarketRiskResult, StressTestResult, CorrelationRun)
PORTFOLIO_TABLES = REQUIRED_TABLES + (PortfolioFactorExposure, PositionGreeks, CorrelationMatrix,
                                      PairwiseCorrelation, CorrelationCluster)
RESULT_TABLES = PORTFOLIO_TABLES + (PortfolioSnapshot, SymbolFactorBeta, FactorCorrelation,
                                    MarketPrice, CompanyProfile)
VOLATILE_COLUMNS = {"id", "updated_at"}  # surrogate keys and wall-clock stamps
# table → natural key (SPEC §4): each table's primary key as the models declare it (the view's too)
NATURAL_KEYS = {model.__tablename__: tuple(c.name for c in model.__table__.primary_key) for model in RESULT_TABLES}
# short ranges keep the module's runtime modest: 5 sessions = 20 units; 7 for the race
KILL_START, KILL_END = date(2022, 12, 21), date(2022, 12, 28)
RACE_START, RACE_END = date(2022, 12, 19), date(2022, 12, 28)
EXIT_LOCKED = 75


def _env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MARKET_DATA_PROVIDER")}
    env.update(LOG_FORMAT="json", DATABASE_URL=database_url)
    return env


def _batch(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batch", *args], cwd=cwd, env=_env(database_url),
                          capture_output=True, text=True, timeout=120, check=False)


def _start(database_url: str, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "batch", *args], cwd=cwd, env=_env(database_url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_after(proc: subprocess.Popen, units: int, timeout: float = 60) -> int:
    """Read the run's JSON log lines until `units` portfolios have committed, then SIGKILL it.
    Returns how many `portfolio_succeeded` events were read."""
    deadline = time.monotonic() + timeout
    seen = 0
    for line in proc.stdout:
        try:
            event = json.loads(line).get("event")
        except json.JSONDecodeError:
            continue
        seen += event == "portfolio_succeeded"
        if seen >= units or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert seen >= units, f"the run committed only {seen} units before the deadline"
    return seen


def _summary(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


def dump(engine) -> dict[str, list[tuple]]:
    """Every row of every result table (plus prices and profiles), without surrogate ids and
    wall-clock stamps, in a stable order."""
    out = {}
    with Session(engine) as s:
        for model in RESULT_TABLES:
            cols = [c for c in model.__table__.columns if c.name not in VOLATILE_COLUMNS]
            rows = s.execute(select(*cols)).all()
            out[model.__tablename__] = sorted(tuple(json.dumps(v, sort_keys=True, default=str) for v in r)
                                              for r in rows)
    return out


def _units(engine, model) -> set[tuple]:
    """The (portfolio_id, date) pairs a per-portfolio result table has rows for."""
    day = model.snapshot_date if model is PortfolioSnapshot else model.as_of_date
    with Session(engine) as s:
        return set(s.execute(select(model.portfolio_id, day).distinct()).all())


def _is_sqlite(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "sqlite"


# --- 1. crash safety -----------------------------------------------------------------------------


def test_sigkill_leaves_whole_units_and_a_rerun_completes_like_an_uninterrupted_run(
        database_url, engine, seeded, tmp_path, request, monkeypatch):
    sessions = calendar.trading_days(KILL_START, KILL_END)
    assert len(sessions) == 5
    span = ("--start", KILL_START.isoformat(), "--end", KILL_END.isoformat())
    proc = _start(database_url, tmp_path, *span)
    _kill_after(proc, units=3)

    with Session(engine) as s:
        run = s.scalars(select(BatchRun)).one()
        jobs = s.scalars(select(BatchJobResult).where(BatchJobResult.run_id == run.id,
                                                      BatchJobResult.portfolio_id.is_not(None))).all()
    # the killed run's record: still `running`, naming the dead process
    assert (run.status, run.pid, run.hostname) == ("running", proc.pid, socket.gethostname())
    assert run.finished_at is None and run.exit_code is None
    assert run.total_units == 4 * len(sessions)

    snapshots = _units(engine, PortfolioSnapshot)
    assert 3 <= len(snapshots) < 4 * len(sessions)
    # a unit with a snapshot is complete: every job of the killed run recorded, snapshot success ...
    by_unit: dict[tuple, dict[str, str]] = {}
    for j in jobs:
        by_unit.setdefault((j.portfolio_id, j.as_of_date), {})[j.job] = j.status
    assert set(by_unit) == snapshots  # ... and no unit without a snapshot has any job record
    for unit in snapshots:
        assert set(by_unit[unit]) == PORTFOLIO_JOBS, unit
        assert by_unit[unit]["snapshot"] == "success", unit
    # ... the public books have rows in every analytic table for it
    for model in REQUIRED_TABLES:
        have = _units(engine, model)
        want = {u for u in snapshots if u[0] in PUBLIC_BOOKS}
        assert want <= have, (model.__tablename__, want - have)
    # ... and no (portfolio, date) without a snapshot has a row anywhere
    for model in PORTFOLIO_TABLES:
        assert _units(engine, model) <= snapshots, model.__tablename__
    # its progress counter commits with each chunk: it counts exactly the units committed
    assert run.completed_units == len(snapshots)

    # the OS released the lock: the next run is not blocked and completes the range
    with db.run_lock(engine):
        pass
    rerun = _batch(database_url, tmp_path, *span, "--json")
    assert rerun.returncode == 0, rerun.stderr
    summary = _summary(rerun)
    assert summary["status"] == "success"
    assert summary["portfolios"] == {"succeeded": 4 * len(sessions) - len(snapshots), "failed": 0,
                                     "skipped": len(snapshots)}
    with Session(engine) as s:  # holding the lock, the rerun closed the killed run's record
        closed = s.get(BatchRun, run.id)
    assert (closed.status, closed.summary["reason"], closed.summary["closed_by"]) == \
        ("failed", "abandoned", summary["run_id"])
    assert closed.finished_at is not None and closed.exit_code is None
    resumed = dump(engine)
    with Session(engine) as s:
        dates = {p: set(s.scalars(select(PortfolioSnapshot.snapshot_date)
                                  .where(PortfolioSnapshot.portfolio_id == p))) for p in ALL_BOOKS}
    assert dates == {p: set(sessions) for p in ALL_BOOKS}

    if _is_sqlite(database_url):  # an uninterrupted run into a second fresh database (in-process)
        reference = tmp_path / "reference.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), reference)
        ref_url = f"sqlite:///{reference}"
        monkeypatch.setenv("DATABASE_URL", ref_url)
        assert seeded("seed-demo").code == 0
        full = seeded(*span, "--json")
        assert full.code == 0, full.err
        assert full.summary["portfolios"]["succeeded"] == 4 * len(sessions)
        ref_engine = db.make_engine(ref_url)
        try:
            expected = dump(ref_engine)
        finally:
            ref_engine.dispose()
    else:  # one fixture database on the server: recompute everything in place instead
        forced = seeded(*span, "--force", "--json")
        assert forced.code == 0, forced.err
        assert forced.summary["portfolios"]["succeeded"] == 4 * len(sessions)
        expected = dump(engine)
    assert resumed.keys() == expected.keys()
    for table in expected:
        assert resumed[table] == expected[table], table


# --- 2. no double runs ---------------------------------------------------------------------------


def test_concurrent_runs_one_computes_the_others_exit_75_and_no_key_is_duplicated(
        database_url, engine, seeded, tmp_path):
    presync = seeded("--date", RACE_END.isoformat(), "--json")  # prices synced: the racers are alike
    assert presync.code == 0, presync.err
    sessions = calendar.trading_days(RACE_START, RACE_END)
    # a 7-session forced backfill holds the lock for seconds, long after every racer has started
    racers = [_start(database_url, tmp_path, "--start", RACE_START.isoformat(),
                     "--end", RACE_END.isoformat(), "--force", "--json") for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in racers]
    codes = [p.returncode for p in racers]
    assert sorted(codes) == [0, EXIT_LOCKED, EXIT_LOCKED, EXIT_LOCKED], \
        [(c, err[-500:]) for c, (_, err) in zip(codes, outputs, strict=True)]
    for code, (out, err) in zip(codes, outputs, strict=True):
        events = [json.loads(line).get("event") for line in out.splitlines() if line.startswith("{\"")]
        if code == 0:
            summary = json.loads(out.strip().splitlines()[-1])
            assert summary["status"] == "success" and summary["exit_code"] == 0
            assert summary["portfolios"] == {"succeeded": 4 * len(sessions), "failed": 0, "skipped": 0}
        else:  # refused before doing anything: no run record, no work, a one-line reason
            assert "run_lock_held" in events and "run_started" not in events, events
            assert "another run holds" in err and len(err.strip().splitlines()) == 1, err

    with Session(engine) as s:
        runs = s.scalars(select(BatchRun).order_by(BatchRun.started_at)).all()
    assert [(r.status, r.exit_code) for r in runs] == [("success", 0), ("success", 0)]  # presync, winner
    with engine.connect() as conn:
        for table, key in NATURAL_KEYS.items():
            cols = ", ".join(key)
            dupes = conn.execute(text(f"SELECT {cols}, COUNT(*) FROM {table} GROUP BY {cols} "
                                      "HAVING COUNT(*) > 1")).all()
            assert dupes == [], (table, dupes[:5])
        snapshots = conn.execute(text("SELECT COUNT(*) FROM portfolio_snapshots")).scalar()
    assert snapshots == 4 * len(sessions)


# --- 3. a killed run in `history` ----------------------------------------------------------------


def test_history_shows_a_live_run_as_running_and_a_killed_one_as_abandoned(database_url, engine, seeded,
                                                                          tmp_path):
    proc = _start(database_url, tmp_path, "--start", KILL_START.isoformat(), "--end", KILL_END.isoformat())
    try:
        for line in proc.stdout:  # the run record is written once the lock is held
            if '"run_started"' in line:
                break
        alive = seeded("history", "--json")
        assert proc.poll() is None, "the run ended before `history` looked at it"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    dead = seeded("history", "--json")
    table = seeded("history")
    with Session(engine) as s:
        run = s.scalars(select(BatchRun)).one()
    assert run.status == "running" and run.finished_at is None  # the record itself is left as it was
    assert alive.code == dead.code == table.code == 0, dead.err
    [before], [after] = alive.summary, dead.summary
    host = f"{socket.gethostname()}:{proc.pid}"
    assert (before["run_id"], before["status"], before["host"]) == (str(run.id), "running", host)
    assert (after["run_id"], after["status"], after["host"]) == (str(run.id), "abandoned", host)
    assert after["finished_at"] is None and after["exit_code"] is None
    assert after["units"] == f"{run.completed_units}/{run.total_units}"
    assert "abandoned" in table.out and str(run.id) in table.out


# --- 4. the database fails mid-run ---------------------------------------------------------------


def _whole_units(engine) -> set[tuple]:
    """Assert that every (portfolio, date) with a snapshot has its successful snapshot job record
    and that no other unit has rows in any per-portfolio table; return the units."""
    snapshots = _units(engine, PortfolioSnapshot)
    with Session(engine) as s:
        recorded = set(s.execute(select(BatchJobResult.portfolio_id, BatchJobResult.as_of_date)
                                 .where(BatchJobResult.job == "snapshot",
                                        BatchJobResult.status == "success")).all())
    assert snapshots == recorded
    for model in PORTFOLIO_TABLES:
        assert _units(engine, model) <= snapshots, model.__tablename__
    return snapshots


def test_the_database_failing_mid_run_exits_1_in_one_line_and_the_record_is_closed(
        database_url, engine, seeded, tmp_path):
    """PostgreSQL: the database refuses connections mid-backfill (every connection of the run
    terminated) and comes back while the run is stopping: the run records its outcome itself.
    SQLite: the disk fills (a file-size limit) and stays full: the record is left `running` and
    the next run closes it. Either way: exit 1, one line on stderr, no traceback, whole units."""
    span = ("--start", "2022-12-01", "--end", "2022-12-28", "--skip-sync")
    units_in_span = 4 * len(calendar.trading_days(date(2022, 12, 1), date(2022, 12, 28)))
    env = _env(database_url)
    sqlite = _is_sqlite(database_url)
    if sqlite:
        with engine.connect() as conn:  # the job writes into an empty WAL
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

        def fill_the_disk_at_400_kb() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

        proc = subprocess.Popen([sys.executable, "-m", "batch", *span], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=fill_the_disk_at_400_kb)
        out, err = proc.communicate(timeout=120)
    else:
        env["BATCH_WATCHDOG_GRACE_SECONDS"] = "30"  # the final record is retried for up to 15 s
        name = make_url(database_url).database
        admin = create_engine(make_url(database_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
        proc = subprocess.Popen([sys.executable, "-m", "batch", *span], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if sum('"portfolio_succeeded"' in x for x in lines) == 3:
                    with admin.connect() as conn:
                        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                          "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
                if '"run_aborted"' in line:
                    break
        finally:
            with admin.connect() as conn:  # the database comes back while the run is stopping
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            admin.dispose()
        rest, err = proc.communicate(timeout=120)
        out = "".join(lines) + rest
    engine.dispose()  # its pooled connections may have been terminated too

    assert proc.returncode == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("sigmasight-batch: error: run "), err
    assert "run_aborted" in out
    units = _whole_units(engine)
    assert 3 <= len(units) < units_in_span
    with Session(engine) as s:
        run = s.scalars(select(BatchRun)).one()
    closed_by_the_next_run = run.status == "running"
    if closed_by_the_next_run:  # the database never answered again while the run was stopping
        assert (run.exit_code, run.finished_at) == (None, None)
        assert "the next run marks it failed" in err, err
    else:  # the run recorded its own end once the database answered again
        assert (run.status, run.exit_code, run.summary["reason"]) == ("failed", 1, "aborted")
        assert run.summary["error"].splitlines()[0] in err
    if not sqlite:  # a database refusing connections until the run had stopped
        assert not closed_by_the_next_run

    rerun = seeded(*span, "--json")  # recovery: the next run completes the range ...
    assert rerun.code == 0, rerun.err
    assert rerun.summary["portfolios"] == {"succeeded": units_in_span - len(units), "failed": 0,
                                             "skipped": len(units)}
    history = seeded("history", "--json")
    with Session(engine) as s:
        first = s.get(BatchRun, run.id)
    if closed_by_the_next_run:  # ... and closes the record the failed run left `running`
        assert (first.status, first.summary["reason"], first.summary["closed_by"]) == \
            ("failed", "abandoned", rerun.summary["run_id"])
        assert first.finished_at is not None and first.exit_code is None
    assert [r["status"] for r in history.summary] == \
        ["success", "abandoned" if closed_by_the_next_run else "failed"]


# --- 5. a lost or tampered run lock --------------------------------------------------------------


def _drain(proc: subprocess.Popen, lines: list[str]) -> threading.Thread:
    """Read the process's stdout into `lines` in the background (a full pipe would stall it)."""
    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _finish(proc: subprocess.Popen, reader: threading.Thread) -> str:
    """Wait for a process started with `_drain`; return its stderr."""
    proc.wait(timeout=120)
    reader.join(timeout=10)
    with proc.stdout, proc.stderr:
        return proc.stderr.read()


def _terminate_lock_session(engine) -> int:
    """pg_terminate_backend the session holding this database's run lock (what a DBA, a failover
    or idle_session_timeout does); returns its backend pid."""
    with engine.connect() as conn:
        pid = conn.execute(text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            " AND classid::bigint = :hi AND objid::bigint = :lo"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"hi": db.ADVISORY_LOCK_KEY >> 32, "lo": db.ADVISORY_LOCK_KEY & 0xFFFF_FFFF}).scalar_one()
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    return pid


def test_a_lost_or_tampered_run_lock_never_lets_two_runs_write(database_url, engine, seeded, tmp_path):
    """Mid-run, PostgreSQL: the lock's session is terminated; SQLite: the `.lock` file is deleted.
    A second run is started at once. PostgreSQL: the first run notices at its next commit, stops,
    records `failed`/`lock_lost` and exits 1 without a traceback, and none of its records was
    written after the second run's first (transaction ids); SQLite: the first run still holds the
    database file, so the second exits 75 having done nothing while the first goes on."""
    assert seeded("--date", RACE_END.isoformat(), "--json").code == 0  # prices synced
    first = _start(database_url, tmp_path, "--start", "2022-11-01", "--end", RACE_END.isoformat(),
                   "--force", "--skip-sync", "--json")
    lines: list[str] = []
    reader = _drain(first, lines)
    try:
        deadline = time.monotonic() + 120
        while sum('"portfolio_succeeded"' in x for x in lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended too early"
        if _is_sqlite(database_url):
            os.remove(make_url(database_url).database + ".lock")
        else:
            _terminate_lock_session(engine)
        second = _batch(database_url, tmp_path, "--date", RACE_END.isoformat(), "--force", "--skip-sync", "--json")
        if _is_sqlite(database_url):
            assert second.returncode == EXIT_LOCKED, second.stderr[-2000:]
            assert "another run holds" in second.stderr
            assert first.poll() is None, "the first run should still be running"
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)
    if _is_sqlite(database_url):
        err = _finish(first, reader)
        assert first.returncode == 143, err[-3000:]
        with Session(engine) as s:
            assert len(s.scalars(select(BatchRun)).all()) == 2  # the presync and the first run only
        return

    err = _finish(first, reader)
    assert second.returncode == 0, second.stderr[-2000:]
    assert first.returncode == 1, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    events = [json.loads(x) for x in lines if x.startswith("{\"")]
    assert [e.get("event") for e in events].count("run_lock_lost") == 1
    summary = json.loads(lines[-1])
    assert (summary["status"], summary["reason"], summary["exit_code"]) == ("failed", "lock_lost", 1)
    with Session(engine) as s:
        run = s.get(BatchRun, uuid.UUID(summary["run_id"]))
        later = s.get(BatchRun, uuid.UUID(_summary(second)["run_id"]))
        first_xids = s.execute(text("SELECT xmin::text::bigint FROM batch_job_results WHERE run_id = :r"),
                               {"r": run.id}).scalars().all()
        second_xids = s.execute(text("SELECT xmin::text::bigint FROM batch_job_results WHERE run_id = :r"),
                                {"r": later.id}).scalars().all()
    assert (run.status, run.exit_code, run.summary["reason"]) == ("failed", 1, "lock_lost")
    assert later.status == "success"
    # every record of the first run was written before the second run wrote anything
    assert max(first_xids) < min(second_xids), (max(first_xids), min(second_xids))
