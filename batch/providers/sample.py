"""The default, offline provider: the bundled real adjusted closes and company profiles
(SPEC §5.1; provenance in the README)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Any

import pandas as pd

from batch.providers.base import PRICE_COLUMNS, PriceBatch, ProfileBatch


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
