"""Market-data providers behind one interface (SPEC §5.1).

`sample` (the default) serves the bundled real adjusted closes offline. Network providers
(`yfinance`, `fmp`, `polygon`) plug in behind the same two methods.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Any, Protocol

import pandas as pd

from batch.errors import ConfigError
from batch.fetching import AuthenticationError, DailyQuota, RateLimiter, RetryPolicy
from batch.settings import Settings

PRICE_COLUMNS = ["symbol", "date", "open", "high", "low", "close", "volume"]


@dataclass(frozen=True)
class PriceBatch:
    """Daily bars in long form (`PRICE_COLUMNS`; `date` as datetime.date, prices in dollars,
    `close` adjusted) and the symbols that failed, with a reason each."""

    rows: pd.DataFrame
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProfileBatch:
    profiles: list[dict[str, Any]]
    failed: dict[str, str] = field(default_factory=dict)


class MarketDataProvider(Protocol):
    """Network providers also have `limiter` (a batch.fetching.RateLimiter that every request
    passes): the sync sets the run's deadline on it and keeps its daily quota across runs."""

    name: str

    def coverage(self) -> tuple[date, date] | None:
        """The dates this provider can serve, or None when it is open-ended (network)."""

    def get_daily_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceBatch:
        """Daily bars for `symbols` dated in [start, end]."""

    def get_company_profiles(self, symbols: Sequence[str]) -> ProfileBatch:
        """One profile dict per symbol (keys of `company_profiles`)."""


@lru_cache(maxsize=1)
def _bundled_closes() -> pd.DataFrame:
    path = resources.files("batch") / "data" / "sample_prices.csv.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        frame = pd.read_csv(text)
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame.set_index("date").sort_index()


@lru_cache(maxsize=1)
def _bundled_profiles() -> dict[str, dict[str, Any]]:
    raw = (resources.files("batch") / "data" / "company_profiles.json").read_text()
    return {p["symbol"]: p for p in json.loads(raw)}


class SampleProvider:
    """Offline provider on the bundled closes (skfolio datasets, 2014-01-02..2022-12-28).

    Only adjusted closes exist in the source: open/high/low/volume are None. A symbol not in
    the bundle is reported failed with `unknown_symbol`.
    """

    name = "sample"

    def coverage(self) -> tuple[date, date]:
        index = _bundled_closes().index
        return index[0], index[-1]

    def symbols(self) -> list[str]:
        return list(_bundled_closes().columns)

    def get_daily_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceBatch:
        closes = _bundled_closes()
        symbols = list(dict.fromkeys(symbols))
        window = closes[(closes.index >= start) & (closes.index <= end)]
        known = [s for s in symbols if s in closes.columns]
        failed = {s: "unknown_symbol" for s in symbols if s not in closes.columns}
        long = window[known].stack().rename("close").reset_index()
        long.columns = ["date", "symbol", "close"]
        for column in ("open", "high", "low", "volume"):
            long[column] = None
        return PriceBatch(long[PRICE_COLUMNS], failed)

    def get_company_profiles(self, symbols: Sequence[str]) -> ProfileBatch:
        bundled = _bundled_profiles()
        return ProfileBatch([dict(bundled[s]) for s in symbols if s in bundled],
                            {s: "no_profile" for s in symbols if s not in bundled})


@dataclass(frozen=True)
class NotFetching:
    """Stands in for a network provider in a run that fetches nothing (`--skip-sync`), so its API
    key or optional package is not needed. Carries the provider's name (it picks the default
    factor proxies); fetching raises."""

    name: str

    def coverage(self) -> None:
        return None

    def get_daily_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceBatch:
        raise RuntimeError(f"the {self.name} provider is not used by a --skip-sync run")

    def get_company_profiles(self, symbols: Sequence[str]) -> ProfileBatch:
        raise RuntimeError(f"the {self.name} provider is not used by a --skip-sync run")


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(attempts=settings.max_retry_attempts, max_total_delay=settings.max_retry_delay_seconds)


def get_provider(settings: Settings) -> MarketDataProvider:
    """The provider named by MARKET_DATA_PROVIDER. Raises ConfigError when it cannot be used
    (a missing API key or an optional package not installed)."""
    name = settings.market_data_provider
    if name == "sample":
        return SampleProvider()
    if name == "yfinance":
        from batch.providers_yfinance import YFinanceProvider

        return YFinanceProvider(retry_policy(settings), RateLimiter(settings.yfinance_requests_per_minute),
                                timeout=settings.provider_timeout_seconds)
    from batch.providers_http import FmpProvider, PolygonProvider

    cls, key, per_minute, per_day = {
        "fmp": (FmpProvider, settings.fmp_api_key, settings.fmp_requests_per_minute, settings.fmp_requests_per_day),
        "polygon": (PolygonProvider, settings.polygon_api_key, settings.polygon_requests_per_minute, None),
    }[name]
    quota = DailyQuota(per_day) if per_day is not None else None
    try:
        return cls(key, retry_policy(settings), RateLimiter(per_minute, quota=quota),
                   read_timeout=settings.provider_timeout_seconds)
    except AuthenticationError as exc:
        raise ConfigError(str(exc)) from None
