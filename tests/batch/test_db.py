"""Schema, migrations, upsert and the run lock on both dialects."""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from datetime import UTC, date, datetime

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from batch import cli, db
from batch.errors import LockHeld, LockLost
from models import Base, CorrelationRun, MarketPrice, Portfolio, StressScenario, StressTestResult, SymbolFactorBeta

SPEC_TABLES = {
    "portfolios", "positions", "market_prices", "company_profiles", "factor_definitions",
    "symbol_factor_betas", "position_factor_exposures", "portfolio_factor_exposures", "position_greeks",
    "position_valuations",
    "market_risk_results", "stress_scenarios", "stress_test_results", "correlation_runs",
    "correlation_matrices", "correlation_clusters", "factor_correlations", "portfolio_snapshots",
    "batch_runs", "batch_job_results",
}
NATURAL_KEYS = {  # SPEC §4: the natural key of every result table is its primary key
    "market_prices": ["symbol", "date"],
    "symbol_factor_betas": ["symbol", "factor", "as_of_date"],
    "position_factor_exposures": ["position_id", "factor", "as_of_date"],
    "portfolio_factor_exposures": ["portfolio_id", "as_of_date", "factor"],
    "position_greeks": ["position_id", "as_of_date"],
    "position_valuations": ["position_id", "as_of_date"],
    "market_risk_results": ["portfolio_id", "as_of_date", "scenario"],
    "stress_test_results": ["portfolio_id", "as_of_date", "scenario_id"],
    "correlation_runs": ["portfolio_id", "as_of_date", "window_days"],
    "correlation_matrices": ["portfolio_id", "as_of_date", "window_days"],
    "correlation_clusters": ["portfolio_id", "as_of_date", "cluster_number"],
    "factor_correlations": ["as_of_date", "factor_1", "factor_2"],
    "portfolio_snapshots": ["portfolio_id", "snapshot_date"],
}


def test_migration_creates_every_spec_table_with_natural_primary_keys(engine):
    inspector = inspect(engine)
    assert SPEC_TABLES <= set(inspector.get_table_names())
    assert "pairwise_correlations" in inspector.get_view_names()
    assert db.current_revision(engine) == db.head_revision()
    for table, key in NATURAL_KEYS.items():
        pk = inspector.get_pk_constraint(table)
        assert (pk["name"], pk["constrained_columns"]) == (f"pk_{table}", key), table
        assert "id" not in {c["name"] for c in inspector.get_columns(table)}, table
    # a run record keeps its surrogate id: portfolio_id is NULL for global engines
    assert inspector.get_pk_constraint("batch_job_results")["constrained_columns"] == ["id"]
    uniques = {u["name"] for u in inspector.get_unique_constraints("batch_job_results")}
    assert "uq_batch_job_results_key" in uniques


def test_migration_matches_the_models(engine):
    """The baseline migration and the ORM agree (no pending autogenerate diff)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upsert_replaces_on_the_natural_key(engine):
    now = datetime(2022, 12, 28, 23, 30, tzinfo=UTC)
    row = {"symbol": "AAPL", "date": date(2022, 12, 28), "close": 1.0, "source": "t", "updated_at": now}
    with Session(engine) as s, s.begin():
        db.upsert(s, MarketPrice, [row], key=("symbol", "date"))
    with Session(engine) as s, s.begin():
        db.upsert(s, MarketPrice, [{**row, "close": 125.5}], key=("symbol", "date"))
    with Session(engine) as s:
        assert s.execute(select(MarketPrice.close)).scalars().all() == [125.5]


def test_run_lock_excludes_a_second_holder(engine):
    with db.run_lock(engine):
        with pytest.raises(LockHeld):
            with db.run_lock(engine):
                pass
    with db.run_lock(engine):  # free again
        pass


def test_run_lock_outlives_idle_session_timeout(engine):
    """The lock's session sits idle for the whole run: a database-wide idle_session_timeout (1 s
    here) must not end it (PostgreSQL; on SQLite the lock is a file)."""
    database = engine.url.database
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" SET idle_session_timeout = \'1s\''))
            conn.commit()
        engine.dispose()  # new sessions take the setting
    try:
        with db.run_lock(engine) as ref:
            time.sleep(2.5)
            with Session(engine) as s:
                ref.confirm(s)
    finally:
        if engine.dialect.name == "postgresql":
            engine.dispose()
            with engine.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{database}" RESET idle_session_timeout'))
                conn.commit()
            engine.dispose()


def test_run_lock_knows_when_it_is_lost(engine, tmp_path):
    """`confirm` passes while the lock is held. PostgreSQL: once the lock's session is terminated
    (a DBA, a failover), it raises LockLost and leaving the block does not fail. SQLite: deleting
    the `.lock` file loses nothing (the database file is locked too: a second holder is still
    refused); replacing the database file loses the lock."""
    with db.run_lock(engine) as ref:
        with Session(engine) as s:
            ref.confirm(s)
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": ref.backend_pid}).scalar()
                for _ in range(100):  # the backend exits asynchronously
                    if not conn.execute(text("SELECT 1 FROM pg_stat_activity WHERE pid = :p"),
                                        {"p": ref.backend_pid}).first():
                        break
                    time.sleep(0.05)
        else:
            database = make_url(str(engine.url)).database
            os.remove(database + ".lock")
            with pytest.raises(LockHeld):
                with db.run_lock(engine):
                    pass
            with Session(engine) as s:
                ref.confirm(s)
            shutil.copy(database, tmp_path / "copy.db")
            os.replace(tmp_path / "copy.db", database)
        with Session(engine) as s, pytest.raises(LockLost):
            ref.confirm(s)
    with db.run_lock(engine):  # free
        pass


@pytest.fixture
def blank_database_url(database_url):
    """An empty database with no schema at all, of the same dialect."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        yield str(url.set(database=url.database.replace("test.db", "blank.db")))
        return
    blank = url.set(database=f"{url.database}_blank")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{blank.database}"'))
        conn.execute(text(f'CREATE DATABASE "{blank.database}"'))
    yield blank.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{blank.database}" WITH (FORCE)'))
    admin.dispose()


def test_unmigrated_database_needs_init_db(blank_database_url, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DATABASE_URL", blank_database_url)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--date", "2022-12-28"]) == 2
    assert "init-db" in capsys.readouterr().err
    assert cli.main(["init-db"]) == 0
    assert cli.main(["init-db"]) == 0  # idempotent
    engine = db.make_engine(blank_database_url)
    try:
        assert db.current_revision(engine) == db.head_revision()
        with engine.connect() as conn:
            factors = conn.execute(text("SELECT name FROM factor_definitions ORDER BY display_order")).scalars().all()
    finally:
        engine.dispose()
    assert factors == ["Market", "Value", "Growth", "Momentum", "Quality", "Size", "Low Volatility",
                       "Interest Rate"]


def _scenario_rows(engine) -> dict:
    with Session(engine) as s:
        return {(r.portfolio_id, r.as_of_date, r.scenario_id): r for r in s.scalars(select(StressTestResult))}


def test_bulk_replace_writes_nulls_for_non_finite_numbers_and_replaces_only_its_key(engine):
    """The write path of every unit (COPY on PostgreSQL, executemany on SQLite): non-finite
    floats become NULL in columns and null inside JSON, dates and UUIDs inside JSON become
    strings, a missing column takes its default, the key columns are set on every row, and a
    replacement deletes exactly the rows of its key."""
    mine, other = uuid.UUID(int=1), uuid.UUID(int=2)
    day = date(2022, 12, 28)
    with Session(engine) as s, s.begin():
        s.add_all([Portfolio(id=mine, name="mine", cash_balance=0.0), Portfolio(id=other, name="other", cash_balance=0.0)])
        s.add(StressScenario(scenario_id="s1", name="s1", category="c", severity="mild", shocks={"Market": -0.1},
                             is_active=True))
        s.add(StressScenario(scenario_id="s2", name="s2", category="c", severity="mild", shocks={"Market": 0.1},
                             is_active=True))
    row = {"scenario_id": "s1", "direct_pnl": 1.5, "correlated_pnl": 2.0, "correlation_effect": 0.5,
           "pnl_pct": math.nan, "factor_impacts": {"Market": {"pnl": math.nan, "on": day, "id": mine, 3: 1.0}}}
    with Session(engine) as s, s.begin():
        inserted = db.bulk_replace(s, [(StressTestResult, {"portfolio_id": mine, "as_of_date": day}, [row]),
                                       (StressTestResult, {"portfolio_id": other, "as_of_date": day},
                                        [{**row, "scenario_id": "s2", "pnl_pct": -math.inf, "factor_impacts": {}}])])
    assert inserted == 2
    stored = _scenario_rows(engine)
    first = stored[(mine, day, "s1")]
    assert (first.direct_pnl, first.correlated_pnl, first.correlation_effect) == (1.5, 2.0, 0.5)
    assert first.pnl_pct is None and stored[(other, day, "s2")].pnl_pct is None  # NaN and -inf
    assert first.exceeds_equity is False  # the column default
    assert first.factor_impacts == {"Market": {"pnl": None, "on": "2022-12-28", "id": str(mine), "3": 1.0}}

    with Session(engine) as s, s.begin():
        db.bulk_replace(s, [(StressTestResult, {"portfolio_id": mine, "as_of_date": day},
                             [{**row, "scenario_id": "s2", "direct_pnl": 7.0, "factor_impacts": {}}])])
    stored = _scenario_rows(engine)
    assert set(stored) == {(mine, day, "s2"), (other, day, "s2")}  # mine replaced, other untouched
    assert stored[(mine, day, "s2")].direct_pnl == 7.0 and stored[(other, day, "s2")].direct_pnl == 1.5


def test_bulk_replace_of_a_chunk_deletes_exactly_its_keys_and_stores_values_exactly(engine):
    """A chunk's replacement: five units' keys of one table in one call (one DELETE for all of
    them) replace exactly those units' rows — a unit of another date and a unit outside the
    chunk keep theirs. Values arrive as the engines produce them (numpy scalars, ints in float
    columns, floats needing all 17 digits) and are stored exactly (binary COPY on PostgreSQL)."""
    books = [uuid.UUID(int=i) for i in range(1, 8)]
    day, other_day = date(2022, 12, 28), date(2022, 12, 27)
    with Session(engine) as s, s.begin():
        s.add_all([Portfolio(id=b, name=str(b), cash_balance=0.0) for b in books])

    def run_row(tag: float) -> dict:
        return {"window_days": 90, "avg_abs_correlation": tag, "weighted_correlation": None,
                "effective_positions": 3, "positions_included": 5, "positions_excluded": 0, "status": "ok"}

    with Session(engine) as s, s.begin():  # the old rows: books 0-5 on `day`, book 0 on `other_day`
        db.bulk_replace(s, [(CorrelationRun, {"portfolio_id": b, "as_of_date": day}, [run_row(-1.0)])
                            for b in books[:6]] +
                        [(CorrelationRun, {"portfolio_id": books[0], "as_of_date": other_day}, [run_row(-2.0)])])
    tricky = [0.1 + 0.2, 1e-300, -1.5e300, 2.0 ** 53 + 2, 1 / 3]
    chunk = [(CorrelationRun, {"portfolio_id": b, "as_of_date": day},
              [{**run_row(np.float64(x)), "positions_included": np.int64(i), "effective_positions": np.int64(7)}])
             for i, (b, x) in enumerate(zip(books[:5], tricky, strict=True))]
    with Session(engine) as s, s.begin():
        assert db.bulk_replace(s, chunk) == 5
    with Session(engine) as s:
        stored = {(r.portfolio_id, r.as_of_date): r for r in s.scalars(select(CorrelationRun))}
    assert set(stored) == {(b, day) for b in books[:6]} | {(books[0], other_day)}
    for i, (b, x) in enumerate(zip(books[:5], tricky, strict=True)):
        r = stored[(b, day)]
        assert (r.avg_abs_correlation, r.positions_included, r.effective_positions) == (x, i, 7.0)
    assert stored[(books[5], day)].avg_abs_correlation == -1.0  # outside the chunk: untouched
    assert stored[(books[0], other_day)].avg_abs_correlation == -2.0  # another date: untouched


def _alembic(url: str, command_name: str, revision: str) -> None:
    from alembic import command

    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = db._alembic_config()
            cfg.attributes["connection"] = conn
            getattr(command, command_name)(cfg, revision)
    finally:
        engine.dispose()


def test_migration_0002_upgrades_and_downgrades_keeping_data(blank_database_url):
    """0002 adds profile_absences and provider_request_counts to a database holding profiles,
    and its downgrade removes exactly those tables, keeping the profiles."""
    url = blank_database_url
    checked = datetime(2022, 12, 28, 23, 30, tzinfo=UTC)
    _alembic(url, "upgrade", "0001_baseline")
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO company_profiles (symbol, company_name, is_etf, source, updated_at) "
                              "VALUES ('AAPL', 'Apple Inc.', false, 'sample', :t)"), {"t": checked})
        _alembic(url, "upgrade", "0002_profile_absences")
        assert {"profile_absences", "provider_request_counts"} <= set(inspect(engine).get_table_names())
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO profile_absences (symbol, source, reason, checked_at) "
                              "VALUES ('TLT', 'sample', 'no_profile', :t)"), {"t": checked})
            conn.execute(text("INSERT INTO provider_request_counts (provider, day, requests) "
                              "VALUES ('fmp', :d, 42)"), {"d": date(2022, 12, 28)})
        with engine.connect() as conn:
            assert conn.execute(text("SELECT symbol, source, reason FROM profile_absences")).all() == [
                ("TLT", "sample", "no_profile")]
            assert conn.execute(text("SELECT provider, requests FROM provider_request_counts")).all() == [("fmp", 42)]
            assert conn.execute(text("SELECT symbol, company_name FROM company_profiles")).all() == [
                ("AAPL", "Apple Inc.")]
        _alembic(url, "downgrade", "0001_baseline")
        tables = set(inspect(engine).get_table_names())
        assert "profile_absences" not in tables and "provider_request_counts" not in tables
        assert db.current_revision(engine) == "0001_baseline"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT symbol, company_name FROM company_profiles")).all() == [
                ("AAPL", "Apple Inc.")]
        _alembic(url, "upgrade", "head")  # and up again on the downgraded database
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_bulk_insert_columns_stores_arrays_exactly_with_nulls_constants_and_defaults(engine):
    """Column-wise rows (numpy arrays and lists) as the symbol_betas engine writes them: NaN and
    ±inf become NULL, floats keep all 17 digits, numpy ints and bools arrive as Python values,
    constants go on every row, and an omitted column takes its default (capped → False)."""
    day = date(2022, 12, 28)
    tricky = np.array([0.1 + 0.2, np.nan, -1.5e300, np.inf, 1 / 3])
    columns = {"symbol": np.array(["A", "B", "C", "D", "E"], dtype=object), "factor": ["Market"] * 5,
               "beta": tricky, "std_error": [1e-300, math.nan, 2.0, 3.0, -math.inf],
               "observations": np.array([90, 0, 61, 90, 2 ** 31 - 1], dtype=np.int64),
               "quality_flag": np.array(["full_history", "factor_unavailable", "limited_history",
                                         "exact_fit", "zero_variance"], dtype=object)}
    with Session(engine) as s, s.begin():
        assert db.bulk_insert_columns(s, SymbolFactorBeta, columns, {"as_of_date": day, "window_days": 90}) == 5
        assert db.bulk_insert_columns(s, SymbolFactorBeta, {"symbol": np.array(["F"]), "factor": ["Market"],
                                                            "capped": np.array([True])},
                                      {"as_of_date": day, "quality_flag": "x", "observations": 1,
                                       "window_days": 90}) == 1
        assert db.bulk_insert_columns(s, SymbolFactorBeta, {"symbol": [], "factor": []}) == 0
    with Session(engine) as s:
        stored = {r.symbol: r for r in s.scalars(select(SymbolFactorBeta))}
    assert [stored[k].beta for k in "ABCDE"] == [0.1 + 0.2, None, -1.5e300, None, 1 / 3]
    assert [stored[k].std_error for k in "ABCDE"] == [1e-300, None, 2.0, 3.0, None]
    assert [stored[k].observations for k in "ABCDE"] == [90, 0, 61, 90, 2 ** 31 - 1]
    assert [stored[k].quality_flag for k in "ABCDE"] == list(columns["quality_flag"])
    assert all(stored[k].capped is False and stored[k].t_stat is None and stored[k].as_of_date == day
               and stored[k].window_days == 90 for k in "ABCDE")
    assert (stored["F"].capped, stored["F"].quality_flag, stored["F"].beta) == (True, "x", None)


def test_bulk_insert_columns_rejects_ragged_or_unknown_columns(engine):
    with Session(engine) as s, pytest.raises(ValueError, match="different lengths"):
        db.bulk_insert_columns(s, SymbolFactorBeta, {"symbol": ["A", "B"], "factor": ["Market"]})
    with Session(engine) as s, pytest.raises(ValueError, match=r"unknown column\(s\) \['betta'\]"):
        db.bulk_insert_columns(s, SymbolFactorBeta, {"symbol": ["A"], "betta": [1.0]})
