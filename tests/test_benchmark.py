"""scripts/benchmark.py runs end to end on a tiny universe and its JSON line carries the contract
keys (issues #6, #11), including the floor's parts and a --dates backfill; the floor's number
counts are checked against the rows the job stored. Figures are never asserted: performance
claims come from the script itself."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import load_script


def count_rows(url: str, sql: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.parametrize("workers, dates", [("1", 1), ("2", 1), ("1", 2)])
def test_benchmark_json_line_parses_with_the_contract_keys(database_url, capsys, workers, dates):
    benchmark = load_script("benchmark")
    assert benchmark.main(["--portfolios", "3", "--positions", "8", "--symbols", "30", "--dates", str(dates),
                           "--database-url", database_url, "--workers", workers, "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"portfolios", "positions", "symbols", "database", "wall_seconds", "stage_seconds", "floor_seconds",
            "floor_parts", "legacy_floor_seconds", "ratio_to_floor", "positions_per_second", "peak_rss_mb",
            "dates", "seconds_per_date"} <= set(report)
    assert report["portfolios"] == 3 and report["positions"] == 24 and report["symbols"] == 30
    assert report["dates"] == dates and report["units"] == 3 * dates
    assert report["as_of_end"] == "2022-12-28" and report["as_of_start"] == ("2022-12-27" if dates == 2 else
                                                                             "2022-12-28")
    assert report["database"] == database_url.split(":")[0].split("+")[0]
    parts = report["floor_parts"]
    assert set(parts) == {"read", "regression", "write"} and all(v > 0 for v in parts.values())
    assert sum(parts.values()) == pytest.approx(report["floor_seconds"], abs=1e-5)
    assert report["legacy_floor_seconds"] > 0
    # the ratio is printed rounded to 2 decimals (and wall_seconds rounded too)
    assert report["ratio_to_floor"] == pytest.approx(report["wall_seconds"] / report["floor_seconds"], rel=0.01, abs=0.006)
    assert report["seconds_per_date"] == pytest.approx(report["wall_seconds"] / dates, rel=0.01)
    assert report["result_rows"] > 0 and report["stage_seconds"]["jobs"]["snapshot"] >= 0
    assert report["workers"] == int(workers) and report["executor"] == ("serial" if workers == "1" else "processes")
    # The floor counts the SPEC's numbers from the universe's shape; where the job stores one row
    # per number (exposures, pairs, Greeks, snapshots) the two counts agree, per date.
    numbers = report["floor_numbers_by_group"]
    assert numbers["position_factor_exposures"] == count_rows(database_url,
                                                              "SELECT COUNT(*) FROM position_factor_exposures")
    assert numbers["greeks"] == 5 * count_rows(database_url, "SELECT COUNT(*) FROM position_greeks")
    assert numbers["snapshot"] == 19 * 3 * dates
    runs = count_rows(database_url, "SELECT COUNT(*) FROM correlation_runs")
    assert numbers["correlations"] == count_rows(database_url, "SELECT COUNT(*) FROM pairwise_correlations") \
        + 3 * runs
    assert numbers["market_risk"] == 10 * 3 * dates and numbers["job_records"] == 7 * 3 * dates
    assert report["floor_numbers"] == sum(numbers.values())


@pytest.mark.postgresql
def test_a_missing_postgresql_scratch_database_is_created(postgres_ready, capsys):
    """Issue #10 item 4: the README's Scale command on a fresh server (no such database yet)."""
    url = make_url(postgres_ready)
    scratch = url.set(database=f"{url.database}_bench_scratch")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def exists() -> bool:
        with admin.connect() as conn:
            return conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                {"n": scratch.database}).first() is not None

    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)'))
        assert not exists()
        code = load_script("benchmark").main(["--portfolios", "1", "--positions", "3", "--symbols", "10", "--json",
                                      "--database-url", scratch.render_as_string(hide_password=False)])
        assert code == 0, capsys.readouterr().err
        assert exists()
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["positions"] == 3
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize("url, expected", [
    ("postgresql://postgres:pw-SECRET@127.0.0.1:1/bench", "cannot connect to postgresql at 127.0.0.1:1/bench"),
    ("mysql://u:pw-SECRET@h/bench", "--database-url scheme 'mysql://' is not supported"),
    ("postgresql://u:pw-SECRET@no-such-host.invalid/bench", "cannot connect to postgresql at no-such-host.invalid"),
])
def test_a_bad_or_unreachable_database_url_is_one_line_and_exit_2(capsys, url, expected):
    assert load_script("benchmark").main(["--database-url", url]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert expected in err and "SECRET" not in err


@pytest.mark.postgresql
def test_a_scratch_database_the_role_may_not_create_is_one_line_and_exit_2(postgres_ready, capsys):
    """CREATE DATABASE refused (a role without CREATEDB): one line naming the database, exit 2."""
    url = make_url(postgres_ready)
    role = f"{url.database}_nocreate"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
            conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOCREATEDB PASSWORD \'pw-SECRET\''))
        target = url.set(username=role, password="pw-SECRET", database=f"{url.database}_never_created")
        assert load_script("benchmark").main(["--database-url", target.render_as_string(hide_password=False)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1
        assert f"cannot create postgresql at {url.host}:{url.port}/{url.database}_never_created" in err
        assert "permission denied" in err and "SECRET" not in err
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_the_floor_regression_matches_statsmodels():
    """The floor times a real fit: its statistics equal statsmodels' OLS (independent oracle)."""
    import numpy as np
    import statsmodels.api as sm

    from batch import calendar

    benchmark = load_script("benchmark")
    rng = np.random.default_rng(3)
    as_of = benchmark.AS_OF
    sessions = calendar.sessions_back(as_of, 95)
    proxies = {"Market": ("market", "M"), "Value": ("style", "V"), "Size": ("style", "S"),
               "Interest Rate": ("rates", "R")}
    symbols = ["A", "B", "M", "R", "S", "V"]
    closes = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, size=(len(sessions), len(symbols))), axis=0))
    empty = np.zeros(0)
    inputs = benchmark.FloorInputs(sessions, symbols, closes, proxies, [], empty, empty, empty, empty, empty,
                                   empty, empty, empty, 0)
    (fit,) = benchmark.floor_regression(inputs, [as_of])
    assert fit.statistics.shape == (4, 5, 2) and fit.factors == 4  # Market, Value, Size (multi), CAPM, rate
    window = closes[-91:]
    r = window[1:] / window[:-1] - 1.0
    m, v, s, rate = r[:, 2], r[:, 5], r[:, 4], r[:, 3]
    for j, column in enumerate([0, 1]):
        y = r[:, column]
        multi = sm.OLS(y, sm.add_constant(np.column_stack([m, v - m, s - m]))).fit()
        capm = sm.OLS(y, sm.add_constant(m)).fit()
        rates = sm.OLS(y, sm.add_constant(rate)).fit()
        expected = np.array([[*multi.params[1:], capm.params[1], rates.params[1]],
                             [*multi.bse[1:], capm.bse[1], rates.bse[1]],
                             [*multi.tvalues[1:], capm.tvalues[1], rates.tvalues[1]],
                             [multi.rsquared] * 3 + [capm.rsquared, rates.rsquared]])
        np.testing.assert_allclose(fit.statistics[:, :, j], expected, rtol=1e-9, atol=1e-12)
