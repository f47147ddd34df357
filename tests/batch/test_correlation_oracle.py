"""The stored correlations of the demo books equal an oracle computed here, on SQLite and
PostgreSQL (SPEC §6.6): for each book, the 90 log returns of its included symbols read from the
stored closes of the 91 sessions ending at the as-of date, then pandas' pairwise-complete
Pearson `DataFrame.corr(min_periods=20)` (a per-pair loop) — never the job's masked matrix sums.

A second run after damaging the stored closes (a gap, a late listing, a price stale over the
late listing's whole overlap, a price constant over the whole window, a symbol with too little
history) checks the same agreement on NaN-laden data.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import date

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session

from batch import calendar
from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, demo_id
from batch.engines import DateContext
from models import CorrelationRun, MarketPrice

AS_OF = date(2022, 12, 28)
WINDOW = calendar.sessions_back(AS_OF, 91)  # 91 closes → 90 returns


def stored_pairs(engine) -> dict[str, dict[tuple[str, str], tuple[float | None, int]]]:
    """portfolio id → (symbol_1, symbol_2) → (correlation or None, observations)."""
    out: dict[str, dict[tuple[str, str], tuple[float | None, int]]] = defaultdict(dict)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT portfolio_id, as_of_date, symbol_1, symbol_2, correlation, "
                                 "observations FROM pairwise_correlations")).all()
    for pid, day, a, b, rho, n in rows:
        assert str(day)[:10] == AS_OF.isoformat()
        out[str(pid).replace("-", "")][(a, b)] = (None if rho is None else float(rho), int(n))
    return out


def oracle(engine, symbols: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """pandas' pairwise-complete ρ (min 20 overlaps) and overlap counts of `symbols` over the
    90 log returns ending at AS_OF, from the stored closes (a missing session is NaN; a
    non-positive close is read as missing, as SPEC §5.3 asks)."""
    with Session(engine) as s:
        rows = s.execute(select(MarketPrice.symbol, MarketPrice.date, MarketPrice.close).where(
            MarketPrice.symbol.in_(symbols), MarketPrice.date >= WINDOW[0], MarketPrice.date <= AS_OF)).all()
    closes = pd.DataFrame(np.nan, index=WINDOW, columns=symbols)
    for symbol, day, close in rows:
        closes.loc[day, symbol] = float(close) if float(close) > 0 else np.nan
    returns = np.log(closes).diff().iloc[1:]
    present = returns.notna().to_numpy(dtype=np.int64)
    counts = pd.DataFrame(present.T @ present, index=symbols, columns=symbols)
    return returns.corr(min_periods=20), counts


def assert_pairs_match_oracle(engine) -> dict[str, dict[tuple[str, str], tuple[float | None, int]]]:
    pairs = stored_pairs(engine)
    assert {pid for pid in pairs} == {demo_id("portfolio", k).hex for k in (INDIVIDUAL, HNW, HEDGE_FUND)}
    with Session(engine) as s:
        runs = {r.portfolio_id.hex: r for r in s.scalars(select(CorrelationRun))}
    for pid, book in pairs.items():
        symbols = sorted({s for pair in book for s in pair})
        assert sorted(book) == [(a, b) for i, a in enumerate(symbols) for b in symbols[i + 1:]]
        rho, counts = oracle(engine, symbols)
        for (a, b), (got, n) in book.items():
            assert n == counts.loc[a, b], (pid, a, b)
            expected = rho.loc[a, b]
            if math.isnan(expected):
                assert got is None, (pid, a, b, got)
            else:
                assert got == pytest.approx(expected, rel=0, abs=1e-12), (pid, a, b)
        known = [abs(v) for v, _ in book.values() if v is not None]
        run = runs[pid]
        if known:
            assert run.avg_abs_correlation == pytest.approx(float(np.mean(known)), rel=1e-12)
        else:
            assert run.avg_abs_correlation is None
    return pairs


def test_stored_correlations_equal_the_pandas_oracle(seeded, engine):
    code, summary, *_ = seeded("--date", AS_OF.isoformat(), "--json")
    assert code == 0, summary
    pairs = assert_pairs_match_oracle(engine)
    assert sum(len(book) for book in pairs.values()) > 300  # the three books' full triangles

    # Damage the stored closes inside the window, then recompute from them.
    with Session(engine) as s, s.begin():
        def drop(symbol: str, first: int, last: int) -> None:  # closes of window rows [first, last)
            s.execute(delete(MarketPrice).where(MarketPrice.symbol == symbol,
                                                MarketPrice.date >= WINDOW[first], MarketPrice.date < WINDOW[last]))
        drop("AAPL", 50, 80)  # a gap: no returns on rows 50..80
        drop("MSFT", 0, 66)  # a late listing: 24 returns, 10 of them shared with AAPL (< 20)
        drop("JPM", 0, 76)  # 14 returns: insufficient history, never in a pair
        stale = s.scalars(select(MarketPrice.close).where(MarketPrice.symbol == "XOM",
                                                          MarketPrice.date == WINDOW[60])).one()
        s.execute(update(MarketPrice).where(MarketPrice.symbol == "XOM", MarketPrice.date > WINDOW[60],
                                            MarketPrice.date <= AS_OF).values(close=stale))  # 0 returns
        s.execute(update(MarketPrice).where(MarketPrice.symbol == "KO", MarketPrice.date >= WINDOW[0],
                                            MarketPrice.date <= AS_OF).values(close=50.0))  # constant
    code, summary, *_ = seeded("--date", AS_OF.isoformat(), "--force", "--skip-sync", "--json")
    assert code == 0, summary
    pairs = assert_pairs_match_oracle(engine)
    for book in pairs.values():
        assert not any("JPM" in pair for pair in book)
        if ("AAPL", "MSFT") in book:
            assert book[("AAPL", "MSFT")] == (None, 10)
        ko = [v for pair, (v, _) in book.items() if "KO" in pair]
        assert ko and all(v is None for v in ko)  # constant over the window: ρ undefined
        # XOM is stale (0 returns) on rows 61..90: constant over its whole overlap with MSFT
        # (return rows 67..90), so that ρ is undefined, but it moves over its overlaps with the others
        if ("MSFT", "XOM") in book:
            assert book[("MSFT", "XOM")] == (None, 24)
        xom = [v for pair, (v, _) in book.items() if "XOM" in pair]
        assert sum(v is not None for v in xom) >= 2


def test_without_the_dates_market_closes_the_units_own_closes_give_the_same_pairs(seeded, engine, monkeypatch):
    # When the symbol-betas engine failed before loading the market closes, a unit's panel is
    # built from its own closes (batch.engines._correlation_panel): same stored pairs.
    monkeypatch.setattr(DateContext, "return_panel", property(lambda self: None))
    code, summary, *_ = seeded("--date", AS_OF.isoformat(), "--json")
    assert code == 0, summary
    assert sum(len(book) for book in assert_pairs_match_oracle(engine).values()) > 300
