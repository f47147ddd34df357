"""The job as a real process: cron entry, embedded default, signals, deadline, bad database."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from batch import cli
from models import BatchJobResult, BatchRun, PortfolioSnapshot
from tests.conftest import assert_interrupted_with_whole_units, process_env

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=process_env(**env), capture_output=True,
                          text=True, timeout=300)


def test_cron_entry_on_a_holiday_records_a_skipped_cron_run(database_url, engine, tmp_path):
    done = _run([str(ROOT / "scripts" / "daily_batch.py"), "--date", "2022-12-26", "--json"], tmp_path,
                DATABASE_URL=database_url)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "skipped" and summary["reason"] == "not_a_trading_day"
    with Session(engine) as s:
        run = s.scalars(select(BatchRun)).one()
    assert run.trigger == "cron" and run.status == "skipped"


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
    # exactly the units recorded successful were committed; the one in progress rolled back
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
