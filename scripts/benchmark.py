"""Benchmark the daily job against its floor (issue #6).

Builds a synthetic but realistic universe in a scratch database — `--symbols` symbols with a
factor structure over 300 sessions ending at the as-of date, `--portfolios` books of
`--positions` positions with a share of shorts, listed options and PRIVATE holdings — then, in one
process and one run, times:

(a) the daily job for the as-of date end to end (sync skipped: prices are pre-loaded), split by
    stage (global engines — symbol betas and factor covariance —, the portfolio stage, and within
    it the bulk writes; per-job totals from `batch_job_results`), serially or with `--workers N`
    / `--executor dask` exactly as the job takes them;
(b) the floor: the same regression done as one batched numpy least-squares for every symbol, plus
    writing as many rows as the job wrote with the driver's fastest bulk path (PostgreSQL `COPY`,
    SQLite `executemany`).

Prints a table, and with `--json` one JSON object on the last line. Usage:

    python scripts/benchmark.py --portfolios 100 --positions 50 --symbols 2000 [--database-url URL]
                                [--workers N] [--executor serial|processes|dask] [--json]

The database named by --database-url is wiped (every table of the schema) before use; a missing
PostgreSQL database is created first. A bad URL or an unreachable server is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a plain checkout too

import numpy as np  # noqa: E402 - after the path set-up above
from sqlalchemy import create_engine, func, select, text  # noqa: E402
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
    Base,
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
RESULT_TABLES = ("position_factor_exposures", "portfolio_factor_exposures", "position_greeks",
                 "market_risk_results", "stress_test_results", "correlation_runs", "correlation_matrices",
                 "correlation_clusters", "portfolio_snapshots", "symbol_factor_betas", "factor_correlations")


def build_universe(engine, portfolios: int, positions: int, symbols: int, seed: int) -> dict[str, int]:
    """Fill an empty, migrated database. Returns counts."""
    rng = np.random.default_rng(seed)
    days = calendar.sessions_back(AS_OF, SESSIONS)
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
            conn.execute(text(f'CREATE DATABASE "{quoted}"'))
    finally:
        admin.dispose()


def wipe(engine) -> None:
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        conn.execute(text("DROP TABLE IF EXISTS bench_floor"))
    db.migrate(engine)


def run_job(engine, database_url: str, executor: str | None, workers: int) -> tuple[float, dict]:
    settings = Settings.from_env({"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json",
                                  "DASK_SCHEDULER_ADDRESS": os.environ.get("DASK_SCHEDULER_ADDRESS", "")})
    configure_logging(settings.log_format, settings.log_level)  # the table and JSON line stay readable
    request = RunRequest([AS_OF], AS_OF, AS_OF, force=True, skip_sync=True, trigger="manual")
    started = time.perf_counter()  # worker start-up (processes, a Dask cluster) is part of the wall
    runner = Runner(settings, engine, SampleProvider(),
                    executor=make_executor(executor, workers, settings.dask_scheduler_address))
    summary = runner.run(request)
    return time.perf_counter() - started, summary


def floor(engine, symbols: int, rows_to_write: int) -> dict[str, float]:
    """The regression as one batched least-squares plus the same number of rows written in bulk."""
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


def count_result_rows(engine) -> int:
    with engine.connect() as conn:
        return sum(conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in RESULT_TABLES)


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
    parser.add_argument("--database-url", help="scratch database (wiped); default: a temporary SQLite file")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1, help="worker processes for the portfolio stage")
    parser.add_argument("--executor", choices=EXECUTORS, help="as the job's --executor")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args(argv)
    if args.positions > args.symbols:
        parser.error("--positions cannot exceed --symbols")
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
        counts = build_universe(engine, args.portfolios, args.positions, args.symbols, args.seed)
        build_seconds = time.perf_counter() - t0
        wall, summary = run_job(engine, url, args.executor, args.workers)
        if summary["exit_code"] != 0:
            print(json.dumps(summary), file=sys.stderr)
            raise SystemExit(f"the daily job failed (exit {summary['exit_code']})")
        rows_written = count_result_rows(engine)
        jobs = job_seconds(engine, summary["run_id"])
        floor_parts = floor(engine, args.symbols, rows_written)
    finally:
        engine.dispose()
        if scratch is not None:
            scratch.cleanup()
    floor_seconds = sum(floor_parts.values())
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    # the largest worker process (0 for a serial run); ru_maxrss is in KiB on Linux
    worker_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    report = {
        "portfolios": counts["portfolios"], "positions": counts["positions"], "symbols": counts["symbols"],
        "database": engine.dialect.name, "wall_seconds": round(wall, 4),
        "stage_seconds": {**summary["stage_seconds"], "jobs": jobs},
        "floor_seconds": round(floor_seconds, 6),
        "floor_parts": {k: round(v, 6) for k, v in floor_parts.items()},
        "ratio_to_floor": round(wall / floor_seconds, 2) if floor_seconds else None,
        "positions_per_second": round(counts["positions"] / wall, 1),
        "result_rows": rows_written, "build_seconds": round(build_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb, 1), "peak_worker_rss_mb": round(worker_rss_mb, 1),
        "executor": args.executor or ("processes" if args.workers > 1 else "serial"), "workers": args.workers,
        "engines": [e.name for e in ENGINES],
    }
    print(f"{'portfolios':<22}{report['portfolios']:>12}")
    print(f"{'positions':<22}{report['positions']:>12}")
    print(f"{'symbols':<22}{report['symbols']:>12}")
    print(f"{'database':<22}{report['database']:>12}")
    print(f"{'wall seconds':<22}{report['wall_seconds']:>12}")
    for stage, seconds in summary["stage_seconds"].items():
        print(f"  {stage:<20}{seconds:>12}")
    print(f"{'floor seconds':<22}{report['floor_seconds']:>12}")
    print(f"{'ratio to floor':<22}{report['ratio_to_floor']:>12}")
    print(f"{'positions / second':<22}{report['positions_per_second']:>12}")
    print(f"{'peak RSS (MB)':<22}{report['peak_rss_mb']:>12}")
    print(f"{'peak worker RSS (MB)':<22}{report['peak_worker_rss_mb']:>12}")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
