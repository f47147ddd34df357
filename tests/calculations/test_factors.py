"""Tests for calculations.factors: returns, factor returns, betas, VIF, EWMA covariance.

Expected values come from hand arithmetic (small tables below), from statsmodels'
`OLS(y, add_constant(X)).fit()` run symbol by symbol, or from direct numpy formulas
(`np.polyfit`, `np.linalg.lstsq`, explicit loops) — never from the code under test.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.outliers_influence import variance_inflation_factor

from calculations.factors import (
    BETA_CAP,
    BETA_WINDOW,
    COVARIANCE_WINDOW,
    EWMA_LAMBDA,
    FACTOR_ORDER,
    MARKET,
    MIN_OBSERVATIONS,
    RATES,
    BetaEstimate,
    FitDate,
    correlation_from_covariance,
    ewma_covariance,
    factor_returns,
    fit_symbol_betas,
    fit_symbol_betas_dates,
    simple_returns,
)

JOINT = [f for f in FACTOR_ORDER if f != RATES]


def sessions(n: int, start: date = date(2025, 1, 6)) -> list[date]:
    """n consecutive weekdays (stand-ins for sessions; only order matters here)."""
    days: list[date] = []
    day = start
    while len(days) < n:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def random_factors(rng: np.random.Generator, n: int,
                   columns: list[str] | tuple[str, ...] = FACTOR_ORDER) -> pd.DataFrame:
    return pd.DataFrame(rng.normal(0.0, 0.01, size=(n, len(columns))),
                        index=sessions(n), columns=list(columns))


def by_key(estimates: list[BetaEstimate]) -> dict[tuple[str, str], BetaEstimate]:
    return {(e.symbol, e.factor): e for e in estimates}


def test_constants() -> None:
    assert FACTOR_ORDER == ("Market", "Value", "Growth", "Momentum", "Quality", "Size",
                            "Low Volatility", "Interest Rate")
    assert (MARKET, RATES) == ("Market", "Interest Rate")
    assert (BETA_WINDOW, MIN_OBSERVATIONS, BETA_CAP) == (90, 60, 5.0)
    assert (EWMA_LAMBDA, COVARIANCE_WINDOW) == (0.94, 252)


# --------------------------------------------------------------------------------------------
# simple_returns
# --------------------------------------------------------------------------------------------

def test_simple_returns_by_hand() -> None:
    days = sessions(4)
    closes = pd.DataFrame({"A": [100.0, 110.0, 99.0, np.nan],
                           "B": [50.0, np.nan, 40.0, 44.0]}, index=days)
    result = simple_returns(closes)
    # A: 110/100 − 1 = 0.10; 99/110 − 1 = −0.10; NaN close → NaN.
    # B: NaN close → NaN; 40 after a gap → NaN (never 40/50); 44/40 − 1 = 0.10.
    expected = pd.DataFrame({"A": [0.10, -0.10, np.nan],
                             "B": [np.nan, np.nan, 0.10]}, index=days[1:])
    pd.testing.assert_frame_equal(result, expected, rtol=1e-12)


def test_simple_returns_degenerate() -> None:
    one = pd.DataFrame({"A": [100.0]}, index=sessions(1))
    assert simple_returns(one).empty
    assert list(simple_returns(one).columns) == ["A"]
    empty = pd.DataFrame({"A": []}, index=pd.Index([], dtype=object), dtype=float)
    assert simple_returns(empty).empty
    all_nan = pd.DataFrame({"A": [np.nan] * 3}, index=sessions(3))
    assert simple_returns(all_nan)["A"].isna().all()


def test_simple_returns_rejects_unsorted_index() -> None:
    days = sessions(3)
    closes = pd.DataFrame({"A": [1.0, 2.0, 3.0]}, index=[days[1], days[0], days[2]])
    with pytest.raises(ValueError, match="closes"):
        simple_returns(closes)


# --------------------------------------------------------------------------------------------
# factor_returns
# --------------------------------------------------------------------------------------------

def test_factor_returns_by_hand() -> None:
    days = sessions(3)
    proxy = pd.DataFrame({
        "SPY": [0.010, -0.020, 0.005],
        "VTV": [0.015, -0.010, np.nan],
        "IWM": [0.000, -0.030, 0.010],
        "QUAL": [np.nan, np.nan, np.nan],
        "TLT": [-0.004, 0.006, 0.001],
    }, index=days)
    proxies = {"Market": "SPY", "Value": "VTV", "Growth": None, "Momentum": "MTUM",
               "Quality": "QUAL", "Size": "IWM", "Interest Rate": "TLT"}
    frame, unavailable = factor_returns(proxy, proxies)
    expected = pd.DataFrame({
        "Market": [0.010, -0.020, 0.005],
        "Value": [0.005, 0.010, np.nan],       # 0.015−0.010, −0.010−(−0.020), NaN−0.005
        "Size": [-0.010, -0.010, 0.005],       # 0−0.010, −0.030−(−0.020), 0.010−0.005
        "Interest Rate": [-0.004, 0.006, 0.001],  # raw, not in excess of the market
    }, index=days)
    pd.testing.assert_frame_equal(frame, expected, rtol=1e-12)
    assert unavailable == {"Growth": "factor_unavailable",          # proxy None
                           "Momentum": "factor_unavailable",        # not a column
                           "Quality": "factor_unavailable",         # all-NaN
                           "Low Volatility": "factor_unavailable"}  # not in the mapping


def test_factor_returns_without_market_makes_styles_unavailable() -> None:
    days = sessions(2)
    proxy = pd.DataFrame({"SPY": [np.nan, np.nan], "VTV": [0.01, 0.02], "TLT": [0.001, 0.002]},
                         index=days)
    frame, unavailable = factor_returns(proxy, {"Market": "SPY", "Value": "VTV",
                                                "Interest Rate": "TLT"})
    assert list(frame.columns) == ["Interest Rate"]
    assert frame["Interest Rate"].tolist() == [0.001, 0.002]
    assert set(unavailable) == set(FACTOR_ORDER) - {RATES}
    assert set(unavailable.values()) == {"factor_unavailable"}


def test_factor_returns_rejects_unknown_factor_name() -> None:
    proxy = pd.DataFrame({"TLT": [0.01]}, index=sessions(1))
    with pytest.raises(ValueError, match="Rates"):
        factor_returns(proxy, {"Rates": "TLT"})


# --------------------------------------------------------------------------------------------
# fit_symbol_betas
# --------------------------------------------------------------------------------------------

KNOWN_BETAS = {"Market": 1.2, "Value": 0.3, "Growth": -0.4, "Momentum": 0.1, "Quality": 0.5,
               "Size": -0.2, "Low Volatility": 0.7}


def test_known_betas_are_recovered() -> None:
    rng = np.random.default_rng(7)
    factors = random_factors(rng, 90)
    joint = factors[JOINT].to_numpy()
    noise = rng.normal(0.0, 1e-5, size=(90, 2))
    stock = 0.0002 + joint @ np.array([KNOWN_BETAS[f] for f in JOINT]) + noise[:, 0]
    bond = -0.0001 + 0.8 * factors[RATES].to_numpy() + noise[:, 1]
    returns = pd.DataFrame({"STOCK": stock, "BOND": bond}, index=factors.index)

    fit = fit_symbol_betas(returns, factors)

    est = by_key(fit.estimates())
    for factor, beta in KNOWN_BETAS.items():
        assert est["STOCK", factor].beta == pytest.approx(beta, abs=1e-3)
        assert est["STOCK", factor].observations == 90
        assert est["STOCK", factor].r_squared > 0.999
        assert not est["STOCK", factor].capped
    assert est["BOND", RATES].beta == pytest.approx(0.8, abs=1e-3)
    assert est["BOND", RATES].r_squared > 0.999
    assert fit.skipped == {}
    assert fit.window_days == 90
    # one estimate per (symbol, factor), symbols in input order, factors in FACTOR_ORDER
    assert [(e.symbol, e.factor) for e in fit.estimates()] == (
        [("STOCK", f) for f in FACTOR_ORDER] + [("BOND", f) for f in FACTOR_ORDER])


def _statsmodels_fit(y: pd.Series, x: pd.DataFrame):
    data = pd.concat([y, x], axis=1).dropna()
    return sm.OLS(data.iloc[:, 0], sm.add_constant(data.iloc[:, 1:]), missing="raise").fit()


def test_matches_statsmodels_with_several_gap_patterns() -> None:
    rng = np.random.default_rng(11)
    n = 120  # longer than the window: only the last 90 rows may be used
    factors = random_factors(rng, n)
    betas = rng.normal(0.0, 1.0, size=(len(JOINT), 7))
    joint = factors[JOINT].to_numpy()
    values = 0.0003 + joint @ betas + rng.normal(0.0, 0.01, size=(n, 7))
    values[:, 6] = 0.5 * factors[RATES].to_numpy() + rng.normal(0.0, 0.005, size=n)
    returns = pd.DataFrame(values, index=factors.index,
                           columns=["A", "B", "C", "D", "E", "F", "G"])
    window_start = n - 90
    # A, B: no gaps (one mask); C, D: the same gaps (a second mask); E: its own gaps;
    # F: gaps only before the window (same mask as A and B); G: its own gaps.
    for symbol in ("C", "D"):
        returns.iloc[[window_start + 3, window_start + 17, window_start + 40],
                     returns.columns.get_loc(symbol)] = np.nan
    returns.iloc[[window_start + 5, window_start + 6, n - 1], returns.columns.get_loc("E")] = np.nan
    returns.iloc[[2, 10, 25], returns.columns.get_loc("F")] = np.nan
    returns.iloc[window_start + 50: window_start + 60, returns.columns.get_loc("G")] = np.nan
    # A factor gap inside the window removes that row from every joint fit; a rate gap only
    # from the rate fits.
    factors.iloc[window_start + 30, factors.columns.get_loc("Momentum")] = np.nan
    factors.iloc[window_start + 70, factors.columns.get_loc(RATES)] = np.nan

    fit = fit_symbol_betas(returns, factors)

    assert fit.skipped == {}
    est = by_key(fit.estimates())
    window_returns, window_factors = returns.iloc[-90:], factors.iloc[-90:]
    observed = set()
    for symbol in returns.columns:
        joint_fit = _statsmodels_fit(window_returns[symbol], window_factors[JOINT])
        rate_fit = _statsmodels_fit(window_returns[symbol], window_factors[[RATES]])
        observed.add(int(joint_fit.nobs))
        for factor, sm_fit in [(f, joint_fit) for f in JOINT] + [(RATES, rate_fit)]:
            e = est[symbol, factor]
            assert e.beta == pytest.approx(sm_fit.params[factor], abs=1e-8, rel=1e-8)
            assert e.std_error == pytest.approx(sm_fit.bse[factor], abs=1e-8, rel=1e-8)
            assert e.t_stat == pytest.approx(sm_fit.tvalues[factor], abs=1e-8, rel=1e-8)
            assert e.r_squared == pytest.approx(sm_fit.rsquared, abs=1e-8)
            assert e.observations == int(sm_fit.nobs)
    # masks really differed: 89 (factor gap only), 86 (C, D), 86 (E), 79 (G, gap 50–59 + 30)
    assert observed == {89, 86, 79}
    assert est["E", MARKET].observations == 86 and est["C", MARKET].observations == 86


def test_cap_applies_at_five_and_keeps_uncapped_statistics() -> None:
    rng = np.random.default_rng(3)
    factors = random_factors(rng, 90, columns=["Market", "Value"])
    market = factors["Market"].to_numpy()
    noise = rng.normal(0.0, 1e-4, size=(90, 2))
    returns = pd.DataFrame({"UP": 8.0 * market + noise[:, 0], "DOWN": -8.0 * market + noise[:, 1]},
                           index=factors.index)

    fit = fit_symbol_betas(returns, factors)

    est = by_key(fit.estimates())
    assert est["UP", MARKET].beta == 5.0 and est["UP", MARKET].capped
    assert est["DOWN", MARKET].beta == -5.0 and est["DOWN", MARKET].capped
    assert not est["UP", "Value"].capped
    reference = _statsmodels_fit(returns["UP"], factors)
    assert reference.params["Market"] == pytest.approx(8.0, abs=1e-2)
    assert est["UP", MARKET].std_error == pytest.approx(reference.bse["Market"], rel=1e-8)
    assert est["UP", MARKET].t_stat == pytest.approx(reference.tvalues["Market"], rel=1e-8)


def test_too_short_history_is_skipped() -> None:
    rng = np.random.default_rng(5)
    factors = random_factors(rng, 90)
    returns = pd.DataFrame(rng.normal(0.0, 0.01, size=(90, 4)), index=factors.index,
                           columns=["SHORT", "EDGE60", "EDGE59", "FULL"])
    returns.iloc[:50, 0] = np.nan  # 40 valid rows
    returns.iloc[:30, 1] = np.nan  # exactly 60: enough
    returns.iloc[:31, 2] = np.nan  # 59: not enough

    fit = fit_symbol_betas(returns, factors)

    assert fit.skipped == {"SHORT": "insufficient_history", "EDGE59": "insufficient_history"}
    fitted = {e.symbol for e in fit.estimates()}
    assert fitted == {"EDGE60", "FULL"}
    assert {e.observations for e in fit.estimates() if e.symbol == "EDGE60"} == {60}


def test_all_nan_symbol_is_skipped_and_empty_input_fits_nothing() -> None:
    rng = np.random.default_rng(6)
    factors = random_factors(rng, 90)
    returns = pd.DataFrame({"GONE": np.nan}, index=factors.index)
    assert fit_symbol_betas(returns, factors).skipped == {"GONE": "insufficient_history"}
    empty = fit_symbol_betas(pd.DataFrame(index=factors.index), factors)
    assert empty.estimates() == [] and empty.skipped == {}


def test_rate_fit_too_short_omits_only_the_rate_estimate() -> None:
    rng = np.random.default_rng(8)
    factors = random_factors(rng, 90)
    factors.iloc[:40, factors.columns.get_loc(RATES)] = np.nan  # 50 rate rows < 60
    returns = pd.DataFrame({"A": rng.normal(0.0, 0.01, size=90)}, index=factors.index)
    fit = fit_symbol_betas(returns, factors)
    assert [e.factor for e in fit.estimates()] == JOINT
    assert fit.skipped == {}


def test_gaps_from_closes_drop_both_adjacent_returns() -> None:
    rng = np.random.default_rng(21)
    days = sessions(91)  # 91 closes → 90 returns
    proxy_closes = pd.DataFrame(
        100.0 * np.cumprod(1.0 + rng.normal(0.0, 0.01, size=(91, 3)), axis=0),
        index=days, columns=["SPY", "VLUE", "TLT"])
    stock = 50.0 * np.cumprod(1.0 + 1.1 * proxy_closes["SPY"].pct_change().fillna(0.0)
                              + rng.normal(0.0, 0.002, size=91))
    stock_closes = pd.DataFrame({"XYZ": stock.to_numpy()}, index=days)
    gap_rows = [10, 30, 31, 90]  # one single gap, one two-day gap, the as-of close missing
    stock_closes.iloc[gap_rows, 0] = np.nan

    stock_returns = simple_returns(stock_closes)
    factors, unavailable = factor_returns(
        simple_returns(proxy_closes), {"Market": "SPY", "Value": "VLUE", "Interest Rate": "TLT"})

    # returns dated at days[10], days[11] (single gap), days[30..32] (two-day gap), days[90]
    nan_days = [days[i] for i in (10, 11, 30, 31, 32, 90)]
    assert stock_returns.index[stock_returns["XYZ"].isna()].tolist() == nan_days
    assert stock_returns.loc[days[9], "XYZ"] == pytest.approx(
        stock_closes.iloc[9, 0] / stock_closes.iloc[8, 0] - 1.0, rel=1e-12)
    assert not factors.isna().any().any()
    assert "Growth" in unavailable

    fit = fit_symbol_betas(stock_returns, factors, unavailable)

    assert fit.window_days == 90
    assert fit.unavailable == unavailable
    assert {e.observations for e in fit.estimates()} == {90 - 6}
    assert by_key(fit.estimates())["XYZ", MARKET].beta == pytest.approx(1.1, abs=0.05)


def test_rate_beta_matches_polyfit_and_lstsq() -> None:
    rng = np.random.default_rng(13)
    factors = random_factors(rng, 100)
    rate = factors[RATES].to_numpy()
    returns = pd.DataFrame({"BOND": 0.001 - 1.7 * rate + rng.normal(0.0, 0.004, size=100)},
                           index=factors.index)
    returns.iloc[[20, 55], 0] = np.nan
    factors.iloc[[60, 61], factors.columns.get_loc(RATES)] = np.nan

    fit = fit_symbol_betas(returns, factors)

    window = slice(10, 100)
    y, x = returns["BOND"].to_numpy()[window], factors[RATES].to_numpy()[window]
    keep = ~np.isnan(y) & ~np.isnan(x)
    slope, _ = np.polyfit(x[keep], y[keep], 1)
    design = np.column_stack([np.ones(keep.sum()), x[keep]])
    (_, lstsq_slope), rss, _, _ = np.linalg.lstsq(design, y[keep], rcond=None)
    tss = ((y[keep] - y[keep].mean()) ** 2).sum()
    estimate = by_key(fit.estimates())["BOND", RATES]
    assert estimate.beta == pytest.approx(slope, rel=1e-10)
    assert estimate.beta == pytest.approx(lstsq_slope, rel=1e-10)
    assert estimate.observations == 86
    assert estimate.r_squared == pytest.approx(1.0 - rss[0] / tss, rel=1e-10)
    # the joint fit ignores the rate gaps
    assert by_key(fit.estimates())["BOND", MARKET].observations == 88


def test_vif_matches_direct_computation() -> None:
    rng = np.random.default_rng(17)
    n = 95
    common = rng.normal(0.0, 0.01, size=n)
    loadings = np.linspace(0.2, 1.5, len(JOINT))
    raw = rng.normal(0.0, 0.01, size=(n, len(JOINT))) + loadings * common[:, None]
    factors = pd.DataFrame(raw, index=sessions(n), columns=JOINT)
    factors[RATES] = rng.normal(0.0, 0.01, size=n)
    factors.iloc[[50, 80], factors.columns.get_loc("Quality")] = np.nan  # not complete cases
    factors.iloc[70, factors.columns.get_loc(RATES)] = np.nan            # rates play no part
    returns = pd.DataFrame({"A": rng.normal(0.0, 0.01, size=n)}, index=factors.index)

    fit = fit_symbol_betas(returns, factors)

    design = factors[JOINT].to_numpy()[-90:]
    design = design[~np.isnan(design).any(axis=1)]
    assert design.shape[0] == 88
    assert set(fit.vif) == set(JOINT)
    for j, factor in enumerate(JOINT):
        others = np.column_stack([np.ones(len(design)), np.delete(design, j, axis=1)])
        coef, *_ = np.linalg.lstsq(others, design[:, j], rcond=None)
        resid = design[:, j] - others @ coef
        r2 = 1.0 - resid @ resid / ((design[:, j] - design[:, j].mean()) ** 2).sum()
        assert fit.vif[factor] == pytest.approx(1.0 / (1.0 - r2), rel=1e-10)
        with_const = sm.add_constant(design)
        assert fit.vif[factor] == pytest.approx(variance_inflation_factor(with_const, j + 1),
                                                rel=1e-10)
    assert max(fit.vif.values()) > 1.5  # the common component made them non-trivial


def test_single_joint_factor_has_vif_one() -> None:
    rng = np.random.default_rng(18)
    factors = random_factors(rng, 90, columns=["Market"])
    returns = pd.DataFrame({"A": rng.normal(0.0, 0.01, size=90)}, index=factors.index)
    assert fit_symbol_betas(returns, factors).vif == {"Market": pytest.approx(1.0)}


def test_collinear_factors_are_skipped_not_fitted() -> None:
    rng = np.random.default_rng(19)
    factors = random_factors(rng, 90)
    # a stale Size proxy (0 return every day) has excess return exactly −Market
    factors["Size"] = -factors["Market"]
    returns = pd.DataFrame({"A": rng.normal(0.0, 0.01, size=90)}, index=factors.index)

    fit = fit_symbol_betas(returns, factors)

    assert fit.skipped == {"A": "collinear_factors"}
    assert fit.estimates() == []
    assert fit.vif["Size"] > 1e10 and fit.vif["Market"] > 1e10


def test_interest_rate_alone_decides_skipping() -> None:
    rng = np.random.default_rng(20)
    factors = random_factors(rng, 90, columns=[RATES])
    returns = pd.DataFrame({"A": rng.normal(0.0, 0.01, size=90),
                            "B": np.r_[np.full(50, np.nan), rng.normal(0.0, 0.01, size=40)]},
                           index=factors.index)
    fit = fit_symbol_betas(returns, factors, {f: "factor_unavailable" for f in JOINT})
    assert [(e.symbol, e.factor) for e in fit.estimates()] == [("A", RATES)]
    assert fit.skipped == {"B": "insufficient_history"}
    assert fit.vif == {}


def test_short_input_reports_window_days() -> None:
    rng = np.random.default_rng(22)
    factors = random_factors(rng, 70)
    returns = pd.DataFrame({"A": rng.normal(0.0, 0.01, size=70)}, index=factors.index)
    fit = fit_symbol_betas(returns, factors)
    assert fit.window_days == 70
    assert {e.observations for e in fit.estimates()} == {70}


def test_fit_rejects_bad_inputs() -> None:
    rng = np.random.default_rng(23)
    factors = random_factors(rng, 90)
    returns = pd.DataFrame({"A": rng.normal(0.0, 0.01, size=90)}, index=factors.index)
    with pytest.raises(ValueError, match="same index"):
        fit_symbol_betas(returns.iloc[1:], factors)
    with pytest.raises(ValueError, match="Rates"):
        fit_symbol_betas(returns, factors.rename(columns={RATES: "Rates"}))
    with pytest.raises(ValueError, match="min_obs"):
        fit_symbol_betas(returns, factors, min_obs=8)
    with pytest.raises(ValueError, match="Market"):
        fit_symbol_betas(returns, factors, {"Market": "factor_unavailable"})


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(min_value=0.2, max_value=3.0), sign=st.sampled_from([-1.0, 1.0]),
       shift=st.floats(min_value=-0.01, max_value=0.01))
def test_betas_scale_with_returns_and_ignore_a_constant(scale: float, sign: float,
                                                        shift: float) -> None:
    rng = np.random.default_rng(29)
    factors = random_factors(rng, 90)
    base = pd.DataFrame({"A": factors[JOINT].to_numpy() @ np.full(len(JOINT), 0.4)
                         + rng.normal(0.0, 0.01, size=90)}, index=factors.index)
    c = sign * scale
    plain = by_key(fit_symbol_betas(base, factors).estimates())
    scaled = by_key(fit_symbol_betas(base * c + shift, factors).estimates())
    for key, e in plain.items():
        assert scaled[key].beta == pytest.approx(c * e.beta, rel=1e-9, abs=1e-12)
        assert scaled[key].t_stat == pytest.approx(sign * e.t_stat, rel=1e-9, abs=1e-9)
        assert scaled[key].r_squared == pytest.approx(e.r_squared, rel=1e-9)


# --------------------------------------------------------------------------------------------
# fit_symbol_betas_dates: a backfill's dates in one batched solve
# --------------------------------------------------------------------------------------------

def _oracle_fit(y: np.ndarray, x: np.ndarray) -> dict | str:
    """OLS with intercept of y on the columns of x over their complete rows, written directly
    (numpy lstsq and the textbook formulas), with SPEC §6.3's skips, degenerate flags and cap.
    Returns a skip reason or {"beta": [...], "se": [...], "t": [...], "r2": ..., "n": ...}."""
    keep = ~np.isnan(y) & ~np.isnan(x).any(axis=1)
    n = int(keep.sum())
    if n < MIN_OBSERVATIONS:
        return "insufficient_history"
    design = np.column_stack([np.ones(n), x[keep]])
    k = design.shape[1]
    if np.linalg.matrix_rank(design) < k:
        return "collinear_factors"
    target = y[keep]
    params, *_ = np.linalg.lstsq(design, target, rcond=None)
    resid = target - design @ params
    rss = float(resid @ resid)
    tss = float(((target - target.mean()) ** 2).sum())
    if tss <= 1e-20 * float(target @ target):
        return {"beta": [None] * (k - 1), "se": [None] * (k - 1), "t": [None] * (k - 1), "r2": None, "n": n,
                "quality": "zero_variance", "capped": [False] * (k - 1)}
    se = np.sqrt(rss / (n - k) * np.diag(np.linalg.inv(design.T @ design)))[1:]
    raw = params[1:]
    exact = rss <= 1e-20 * tss
    return {"beta": [float(np.clip(b, -5.0, 5.0)) for b in raw],
            "se": [None] * (k - 1) if exact else [float(s) for s in se],
            "t": [None] * (k - 1) if exact else [float(b / s) for b, s in zip(raw, se)],
            "r2": 1.0 - rss / tss, "n": n, "quality": "exact_fit" if exact else None,
            "capped": [bool(abs(b) > 5.0) for b in raw]}


def _backfill_case() -> tuple[pd.DataFrame, pd.DataFrame, list[FitDate]]:
    """140 rows, six as-of dates. Symbols: FULL and M0–M9 (no gaps), GAPS (gaps that leave the window as
    dates advance: its mask differs by date), FLAT (constant price: zero returns), SHORT (no
    returns before row 60: too short on the early dates, exactly 60 rows at stop 120), HIGH
    (β_M = 8: capped), PROXY (the Market factor itself: an exact fit). Factors: Size is exactly
    −Market (a stale proxy) on rows 0–99, so the first date (rows 10–99) is collinear and the
    next (rows 15–104) is not; Quality is unusable on the fourth date, Interest Rate on the
    sixth; the rate factor has gaps of its own."""
    rng = np.random.default_rng(41)
    n = 140
    factors = random_factors(rng, n)
    factors.iloc[:100, factors.columns.get_loc("Size")] = -factors["Market"].iloc[:100]
    factors.iloc[[95, 121], factors.columns.get_loc(RATES)] = np.nan
    joint = factors[JOINT].to_numpy()
    noise = rng.normal(0.0, 0.01, size=(n, 6))
    loadings = rng.normal(0.0, 0.5, size=(len(JOINT), 6))
    loadings[0, 4] = 8.0
    values = 0.0002 + joint @ loadings + noise
    values[:, 5] = factors[MARKET].to_numpy()
    values[:, 2] = 0.0
    values[[30, 98, 101, 111, 125], 1] = np.nan
    values[:60, 3] = np.nan
    returns = pd.DataFrame(values, index=factors.index, columns=["FULL", "GAPS", "FLAT", "SHORT", "HIGH", "PROXY"])
    # ten more without gaps: with FULL and HIGH, a group too large to be solved symbol by symbol
    more = 0.0001 + joint @ rng.normal(0.0, 0.5, size=(len(JOINT), 10)) + rng.normal(0.0, 0.01, size=(n, 10))
    returns = returns.join(pd.DataFrame(more, index=factors.index, columns=[f"M{i}" for i in range(10)]))
    every = tuple(FACTOR_ORDER)
    dates = [FitDate(100, every), FitDate(105, every), FitDate(112, every),
             FitDate(120, tuple(f for f in every if f != "Quality"), {"Quality": "insufficient_history"}),
             FitDate(130, every), FitDate(140, tuple(f for f in every if f != RATES), {RATES: "zero_variance"})]
    return returns, factors, dates


def test_batched_dates_match_a_direct_oracle() -> None:
    returns, factors, dates = _backfill_case()
    fits = fit_symbol_betas_dates(returns, factors, dates)

    assert len(fits) == len(dates)
    seen = set()
    for date_, fit in zip(dates, fits):
        rows = slice(date_.stop - 90, date_.stop)
        joint = [f for f in JOINT if f in date_.factors]
        assert fit.factors == tuple(joint + ([RATES] if RATES in date_.factors else []))
        assert fit.window_days == 90 and fit.unavailable == dict(date_.unavailable)
        est = by_key(fit.estimates())
        expected_skipped = {}
        for symbol in returns.columns:
            y = returns[symbol].to_numpy()[rows]
            expected = _oracle_fit(y, factors[joint].to_numpy()[rows])
            if isinstance(expected, str):
                expected_skipped[symbol] = expected
                assert not any(s == symbol for s, _ in est), (date_.stop, symbol)
                seen.add(expected)
                continue
            fits_of = [(joint, expected)]
            if RATES in date_.factors:
                rate = _oracle_fit(y, factors[[RATES]].to_numpy()[rows])
                if isinstance(rate, dict):
                    fits_of.append(([RATES], rate))
                else:  # too short for the rate fit alone: no rate estimate, the joint ones stand
                    assert (symbol, RATES) not in est
                    seen.add(f"rate {rate}")
            for names, ref in fits_of:
                seen.add(ref["quality"])
                for j, factor in enumerate(names):
                    e = est[symbol, factor]
                    assert e.observations == ref["n"] and e.quality == ref["quality"], (date_.stop, symbol, factor)
                    assert e.capped == ref["capped"][j]
                    for got, want in ((e.beta, ref["beta"][j]), (e.std_error, ref["se"][j]),
                                      (e.t_stat, ref["t"][j]), (e.r_squared, ref["r2"])):
                        if want is None:
                            assert got is None, (date_.stop, symbol, factor)
                        else:
                            assert got == pytest.approx(want, rel=1e-8, abs=1e-8), (date_.stop, symbol, factor)
        assert fit.skipped == expected_skipped, date_.stop
    # every case was exercised: ordinary, degenerate, skipped both ways
    assert seen == {None, "zero_variance", "exact_fit", "insufficient_history", "collinear_factors",
                    "rate insufficient_history"}
    assert fits[0].skipped == {**dict.fromkeys(returns.columns, "collinear_factors"), "SHORT": "insufficient_history"}
    assert fits[2].skipped == {"SHORT": "insufficient_history"} and "SHORT" not in fits[3].skipped
    assert by_key(fits[4].estimates())["HIGH", MARKET].capped
    assert {e.observations for e in fits[3].estimates() if e.symbol == "SHORT" and e.factor == MARKET} == {60}
    observations = {f.stop: by_key(fit.estimates())["GAPS", MARKET].observations
                    for f, fit in zip(dates[1:], fits[1:])}
    # GAPS lacks rows 30, 98, 101, 111, 125: 3 of them in rows 15–104, 4 in each later window
    assert observations == {105: 87, 112: 86, 120: 86, 130: 86, 140: 86}


def test_batched_dates_equal_fitting_each_date_alone() -> None:
    """Each date's BetaFit equals `fit_symbol_betas` on that date's rows and usable factors, to
    rounding (1e-12 relative), every array and every dict."""
    returns, factors, dates = _backfill_case()
    fits = fit_symbol_betas_dates(returns, factors, dates)
    for date_, fit in zip(dates, fits):
        alone = fit_symbol_betas(returns.iloc[:date_.stop], factors.iloc[:date_.stop][list(date_.factors)],
                                 date_.unavailable)
        assert (fit.symbols, fit.factors, fit.window_days) == (alone.symbols, alone.factors, alone.window_days)
        assert fit.skipped == alone.skipped and fit.unavailable == alone.unavailable
        assert list(fit.skipped) == [s for s in fit.symbols if s in fit.skipped]  # in input order
        for name in ("fitted", "observations", "capped", "quality"):
            assert (getattr(fit, name) == getattr(alone, name)).all(), (date_.stop, name)
        for name in ("beta", "std_error", "t_stat", "r_squared"):
            np.testing.assert_allclose(getattr(fit, name), getattr(alone, name), rtol=1e-12, atol=0)
        assert fit.vif.keys() == alone.vif.keys()
        for factor, value in alone.vif.items():
            if date_.stop == 100 and factor in (MARKET, "Size"):  # collinear: the size of an infinite VIF is noise
                assert fit.vif[factor] > 1e10 and value > 1e10
            else:
                assert fit.vif[factor] == pytest.approx(value, rel=1e-12)


def test_a_fit_taken_for_some_symbols_is_their_fit_alone() -> None:
    returns, factors, dates = _backfill_case()
    fit = fit_symbol_betas_dates(returns, factors, dates[2:3])[0]
    chosen = ["SHORT", "PROXY", "FULL"]
    taken = fit.take(chosen)
    alone = fit_symbol_betas_dates(returns[chosen], factors, dates[2:3])[0]
    assert taken.symbols == alone.symbols == tuple(chosen)
    assert taken.skipped == alone.skipped == {"SHORT": "insufficient_history"}
    # FULL and PROXY were solved in a group of fourteen, alone in groups of one: equal to rounding
    # (PROXY's style betas are 0 up to rounding: 1e-16, hence the absolute tolerance)
    for name in ("fitted", "observations", "capped", "quality"):
        assert (getattr(taken, name) == getattr(alone, name)).all()
    for name in ("beta", "std_error", "t_stat", "r_squared"):
        np.testing.assert_allclose(getattr(taken, name), getattr(alone, name), rtol=1e-12, atol=1e-12)
    assert fit.take([]).estimates() == [] and fit.take([]).skipped == {}


def test_batched_dates_reject_bad_dates() -> None:
    returns, factors, _ = _backfill_case()
    with pytest.raises(ValueError, match="stop"):
        fit_symbol_betas_dates(returns, factors, [FitDate(141, (MARKET,))])
    with pytest.raises(ValueError, match="not columns"):
        fit_symbol_betas_dates(returns, factors[[MARKET]], [FitDate(100, (MARKET, "Value"))])
    with pytest.raises(ValueError, match="also columns"):
        fit_symbol_betas_dates(returns, factors, [FitDate(100, (MARKET,), {MARKET: "factor_unavailable"})])
    assert fit_symbol_betas_dates(returns, factors, []) == []


# --------------------------------------------------------------------------------------------
# ewma_covariance / correlation_from_covariance
# --------------------------------------------------------------------------------------------

def test_ewma_covariance_by_hand() -> None:
    # 7 rows; window 6 leaves rows 1–6; row 3 has a NaN → 5 complete rows.
    days = sessions(7)
    factors = pd.DataFrame({
        "Market": [0.50, 0.01, -0.02, 0.03, 0.00, 0.02, -0.01],
        "Value": [0.50, 0.00, 0.01, np.nan, -0.01, 0.02, 0.01],
    }, index=days)
    lam = 0.5
    cov, n = ewma_covariance(factors, decay=lam, window=6)
    assert n == 5
    # newest first: (−0.01, 0.01), (0.02, 0.02), (0.00, −0.01), (−0.02, 0.01), (0.01, 0.00)
    rows = [(-0.01, 0.01), (0.02, 0.02), (0.00, -0.01), (-0.02, 0.01), (0.01, 0.00)]
    weights = [lam ** i for i in range(5)]  # 1, 0.5, 0.25, 0.125, 0.0625 → sum 1.9375
    total = sum(weights)
    expected = [[0.0, 0.0], [0.0, 0.0]]
    for w, r in zip(weights, rows, strict=True):
        for a in range(2):
            for b in range(2):
                expected[a][b] += w / total * r[a] * r[b]
    # by hand for Market's variance: (1e-4 + 0.5·4e-4 + 0 + 0.125·4e-4 + 0.0625·1e-4) / 1.9375
    assert expected[0][0] == pytest.approx(3.5625e-4 / 1.9375, rel=1e-12)
    assert cov.to_numpy() == pytest.approx(np.array(expected), rel=1e-12, abs=1e-18)
    assert list(cov.index) == list(cov.columns) == ["Market", "Value"]
    assert np.array_equal(cov.to_numpy(), cov.to_numpy().T)


def test_ewma_covariance_is_psd_and_weights_recent_rows_more() -> None:
    rng = np.random.default_rng(31)
    factors = random_factors(rng, 300)
    cov, n = ewma_covariance(factors)
    assert n == 252
    values = cov.to_numpy()
    assert np.array_equal(values, values.T)
    assert np.linalg.eigvalsh(values).min() >= -1e-15
    # a shock on the newest day moves the estimate more than the same shock 200 days back
    late, early = factors.copy(), factors.copy()
    late.iloc[-1, 0] += 0.05
    early.iloc[-200, 0] += 0.05
    assert ewma_covariance(late)[0].iloc[0, 0] > ewma_covariance(early)[0].iloc[0, 0]


def test_ewma_covariance_needs_two_rows() -> None:
    factors = pd.DataFrame({"Market": [0.01, np.nan, 0.02], "Value": [0.0, 0.01, np.nan]},
                           index=sessions(3))
    with pytest.raises(ValueError, match="got 1"):
        ewma_covariance(factors)
    with pytest.raises(ValueError, match="got 0"):
        ewma_covariance(factors.iloc[:0])


def test_correlation_from_covariance_by_hand() -> None:
    cov = pd.DataFrame([[4.0, 2.0, -6.0], [2.0, 9.0, 0.0], [-6.0, 0.0, 9.0]],
                       index=["Market", "Value", "Size"], columns=["Market", "Value", "Size"])
    corr = correlation_from_covariance(cov)
    # 2/(2·3) = 1/3; −6/(2·3) = −1; 0
    expected = np.array([[1.0, 1 / 3, -1.0], [1 / 3, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    assert corr.to_numpy() == pytest.approx(expected, rel=1e-12)
    assert list(corr.columns) == ["Market", "Value", "Size"]


def test_correlation_of_ewma_covariance_properties() -> None:
    rng = np.random.default_rng(37)
    factors = random_factors(rng, 260)
    corr = correlation_from_covariance(ewma_covariance(factors)[0]).to_numpy()
    assert np.all(np.diag(corr) == 1.0)
    assert np.array_equal(corr, corr.T)
    assert np.all((corr >= -1.0) & (corr <= 1.0))


def test_correlation_of_zero_variance_factor_is_nan() -> None:
    cov = pd.DataFrame([[4.0, 0.0], [0.0, 0.0]], index=["Market", "Size"],
                       columns=["Market", "Size"])
    corr = correlation_from_covariance(cov)
    assert corr.loc["Market", "Market"] == 1.0
    assert corr.loc["Size"].isna().all() and corr["Size"].isna().all()


# --------------------------------------------------------------------------------------------
# degenerate fits (SPEC §6.3)
# --------------------------------------------------------------------------------------------

def test_a_proxy_regressed_on_its_own_factor_is_an_exact_fit_without_statistics() -> None:
    rng = np.random.default_rng(31)
    factors = random_factors(rng, 90)
    # the Value proxy's own return is Market + (Value − Market): exactly explained
    proxy = factors["Market"] + factors["Value"]
    noisy = proxy + rng.normal(0.0, 0.002, size=90)
    returns = pd.DataFrame({"VLUE": proxy, "NOISY": noisy}, index=factors.index)

    est = by_key(fit_symbol_betas(returns, factors).estimates())

    for factor in JOINT:
        e = est["VLUE", factor]
        expected = 1.0 if factor in ("Market", "Value") else 0.0
        assert e.beta == pytest.approx(expected, abs=1e-12), factor
        assert (e.std_error, e.t_stat, e.quality) == (None, None, "exact_fit"), factor
        assert e.r_squared == pytest.approx(1.0, abs=1e-12)
    # its rate fit is an ordinary one; so is every fit of the noisy copy
    assert est["VLUE", RATES].quality is None and est["VLUE", RATES].t_stat is not None
    reference = _statsmodels_fit(returns["NOISY"], factors[JOINT])
    for factor in JOINT:
        assert est["NOISY", factor].quality is None
        assert est["NOISY", factor].t_stat == pytest.approx(reference.tvalues[factor], rel=1e-8)


def test_constant_returns_have_zero_variance_and_no_beta_or_statistics() -> None:
    rng = np.random.default_rng(37)
    factors = random_factors(rng, 90)
    returns = pd.DataFrame({"FLAT": np.zeros(90),           # a constant price
                            "DRIFT": np.full(90, 0.0004),   # a constant return
                            "LIVE": rng.normal(0.0, 0.01, size=90)}, index=factors.index)

    fit = fit_symbol_betas(returns, factors)

    est = by_key(fit.estimates())
    for symbol in ("FLAT", "DRIFT"):
        for factor in FACTOR_ORDER:
            e = est[symbol, factor]
            assert (e.beta, e.std_error, e.t_stat, e.r_squared, e.quality, e.capped) == (
                None, None, None, None, "zero_variance", False), (symbol, factor)
            assert e.observations == 90
    assert {est["LIVE", f].quality for f in FACTOR_ORDER} == {None}
    assert fit.skipped == {}
