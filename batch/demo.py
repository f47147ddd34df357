"""`seed-demo` (SPEC §9): four demo portfolios on symbols the `sample` provider has, with
deterministic UUIDs. Re-seeding changes nothing (rows are upserted with identical values)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from batch.db import upsert
from batch.providers import SampleProvider
from calculations.positions import PRIVATE, classify_symbol
from models import Portfolio, Position

DEMO_NAMESPACE = uuid.UUID("5a1e0c7e-51a5-4e0b-9d1c-0de70da7a000")


def demo_id(*parts: str) -> uuid.UUID:
    return uuid.uuid5(DEMO_NAMESPACE, "/".join(parts))


INDIVIDUAL, HNW, HEDGE_FUND, PRIVATE_ONLY = "individual", "high-net-worth", "hedge-fund", "private-only"
STOCK_ENTRY = date(2022, 1, 3)

# (key, name, cash in dollars)
PORTFOLIOS = [
    (INDIVIDUAL, "Demo Individual Investor", 60_000.0),
    (HNW, "Demo High Net Worth", 50_000.0),
    (HEDGE_FUND, "Demo Hedge Fund Style", 250_000.0),
    (PRIVATE_ONLY, "Demo Private Markets Only", 5_000.0),
]

# (symbol, shares); entry at the bundled close on STOCK_ENTRY (or the date given).
LONGS = {
    INDIVIDUAL: [("AAPL", 300), ("MSFT", 150), ("JNJ", 125), ("JPM", 200), ("KO", 400), ("PEP", 150),
                 ("PG", 175), ("WMT", 200), ("HD", 75), ("UNH", 50), ("XOM", 300), ("CVX", 150),
                 ("MTUM", 150), ("QUAL", 200), ("USMV", 300), ("VLUE", 250)],
    HNW: [("AAPL", 400), ("MSFT", 200), ("AMD", 300), ("LLY", 120), ("MRK", 500), ("PFE", 800),
          ("UNH", 80), ("JNJ", 250), ("BAC", 1200), ("JPM", 300), ("GE", 250), ("HD", 100),
          ("BBY", 300), ("KO", 600), ("WMT", 250), ("XOM", 500), ("SIZE", 200), ("QUAL", 300)],
    HEDGE_FUND: [("AAPL", 1500), ("MSFT", 800), ("AMD", 1200), ("LLY", 400), ("UNH", 300),
                 ("JPM", 900), ("HD", 400), ("CVX", 700), ("XOM", 1500), ("MRK", 1200),
                 ("PEP", 600), ("WMT", 700), ("MTUM", 500)],
}
SHORTS = {HEDGE_FUND: [("BBY", -800), ("RRC", -3000), ("GE", -600), ("BAC", -2500), ("PFE", -1500),
                       ("KO", -1000), ("PG", -500), ("JNJ", -400), ("USMV", -900)]}

# (position_type, underlying, expiration, C/P, strike, contracts, premium per share)
OPTION_ENTRY = date(2022, 11, 15)
OPTIONS = {HEDGE_FUND: [
    ("LC", "AAPL", date(2023, 3, 17), "C", 150.0, 10, 6.50),
    ("LP", "MSFT", date(2023, 1, 20), "P", 220.0, 5, 4.10),
    ("SC", "XOM", date(2023, 3, 17), "C", 120.0, -8, 3.40),
    ("SP", "JPM", date(2023, 6, 16), "P", 125.0, -6, 5.80),
    ("LC", "LLY", date(2023, 6, 16), "C", 380.0, 4, 24.00),
    ("LP", "BAC", date(2023, 1, 20), "P", 32.0, 20, 0.95),
    ("LC", "AMD", date(2023, 3, 17), "C", 80.0, 15, 5.60),
    ("SC", "PG", date(2023, 1, 20), "C", 155.0, -10, 1.20),
]}

# (symbol, value in dollars, subtype); quantity 1, entry price = value.
PRIVATES = {
    HNW: [("BX_PRIVATE_EQUITY", 285_000, "PRIVATE_EQUITY"), ("A16Z_VC_FUND", 142_500, "VENTURE_CAPITAL"),
          ("STARWOOD_REIT", 142_500, "PRIVATE_REIT"), ("TWO_SIGMA_FUND", 142_500, "HEDGE_FUND"),
          ("HOME_EQUITY", 285_000, "REAL_ESTATE"), ("RENTAL_CONDO", 142_500, "REAL_ESTATE"),
          ("RENTAL_SFH", 142_500, "REAL_ESTATE"), ("CRYPTO_BTC_ETH", 42_750, "CRYPTOCURRENCY"),
          ("ART_COLLECTIBLES", 28_500, "COLLECTIBLES"), ("MONEY_MARKET", 57_000, "CASH_EQUIVALENT"),
          ("TREASURY_BILLS", 28_500, "CASH_EQUIVALENT")],
    PRIVATE_ONLY: [("BX_PRIVATE_EQUITY", 500_000, "PRIVATE_EQUITY"), ("RENTAL_CONDO", 350_000, "REAL_ESTATE"),
                   ("ART_COLLECTIBLES", 75_000, "COLLECTIBLES"), ("CRYPTO_BTC_ETH", 40_000, "CRYPTOCURRENCY")],
}
PRIVATE_ENTRY = date(2021, 6, 30)


def demo_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The portfolio and position rows, entry prices read from the bundled sample closes."""
    closes = SampleProvider().get_daily_prices(
        sorted({s for rows in LONGS.values() for s, _ in rows} | {s for rows in SHORTS.values() for s, _ in rows}),
        STOCK_ENTRY, STOCK_ENTRY).rows
    entry = {r.symbol: round(float(r.close), 2) for r in closes.itertuples()}
    portfolios, positions = [], []
    for key, name, cash in PORTFOLIOS:
        pid = demo_id("portfolio", key)
        portfolios.append({"id": pid, "name": name, "cash_balance": cash, "currency": "USD"})
        for symbol, qty in LONGS.get(key, []) + SHORTS.get(key, []):
            positions.append(_position(pid, key, symbol, "LONG" if qty > 0 else "SHORT", qty,
                                       entry[symbol], STOCK_ENTRY))
        for ptype, underlying, expiry, right, strike, contracts, premium in OPTIONS.get(key, []):
            symbol = f"{underlying}{expiry:%y%m%d}{right}{round(strike * 1000):08d}"
            positions.append(_position(pid, key, symbol, ptype, contracts, premium, OPTION_ENTRY,
                                       underlying_symbol=underlying, strike_price=strike,
                                       expiration_date=expiry, investment_subtype="LISTED_OPTION"))
        for symbol, value, subtype in PRIVATES.get(key, []):
            positions.append(_position(pid, key, symbol, "LONG", 1, float(value), PRIVATE_ENTRY,
                                       investment_subtype=subtype))
    return portfolios, positions


def _position(pid: uuid.UUID, key: str, symbol: str, ptype: str, qty: float, price: float,
              entry_date: date, **extra: Any) -> dict[str, Any]:
    row = {"id": demo_id("position", key, symbol), "portfolio_id": pid, "symbol": symbol,
           "position_type": ptype, "quantity": float(qty), "entry_price": price, "entry_date": entry_date,
           "exit_date": None, "investment_class": classify_symbol(symbol), "underlying_symbol": None,
           "strike_price": None, "expiration_date": None, "implied_volatility": None,
           "investment_subtype": "STOCK" if len(symbol) <= 4 else None}
    row.update(extra)
    if row["investment_class"] == PRIVATE and "investment_subtype" not in extra:
        row["investment_subtype"] = "PRIVATE"
    return row


def seed_demo(session: Session) -> dict[str, int]:
    """Upsert the demo portfolios and positions. Returns counts."""
    portfolios, positions = demo_rows()
    upsert(session, Portfolio, portfolios, key=("id",))
    upsert(session, Position, positions, key=("id",))
    return {"portfolios": len(portfolios), "positions": len(positions)}
