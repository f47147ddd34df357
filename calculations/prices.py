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


def usable_closes(closes: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[date]]]:
    """`closes` with every non-finite or non-positive close replaced by NaN, and symbol → the
    sessions (ascending) whose close was replaced.

    Such a close is bad data that got past validation (SPEC §5.3: a manual fix, an old load):
    the engines read it as a missing close — never as a price or one end of a return — and
    report it. Returns `closes` itself and {} when nothing is bad.
    """
    values = closes.to_numpy(dtype=float, na_value=np.nan)
    bad = (~np.isnan(values) & ~(values > 0)) | np.isinf(values)  # ≤ 0 or ±inf; NaN is missing
    if not bad.any():
        return closes, {}
    cleaned = pd.DataFrame(np.where(bad, np.nan, values), index=closes.index, columns=closes.columns)
    rows, cols = np.nonzero(bad)
    replaced: dict[str, list[date]] = {}
    for col, row in sorted(zip(cols.tolist(), rows.tolist(), strict=True)):
        replaced.setdefault(str(closes.columns[col]), []).append(closes.index[row])
    return cleaned, replaced
