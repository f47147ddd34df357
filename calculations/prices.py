"""Price look-ups on a closes frame: a DataFrame indexed by session date (ascending,
`datetime.date`), one column per symbol, adjusted closes in dollars, NaN where missing."""

from __future__ import annotations

import bisect
from datetime import date

import numpy as np
import pandas as pd


def latest_close(closes: pd.DataFrame, symbol: str | None, on: date) -> tuple[date, float] | None:
    """The last finite close of `symbol` dated on or before `on`, or None if there is none (the
    index must be ascending). For many look-ups on one frame, prepare it once: `LatestCloses`."""
    return LatestCloses(closes).latest(symbol, on)


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
        self._days = list(closes.index)  # for bisect: one look-up costs no pandas call
        self.codes = {symbol: i for i, symbol in enumerate(closes.columns)}
        self.values = closes.to_numpy(dtype=float, na_value=np.nan)
        rows = np.where(np.isfinite(self.values), np.arange(len(self.values))[:, None], -1)
        # the row of each symbol's last finite close at or before every session (-1: none yet)
        self.last_row = np.maximum.accumulate(rows, axis=0) if len(rows) else rows

    @staticmethod
    def of(closes: pd.DataFrame | LatestCloses) -> LatestCloses:
        """`closes` prepared (itself when it already is)."""
        return closes if isinstance(closes, LatestCloses) else LatestCloses(closes)

    def _end(self, day: date) -> int:
        """The row of the last session on or before `day` (-1: none)."""
        return bisect.bisect_right(self._days, day) - 1

    def latest(self, symbol: str | None, day: date) -> tuple[date, float] | None:
        """The last finite close of `symbol` dated on or before `day` and its session, or None
        (no such close, or a symbol the frame does not hold)."""
        code = self.codes.get(symbol) if symbol is not None else None
        end = self._end(day)
        if code is None or end < 0:
            return None
        row = int(self.last_row[end, code])
        return None if row < 0 else (self._days[row], float(self.values[row, code]))

    def history(self, symbol: str, day: date) -> np.ndarray:
        """`symbol`'s closes (NaN where missing) of every session up to and including `day`."""
        return self.values[:self._end(day) + 1, self.codes[symbol]]

    def code(self, symbol: str | None) -> int:
        """The column of `symbol` (-1 when the frame does not hold it)."""
        return self.codes.get(symbol, -1) if symbol is not None else -1

    def on(self, codes: np.ndarray, day: date) -> tuple[np.ndarray, np.ndarray]:
        """For each column code (-1: none): the last finite close dated on or before `day`
        (dollars; NaN when there is none) and the session row it is dated (-1 when none)."""
        codes = np.asarray(codes, dtype=np.int64)
        end = self._end(day)
        if end < 0 or codes.size == 0:
            return np.full(codes.size, np.nan), np.full(codes.size, -1, dtype=np.int64)
        known = codes >= 0
        safe = np.where(known, codes, 0)
        rows = np.where(known, self.last_row[end, safe], -1)
        prices = np.where(rows >= 0, self.values[np.maximum(rows, 0), safe], np.nan)
        return prices, rows
