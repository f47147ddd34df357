"""Benchmark the daily job against its floor (issues #6, #11).

Builds a synthetic but realistic universe in a scratch database — `--symbols` symbols with a
factor structure over 300 sessions before the first as-of date, `--portfolios` books of
`--positions` positions with a share of shorts, listed options and PRIVATE holdings — then, in one
process and one run, times:

(a) the daily job end to end (sync skipped: prices are pre-loaded) for 2022-12-28, or with
    `--dates N` as one backfill invocation (--start/--end) of the last N sessions ending there;
    split by stage (global engines, the portfolio stage, its bulk writes; per-job totals from
    `batch_job_results`), serially or with `--workers N` / `--executor dask` as the job takes them;
(b) the floor (`floor_seconds`, parts in `floor_parts`): the least a job producing the SPEC's
    results could do, measured in the same run and independent of the job's own storage:
    read — the positions of active portfolios and the closes of their market symbols and of the
        factor proxies over the 300 sessions before each as-of date (the window read once for
        all N dates), by the fastest path: on PostgreSQL a binary COPY of the query's columns
        aggregated into arrays, parsed straight into numpy (no Python object per value; one
        protocol message instead of one per row); on SQLite one cursor fetch per query;
    regression — for each date, every symbol's OLS on its 90 returns as one batched numpy solve
        (market and style-minus-market betas with standard errors, t-stats and R², plus the
        univariate CAPM and rate-factor fits);
    write — the result numbers the SPEC requires, counted from the universe's shape (positions,
        factors with data, options, correlation-eligible symbols), never from what the job
        stored: per unit (portfolio × date) one number per position-factor exposure (public and
        option positions × factors), per portfolio-factor exposure, per market-risk scenario
        (10), two per stress scenario (direct, correlated), one per portfolio_snapshots numeric
        column (19), per correlation pair of the upper triangle of the correlation-eligible
        symbols (SPEC §6.6) plus the 3 correlation metrics, 5 per option (delta, gamma, theta,
        vega, rho), one per job record (7); per date 4 per (symbol, factor) fitted (beta, standard
        error, t-stat, R²) and one per factor-correlation pair. Each group's numbers of a unit go
        as one row (unit key, date, float8[] — the most compact addressable layout, so no storage
        the job adopts can undercut it) into unindexed scratch tables: binary COPY encoded with
        numpy on PostgreSQL, executemany of float64 BLOBs on SQLite, one transaction.
    Correlation clusters (their count depends on the data) are left out. `ratio_to_floor` is
    wall ÷ floor. The floor of issue #6 is still printed as `legacy_floor_seconds`: the regression
    timed after the price read plus as many 4-column rows as the job wrote into a bare table —
    it shrinks whenever the job's storage gets more compact, and it ignores reads.

Prints a table, and with `--json` one JSON object on the last line. Usage:

    python scripts/benchmark.py --portfolios 100 --positions 50 --symbols 2000 [--dates N]
                                [--database-url URL] [--workers N] [--executor serial|processes|dask] [--json]

The database named by --database-url is wiped (every table and view) before use; a missing
PostgreSQL database is created first (through the `postgres` maintenance database). A bad URL, an
unreachable server or a refused CREATE DATABASE is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a plain checkout too

import numpy as np  # noqa: E402 - after the path set-up above
from scipy.special import ndtr  # noqa: E402
from sqlalchemy import create_engine, func, inspect, select, text  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from batch import calendar, db  # noqa: E402
from batch.engines import ENGINES  # noqa: E402
from batch.errors import ConfigError, DatabaseUnavailable  # noqa: E402
from batch.executors import EXECUTORS, make_executor  # noqa: E402
from batch.log import configure_logging  # noqa: E402
from batch.providers import SampleProvider  # noqa: E402
from batch.runner import Runner, RunRequest  # noqa: E402
from batch.settings import Settings, normalise_database_url  # noqa: E402
from models import (  # noqa: E402
    BatchJobResult,
    FactorDefinition,
    MarketPrice,
    Portfolio,
    Position,
)

AS_OF = date(2022, 12, 28)
SESSIONS = 300
BUILD_BATCH = 250  # portfolios inserted per transaction while building
PROXIES = {"Market": "^GSPC", "Value": "VLUE", "Growth": "VUG", "Momentum": "MTUM", "Quality": "QUAL",
           "Size": "SIZE", "Low Volatility": "USMV", "Interest Rate": "TLT"}
RESULT_TABLES = ("position_valuations", "position_factor_exposures", "portfolio_factor_exposures",
                 "position_greeks", "market_risk_results", "stress_test_results", "correlation_runs",
                 "correlation_matrices", "correlation_clusters", "portfolio_snapshots", "symbol_factor_betas",
                 "factor_correlations")


def build_universe(engine, portfolios: int, positions: int, symbols: int, seed: int,
                   sessions: int = SESSIONS) -> dict[str, int]:
    """Fill an empty, migrated database with `sessions` sessions of prices ending at AS_OF.
    Returns counts."""
    rng = np.random.default_rng(seed)
    days = calendar.sessions_back(AS_OF, sessions)
    names = [f"S{i:04d}" for i in range(symbols)]
    factor_returns = rng.normal(0.0, 0.008, size=(len(days), len(PROXIES)))
    factor_returns[:, 0] = rng.normal(0.0004, 0.011, size=len(days))  # the market
    betas = rng.normal(0.0, 0.4, size=(symbols, len(PROXIES)))
    betas[:, 0] = rng.uniform(0.5, 1.6, size=symbols)
    returns = factor_returns @ betas.T + rng.normal(0.0, 0.012, size=(len(days), symbols))
    stock_prices = 50.0 * np.exp(np.cumsum(returns, axis=0))
    proxy_prices = 100.0 * np.exp(np.cumsum(factor_returns, axis=0))
    now = datetime(2022, 12, 28, 23, 30, tzinfo=UTC)
    series = [(sym, stock_prices[:, j]) for j, sym in enumerate(names)]
    series += [(proxy, proxy_prices[:, k]) for k, proxy in enumerate(PROXIES.values())]
    _bulk_prices(engine, ((sym, d, float(v)) for sym, values in series for d, v in zip(days, values, strict=True)),
                 now)
    price_rows = len(series) * len(days)
    last_price = {sym: float(stock_prices[-1, j]) for j, sym in enumerate(names)}
    with Session(engine) as s, s.begin():
        for order, (name, proxy) in enumerate(PROXIES.items(), start=1):
            s.add(FactorDefinition(name=name, proxy_symbol=proxy, kind={"Market": "market", "Interest Rate": "rates"}
                                   .get(name, "style"), is_active=True, display_order=order))
    portfolio_rows, position_rows = [], []
    total_positions = 0
    for p in range(portfolios):
        pid = uuid.UUID(int=(1 << 64) + p)
        portfolio_rows.append({"id": pid, "name": f"Bench {p:05d}", "cash_balance": 10_000.0, "currency": "USD"})
        chosen = rng.choice(symbols, size=positions, replace=False)
        for k, j in enumerate(chosen):
            sym = names[j]
            kind = rng.random()
            row = {"id": uuid.UUID(int=(2 << 64) + p * 10_000 + k), "portfolio_id": pid, "symbol": sym,
                   "position_type": "LONG", "quantity": float(rng.integers(10, 500)),
                   "entry_price": round(last_price[sym] * 0.9, 2), "entry_date": days[0],
                   "investment_class": "PUBLIC", "underlying_symbol": None, "strike_price": None,
                   "expiration_date": None, "implied_volatility": None}
            if kind < 0.05:  # PRIVATE holding
                row.update(symbol=f"PRIVATE_FUND_{p}_{k}", investment_class="PRIVATE", quantity=1.0,
                           entry_price=100_000.0)
            elif kind < 0.10:  # listed option on the symbol
                strike = round(last_price[sym])
                right = "C" if kind < 0.075 else "P"
                row.update(symbol=f"{sym}230317{right}{strike * 1000:08d}", investment_class="OPTIONS",
                           position_type="LC" if right == "C" else "LP", quantity=float(rng.integers(1, 20)),
                           entry_price=2.5, underlying_symbol=sym, strike_price=float(strike),
                           expiration_date=date(2023, 3, 17), implied_volatility=0.3)
            elif kind < 0.25:  # short
                row.update(position_type="SHORT", quantity=-row["quantity"])
            position_rows.append(row)
        if len(portfolio_rows) == BUILD_BATCH or p == portfolios - 1:  # streamed: bounded memory
            with Session(engine) as s, s.begin():
                s.execute(Portfolio.__table__.insert(), portfolio_rows)
                s.execute(Position.__table__.insert(), position_rows)
            total_positions += len(position_rows)
            portfolio_rows, position_rows = [], []
    return {"portfolios": portfolios, "positions": total_positions, "symbols": symbols, "price_rows": price_rows}


def _bulk_prices(engine, rows: Iterator[tuple], now: datetime) -> None:
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur, cur.copy(
                    "COPY market_prices (symbol, date, close, source, updated_at) FROM STDIN") as copy:
                for sym, d, close in rows:
                    copy.write_row((sym, d, close, "bench", now))
            raw.commit()
        finally:
            raw.close()
        return
    with Session(engine) as s, s.begin():
        for batch in _batched(rows, 50_000):
            s.execute(MarketPrice.__table__.insert(),
                      [{"symbol": sym, "date": d, "close": c, "source": "bench", "updated_at": now}
                       for sym, d, c in batch])


def _batched(rows: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def ensure_database(url: str) -> None:
    """Create the database of a PostgreSQL `url` when the server does not have it (through its
    `postgres` maintenance database; if that cannot be reached, connecting to `url` itself will
    say why). SQLite files are created on connect."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT",
                          connect_args={"connect_timeout": 10})
    try:
        try:
            db.check_reachable(admin)
        except DatabaseUnavailable:
            return
        with admin.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}).first():
                return
            quoted = parsed.database.replace('"', '""')
            try:
                conn.execute(text(f'CREATE DATABASE "{quoted}"'))
            except DBAPIError as exc:  # e.g. no CREATEDB privilege: one line, not a traceback
                raise DatabaseUnavailable(f"cannot create {describe_url(url)}: {db.describe_error(exc)}") from None
    finally:
        admin.dispose()


def describe_url(url: str) -> str:
    """Where a database URL points, without credentials."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite file {parsed.database}"
    return f"{parsed.get_backend_name()} at {parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}"


def wipe(engine) -> None:
    """Drop everything in the scratch database (tables, views — e.g. a pairwise_correlations view
    over correlation_matrices — and the floor's tables), then migrate to head."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    else:
        raw = engine.raw_connection()  # autocommit (db.make_engine): the PRAGMA applies, outside a transaction
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA foreign_keys=OFF")  # drop in any order
            for kind in ("view", "table"):
                names = cur.execute("SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite_%'",
                                    (kind,)).fetchall()
                for (name,) in names:
                    cur.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
        finally:
            raw.close()
    db.migrate(engine)


def run_job(engine, database_url: str, executor: str | None, workers: int,
            as_of_dates: list[date]) -> tuple[float, dict]:
    """The daily job as one invocation for `as_of_dates` (a backfill of them when several)."""
    settings = Settings.from_env({"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json",
                                  "DASK_SCHEDULER_ADDRESS": os.environ.get("DASK_SCHEDULER_ADDRESS", "")})
    configure_logging(settings.log_format, settings.log_level)  # the table and JSON line stay readable
    request = RunRequest(list(as_of_dates), as_of_dates[0], as_of_dates[-1], force=True, skip_sync=True,
                         trigger="manual")
    started = time.perf_counter()  # worker start-up (processes, a Dask cluster) is part of the wall
    runner = Runner(settings, engine, SampleProvider(),
                    executor=make_executor(executor, workers, settings.dask_scheduler_address))
    summary = runner.run(request)
    return time.perf_counter() - started, summary


def legacy_floor(engine, symbols: int, rows_to_write: int) -> dict[str, float]:
    """Issue #6's floor, kept for continuity: the regression as one batched least-squares (timed
    after the price read) plus as many 4-column rows as the job wrote, into a bare table."""
    days = calendar.sessions_back(AS_OF, 91)
    with Session(engine) as s:
        raw = s.execute(select(MarketPrice.symbol, MarketPrice.date, MarketPrice.close).where(
            MarketPrice.date >= days[0], MarketPrice.date <= AS_OF)).all()
    started = time.perf_counter()
    names = sorted({r[0] for r in raw})
    index = {n: i for i, n in enumerate(names)}
    day_index = {d: i for i, d in enumerate(days)}
    closes = np.full((len(days), len(names)), np.nan)
    for sym, d, c in raw:
        closes[day_index[d], index[sym]] = c
    returns = closes[1:] / closes[:-1] - 1.0
    proxies = [index[p] for p in PROXIES.values()]
    market = returns[:, proxies[0]]
    design = np.column_stack([np.ones(len(market)), market, returns[:, proxies[1:7]] - market[:, None]])
    targets = returns[:, [i for i in range(len(names)) if i not in set(proxies)]]
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    solve = time.perf_counter() - started
    started = time.perf_counter()
    payload = ((i, 1.2345 * i, 0.5, "x") for i in range(rows_to_write))  # streamed, like the job's writes
    if engine.dialect.name == "postgresql":
        raw_conn = engine.raw_connection()
        try:
            with raw_conn.cursor() as cur:
                cur.execute("CREATE TABLE IF NOT EXISTS bench_floor (a bigint, b double precision, "
                            "c double precision, d text)")
                cur.execute("TRUNCATE bench_floor")
                with cur.copy("COPY bench_floor (a, b, c, d) FROM STDIN") as copy:
                    for row in payload:
                        copy.write_row(row)
            raw_conn.commit()
        finally:
            raw_conn.close()
    else:
        raw_conn = engine.raw_connection()
        try:
            cur = raw_conn.cursor()
            cur.execute("CREATE TABLE IF NOT EXISTS bench_floor (a INTEGER, b REAL, c REAL, d TEXT)")
            cur.execute("DELETE FROM bench_floor")
            cur.execute("BEGIN")  # the engine's connections run in autocommit mode (see db.make_engine)
            cur.executemany("INSERT INTO bench_floor (a, b, c, d) VALUES (?, ?, ?, ?)", payload)
            raw_conn.commit()
        finally:
            raw_conn.close()
    write = time.perf_counter() - started
    assert coef.shape[1] == targets.shape[1] == symbols
    return {"regression": solve, "bulk_write": write}


# --- the floor (issue #11 item 7) ------------------------------------------------------------------

# Result numbers the SPEC requires, counted per (portfolio, as-of date) unit from the universe's shape
SNAPSHOT_NUMBERS = 19  # SPEC §4 portfolio_snapshots: total_value … market_beta (data_quality is JSON)
MARKET_RISK_SCENARIOS = 10  # SPEC §6.4: market ±5 %, ±10 %, ±20 %; rates ±100 bp, ±200 bp
GREEKS_PER_OPTION = 5  # SPEC §6.2: delta, gamma, theta, vega, rho
CORRELATION_METRICS = 3  # SPEC §6.6: average |ρ|, weighted correlation, effective positions
JOB_RECORDS = 7  # SPEC §8: seven job records per unit, one number (its duration) each
BETA_STATISTICS = 4  # SPEC §6.3: beta, standard error, t-stat, R² per (symbol, factor)
BETA_WINDOW = 90  # SPEC §6.3: 90 returns from 91 closes
MIN_CORRELATION_VALUE, MIN_CORRELATION_WEIGHT = 10_000.0, 0.01  # SPEC §6.6 defaults
RISK_FREE_RATE = 0.04
PUBLIC_CODE, OPTION_CODE, PRIVATE_CODE = 0, 1, 2
EPOCH = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class FloorInputs:
    """What the floor reads (part a). `closes`: rows = `sessions` (ascending: the window of every
    as-of date), columns = `symbols` (the positions' market symbols and the factor proxies); NaN
    where a symbol has no close. Position arrays are aligned, one entry per position held in the
    range: `unit` indexes `unit_ids`, `symbol` indexes `symbols` (-1: none, e.g. PRIVATE), `kind`
    is PUBLIC_CODE / OPTION_CODE / PRIVATE_CODE, `expiry` is days since 1970-01-01."""

    sessions: list[date]
    symbols: list[str]
    closes: np.ndarray
    proxies: dict[str, tuple[str, str]]  # factor → (kind, proxy symbol), active factors only
    unit_ids: list[uuid.UUID]
    unit: np.ndarray
    symbol: np.ndarray
    kind: np.ndarray
    is_call: np.ndarray
    quantity: np.ndarray
    strike: np.ndarray
    volatility: np.ndarray
    expiry: np.ndarray
    stress_scenarios: int


@dataclass(frozen=True, slots=True)
class DateFit:
    """Part (b) for one as-of date: every fitted symbol's statistics, shape (4, factors, symbols):
    beta, standard error, t-stat, R² for each factor (styles, Market, CAPM and the rate factor)."""

    as_of: date
    statistics: np.ndarray
    factors: int  # factors with data (the multi-factor ones plus the rate factor; CAPM not counted)


@dataclass(frozen=True, slots=True)
class FloorNumbers:
    """How many result numbers each unit needs per group, per as-of date: `per_unit[group]` has one
    count per unit; `per_date[group]` one count for the date (symbol betas, factor correlations)."""

    as_of: date
    per_unit: dict[str, np.ndarray]
    per_date: dict[str, int]

    @property
    def total(self) -> int:
        return int(sum(int(c.sum()) for c in self.per_unit.values()) + sum(self.per_date.values()))


def _held_filter(alias_p: str, alias_f: str) -> str:
    return (f"{alias_f}.deleted_at IS NULL AND {alias_p}.deleted_at IS NULL AND {alias_p}.quantity <> 0 "
            f"AND {alias_p}.entry_date <= :end AND ({alias_p}.exit_date IS NULL OR {alias_p}.exit_date > :start)")


def floor_read(engine, as_of_dates: list[date]) -> FloorInputs:
    """Part (a): the positions of active portfolios and the closes of their market symbols and the
    factor proxies over the SESSIONS sessions before each as-of date, read once for all dates:
    binary COPY parsed straight into numpy on PostgreSQL, one cursor fetch per query on SQLite."""
    sessions = calendar.sessions_back(as_of_dates[-1], SESSIONS + len(as_of_dates) - 1)
    start, end = sessions[0], as_of_dates[-1]
    postgres = engine.dialect.name == "postgresql"
    # positions held at some as-of close of the run; prices over the whole window
    bound = {"start": as_of_dates[0], "end": end} if postgres else \
        {"start": as_of_dates[0].isoformat(), "end": end.isoformat()}
    with engine.connect() as conn:
        definitions = conn.execute(text(
            "SELECT name, kind, proxy_symbol FROM factor_definitions WHERE is_active = :t "
            "AND proxy_symbol IS NOT NULL"), {"t": True}).all()
        proxies = {name: (kind, proxy.strip().upper()) for name, kind, proxy in definitions}
        held = conn.execute(text(
            "SELECT DISTINCT upper(trim(COALESCE(p.underlying_symbol, p.symbol))) FROM positions p "
            "JOIN portfolios f ON f.id = p.portfolio_id WHERE " + _held_filter("p", "f") +
            " AND (p.investment_class IS NULL OR upper(trim(p.investment_class)) <> 'PRIVATE')"), bound).scalars()
        symbols = sorted(set(held) | {proxy for _, proxy in proxies.values()})
        unit_ids = [u if isinstance(u, uuid.UUID) else uuid.UUID(u) for u in conn.execute(text(
            "SELECT id FROM portfolios WHERE deleted_at IS NULL ORDER BY id")).scalars()]
        stress = conn.execute(text("SELECT COUNT(*) FROM stress_scenarios WHERE is_active = :t"),
                              {"t": True}).scalar_one()
        driver = conn.connection.driver_connection
        if postgres:
            prices, positions = _pg_read(driver, symbols, start, as_of_dates[0], end)
        else:
            prices, positions = _sqlite_read(driver, symbols, unit_ids, start, as_of_dates[0], end)
        conn.rollback()
    sym_index, day_offset, close = prices
    lookup = np.full((end - start).days + 1, -1, dtype=np.int64)
    lookup[[(d - start).days for d in sessions]] = np.arange(len(sessions))
    row = lookup[day_offset]
    closes = np.full((len(sessions), len(symbols)), np.nan)
    keep = row >= 0  # a close dated on a non-session day is not part of the window
    closes[row[keep], sym_index[keep]] = close[keep]
    return FloorInputs(sessions, symbols, closes, proxies, unit_ids, stress_scenarios=int(stress), **positions)


def _pg_copy_columns(cursor, statement, types: list[str]) -> list[np.ndarray]:
    """Run a binary COPY whose output is ONE row of arrays — a query's columns each aggregated
    with array_agg, elements fixed-width and never NULL — and return the arrays as numpy (no
    Python object per value; one protocol message instead of one per row, which is what makes a
    row-per-price COPY slow on the client). The format: a 19-byte header (+ extension); per row
    an int16 field count and per field an int32 length and the value; an array value is ndim,
    has-nulls, element type, then length and lower bound per dimension, then per element its
    int32 length and value, all big-endian; an int16 -1 trailer. `types`: numpy dtypes of the
    elements, e.g. ">f8", ">i4", "V16" (uuid)."""
    with cursor.copy(statement) as copy:
        data = b"".join(copy)
    if data[:11] != b"PGCOPY\n\xff\r\n\x00":
        raise RuntimeError("not a PostgreSQL binary COPY stream")
    at = 19 + struct.unpack_from(">i", data, 15)[0]
    fields, = struct.unpack_from(">h", data, at)
    if fields != len(types):
        raise RuntimeError(f"binary COPY: {fields} fields, expected {len(types)}")
    at += 2
    columns = []
    for element in types:
        length, ndim, _, _ = struct.unpack_from(">iiiI", data, at)
        if length < 0:  # array_agg of no rows is NULL
            columns.append(np.empty(0, dtype=np.dtype(element).newbyteorder("=")))
            at += 4
            continue
        count = struct.unpack_from(">i", data, at + 16)[0] if ndim else 0
        dtype = np.dtype([("len", ">i4"), ("v", element)])
        values = np.frombuffer(data, dtype=dtype, count=count, offset=at + 16 + 8 * ndim)
        if (values["len"] != np.dtype(element).itemsize).any():
            raise RuntimeError("binary COPY: an array element is NULL or of another width")
        columns.append(values["v"])
        at += 4 + length
    return columns


def _pg_read(conn, symbols: list[str], start: date, first_as_of: date,
             end: date) -> tuple[tuple, dict[str, np.ndarray]]:
    """Closes in [start, end] as (symbol index, days since `start`, close); positions held at
    some close in [first_as_of, end] as aligned arrays (FloorInputs)."""
    from psycopg import sql

    names = sql.Literal(symbols)
    first, last, held = sql.Literal(start), sql.Literal(end), sql.Literal(first_as_of)
    with conn.cursor() as cur:
        s, d, c = _pg_copy_columns(cur, sql.SQL(
            "COPY (SELECT array_agg((s.i - 1)::int4), array_agg((m.date - {first})::int4), "
            "array_agg(m.close::float8) FROM market_prices m "
            "JOIN unnest({names}::text[]) WITH ORDINALITY AS s(symbol, i) ON m.symbol = s.symbol "
            "WHERE m.date BETWEEN {first} AND {last}) TO STDOUT (FORMAT BINARY)").format(
                names=names, first=first, last=last), [">i4", ">i4", ">f8"])
        # the names are a function scan the planner sizes at 100 rows: without this it joins
        # every position to them in a nested loop (167 s for 500,000 positions × 2,000 symbols)
        cur.execute("SET LOCAL enable_nestloop = off")
        _, unit, symbol, kind, call, quantity, strike, volatility, expiry = _pg_copy_columns(cur, sql.SQL(
            "COPY (SELECT array_agg(p.id), array_agg(u.n), array_agg(COALESCE(s.i - 1, -1)::int4), "
            "array_agg(CASE upper(trim(COALESCE(p.investment_class, ''))) WHEN 'PRIVATE' THEN 2 "
            "WHEN 'OPTIONS' THEN 1 ELSE 0 END), array_agg((p.position_type IN ('LC', 'SC'))::int4), "
            "array_agg(p.quantity::float8), array_agg(COALESCE(p.strike_price::float8, 'NaN')), "
            "array_agg(COALESCE(p.implied_volatility::float8, 'NaN')), "
            "array_agg(COALESCE(p.expiration_date - DATE '1970-01-01', 0)) FROM positions p "
            "JOIN (SELECT id, (row_number() OVER (ORDER BY id) - 1)::int4 AS n FROM portfolios "
            "WHERE deleted_at IS NULL) u ON u.id = p.portfolio_id "
            "LEFT JOIN unnest({names}::text[]) WITH ORDINALITY AS s(symbol, i) "
            "ON s.symbol = upper(trim(COALESCE(p.underlying_symbol, p.symbol))) "
            "WHERE p.deleted_at IS NULL AND p.quantity <> 0 AND p.entry_date <= {last} "
            "AND (p.exit_date IS NULL OR p.exit_date > {held})) TO STDOUT (FORMAT BINARY)").format(
                names=names, held=held, last=last),
            ["V16", ">i4", ">i4", ">i4", ">i4", ">f8", ">f8", ">f8", ">i4"])
    return (s.astype(np.int64), d.astype(np.int64), c.astype(np.float64)), {
        "unit": unit.astype(np.int64), "symbol": symbol.astype(np.int64), "kind": kind.astype(np.int64),
        "is_call": call == 1, "quantity": quantity.astype(np.float64), "strike": strike.astype(np.float64),
        "volatility": volatility.astype(np.float64), "expiry": expiry.astype(np.int64)}


def _sqlite_read(conn, symbols: list[str], unit_ids: list[uuid.UUID], start: date, first_as_of: date,
                 end: date) -> tuple[tuple, dict[str, np.ndarray]]:
    """As `_pg_read`, by one cursor fetch per query (dates are ISO text on SQLite)."""
    cur = conn.cursor()
    rows = cur.execute("SELECT symbol, date, close FROM market_prices WHERE date BETWEEN ? AND ? "
                       "AND symbol IN (SELECT value FROM json_each(?))",
                       (start.isoformat(), end.isoformat(), json.dumps(symbols))).fetchall()
    names, days, closes = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [])
    index = {s: i for i, s in enumerate(symbols)}
    origin = np.datetime64(start.isoformat(), "D")
    prices = (np.array([index[n] for n in names], dtype=np.int64),
              (np.array(days, dtype="datetime64[D]") - origin).astype(np.int64), np.array(closes, dtype=np.float64))
    units = {u.hex: i for i, u in enumerate(unit_ids)}
    positions = cur.execute(
        "SELECT p.id, p.portfolio_id, upper(trim(COALESCE(p.underlying_symbol, p.symbol))), "
        "upper(trim(COALESCE(p.investment_class, ''))), p.position_type, p.quantity, p.strike_price, "
        "p.implied_volatility, p.expiration_date FROM positions p JOIN portfolios f ON f.id = p.portfolio_id "
        "WHERE " + _held_filter("p", "f").replace(":end", "?").replace(":start", "?"),
        (end.isoformat(), first_as_of.isoformat())).fetchall()
    cur.close()
    _, pids, syms, kinds, types, qty, strike, vol, expiry = (
        list(c) for c in zip(*positions, strict=True)) if positions else ([],) * 9
    codes = {"PRIVATE": PRIVATE_CODE, "OPTIONS": OPTION_CODE}
    return prices, {
        "unit": np.array([units[p] for p in pids], dtype=np.int64),
        "symbol": np.array([index.get(s, -1) for s in syms], dtype=np.int64),
        "kind": np.array([codes.get(k, PUBLIC_CODE) for k in kinds], dtype=np.int64),
        "is_call": np.array([t in ("LC", "SC") for t in types], dtype=bool),
        "quantity": np.array(qty, dtype=np.float64),
        "strike": np.array([np.nan if v is None else v for v in strike], dtype=np.float64),
        "volatility": np.array([np.nan if v is None else v for v in vol], dtype=np.float64),
        "expiry": (np.array([e or "1970-01-01" for e in expiry], dtype="datetime64[D]")
                   - np.datetime64("1970-01-01", "D")).astype(np.int64)}


def floor_regression(inputs: FloorInputs, as_of_dates: list[date]) -> list[DateFit]:
    """Part (b): for each as-of date, every symbol's OLS on the 90 returns ending there, batched
    over symbols (SPEC §6.3): market beta plus style betas on style-minus-market returns with
    standard errors, t-stats and R², and the univariate CAPM and rate-factor fits. The benchmark
    universe has no gaps, so no row is dropped (a NaN would spread to that symbol's statistics)."""
    column = {s: i for i, s in enumerate(inputs.symbols)}
    market = next((column[p] for k, p in inputs.proxies.values() if k == "market"), None)
    rates = [column[p] for k, p in inputs.proxies.values() if k == "rates"]
    styles = [column[p] for k, p in inputs.proxies.values() if k == "style"]
    proxy_columns = {column[p] for _, p in inputs.proxies.values()}
    targets = [i for i in range(len(inputs.symbols)) if i not in proxy_columns]
    row_of = {d: i for i, d in enumerate(inputs.sessions)}
    fits = []
    for as_of in as_of_dates:
        end = row_of[as_of]
        window = inputs.closes[end - BETA_WINDOW:end + 1]
        returns = window[1:] / window[:-1] - 1.0
        y = returns[:, targets]
        m = returns[:, market]
        x = np.column_stack([np.ones(len(m)), m, returns[:, styles] - m[:, None]])
        multi = _statistics(x, y)[:, 1:]  # without the intercept
        single = [_statistics(np.column_stack([np.ones(len(m)), returns[:, c]]), y)[:, 1:2]
                  for c in [market, *rates]]
        fits.append(DateFit(as_of, np.concatenate([multi, *single], axis=1), factors=x.shape[1] - 1 + len(rates)))
    return fits


def _statistics(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS of each column of `y` on `x` (full column rank) through one QR of `x`: (4, regressors,
    columns) of coefficient, standard error, t-stat and R² (repeated per regressor). Not
    `np.linalg.lstsq`: its SVD path with a threaded OpenBLAS took ~0.3 s here for 90 × 8 against
    2,000 columns where the QR solve takes under 1 ms."""
    q, r = np.linalg.qr(x)
    coef = np.linalg.solve(r, q.T @ y)
    residuals = y - x @ coef
    n, k = x.shape
    ssr = (residuals ** 2).sum(axis=0)
    se = np.sqrt(np.outer(np.diag(np.linalg.inv(x.T @ x)), ssr / (n - k)))
    r2 = 1.0 - ssr / ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    return np.stack([coef, se, coef / se, np.broadcast_to(r2, coef.shape)])


def floor_numbers(inputs: FloorInputs, fit: DateFit) -> FloorNumbers:
    """How many result numbers the SPEC requires for `fit.as_of`, from the universe's shape (not
    from what the job stored): per unit one number per position-factor exposure (public and
    option positions with a market symbol × factors with data), per portfolio-factor exposure,
    per market-risk scenario, two per stress scenario (direct, correlated), one per snapshot
    column, per correlation pair of the upper triangle of the correlation-eligible symbols (SPEC
    §6.6: |value| ≥ 10,000 and ≥ 1 % of gross; options by Black–Scholes dollar delta) plus the
    three correlation metrics, five Greeks per option, one per job record; per date four per
    fitted (symbol, factor) and one per factor-correlation pair."""
    units = len(inputs.unit_ids)
    day = inputs.sessions.index(fit.as_of)
    t = inputs.kind
    market = (t != PRIVATE_CODE) & (inputs.symbol >= 0)
    spot = np.where(inputs.symbol >= 0, inputs.closes[day, np.maximum(inputs.symbol, 0)], np.nan)
    options = market & (t == OPTION_CODE)
    price, delta = _black_scholes(spot[options], inputs.strike[options], inputs.volatility[options],
                                  (inputs.expiry[options] - (fit.as_of - EPOCH).days) / 365.0, inputs.is_call[options])
    exposure = inputs.quantity * spot  # stocks: market value; options: dollar delta (below)
    exposure[options] = inputs.quantity[options] * 100.0 * delta * spot[options]
    value = inputs.quantity * spot
    value[options] = inputs.quantity[options] * 100.0 * price
    gross = np.bincount(inputs.unit[market], weights=np.abs(value[market]), minlength=units)
    key = inputs.unit[market] * len(inputs.symbols) + inputs.symbol[market]
    keys, where = np.unique(key, return_inverse=True)
    per_symbol = np.bincount(where, weights=exposure[market], minlength=len(keys))
    owner = keys // len(inputs.symbols)
    eligible = (np.abs(per_symbol) >= MIN_CORRELATION_VALUE) & (
        np.abs(per_symbol) >= MIN_CORRELATION_WEIGHT * np.where(gross[owner] > 0, gross[owner], np.inf))
    kept = np.bincount(owner[eligible], minlength=units)
    correlations = np.where(kept >= 2, kept * (kept - 1) // 2 + CORRELATION_METRICS, 0)
    analysed = np.bincount(inputs.unit[market], minlength=units)
    factors_with_data = fit.factors
    per_unit = {
        "position_factor_exposures": analysed * factors_with_data,
        "portfolio_factor_exposures": np.where(analysed > 0, factors_with_data, 0),
        "market_risk": np.where(analysed > 0, MARKET_RISK_SCENARIOS, 0),
        "stress": np.where(analysed > 0, 2 * inputs.stress_scenarios, 0),
        "snapshot": np.full(units, SNAPSHOT_NUMBERS),
        "correlations": correlations,
        "greeks": np.bincount(inputs.unit[t == OPTION_CODE], minlength=units) * GREEKS_PER_OPTION,
        "job_records": np.full(units, JOB_RECORDS),
    }
    k = fit.factors
    return FloorNumbers(fit.as_of, {g: c.astype(np.int64) for g, c in per_unit.items()},
                        {"symbol_betas": int(np.prod(fit.statistics.shape)), "factor_correlations": k * (k - 1) // 2})


def _black_scholes(spot, strike, volatility, years, is_call) -> tuple[np.ndarray, np.ndarray]:
    """Price and delta per contract (no dividend; volatility: the position's implied volatility, 0.3
    when it has none — every option of the benchmark universe has one); an expired option:
    intrinsic value, delta 0. Used only to decide which symbols are correlation-eligible."""
    vol = np.where(np.isfinite(volatility), volatility, 0.3)
    live = years > 0
    tau = np.where(live, years, 1.0)
    d1 = (np.log(spot / strike) + (RISK_FREE_RATE + 0.5 * vol ** 2) * tau) / (vol * np.sqrt(tau))
    d2 = d1 - vol * np.sqrt(tau)
    discount = np.exp(-RISK_FREE_RATE * tau)
    call = spot * ndtr(d1) - strike * discount * ndtr(d2)
    put = strike * discount * ndtr(-d2) - spot * ndtr(-d1)
    price = np.where(is_call, call, put)
    delta = np.where(is_call, ndtr(d1), ndtr(d1) - 1.0)
    intrinsic = np.where(is_call, np.maximum(spot - strike, 0.0), np.maximum(strike - spot, 0.0))
    return np.where(live, price, intrinsic), np.where(live, delta, 0.0)


FLOOR_CHUNK = 500  # units encoded and sent per COPY write: the floor's memory stays flat


def floor_write(engine, inputs: FloorInputs, fits: list[DateFit], numbers: list[FloorNumbers]) -> float:
    """Part (c): every group's numbers of each unit and date as one row (unit key, as-of date, the
    numbers as one float8[] in order — the most compact representation that keeps each unit
    addressable, so no storage layout of the job can be cheaper) into unindexed scratch tables,
    by binary COPY on PostgreSQL (encoded with numpy) and one executemany of float64 BLOBs on
    SQLite, in one transaction. Returns the seconds from the first encoded byte to the commit;
    the tables are created (and the numbers' values drawn) before the clock starts."""
    groups = [*numbers[0].per_unit, *numbers[0].per_date]
    pool = np.random.default_rng(0).normal(size=1 << 20)  # stand-ins for the computed values
    postgres = engine.dialect.name == "postgresql"
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for g in groups:
            cur.execute(f"DROP TABLE IF EXISTS bench_floor_{g}")
            cur.execute(f"CREATE TABLE bench_floor_{g} (unit {'uuid' if postgres else 'TEXT'}, as_of_date "
                        f"{'date' if postgres else 'TEXT'}, v {'float8[]' if postgres else 'BLOB'})")
            if postgres:  # random floats do not compress: do not try (out-of-line storage as usual)
                cur.execute(f"ALTER TABLE bench_floor_{g} ALTER COLUMN v SET STORAGE EXTERNAL")
        raw.commit()
        cur.close()
        nil = uuid.UUID(int=0)
        started = time.perf_counter()
        cur = raw.cursor()
        if not postgres:
            cur.execute("BEGIN")  # the engine's SQLite connections run in autocommit mode (db.make_engine)
        for g in groups:
            rows = []  # (unit, as-of, values) in chunks
            for count, fit in zip(numbers, fits, strict=True):
                if g in count.per_unit:
                    rows += [(inputs.unit_ids[u], fit.as_of, n) for u, n in enumerate(count.per_unit[g]) if n]
                elif g == "symbol_betas" and fit.statistics.size:
                    rows.append((nil, fit.as_of, fit.statistics.ravel()))
                elif count.per_date[g]:
                    rows.append((nil, fit.as_of, count.per_date[g]))
            if postgres:
                with cur.copy(f"COPY bench_floor_{g} (unit, as_of_date, v) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
                    for i in range(0, len(rows), FLOOR_CHUNK):
                        copy.write(_pg_array_rows(rows[i:i + FLOOR_CHUNK], pool))
                    copy.write(struct.pack(">h", -1))
            else:
                for i in range(0, len(rows), FLOOR_CHUNK):
                    cur.executemany(f"INSERT INTO bench_floor_{g} (unit, as_of_date, v) VALUES (?, ?, ?)",
                                    [(u.hex, d.isoformat(), _values(v, pool).tobytes())
                                     for u, d, v in rows[i:i + FLOOR_CHUNK]])
        raw.commit()
        return time.perf_counter() - started
    finally:
        raw.close()


def _values(v, pool: np.ndarray) -> np.ndarray:
    """A row's numbers: the array itself, or `v` stand-in values from the pool (a view: no copy)."""
    if isinstance(v, np.ndarray):
        return v
    return pool[:int(v)] if v <= len(pool) else np.resize(pool, int(v))


PG_DATE_EPOCH = date(2000, 1, 1)


def _pg_array_rows(rows, pool: np.ndarray) -> bytes:
    """Binary COPY rows (uuid, date, float8[]): per row the field count, each field's length and
    value; an array is ndim, has-nulls, element type (701 float8), its length and lower bound,
    then per element its length (8) and value, all big-endian."""
    values = [_values(v, pool) for _, _, v in rows]
    elements = np.empty(sum(len(v) for v in values), dtype=[("len", ">i4"), ("v", ">f8")])
    elements["len"] = 8
    elements["v"] = np.concatenate(values) if values else []
    body = elements.tobytes()
    parts, at = [], 0
    for (unit, as_of, _), v in zip(rows, values, strict=True):
        n = len(v)
        parts.append(struct.pack(">hi16sii" "iiiIii", 3, 16, unit.bytes, 4, (as_of - PG_DATE_EPOCH).days,
                                 20 + 12 * n, 1, 0, 701, n, 1))
        parts.append(body[at:at + 12 * n])
        at += 12 * n
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Floor:
    """The floor's parts in seconds and the numbers it wrote."""

    read: float
    regression: float
    write: float
    numbers: int
    per_group: dict[str, int]

    @property
    def seconds(self) -> float:
        return self.read + self.regression + self.write


def floor(engine, as_of_dates: list[date]) -> Floor:
    """The honest floor, measured: (a) read, (b) regression, (c) write (see the module docstring)."""
    started = time.perf_counter()
    inputs = floor_read(engine, as_of_dates)
    read = time.perf_counter() - started
    started = time.perf_counter()
    fits = floor_regression(inputs, as_of_dates)
    regression = time.perf_counter() - started
    numbers = [floor_numbers(inputs, fit) for fit in fits]  # bookkeeping of the benchmark: not timed
    write = floor_write(engine, inputs, fits, numbers)
    per_group: dict[str, int] = {}
    for n in numbers:
        for g, c in n.per_unit.items():
            per_group[g] = per_group.get(g, 0) + int(c.sum())
        for g, c in n.per_date.items():
            per_group[g] = per_group.get(g, 0) + c
    return Floor(read, regression, write, sum(n.total for n in numbers), per_group)


def count_result_rows(engine) -> int:
    """Rows in the result tables: base tables only, so pairs stored in `correlation_matrices`
    (with `pairwise_correlations` a view over it) count one row per matrix, not per pair; a
    database from before migration 0003 (pairs in a `pairwise_correlations` table) counts pairs."""
    tables = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        return sum(conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar()
                   for t in (*RESULT_TABLES, "pairwise_correlations") if t in tables)


def job_seconds(engine, run_id: str) -> dict[str, float]:
    with Session(engine) as s:
        rows = s.execute(select(BatchJobResult.job, func.sum(BatchJobResult.duration_ms)).where(
            BatchJobResult.run_id == uuid.UUID(run_id)).group_by(BatchJobResult.job)).all()
    return {job: round(ms / 1000.0, 3) for job, ms in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--portfolios", type=int, default=100)
    parser.add_argument("--positions", type=int, default=50, help="positions per portfolio")
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--dates", type=int, default=1,
                        help=f"run the job as a backfill of the last N sessions ending at {AS_OF} (default 1)")
    parser.add_argument("--database-url", help="scratch database (wiped); default: a temporary SQLite file")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1, help="worker processes for the portfolio stage")
    parser.add_argument("--executor", choices=EXECUTORS, help="as the job's --executor")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args(argv)
    if args.positions > args.symbols:
        parser.error("--positions cannot exceed --symbols")
    if args.dates < 1:
        parser.error(f"--dates must be at least 1, got {args.dates}")
    as_of_dates = calendar.sessions_back(AS_OF, args.dates)
    scratch = None
    url = args.database_url
    if not url:
        scratch = tempfile.TemporaryDirectory(prefix="sigmasight-bench-")
        url = f"sqlite:///{Path(scratch.name) / 'bench.db'}"
    try:
        url = normalise_database_url(url, source="--database-url")
        ensure_database(url)
        engine = db.make_engine(url)
        db.check_reachable(engine)
    except (ConfigError, DatabaseUnavailable) as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    try:
        wipe(engine)
        t0 = time.perf_counter()
        counts = build_universe(engine, args.portfolios, args.positions, args.symbols, args.seed,
                                sessions=SESSIONS + args.dates - 1)
        build_seconds = time.perf_counter() - t0
        wall, summary = run_job(engine, url, args.executor, args.workers, as_of_dates)
        # the job's peak, before the floor reads anything; ru_maxrss is in KiB on Linux
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        # the largest worker process (0 for a serial run)
        worker_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        if summary["exit_code"] != 0:
            print(json.dumps(summary), file=sys.stderr)
            raise SystemExit(f"the daily job failed (exit {summary['exit_code']})")
        rows_written = count_result_rows(engine)
        jobs = job_seconds(engine, summary["run_id"])
        measured = floor(engine, as_of_dates)
        legacy_parts = legacy_floor(engine, args.symbols, rows_written)
    finally:
        engine.dispose()
        if scratch is not None:
            scratch.cleanup()
    legacy_seconds = sum(legacy_parts.values())
    units = counts["portfolios"] * args.dates
    report = {
        "portfolios": counts["portfolios"], "positions": counts["positions"], "symbols": counts["symbols"],
        "dates": args.dates, "as_of_start": as_of_dates[0].isoformat(), "as_of_end": as_of_dates[-1].isoformat(),
        "units": units, "database": engine.dialect.name, "wall_seconds": round(wall, 4),
        "seconds_per_date": round(wall / args.dates, 4),
        "stage_seconds": {**summary["stage_seconds"], "jobs": jobs},
        "floor_seconds": round(measured.seconds, 6),
        "floor_parts": {"read": round(measured.read, 6), "regression": round(measured.regression, 6),
                        "write": round(measured.write, 6)},
        "floor_seconds_per_date": round(measured.seconds / args.dates, 6),
        "floor_numbers": measured.numbers, "floor_numbers_by_group": measured.per_group,
        "ratio_to_floor": round(wall / measured.seconds, 2) if measured.seconds else None,
        "legacy_floor_seconds": round(legacy_seconds, 6),
        "legacy_floor_parts": {k: round(v, 6) for k, v in legacy_parts.items()},
        "legacy_ratio_to_floor": round(wall / legacy_seconds, 2) if legacy_seconds else None,
        "positions_per_second": round(counts["positions"] * args.dates / wall, 1),
        "result_rows": rows_written, "build_seconds": round(build_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb, 1), "peak_worker_rss_mb": round(worker_rss_mb, 1),
        "executor": args.executor or ("processes" if args.workers > 1 else "serial"), "workers": args.workers,
        "engines": [e.name for e in ENGINES],
    }
    lines = [("portfolios", report["portfolios"]), ("positions", report["positions"]),
             ("symbols", report["symbols"]), ("dates", f"{report['dates']} ({report['as_of_start']}.."
                                                        f"{report['as_of_end']})"),
             ("database", report["database"]), ("wall seconds", report["wall_seconds"])]
    lines += [(f"  {stage}", seconds) for stage, seconds in summary["stage_seconds"].items()]
    lines += [("floor seconds", report["floor_seconds"])]
    lines += [(f"  {part}", seconds) for part, seconds in report["floor_parts"].items()]
    lines += [("  numbers written", report["floor_numbers"]),
              ("ratio to floor", report["ratio_to_floor"]),
              ("legacy floor seconds", report["legacy_floor_seconds"]),
              ("positions / second", report["positions_per_second"]),
              ("peak RSS (MB)", report["peak_rss_mb"]), ("peak worker RSS (MB)", report["peak_worker_rss_mb"])]
    for label, value in lines:
        print(f"{label:<22}{value!s:>26}")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
