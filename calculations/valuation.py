"""Valuation and aggregation (SPEC §6.1) and mark-to-market daily P&L (SPEC §6.7).

Inputs are plain data: positions, and `closes` — a DataFrame indexed by session date
(ascending, `datetime.date`), one column per symbol, adjusted closes in dollars, NaN where a
symbol has no price that day. Callers pass only prices dated on or before the as-of date.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

import numpy as np
import pandas as pd

from calculations.greeks import PositionGreeks, option_greeks, option_greeks_books
from calculations.options import intrinsic_value
from calculations.positions import OPTIONS, PRIVATE, PUBLIC, PositionInput
from calculations.prices import LatestCloses

# Price sources
MARKET, MARK, ENTRY, INTRINSIC, MODEL = "market", "mark", "entry", "intrinsic", "model"
# Position flag: a non-positive or non-finite stored close of its symbol or underlying, over the
# history the engines read, was read as a missing close.
BAD_CLOSES_IGNORED = "bad_closes_ignored"


class PricedPosition(NamedTuple):
    """One position valued on one date. `market_value` is signed dollars (shorts negative);
    None when the position could not be priced (then it is skipped and flagged). A named tuple:
    a chunk builds one per position, cheaply."""

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


def price_position(position: PositionInput, closes: pd.DataFrame | LatestCloses, on: date,
                   stale_before: date | None = None, *, risk_free_rate: float,
                   marks: Mapping[str, tuple[date, float]] | None = None,
                   model: PositionGreeks | None = None) -> PricedPosition:
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
    prices = LatestCloses.of(closes)
    flags: list[str] = []
    cls = pos.asset_class
    quote = prices.latest(pos.symbol, on)
    terms = pos.contract
    expired = terms is not None and terms.expiration <= on
    if cls == PRIVATE:
        quote = (marks or {}).get(pos.symbol) or quote
        price, when, source = (quote[1], quote[0], MARK) if quote else (pos.entry_price, None, ENTRY)
    elif cls == OPTIONS and quote is None and terms is None:
        return PricedPosition(pos, None, None, None, None, ("invalid_contract",))
    elif expired:
        underlying = prices.latest(pos.underlying, terms.expiration)
        if underlying is None:
            return PricedPosition(pos, None, None, None, None, ("missing_price", "expired"))
        price = intrinsic_value(terms.right, underlying[1], terms.strike)
        when, source = underlying[0], INTRINSIC
        flags.append("expired")
    elif cls == OPTIONS and quote is None:
        model = model or option_greeks(pos, prices, on, risk_free_rate)
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


@dataclass(frozen=True)
class Book:
    """One portfolio to value: its positions, its cash (dollars) and the latest marks of its
    PRIVATE symbols (symbol → (date, value))."""

    positions: Sequence[PositionInput]
    cash: float
    marks: Mapping[str, tuple[date, float]] | None = None


def value_portfolio(positions: Sequence[PositionInput], closes: pd.DataFrame, as_of: date,
                    cash: float, stale_before: date | None = None, *, risk_free_rate: float,
                    marks: Mapping[str, tuple[date, float]] | None = None) -> Valuation:
    """`value_books` for one book whose closes are all in `closes`."""
    prices = LatestCloses(closes)
    return value_books([Book(positions, cash, marks)], prices, lambda _: prices, as_of,
                       stale_before, risk_free_rate=risk_free_rate)[0]


def value_books(books: Sequence[Book], market: LatestCloses, closes_of: Callable[[int], pd.DataFrame | LatestCloses],
                as_of: date, stale_before: date | None = None, *, risk_free_rate: float) -> list[Valuation]:
    """Value every position of every book held at the close of `as_of` and aggregate each book
    (dollars), in one pass over the chunk.

    A PUBLIC position whose symbol `market` holds is priced by one array look-up for all books
    (its latest finite close on or before `as_of`); every other position (options, PRIVATE, a
    symbol outside `market`) by `price_position` on its book's closes `closes_of(i)`, which is
    called only for a book holding such a position. Both give what `price_position` gives.

    Positions not held on `as_of` are ignored. A position whose quantity sign contradicts its
    type, whose exit date precedes its entry date, or that has no usable price, is skipped and
    listed in `skipped`; it adds nothing to the aggregates. An empty book gives zeros and
    total = cash.
    """
    plans: list[list[PricedPosition | _Stock | PositionInput]] = []  # per book, in position order
    skipped: list[list[str]] = []
    stock_codes: list[int] = []
    for book in books:
        plan: list[PricedPosition | _Stock | PositionInput] = []
        reasons: list[str] = []
        for pos in book.positions:
            if pos.exit_date is not None and pos.exit_date < pos.entry_date:
                if pos.entry_date <= as_of:  # reported, never silently dropped
                    reasons.append(f"{pos.symbol}: exit_date {pos.exit_date} before entry_date {pos.entry_date}")
                    plan.append(PricedPosition(pos, None, None, None, None, ("invalid_dates",)))
                continue
            if not pos.is_held_on(as_of):
                continue
            problem = pos.sign_error()
            if problem:
                reasons.append(f"{pos.symbol}: {problem}")
                plan.append(PricedPosition(pos, None, None, None, None, ("invalid_quantity",)))
                continue
            code = market.code(pos.symbol) if pos.asset_class == PUBLIC else -1
            if code >= 0:
                plan.append(_Stock(pos, len(stock_codes)))
                stock_codes.append(code)
            else:
                plan.append(pos)
        plans.append(plan)
        skipped.append(reasons)
    prices, rows = market.on(np.array(stock_codes, dtype=np.int64), as_of)
    price_list, row_list = prices.tolist(), rows.tolist()
    models = option_greeks_books([[e for e in plan if isinstance(e, PositionInput) and e.asset_class == OPTIONS]
                                  for plan in plans], closes_of, as_of, risk_free_rate)
    valuations = []
    for i, (book, plan, reasons) in enumerate(zip(books, plans, skipped, strict=True)):
        priced: list[PricedPosition] = []
        closes = None
        for entry in plan:
            if isinstance(entry, PricedPosition):
                priced.append(entry)
                continue
            if isinstance(entry, _Stock):
                row = row_list[entry.index]
                quote = (market.sessions[row], price_list[entry.index]) if row >= 0 else None
                p = _price_stock(entry.position, quote, stale_before)
            else:
                if closes is None:
                    closes = closes_of(i)
                p = price_position(entry, closes, as_of, stale_before, risk_free_rate=risk_free_rate,
                                   marks=book.marks, model=models.get(entry.id))
            if p.market_value is None:
                reasons.append(f"{p.position.symbol}: {p.flags[0]}")
            priced.append(p)
        valuations.append(_aggregate(as_of, priced, book.cash, reasons))
    return valuations


@dataclass(frozen=True, slots=True)
class _Stock:
    """A PUBLIC position priced by the chunk's array look-up: its entry in the look-up."""

    position: PositionInput
    index: int


def _price_stock(pos: PositionInput, quote: tuple[date, float] | None, stale_before: date | None) -> PricedPosition:
    """`price_position` of a PUBLIC position given its latest close (None: none)."""
    if quote is None:
        return PricedPosition(pos, None, None, None, None, ("missing_price",))
    when, price = quote
    if not math.isfinite(price) or price < 0:
        return PricedPosition(pos, None, None, None, None, ("invalid_price",))
    flags = ("stale_prices",) if stale_before is not None and when < stale_before else ()
    return PricedPosition(pos, price, when, MARKET, pos.quantity * price * pos.multiplier, flags)


def _aggregate(as_of: date, priced: list[PricedPosition], cash: float, skipped: list[str]) -> Valuation:
    """A book's `Valuation` from its priced positions (in position order)."""
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
    """`daily_pnl_books` for one book whose closes are all in `closes`."""
    prices = LatestCloses(closes)
    return daily_pnl_books([Book(positions, 0.0)], prices, lambda _: prices, today,
                           previous_session, risk_free_rate=risk_free_rate)[0]


def daily_pnl_books(books: Sequence[Book], market: LatestCloses,
                    closes_of: Callable[[int], pd.DataFrame | LatestCloses], today: date,
                    previous_session: date, *, risk_free_rate: float) -> list[DailyPnl]:
    """Each book's mark-to-market P&L for `today` (dollars): Σ over positions held at both
    closes of quantity × multiplier × (price today − price at the previous session), plus
    quantity × multiplier × (price today − entry price) for positions entered after the previous
    session. PRIVATE positions contribute 0 (held at mark). Positions exited on or before
    `today` contribute nothing (no exit price is recorded). Positions with a quantity sign error
    or a missing price on either date are listed in `unpriced`.

    Prices as `value_books` reads them: one array look-up per date for the PUBLIC positions
    whose symbol `market` holds, `price_position` on `closes_of(i)` for the others."""
    held: list[list[PositionInput]] = []
    options: list[list[PositionInput]] = []  # per book: its options, priced by their model
    codes: list[int] = []
    for book in books:
        mine = [p for p in book.positions if p.is_held_on(today) and p.asset_class != PRIVATE]
        held.append(mine)
        options.append([p for p in mine if p.asset_class == OPTIONS])
        codes.extend(market.code(p.symbol) if p.asset_class == PUBLIC else -1 for p in mine)
    code_array = np.array(codes, dtype=np.int64)
    now_prices = market.on(code_array, today)[0].tolist()
    before_prices = market.on(code_array, previous_session)[0].tolist()
    models_now = option_greeks_books(options, closes_of, today, risk_free_rate)
    models_before = option_greeks_books(options, closes_of, previous_session, risk_free_rate)
    out = []
    k = 0
    for i, mine in enumerate(held):
        total = 0.0
        unpriced: list[str] = []
        closes = None
        for pos in mine:
            code, now_close, before_close = codes[k], now_prices[k], before_prices[k]
            k += 1
            if pos.sign_error():
                unpriced.append(pos.symbol)
                continue
            was_held = pos.is_held_on(previous_session)
            if code >= 0:  # a stock: a close is usable when it is a finite, non-negative price
                now = now_close if now_close >= 0 else None  # NaN compares False
                before = before_close if before_close >= 0 else None
            else:
                if closes is None:
                    closes = closes_of(i)
                now = price_position(pos, closes, today, risk_free_rate=risk_free_rate,
                                     model=models_now.get(pos.id)).price
                before = (price_position(pos, closes, previous_session, risk_free_rate=risk_free_rate,
                                         model=models_before.get(pos.id)).price
                          if was_held and now is not None else None)
            if now is None:
                unpriced.append(pos.symbol)
                continue
            if was_held:
                if before is None:
                    unpriced.append(pos.symbol)
                    continue
                reference = before
            else:
                reference = pos.entry_price
            total += pos.quantity * pos.multiplier * (now - reference)
        out.append(DailyPnl(total, tuple(unpriced)))
    return out
