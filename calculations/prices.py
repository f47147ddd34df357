"""Price look-ups on a closes frame: a DataFrame indexed by session date (ascending,
`datetime.date`), one column per symbol, adjusted closes in dollars, NaN where missing."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd


def latest_close(closes: pd.DataFrame, symbol: str | None, on: date) -> tuple[date, float] | None:
    """The last finite close of `symbol` dated on or before `on`, or None if there is none.
    Relies on the index being ascending (binary search, then a backwards scan for a value)."""
    if symbol is None or symbol not in closes.columns:
        return None
    index = closes.index
    end = int(index.searchsorted(on, side="right"))
    column = closes[symbol]
    # float64 columns (what the loaders build) as a view; anything else converted, NA → NaN
    values = (column.to_numpy() if column.dtype == np.float64
              else column.to_numpy(dtype=float, na_value=np.nan))[:end]
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size == 0:
        return None
    last = finite[-1]
    return index[last], float(values[last])
