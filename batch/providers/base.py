"""The provider interface (SPEC §5.1): what every market-data provider returns and the
protocol it implements. Implementations: `sample` (offline, batch/providers/sample.py), `fmp` and
`polygon` (batch/providers/rest.py), `yfinance` (batch/providers/yahoo.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

import pandas as pd

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


