"""scripts/compare_results.py (issue #11): two databases holding hand-inserted rows that differ in
known ways — one key missing, one value off by a known relative amount, a NULL against a number,
a JSON difference, a JSON float within the tolerance — and the report says exactly that; identical
databases (also PostgreSQL against SQLite) exit 0; bad URLs are one line and exit 2."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from batch import db
from models import MarketRiskResult, Portfolio, PortfolioSnapshot, StressScenario, StressTestResult
from tests.conftest import load_script

DAY = date(2022, 12, 28)
PID = uuid.UUID("00000000-0000-4000-8000-0000000000aa")


@pytest.fixture
def second_url(database_url: str, tmp_path: Path) -> str:
    """An empty, migrated database of the same kind as `database_url` (B)."""
    if database_url.startswith("sqlite"):
        path = tmp_path / "b.db"
        shutil.copy(make_url(database_url).database, path)  # database_url's file is empty and migrated
        return f"sqlite:///{path}"
    url = make_url(database_url)
    other = url.set(database=f"{url.database}_cmp")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{other.database}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{other.database}"'))
    finally:
        admin.dispose()
    rendered = other.render_as_string(hide_password=False)
    engine = db.make_engine(rendered)
    db.migrate(engine)
    engine.dispose()
    return rendered


def snapshot(**changes) -> dict:
    row = {"portfolio_id": PID, "snapshot_date": DAY, "total_value": 110_000.0, "cash_value": 10_000.0,
           "long_value": 120_000.0, "short_value": -20_000.0, "gross_exposure": 140_000.0,
           "net_exposure": 100_000.0, "private_value": 0.0, "daily_pnl": 500.0, "daily_return": 0.0045,
           "cumulative_pnl": 500.0, "num_positions": 3, "num_long": 2, "num_short": 1, "num_private": 0,
           "portfolio_delta": None, "portfolio_gamma": None, "portfolio_theta": None, "portfolio_vega": None,
           "market_beta": 1.1, "data_quality": {"flag": "full_history", "positions_analyzed": 3}}
    return {**row, **changes}


def stress(pnl_in_json: float) -> dict:
    return {"portfolio_id": PID, "scenario_id": "bench_crash", "as_of_date": DAY, "direct_pnl": -100.0,
            "correlated_pnl": -120.0, "correlation_effect": -20.0, "pnl_pct": -0.001, "exceeds_equity": False,
            "factor_impacts": {"Market": {"shock": -0.1, "pnl": pnl_in_json, "source": "shock"}}}


def market_risk(scenario: str, pnl: float) -> dict:
    return {"portfolio_id": PID, "scenario": scenario, "as_of_date": DAY, "shock": 0.1, "pnl": pnl,
            "pnl_pct": pnl / 110_000.0}


def fill(url: str, *, snapshot_row: dict, stress_row: dict, risk_rows: list[dict]) -> None:
    engine = db.make_engine(url)
    try:
        with Session(engine) as s, s.begin():
            s.execute(Portfolio.__table__.insert(), [{"id": PID, "name": "P", "cash_balance": 10_000.0,
                                                     "currency": "USD"}])
            s.merge(StressScenario(scenario_id="bench_crash", name="crash", category="market_risk",
                                   severity="severe", shocks={"Market": -0.1}, is_active=True))
            s.execute(PortfolioSnapshot.__table__.insert(), [snapshot_row])
            s.execute(StressTestResult.__table__.insert(), [stress_row])
            s.execute(MarketRiskResult.__table__.insert(), risk_rows)
    finally:
        engine.dispose()


def fill_same(url: str) -> None:
    fill(url, snapshot_row=snapshot(), stress_row=stress(-100.0),
         risk_rows=[market_risk("market_up_10", 11_000.0), market_risk("market_down_10", -11_000.0)])


def run(capsys, *args: str) -> tuple[int, dict, str]:
    code = load_script("compare_results").main([*args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]) if code in (0, 1) else {}, out + err


def test_known_differences_are_reported_exactly(database_url, second_url, capsys):
    fill_same(database_url)
    fill(second_url,
         snapshot_row=snapshot(daily_return=None,  # a NULL against a number
                               data_quality={"flag": "limited_history", "positions_analyzed": 3}),
         stress_row=stress(-100.0 * (1 + 2e-12)),  # a float inside JSON, within rtol
         risk_rows=[market_risk("market_up_10", 11_000.0 * (1 + 1e-6))])  # market_down_10 missing in B
    code, report, out = run(capsys, database_url, second_url)
    assert code == 1
    tables = report["tables"]
    risk = tables["market_risk_results"]
    assert (risk["rows_a"], risk["rows_b"], risk["only_in_a"], risk["only_in_b"]) == (2, 1, 1, 0)
    # pnl and pnl_pct both off by 1e-6 relative: |a−b|/max(|a|,|b|) = 1e-6 / (1 + 1e-6)
    assert risk["max_rel_diff"] == pytest.approx(1e-6 / (1 + 1e-6), rel=1e-6)
    assert risk["over_rtol"] == 2 and risk["null_mismatches"] == 0 and risk["value_mismatches"] == 0
    # the key in primary-key order (migration 0006: portfolio, date, then scenario)
    assert "only in A: (portfolio_id=00000000-0000-4000-8000-0000000000aa, as_of_date=2022-12-28, " \
           "scenario=market_down_10)" in risk["examples"]
    snap = tables["portfolio_snapshots"]
    assert (snap["rows_a"], snap["rows_b"], snap["only_in_a"], snap["only_in_b"]) == (1, 1, 0, 0)
    assert snap["null_mismatches"] == 1 and snap["value_mismatches"] == 1 and snap["over_rtol"] == 0
    assert snap["max_rel_diff"] == 0.0
    assert any("daily_return: 0.0045 vs None" in e for e in snap["examples"])
    assert any("data_quality: JSON differs" in e and "limited_history" in e for e in snap["examples"])
    st = tables["stress_test_results"]
    assert st["max_rel_diff"] == pytest.approx(2e-12 / (1 + 2e-12), rel=1e-3)
    assert st["over_rtol"] == 0 and st["value_mismatches"] == 0 and st["only_in_a"] == 0
    differing = {t for t, r in tables.items() if r["only_in_a"] or r["only_in_b"] or r["over_rtol"]
                 or r["null_mismatches"] or r["value_mismatches"] or r["notes"]}
    assert differing == {"market_risk_results", "portfolio_snapshots"}
    assert report["match"] is False and report["max_rel_diff"] == risk["max_rel_diff"]
    # the JSON float's 2e-12 fails a tighter tolerance
    code, report, _ = run(capsys, database_url, second_url, "--rtol", "1e-13", "--portfolio", str(PID))
    assert code == 1 and report["tables"]["stress_test_results"]["over_rtol"] == 1


def test_identical_databases_exit_0_and_filters_apply(database_url, second_url, capsys):
    fill_same(database_url)
    fill_same(second_url)
    code, report, out = run(capsys, database_url, second_url)
    assert code == 0, out
    assert report["match"] is True and report["max_rel_diff"] == 0.0
    assert report["tables"]["market_risk_results"]["rows_a"] == 2
    assert report["tables"]["pairwise_correlations"]["rows_a"] == 0
    code, report, _ = run(capsys, database_url, second_url, "--as-of", "2022-12-27")
    assert code == 0 and report["tables"]["market_risk_results"]["rows_a"] == 0
    code, report, _ = run(capsys, database_url, second_url, "--portfolio", str(uuid.uuid4()))
    assert code == 0 and report["tables"]["portfolio_snapshots"]["rows_b"] == 0


@pytest.mark.postgresql
def test_postgresql_against_sqlite_compares_the_same_values(postgres_ready, sqlite_template, tmp_path, capsys):
    """UUIDs, dates, booleans and JSON read differently from the two databases compare equal."""
    from tests.conftest import _truncate_all

    _truncate_all(postgres_ready)
    path = tmp_path / "b.db"
    shutil.copy(sqlite_template, path)
    fill_same(postgres_ready)
    fill_same(f"sqlite:///{path}")
    code, report, out = run(capsys, postgres_ready, f"sqlite:///{path}")
    assert code == 0, out
    assert report["tables"]["stress_test_results"]["rows_a"] == report["tables"]["stress_test_results"]["rows_b"] == 1


@pytest.mark.parametrize("args, expected", [
    (["sqlite:////nonexistent/dir/a.db", "sqlite:////nonexistent/dir/b.db"], "database A: sqlite file"),
    (["postgresql://u:pw-SECRET@127.0.0.1:1/x", "sqlite:///x.db"], "database A: cannot connect to postgresql"),
    (["mysql://u:pw-SECRET@h/x", "sqlite:///x.db"], "scheme 'mysql://' is not supported"),
])
def test_bad_urls_are_one_line_and_exit_2(capsys, args, expected):
    assert load_script("compare_results").main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert expected in err and "SECRET" not in err
