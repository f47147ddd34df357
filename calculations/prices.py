"""Price look-ups on a closes frame: a DataFrame indexed by session date (ascending,
`datetime.date`), one column per symbol, adjusted closes in dollars, NaN where missing."""

from __future__ import annotations

from datetime import date

import pandas as pd


def latest_close(closes: pd.DataFrame, symbol: str | None, on: date) -> tuple[date, float] | None:
    """The last finite close of `symbol` dated on or before `on`, or None if there is none."""
    if symbol is None or symbol not in closes.columns:
        return None
    series = closes[symbol]
    series = series[series.index <= on].dropna()
    if series.empty:
        return None
    return series.index[-1], float(series.iloc[-1])
