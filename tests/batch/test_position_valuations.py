"""`position_valuations` (SPEC §6.1): one row per valued position, after a real demo run, on SQLite
and PostgreSQL.

Oracles: the positions and closes as stored (`market_prices` on the as-of date, quantity × close
by hand), the snapshot's aggregates and `position_greeks.model_price`: never the valuation code.
"""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, PRIVATE_ONLY, demo_id
from models import MarketPrice, PortfolioSnapshot, Position, PositionGreeks, PositionValuation

AS_OF = date(2022, 12, 28)
BOOKS = (INDIVIDUAL, HNW, HEDGE_FUND, PRIVATE_ONLY)


def held(engine, portfolio_id: uuid.UUID) -> dict[uuid.UUID, Position]:
    """The book's positions held at the AS_OF close: entered on or before it, not exited by it."""
    with Session(engine) as s:
        return {p.id: p for p in s.scalars(select(Position).where(Position.portfolio_id == portfolio_id))
                if p.deleted_at is None and p.quantity != 0 and p.entry_date <= AS_OF
                and (p.exit_date is None or p.exit_date > AS_OF)}


def stored(engine, portfolio_id: uuid.UUID) -> list[PositionValuation]:
    with Session(engine) as s:
        return list(s.scalars(select(PositionValuation).where(PositionValuation.portfolio_id == portfolio_id,
                                                              PositionValuation.as_of_date == AS_OF)))


def closes(engine, symbols: set[str]) -> dict[str, float]:
    with Session(engine) as s:
        return dict(s.execute(select(MarketPrice.symbol, MarketPrice.close).where(
            MarketPrice.symbol.in_(symbols), MarketPrice.date == AS_OF)).all())


def test_every_held_position_has_one_row_matching_closes_and_the_snapshot(seeded, engine):
    assert seeded("--date", AS_OF.isoformat())[0] == 0
    kinds = set()
    for key in BOOKS:
        pid = demo_id("portfolio", key)
        positions = held(engine, pid)
        rows = stored(engine, pid)
        assert len(positions) > 0, key
        assert sorted(r.position_id for r in rows) == sorted(positions), key  # exactly one row each
        with Session(engine) as s:
            snapshot = s.scalars(select(PortfolioSnapshot).where(PortfolioSnapshot.portfolio_id == pid,
                                                                 PortfolioSnapshot.snapshot_date == AS_OF)).one()
            model_prices = dict(s.execute(select(PositionGreeks.position_id, PositionGreeks.model_price).where(
                PositionGreeks.portfolio_id == pid, PositionGreeks.as_of_date == AS_OF)).all())
        public = {r.position_id: r for r in rows if positions[r.position_id].investment_class == "PUBLIC"}
        close = closes(engine, {r.symbol for r in public.values()})
        for row in rows:
            position = positions[row.position_id]
            assert (row.symbol, row.quantity, row.flags) == (position.symbol, position.quantity, []), key
            assert row.market_value is not None and row.market_value != 0, (key, row.symbol)
            kinds.add((position.investment_class, row.price_source))
            if position.investment_class == "PUBLIC":  # quantity × the stored close on the as-of date
                assert (row.price, row.price_date, row.price_source) == (close[row.symbol], AS_OF, "market")
                assert row.market_value == pytest.approx(position.quantity * close[row.symbol], rel=1e-12)
            elif position.investment_class == "OPTIONS":  # no traded price in the demo: the model's
                assert (row.price_source, row.price_date) == ("model", None)
                assert row.price == model_prices[row.position_id]
                assert row.market_value == pytest.approx(position.quantity * 100 * row.price, rel=1e-12)
        market = [r.market_value for r in rows if positions[r.position_id].investment_class != "PRIVATE"]
        private = [r.market_value for r in rows if positions[r.position_id].investment_class == "PRIVATE"]
        assert sum(market) == pytest.approx(snapshot.long_value + snapshot.short_value, rel=1e-12, abs=1e-9), key
        assert sum(private) == pytest.approx(snapshot.private_value, rel=1e-12, abs=1e-9), key
        assert sum(v < 0 for v in market) == snapshot.num_short, key
    # the demo exercises stocks, shorts' signs, model-priced options and privates at entry
    assert {("PUBLIC", "market"), ("OPTIONS", "model"), ("PRIVATE", "entry")} <= kinds


def test_a_rerun_replaces_the_rows(seeded, engine):
    """A forced rerun on changed closes rewrites each row (one per key, the new value)."""
    assert seeded("--date", AS_OF.isoformat())[0] == 0
    pid = demo_id("portfolio", HEDGE_FUND)
    first = {r.position_id: r for r in stored(engine, pid)}
    stock = next(r for r in first.values() if r.price_source == "market" and r.quantity > 0)
    with Session(engine) as s, s.begin():
        s.execute(update(MarketPrice).where(MarketPrice.symbol == stock.symbol, MarketPrice.date == AS_OF)
                  .values(close=stock.price * 2))
        total = s.scalar(select(func.count()).select_from(PositionValuation))

    assert seeded("--date", AS_OF.isoformat(), "--force", "--skip-sync")[0] == 0

    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(PositionValuation)) == total  # no duplicates
    second = {r.position_id: r for r in stored(engine, pid)}
    assert second.keys() == first.keys()
    assert second[stock.position_id].price == stock.price * 2
    assert second[stock.position_id].market_value == pytest.approx(stock.market_value * 2, rel=1e-12)
