"""`seed-demo` (SPEC §9): deterministic, idempotent demo portfolios on the sample data.

Expected values are the SPEC §9 table and the bundled CSV read with the csv module.
"""

from __future__ import annotations

import csv
import gzip
import io
import uuid
from datetime import date
from importlib import resources

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, PRIVATE_ONLY, demo_id, seed_demo
from calculations.options import parse_occ
from models import Portfolio, Position

SAMPLE_FIRST, SAMPLE_LAST = date(2014, 1, 2), date(2022, 12, 28)
STOCK_ENTRY = date(2022, 1, 3)

# SPEC §9, high net worth: symbol -> value (quantity 1, entry = value).
HNW_PRIVATE = {
    "BX_PRIVATE_EQUITY": 285_000, "A16Z_VC_FUND": 142_500, "STARWOOD_REIT": 142_500,
    "TWO_SIGMA_FUND": 142_500, "HOME_EQUITY": 285_000, "RENTAL_CONDO": 142_500, "RENTAL_SFH": 142_500,
    "CRYPTO_BTC_ETH": 42_750, "ART_COLLECTIBLES": 28_500, "MONEY_MARKET": 57_000, "TREASURY_BILLS": 28_500,
}
RIGHT_OF = {"LC": "C", "SC": "C", "LP": "P", "SP": "P"}


def bundled_row(day: date) -> dict[str, float]:
    raw = (resources.files("batch") / "data" / "sample_prices.csv.gz").read_bytes()
    for row in csv.DictReader(io.StringIO(gzip.decompress(raw).decode())):
        if row["date"] == day.isoformat():
            return {k: float(v) for k, v in row.items() if k != "date"}
    raise AssertionError(f"{day} not in the bundled file")


def full_rows(engine, model) -> list[tuple]:
    columns = [c.name for c in model.__table__.columns]
    with Session(engine) as s:
        rows = s.scalars(select(model).order_by(model.id)).all()
        return [tuple(getattr(r, c) for c in columns) for r in rows]


def positions_of(engine, key: str) -> list[Position]:
    with Session(engine) as s:
        rows = s.scalars(select(Position).where(Position.portfolio_id == demo_id("portfolio", key))).all()
        s.expunge_all()
        return list(rows)


@pytest.fixture
def seeded(engine):
    with Session(engine) as s, s.begin():
        seed_demo(s)
    return engine


def test_seeding_twice_leaves_identical_rows(seeded) -> None:
    portfolios, positions = full_rows(seeded, Portfolio), full_rows(seeded, Position)
    assert len(portfolios) == 4 and positions
    with Session(seeded) as s, s.begin():
        counts = seed_demo(s)
    assert counts == {"portfolios": 4, "positions": len(positions)}
    assert full_rows(seeded, Portfolio) == portfolios
    assert full_rows(seeded, Position) == positions


def test_four_portfolios_with_deterministic_ids(seeded) -> None:
    expected = {demo_id("portfolio", key) for key in (INDIVIDUAL, HNW, HEDGE_FUND, PRIVATE_ONLY)}
    assert len(expected) == 4
    assert all(isinstance(i, uuid.UUID) and i.version == 5 for i in expected)
    with Session(seeded) as s:
        ids = set(s.scalars(select(Portfolio.id)))
        assert all(p.deleted_at is None and p.currency == "USD" for p in s.scalars(select(Portfolio)))
    assert ids == expected
    assert demo_id("portfolio", HNW) == demo_id("portfolio", HNW)  # a pure function of the key


def test_position_ids_are_deterministic_and_unique(seeded) -> None:
    with Session(seeded) as s:
        ids = list(s.scalars(select(Position.id)))
    assert len(ids) == len(set(ids))
    assert all(i.version == 5 for i in ids)


def test_high_net_worth_holds_the_eleven_private_assets_of_the_spec(seeded) -> None:
    rows = positions_of(seeded, HNW)
    private = {p.symbol: p for p in rows if p.investment_class == "PRIVATE"}
    assert set(private) == set(HNW_PRIVATE)
    for symbol, value in HNW_PRIVATE.items():
        position = private[symbol]
        assert position.quantity == 1
        assert position.entry_price == value
        assert position.position_type == "LONG"
        assert SAMPLE_FIRST <= position.entry_date <= SAMPLE_LAST
    public = [p for p in rows if p.investment_class != "PRIVATE"]
    assert public and all(p.investment_class == "PUBLIC" and p.quantity > 0 for p in public)


def test_private_only_portfolio_holds_only_private(seeded) -> None:
    rows = positions_of(seeded, PRIVATE_ONLY)
    assert rows
    assert {p.investment_class for p in rows} == {"PRIVATE"}


def test_individual_holds_only_long_public_positions(seeded) -> None:
    rows = positions_of(seeded, INDIVIDUAL)
    assert rows
    assert all(p.investment_class == "PUBLIC" and p.position_type == "LONG" and p.quantity > 0 for p in rows)


def test_hedge_fund_shorts_have_negative_quantities(seeded) -> None:
    rows = positions_of(seeded, HEDGE_FUND)
    shorts = [p for p in rows if p.position_type == "SHORT"]
    longs = [p for p in rows if p.position_type == "LONG"]
    assert shorts and longs
    assert all(p.quantity < 0 for p in shorts)
    assert all(p.quantity > 0 for p in longs)


def test_hedge_fund_options_are_valid_occ_contracts_matching_their_columns(seeded) -> None:
    options = [p for p in positions_of(seeded, HEDGE_FUND) if p.position_type in RIGHT_OF]
    assert len(options) == 8
    assert {p.position_type for p in options} == {"LC", "LP", "SC", "SP"}  # calls and puts, long and short
    for p in options:
        occ = parse_occ(p.symbol)
        assert p.investment_class == "OPTIONS", p.symbol
        assert occ.root == p.underlying_symbol, p.symbol
        assert occ.strike == pytest.approx(p.strike_price, abs=1e-9), p.symbol
        assert occ.expiration == p.expiration_date, p.symbol
        assert occ.right == RIGHT_OF[p.position_type], p.symbol
        assert occ.expiration.year == 2023, p.symbol
        assert (p.quantity < 0) == (p.position_type in ("SC", "SP")), p.symbol
        assert p.entry_price > 0 and p.entry_date < p.expiration_date, p.symbol
        assert SAMPLE_FIRST <= p.entry_date <= SAMPLE_LAST, p.symbol


def test_stock_entry_prices_are_the_bundled_close_on_2022_01_03(seeded) -> None:
    closes = bundled_row(STOCK_ENTRY)
    with Session(seeded) as s:
        stocks = s.scalars(select(Position).where(Position.position_type.in_(["LONG", "SHORT"]),
                                                  Position.investment_class == "PUBLIC")).all()
        assert stocks
        for p in stocks:
            assert p.entry_date == STOCK_ENTRY, p.symbol
            assert p.entry_price == pytest.approx(round(closes[p.symbol], 2), abs=1e-9), p.symbol


def test_every_market_symbol_is_served_by_the_sample_provider(seeded) -> None:
    known = set(bundled_row(STOCK_ENTRY))
    with Session(seeded) as s:
        for p in s.scalars(select(Position)):
            if p.investment_class == "PRIVATE":
                continue
            market_symbol = p.underlying_symbol if p.investment_class == "OPTIONS" else p.symbol
            assert market_symbol in known, p.symbol
