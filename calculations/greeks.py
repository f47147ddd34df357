"""Black–Scholes–Merton prices and Greeks for European options, and per-position Greeks (SPEC §6.2).

Units: money in dollars; `years` in years of 365 calendar days; `rate` and `dividend_yield` as
continuously compounded annual decimals (0.05 = 5%); `vol` as an annualised fraction (0.20 = 20%).

Per-share Greeks (`Greeks`) are for one share of the underlying; a position's Greeks
(`PositionGreeks`) are those × quantity (contracts, negative for SC/SP) × 100.

`closes` is a DataFrame indexed by session `datetime.date` (ascending), one column per symbol,
adjusted closes in dollars, NaN where a symbol has no price that day. Only rows dated on or before
the as-of date are used, whatever else the frame holds.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.special import ndtr

from calculations.options import intrinsic_value
from calculations.positions import OPTIONS, PositionInput
from calculations.prices import LatestCloses

TRADING_DAYS_PER_YEAR = 252
REALISED_VOL_WINDOW = 63
VOL_FLOOR, VOL_CAP = 0.05, 3.0
DAYS_PER_YEAR = 365  # calendar days: time to expiry and theta per calendar day
VOL_POINT = 0.01  # vega is per 1 vol point
RATE_POINT = 0.01  # rho is per 1 rate point

# PositionGreeks.status
OK = "ok"
EXPIRED = "expired"
MISSING_UNDERLYING_PRICE = "missing_underlying_price"
MISSING_VOLATILITY = "missing_volatility"
NOT_AN_OPTION = "not_an_option"
INVALID_CONTRACT = "invalid_contract"  # no strike, expiration or right from fields or OCC symbol

# PositionGreeks.volatility_source
IMPLIED, REALISED = "implied", "realised"

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Greeks:
    """Price and Greeks per share of one contract's underlying (not yet × 100)."""

    price: float  # dollars per share
    delta: float  # dPrice/dSpot
    gamma: float  # d²Price/dSpot², per dollar
    theta: float  # dollars per share per calendar day (annual theta / 365)
    vega: float  # dollars per share per 1 vol point (0.01)
    rho: float  # dollars per share per 1 rate point (0.01)


@dataclass(frozen=True)
class PositionGreeks:
    """One option position's Greeks, scaled by contracts × 100 and signed by quantity.

    The Greeks are 0.0 whenever `status != "ok"`. `model_price` is per share (dollars): the BSM
    price when ok, the intrinsic value at the underlying's close on expiry when expired (None if
    that close is unknown), None otherwise.
    """

    position_id: uuid.UUID
    status: str  # ok, expired, missing_underlying_price, missing_volatility, not_an_option, invalid_contract
    model_price: float | None  # per share, dollars
    underlying_price: float | None  # dollars; for an expired option, the close on expiry
    volatility: float | None  # annualised fraction used (after clamping)
    volatility_source: str | None  # "implied" | "realised"
    years: float | None  # years_to_expiry(as_of, expiration); ≤ 0 when expired
    delta: float
    gamma: float
    theta: float
    vega: float
    rho: float
    dollar_delta: float  # position delta × underlying price: the delta-equivalent market value


def years_to_expiry(as_of: date, expiration: date) -> float:
    """Calendar days ÷ 365 from the as-of close to the 16:00 New York close on `expiration`.

    Both ends are 16:00 closes, so this is a whole number of days: `(expiration − as_of).days / 365`.
    Zero or negative means the option has expired on or before `as_of`.
    """
    return (expiration - as_of).days / DAYS_PER_YEAR


def _check_inputs(spot: float, strike: float, years: float, rate: float, vol: float, right: str,
                  dividend_yield: float) -> None:
    for name, value in (("spot", spot), ("strike", strike), ("years", years), ("vol", vol)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    for name, value in (("rate", rate), ("dividend_yield", dividend_yield)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if right not in ("C", "P"):
        raise ValueError(f"right must be 'C' or 'P', got {right!r}")


def bsm_price(spot: float, strike: float, years: float, rate: float, vol: float, right: str,
              dividend_yield: float = 0.0) -> float:
    """Black–Scholes–Merton price per share of a European call ("C") or put ("P") on an
    underlying paying a continuous dividend yield `dividend_yield`.

    Raises ValueError naming the argument for non-positive spot, strike, years or vol,
    non-finite rate or dividend_yield, or a right other than "C"/"P".
    """
    return bsm_greeks(spot, strike, years, rate, vol, right, dividend_yield).price


def bsm_greeks(spot: float, strike: float, years: float, rate: float, vol: float, right: str,
               dividend_yield: float = 0.0) -> Greeks:
    """Black–Scholes–Merton price and analytic Greeks per share (units: see `Greeks`).

    With d1 = (ln(S/K) + (r − q + σ²/2)T) / (σ√T), d2 = d1 − σ√T:
    call = S e^{−qT} N(d1) − K e^{−rT} N(d2), put = K e^{−rT} N(−d2) − S e^{−qT} N(−d1).
    Same errors as `bsm_price`.
    """
    spot, strike, years, rate, vol, q = (float(spot), float(strike), float(years), float(rate),
                                         float(vol), float(dividend_yield))
    _check_inputs(spot, strike, years, rate, vol, right, q)
    g = bsm_greeks_arrays(np.array([spot]), np.array([strike]), np.array([years]), rate, np.array([vol]),
                          np.array([right == "C"]), q)
    return Greeks(*(float(values[0]) for values in g))


def realised_volatility(closes: pd.Series | np.ndarray, window: int = REALISED_VOL_WINDOW) -> float | None:
    """Annualised realised volatility (fraction) of a daily close series.

    `closes` is indexed by session date, ascending; NaN marks a missing close. Log returns are
    taken between consecutive rows, so a return touching a missing close is NaN and dropped (no
    filling across gaps). The returns dated at the last `window` rows are kept, NaNs dropped, and
    the result is std(ddof=1) × √252.

    Returns None if fewer than max(window // 2, 2) returns remain. Not clamped (see
    `clamp_volatility`). Raises ValueError if `window` < 2 or a close is non-positive or infinite
    (prices are validated before storage, so this is a data error, not missing data).
    """
    if window < 2:
        raise ValueError(f"window must be at least 2, got {window!r}")
    values = np.asarray(closes, dtype=float)
    present = values[~np.isnan(values)]
    if np.any(~np.isfinite(present) | (present <= 0)):
        raise ValueError("closes must be positive and finite (NaN for missing)")
    returns = np.log(values[1:] / values[:-1])[-window:]
    returns = returns[~np.isnan(returns)]
    if returns.size < max(window // 2, 2):
        return None
    return float(np.std(returns, ddof=1) * math.sqrt(TRADING_DAYS_PER_YEAR))


def clamp_volatility(vol: float) -> float:
    """`vol` limited to [VOL_FLOOR, VOL_CAP] = [0.05, 3.0]."""
    return min(max(vol, VOL_FLOOR), VOL_CAP)


def _unpriced(position: PositionInput, status: str, *, model_price: float | None = None,
              underlying_price: float | None = None, years: float | None = None) -> PositionGreeks:
    return PositionGreeks(position.id, status, model_price, underlying_price, None, None, years,
                          0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class GreeksArrays(NamedTuple):
    """`Greeks` of many options at once: one array element per option (units as `Greeks`)."""

    price: np.ndarray
    delta: np.ndarray
    gamma: np.ndarray
    theta: np.ndarray
    vega: np.ndarray
    rho: np.ndarray


def bsm_greeks_arrays(spot: np.ndarray, strike: np.ndarray, years: np.ndarray, rate: float | np.ndarray,
                      vol: np.ndarray,
                      is_call: np.ndarray, dividend_yield: np.ndarray | float = 0.0) -> GreeksArrays:
    """Black–Scholes–Merton price and analytic Greeks per share of many options in one vectorised
    pass (units: see `Greeks`; `rate` one value or one per option). With
    d1 = (ln(S/K) + (r − q + σ²/2)T) / (σ√T), d2 = d1 − σ√T:
    call = S e^{−qT} N(d1) − K e^{−rT} N(d2), put = K e^{−rT} N(−d2) − S e^{−qT} N(−d1).
    Inputs must already be valid (positive finite spot, strike, years and vol — `bsm_greeks`
    checks them for one option): the callers pass only options whose terms and market data are
    known. Empty in, empty out."""
    spot, strike, years, vol = (np.asarray(x, dtype=float) for x in (spot, strike, years, vol))
    q = np.broadcast_to(np.asarray(dividend_yield, dtype=float), spot.shape)
    call = np.asarray(is_call, dtype=bool)
    sqrt_t = np.sqrt(years)
    d1 = (np.log(spot / strike) + (rate - q + 0.5 * vol * vol) * years) / (vol * sqrt_t)
    d2 = d1 - vol * sqrt_t
    carry = np.exp(-q * years)
    spot_df = spot * carry  # S e^{−qT}
    strike_df = strike * np.exp(-rate * years)  # K e^{−rT}
    pdf_d1 = _INV_SQRT_2PI * np.exp(-0.5 * d1 * d1)
    gamma = carry * pdf_d1 / (spot * vol * sqrt_t)
    vega = spot_df * pdf_d1 * sqrt_t
    decay = -spot_df * pdf_d1 * vol / (2.0 * sqrt_t)
    sign = np.where(call, 1.0, -1.0)  # calls N(d), puts N(−d) with the signs flipped
    n_d1, n_d2 = ndtr(sign * d1), ndtr(sign * d2)
    price = sign * (spot_df * n_d1 - strike_df * n_d2)
    delta = sign * carry * n_d1
    theta = decay - sign * rate * strike_df * n_d2 + sign * q * spot_df * n_d1
    rho = sign * strike_df * years * n_d2
    return GreeksArrays(price, delta, gamma, theta / DAYS_PER_YEAR, vega * VOL_POINT, rho * RATE_POINT)


def option_greeks(position: PositionInput, closes: pd.DataFrame | LatestCloses, as_of: date, rate: float,
                  dividend_yield: float = 0.0) -> PositionGreeks:
    """`option_greeks_many` of one position."""
    return option_greeks_many([position], closes, as_of, rate, dividend_yield)[0]


def option_greeks_books(books: Sequence[Sequence[PositionInput]],
                        closes_of: Callable[[int], pd.DataFrame | LatestCloses], as_of: date, rate: float,
                        dividend_yield: float = 0.0) -> dict[uuid.UUID, PositionGreeks]:
    """`option_greeks_many` of the positions of many books, by position id: one pass per distinct
    closes object (`closes_of(i)`, book i's closes; a chunk's books share one), called only for a
    book that has positions."""
    by_closes: dict[int, tuple[pd.DataFrame | LatestCloses, list[PositionInput]]] = {}
    for i, positions in enumerate(books):
        if positions:
            closes = closes_of(i)
            by_closes.setdefault(id(closes), (closes, []))[1].extend(positions)
    modelled: dict[uuid.UUID, PositionGreeks] = {}
    for closes, positions in by_closes.values():
        greeks = option_greeks_many(positions, closes, as_of, rate, dividend_yield)
        modelled.update(zip((p.id for p in positions), greeks, strict=True))
    return modelled


def option_greeks_many(positions: Sequence[PositionInput], closes: pd.DataFrame | LatestCloses, as_of: date,
                       rate: float,
                       dividend_yield: float = 0.0) -> list[PositionGreeks]:
    """Greeks of option positions at the close of `as_of` (SPEC §6.2), every modelled one in
    one vectorised Black–Scholes pass; each underlying's latest close and realised volatility is
    read from `closes` once, however many positions share it.

    - Not an option (asset class other than OPTIONS): status `not_an_option`.
    - Right, strike or expiration unknown from the fields and the OCC symbol: `invalid_contract`.
    - Expired (expiration ≤ as_of): `expired`; model_price = intrinsic value at the underlying's
      latest close on or before the expiration date (None if there is none); Greeks 0.
    - No underlying close on or before `as_of`: `missing_underlying_price`.
    - Volatility: `implied_volatility` if set and > 0 (a fraction), else the realised volatility
      of the underlying's closes up to `as_of`; then clamped to [0.05, 3.0]. If neither is
      available (too little history): `missing_volatility`.
    - Otherwise `ok`: BSM at the underlying's latest close with `rate` and `dividend_yield`;
      position Greeks = per-share Greeks × quantity × 100, dollar_delta = position delta × spot.

    The quantity is used as given (callers skip positions whose sign contradicts their type).
    """
    prices = LatestCloses.of(closes)
    out: list[PositionGreeks | None] = [None] * len(positions)
    spots: dict[str, tuple[date, float] | None] = {}
    realised: dict[str, float | None] = {}
    modelled: list[tuple[int, PositionInput, float, float, float, float, str, str]] = []
    for i, position in enumerate(positions):
        if position.asset_class != OPTIONS:
            out[i] = _unpriced(position, NOT_AN_OPTION)
            continue
        terms = position.contract
        if terms is None:
            out[i] = _unpriced(position, INVALID_CONTRACT)
            continue
        years = years_to_expiry(as_of, terms.expiration)
        underlying = position.underlying
        if years <= 0:
            at_expiry = prices.latest(underlying, terms.expiration)
            if at_expiry is None:
                out[i] = _unpriced(position, EXPIRED, years=years)
            else:
                out[i] = _unpriced(position, EXPIRED, years=years, underlying_price=at_expiry[1],
                                   model_price=intrinsic_value(terms.right, at_expiry[1], terms.strike))
            continue
        if underlying not in spots:
            spots[underlying] = prices.latest(underlying, as_of)
        quote = spots[underlying]
        if quote is None:
            out[i] = _unpriced(position, MISSING_UNDERLYING_PRICE, years=years)
            continue
        implied = position.implied_volatility
        if implied is not None and math.isfinite(implied) and implied > 0:
            raw_vol, source = implied, IMPLIED
        else:
            if underlying not in realised:
                realised[underlying] = realised_volatility(prices.history(underlying, as_of))
            raw_vol, source = realised[underlying], REALISED
        if raw_vol is None:
            out[i] = _unpriced(position, MISSING_VOLATILITY, underlying_price=quote[1], years=years)
            continue
        modelled.append((i, position, quote[1], terms.strike, years, clamp_volatility(raw_vol), terms.right, source))
    if modelled:
        _, _, spot, strike, years, vol, right, _ = (list(column) for column in zip(*modelled, strict=True))
        for name, values in (("spot", spot), ("strike", strike), ("years", years), ("vol", vol)):
            bad = next((v for v in values if not (math.isfinite(v) and v > 0)), None)
            if bad is not None:
                raise ValueError(f"{name} must be a positive finite number, got {bad!r}")
        g = bsm_greeks_arrays(np.array(spot), np.array(strike), np.array(years), rate, np.array(vol),
                              np.array([r == "C" for r in right]), dividend_yield)
        scale = np.array([p.quantity * p.multiplier for _, p, *_ in modelled])
        delta = g.delta * scale
        columns = zip(g.price.tolist(), delta.tolist(), (g.gamma * scale).tolist(), (g.theta * scale).tolist(),
                      (g.vega * scale).tolist(), (g.rho * scale).tolist(), (delta * np.array(spot)).tolist(),
                      strict=True)
        for (i, position, spot_i, _, years_i, vol_i, _, source), (price, d, gm, th, vg, rh, dd) in zip(
                modelled, columns, strict=True):
            out[i] = PositionGreeks(position_id=position.id, status=OK, model_price=price, underlying_price=spot_i,
                                    volatility=vol_i, volatility_source=source, years=years_i, delta=d, gamma=gm,
                                    theta=th, vega=vg, rho=rh, dollar_delta=dd)
    return out  # type: ignore[return-value]  (every slot is set above)
