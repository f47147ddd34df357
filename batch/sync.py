"""Market-data and company-profile sync (SPEC §5.2, §5.3), run once per run before the engines."""

from __future__ import annotations

import contextvars
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pandas as pd
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from batch import calendar, repository
from batch.db import upsert
from batch.providers import MarketDataProvider
from models import CompanyProfile, MarketPrice

log = structlog.get_logger()

# The regression, volatility and EWMA windows need ~260 sessions; fetch 300 before the as-of.
HISTORY_SESSIONS = 300
PROFILE_MAX_AGE_DAYS = 7
PROFILE_WORKERS = 4
PROFILE_TIMEOUT_SECONDS = 30.0  # per symbol
# Per-symbol failures that say the provider has no such data, not that it is unreachable.
PERMANENT_REASONS = frozenset({"unknown_symbol", "no_data"})


@dataclass
class MarketDataResult:
    symbols_requested: int = 0
    symbols_updated: int = 0
    rows_written: int = 0
    failed_symbols: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    rejected_rows: list[dict[str, Any]] = field(default_factory=list)
    window: tuple[str, str] | None = None

    @property
    def all_failed(self) -> bool:
        """True when the provider failed every requested symbol and not merely because it does
        not know them (an unreachable provider, SPEC §5.3)."""
        return (self.symbols_requested > 0 and len(self.failures) == self.symbols_requested
                and any(reason not in PERMANENT_REASONS for reason in self.failures.values()))

    def summary(self) -> dict[str, Any]:
        return {"symbols_requested": self.symbols_requested, "symbols_updated": self.symbols_updated,
                "rows_written": self.rows_written, "failed_symbols": self.failed_symbols}

    def result(self) -> dict[str, Any]:
        return {**self.summary(), "failures": self.failures, "rejected_rows": self.rejected_rows[:50],
                "rejected_count": len(self.rejected_rows), "window": self.window}


def history_start(first_as_of: date, coverage: tuple[date, date] | None) -> date:
    """First session of the price window for a run whose earliest as-of session is `first_as_of`
    (HISTORY_SESSIONS sessions ending there), no earlier than the provider's coverage."""
    start = calendar.sessions_back(first_as_of, HISTORY_SESSIONS)[0]
    return max(start, coverage[0]) if coverage is not None else start


def validate_prices(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Drop rows that must not be stored: non-finite, zero or negative closes, dates that are not
    NYSE sessions (or not dates at all); duplicate (symbol, date) rows keep the last valid one and
    report an overridden different value (`duplicate_superseded`). Unusable open/high/low/volume values are blanked
    (`invalid_ohlc`) while the close is kept. Returns (clean rows ready to store, rejected), each
    rejected entry naming symbol, date, value and reason."""
    rejected: list[dict[str, Any]] = []
    keep: list[bool] = []
    records: list[dict[str, Any]] = []
    for row in rows.itertuples(index=False):
        reason = _close_problem(row.close) or _date_problem(row.date)
        if reason:
            rejected.append(_rejection(row, reason))
            keep.append(False)
            continue
        keep.append(True)
        fields = {"open": _positive(row.open), "high": _positive(row.high), "low": _positive(row.low),
                  "volume": _volume(row.volume)}
        blanked = [k for k, v in fields.items() if v is None and not _missing(getattr(row, k))]
        if blanked:
            rejected.append({**_rejection(row, "invalid_ohlc"), "fields": blanked})
        records.append({"symbol": row.symbol, "date": row.date, "close": float(row.close), **fields})
    clean = pd.DataFrame(records, columns=["symbol", "date", "open", "high", "low", "close", "volume"])
    superseded = clean.duplicated(subset=["symbol", "date"], keep="last")
    kept = clean[~superseded].reset_index(drop=True)
    final = {(r.symbol, r.date): r.close for r in kept.itertuples(index=False)}
    for row in clean[superseded].itertuples(index=False):
        if row.close != final[(row.symbol, row.date)]:  # a different value was overridden
            rejected.append(_rejection(row, "duplicate_superseded"))
    return kept, rejected


def _rejection(row: Any, reason: str) -> dict[str, Any]:
    day = row.date.isoformat() if hasattr(row.date, "isoformat") else repr(row.date)
    return {"symbol": row.symbol, "date": day, "close": repr(row.close), "reason": reason}


def _close_problem(close: Any) -> str | None:
    try:
        value = float(close)
    except (TypeError, ValueError):
        return "non_numeric_close"
    if not math.isfinite(value):
        return "non_finite_close"
    return "non_positive_close" if value <= 0 else None


def _date_problem(day: Any) -> str | None:
    if type(day) is not date:  # datetime, Timestamp, None, text: not a session date
        return "invalid_date"
    try:
        return None if calendar.is_trading_day(day) else "not_a_session"
    except ValueError:  # outside the calendar's range (e.g. an epoch-zero timestamp)
        return "not_a_session"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _volume(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number >= 0 else None


def sync_market_data(session: Session, provider: MarketDataProvider, as_of_dates: Sequence[date],
                     portfolio_ids: Sequence[uuid.UUID] | None, now: datetime) -> MarketDataResult:
    """Fetch only the sessions missing from `market_prices` over the history window of the run's
    dates, for held symbols plus factor proxies, validate, and upsert on (symbol, date)."""
    result = MarketDataResult()
    first, last = min(as_of_dates), max(as_of_dates)
    coverage = provider.coverage()
    start = history_start(first, coverage)
    end = min(last, coverage[1]) if coverage else last
    result.window = (start.isoformat(), end.isoformat())
    symbols = sorted(set(repository.symbols_held(session, first, last, portfolio_ids))
                     | set(repository.active_factor_proxies(session)))
    needed = calendar.trading_days(start, end) if start <= end else []
    have = repository.existing_price_dates(session, symbols, start, end)
    ranges: dict[tuple[date, date], list[str]] = defaultdict(list)
    for symbol in symbols:
        missing = [d for d in needed if d not in have[symbol]]
        if missing:
            ranges[(missing[0], missing[-1])].append(symbol)
    result.symbols_requested = sum(len(v) for v in ranges.values())
    updated: set[str] = set()
    for (lo, hi), group in sorted(ranges.items()):
        batch = provider.get_daily_prices(group, lo, hi)
        result.failures.update(batch.failed)
        clean, rejected = validate_prices(batch.rows)
        result.rejected_rows.extend(rejected)
        if clean.empty:
            continue
        records = [{**r, "volume": None if r["volume"] is None else int(r["volume"]),
                    "source": provider.name, "updated_at": now}
                   for r in clean.astype(object).where(clean.notna(), None).to_dict("records")]
        result.rows_written += upsert(session, MarketPrice, records, key=("symbol", "date"))
        updated.update(clean["symbol"].unique())
    result.symbols_updated = len(updated)
    result.failed_symbols = sorted(result.failures)
    log.info("market_data_synced", **result.summary(), window=result.window,
             rejected=len(result.rejected_rows))
    return result



def sync_company_profiles(session: Session, provider: MarketDataProvider, symbols: Sequence[str],
                          now: datetime) -> dict[str, Any]:
    """Refresh profiles missing or older than PROFILE_MAX_AGE_DAYS for equity-like symbols (index
    proxies such as `^GSPC` have none). Returns {status, total, successful, failed,
    duration_seconds, failed_symbols}. Never raises for a provider failure."""
    started = time.monotonic()
    wanted = [s for s in symbols if not s.startswith("^")]
    fresh = {
        s for s, updated in session.execute(
            select(CompanyProfile.symbol, CompanyProfile.updated_at).where(CompanyProfile.symbol.in_(wanted)))
        if updated is not None and (now - _aware(updated, now)).days < PROFILE_MAX_AGE_DAYS
    }
    todo = [s for s in wanted if s not in fresh]
    profiles, failures = fetch_profiles(provider, todo)
    records = []
    for p in profiles:
        records.append({
            "symbol": p["symbol"], "company_name": p.get("company_name"), "sector": p.get("sector"),
            "industry": p.get("industry"), "exchange": p.get("exchange"), "country": p.get("country"),
            "market_cap": p.get("market_cap"), "is_etf": bool(p.get("is_etf", False)),
            "source": provider.name, "updated_at": now,
        })
    upsert(session, CompanyProfile, records, key=("symbol",))
    failed = sorted(failures)
    summary = {
        "status": "success" if not failed else ("failed" if not records else "partial"),
        "total": len(todo), "successful": len(records), "failed": len(failed),
        "duration_seconds": round(time.monotonic() - started, 3), "failed_symbols": failed,
        "already_fresh": len(fresh), "failures": failures,
    }
    log.info("company_profiles_synced", **{k: v for k, v in summary.items() if k != "failed_symbols"})
    return summary


def fetch_profiles(provider: MarketDataProvider, symbols: Sequence[str], *,
                   workers: int = PROFILE_WORKERS, timeout: float = PROFILE_TIMEOUT_SECONDS
                   ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One profile request per symbol, at most `workers` at a time, each given `timeout` seconds
    (a late one is reported `timeout`). Any error is that symbol's failure, never the run's."""
    profiles: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    if not symbols:
        return profiles, failures
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="profiles")
    try:  # each task runs in a copy of this context, so its log events keep run_id
        futures = {symbol: pool.submit(contextvars.copy_context().run, provider.get_company_profiles, [symbol])
                   for symbol in symbols}
        for symbol, future in futures.items():
            try:
                batch = future.result(timeout=timeout)
            except FutureTimeout:
                failures[symbol] = "timeout"
                continue
            except Exception as exc:  # non-blocking step: every error is this symbol's failure
                failures[symbol] = getattr(exc, "reason", type(exc).__name__)
                continue
            profiles.extend(batch.profiles)
            failures.update(batch.failed)
    finally:  # leave no threads behind: a late call ends at its HTTP timeout
        pool.shutdown(wait=True, cancel_futures=True)
    return profiles, failures


def _aware(value: datetime, like: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: read them as UTC."""
    if value.tzinfo is None and like.tzinfo is not None:
        return value.replace(tzinfo=like.tzinfo)
    return value
