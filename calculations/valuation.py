"""Valuation and aggregation (SPEC §6.1) and mark-to-market daily P&L (SPEC §6.7).

Inputs are plain data: positions, and `closes` — a DataFrame indexed by session date
(ascending, `datetime.date`), one column per symbol, adjusted closes in dollars, NaN where a
symbol has no price that day. Callers pass only prices dated on or before the as-of date.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

import pandas as pd

from calculations.greeks import option_greeks
from calculations.options import intrinsic_value
from calculations.positions import OPTIONS, PRIVATE, PositionInput
from calculations.prices import latest_close

# Price sources
MARKET, MARK, ENTRY, INTRINSIC, MODEL = "market", "mark", "entry", "intrinsic", "model"
# Position flag: a non-positive or non-finite stored close of its symbol or underlying, over the
# history the engines read, was read as a missing close.
BAD_CLOSES_IGNORED = "bad_closes_ignored"


@dataclass(frozen=True)
class PricedPosition:
    """One position valued on one date. `market_value` is signed dollars (shorts negative);
    None when the position could not be priced (then it is skipped and flagged)."""

    position: PositionInput
    price: float | None
    price_date: date | None
    price_source: str | None
    market_value: float | None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Valuation:
    """Portfolio aggregates in dollars. `short_value` is ≤ 0; gross = long − short;
    net = long + short; total = net + private + cash (NAV)."""

    as_of: date
    positions: tuple[PricedPosition, ...]
    long_value: float
    short_value: float
    gross_exposure: float
    net_exposure: float
    private_value: float
    cash_value: float
    total_value: float
    num_positions: int
    num_long: int
    num_short: int
    num_private: int
    skipped: tuple[str, ...] = field(default=())  # "SYMBOL: reason" for unpriced positions


def price_position(position: PositionInput, closes: pd.DataFrame, on: date,
                   stale_before: date | None = None, *, risk_free_rate: float,
                   marks: Mapping[str, tuple[date, float]] | None = None) -> PricedPosition:
    """Price one position at the close of `on`.

    PUBLIC: latest close on or before `on`. PRIVATE: its mark from `marks` (symbol → (date,
    value), any date on or before `on`) or else from `closes` under its own symbol, else its
    entry price. OPTIONS: a traded price under the option symbol if any; else, when its terms
    (right, strike, expiration: `PositionInput.contract`) cannot be read — e.g. a malformed OCC
    symbol without strike/expiration columns — unpriced with `invalid_contract` (reported, never
    guessed); once expired (expiration ≤ on), intrinsic value at the underlying's close on
    expiry; else its Black–Scholes model price (`price_source = "model"`, `calculations.greeks.
    option_greeks` at `risk_free_rate`), or, when the model cannot run (no underlying close, no
    volatility), the entry price flagged `model_price_unavailable`. An expired option with no
    underlying price at expiry is unpriced. A market price dated before `stale_before` is flagged
    `stale_prices`.
    """
    pos = position
    flags: list[str] = []
    cls = pos.asset_class
    quote = latest_close(closes, pos.symbol, on)
    terms = pos.contract
    expired = terms is not None and terms.expiration <= on
    if cls == PRIVATE:
        quote = (marks or {}).get(pos.symbol) or quote
        price, when, source = (quote[1], quote[0], MARK) if quote else (pos.entry_price, None, ENTRY)
    elif cls == OPTIONS and quote is None and terms is None:
        return PricedPosition(pos, None, None, None, None, ("invalid_contract",))
    elif expired:
        underlying = latest_close(closes, pos.underlying, terms.expiration)
        if underlying is None:
            return PricedPosition(pos, None, None, None, None, ("missing_price", "expired"))
        price = intrinsic_value(terms.right, underlying[1], terms.strike)
        when, source = underlying[0], INTRINSIC
        flags.append("expired")
    elif cls == OPTIONS and quote is None:
        model = option_greeks(pos, closes, on, risk_free_rate)
        if model.status == "ok" and model.model_price is not None:
            price, when, source = model.model_price, None, MODEL
        else:
            price, when, source = pos.entry_price, None, ENTRY
            flags.append("model_price_unavailable")
    elif quote is None:
        return PricedPosition(pos, None, None, None, None, ("missing_price",))
    else:
        when, price = quote
        source = MARKET
    if not math.isfinite(price) or price < 0:
        return PricedPosition(pos, None, None, None, None, ("invalid_price",))
    if stale_before is not None and source == MARKET and when is not None and when < stale_before:
        flags.append("stale_prices")
    value = pos.quantity * price * pos.multiplier
    return PricedPosition(pos, price, when, source, value, tuple(flags))


def value_portfolio(positions: Sequence[PositionInput], closes: pd.DataFrame, as_of: date,
                    cash: float, stale_before: date | None = None, *, risk_free_rate: float,
                    marks: Mapping[str, tuple[date, float]] | None = None) -> Valuation:
    """Value every position held at the close of `as_of` and aggregate (dollars).

    Positions not held on `as_of` are ignored. A position whose quantity sign contradicts its
    type, whose exit date precedes its entry date, or that has no usable price, is skipped and
    listed in `skipped`; it adds nothing to the aggregates. An empty portfolio gives zeros and total = cash.
    """
    priced: list[PricedPosition] = []
    skipped: list[str] = []
    for pos in positions:
        if pos.exit_date is not None and pos.exit_date < pos.entry_date:
            if pos.entry_date <= as_of:  # reported, never silently dropped
                skipped.append(f"{pos.symbol}: exit_date {pos.exit_date} before entry_date {pos.entry_date}")
                priced.append(PricedPosition(pos, None, None, None, None, ("invalid_dates",)))
            continue
        if not pos.is_held_on(as_of):
            continue
        problem = pos.sign_error()
        if problem:
            skipped.append(f"{pos.symbol}: {problem}")
            priced.append(PricedPosition(pos, None, None, None, None, ("invalid_quantity",)))
            continue
        p = price_position(pos, closes, as_of, stale_before, risk_free_rate=risk_free_rate, marks=marks)
        if p.market_value is None:
            skipped.append(f"{pos.symbol}: {p.flags[0]}")
        priced.append(p)
    valued = [p for p in priced if p.market_value is not None]
    private = [p for p in valued if p.position.asset_class == PRIVATE]
    market = [p for p in valued if p.position.asset_class != PRIVATE]
    long_value = sum((p.market_value for p in market if p.market_value > 0), 0.0)
    short_value = sum((p.market_value for p in market if p.market_value < 0), 0.0)
    private_value = sum((p.market_value for p in private), 0.0)
    net = long_value + short_value
    return Valuation(
        as_of=as_of,
        positions=tuple(priced),
        long_value=long_value,
        short_value=short_value,
        gross_exposure=long_value - short_value,
        net_exposure=net,
        private_value=private_value,
        cash_value=cash,
        total_value=net + private_value + cash,
        num_positions=len(priced),
        num_long=sum(1 for p in market if p.position.quantity > 0),
        num_short=sum(1 for p in market if p.position.quantity < 0),
        num_private=sum(1 for p in priced if p.position.asset_class == PRIVATE),
        skipped=tuple(skipped),
    )


@dataclass(frozen=True)
class DailyPnl:
    """Mark-to-market P&L in dollars for one session, with the positions it could not price."""

    pnl: float
    unpriced: tuple[str, ...]


def daily_pnl(positions: Sequence[PositionInput], closes: pd.DataFrame, today: date,
              previous_session: date, *, risk_free_rate: float) -> DailyPnl:
    """Σ over positions held at both closes of quantity × multiplier × (price today − price at
    the previous session), plus quantity × multiplier × (price today − entry price) for positions
    entered after the previous session. PRIVATE positions contribute 0 (held at mark). Positions
    exited on or before `today` contribute nothing (no exit price is recorded). Positions with a
    quantity sign error or a missing price on either date are listed in `unpriced`.
    """
    total = 0.0
    unpriced: list[str] = []
    for pos in positions:
        if not pos.is_held_on(today) or pos.asset_class == PRIVATE:
            continue
        if pos.sign_error():
            unpriced.append(pos.symbol)
            continue
        now = price_position(pos, closes, today, risk_free_rate=risk_free_rate)
        if now.price is None:
            unpriced.append(pos.symbol)
            continue
        if pos.is_held_on(previous_session):
            before = price_position(pos, closes, previous_session, risk_free_rate=risk_free_rate)
            if before.price is None:
                unpriced.append(pos.symbol)
                continue
            reference = before.price
        else:
            reference = pos.entry_price
        total += pos.quantity * pos.multiplier * (now.price - reference)
    return DailyPnl(total, tuple(unpriced))
