"""Schema, migrations, upsert and the run lock on both dialects."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from batch import cli, db
from batch.errors import LockHeld
from models import Base, MarketPrice

SPEC_TABLES = {
    "portfolios", "positions", "market_prices", "company_profiles", "factor_definitions",
    "symbol_factor_betas", "position_factor_exposures", "portfolio_factor_exposures", "position_greeks",
    "market_risk_results", "stress_scenarios", "stress_test_results", "correlation_runs",
    "pairwise_correlations", "correlation_clusters", "factor_correlations", "portfolio_snapshots",
    "batch_runs", "batch_job_results",
}


def test_migration_creates_every_spec_table_with_named_natural_keys(engine):
    tables = set(inspect(engine).get_table_names())
    assert SPEC_TABLES <= tables
    assert db.current_revision(engine) == db.head_revision()
    uniques = {u["name"] for u in inspect(engine).get_unique_constraints("market_prices")}
    assert "uq_market_prices_symbol_date" in uniques


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
