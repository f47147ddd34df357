"""The job as a real process: cron entry, embedded default, signals, deadline, bad database."""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from batch import cli, db
from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, PRIVATE_ONLY, demo_id
from batch.engines import ENGINES
from models import (
    BatchJobResult,
    BatchRun,
    CorrelationCluster,
    CorrelationRun,
    MarketRiskResult,
    PairwiseCorrelation,
    Portfolio,
    PortfolioFactorExposure,
    PortfolioSnapshot,
    PositionFactorExposure,
    PositionGreeks,
    StressTestResult,
)
from tests.conftest import assert_interrupted_with_whole_units, process_env

ROOT = Path(__file__).resolve().parents[2]
# the per-(portfolio, date) result tables the portfolio engines write
UNIT_TABLES = (PositionFactorExposure, PortfolioFactorExposure, PositionGreeks, MarketRiskResult,
               StressTestResult, CorrelationRun, PairwiseCorrelation, CorrelationCluster, PortfolioSnapshot)


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=process_env(**env), capture_output=True,
                          text=True, timeout=300)


def test_cron_entry_on_a_holiday_records_a_skipped_cron_run(database_url, engine, tmp_path):
    done = _run([str(ROOT / "scripts" / "daily_batch.py"), "--date", "2022-12-26"], tmp_path,
                DATABASE_URL=database_url)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]  # JSON lines only (--json)
    summary = lines[-1]
    assert "run_finished" in [line.get("event") for line in lines[:-1]]
    assert summary["status"] == "skipped" and summary["reason"] == "not_a_trading_day"
    with Session(engine) as s:
        run = s.scalars(select(BatchRun)).one()
    assert run.trigger == "cron" and run.status == "skipped"


def test_railway_start_command_runs_from_a_plain_checkout(sqlite_template, tmp_path):
    """railway.json's startCommand, from the repository root, with the dependencies importable but
    not this package. The venv holds the package as an editable install, i.e. a `.pth` file that
    the `site` module processes: `-S` skips `site` (so no `.pth`, hence no `batch`), and
    PYTHONPATH gives back the venv's site-packages directories, which supply the dependencies
    (PYTHONPATH entries are added as they are; their `.pth` files are not run). The script's own
    directory, `scripts/`, is on the path as for any script; the repository root is not."""
    config = json.loads((ROOT / "railway.json").read_text())
    assert config["build"]["buildCommand"] == "pip install ."
    command = config["deploy"]["startCommand"].split()
    assert command[0] == "python"
    database = tmp_path / "cron.db"
    shutil.copy(sqlite_template, database)
    env = process_env(DATABASE_URL=f"sqlite:///{database}", PYTHONPATH=os.pathsep.join(site.getsitepackages()))
    probe = subprocess.run([sys.executable, "-S", "-c", "import batch"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert "No module named 'batch'" in probe.stderr, \
        "the isolation must hide the package: install it editable (the README's test command)"
    done = subprocess.run([sys.executable, "-S", *command[1:], "--date", "2022-12-26"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "skipped" and summary["reason"] == "not_a_trading_day"


def test_embedded_default_database_is_created_on_first_use(tmp_path):
    seeded = _run(["-m", "batch", "seed-demo"], tmp_path)
    assert seeded.returncode == 0, seeded.stderr
    assert (tmp_path / "sigmasight.db").exists()
    assert "database_created" in seeded.stdout
    again = _run(["-m", "batch", "seed-demo"], tmp_path)
    assert again.returncode == 0 and "database_created" not in again.stdout


def test_unreachable_database_exits_2_naming_host_not_password(tmp_path):
    done = _run(["-m", "batch", "--date", "2022-12-28"], tmp_path,
                DATABASE_URL="postgresql://postgres:s3cretpw@127.0.0.1:1/nowhere")
    assert done.returncode == 2
    assert "127.0.0.1:1" in done.stderr
    assert "s3cretpw" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1


def test_sigterm_rolls_back_records_interrupted_and_releases_the_lock(database_url, engine, tmp_path):
    assert _run(["-m", "batch", "seed-demo"], tmp_path, DATABASE_URL=database_url).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "batch", "--start", "2022-01-03", "--end", "2022-12-28"],
                            cwd=tmp_path, env=process_env(DATABASE_URL=database_url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    seen = 0
    for line in proc.stdout:  # wait until a few portfolios have committed
        seen += '"portfolio_succeeded"' in line
        if seen >= 3 or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    # exactly the units recorded successful were committed; the chunk in flight rolled back
    assert_interrupted_with_whole_units(engine, at_least=3)


def test_deadline_stops_starting_portfolios(database_url, engine, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("BATCH_TIMEOUT_SECONDS", "0")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["seed-demo"]) == 0
    code = cli.main(["--date", "2022-12-28", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1
    assert summary["status"] == "failed" and summary["reason"] == "deadline"
    assert summary["portfolios"] == {"succeeded": 0, "failed": 0, "skipped": 4}
    with Session(engine) as s:
        errors = set(s.scalars(select(BatchJobResult.error).where(BatchJobResult.portfolio_id.is_not(None))))
        assert s.scalars(select(PortfolioSnapshot)).first() is None
    assert errors == {"deadline"}


def test_a_broken_stdout_stops_neither_the_run_nor_its_bookkeeping(database_url, engine, seeded, tmp_path):
    """Logs are not the job: stdout on a full disk (/dev/full), then a log collector whose pipe
    closes mid-run. Each run computes every portfolio, records its outcome and exits 0."""
    env = process_env(DATABASE_URL=database_url)
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "batch", "--date", "2022-12-28", "--skip-sync"], cwd=tmp_path,
                              env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    proc = subprocess.Popen([sys.executable, "-m", "batch", "--date", "2022-12-27", "--skip-sync"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "run_started" in proc.stdout.readline()
    proc.stdout.close()  # the collector goes away: every later log write meets a broken pipe
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err
    with Session(engine) as s:
        runs = s.scalars(select(BatchRun).order_by(BatchRun.as_of_start)).all()
        snapshots = s.scalars(select(PortfolioSnapshot.snapshot_date)).all()
    assert [(r.as_of_start.isoformat(), r.status, r.exit_code, r.completed_units, r.total_units)
            for r in runs] == [("2022-12-27", "success", 0, 4, 4), ("2022-12-28", "success", 0, 4, 4)]
    assert sorted(d.isoformat() for d in snapshots) == ["2022-12-27"] * 4 + ["2022-12-28"] * 4


# Delivers TEST_SIGNALS to the job itself: the first while a chunk's rows are being written (as
# PostgreSQL's COPY ends, before SQLite's statements), each further one during the stop's cleanup (a
# rollback, a session closing, a signal disposition changing), as an impatient supervisor would.
SIGNAL_DURING_THE_WRITE = """
import os, signal, sys
import psycopg, psycopg.copy
from sqlalchemy.orm import Session
from batch import cli, db, persist

pending = [getattr(signal, "SIG" + name) for name in os.environ["TEST_SIGNALS"].split(",")]
sent, writing = [], []

def deliver(stage):
    if pending and (stage == "write" and writing or stage == "cleanup" and sent):
        sent.append(pending.pop(0))
        os.kill(os.getpid(), sent[-1])

def bulk_replace(session, replacements):
    writing.append(True)
    try:
        if session.get_bind().dialect.name == "sqlite":
            deliver("write")
        return real_bulk_replace(session, replacements)
    finally:
        writing.pop()

def finish(self, exc=None):  # a COPY ending: every row sent, its end not yet
    deliver("write")
    return real_finish(self, exc)

def cleanup(name):
    real = getattr(Session, name)
    def wrapper(self, *args, **kwargs):
        deliver("cleanup")
        return real(self, *args, **kwargs)
    setattr(Session, name, wrapper)

def set_disposition(signum, handler):
    deliver("cleanup")
    return real_signal(signum, handler)

real_bulk_replace, persist.bulk_replace = persist.bulk_replace, bulk_replace
real_finish, psycopg.copy.LibpqWriter.finish = psycopg.copy.LibpqWriter.finish, finish
real_signal, signal.signal = signal.signal, set_disposition
cleanup("rollback")
cleanup("close")
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("signals", "code"), [("TERM,TERM", 143), ("INT,INT,INT", 130), ("HUP", 143)])
def test_stop_signals_during_a_unit_write_and_its_cleanup_record_interrupted(
        database_url, engine, seeded, tmp_path, signals, code):
    """A stop signal while a chunk's rows are written (PostgreSQL: inside the COPY) rolls the chunk
    back and records `interrupted`; signals repeated during the cleanup change nothing; SIGHUP is
    a SIGTERM. Exit 143 (SIGTERM, SIGHUP) or 130 (SIGINT), no traceback."""
    done = subprocess.run([sys.executable, "-c", SIGNAL_DURING_THE_WRITE, "--date", "2022-12-28", "--skip-sync"],
                          cwd=tmp_path, env=process_env(DATABASE_URL=database_url, TEST_SIGNALS=signals),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    with Session(engine) as s:
        run = s.scalars(select(BatchRun)).one()
        unit_jobs = s.scalars(select(BatchJobResult).where(BatchJobResult.portfolio_id.is_not(None))).all()
        snapshots = s.scalars(select(PortfolioSnapshot)).all()
    assert (run.status, run.exit_code, run.summary["status"]) == ("interrupted", code, "interrupted")
    assert run.finished_at is not None
    assert snapshots == [] and unit_jobs == []  # the first chunk, interrupted in its write, rolled back
    with db.run_lock(engine):  # released
        pass


def test_a_run_past_its_deadline_records_every_skip_and_ends_by_itself(database_url, engine, tmp_path):
    """300 portfolios × 6 sessions, the deadline already past at the first unit, a 3 s watchdog
    grace: recording 1,800 units `skipped (deadline)` is the bookkeeping the deadline asked for,
    so the watchdog must not kill it. The run records every skip and its end, and exits 1."""
    books = [{"id": uuid.uuid4(), "name": f"book {i}", "cash_balance": 0.0, "currency": "USD"} for i in range(300)]
    with Session(engine) as s, s.begin():
        s.execute(insert(Portfolio), books)
    done = _run(["-m", "batch", "--start", "2022-12-20", "--end", "2022-12-28", "--skip-sync", "--json"], tmp_path,
                DATABASE_URL=database_url, BATCH_TIMEOUT_SECONDS="0", BATCH_WATCHDOG_GRACE_SECONDS="3")
    assert done.returncode == 1, done.stderr
    assert "Timeout" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    units = 300 * 6  # sessions 12-20, 21, 22, 23, 27, 28
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["status"], summary["reason"]) == ("failed", "deadline")
    assert summary["portfolios"] == {"succeeded": 0, "failed": 0, "skipped": units}
    with Session(engine) as s:
        run = s.scalars(select(BatchRun)).one()
        skips = s.execute(select(BatchJobResult.error, func.count()).where(BatchJobResult.portfolio_id.is_not(None))
                          .group_by(BatchJobResult.error)).all()
        skipped_units = s.scalar(select(func.count()).select_from(
            select(BatchJobResult.portfolio_id, BatchJobResult.as_of_date).distinct().subquery()))
    assert (run.status, run.exit_code, run.completed_units, run.total_units) == ("failed", 1, units, units)
    assert skips == [("deadline", units * 7)]  # the seven portfolio jobs of every unit
    assert skipped_units == units


# One interpreter imports the job once, then each round forks six processes that wait for a go
# file and run the real entry point: they reach the new database within milliseconds of each other.
_AT_ONCE = """
import json, os, sys, time, traceback
from batch.cli import main
rounds, n, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
codes = []
for r in range(rounds):
    os.mkdir(f"round{r}")
    os.chdir(f"round{r}")
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            out = os.open(f"out{i}", os.O_WRONLY | os.O_CREAT)
            os.dup2(out, 1)
            os.dup2(out, 2)
            while not os.path.exists("go"):
                time.sleep(0.001)
            try:
                code = main(args)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    open("go", "w").close()
    codes.append([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids])
    os.chdir("..")
print(json.dumps(codes))
"""


def test_first_starts_at_once_on_a_new_embedded_database_exit_only_0_or_75(tmp_path):
    """Six runs started together on a directory with no database yet (DATABASE_URL unset): the
    schema is created once and every run exits 0 (it ran) or 75 (another held the lock) — never
    1 from two processes creating the schema at the same time. Three rounds."""
    done = _run(["-c", _AT_ONCE, "3", "6", "--date", "2022-12-28", "--skip-sync"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for round_, codes in enumerate(json.loads(done.stdout)):
        outputs = [(tmp_path / f"round{round_}" / f"out{i}").read_text() for i in range(6)]
        assert set(codes) <= {0, 75} and 0 in codes, \
            (round_, [(c, out[-800:]) for c, out in zip(codes, outputs, strict=True) if c not in (0, 75)])
        assert sum("database_created" in out for out in outputs) == 1, round_


# Sends TEST_SIGNAL to the job itself in the middle of the third chunk's write (--chunk-size 3
# over the demo's 4 books: chunks of 3 and 1 per date, so the first date's two chunks have
# committed): after the COPY/insert of that chunk's third result table, before its commit.
SIGNAL_DURING_A_CHUNK_WRITE = """
import os, signal, sys
from batch import cli, db, persist

chunks, inserts = [], []

def persist_chunk(session, run_id, chunk):
    chunks.append(chunk)
    return real_persist(session, run_id, chunk)

def bulk_insert_groups(session, table, groups):
    count = real_insert(session, table, groups)
    if len(chunks) == 3:
        inserts.append(table)
        if len(inserts) == 3:
            os.kill(os.getpid(), getattr(signal, "SIG" + os.environ["TEST_SIGNAL"]))
    return count

real_persist, persist.persist_chunk = persist.persist_chunk, persist_chunk
real_insert, db.bulk_insert_groups = db.bulk_insert_groups, bulk_insert_groups
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("name", "code"), [("TERM", 143), ("KILL", -signal.SIGKILL)])
def test_a_signal_or_kill_9_mid_chunk_write_leaves_whole_committed_chunks_and_nothing_of_the_chunk_in_flight(
        database_url, engine, seeded, tmp_path, name, code):
    """A 4-session backfill with --chunk-size 3, stopped (SIGTERM) or killed (SIGKILL) inside the
    third chunk's transaction, after three of its tables' rows were sent: the first date's four
    units (two committed chunks) are whole — a row in every analytic table for each public book,
    a snapshot, the seven job records — and nothing of the second date exists: no result row, no
    job record, no progress."""
    first, second = "2022-12-22", "2022-12-23"
    done = subprocess.run([sys.executable, "-c", SIGNAL_DURING_A_CHUNK_WRITE, "--start", first,
                           "--end", "2022-12-28", "--chunk-size", "3"], cwd=tmp_path,
                          env=process_env(DATABASE_URL=database_url, TEST_SIGNAL=name),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr
    books = [demo_id("portfolio", k) for k in (INDIVIDUAL, HNW, HEDGE_FUND, PRIVATE_ONLY)]
    day = date.fromisoformat(first)
    with Session(engine) as s:
        run = s.scalars(select(BatchRun)).one()
        jobs = s.execute(select(BatchJobResult.portfolio_id, BatchJobResult.as_of_date, BatchJobResult.job)
                         .where(BatchJobResult.portfolio_id.is_not(None))).all()
        rows = {model.__tablename__: set(s.execute(select(
            model.portfolio_id, model.snapshot_date if model is PortfolioSnapshot else model.as_of_date)
            .distinct()).all()) for model in UNIT_TABLES}
    assert sorted(jobs) == sorted((b, day, e.name) for b in books for e in ENGINES)
    assert rows["portfolio_snapshots"] == {(b, day) for b in books}
    for table, units in rows.items():  # nothing of the chunk in flight, nor of any later unit
        assert {d for _, d in units} <= {day}, table
    for model in (PositionFactorExposure, MarketRiskResult, StressTestResult, CorrelationRun):
        assert rows[model.__tablename__] == {(b, day) for b in books[:3]}, model.__tablename__
    assert run.completed_units == 4 and run.current_unit.endswith(f"@{first}")
    if name == "TERM":
        assert (run.status, run.exit_code) == ("interrupted", 143)
    else:  # the process died with the transaction open: the lock is free, the record `running`
        assert run.status == "running" and run.finished_at is None
    assert second not in {d.isoformat() for _, d, _ in jobs}
    with db.run_lock(engine):  # released
        pass
