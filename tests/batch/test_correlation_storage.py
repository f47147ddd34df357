"""Correlations stored as one matrix row per portfolio-date, read pair by pair through the
`pairwise_correlations` view (SPEC §4, §6.6), after real demo runs on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from batch import calendar
from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, demo_id
from models import CorrelationMatrix, MarketPrice, PairwiseCorrelation, Position

AS_OF_TEXT, AS_OF = "2022-12-28", date(2022, 12, 28)
PUBLIC_BOOKS = [demo_id("portfolio", k) for k in (INDIVIDUAL, HNW, HEDGE_FUND)]


def oracle(engine, symbols: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ρ and overlap counts computed here from the stored closes: pandas' pairwise-complete
    Pearson (`corr(min_periods=20)`) of the daily log returns of the 90 sessions ending at the
    as-of date (91 closes; a missing close leaves its two returns missing)."""
    days = calendar.sessions_back(AS_OF, 91)
    with Session(engine) as s:
        rows = s.execute(select(MarketPrice.date, MarketPrice.symbol, MarketPrice.close).where(
            MarketPrice.symbol.in_(symbols), MarketPrice.date >= days[0], MarketPrice.date <= AS_OF)).all()
    closes = (pd.DataFrame(rows, columns=["date", "symbol", "close"])
              .pivot(index="date", columns="symbol", values="close").astype(float)
              .reindex(index=days, columns=symbols))
    returns = np.log(closes).diff().iloc[1:]
    present = returns.notna().astype(int)
    return returns.corr(min_periods=20), present.T @ present


def test_the_view_returns_pandas_pairwise_correlations_of_the_stored_closes(seeded, engine):
    assert seeded("--date", AS_OF_TEXT).code == 0
    for book in PUBLIC_BOOKS:
        with Session(engine) as s:
            stored = s.scalars(select(CorrelationMatrix).where(CorrelationMatrix.portfolio_id == book)).one()
            view = s.scalars(select(PairwiseCorrelation).where(PairwiseCorrelation.portfolio_id == book)).all()
        symbols = stored.symbols
        n = len(symbols)
        rho, counts = oracle(engine, symbols)
        assert (stored.as_of_date, stored.window_days) == (AS_OF, 90)
        assert n >= 5 and symbols == sorted(symbols)
        # the matrix row: symmetric, 1 on the diagonal, each symbol's own count there
        for i, a in enumerate(symbols):
            assert stored.matrix[i][i] == 1.0
            assert stored.observations[i][i] == counts.loc[a, a]
            for j in range(n):
                assert stored.matrix[i][j] == stored.matrix[j][i]
                assert stored.observations[i][j] == stored.observations[j][i]
        # the view: each unordered pair once, symbol_1 < symbol_2, the oracle's numbers
        assert len(view) == n * (n - 1) // 2
        assert len({(p.symbol_1, p.symbol_2) for p in view}) == len(view)
        for pair in view:
            assert pair.symbol_1 < pair.symbol_2 and pair.as_of_date == AS_OF and pair.window_days == 90
            assert pair.observations == counts.loc[pair.symbol_1, pair.symbol_2]
            expected = rho.loc[pair.symbol_1, pair.symbol_2]
            if math.isnan(expected):
                assert pair.correlation is None, (pair.symbol_1, pair.symbol_2)
            else:
                assert pair.correlation == pytest.approx(float(expected), abs=1e-12), (pair.symbol_1, pair.symbol_2)


def test_a_rerun_replaces_the_matrix_row(seeded, engine):
    """Re-running the date after one stock of the hedge-fund book shrank to one share (now below
    the 10,000 dollar threshold, and no option of the book on it): one row per book, without that
    symbol; the key is enforced."""
    assert seeded("--date", AS_OF_TEXT).code == 0
    book = demo_id("portfolio", HEDGE_FUND)
    with Session(engine) as s:
        before = s.scalars(select(CorrelationMatrix).where(CorrelationMatrix.portfolio_id == book)).one()
        held = s.execute(select(Position.symbol, Position.underlying_symbol).where(
            Position.portfolio_id == book)).all()
    underlyings = {u for _, u in held if u}
    gone = next(sym for sym in before.symbols if sym not in underlyings and sym in {h for h, _ in held})
    with Session(engine) as s, s.begin():
        s.execute(update(Position).where(Position.portfolio_id == book, Position.symbol == gone)
                  .values(quantity=1.0))

    assert seeded("--date", AS_OF_TEXT, "--force").code == 0
    with Session(engine) as s:
        rows = s.scalars(select(CorrelationMatrix)).all()
        pairs = s.scalar(select(func.count()).select_from(PairwiseCorrelation).where(
            PairwiseCorrelation.portfolio_id == book))
    assert sorted(r.portfolio_id for r in rows) == sorted(PUBLIC_BOOKS)  # one row per book, no duplicate
    after = next(r for r in rows if r.portfolio_id == book)
    assert after.symbols == [s for s in before.symbols if s != gone]
    n = len(after.symbols)
    assert pairs == n * (n - 1) // 2
    with Session(engine) as s, pytest.raises(IntegrityError), s.begin():  # the primary key holds
        s.execute(insert(CorrelationMatrix).values(
            portfolio_id=book, as_of_date=AS_OF, window_days=90, symbols=[], matrix=[], observations=[]))
