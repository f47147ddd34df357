"""The `yfinance` market-data provider (SPEC §5.1, §5.3): Yahoo Finance through the `yfinance`
package, no API key.

One request per symbol, each behind the client-side rate limit and the retry policy, with a
circuit breaker that stops calling Yahoo after a few consecutive unreachable symbols. Errors are
classified by exception type (and HTTP status code where the exception carries a response),
never by message text:

- transient (retried, reported `unreachable`): connection errors and timeouts of curl_cffi and
  requests, the builtin `ConnectionError` / `TimeoutError`, `YFRateLimitError`, HTTP 429 / 5xx;
- `YFPricesMissingError` (Yahoo has the ticker but no bars in the range) → `no_data`;
- any other `YFTickerMissingError` (e.g. `YFTzMissingError`, how yfinance reports a ticker
  Yahoo does not know) and HTTP 404 → `unknown_symbol`;
- anything else the client raises → `rejected`, logged with its type.

yfinance 1.7.0 swallows most errors by default (`yf.config.debug.hide_exceptions = True`):
offline, its timezone lookup then fails quietly and `history()` raises `YFTzMissingError`, which
would report an unreachable Yahoo as unknown symbols. Every call therefore runs with
`hide_exceptions = False` (restored afterwards), which makes yfinance raise the underlying
network error. (`history(raise_errors=True)` is deprecated in 1.7.0, emits a
DeprecationWarning, and does not cover the timezone lookup, so it is not used.)
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import date, timedelta
from typing import Any, TypeVar

import pandas as pd
import structlog

from batch.errors import ConfigError
from batch.fetching import (
    CircuitBreaker,
    MalformedResponse,
    NoData,
    PermanentProviderError,
    ProviderError,
    RateLimiter,
    RetryPolicy,
    TransientProviderError,
    UnknownSymbol,
    per_symbol,
)
from batch.providers.base import PRICE_COLUMNS, PriceBatch, ProfileBatch

log = structlog.get_logger()
T = TypeVar("T")

NEW_YORK = "America/New_York"
ETF_QUOTE_TYPES = ("ETF", "MUTUALFUND")
_HISTORY_COLUMNS = {"Open": "open", "High": "high", "Low": "low", "Close": "close", "Volume": "volume"}


def _types(*paths: tuple[str, str]) -> tuple[type[BaseException], ...]:
    """The exception classes at `(module, attribute)` that can be imported; absent ones are skipped
    (curl_cffi, requests and yfinance are all optional here)."""
    import importlib

    found: list[type[BaseException]] = []
    for module_name, attribute in paths:
        try:
            cls = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


_TRANSIENT = (ConnectionError, TimeoutError) + _types(
    ("curl_cffi.requests.exceptions", "ConnectionError"),
    ("curl_cffi.requests.exceptions", "Timeout"),
    ("requests.exceptions", "ConnectionError"),
    ("requests.exceptions", "Timeout"),
    ("yfinance.exceptions", "YFRateLimitError"),
)
_PRICES_MISSING = _types(("yfinance.exceptions", "YFPricesMissingError"))
_TICKER_MISSING = _types(("yfinance.exceptions", "YFTickerMissingError"))
_HTTP_ERRORS = _types(("curl_cffi.requests.exceptions", "HTTPError"), ("requests.exceptions", "HTTPError"))


def yahoo_symbol(symbol: str) -> str:
    """Our symbol as Yahoo spells it: share classes use a dash (`BRK.B` → `BRK-B`)."""
    return symbol.replace(".", "-")


def classify(exc: Exception, provider: str, symbol: str) -> ProviderError:
    """The ProviderError for an exception raised by the yfinance client, by type (and by HTTP
    status for HTTP errors) only."""
    if isinstance(exc, ProviderError):
        return exc
    kind = type(exc).__name__
    if isinstance(exc, _TRANSIENT):
        return TransientProviderError(provider, f"{kind} for {symbol}", symbol=symbol)
    if isinstance(exc, _PRICES_MISSING):
        return NoData(provider, f"{kind}: no prices for {symbol}", symbol=symbol)
    if isinstance(exc, _TICKER_MISSING):
        return UnknownSymbol(provider, f"{kind}: unknown symbol {symbol}", symbol=symbol)
    if isinstance(exc, _HTTP_ERRORS):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        status = status if isinstance(status, int) else None
        if status is not None and (status == 429 or status >= 500):
            return TransientProviderError(provider, f"HTTP {status} for {symbol}", symbol=symbol, status=status)
        if status == 404:
            return UnknownSymbol(provider, f"HTTP 404 for {symbol}", symbol=symbol, status=status)
        return PermanentProviderError(provider, f"{kind} (HTTP {status}) for {symbol}", symbol=symbol,
                                      status=status)
    log.warning("yfinance_unexpected_error", symbol=symbol, error_type=f"{type(exc).__module__}.{kind}")
    return PermanentProviderError(provider, f"unexpected {kind} for {symbol}", symbol=symbol)


def history_rows(symbol: str, frame: Any, start: date, end: date, provider: str = "yfinance") -> pd.DataFrame:
    """A `Ticker.history()` frame (tz-aware DatetimeIndex, columns Open High Low Close Volume,
    Close already adjusted) as PRICE_COLUMNS rows for `symbol`, dated by the index's date in New
    York and kept within [start, end]. Sessions missing from the frame stay missing; non-finite
    values are passed on for the sync's validation to report. Raises NoData for an empty frame
    and MalformedResponse for anything that is not such a frame."""
    if not isinstance(frame, pd.DataFrame) or not isinstance(frame.index, pd.DatetimeIndex):
        raise MalformedResponse(provider, f"history for {symbol} is not a date-indexed DataFrame",
                                symbol=symbol)
    missing = [c for c in _HISTORY_COLUMNS if c not in frame.columns]
    if missing:
        raise MalformedResponse(provider, f"history for {symbol} lacks {', '.join(missing)}", symbol=symbol)
    if frame.empty:
        raise NoData(provider, f"no bars for {symbol} in {start}..{end}", symbol=symbol)
    index = frame.index
    if index.tz is not None:
        index = index.tz_convert(NEW_YORK)
    rows = frame[list(_HISTORY_COLUMNS)].rename(columns=_HISTORY_COLUMNS).reset_index(drop=True)
    rows.insert(0, "date", [ts.date() for ts in index])
    rows.insert(0, "symbol", symbol)
    rows = rows[(rows["date"] >= start) & (rows["date"] <= end)]
    if rows.empty:
        raise NoData(provider, f"no bars for {symbol} in {start}..{end}", symbol=symbol)
    for column in ("open", "high", "low", "close"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce").astype(float)
    return rows[PRICE_COLUMNS].reset_index(drop=True)


def profile_from_info(symbol: str, info: Any, provider: str = "yfinance") -> dict[str, Any]:
    """A `company_profiles` dict from `Ticker.info`. An info dict that names no instrument (no
    quoteType, longName or shortName — what yfinance returns for a ticker Yahoo does not know)
    raises UnknownSymbol."""
    if not isinstance(info, dict):
        raise MalformedResponse(provider, f"info for {symbol} is not a dict", symbol=symbol)
    if not any(info.get(k) for k in ("quoteType", "longName", "shortName")):
        raise UnknownSymbol(provider, f"no instrument info for {symbol}", symbol=symbol)
    market_cap = info.get("marketCap")
    if isinstance(market_cap, bool) or not isinstance(market_cap, (int, float)) or not math.isfinite(market_cap):
        market_cap = None
    return {
        "symbol": symbol,
        "company_name": info.get("longName") or info.get("shortName"),
        "sector": info.get("sector"),
        "industry": info.get("industry"),
        "exchange": info.get("exchange"),
        "country": info.get("country"),
        "market_cap": market_cap,
        "is_etf": info.get("quoteType") in ETF_QUOTE_TYPES,
    }


class _ExceptionsRaised:
    """`hide_exceptions = False` on a yfinance config while at least one call is in flight, then
    the previous value again. Reference-counted, so concurrent calls (profiles are fetched from a
    thread pool) neither serialise nor restore the setting under each other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[int, list[Any]] = {}  # id(debug) -> [calls in flight, value before]

    @contextlib.contextmanager
    def __call__(self, debug: Any) -> Iterator[None]:
        key = id(debug)
        with self._lock:
            state = self._state.setdefault(key, [0, None])
            if state[0] == 0:
                state[1] = debug.hide_exceptions
                debug.hide_exceptions = False
            state[0] += 1
        try:
            yield
        finally:
            with self._lock:
                state[0] -= 1
                if state[0] == 0:
                    debug.hide_exceptions = state[1]
                    del self._state[key]


_EXCEPTIONS_RAISED = _ExceptionsRaised()


class YFinanceProvider:
    """Daily adjusted bars and company profiles from Yahoo Finance (`client` defaults to the
    `yfinance` module; tests pass a fake with the same `Ticker(symbol)` surface).

    One circuit breaker per provider instance (one instance per run): once Yahoo has been
    unreachable for `breaker.threshold` consecutive symbols, the remaining symbols of this and
    later calls (including the one-symbol profile calls the sync makes from a thread pool) are
    reported `unreachable` without calling it. Calls may run concurrently."""

    name = "yfinance"

    def __init__(self, retry: RetryPolicy, limiter: RateLimiter, client: Any | None = None, *,
                 timeout: float = 30.0, breaker: CircuitBreaker | None = None) -> None:
        if client is None:
            try:
                import yfinance as client
            except ImportError:
                raise ConfigError("MARKET_DATA_PROVIDER=yfinance needs the yfinance package: "
                                  "pip install '.[yfinance]'") from None
        self.retry, self.limiter, self.client = retry, limiter, client
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker()

    def coverage(self) -> None:
        return None

    def get_daily_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceBatch:
        """Bars dated in [start, end] (Yahoo's `end` is exclusive: asked for end + 1 day)."""
        symbols = list(dict.fromkeys(symbols))

        def fetch(symbol: str) -> pd.DataFrame:
            frame = self._call(symbol, "history", lambda ticker: ticker.history(
                start=start, end=end + timedelta(days=1), auto_adjust=True, actions=False,
                timeout=self.timeout))
            return history_rows(symbol, frame, start, end, self.name)

        results, failed = per_symbol(self.name, symbols, fetch, self.breaker)
        frames = [f for f in results.values() if not f.empty]
        rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PRICE_COLUMNS)
        return PriceBatch(rows[PRICE_COLUMNS], failed)

    def get_company_profiles(self, symbols: Sequence[str]) -> ProfileBatch:
        symbols = list(dict.fromkeys(symbols))

        def fetch(symbol: str) -> dict[str, Any]:
            info = self._call(symbol, "info", lambda ticker: ticker.info)
            return profile_from_info(symbol, info, self.name)

        results, failed = per_symbol(self.name, symbols, fetch, self.breaker)
        return ProfileBatch([results[s] for s in symbols if s in results], failed)

    # -- one call ----------------------------------------------------------------------------

    def _call(self, symbol: str, what: str, request: Callable[[Any], T]) -> T:
        """`request(Ticker(yahoo symbol))` under the rate limit, retried on transient errors;
        every client exception is translated into a ProviderError by `classify`."""
        remote = yahoo_symbol(symbol)

        def once() -> T:
            self.limiter.acquire()
            try:
                with self._exceptions_raised():
                    return request(self.client.Ticker(remote))
            except ProviderError:
                raise
            except Exception as exc:
                raise classify(exc, self.name, symbol) from exc

        return self.retry.call(once, f"{self.name} {what} {remote}")

    @contextlib.contextmanager
    def _exceptions_raised(self) -> Iterator[None]:
        """Make yfinance raise its errors instead of logging them (see the module docstring)."""
        debug = getattr(getattr(self.client, "config", None), "debug", None)
        if debug is None:
            yield
            return
        with _EXCEPTIONS_RAISED(debug):
            yield
