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


class LatestCloses:
    """A closes frame prepared for many look-ups at once: for every session and symbol, the
    last finite close on or before that session (what `latest_close` finds for one symbol).
    Built once (one pass over the frame); each `on` is a few array indexings whatever the
    number of symbols asked."""

    def __init__(self, closes: pd.DataFrame) -> None:
        self.sessions = closes.index
        self.codes = {symbol: i for i, symbol in enumerate(closes.columns)}
        self.values = closes.to_numpy(dtype=float, na_value=np.nan)
        rows = np.where(np.isfinite(self.values), np.arange(len(self.values))[:, None], -1)
        # the row of each symbol's last finite close at or before every session (-1: none yet)
        self.last_row = np.maximum.accumulate(rows, axis=0) if len(rows) else rows

    def code(self, symbol: str | None) -> int:
        """The column of `symbol` (-1 when the frame does not hold it)."""
        return self.codes.get(symbol, -1) if symbol is not None else -1

    def on(self, codes: np.ndarray, day: date) -> tuple[np.ndarray, np.ndarray]:
        """For each column code (-1: none): the last finite close dated on or before `day`
        (dollars; NaN when there is none) and the session row it is dated (-1 when none)."""
        codes = np.asarray(codes, dtype=np.int64)
        end = int(self.sessions.searchsorted(day, side="right")) - 1
        if end < 0 or codes.size == 0:
            return np.full(codes.size, np.nan), np.full(codes.size, -1, dtype=np.int64)
        known = codes >= 0
        safe = np.where(known, codes, 0)
        rows = np.where(known, self.last_row[end, safe], -1)
        prices = np.where(rows >= 0, self.values[np.maximum(rows, 0), safe], np.nan)
        return prices, rows
