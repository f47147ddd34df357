"""Tests for calculations.greeks: BSM prices and Greeks, realised volatility, per-position
Greeks (SPEC §6.2).

Where the expected values come from:
- published textbook numbers (Hull, *Options, Futures, and Other Derivatives*) at the precision
  they were published;
- an independent Black–Scholes–Merton formula written below with `math.erf` (`ref_price`,
  `ref_delta`), not the module's `scipy.special.ndtr` code;
- central finite differences of the price for every Greek;
- direct numpy arithmetic on small synthetic price series;
- hand arithmetic (days ÷ 365, intrinsic value, contracts × 100).
"""

from __future__ import annotations

import math
import uuid
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calculations.greeks import (
    REALISED_VOL_WINDOW,
    TRADING_DAYS_PER_YEAR,
    VOL_CAP,
    VOL_FLOOR,
    Greeks,
    PositionGreeks,
    bsm_greeks,
    bsm_price,
    clamp_volatility,
    option_greeks,
    realised_volatility,
    years_to_expiry,
)
from calculations.positions import OPTIONS, PositionInput

NaN = math.nan


# ---------------------------------------------------------------------------------------------
# An independent BSM reference (math.erf), used only as an oracle
# ---------------------------------------------------------------------------------------------

def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _d1_d2(s: float, k: float, t: float, r: float, sigma: float, q: float) -> tuple[float, float]:
    d1 = (math.log(s / k) + (r - q + sigma**2 / 2) * t) / (sigma * math.sqrt(t))
    return d1, d1 - sigma * math.sqrt(t)


def ref_price(s: float, k: float, t: float, r: float, sigma: float, right: str,
              q: float = 0.0) -> float:
    d1, d2 = _d1_d2(s, k, t, r, sigma, q)
    if right == "C":
        return s * math.exp(-q * t) * _cdf(d1) - k * math.exp(-r * t) * _cdf(d2)
    return k * math.exp(-r * t) * _cdf(-d2) - s * math.exp(-q * t) * _cdf(-d1)


def ref_delta(s: float, k: float, t: float, r: float, sigma: float, right: str,
              q: float = 0.0) -> float:
    d1, _ = _d1_d2(s, k, t, r, sigma, q)
    return math.exp(-q * t) * (_cdf(d1) if right == "C" else _cdf(d1) - 1.0)


# ---------------------------------------------------------------------------------------------
# Published values
# ---------------------------------------------------------------------------------------------

def test_hull_example_call_and_put_without_dividends() -> None:
    # Hull, Example 15.6: S=42, K=40, r=10%, σ=20%, T=0.5 → c = 4.76, p = 0.81.
    assert round(bsm_price(42.0, 40.0, 0.5, 0.10, 0.20, "C"), 2) == 4.76
    assert round(bsm_price(42.0, 40.0, 0.5, 0.10, 0.20, "P"), 2) == 0.81


def test_hull_index_option_with_dividend_yield() -> None:
    # Hull, Example 17.1: index 930, K=900, two months, r=8%, σ=20%, dividend yield 3% → c = 51.83.
    assert round(bsm_price(930.0, 900.0, 2 / 12, 0.08, 0.20, "C", dividend_yield=0.03), 2) == 51.83


def test_hull_greeks_example() -> None:
    # Hull, ch. "The Greek Letters": 100,000 calls, S=49, K=50, r=5%, σ=20%, T=20 weeks;
    # price ≈ $240,000 (2.40 per share), delta 0.522, gamma 0.066, theta −4.31 per year
    # (−4.31/365 = −0.0118 per calendar day), vega 12.1 (0.121 per vol point),
    # rho 8.91 (0.0891 per rate point).
    g = bsm_greeks(49.0, 50.0, 20 / 52, 0.05, 0.20, "C")
    assert g.price == pytest.approx(2.40, abs=0.005)
    assert g.delta == pytest.approx(0.522, abs=0.0005)
    assert g.gamma == pytest.approx(0.066, abs=0.0005)
    assert g.theta == pytest.approx(-4.31 / 365, abs=0.005 / 365)
    assert round(g.theta, 4) == -0.0118
    assert g.vega == pytest.approx(0.121, abs=0.0005)
    assert g.rho == pytest.approx(0.0891, abs=0.00005)


# ---------------------------------------------------------------------------------------------
# Prices against the independent formula; parity; bounds
# ---------------------------------------------------------------------------------------------

CASES = [
    # spot, strike, years, rate, vol, dividend_yield
    (100.0, 100.0, 1.0, 0.05, 0.20, 0.02),  # at the money
    (100.0, 80.0, 0.25, 0.03, 0.35, 0.04),  # call ITM, put OTM
    (100.0, 130.0, 2.0, 0.01, 0.15, 0.01),  # call OTM, put ITM
    (25.0, 27.5, 30 / 365, 0.045, 0.60, 0.015),  # short-dated, high vol
    (4500.0, 4400.0, 0.5, -0.005, 0.18, 0.03),  # negative rate, large spot
]


@pytest.mark.parametrize("right", ["C", "P"])
@pytest.mark.parametrize(("s", "k", "t", "r", "sigma", "q"), CASES)
def test_price_matches_independent_formula(s, k, t, r, sigma, q, right) -> None:
    expected = ref_price(s, k, t, r, sigma, right, q)
    assert bsm_price(s, k, t, r, sigma, right, dividend_yield=q) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert bsm_greeks(s, k, t, r, sigma, right, q).price == bsm_price(s, k, t, r, sigma, right, q)


def test_dividend_yield_defaults_to_zero() -> None:
    assert bsm_price(42.0, 40.0, 0.5, 0.10, 0.20, "C") == bsm_price(42.0, 40.0, 0.5, 0.10, 0.20, "C", 0.0)


spots = st.floats(1.0, 1000.0)
moneyness = st.floats(0.5, 2.0)
years_st = st.floats(1 / 365, 5.0)
rates = st.floats(-0.02, 0.15)
vols = st.floats(0.05, 2.0)
yields = st.floats(0.0, 0.10)


@given(s=spots, m=moneyness, t=years_st, r=rates, sigma=vols, q=yields)
def test_put_call_parity_with_dividends(s, m, t, r, sigma, q) -> None:
    k = s * m
    c = bsm_price(s, k, t, r, sigma, "C", q)
    p = bsm_price(s, k, t, r, sigma, "P", q)
    assert c - p == pytest.approx(s * math.exp(-q * t) - k * math.exp(-r * t), abs=1e-9 * (s + k))


@given(s=spots, m=moneyness, t=years_st, r=rates, sigma=vols, q=yields)
def test_no_arbitrage_bounds(s, m, t, r, sigma, q) -> None:
    k = s * m
    fwd_s, pv_k = s * math.exp(-q * t), k * math.exp(-r * t)
    tol = 1e-9 * (s + k)
    c = bsm_greeks(s, k, t, r, sigma, "C", q)
    p = bsm_greeks(s, k, t, r, sigma, "P", q)
    assert max(fwd_s - pv_k, 0.0) - tol <= c.price <= fwd_s + tol
    assert max(pv_k - fwd_s, 0.0) - tol <= p.price <= pv_k + tol
    assert 0.0 <= c.delta <= math.exp(-q * t)
    assert -math.exp(-q * t) <= p.delta <= 0.0
    # call and put share gamma and vega; their deltas differ by e^{−qT}
    assert c.gamma == pytest.approx(p.gamma, rel=1e-12, abs=1e-300)
    assert c.vega == pytest.approx(p.vega, rel=1e-12, abs=1e-300)
    assert c.delta - p.delta == pytest.approx(math.exp(-q * t), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Greeks against central finite differences of the price
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("right", ["C", "P"])
@pytest.mark.parametrize(("s", "k", "t", "r", "sigma", "q"), CASES)
def test_greeks_match_finite_differences(s, k, t, r, sigma, q, right) -> None:
    def price(s=s, t=t, r=r, sigma=sigma) -> float:
        return bsm_price(s, k, t, r, sigma, right, q)

    g = bsm_greeks(s, k, t, r, sigma, right, q)
    hs = s * 1e-4
    delta = (price(s=s + hs) - price(s=s - hs)) / (2 * hs)
    hg = s * 1e-3
    gamma = (price(s=s + hg) - 2 * price() + price(s=s - hg)) / hg**2
    ht = 1e-5
    theta = -(price(t=t + ht) - price(t=t - ht)) / (2 * ht) / 365
    hv = 1e-5
    vega = (price(sigma=sigma + hv) - price(sigma=sigma - hv)) / (2 * hv) * 0.01
    hr = 1e-5
    rho = (price(r=r + hr) - price(r=r - hr)) / (2 * hr) * 0.01

    assert g.delta == pytest.approx(delta, rel=1e-6, abs=1e-9)
    assert g.gamma == pytest.approx(gamma, rel=1e-4, abs=1e-9)
    assert g.theta == pytest.approx(theta, rel=1e-5, abs=1e-9)
    assert g.vega == pytest.approx(vega, rel=1e-6, abs=1e-9)
    assert g.rho == pytest.approx(rho, rel=1e-6, abs=1e-9)
    assert g.delta == pytest.approx(ref_delta(s, k, t, r, sigma, right, q), rel=1e-10, abs=1e-12)


def test_greeks_is_a_frozen_dataclass() -> None:
    g = bsm_greeks(42.0, 40.0, 0.5, 0.10, 0.20, "C")
    assert isinstance(g, Greeks)
    with pytest.raises(AttributeError):
        g.price = 0.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------------------------

GOOD = {"spot": 100.0, "strike": 100.0, "years": 1.0, "rate": 0.05, "vol": 0.2, "right": "C",
        "dividend_yield": 0.0}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("spot", 0.0), ("spot", -1.0), ("spot", NaN),
        ("strike", 0.0), ("strike", -5.0), ("strike", math.inf),
        ("years", 0.0), ("years", -0.1),
        ("vol", 0.0), ("vol", -0.2), ("vol", NaN),
        ("rate", NaN), ("dividend_yield", math.inf),
        ("right", "X"), ("right", "call"), ("right", "c"),
    ],
)
@pytest.mark.parametrize("function", [bsm_price, bsm_greeks])
def test_bad_input_raises_value_error_naming_the_argument(function, name, value) -> None:
    with pytest.raises(ValueError, match=name):
        function(**{**GOOD, name: value})


# ---------------------------------------------------------------------------------------------
# years_to_expiry
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("as_of", "expiration", "days"),
    [
        (date(2022, 12, 28), date(2023, 1, 20), 23),  # 3 days left in Dec + 20 in Jan
        (date(2022, 12, 28), date(2022, 12, 29), 1),
        (date(2023, 1, 20), date(2023, 1, 20), 0),  # expires at today's close: expired
        (date(2023, 1, 23), date(2023, 1, 20), -3),
        (date(2024, 1, 1), date(2025, 1, 1), 366),  # leap year: 366/365 > 1
        (date(2023, 1, 1), date(2024, 1, 1), 365),
    ],
)
def test_years_to_expiry_by_hand(as_of: date, expiration: date, days: int) -> None:
    assert years_to_expiry(as_of, expiration) == days / 365


# ---------------------------------------------------------------------------------------------
# realised_volatility, clamp_volatility
# ---------------------------------------------------------------------------------------------

def sessions(n: int, start: date = date(2022, 9, 1)) -> list[date]:
    """n weekdays from `start` (holidays do not matter for these tests)."""
    return [d.date() for d in pd.bdate_range(start, periods=n)]


def wiggly(n: int, start: float = 100.0) -> np.ndarray:
    """A deterministic close path with uneven daily log returns."""
    steps = 0.012 * np.sin(np.arange(1, n) * 1.7) + 0.004 * np.cos(np.arange(1, n) * 0.3)
    return start * np.exp(np.concatenate([[0.0], np.cumsum(steps)]))


def series(values, dates=None) -> pd.Series:
    dates = dates if dates is not None else sessions(len(values))
    return pd.Series(values, index=pd.Index(dates, dtype=object), dtype=float)


def test_realised_volatility_matches_numpy_on_the_last_window() -> None:
    closes = wiggly(100)
    expected_returns = np.diff(np.log(closes))[-63:]
    expected = np.std(expected_returns, ddof=1) * np.sqrt(252)
    assert realised_volatility(series(closes)) == pytest.approx(expected, rel=1e-12)
    assert REALISED_VOL_WINDOW == 63 and TRADING_DAYS_PER_YEAR == 252


def test_realised_volatility_small_window_by_hand() -> None:
    # closes 100, 110, 99, 99 → log returns ln 1.1, ln 0.9, 0; window 2 keeps ln 0.9 and 0.
    r = [math.log(0.9), 0.0]
    mean = sum(r) / 2
    expected = math.sqrt(sum((x - mean) ** 2 for x in r) / 1) * math.sqrt(252)
    assert realised_volatility(series([100.0, 110.0, 99.0, 99.0]), window=2) == pytest.approx(expected, rel=1e-12)


def test_realised_volatility_drops_returns_across_a_gap() -> None:
    closes = wiggly(80)
    with_gap = closes.copy()
    with_gap[50] = NaN
    log_returns = np.diff(np.log(closes))
    # returns dated at rows 50 (49→50) and 51 (50→51) touch the missing close: return i is
    # log_returns[i - 1], so drop log_returns[49] and log_returns[50]; no 49→51 return is made.
    last_63 = list(range(80 - 63, 80))  # rows whose returns are in the window
    kept = [log_returns[i - 1] for i in last_63 if i not in (50, 51)]
    expected = np.std(kept, ddof=1) * np.sqrt(252)
    assert len(kept) == 61
    assert realised_volatility(series(with_gap)) == pytest.approx(expected, rel=1e-12)


def test_realised_volatility_ignores_leading_nans() -> None:
    closes = np.concatenate([[NaN] * 10, wiggly(40)])
    expected = np.std(np.diff(np.log(closes[10:])), ddof=1) * np.sqrt(252)
    assert realised_volatility(series(closes)) == pytest.approx(expected, rel=1e-12)


def test_realised_volatility_too_short_is_none() -> None:
    # window 63 needs at least 63 // 2 = 31 returns: 32 closes give 31, 31 closes give 30.
    assert realised_volatility(series(wiggly(31))) is None
    assert realised_volatility(series(wiggly(32))) is not None
    # and at least 2 returns for a sample standard deviation, whatever the window
    assert realised_volatility(series([100.0, 101.0]), window=2) is None


@pytest.mark.parametrize("values", [[], [100.0], [NaN, NaN, NaN], [100.0, NaN, 101.0, NaN, 102.0]])
def test_realised_volatility_degenerate_inputs_are_none(values) -> None:
    assert realised_volatility(series(values), window=4) is None


def test_realised_volatility_of_a_flat_series_is_zero_and_not_clamped() -> None:
    assert realised_volatility(series([50.0] * 70)) == 0.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf])
def test_realised_volatility_rejects_non_positive_prices(bad: float) -> None:
    values = list(wiggly(40))
    values[20] = bad
    with pytest.raises(ValueError, match="positive"):
        realised_volatility(series(values))


def test_realised_volatility_rejects_a_window_below_two() -> None:
    with pytest.raises(ValueError, match="window"):
        realised_volatility(series(wiggly(10)), window=1)


@pytest.mark.parametrize(("vol", "expected"), [(0.0, 0.05), (0.01, 0.05), (0.05, 0.05), (0.3, 0.3),
                                               (3.0, 3.0), (7.5, 3.0)])
def test_clamp_volatility(vol: float, expected: float) -> None:
    assert (VOL_FLOOR, VOL_CAP) == (0.05, 3.0)
    assert clamp_volatility(vol) == expected


# ---------------------------------------------------------------------------------------------
# option_greeks
# ---------------------------------------------------------------------------------------------

DATES = sessions(90, start=date(2022, 9, 1))
AS_OF = DATES[79]  # ten more sessions after it must be ignored (no look-ahead)
XYZ = wiggly(90)
XYZ[80:] *= 3.0  # a wild move after the as-of date that must not leak in
SPOT = float(XYZ[79])
EXPIRY = AS_OF + timedelta(days=30)
T = 30 / 365
R, Q = 0.04, 0.01

CLOSES = pd.DataFrame(
    {"XYZ": XYZ, "FLAT": [80.0] * 90, "NEW": [NaN] * 85 + [20.0] * 5, "GONE": [NaN] * 90},
    index=pd.Index(DATES, dtype=object),
)
# XYZ's realised volatility up to AS_OF by numpy: returns of closes DATES[0..79], last 63.
XYZ_REALISED = float(np.std(np.diff(np.log(XYZ[:80]))[-63:], ddof=1) * np.sqrt(252))


def option(position_type: str, quantity: float, *, strike: float = 100.0,
           expiration: date | None = EXPIRY, underlying: str | None = "XYZ",
           implied_volatility: float | None = None, symbol: str = "XYZ-OPTION",
           investment_class: str | None = OPTIONS) -> PositionInput:
    return PositionInput(
        id=uuid.uuid4(), symbol=symbol, position_type=position_type, quantity=quantity,
        entry_price=1.0, entry_date=date(2022, 1, 3), investment_class=investment_class,
        underlying_symbol=underlying, strike_price=strike, expiration_date=expiration,
        implied_volatility=implied_volatility,
    )


def test_realised_vol_fixture_is_within_the_clamp() -> None:
    assert VOL_FLOOR < XYZ_REALISED < VOL_CAP


def test_long_call_with_implied_volatility() -> None:
    lc = option("LC", 2.0, strike=100.0, implied_volatility=0.25)
    g = option_greeks(lc, CLOSES, AS_OF, rate=R, dividend_yield=Q)
    assert isinstance(g, PositionGreeks)
    assert g.position_id == lc.id
    assert g.status == "ok"
    assert (g.volatility, g.volatility_source) == (0.25, "implied")
    assert g.underlying_price == SPOT
    assert g.years == T
    assert g.model_price == pytest.approx(ref_price(SPOT, 100.0, T, R, 0.25, "C", Q), rel=1e-10)
    expected_delta = ref_delta(SPOT, 100.0, T, R, 0.25, "C", Q) * 2 * 100
    assert g.delta == pytest.approx(expected_delta, rel=1e-10)
    assert g.delta > 0
    # the other Greeks are the per-share Greeks (checked above against finite differences)
    # times 2 contracts × 100 shares
    per_share = bsm_greeks(SPOT, 100.0, T, R, 0.25, "C", Q)
    for name in ("gamma", "theta", "vega", "rho"):
        assert getattr(g, name) == pytest.approx(getattr(per_share, name) * 200, rel=1e-12)
    assert g.dollar_delta == pytest.approx(expected_delta * SPOT, rel=1e-10)


def test_short_put_uses_realised_volatility_and_negative_quantity() -> None:
    sp = option("SP", -3.0, strike=95.0)
    g = option_greeks(sp, CLOSES, AS_OF, rate=R, dividend_yield=Q)
    assert g.status == "ok"
    assert g.volatility_source == "realised"
    assert g.volatility == pytest.approx(XYZ_REALISED, rel=1e-12)
    assert g.model_price == pytest.approx(ref_price(SPOT, 95.0, T, R, XYZ_REALISED, "P", Q), rel=1e-10)
    expected_delta = ref_delta(SPOT, 95.0, T, R, XYZ_REALISED, "P", Q) * -3 * 100
    assert g.delta == pytest.approx(expected_delta, rel=1e-10)
    # short a put: long delta, short gamma and vega
    assert g.delta > 0 and g.gamma < 0 and g.vega < 0
    per_share = bsm_greeks(SPOT, 95.0, T, R, XYZ_REALISED, "P", Q)
    for name in ("gamma", "theta", "vega", "rho"):
        assert getattr(g, name) == pytest.approx(getattr(per_share, name) * -300, rel=1e-12)
    assert g.dollar_delta == pytest.approx(expected_delta * SPOT, rel=1e-10)


def test_prices_after_as_of_are_ignored() -> None:
    sp = option("SP", -3.0, strike=95.0)
    assert option_greeks(sp, CLOSES, AS_OF, R, Q) == option_greeks(sp, CLOSES.loc[:AS_OF], AS_OF, R, Q)


@pytest.mark.parametrize("implied", [None, 0.0, -0.1, NaN])
def test_unset_or_non_positive_implied_volatility_falls_back_to_realised(implied) -> None:
    g = option_greeks(option("LC", 1.0, implied_volatility=implied), CLOSES, AS_OF, R)
    assert (g.volatility, g.volatility_source) == (pytest.approx(XYZ_REALISED, rel=1e-12), "realised")


def test_flat_underlying_gives_the_volatility_floor() -> None:
    lc = option("LC", 1.0, strike=80.0, underlying="FLAT")
    g = option_greeks(lc, CLOSES, AS_OF, R)
    assert (g.status, g.volatility, g.volatility_source) == ("ok", 0.05, "realised")
    assert g.model_price == pytest.approx(ref_price(80.0, 80.0, T, R, 0.05, "C"), rel=1e-10)


@pytest.mark.parametrize(("implied", "used"), [(0.01, 0.05), (4.5, 3.0)])
def test_implied_volatility_is_clamped_too(implied: float, used: float) -> None:
    g = option_greeks(option("LP", 1.0, implied_volatility=implied), CLOSES, AS_OF, R)
    assert (g.volatility, g.volatility_source) == (used, "implied")
    assert g.model_price == pytest.approx(ref_price(SPOT, 100.0, T, R, used, "P"), rel=1e-10)


def _assert_no_greeks(g: PositionGreeks) -> None:
    assert (g.delta, g.gamma, g.theta, g.vega, g.rho, g.dollar_delta) == (0.0,) * 6


@pytest.mark.parametrize("as_of", [DATES[60], DATES[70]])  # on the expiration date, and after
def test_expired_itm_call_is_intrinsic_at_expiry(as_of: date) -> None:
    expiry = DATES[60]
    lc = option("LC", 4.0, strike=90.0, expiration=expiry, implied_volatility=0.3)
    g = option_greeks(lc, CLOSES, as_of, R)
    assert g.status == "expired"
    assert g.underlying_price == float(XYZ[60])  # the close on the expiration date
    assert g.model_price == pytest.approx(float(XYZ[60]) - 90.0, rel=1e-12)
    assert g.model_price > 0
    assert g.years == (expiry - as_of).days / 365
    assert (g.volatility, g.volatility_source) == (None, None)
    _assert_no_greeks(g)


def test_expired_otm_short_put_is_worth_zero() -> None:
    sp = option("SP", -2.0, strike=50.0, expiration=DATES[60])
    g = option_greeks(sp, CLOSES, AS_OF, R)
    assert (g.status, g.model_price) == ("expired", 0.0)
    _assert_no_greeks(g)


def test_expired_on_a_non_session_uses_the_previous_close() -> None:
    saturday = DATES[59] + timedelta(days=(5 - DATES[59].weekday()) % 7)  # a weekend day
    last_before = max(d for d in DATES if d <= saturday)
    lc = option("LC", 1.0, strike=90.0, expiration=saturday)
    g = option_greeks(lc, CLOSES, AS_OF, R)
    assert g.status == "expired"
    assert g.underlying_price == float(XYZ[DATES.index(last_before)])


def test_expired_without_an_underlying_close_has_no_model_price() -> None:
    g = option_greeks(option("LC", 1.0, underlying="GONE", expiration=DATES[60]), CLOSES, AS_OF, R)
    assert (g.status, g.model_price, g.underlying_price) == ("expired", None, None)
    _assert_no_greeks(g)


@pytest.mark.parametrize("underlying", ["GONE", "NOT_IN_FRAME", "NEW"])  # NEW starts after AS_OF
def test_missing_underlying_price(underlying: str) -> None:
    g = option_greeks(option("LC", 1.0, underlying=underlying, implied_volatility=0.2),
                      CLOSES, AS_OF, R)
    assert (g.status, g.model_price, g.underlying_price) == ("missing_underlying_price", None, None)
    _assert_no_greeks(g)


def test_missing_volatility_with_too_little_history() -> None:
    short = CLOSES.copy()
    short.loc[DATES[:75], "XYZ"] = NaN  # 5 closes up to AS_OF → 4 returns < 31
    g = option_greeks(option("LC", 1.0), short, AS_OF, R)
    assert (g.status, g.model_price, g.volatility) == ("missing_volatility", None, None)
    assert g.underlying_price == SPOT
    _assert_no_greeks(g)
    # an implied volatility makes the same position priceable
    assert option_greeks(option("LC", 1.0, implied_volatility=0.2), short, AS_OF, R).status == "ok"


def test_a_stock_is_not_an_option() -> None:
    stock = option("LONG", 100.0, strike=None, expiration=None, underlying=None, symbol="XYZ",
                   investment_class="PUBLIC")
    g = option_greeks(stock, CLOSES, AS_OF, R)
    assert (g.status, g.model_price) == ("not_an_option", None)
    _assert_no_greeks(g)


def test_contract_terms_fall_back_to_the_occ_symbol() -> None:
    # XYZ, expiring EXPIRY, put, strike 00105000 / 1000 = 105.000
    occ = f"XYZ{EXPIRY:%y%m%d}P00105000"
    bare = option("LP", 1.0, strike=None, expiration=None, underlying=None, symbol=occ,
                  implied_volatility=0.3)
    g = option_greeks(bare, CLOSES, AS_OF, R)
    assert g.status == "ok"
    assert g.model_price == pytest.approx(ref_price(SPOT, 105.0, T, R, 0.3, "P"), rel=1e-10)


def test_option_without_strike_or_valid_symbol_is_an_invalid_contract() -> None:
    g = option_greeks(option("LC", 1.0, strike=None, symbol="NOT-OCC"), CLOSES, AS_OF, R)
    assert (g.status, g.model_price) == ("invalid_contract", None)
    _assert_no_greeks(g)


@given(contracts=st.integers(1, 50))
def test_position_greeks_scale_linearly_with_contracts(contracts: int) -> None:
    one = option_greeks(option("LC", 1.0, implied_volatility=0.3), CLOSES, AS_OF, R, Q)
    many = option_greeks(option("SC", -float(contracts), implied_volatility=0.3), CLOSES, AS_OF, R, Q)
    assert many.model_price == one.model_price
    for name in ("delta", "gamma", "theta", "vega", "rho", "dollar_delta"):
        assert getattr(many, name) == pytest.approx(-contracts * getattr(one, name), rel=1e-12)


def test_the_vectorised_pass_matches_the_independent_formula_and_finite_differences() -> None:
    """Every CASE as a call and a put, in one `bsm_greeks_arrays` call per rate: prices against
    the independent formula, delta/gamma/vega/theta/rho against central finite differences of
    that formula (so neither depends on the code under test)."""
    import numpy as np

    from calculations.greeks import bsm_greeks_arrays

    for s, k, t, r, sigma, q in CASES:
        g = bsm_greeks_arrays(np.array([s, s]), np.array([k, k]), np.array([t, t]), r, np.array([sigma, sigma]),
                              np.array([True, False]), q)
        for j, right in enumerate("CP"):
            def f(s_=s, t_=t, r_=r, v_=sigma, right=right):
                return ref_price(s_, k, t_, r_, v_, right, q)
            h = 1e-4 * s
            assert g.price[j] == pytest.approx(f(), rel=1e-10, abs=1e-12)
            assert g.delta[j] == pytest.approx((f(s_=s + h) - f(s_=s - h)) / (2 * h), rel=1e-5, abs=1e-7)
            assert g.gamma[j] == pytest.approx((f(s_=s + h) - 2 * f() + f(s_=s - h)) / h**2, rel=1e-3, abs=1e-6)
            assert g.vega[j] == pytest.approx((f(v_=sigma + 1e-5) - f(v_=sigma - 1e-5)) / 2e-5 * 0.01, rel=1e-5)
            assert g.rho[j] == pytest.approx((f(r_=r + 1e-6) - f(r_=r - 1e-6)) / 2e-6 * 0.01, rel=1e-4, abs=1e-9)
            dt = 1e-5
            assert g.theta[j] == pytest.approx(-(f(t_=t + dt) - f(t_=t - dt)) / (2 * dt) / 365, rel=1e-4, abs=1e-9)


def test_many_positions_in_one_pass_equal_each_alone() -> None:
    """A mix — realised and implied volatility on a shared underlying, a flat underlying, one
    with too little history, one never priced, an expired one, a non-option — in one
    `option_greeks_many` call gives each position what it gets alone, in order."""
    from calculations.greeks import option_greeks_many

    positions = [
        option("LC", 2.0), option("SP", -3.0, strike=95.0), option("LP", 1.0, implied_volatility=0.4),
        option("LC", 1.0, underlying="FLAT", strike=80.0), option("LC", 1.0, underlying="SHORT"),
        option("LC", 1.0, underlying="GONE"), option("LC", 1.0, expiration=DATES[70]),
        option("LONG", 5.0, investment_class=None, expiration=None, strike=None),
        option("SC", -1.0, strike=110.0),
    ]
    closes = CLOSES.assign(SHORT=[NaN] * 75 + [20.0] * 15)  # 5 closes up to AS_OF: too few returns
    together = option_greeks_many(positions, closes, AS_OF, R, Q)
    alone = [option_greeks(p, closes, AS_OF, R, Q) for p in positions]
    assert [g.status for g in together] == ["ok", "ok", "ok", "ok", "missing_volatility",
                                            "missing_underlying_price", "expired", "not_an_option", "ok"]
    for a, b in zip(together, alone, strict=True):
        assert a.position_id == b.position_id and a.status == b.status
        for name in ("model_price", "underlying_price", "volatility", "delta", "gamma", "theta", "vega", "rho",
                     "dollar_delta"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-14, abs=1e-14), name
    # the shared underlying's two realised-volatility positions read the numpy figure
    assert together[0].volatility == together[1].volatility == pytest.approx(XYZ_REALISED, rel=1e-12)
