"""Market-data and company-profile sync (SPEC §5.2, §5.3), run once per run before the engines."""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pandas as pd
import structlog
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from batch import calendar, repository
from batch.db import upsert
from batch.fetching import DEADLINE
from batch.providers import MarketDataProvider
from models import CompanyProfile, MarketPrice, ProfileAbsence, ProviderRequestCount

log = structlog.get_logger()

# The regression, volatility and EWMA windows need ~260 sessions; fetch 300 before the as-of.
HISTORY_SESSIONS = 300
PROFILE_MAX_AGE_DAYS = 7
# A symbol the provider says has no profile is asked again after this many days (or at once when
# the provider changes).
PROFILE_ABSENT_RECHECK_DAYS = 30
# Profile failures that mean "the provider has no profile for this symbol".
ABSENT_PROFILE_REASONS = frozenset({"unknown_symbol", "no_profile"})
# The sync (prices, then profiles) requests nothing after this share of BATCH_TIMEOUT_SECONDS,
# leaving the rest of the run's budget to the engines.
SYNC_SHARE_OF_BUDGET = 0.5
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


@contextlib.contextmanager
def requests_gated(session: Session, provider: MarketDataProvider, deadline: float | None,
                   clock: Callable[[], float]) -> Iterator[None]:
    """While the block runs, a network provider's limiter refuses every request once `clock()`
    reaches `deadline` (reason `deadline`), and its daily quota continues from the count stored
    for today by earlier runs; the count is stored back (in `session`) when the block ends
    normally. A provider without a limiter (`sample`, offline) is not gated."""
    limiter = getattr(provider, "limiter", None)
    if limiter is None:
        yield
        return
    quota = limiter.quota
    if quota is not None:
        stored = session.get(ProviderRequestCount, provider.name)
        if stored is not None:
            quota.restore(stored.day, stored.requests)
    previous = limiter.stop
    if deadline is not None:
        limiter.stop = lambda: DEADLINE if clock() >= deadline else None
    try:
        yield
    finally:
        limiter.stop = previous
    if quota is not None and quota.day is not None:
        upsert(session, ProviderRequestCount, [{"provider": provider.name, "day": quota.day,
                                                "requests": quota.used}], key=("provider",))


def sync_market_data(session: Session, provider: MarketDataProvider, as_of_dates: Sequence[date],
                     portfolio_ids: Sequence[uuid.UUID] | None, now: datetime, *,
                     deadline: float | None = None,
                     clock: Callable[[], float] = time.monotonic) -> MarketDataResult:
    """Fetch only the sessions missing from `market_prices` over the history window of the run's
    dates, for held symbols plus factor proxies, validate, and upsert on (symbol, date).
    No request is started once `clock()` reaches `deadline` (seconds on that clock): the symbols
    left are reported failed with `deadline`, as those past the daily quota with
    `quota_exhausted` (`requests_gated`); a later run fetches them."""
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
    with requests_gated(session, provider, deadline, clock):
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
                          now: datetime, *, deadline: float | None = None,
                          clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Refresh the profiles of equity-like symbols (index proxies such as `^GSPC` have none)
    that are missing or older than PROFILE_MAX_AGE_DAYS. A symbol the provider reports as having
    no profile (ABSENT_PROFILE_REASONS) is remembered in `profile_absences` and not asked again
    for PROFILE_ABSENT_RECHECK_DAYS days, or until another provider is configured. Requests stop
    at `deadline` and at the daily quota, as in `sync_market_data`. Never raises for a provider
    failure.

    Each of the `total` symbols is counted once: `already_fresh` (a recent profile is stored),
    `known_absent` (the provider has none: reported now or remembered), `successful` (fetched and
    stored now) or `failed` (any other failure: timeout, unreachable, quota_exhausted, deadline,
    ...; asked again next run). `requested` = symbols asked this run. `status`: `success` when
    none failed, `failed` when every requested symbol failed, else `partial` — the same on a
    first run and a rerun. Also returns duration_seconds, failed_symbols, failures (reason per
    failed symbol) and known_absent_symbols."""
    started = time.monotonic()
    wanted = list(dict.fromkeys(s for s in symbols if not s.startswith("^")))
    fresh = {
        s for s, updated in session.execute(
            select(CompanyProfile.symbol, CompanyProfile.updated_at).where(CompanyProfile.symbol.in_(wanted)))
        if updated is not None and (now - _aware(updated, now)).days < PROFILE_MAX_AGE_DAYS
    }
    remembered = {
        s for s, source, checked in session.execute(
            select(ProfileAbsence.symbol, ProfileAbsence.source, ProfileAbsence.checked_at)
            .where(ProfileAbsence.symbol.in_(wanted)))
        if s not in fresh and source == provider.name
        and (now - _aware(checked, now)).days < PROFILE_ABSENT_RECHECK_DAYS
    }
    todo = [s for s in wanted if s not in fresh and s not in remembered]
    with requests_gated(session, provider, deadline, clock):
        profiles, failures = fetch_profiles(provider, todo)
    asked = set(todo)
    records = [{
        "symbol": p["symbol"], "company_name": p.get("company_name"), "sector": p.get("sector"),
        "industry": p.get("industry"), "exchange": p.get("exchange"), "country": p.get("country"),
        "market_cap": p.get("market_cap"), "is_etf": bool(p.get("is_etf", False)),
        "source": provider.name, "updated_at": now,
    } for p in {p["symbol"]: p for p in profiles if p["symbol"] in asked}.values()]
    upsert(session, CompanyProfile, records, key=("symbol",))
    stored = {r["symbol"] for r in records}
    for s in todo:  # a symbol the provider neither answered nor failed is a failure too
        if s not in stored and s not in failures:
            failures[s] = "no_response"
    failures = {s: r for s, r in failures.items() if s in asked and s not in stored}
    absent = {s: r for s, r in failures.items() if r in ABSENT_PROFILE_REASONS}
    upsert(session, ProfileAbsence, [{"symbol": s, "source": provider.name, "reason": r, "checked_at": now}
                                     for s, r in absent.items()], key=("symbol",))
    if stored:
        session.execute(delete(ProfileAbsence).where(ProfileAbsence.symbol.in_(sorted(stored))))
    failed = sorted(s for s in failures if s not in absent)
    status = "success" if not failed else ("failed" if len(failed) == len(todo) else "partial")
    summary = {
        "status": status, "total": len(wanted), "successful": len(records), "failed": len(failed),
        "duration_seconds": round(time.monotonic() - started, 3), "failed_symbols": failed,
        "already_fresh": len(fresh), "known_absent": len(remembered) + len(absent), "requested": len(todo),
        "known_absent_symbols": sorted(remembered | set(absent)), "failures": {s: failures[s] for s in failed},
    }
    log.info("company_profiles_synced",
             **{k: v for k, v in summary.items() if k not in ("failed_symbols", "known_absent_symbols")})
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
