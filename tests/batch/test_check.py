"""`sigmasight-batch check`: the preflight (SPEC §2)."""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

from batch import cli, db
from batch.check import REQUIRED_PACKAGES


@pytest.fixture
def check(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "MARKET_DATA_PROVIDER", "FMP_API_KEY", "POLYGON_API_KEY"):
        monkeypatch.delenv(name, raising=False)

    def call(*args: str, **env: str) -> tuple[int, str, str]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = cli.main(["check", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_on_the_embedded_default_only_the_cron_date_fails(check):
    """The bundled sample data ends in 2022: the cron, which runs as of today, would exit 2 every
    day — `check` says so as a failure; everything else passes, and with a live provider the
    preflight passes."""
    code, out, _ = check("--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and report["ok"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert {name for name, c in checks.items() if c["status"] != "ok"} == {"provider"}
    assert checks["provider"]["status"] == "failed"
    assert "the cron would refuse today" in checks["provider"]["detail"]
    assert "2014-01-02..2022-12-28" in checks["provider"]["detail"]
    code, out, _ = check("--json", MARKET_DATA_PROVIDER="yfinance")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["ok"] is True


def test_fmp_without_its_key_fails_naming_the_variable(check):
    code, out, _ = check(MARKET_DATA_PROVIDER="fmp")
    assert code != 0
    assert "FMP_API_KEY" in out and "preflight FAILED" in out


def test_keys_and_passwords_never_printed(check):
    secret_key, password = "fmpkey-SHOULD-NOT-LEAK-123", "pw-SHOULD-NOT-LEAK"
    code, out, err = check("--json", MARKET_DATA_PROVIDER="fmp", FMP_API_KEY=secret_key,
                           DATABASE_URL=f"postgresql://postgres:{password}@127.0.0.1:1/nowhere")
    assert code != 0  # the database is unreachable
    report = json.loads(out.strip().splitlines()[-1])
    assert {c["name"]: c["status"] for c in report["checks"]}["database"] == "failed"
    assert secret_key not in out + err and password not in out + err
    assert "127.0.0.1:1" in out


def test_fails_when_a_run_holds_the_lock_or_the_schema_is_behind(check, database_url, tmp_path):
    engine = db.make_engine(database_url)
    try:
        with db.run_lock(engine):
            code, out, _ = check("--json", DATABASE_URL=database_url)
    finally:
        engine.dispose()
    report = {c["name"]: c for c in json.loads(out.strip().splitlines()[-1])["checks"]}
    assert code == 1 and report["run_lock"]["status"] == "failed"
    blank = f"sqlite:///{tmp_path / 'blank.db'}"
    code, out, _ = check(DATABASE_URL=blank)
    assert code == 1 and "init-db" in out


def test_dask_scheduler_is_checked_when_configured(check):
    """With DASK_SCHEDULER_ADDRESS set, the preflight connects to the scheduler: a live local
    cluster with 2 workers passes, an address nobody listens on fails the preflight."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        code, out, _ = check("--json", DASK_SCHEDULER_ADDRESS=cluster.scheduler_address,
                             MARKET_DATA_PROVIDER="yfinance")  # a provider that can serve today
    report = json.loads(out.strip().splitlines()[-1])
    dask = {c["name"]: c for c in report["checks"]}["dask"]
    assert code == 0 and dask["status"] == "ok" and "2 workers" in dask["detail"]

    code, out, _ = check("--json", DASK_SCHEDULER_ADDRESS="tcp://127.0.0.1:9")
    report = json.loads(out.strip().splitlines()[-1])
    dask = {c["name"]: c for c in report["checks"]}["dask"]
    assert code == 1 and report["ok"] is False
    assert dask["status"] == "failed" and "unreachable" in dask["detail"]


def _imported_top_level_modules(roots: list[Path]) -> set[str]:
    """Top-level names of the absolute imports in every .py file under `roots`."""
    names: set[str] = set()
    for root in roots:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def test_runtime_dependencies_are_what_the_job_imports_and_what_check_verifies():
    """Issue #10 item 12: a package is a runtime dependency (and a `check` item) exactly when the
    job's own code imports it; test-only oracles (statsmodels) belong to the test extra."""
    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\[<>=!~;\s]", req, maxsplit=1)[0].lower().replace("-", "_")
                for req in project["dependencies"]}
    optional = {"yfinance", "distributed", "dask", "sentry_sdk"}  # the extras, imported lazily
    imported = _imported_top_level_modules([root / "batch", root / "calculations", root / "models"])
    third_party = imported - set(sys.stdlib_module_names) - {"batch", "calculations", "models"} - optional
    # psycopg is the PostgreSQL driver: SQLAlchemy imports it for postgresql+psycopg:// URLs
    assert declared == third_party | {"psycopg"}
    assert set(REQUIRED_PACKAGES) == declared
    assert "statsmodels" in " ".join(project["optional-dependencies"]["test"])


def test_freshness_reports_each_portfolio_and_those_behind(seeded, database_url, monkeypatch, capsys):
    """The demo ran for 2022-12-27, then three of its four books for 2022-12-28. As of 2022-12-29
    each book's last complete session is reported; the fourth book (12-27: two sessions behind
    12-29) is the one more than one session behind — a warning, not a failure."""
    from datetime import date

    from batch import calendar
    from batch.demo import PRIVATE_ONLY, demo_id

    assert seeded("--date", "2022-12-27", "--json").code == 0
    private_only = demo_id("portfolio", PRIVATE_ONLY)
    books = [str(demo_id("portfolio", name)) for name in ("individual", "high-net-worth", "hedge-fund")]
    args = ["--date", "2022-12-28", "--skip-sync", "--json"]
    for book in books:
        args += ["--portfolio", book]
    assert seeded(*args).code == 0
    monkeypatch.setattr(calendar, "new_york_today", lambda now: date(2022, 12, 29))
    capsys.readouterr()
    code = cli.main(["check", "--json"])
    report = {c["name"]: c for c in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checks"]}
    fresh = report["freshness"]
    assert fresh["status"] == "warning"
    assert fresh["data"]["latest_session"] == "2022-12-29"
    assert fresh["data"]["last_complete"] == {**{b: "2022-12-28" for b in books}, str(private_only): "2022-12-27"}
    assert (fresh["data"]["portfolios"], fresh["data"]["behind"]) == (4, 1)
    assert "1 more than one session behind 2022-12-29" in fresh["detail"]
    assert code == 1  # the sample provider cannot serve 12-29: the cron would refuse it
