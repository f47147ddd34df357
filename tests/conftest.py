"""Shared fixtures. Every database test runs on SQLite and on PostgreSQL from the same code.

PostgreSQL: TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/sigmasight_test);
the database is created if missing; under pytest-xdist each worker uses `<database>_<worker id>`. When the server cannot be reached the PostgreSQL tests are
skipped with a visible reason — except under CI=true, where that is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterator
from types import ModuleType
from pathlib import Path
from typing import NamedTuple

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from batch import db
from batch.cli import main as cli_main
from models import (
    Base,
    BatchJobResult,
    BatchRun,
    CorrelationCluster,
    CorrelationMatrix,
    CorrelationRun,
    FactorCorrelation,
    MarketRiskResult,
    PortfolioFactorExposure,
    PortfolioSnapshot,
    PositionFactorExposure,
    PositionGreeks,
    PositionValuation,
    StressTestResult,
    SymbolFactorBeta,
)

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/sigmasight_test")
if os.environ.get("PYTEST_XDIST_WORKER"):  # each pytest-xdist worker (gw0, gw1...) has its own database
    _url = make_url(POSTGRES_URL)
    POSTGRES_URL = _url.set(database=f"{_url.database}_{os.environ['PYTEST_XDIST_WORKER']}").render_as_string(
        hide_password=False)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.migrate(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_ready() -> str:
    """Create (if needed) and migrate the PostgreSQL test database; return its URL."""
    url = make_url(POSTGRES_URL)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT",
                          connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                  {"n": url.database}).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    except OperationalError as exc:
        message = f"PostgreSQL not reachable at {url.host}:{url.port}: {str(exc.orig).splitlines()[0]}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)
    finally:
        admin.dispose()
    engine = db.make_engine(POSTGRES_URL)
    with engine.begin() as conn:  # start from a clean schema every session
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    db.migrate(engine)
    engine.dispose()
    return POSTGRES_URL


def _truncate_all(url: str) -> None:
    engine = db.make_engine(url)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty, migrated database of each dialect."""
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_ready")
        _truncate_all(url)
        yield url


# Every result table (batch_runs / batch_job_results are run records, not results).
RESULT_TABLES = (PositionValuation, PositionFactorExposure, PortfolioFactorExposure, PositionGreeks, MarketRiskResult,
                 StressTestResult, CorrelationRun, CorrelationMatrix, CorrelationCluster,
                 PortfolioSnapshot, SymbolFactorBeta, FactorCorrelation)


def dump_results(engine, tables=RESULT_TABLES) -> dict[str, list[tuple]]:
    """Every row of `tables` (without a surrogate id, should one have it), JSON-encoded, in a stable order: two dumps
    are equal exactly when the tables hold the same rows with the same values."""
    out = {}
    with Session(engine) as s:
        for model in tables:
            cols = [c for c in model.__table__.columns if c.name != "id"]
            rows = s.execute(select(*cols)).all()
            out[model.__tablename__] = sorted(tuple(json.dumps(v, sort_keys=True, default=str) for v in r)
                                              for r in rows)
    return out


class CliRun(NamedTuple):
    code: int
    summary: dict | None  # the JSON summary line when --json was given
    out: str
    err: str


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys):
    """Call the real entry point in-process against `database_url` (JSON logs, the sample
    provider, a scratch working directory). `cli(*args)` returns a CliRun."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.delenv("MARKET_DATA_PROVIDER", raising=False)
    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> CliRun:
        capsys.readouterr()
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        lines = out.strip().splitlines()
        summary = None
        if "--json" in args and lines:
            try:
                summary = json.loads(lines[-1])
            except json.JSONDecodeError:
                summary = None
        return CliRun(code, summary, out, err)

    return call


@pytest.fixture
def seeded(cli):
    """`cli` on a database holding the four demo portfolios."""
    result = cli("seed-demo")
    assert result.code == 0, result.err
    return cli


@pytest.fixture
def engine(database_url: str):
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py (not a package) as module `name`, afresh on each call."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def process_env(**extra: str) -> dict[str, str]:
    """The environment for running the job as a subprocess: this one without DATABASE_URL and
    MARKET_DATA_PROVIDER, JSON logs, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MARKET_DATA_PROVIDER")}
    env.update(LOG_FORMAT="json", **extra)
    return env


def assert_interrupted_with_whole_units(engine, at_least: int) -> None:
    """After a SIGTERM: the run is recorded `interrupted` (exit 143, finished), exactly the units
    recorded successful were committed (none half-written, none lost), at least `at_least` of
    them, and the run lock is free."""
    with Session(engine) as s:
        run = s.scalars(select(BatchRun)).one()
        snapshots = s.scalars(select(PortfolioSnapshot)).all()
        succeeded = s.scalars(select(BatchJobResult).where(BatchJobResult.job == "snapshot",
                                                           BatchJobResult.status == "success")).all()
    assert run.status == "interrupted" and run.exit_code == 143 and run.finished_at is not None
    assert {(x.portfolio_id, x.snapshot_date) for x in snapshots} == \
        {(j.portfolio_id, j.as_of_date) for j in succeeded}
    assert at_least <= len(snapshots) < 4 * 250
    with db.run_lock(engine):  # released
        pass


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print how many tests ran against each database, so a skipped PostgreSQL is visible."""
    counts: dict[str, dict[str, int]] = {"postgresql": {}, "sqlite": {}}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") not in ("call", "setup"):
                continue
            if report.when == "setup" and outcome == "passed":
                continue
            for dialect in counts:
                if f"[{dialect}" in report.nodeid or f"-{dialect}]" in report.nodeid \
                        or f"-{dialect}-" in report.nodeid:
                    counts[dialect][outcome] = counts[dialect].get(outcome, 0) + 1
    terminalreporter.section("database coverage")
    for dialect, c in counts.items():
        terminalreporter.write_line(
            f"{dialect} tests: {c.get('passed', 0)} passed, {c.get('failed', 0) + c.get('error', 0)} failed, "
            f"{c.get('skipped', 0)} skipped")


def each_unit(compute):
    """A portfolio engine's `run` (over a chunk) from `compute(unit) -> JobOutcome`, for test
    engines written per unit: one that raises for one unit makes the chunk call raise, and the
    runner then runs it for each unit alone."""
    return lambda chunk: [compute(unit) for unit in chunk.units]
