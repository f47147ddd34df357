"""Financial Modeling Prep and Polygon.io behind the provider interface (SPEC §5.1, §5.3).

Both classes are thin: the HTTP details (explicit timeouts, the client-side rate limit, bounded
retries of transient errors only, the API key as a query parameter that is never logged or put in
a message) live in `batch.fetching.HttpJsonClient`; failure isolation and the circuit breaker in
`batch.fetching.per_symbol`. What is here is the endpoints and the parsing of their documented
response shapes, one symbol per request.

Per-symbol failure reasons (see `batch.sync.PERMANENT_REASONS`):
- `unknown_symbol`: the provider says it does not know the symbol (FMP: `{}` for prices, `[]` for
  profiles; Polygon: HTTP 404 on ticker details).
- `no_data`: the symbol is known but has no bars in the window. Polygon answers HTTP 200 with no
  `results` for an *unknown* ticker on the aggregates endpoint too, so there an unknown ticker
  looks like `no_data`; both are permanent reasons, so the sync treats them alike.
- `unreachable`: timeouts, connection errors, HTTP 429/5xx after the retries, or skipped by the
  circuit breaker after consecutive unreachable symbols.
- `rejected`: another 4xx. `malformed_response`: a body that is not JSON or not the documented
  shape (never retried).
An `AuthenticationError` (missing key, HTTP 401/403) is not per-symbol: it propagates, naming the
key variable (FMP_API_KEY / POLYGON_API_KEY), never its value.

Each `get_*` call uses a fresh `CircuitBreaker`: an outage costs at most threshold × attempts
requests per call, and a later call (the next date range, the profiles) probes again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
import pandas as pd
import structlog

from batch.fetching import (
    CircuitBreaker,
    HttpJsonClient,
    MalformedResponse,
    NoData,
    RateLimiter,
    RetryPolicy,
    UnknownSymbol,
    per_symbol,
)
from batch.providers.base import PRICE_COLUMNS, PriceBatch, ProfileBatch

log = structlog.get_logger()
T = TypeVar("T")

NEW_YORK = ZoneInfo("America/New_York")
# Polygon ticker types that are exchange-traded products (ETF, exchange-traded note, exchange-
# traded vehicle); everything else (CS, ADRC, PFD, ...) is not an ETF.
POLYGON_ETF_TYPES = frozenset({"ETF", "ETN", "ETV"})


Bar = dict[str, Any]


class _HttpProvider:
    """What FMP and Polygon share: construction, the two batch methods, closing."""

    name: str
    base_url: str
    key_param: str
    key_env: str
    auth_statuses: tuple[int, ...]

    def __init__(self, api_key: str | None, retry: RetryPolicy, limiter: RateLimiter, *,
                 read_timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.limiter = limiter  # every request passes it (the sync sets its deadline)
        self._http = HttpJsonClient(self.name, self.base_url, key=api_key, key_param=self.key_param,
                                    key_env=self.key_env, retry=retry, limiter=limiter,
                                    read_timeout=read_timeout, transport=transport,
                                    auth_statuses=self.auth_statuses)

    # --- the MarketDataProvider interface -------------------------------------------------

    def coverage(self) -> None:
        """Network providers are open-ended: None (SPEC §5.1)."""

    def get_daily_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceBatch:
        """Daily bars dated in [start, end] in `PRICE_COLUMNS`, ordered by symbol (as requested)
        then date ascending. A session the provider does not return stays missing: nothing is
        filled. Failed symbols are reported with a reason, never raised (except a bad key)."""
        symbols = list(dict.fromkeys(symbols))
        results, failed = per_symbol(self.name, symbols, lambda s: self._bars_in_window(s, start, end),
                                     CircuitBreaker())
        rows = [bar for symbol in symbols for bar in results.get(symbol, [])]
        frame = pd.DataFrame(rows, columns=PRICE_COLUMNS)
        log.info("provider_prices_fetched", provider=self.name, symbols=len(symbols), rows=len(frame),
                 failed=len(failed), start=start.isoformat(), end=end.isoformat())
        return PriceBatch(frame, failed)

    def get_company_profiles(self, symbols: Sequence[str]) -> ProfileBatch:
        """One dict per symbol with the keys of `company_profiles`: symbol, company_name, sector,
        industry, exchange, country, market_cap, is_etf (empty strings become None)."""
        symbols = list(dict.fromkeys(symbols))
        results, failed = per_symbol(self.name, symbols, self._profile, CircuitBreaker())
        log.info("provider_profiles_fetched", provider=self.name, symbols=len(symbols),
                 profiles=len(results), failed=len(failed))
        return ProfileBatch([results[s] for s in symbols if s in results], failed)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- provider specifics ---------------------------------------------------------------

    def _bars(self, symbol: str, start: date, end: date) -> list[Bar]:
        raise NotImplementedError

    def _profile(self, symbol: str) -> dict[str, Any]:
        raise NotImplementedError

    # --- shared helpers -------------------------------------------------------------------

    def _bars_in_window(self, symbol: str, start: date, end: date) -> list[Bar]:
        bars = [b for b in self._bars(symbol, start, end) if start <= b["date"] <= end]
        if not bars:
            raise NoData(self.name, f"no bars for {symbol} in {start}..{end}", symbol=symbol)
        return sorted(bars, key=lambda b: b["date"])

    def _parse(self, symbol: str, what: str, parse: Callable[[], T]) -> T:
        """Run `parse`; a body whose fields have the wrong type or are missing becomes
        MalformedResponse (permanent, not retried). The body itself is never quoted."""
        try:
            return parse()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(self.name, f"unexpected {what} body for {symbol} ({type(exc).__name__})",
                                    symbol=symbol) from None

    def _malformed(self, symbol: str, what: str, detail: str) -> MalformedResponse:
        return MalformedResponse(self.name, f"unexpected {what} body for {symbol}: {detail}", symbol=symbol)


class FmpProvider(_HttpProvider):
    """Financial Modeling Prep, v3 REST API (https://financialmodelingprep.com/api/v3).

    Prices: `GET /api/v3/historical-price-full/{symbol}?from=YYYY-MM-DD&to=YYYY-MM-DD` →
    `{"symbol": ..., "historical": [{"date", "open", "high", "low", "close", "adjClose",
    "volume", ...}, ...]}`, newest first. `close` is FMP's `adjClose` (split- and
    dividend-adjusted; `close` when `adjClose` is absent), and open/high/low are scaled by the
    same factor adjClose / close so that every bar is adjusted consistently (low ≤ close ≤ high
    still holds). Volume is FMP's `volume`, as given. `{}` means an unknown symbol; an empty
    `historical` list, no bars in the window.

    Profiles: `GET /api/v3/profile/{symbol}` → `[{"symbol", "companyName", "sector", "industry",
    "exchangeShortName", "country", "mktCap", "isEtf", "isFund", ...}]`; `[]` means unknown.
    `is_etf` is FMP's `isEtf` (a mutual fund, `isFund`, is not an ETF).

    Symbols: FMP writes share classes with a dash, so `BRK.B` is requested as `BRK-B`; results
    are keyed by our symbol. FMP now documents `/stable/` endpoints as the successor of v3
    (`/stable/historical-price-eod/full?symbol=`, `/stable/profile?symbol=`); v3 is kept here.
    """

    name = "fmp"
    base_url = "https://financialmodelingprep.com"
    key_param = "apikey"
    key_env = "FMP_API_KEY"
    auth_statuses = (401, 403)

    @staticmethod
    def provider_symbol(symbol: str) -> str:
        return symbol.replace(".", "-")

    def _bars(self, symbol: str, start: date, end: date) -> list[Bar]:
        remote = self.provider_symbol(symbol)
        payload = self._http.get_json(f"/api/v3/historical-price-full/{quote(remote, safe='')}",
                                      {"from": start.isoformat(), "to": end.isoformat()}, symbol=symbol)
        if not isinstance(payload, dict):
            raise self._malformed(symbol, "historical-price-full", f"a JSON {type(payload).__name__}")
        if not payload:
            raise UnknownSymbol(self.name, f"unknown symbol {remote}", symbol=symbol)
        historical = payload.get("historical")
        if not isinstance(historical, list):
            raise self._malformed(symbol, "historical-price-full", "no 'historical' list")
        if not historical:
            raise NoData(self.name, f"no bars for {remote} in {start}..{end}", symbol=symbol)
        return self._parse(symbol, "historical-price-full", lambda: [_fmp_bar(symbol, item) for item in historical])

    def _profile(self, symbol: str) -> dict[str, Any]:
        remote = self.provider_symbol(symbol)
        payload = self._http.get_json(f"/api/v3/profile/{quote(remote, safe='')}", symbol=symbol)
        if not isinstance(payload, list):
            raise self._malformed(symbol, "profile", f"a JSON {type(payload).__name__}, not a list")
        if not payload:
            raise UnknownSymbol(self.name, f"no profile for {remote}", symbol=symbol)
        return self._parse(symbol, "profile", lambda: _fmp_profile(symbol, remote, payload))


def _fmp_bar(symbol: str, item: dict[str, Any]) -> Bar:
    day = date.fromisoformat(item["date"][:10])
    raw_close = _number(item.get("close"))
    adj_close = _number(item.get("adjClose"))
    close = adj_close if adj_close is not None else raw_close
    if adj_close is None:
        factor: float | None = 1.0
    elif raw_close is not None and raw_close != 0.0 and math.isfinite(raw_close):
        factor = adj_close / raw_close
    else:
        factor = None  # cannot adjust open/high/low consistently: leave them missing

    def scaled(key: str) -> float | None:
        value = _number(item.get(key))
        return None if value is None or factor is None else value * factor

    return {"symbol": symbol, "date": day, "open": scaled("open"), "high": scaled("high"),
            "low": scaled("low"), "close": close, "volume": _number(item.get("volume"))}


def _fmp_profile(symbol: str, remote: str, payload: list[Any]) -> dict[str, Any]:
    matches = [p for p in payload if p.get("symbol") == remote] or payload[:1]
    p = matches[0]
    return {"symbol": symbol, "company_name": _text(p.get("companyName")), "sector": _text(p.get("sector")),
            "industry": _text(p.get("industry")), "exchange": _text(p.get("exchangeShortName")),
            "country": _text(p.get("country")), "market_cap": _number(p.get("mktCap")),
            "is_etf": bool(p.get("isEtf") or False)}


class PolygonProvider(_HttpProvider):
    """Polygon.io REST API (https://api.polygon.io).

    Prices: `GET /v2/aggs/ticker/{ticker}/range/1/day/{from}/{to}?adjusted=true&sort=asc&limit=50000`
    → `{"ticker", "queryCount", "resultsCount", "adjusted", "results": [{"o", "h", "l", "c", "v",
    "vw", "t", "n"}], "status", "request_id"}`. `t` is the start of the session's day in
    milliseconds since the epoch (UTC); it is converted to the America/New_York calendar date.
    `adjusted=true` is Polygon's *split* adjustment: dividends are not taken out, unlike FMP's
    adjClose. No `results` (or `resultsCount` 0) → `no_data`; Polygon does not 404 unknown
    tickers here, so an unknown ticker is reported `no_data` too. 50000 daily bars is far more
    than any window the sync asks for, so `next_url` pagination is not followed.

    Profiles: `GET /v3/reference/tickers/{ticker}` → `{"results": {"ticker", "name", "market",
    "locale", "primary_exchange", "type", "market_cap", "sic_description", ...}, "status",
    "request_id"}`; HTTP 404 → `unknown_symbol`. Polygon has no GICS sector: `sector` is None and
    `industry` is the SIC description; `exchange` is the primary exchange's MIC (e.g. XNAS);
    `country` is "US" for the `us` locale (Polygon gives no country), else None;
    `is_etf` is `type` in ETF/ETN/ETV.

    Symbols are sent as they are (Polygon writes share classes with a dot: `BRK.B`).
    """

    name = "polygon"
    base_url = "https://api.polygon.io"
    key_param = "apiKey"
    key_env = "POLYGON_API_KEY"
    # Polygon answers 403 NOT_AUTHORIZED for data outside the plan (e.g. old history): that is
    # one request's refusal, not a bad key.
    auth_statuses = (401,)

    @staticmethod
    def provider_symbol(symbol: str) -> str:
        return symbol

    def _bars(self, symbol: str, start: date, end: date) -> list[Bar]:
        remote = quote(self.provider_symbol(symbol), safe="")
        payload = self._http.get_json(
            f"/v2/aggs/ticker/{remote}/range/1/day/{start.isoformat()}/{end.isoformat()}",
            {"adjusted": "true", "sort": "asc", "limit": 50000}, symbol=symbol)
        if not isinstance(payload, dict):
            raise self._malformed(symbol, "aggregates", f"a JSON {type(payload).__name__}")
        results = payload.get("results")
        if results is None or results == []:
            raise NoData(self.name, f"no bars for {symbol} in {start}..{end} (or unknown ticker)",
                         symbol=symbol)
        if not isinstance(results, list):
            raise self._malformed(symbol, "aggregates", "'results' is not a list")
        return self._parse(symbol, "aggregates", lambda: [_polygon_bar(symbol, item) for item in results])

    def _profile(self, symbol: str) -> dict[str, Any]:
        remote = quote(self.provider_symbol(symbol), safe="")
        payload = self._http.get_json(f"/v3/reference/tickers/{remote}", symbol=symbol)
        results = payload.get("results") if isinstance(payload, dict) else None
        if not isinstance(results, dict):
            raise self._malformed(symbol, "ticker details", "no 'results' object")
        return self._parse(symbol, "ticker details", lambda: _polygon_profile(symbol, results))


def new_york_date(epoch_ms: float) -> date:
    """The America/New_York calendar date of a millisecond Unix timestamp."""
    return datetime.fromtimestamp(epoch_ms / 1000.0, tz=UTC).astimezone(NEW_YORK).date()


def _polygon_bar(symbol: str, item: dict[str, Any]) -> Bar:
    t = item["t"]
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise TypeError("t")
    return {"symbol": symbol, "date": new_york_date(t), "open": _number(item.get("o")),
            "high": _number(item.get("h")), "low": _number(item.get("l")), "close": _number(item.get("c")),
            "volume": _number(item.get("v"))}


def _polygon_profile(symbol: str, r: dict[str, Any]) -> dict[str, Any]:
    locale = _text(r.get("locale"))
    kind = _text(r.get("type"))
    return {"symbol": symbol, "company_name": _text(r.get("name")), "sector": None,
            "industry": _text(r.get("sic_description")), "exchange": _text(r.get("primary_exchange")),
            "country": "US" if locale is not None and locale.lower() == "us" else None,
            "market_cap": _number(r.get("market_cap")), "is_etf": kind in POLYGON_ETF_TYPES}


def _number(value: Any) -> float | None:
    """A JSON number as float; None stays None; anything else is a malformed body."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _text(value: Any) -> str | None:
    """A JSON string, stripped; None or empty becomes None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value.strip() or None
