"""Reliability promises proven by breaking things on purpose (SPEC §7): the watchdog ends a hung
engine, a failing SQL statement rolls back only its portfolio, secrets never reach any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests.conftest import each_unit
from batch import cli as cli_module
from batch import engines as engines_module
from batch import runner as runner_module
from batch.demo import HEDGE_FUND, demo_id
from batch.engines import Engine, JobOutcome
from models import BatchJobResult, BatchRun, PortfolioSnapshot

AS_OF = "2022-12-28"


def test_watchdog_ends_a_hung_engine(database_url, cli, tmp_path):
    assert cli("seed-demo").code == 0
    script = textwrap.dedent("""
        import sys, time
        from batch import cli, engines
        engines.ENGINES.insert(0, engines.Engine("hang", lambda chunk: time.sleep(3600)))
        sys.exit(cli.main(["--date", "2022-12-28", "--skip-sync"]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "MARKET_DATA_PROVIDER"}
    env.update(DATABASE_URL=database_url, LOG_FORMAT="json", BATCH_TIMEOUT_SECONDS="1",
               BATCH_WATCHDOG_GRACE_SECONDS="2")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert "Timeout" in done.stderr and "time.sleep" not in done.stdout  # faulthandler's dump
    assert "<lambda>" in done.stderr  # the hung engine's frame is in the dump
    assert elapsed < 60  # a guard against the test itself hanging, not a performance claim


def test_failing_statement_rolls_back_only_its_portfolio(seeded, engine, monkeypatch):
    """A real constraint violation (a duplicate natural key) in one portfolio's staged rows: the
    chunk's write fails and rolls back, then each unit is written alone — that unit fails whole
    (job `write`), the others commit."""
    victim = demo_id("portfolio", HEDGE_FUND)

    def duplicate_snapshot(unit):
        if unit.portfolio_id == victim:  # the snapshot engine's row, staged twice
            _, [row] = unit.writes[PortfolioSnapshot]
            unit.replace(PortfolioSnapshot, [row, dict(row)], date_column="snapshot_date")
        return JobOutcome("success", {})

    monkeypatch.setattr(runner_module, "ENGINES",
                        list(engines_module.ENGINES) + [Engine("duplicate", each_unit(duplicate_snapshot), ("snapshot",))])
    result = seeded("--date", AS_OF, "--json")
    assert result.code == 1
    assert result.summary["portfolios"] == {"succeeded": 3, "failed": 1, "skipped": 0}
    [failure] = result.summary["failed_portfolios"]
    assert failure["portfolio_id"] == str(victim) and failure["job"] == "write"
    assert "IntegrityError" in failure["error"] or "UniqueViolation" in failure["error"]
    with Session(engine) as s:
        owners = set(s.scalars(select(PortfolioSnapshot.portfolio_id)))
        victim_jobs = {j.job: j.status for j in s.scalars(
            select(BatchJobResult).where(BatchJobResult.portfolio_id == victim))}
    assert victim not in owners and len(owners) == 3
    assert victim_jobs["write"] == "failed" and victim_jobs["snapshot"] == "skipped"


@pytest.mark.postgresql
def test_secrets_never_reach_logs_summary_history_or_check(postgres_ready, monkeypatch, tmp_path, capsys):
    """PostgreSQL accepts any password here (trust auth), so the run really uses the URL."""
    password, api_key = "pw-NEVER-PRINT-9f3a", "key-NEVER-PRINT-77c1"
    url = make_url(postgres_ready).set(password=password).render_as_string(hide_password=False)
    from tests.conftest import _truncate_all  # noqa: PLC0415 - shared helper of the fixtures

    _truncate_all(postgres_ready)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("FMP_API_KEY", api_key)
    monkeypatch.setenv("POLYGON_API_KEY", api_key)
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    outputs = []
    for args in (["seed-demo"], ["--date", AS_OF, "--json"], ["history", "--json"], ["history"],
                 ["check", "--json"], ["check"], ["--date", "not-a-date"]):
        capsys.readouterr()
        cli_module.main(args)
        outputs.append("".join(capsys.readouterr()))
    monkeypatch.setenv("MARKET_DATA_PROVIDER", "fmp")  # a keyed provider: check mentions the key
    capsys.readouterr()
    cli_module.main(["check", "--json"])
    outputs.append("".join(capsys.readouterr()))
    everything = "\n".join(outputs)
    assert "run_finished" in everything and "FMP_API_KEY is set" in everything  # the outputs are real
    assert password not in everything and api_key not in everything
    engine = __import__("batch.db", fromlist=["make_engine"]).make_engine(postgres_ready)
    try:
        with Session(engine) as s:
            stored = json.dumps([r.summary for r in s.scalars(select(BatchRun))]) + json.dumps(
                [r.result for r in s.scalars(select(BatchJobResult))], default=str)
    finally:
        engine.dispose()
    assert password not in stored and api_key not in stored
    assert uuid.UUID(json.loads(outputs[1].strip().splitlines()[-1])["run_id"])
