"""Migration 0003 (natural-key primary keys, correlation_matrices, the pairwise_correlations view)
upgraded and downgraded on a database holding data written by the 0002 schema, migration 0004
(position_valuations) on a database holding that data migrated to 0003, migration 0005 (the
result tables' foreign keys replaced by delete triggers) on that data with valuations, and
migration 0006 (keys and indexes led by portfolio and date, for the chunk DELETE) on that data at
0005, on both dialects.

Rows are written and read with plain SQL through the migrated tables (not the models, which follow
the head): what the database held before the upgrade must be exactly what it holds after it, and
after the downgrade."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Integer, Uuid, create_engine, insert, inspect, text
from sqlalchemy import MetaData as ReflectedMetaData
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from batch import db

BEFORE, AFTER = "0002_profile_absences", "0003_natural_keys_matrices"
VALUATIONS = "0004_position_valuations"
NO_FKS = "0005_result_tables_without_fks"
DATE_KEYS = "0006_portfolio_date_keys"
BETAS_BY_DATE = "0007_symbol_betas_date_index"
# every table whose primary key 0003 changes, with its natural key
KEYED = {
    "market_prices": ("symbol", "date"),
    "symbol_factor_betas": ("symbol", "factor", "as_of_date"),
    "position_factor_exposures": ("position_id", "factor", "as_of_date"),
    "portfolio_factor_exposures": ("portfolio_id", "factor", "as_of_date"),
    "position_greeks": ("position_id", "as_of_date"),
    "market_risk_results": ("portfolio_id", "scenario", "as_of_date"),
    "stress_test_results": ("portfolio_id", "scenario_id", "as_of_date"),
    "correlation_runs": ("portfolio_id", "as_of_date", "window_days"),
    "correlation_clusters": ("portfolio_id", "as_of_date", "cluster_number"),
    "factor_correlations": ("as_of_date", "factor_1", "factor_2"),
    "portfolio_snapshots": ("portfolio_id", "snapshot_date"),
}
PAIR_COLUMNS = "portfolio_id, as_of_date, symbol_1, symbol_2, correlation, observations"

BOOK_A, BOOK_B = uuid.UUID(int=0xA), uuid.UUID(int=0xB)
POS_A1, POS_A2 = uuid.UUID(int=0xA1), uuid.UUID(int=0xA2)
D1, D2 = date(2022, 12, 27), date(2022, 12, 28)
NOW = datetime(2022, 12, 28, 23, 30, tzinfo=UTC)
# 7 pairs: A on D1 (run window 90), B on D1 (run window 60, one pair NULL: < 20 overlaps), B on D2
# (no correlation run: window 90 by default). Values with 17 significant digits.
PAIRS = [
    (BOOK_A, D1, "AAPL", "MSFT", 0.71234567890123456, 89),
    (BOOK_A, D1, "AAPL", "NVDA", 0.52345678901234567, 90),
    (BOOK_A, D1, "MSFT", "NVDA", -0.03456789012345678, 88),
    (BOOK_B, D1, "QQQ", "SPY", 0.98765432109876543, 90),
    (BOOK_B, D1, "QQQ", "TLT", None, 12),
    (BOOK_B, D1, "SPY", "TLT", -0.3141592653589793, 90),
    (BOOK_B, D2, "QQQ", "SPY", 1e-05, 21),
]


@pytest.fixture
def fresh_url(database_url):
    """An empty database (no schema) of the same dialect as `database_url`."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        yield str(url.set(database=url.database.replace("test.db", "fresh.db")))
        return
    fresh = url.set(database=f"{url.database}_migrations")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{fresh.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{fresh.database}"'))
    yield fresh.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{fresh.database}" WITH (FORCE)'))
    admin.dispose()


def write_0002_data(engine) -> None:
    """Realistic rows in every table 0003 changes, through the 0002 tables (ids by the database)."""
    meta = ReflectedMetaData()
    meta.reflect(engine)
    for column in (c for table in meta.tables.values() for c in table.columns):
        if column.name in ("id", "portfolio_id", "position_id") and not isinstance(column.type, Integer):
            column.type = Uuid()  # SQLite reflects CHAR(32): bind uuid.UUID values as the models do
    t = meta.tables
    with engine.begin() as conn:
        def put(table: str, rows: list[dict]) -> None:
            for row in rows:  # one by one: rows of a table may set different columns
                conn.execute(insert(t[table]).values(**row))

        put("portfolios", [{"id": b, "name": n, "cash_balance": 1000.0, "currency": "USD"}
                           for b, n in ((BOOK_A, "Book A"), (BOOK_B, "Book B"))])
        put("positions", [{"id": p, "portfolio_id": BOOK_A, "symbol": s, "position_type": "LONG",
                           "quantity": 100.0, "entry_price": 10.5, "entry_date": D1, "investment_class": "PUBLIC"}
                          for p, s in ((POS_A1, "AAPL"), (POS_A2, "MSFT"))])
        put("stress_scenarios", [{"scenario_id": "covid", "name": "Covid", "category": "historical",
                                  "severity": "severe", "shocks": {"Market": -0.34}, "is_active": True}])
        put("market_prices", [{"symbol": s, "date": d, "open": None, "high": 131.5, "low": 120.25,
                               "close": 125.123456, "volume": 10 ** 9 + k, "source": "polygon", "updated_at": NOW}
                              for k, (s, d) in enumerate((("AAPL", D1), ("AAPL", D2), ("MSFT", D1)))])
        put("symbol_factor_betas", [
            {"symbol": "AAPL", "factor": "Market", "as_of_date": D1, "beta": 1.2345678901234567,
             "std_error": 0.1, "t_stat": 12.3, "r_squared": 0.61, "observations": 90, "window_days": 90,
             "capped": False, "quality_flag": "full_history"},
            {"symbol": "FLAT", "factor": "Market", "as_of_date": D1, "beta": None, "std_error": None,
             "t_stat": None, "r_squared": None, "observations": 90, "window_days": 90, "capped": False,
             "quality_flag": "zero_variance"}])
        put("position_factor_exposures", [
            {"position_id": p, "portfolio_id": BOOK_A, "factor": f, "as_of_date": D1, "beta": 0.5 + k,
             "exposure_dollar": 1234.5678 * (k + 1)}
            for k, (p, f) in enumerate(((POS_A1, "Market"), (POS_A1, "Value"), (POS_A2, "Market")))])
        put("portfolio_factor_exposures", [
            {"portfolio_id": BOOK_A, "factor": "Market", "as_of_date": D1, "beta": 0.93, "exposure_dollar": 2469.1},
            {"portfolio_id": BOOK_A, "factor": "Value", "as_of_date": D1, "beta": None, "exposure_dollar": 0.0}])
        put("position_greeks", [
            {"position_id": POS_A1, "portfolio_id": BOOK_A, "as_of_date": D1, "model_price": 3.21,
             "underlying_price": 125.1, "volatility": 0.31, "delta": 0.55, "gamma": 0.02, "theta": -0.05,
             "vega": 0.2, "rho": 0.1, "dollar_delta": 6880.5, "status": "ok"},
            {"position_id": POS_A2, "portfolio_id": BOOK_A, "as_of_date": D1, "status": "no_underlying_price"}])
        put("market_risk_results", [
            {"portfolio_id": BOOK_A, "scenario": s, "as_of_date": D1, "shock": k, "pnl": 1000.0 * k,
             "pnl_pct": None if k == 0 else 0.01 * k} for s, k in (("market_down_10", -0.1), ("flat", 0.0))])
        put("stress_test_results", [
            {"portfolio_id": BOOK_A, "scenario_id": "covid", "as_of_date": D1, "direct_pnl": -840.2,
             "correlated_pnl": -910.7, "correlation_effect": -70.5, "pnl_pct": -0.27, "exceeds_equity": False,
             "factor_impacts": {"Market": -840.2, "Value": None}}])
        put("correlation_runs", [
            {"portfolio_id": b, "as_of_date": D1, "window_days": w, "avg_abs_correlation": 0.42,
             "weighted_correlation": None, "effective_positions": 2.1, "positions_included": 3,
             "positions_excluded": 1, "status": "success"} for b, w in ((BOOK_A, 90), (BOOK_B, 60))])
        put("pairwise_correlations", [
            dict(zip(("portfolio_id", "as_of_date", "symbol_1", "symbol_2", "correlation", "observations"), p,
                     strict=True)) for p in PAIRS])
        put("correlation_clusters", [
            {"portfolio_id": BOOK_B, "as_of_date": D1, "cluster_number": 1, "symbols": ["QQQ", "SPY"],
             "avg_correlation": 0.98765432109876543, "weight": 0.6}])
        put("factor_correlations", [
            {"as_of_date": D1, "factor_1": "Market", "factor_2": f, "correlation": c, "observations": 252,
             "decay": 0.94} for f, c in (("Market", 1.0), ("Value", -0.12345678901234568))])
        put("portfolio_snapshots", [
            {"portfolio_id": BOOK_A, "snapshot_date": d, "total_value": 3469.1 + k, "cash_value": 1000.0,
             "long_value": 2469.1, "short_value": 0.0, "gross_exposure": 2469.1, "net_exposure": 2469.1,
             "private_value": 0.0, "daily_pnl": k * 12.5, "daily_return": None if k == 0 else 0.0036,
             "cumulative_pnl": k * 12.5, "num_positions": 2, "num_long": 2, "num_short": 0, "num_private": 0,
             "portfolio_delta": None, "portfolio_gamma": None, "portfolio_theta": None, "portfolio_vega": None,
             "market_beta": 0.93, "data_quality": {"flag": "full_history", "positions_total": 2}}
            for k, d in enumerate((D1, D2))])


def _decoded(value):
    """JSON columns come back parsed on PostgreSQL and as text on SQLite: compare them parsed."""
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def dump(engine, tables) -> dict[str, list[tuple]]:
    """Every row of `tables` (plain SQL, every column but a surrogate `id`), sorted."""
    out = {}
    with engine.connect() as conn:
        for table in tables:
            columns = [c["name"] for c in inspect(conn).get_columns(table) if c["name"] != "id"]
            rows = conn.execute(text(f"SELECT {', '.join(columns)} FROM {table}")).all()
            out[table] = sorted((tuple(_decoded(v) for v in r) for r in rows), key=repr)
    return out


def pairs(engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(text(f"SELECT {PAIR_COLUMNS} FROM pairwise_correlations")))


def test_upgrade_and_downgrade_keep_every_row(fresh_url):
    engine = db.make_engine(fresh_url)
    try:
        db.migrate(engine, BEFORE)
        write_0002_data(engine)
        before = dump(engine, KEYED)
        old_pairs = pairs(engine)
        assert [len(before[t]) for t in KEYED] == [3, 2, 3, 2, 2, 2, 1, 2, 1, 2, 2]
        assert len(old_pairs) == len(PAIRS) == 7

        db.migrate(engine, AFTER)
        inspector = inspect(engine)
        for table, key in KEYED.items():
            assert inspector.get_pk_constraint(table)["constrained_columns"] == list(key), table
        assert "pairwise_correlations" in inspector.get_view_names()
        assert "pairwise_correlations" not in inspector.get_table_names()
        assert dump(engine, KEYED) == before
        assert pairs(engine) == old_pairs  # the view: the same pairs, the same numbers (exactly)
        with engine.connect() as conn:
            windows = dict(conn.execute(text(
                "SELECT portfolio_id, window_days FROM pairwise_correlations WHERE as_of_date = :d"), {"d": D1}).all())
            book_b = conn.execute(text(
                "SELECT symbols, matrix, observations, window_days FROM correlation_matrices "
                "WHERE as_of_date = :d AND window_days = 60"), {"d": D1}).one()
            n_matrices = conn.execute(text("SELECT COUNT(*) FROM correlation_matrices")).scalar()
        assert n_matrices == 3  # one row per portfolio-date
        # the window of the unit's correlation run, else 90
        assert {uuid.UUID(str(k)): w for k, w in windows.items()} == {BOOK_A: 90, BOOK_B: 60}
        symbols, matrix, counts, _ = (_decoded(v) for v in book_b)
        assert symbols == ["QQQ", "SPY", "TLT"]
        assert matrix == [[1.0, 0.98765432109876543, None],
                          [0.98765432109876543, 1.0, -0.3141592653589793],
                          [None, -0.3141592653589793, 1.0]]
        assert counts == [[None, 90, 12], [90, None, 90], [12, 90, None]]  # own counts were never stored

        db.downgrade(engine, BEFORE)
        inspector = inspect(engine)
        assert "correlation_matrices" not in inspector.get_table_names()
        assert "pairwise_correlations" in inspector.get_table_names()
        for table in (*KEYED, "pairwise_correlations"):
            assert inspector.get_pk_constraint(table)["constrained_columns"] == ["id"], table
        assert dump(engine, KEYED) == before
        assert pairs(engine) == old_pairs
        with engine.connect() as conn:  # surrogate ids regenerated: distinct, not null
            ids = conn.execute(text("SELECT id FROM pairwise_correlations")).scalars().all()
            assert len(set(ids)) == 7 and None not in ids
        with engine.begin() as conn:  # the 0002 unique constraint is back
            with pytest.raises(IntegrityError):
                conn.execute(text("INSERT INTO market_prices (symbol, date, close, source, updated_at) "
                                  "SELECT symbol, date, close, source, updated_at FROM market_prices"))

        db.migrate(engine, AFTER)  # and up again
        assert dump(engine, KEYED) == before
        assert pairs(engine) == old_pairs
        assert db.current_revision(engine) == AFTER
    finally:
        engine.dispose()


# position_valuations rows written after the upgrade: priced (market, model, short), unpriced
VALUATION_COLUMNS = ("position_id", "portfolio_id", "as_of_date", "symbol", "quantity", "price", "price_date",
                     "price_source", "market_value", "flags")
VALUATION_ROWS = [
    (POS_A1, BOOK_A, D1, "AAPL", 100.0, 125.123456, D1, "market", 12512.3456, []),
    (POS_A2, BOOK_A, D1, "MSFT", -100.0, None, None, None, None, ["missing_price"]),
    (POS_A1, BOOK_A, D2, "AAPL", 100.0, 3.2109876543210985, None, "model", 32109.876543210985,
     ["stale_prices", "bad_closes_ignored"]),
]


def put_valuations(engine, rows) -> None:
    meta = ReflectedMetaData()
    meta.reflect(engine, only=["position_valuations"])
    table = meta.tables["position_valuations"]
    for name in ("position_id", "portfolio_id"):
        table.c[name].type = Uuid()  # SQLite reflects CHAR(32)
    with engine.begin() as conn:
        conn.execute(insert(table), [dict(zip(VALUATION_COLUMNS, r, strict=True)) for r in rows])


def valuation_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {', '.join(VALUATION_COLUMNS)} FROM position_valuations")).all()
    postgres = engine.dialect.name == "postgresql"
    return sorted((uuid.UUID(str(r[0])), uuid.UUID(str(r[1])),
                   r[2] if postgres else date.fromisoformat(r[2]), r[3], float(r[4]), r[5],
                   r[6] if postgres or r[6] is None else date.fromisoformat(r[6]), r[7], r[8], _decoded(r[9]))
                  for r in rows)


def test_0004_adds_position_valuations_and_keeps_every_row(fresh_url):
    engine = db.make_engine(fresh_url)
    try:
        db.migrate(engine, BEFORE)
        write_0002_data(engine)
        db.migrate(engine, AFTER)
        tables = (*KEYED, "correlation_matrices")
        before = dump(engine, tables)
        old_pairs = pairs(engine)
        assert "position_valuations" not in inspect(engine).get_table_names()

        db.migrate(engine, VALUATIONS)
        assert db.current_revision(engine) == VALUATIONS
        inspector = inspect(engine)
        pk = inspector.get_pk_constraint("position_valuations")
        assert (pk["name"], pk["constrained_columns"]) == ("pk_position_valuations", ["position_id", "as_of_date"])
        assert [c["name"] for c in inspector.get_columns("position_valuations")] == list(VALUATION_COLUMNS)
        nullable = {c["name"]: c["nullable"] for c in inspector.get_columns("position_valuations")}
        assert [c for c, n in nullable.items() if n] == ["price", "price_date", "price_source", "market_value"]
        assert {(tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes("position_valuations")} \
            == {(("portfolio_id",), False)}
        assert {(tuple(f["constrained_columns"]), f["referred_table"], f["options"].get("ondelete"))
                for f in inspector.get_foreign_keys("position_valuations")} == {
            (("portfolio_id",), "portfolios", "CASCADE"), (("position_id",), "positions", "CASCADE")}
        assert dump(engine, tables) == before  # nothing else touched
        assert pairs(engine) == old_pairs

        put_valuations(engine, VALUATION_ROWS)
        assert valuation_rows(engine) == sorted(VALUATION_ROWS)  # NULLs stay NULL, floats exact
        with engine.begin() as conn, pytest.raises(IntegrityError):  # one row per natural key
            conn.execute(text("INSERT INTO position_valuations SELECT * FROM position_valuations"))

        db.downgrade(engine, AFTER)
        assert db.current_revision(engine) == AFTER
        assert "position_valuations" not in inspect(engine).get_table_names()
        assert dump(engine, tables) == before
        assert pairs(engine) == old_pairs

        db.migrate(engine, VALUATIONS)  # and up again: empty, the rest as it was
        assert db.current_revision(engine) == VALUATIONS
        assert valuation_rows(engine) == []
        assert dump(engine, tables) == before
    finally:
        engine.dispose()


# the result tables' foreign keys at 0004 (baseline and 0004 migrations): (column, referred table, ON DELETE)
RESULT_FOREIGN_KEYS = {
    "position_valuations": {("position_id", "positions", "CASCADE"), ("portfolio_id", "portfolios", "CASCADE")},
    "position_greeks": {("position_id", "positions", "CASCADE"), ("portfolio_id", "portfolios", "CASCADE")},
    "position_factor_exposures": {("position_id", "positions", "CASCADE"), ("portfolio_id", "portfolios", "CASCADE")},
    "portfolio_factor_exposures": {("portfolio_id", "portfolios", "CASCADE")},
    "market_risk_results": {("portfolio_id", "portfolios", "CASCADE")},
    "stress_test_results": {("portfolio_id", "portfolios", "CASCADE"), ("scenario_id", "stress_scenarios", None)},
    "correlation_runs": {("portfolio_id", "portfolios", "CASCADE")},
    "correlation_matrices": {("portfolio_id", "portfolios", "CASCADE")},
    "correlation_clusters": {("portfolio_id", "portfolios", "CASCADE")},
    "portfolio_snapshots": {("portfolio_id", "portfolios", "CASCADE")},
}
TRIGGERS = {"portfolios_delete_results", "positions_delete_results", "stress_scenarios_keep_results"}


def foreign_keys(engine) -> dict[str, set[tuple]]:
    inspector = inspect(engine)
    found = {}
    for table in RESULT_FOREIGN_KEYS:
        found[table] = set()
        for f in inspector.get_foreign_keys(table):
            assert len(f["constrained_columns"]) == 1, f
            ondelete = f["options"].get("ondelete")
            found[table].add((f["constrained_columns"][0], f["referred_table"],
                              ondelete.upper() if ondelete and ondelete.upper() != "NO ACTION" else None))
    return found


def triggers(engine) -> set[str]:
    sql = ("SELECT name FROM sqlite_master WHERE type = 'trigger'" if engine.dialect.name == "sqlite"
           else "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    with engine.connect() as conn:
        return set(conn.execute(text(sql)).scalars())


def test_0005_drops_the_result_foreign_keys_and_keeps_every_row(fresh_url):
    """0004 → 0005 → 0004 → 0005 with rows in every result table: no row lost or changed, the
    constraints gone and back, the triggers there and gone; rows that reference no parent (possible
    at 0005 only) are deleted by the downgrade, which would otherwise fail."""
    engine = db.make_engine(fresh_url)
    try:
        db.migrate(engine, BEFORE)
        write_0002_data(engine)
        db.migrate(engine, VALUATIONS)
        put_valuations(engine, VALUATION_ROWS)
        tables = (*KEYED, "correlation_matrices", "position_valuations", "portfolios", "positions",
                  "stress_scenarios")
        before = dump(engine, tables)
        old_pairs = pairs(engine)
        assert foreign_keys(engine) == RESULT_FOREIGN_KEYS
        assert triggers(engine) == set()
        # every result table holds rows: none could vanish unnoticed
        assert all(before[t] for t in RESULT_FOREIGN_KEYS), [t for t in RESULT_FOREIGN_KEYS if not before[t]]

        db.migrate(engine, NO_FKS)
        assert db.current_revision(engine) == NO_FKS
        assert foreign_keys(engine) == {t: set() for t in RESULT_FOREIGN_KEYS}
        assert inspect(engine).get_foreign_keys("positions")[0]["referred_table"] == "portfolios"  # kept
        assert triggers(engine) == TRIGGERS
        assert dump(engine, tables) == before
        assert pairs(engine) == old_pairs  # the view still reads the (rebuilt, on SQLite) matrices
        for table in ("position_valuations", "position_greeks", "position_factor_exposures"):
            assert {tuple(i["column_names"]) for i in inspect(engine).get_indexes(table)} == {("portfolio_id",)}

        # rows no constraint refuses now: a portfolio's, a position's and a scenario's that do not exist
        ghost_book, ghost_position = uuid.UUID(int=0xDEAD), uuid.UUID(int=0xBEEF)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO market_risk_results (portfolio_id, scenario, as_of_date, shock, pnl) "
                              "VALUES (:p, 'flat', :d, 0.0, 0.0)"), {"p": _stored(engine, ghost_book), "d": D2})
            conn.execute(text("INSERT INTO position_greeks (position_id, portfolio_id, as_of_date, status) "
                              "VALUES (:x, :p, :d, 'ok')"),
                         {"x": _stored(engine, ghost_position), "p": _stored(engine, BOOK_A), "d": D2})
            conn.execute(text("INSERT INTO stress_test_results (portfolio_id, scenario_id, as_of_date, direct_pnl, "
                              "correlated_pnl, correlation_effect, exceeds_equity, factor_impacts) "
                              "VALUES (:p, 'gone', :d, 1.0, 1.0, 0.0, false, '{}')"),
                         {"p": _stored(engine, BOOK_B), "d": D2})
        assert dump(engine, tables) != before

        db.downgrade(engine, VALUATIONS)
        assert db.current_revision(engine) == VALUATIONS
        assert foreign_keys(engine) == RESULT_FOREIGN_KEYS
        assert triggers(engine) == set()
        assert dump(engine, tables) == before  # exactly the three orphans deleted
        assert pairs(engine) == old_pairs
        with engine.begin() as conn, pytest.raises(IntegrityError):  # the constraint checks inserts again
            conn.execute(text("INSERT INTO market_risk_results (portfolio_id, scenario, as_of_date, shock, pnl) "
                              "VALUES (:p, 'flat', :d, 0.0, 0.0)"), {"p": _stored(engine, ghost_book), "d": D2})

        db.migrate(engine, NO_FKS)  # and up again
        assert foreign_keys(engine) == {t: set() for t in RESULT_FOREIGN_KEYS}
        assert triggers(engine) == TRIGGERS
        assert dump(engine, tables) == before
        assert pairs(engine) == old_pairs
    finally:
        engine.dispose()


def _stored(engine, value: uuid.UUID):
    """A UUID as plain SQL must bind it: the models' Uuid type stores 32 hex digits on SQLite."""
    return value.hex if engine.dialect.name == "sqlite" else value


def test_a_database_created_on_first_use_has_the_triggers(fresh_url):
    """The schema has one creation path, the migrations: `create_if_empty` (an embedded database's
    first start) builds the same result tables without foreign keys, with the triggers."""
    engine = db.make_engine(fresh_url)
    try:
        assert db.create_if_empty(engine)
        assert db.current_revision(engine) == db.head_revision() == BETAS_BY_DATE
        assert foreign_keys(engine) == {t: set() for t in RESULT_FOREIGN_KEYS}
        assert triggers(engine) == TRIGGERS
        assert chunk_keys(engine) == KEYS_AT_0006
    finally:
        engine.dispose()


# The six tables whose keys 0006 changes: (primary key name, its columns in order, {(index, its
# columns in order)}) at 0005 and at 0006.
KEYS_AT_0005 = {
    "position_valuations": ("pk_position_valuations", ("position_id", "as_of_date"),
                            {("ix_position_valuations_portfolio_id", ("portfolio_id",))}),
    "position_greeks": ("pk_position_greeks", ("position_id", "as_of_date"),
                        {("ix_position_greeks_portfolio_id", ("portfolio_id",))}),
    "position_factor_exposures": ("pk_position_factor_exposures", ("position_id", "factor", "as_of_date"),
                                  {("ix_position_factor_exposures_portfolio_id", ("portfolio_id",))}),
    "portfolio_factor_exposures": ("pk_portfolio_factor_exposures", ("portfolio_id", "factor", "as_of_date"), set()),
    "market_risk_results": ("pk_market_risk_results", ("portfolio_id", "scenario", "as_of_date"), set()),
    "stress_test_results": ("pk_stress_test_results", ("portfolio_id", "scenario_id", "as_of_date"), set()),
}
KEYS_AT_0006 = {
    "position_valuations": ("pk_position_valuations", ("position_id", "as_of_date"),
                            {("ix_position_valuations_portfolio_id_as_of_date", ("portfolio_id", "as_of_date"))}),
    "position_greeks": ("pk_position_greeks", ("position_id", "as_of_date"),
                        {("ix_position_greeks_portfolio_id_as_of_date", ("portfolio_id", "as_of_date"))}),
    "position_factor_exposures": ("pk_position_factor_exposures", ("position_id", "factor", "as_of_date"),
                                  {("ix_position_factor_exposures_portfolio_id_as_of_date",
                                    ("portfolio_id", "as_of_date"))}),
    "portfolio_factor_exposures": ("pk_portfolio_factor_exposures", ("portfolio_id", "as_of_date", "factor"), set()),
    "market_risk_results": ("pk_market_risk_results", ("portfolio_id", "as_of_date", "scenario"), set()),
    "stress_test_results": ("pk_stress_test_results", ("portfolio_id", "as_of_date", "scenario_id"), set()),
}
POSITION_LEVEL = ("position_valuations", "position_greeks", "position_factor_exposures")


def chunk_keys(engine) -> dict[str, tuple]:
    """Each of the six tables' (primary key name, its columns in order, {(index, its columns)})."""
    inspector = inspect(engine)
    found = {}
    for table in KEYS_AT_0005:
        pk = inspector.get_pk_constraint(table)
        indexes = {(i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)}
        found[table] = (pk["name"], tuple(pk["constrained_columns"]), indexes)
    return found


def delete_plans(engine) -> dict[str, str]:
    """SQLite's query plan of the job's chunk DELETE (two portfolios, one date) on each table."""
    plans = {}
    with engine.connect() as conn:
        for table in KEYS_AT_0005:
            rows = conn.execute(text(f"EXPLAIN QUERY PLAN DELETE FROM {table} "
                                     "WHERE portfolio_id IN (:a, :b) AND as_of_date = :d"),
                                {"a": BOOK_A.hex, "b": BOOK_B.hex, "d": D1}).all()
            plans[table] = " | ".join(r[-1] for r in rows)
    return plans


def check_delete_plans(engine, revision: str) -> None:
    """At 0006 SQLite searches one index by portfolio and date for the chunk DELETE on every table,
    at 0005 by portfolio only (e.g. "SEARCH t USING INDEX ix_t_portfolio_id (portfolio_id=?)").
    SQLite only: with a few rows PostgreSQL's planner picks any index (or none), so its plans
    tell nothing here; the effect on PostgreSQL is measured with EXPLAIN ANALYZE on a benchmark
    database (README "Stored results")."""
    if engine.dialect.name != "sqlite":
        return
    plans = delete_plans(engine)
    bounded = {t: "(portfolio_id=? AND as_of_date=?)" in plan for t, plan in plans.items()}
    assert bounded == {t: revision == DATE_KEYS for t in plans}, plans


def check_the_triggers_fire(engine) -> None:
    """The 0005 triggers at work, each in a transaction rolled back: a stress scenario with results
    cannot be deleted; deleting a position deletes its rows in the position-level tables, deleting
    a portfolio its rows in every result table (counts by hand from write_0002_data and
    VALUATION_ROWS)."""
    with engine.connect() as conn:
        with pytest.raises(IntegrityError, match="deactivate it"):
            conn.execute(text("DELETE FROM stress_scenarios WHERE scenario_id = 'covid'"))
        conn.rollback()

        def counts(tables) -> dict[str, int]:
            return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in tables}

        assert counts(POSITION_LEVEL) == {"position_valuations": 3, "position_greeks": 2,
                                          "position_factor_exposures": 3}
        conn.execute(text("DELETE FROM positions WHERE id = :x"), {"x": _stored(engine, POS_A2)})
        assert counts(POSITION_LEVEL) == {"position_valuations": 2, "position_greeks": 1,
                                          "position_factor_exposures": 2}
        conn.execute(text("DELETE FROM portfolios WHERE id = :p"), {"p": _stored(engine, BOOK_A)})
        # book B's rows stay: its correlation run, its two matrices (D1, D2) and its cluster
        assert counts(RESULT_FOREIGN_KEYS) == {
            "position_valuations": 0, "position_greeks": 0, "position_factor_exposures": 0,
            "portfolio_factor_exposures": 0, "market_risk_results": 0, "stress_test_results": 0,
            "correlation_runs": 1, "correlation_matrices": 2, "correlation_clusters": 1, "portfolio_snapshots": 0}
        conn.rollback()


def test_0006_leads_the_keys_with_portfolio_and_date_and_keeps_every_row(fresh_url):
    """0005 → 0006 → 0005 → 0006 with rows in every result table: no row lost or changed; after
    each step the primary keys and indexes in the expected column order and the chunk DELETE
    served (or not) by one index bounded by portfolio and date; the 0005 triggers still there and
    firing, the pairwise_correlations view still returning the pairs (SQLite rebuilds three tables
    under them)."""
    engine = db.make_engine(fresh_url)
    try:
        db.migrate(engine, BEFORE)
        write_0002_data(engine)
        db.migrate(engine, VALUATIONS)
        put_valuations(engine, VALUATION_ROWS)
        db.migrate(engine, NO_FKS)
        tables = (*KEYED, "correlation_matrices", "position_valuations", "portfolios", "positions",
                  "stress_scenarios")
        before = dump(engine, tables)
        old_pairs = pairs(engine)
        assert all(before[t] for t in RESULT_FOREIGN_KEYS), [t for t in RESULT_FOREIGN_KEYS if not before[t]]
        assert len(old_pairs) == 7
        assert chunk_keys(engine) == KEYS_AT_0005
        check_delete_plans(engine, NO_FKS)
        check_the_triggers_fire(engine)

        for revision, keys in ((DATE_KEYS, KEYS_AT_0006), (NO_FKS, KEYS_AT_0005), (DATE_KEYS, KEYS_AT_0006)):
            if revision == DATE_KEYS:
                db.migrate(engine, revision)
            else:
                db.downgrade(engine, revision)
            assert db.current_revision(engine) == revision
            assert chunk_keys(engine) == keys, revision
            check_delete_plans(engine, revision)
            assert dump(engine, tables) == before, revision
            assert pairs(engine) == old_pairs, revision
            assert "pairwise_correlations" in inspect(engine).get_view_names()
            assert triggers(engine) == TRIGGERS, revision
            assert foreign_keys(engine) == {t: set() for t in RESULT_FOREIGN_KEYS}
            check_the_triggers_fire(engine)
            with engine.begin() as conn, pytest.raises(IntegrityError):  # the reordered key still refuses a duplicate
                conn.execute(text("INSERT INTO market_risk_results SELECT * FROM market_risk_results"))
    finally:
        engine.dispose()


def _betas_plan(engine) -> str:
    """SQLite's query plan of the symbol-betas engine's DELETE of one date."""
    with engine.connect() as conn:
        rows = conn.execute(text("EXPLAIN QUERY PLAN DELETE FROM symbol_factor_betas WHERE as_of_date = :d"),
                            {"d": D1}).all()
    return " | ".join(r[-1] for r in rows)


def test_0007_indexes_symbol_betas_by_date_and_keeps_every_row(fresh_url):
    """0006 → 0007 → 0006 → 0007 with data: the rows unchanged; the index on (as_of_date) there
    after each upgrade, gone after the downgrade; on SQLite the date's DELETE searches it instead of
    scanning the table (PostgreSQL's planner picks any plan for a few rows)."""
    engine = db.make_engine(fresh_url)
    try:
        db.migrate(engine, BEFORE)
        write_0002_data(engine)
        db.migrate(engine, DATE_KEYS)
        before = dump(engine, ("symbol_factor_betas", "factor_correlations"))
        assert before["symbol_factor_betas"]

        def indexed() -> bool:
            found = {(i["name"], tuple(i["column_names"])) for i in inspect(engine).get_indexes("symbol_factor_betas")}
            return ("ix_symbol_factor_betas_as_of_date", ("as_of_date",)) in found

        assert not indexed()
        for revision in (BETAS_BY_DATE, DATE_KEYS, BETAS_BY_DATE):
            if revision == BETAS_BY_DATE:
                db.migrate(engine, revision)
            else:
                db.downgrade(engine, revision)
            assert db.current_revision(engine) == revision
            assert indexed() == (revision == BETAS_BY_DATE)
            assert dump(engine, ("symbol_factor_betas", "factor_correlations")) == before
            if engine.dialect.name == "sqlite":
                engine.dispose()  # a pooled connection may keep the statement planned before the change
                assert ("USING INDEX ix_symbol_factor_betas_as_of_date" in _betas_plan(engine)) == (
                    revision == BETAS_BY_DATE), _betas_plan(engine)
    finally:
        engine.dispose()
