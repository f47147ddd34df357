"""Tests for calculations.scenarios: market-risk scenarios (SPEC §6.4) and factor stress tests
with conditional propagation (SPEC §6.5).

Where the expected values come from:
- hand arithmetic (exposure × shock, −duration × Δy, pnl ÷ equity), written out beside each case;
- an independent Black–Scholes–Merton formula below (`ref_bs`, with `math.erf`), not
  calculations.greeks;
- the conditional expectation E[r_u | r_s = s] = Σ_us Σ_ss⁻¹ s computed directly with
  `np.linalg.solve` (the module uses a pseudo-inverse), and on 1-factor conditioning by hand
  (Σ_us / Σ_ss × s);
- properties: stress P&L is linear in the shocks.
"""

from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from calculations.scenarios import (
    DEFAULT_DURATION,
    OptionRevaluation,
    ScenarioPnl,
    StressResult,
    conditional_moves,
    market_risk,
    rate_shock_to_return,
    scenario_name,
    scenario_propagation,
    stress_summary,
    scenario_moves,
    stress_test,
    stress_tests_books,
)

RATES = "Interest Rate"


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# An independent BSM reference (math.erf), used only as an oracle
# ---------------------------------------------------------------------------------------------

def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def ref_bs(s: float, k: float, t: float, r: float, sigma: float, right: str, q: float = 0.0) -> float:
    d1 = (math.log(s / k) + (r - q + sigma**2 / 2) * t) / (sigma * math.sqrt(t))
    d2 = d1 - sigma * math.sqrt(t)
    if right == "C":
        return s * math.exp(-q * t) * _cdf(d1) - k * math.exp(-r * t) * _cdf(d2)
    return k * math.exp(-r * t) * _cdf(-d2) - s * math.exp(-q * t) * _cdf(-d1)


# ---------------------------------------------------------------- rate mapping and names


def test_rate_shock_to_return_default_duration() -> None:
    assert DEFAULT_DURATION == 17.0  # SPEC §6.4: default 17 years
    assert rate_shock_to_return(0.01) == approx(-0.17)  # −17 × 0.01
    assert rate_shock_to_return(-0.02) == approx(0.34)  # −17 × −0.02
    assert rate_shock_to_return(0.0) == 0.0


def test_rate_shock_to_return_custom_duration() -> None:
    assert rate_shock_to_return(0.01, duration=7.0) == approx(-0.07)
    assert rate_shock_to_return(0.0025, duration=10.0) == approx(-0.025)


@pytest.mark.parametrize(("kind", "shock", "name"), [
    ("market", 0.10, "market_up_10"),
    ("market", -0.05, "market_down_5"),
    ("market", 0.05, "market_up_5"),
    ("market", -0.20, "market_down_20"),
    ("rates", 0.01, "rates_up_100bp"),
    ("rates", -0.01, "rates_down_100bp"),
    ("rates", -0.02, "rates_down_200bp"),
    ("rates", 0.0025, "rates_up_25bp"),
])
def test_scenario_name(kind: str, shock: float, name: str) -> None:
    assert scenario_name(kind, shock) == name


# ---------------------------------------------------------------- option revaluation

CALLS = OptionRevaluation(position_id=uuid.UUID(int=1), quantity=2, spot=100.0, strike=100.0,
                          years=0.5, rate=0.04, volatility=0.25, right="C", market_beta=1.5)


def test_option_pnl_long_calls_down_10() -> None:
    # Underlying at 100 × (1 + 1.5 × −0.10) = 85; 2 contracts × 100 shares.
    expected = 2 * 100 * (ref_bs(85.0, 100.0, 0.5, 0.04, 0.25, "C") - ref_bs(100.0, 100.0, 0.5, 0.04, 0.25, "C"))
    assert CALLS.pnl(-0.10) == pytest.approx(expected, rel=1e-10)
    assert expected < 0


def test_option_pnl_short_puts_with_dividend_up_20() -> None:
    puts = OptionRevaluation(uuid.UUID(int=2), quantity=-3, spot=50.0, strike=55.0, years=0.25,
                             rate=0.03, volatility=0.40, right="P", market_beta=0.8,
                             dividend_yield=0.02)
    shocked = 50.0 * (1 + 0.8 * 0.20)  # 58
    expected = -3 * 100 * (ref_bs(shocked, 55.0, 0.25, 0.03, 0.40, "P", 0.02)
                           - ref_bs(50.0, 55.0, 0.25, 0.03, 0.40, "P", 0.02))
    assert puts.pnl(0.20) == pytest.approx(expected, rel=1e-10)
    assert expected > 0  # short puts gain when the underlying rises


def test_option_pnl_zero_shock_is_zero() -> None:
    assert CALLS.pnl(0.0) == 0.0


def test_option_pnl_when_the_shock_wipes_out_the_underlying() -> None:
    # β 5 × −20% = −100%: the underlying goes to (about) zero, the call to (about) zero,
    # the put to its discounted strike. No error.
    call = OptionRevaluation(uuid.UUID(int=3), 1, 100.0, 100.0, 0.5, 0.04, 0.25, "C", 5.0)
    put = OptionRevaluation(uuid.UUID(int=4), 1, 100.0, 100.0, 0.5, 0.04, 0.25, "P", 5.0)
    assert call.pnl(-0.20) == pytest.approx(-100 * ref_bs(100.0, 100.0, 0.5, 0.04, 0.25, "C"), rel=1e-9)
    put_floor = 100.0 * math.exp(-0.04 * 0.5)
    assert put.pnl(-0.20) == pytest.approx(100 * (put_floor - ref_bs(100.0, 100.0, 0.5, 0.04, 0.25, "P")),
                                           rel=1e-9)


# ---------------------------------------------------------------- market_risk

MARKET_NAMES = ["market_up_5", "market_down_5", "market_up_10", "market_down_10", "market_up_20",
                "market_down_20"]
RATE_NAMES = ["rates_up_100bp", "rates_down_100bp", "rates_up_200bp", "rates_down_200bp"]
# Stocks: long AAPL MV 15,000 β_M 1.2, short XOM MV −5,000 β_M 0.8 → Σ MV × β_M = 18,000 − 4,000.
STOCK_MARKET = 15_000.0 * 1.2 + (-5_000.0) * 0.8  # 14,000
EQUITY = 200_000.0


def _option_pnl_by_hand(shock: float) -> float:
    return 2 * 100 * (ref_bs(100.0 * (1 + 1.5 * shock), 100.0, 0.5, 0.04, 0.25, "C")
                      - ref_bs(100.0, 100.0, 0.5, 0.04, 0.25, "C"))


def test_market_scenarios_stocks_and_options() -> None:
    results, unavailable = market_risk(STOCK_MARKET, [CALLS], 50_000.0, EQUITY)
    assert unavailable == {}
    assert [r.scenario for r in results] == MARKET_NAMES + RATE_NAMES
    shocks = {"market_up_5": 0.05, "market_down_5": -0.05, "market_up_10": 0.10,
              "market_down_10": -0.10, "market_up_20": 0.20, "market_down_20": -0.20}
    by_name = {r.scenario: r for r in results}
    for name, shock in shocks.items():
        r = by_name[name]
        assert isinstance(r, ScenarioPnl)
        assert r.shock == shock
        expected = 14_000.0 * shock + _option_pnl_by_hand(shock)
        assert r.pnl == pytest.approx(expected, rel=1e-10)
        assert r.pnl_pct == pytest.approx(expected / EQUITY, rel=1e-10)


def test_market_down_10_explicitly() -> None:
    results, _ = market_risk(STOCK_MARKET, [CALLS], None, EQUITY)
    r = next(r for r in results if r.scenario == "market_down_10")
    stock = 14_000.0 * -0.10  # −1,400
    option = 2 * 100 * (ref_bs(85.0, 100.0, 0.5, 0.04, 0.25, "C") - ref_bs(100.0, 100.0, 0.5, 0.04, 0.25, "C"))
    assert r.pnl == pytest.approx(stock + option, rel=1e-10)


def test_market_scenarios_stocks_only() -> None:
    results, _ = market_risk(STOCK_MARKET, [], None, EQUITY)
    got = {r.scenario: r.pnl for r in results}
    assert got == {"market_up_5": approx(700.0), "market_down_5": approx(-700.0),
                   "market_up_10": approx(1_400.0), "market_down_10": approx(-1_400.0),
                   "market_up_20": approx(2_800.0), "market_down_20": approx(-2_800.0)}


def test_several_options_add_up() -> None:
    put = OptionRevaluation(uuid.UUID(int=5), -1, 40.0, 38.0, 0.75, 0.04, 0.30, "P", 0.9)
    results, _ = market_risk(0.0, [CALLS, put], None, EQUITY)
    r = next(r for r in results if r.scenario == "market_up_20")
    put_pnl = -1 * 100 * (ref_bs(40.0 * 1.18, 38.0, 0.75, 0.04, 0.30, "P") - ref_bs(40.0, 38.0, 0.75, 0.04, 0.30, "P"))
    assert r.pnl == pytest.approx(_option_pnl_by_hand(0.20) + put_pnl, rel=1e-10)


def test_rate_scenarios_with_rate_exposure() -> None:
    results, unavailable = market_risk(0.0, [], 50_000.0, EQUITY)
    assert unavailable == {}
    got = {r.scenario: (r.shock, r.pnl, r.pnl_pct) for r in results if r.scenario.startswith("rates")}
    # 50,000 × (−17 × Δy)
    assert got == {
        "rates_up_100bp": (0.01, approx(-8_500.0), approx(-8_500.0 / EQUITY)),
        "rates_down_100bp": (-0.01, approx(8_500.0), approx(8_500.0 / EQUITY)),
        "rates_up_200bp": (0.02, approx(-17_000.0), approx(-17_000.0 / EQUITY)),
        "rates_down_200bp": (-0.02, approx(17_000.0), approx(17_000.0 / EQUITY)),
    }


def test_rate_scenarios_custom_duration() -> None:
    results, _ = market_risk(0.0, [], 50_000.0, EQUITY, duration=7.0)
    got = {r.scenario: r.pnl for r in results if r.scenario.startswith("rates")}
    assert got["rates_up_100bp"] == approx(-3_500.0)  # 50,000 × −7 × 0.01
    assert got["rates_down_200bp"] == approx(7_000.0)


def test_rate_scenarios_left_out_without_rate_exposure() -> None:
    results, unavailable = market_risk(STOCK_MARKET, [CALLS], None, EQUITY)
    assert [r.scenario for r in results] == MARKET_NAMES
    assert unavailable == dict.fromkeys(RATE_NAMES, "factor_unavailable")


def test_zero_rate_exposure_is_not_unavailable() -> None:
    results, unavailable = market_risk(0.0, [], 0.0, EQUITY)
    assert unavailable == {}
    assert [r.pnl for r in results if r.scenario.startswith("rates")] == [0.0, 0.0, 0.0, 0.0]


def test_market_risk_zero_equity_gives_pct_none() -> None:
    results, _ = market_risk(STOCK_MARKET, [], 50_000.0, 0.0)
    assert all(r.pnl_pct is None for r in results)
    assert next(r for r in results if r.scenario == "market_up_10").pnl == approx(1_400.0)


# ---------------------------------------------------------------- conditional_moves

COV_FACTORS = ["Market", "Value", "Size"]
COV = pd.DataFrame([[0.00040, 0.00006, 0.00010],
                    [0.00006, 0.00025, 0.00003],
                    [0.00010, 0.00003, 0.00030]], index=COV_FACTORS, columns=COV_FACTORS)


def _numpy_conditional(cov: pd.DataFrame, shocked: dict[str, float]) -> dict[str, float]:
    s_names = [f for f in cov.index if f in shocked]
    u_names = [f for f in cov.index if f not in shocked]
    sigma = cov.to_numpy()
    si = [cov.index.get_loc(f) for f in s_names]
    ui = [cov.index.get_loc(f) for f in u_names]
    s = np.array([shocked[f] for f in s_names])
    moves = sigma[np.ix_(ui, si)] @ np.linalg.solve(sigma[np.ix_(si, si)], s)
    return dict(zip(u_names, moves.tolist(), strict=True))


def test_conditional_moves_one_shock_by_hand() -> None:
    moves = conditional_moves(COV, {"Market": -0.10})
    # Value: 0.00006 / 0.0004 × −0.10 = −0.015; Size: 0.0001 / 0.0004 × −0.10 = −0.025
    assert list(moves) == ["Value", "Size"]
    assert moves == {"Value": approx(-0.015), "Size": approx(-0.025)}
    assert moves == pytest.approx(_numpy_conditional(COV, {"Market": -0.10}), rel=1e-10)


def test_conditional_moves_two_shocks_against_numpy_solve() -> None:
    shocked = {"Market": -0.10, "Value": 0.05}
    expected = _numpy_conditional(COV, shocked)
    moves = conditional_moves(COV, shocked)
    assert list(moves) == ["Size"]
    assert moves["Size"] == pytest.approx(expected["Size"], rel=1e-10)
    # By hand as well: Σ_ss = [[4, .6], [.6, 2.5]]e-4, Σ_us = [1, .3]e-4;
    # Σ_ss⁻¹ s = [[2.5, −.6], [−.6, 4]] / 9.64 × [−0.10, 0.05] × 1e4 = [−0.28, 0.26] / 9.64 × 1e4
    # move = (1 × −0.28 + 0.3 × 0.26) / 9.64 = −0.202 / 9.64
    assert moves["Size"] == approx(-0.202 / 9.64)


def test_conditional_moves_shocked_factor_not_in_covariance_is_ignored() -> None:
    assert conditional_moves(COV, {"Market": -0.10, "Growth": 0.3}) == pytest.approx(
        {"Value": -0.015, "Size": -0.025}, rel=1e-12)


def test_conditional_moves_nothing_shocked_in_covariance() -> None:
    assert conditional_moves(COV, {"Growth": 0.3}) == {}
    assert conditional_moves(COV, {}) == {}


def test_conditional_moves_everything_shocked() -> None:
    assert conditional_moves(COV, {"Market": 0.1, "Value": 0.1, "Size": 0.1}) == {}


def test_conditional_moves_singular_uses_pseudo_inverse() -> None:
    # Market and Value perfectly collinear (equal columns): Σ_ss = a·[[1, 1], [1, 1]] with
    # a = 0.0004, pinv = [[1, 1], [1, 1]] / (4a); Σ_us = [c, c], c = 0.0001 →
    # move = c (x + y) / (2a).
    a, c = 0.0004, 0.0001
    cov = pd.DataFrame([[a, a, c], [a, a, c], [c, c, 0.0003]], index=COV_FACTORS, columns=COV_FACTORS)
    moves = conditional_moves(cov, {"Market": -0.10, "Value": -0.06})
    assert moves == {"Size": approx(c * (-0.16) / (2 * a))}  # −0.02


# ---------------------------------------------------------------- stress_test: direct P&L


def test_direct_pnl_by_hand_without_covariance() -> None:
    r = stress_test("mix", {"Market": -0.10, "Value": 0.05}, {"Market": 100_000.0, "Value": 20_000.0},
                    ["Market", "Value"], None, 500_000.0)
    assert isinstance(r, StressResult)
    assert r.scenario_id == "mix"
    assert r.direct_pnl == approx(-9_000.0)  # 100,000 × −0.10 + 20,000 × 0.05
    assert r.correlated_pnl == approx(-9_000.0)
    assert r.correlation_effect == 0.0
    assert r.pnl_pct == approx(-9_000.0 / 500_000.0)
    assert r.exceeds_equity is False
    assert set(r.factor_impacts) == {"Market", "Value"}
    m = r.factor_impacts["Market"]
    assert (m["source"], m["shock"], m["factor_return"], m["exposure"]) == ("shock", -0.10, -0.10, 100_000.0)
    assert m["pnl"] == approx(-10_000.0)
    assert "reason" not in m
    assert r.factor_impacts["Value"]["pnl"] == approx(1_000.0)


def test_direct_pnl_ignores_unshocked_exposures() -> None:
    r = stress_test("s", {"Size": 0.10}, {"Market": 100_000.0, "Size": -30_000.0},
                    ["Market", "Size"], None, 100_000.0)
    assert r.direct_pnl == approx(-3_000.0)
    assert set(r.factor_impacts) == {"Size"}


def test_interest_rate_shock_goes_through_duration() -> None:
    r = stress_test("rates_up_100bp", {RATES: 0.01}, {RATES: 50_000.0, "Market": 100_000.0},
                    ["Market", RATES], None, 100_000.0)
    assert r.direct_pnl == approx(-8_500.0)  # 50,000 × (−17 × 0.01)
    entry = r.factor_impacts[RATES]
    assert entry["shock"] == 0.01
    assert entry["factor_return"] == approx(-0.17)
    assert entry["pnl"] == approx(-8_500.0)


def test_interest_rate_shock_custom_duration() -> None:
    r = stress_test("rates_down_25bp", {RATES: -0.0025}, {RATES: 40_000.0}, [RATES], None,
                    100_000.0, duration=10.0)
    assert r.direct_pnl == approx(1_000.0)  # 40,000 × (−10 × −0.0025)


def test_no_shocks_gives_zero() -> None:
    r = stress_test("empty", {}, {"Market": 100_000.0}, COV_FACTORS, COV, 100_000.0)
    assert (r.direct_pnl, r.correlated_pnl, r.correlation_effect) == (0.0, 0.0, 0.0)
    assert r.factor_impacts == {}
    assert r.exceeds_equity is False


# ---------------------------------------------------------------- stress_test: correlated P&L


EXPOSURES = {"Market": 100_000.0, "Value": 20_000.0, "Size": -30_000.0}


def test_correlated_pnl_one_shock_by_hand() -> None:
    r = stress_test("market_down_10", {"Market": -0.10}, EXPOSURES, COV_FACTORS, COV, 100_000.0)
    # direct: 100,000 × −0.10 = −10,000
    # conditional: Value −0.015 × 20,000 = −300; Size −0.025 × −30,000 = +750
    assert r.direct_pnl == approx(-10_000.0)
    assert r.correlated_pnl == approx(-9_550.0)
    assert r.correlation_effect == approx(450.0)
    assert r.pnl_pct == approx(-0.0955)
    v = r.factor_impacts["Value"]
    assert (v["source"], v["shock"], v["exposure"]) == ("conditional", None, 20_000.0)
    assert v["factor_return"] == approx(-0.015)
    assert v["pnl"] == approx(-300.0)
    assert "reason" not in v
    s = r.factor_impacts["Size"]
    assert (s["factor_return"], s["pnl"]) == (approx(-0.025), approx(750.0))


def test_correlated_pnl_two_shocks_against_numpy() -> None:
    shocks = {"Market": -0.10, "Value": 0.05}
    r = stress_test("x", shocks, EXPOSURES, COV_FACTORS, COV, 100_000.0)
    expected_moves = _numpy_conditional(COV, shocks)
    direct = 100_000.0 * -0.10 + 20_000.0 * 0.05
    correlated = direct + (-30_000.0) * expected_moves["Size"]
    assert r.direct_pnl == approx(direct)
    assert r.correlated_pnl == pytest.approx(correlated, rel=1e-10)
    assert r.correlation_effect == pytest.approx(correlated - direct, rel=1e-9)
    assert r.factor_impacts["Size"]["factor_return"] == pytest.approx(expected_moves["Size"], rel=1e-10)


def test_interest_rate_shock_conditions_on_its_return_not_the_yield_change() -> None:
    factors = ["Market", RATES]
    cov = pd.DataFrame([[0.00040, -0.00002], [-0.00002, 0.00010]], index=factors, columns=factors)
    r = stress_test("rates_up_100bp", {RATES: 0.01}, {"Market": 100_000.0, RATES: 50_000.0},
                    factors, cov, 1_000_000.0)
    # Rate factor return −0.17; E[Market] = −0.00002 / 0.0001 × −0.17 = 0.034 → +3,400
    assert r.direct_pnl == approx(-8_500.0)
    assert r.factor_impacts["Market"]["factor_return"] == approx(0.034)
    assert r.correlated_pnl == approx(-5_100.0)
    assert r.correlation_effect == approx(3_400.0)


def test_unshocked_factor_without_exposure_moves_but_contributes_zero() -> None:
    r = stress_test("m", {"Market": -0.10}, {"Market": 100_000.0}, COV_FACTORS, COV, 100_000.0)
    assert r.correlated_pnl == approx(-10_000.0)
    assert r.correlation_effect == 0.0
    for factor, move in (("Value", -0.015), ("Size", -0.025)):
        entry = r.factor_impacts[factor]
        assert entry["source"] == "conditional"
        assert entry["factor_return"] == approx(move)
        assert entry["exposure"] is None
        assert entry["pnl"] == 0.0
        assert entry["reason"] == "no_exposure"


# ---------------------------------------------------------------- unavailable / no exposure


def test_unavailable_shocked_factor_contributes_zero_with_reason() -> None:
    exposures = {**EXPOSURES, "Growth": 40_000.0}
    r = stress_test("covid", {"Market": -0.10, "Growth": -0.10}, exposures, COV_FACTORS, COV, 100_000.0)
    g = r.factor_impacts["Growth"]
    assert g["source"] == "shock"
    assert g["reason"] == "factor_unavailable"
    assert g["pnl"] == 0.0
    assert g["exposure"] == 40_000.0
    assert r.direct_pnl == approx(-10_000.0)  # Market only
    # The other factors are conditioned on Market alone (as in the one-shock case).
    assert r.factor_impacts["Value"]["factor_return"] == approx(-0.015)
    assert r.correlated_pnl == approx(-9_550.0)


def test_only_unavailable_factors_shocked() -> None:
    r = stress_test("g", {"Growth": 0.15}, {**EXPOSURES, "Growth": 40_000.0}, COV_FACTORS, COV, 100_000.0)
    assert (r.direct_pnl, r.correlated_pnl, r.correlation_effect) == (0.0, 0.0, 0.0)
    assert set(r.factor_impacts) == {"Growth"}
    assert r.factor_impacts["Growth"]["reason"] == "factor_unavailable"


def test_no_covariance_means_no_propagation() -> None:
    r = stress_test("m", {"Market": -0.10}, EXPOSURES, COV_FACTORS, None, 100_000.0)
    assert r.correlated_pnl == r.direct_pnl == approx(-10_000.0)
    assert set(r.factor_impacts) == {"Market"}


def test_unavailable_shocked_factor_in_covariance_is_neither_moved_nor_used() -> None:
    factors = ["Market", "Value", "Size", "Growth"]
    cov = pd.DataFrame([[0.00040, 0.00006, 0.00010, 0.00020],
                        [0.00006, 0.00025, 0.00003, -0.00005],
                        [0.00010, 0.00003, 0.00030, 0.00004],
                        [0.00020, -0.00005, 0.00004, 0.00050]], index=factors, columns=factors)
    exposures = {**EXPOSURES, "Growth": 40_000.0}
    r = stress_test("covid", {"Market": -0.10, "Growth": -0.10}, exposures,
                    ["Market", "Value", "Size"], cov, 100_000.0)
    g = r.factor_impacts["Growth"]
    assert (g["source"], g.get("reason"), g["pnl"]) == ("shock", "factor_unavailable", 0.0)
    # Value and Size are conditioned on Market alone: −0.015 and −0.025 as before.
    assert r.factor_impacts["Value"]["factor_return"] == approx(-0.015)
    assert r.factor_impacts["Size"]["factor_return"] == approx(-0.025)
    assert r.correlated_pnl == approx(-9_550.0)


@pytest.mark.parametrize("exposures", [{"Value": 20_000.0, "Size": -30_000.0},
                                       {"Market": 0.0, "Value": 20_000.0, "Size": -30_000.0}],
                         ids=["absent", "zero"])
def test_shocked_factor_without_exposure_still_conditions_the_others(exposures) -> None:
    r = stress_test("m", {"Market": -0.10}, exposures, COV_FACTORS, COV, 100_000.0)
    m = r.factor_impacts["Market"]
    assert m["source"] == "shock"
    assert m["reason"] == "no_exposure"
    assert m["pnl"] == 0.0
    assert m["exposure"] == exposures.get("Market")
    assert r.direct_pnl == 0.0
    # Value −0.015 × 20,000 = −300; Size −0.025 × −30,000 = +750
    assert r.factor_impacts["Value"]["factor_return"] == approx(-0.015)
    assert r.correlated_pnl == approx(450.0)
    assert r.correlation_effect == approx(450.0)


# ---------------------------------------------------------------- exceeds_equity and pnl_pct


def test_loss_beyond_equity_is_flagged_not_clipped() -> None:
    r = stress_test("crash", {"Market": -0.10}, {"Market": 2_000_000.0}, ["Market"], None, 100_000.0)
    assert r.correlated_pnl == approx(-200_000.0)
    assert r.pnl_pct == approx(-2.0)
    assert r.exceeds_equity is True


def test_loss_exactly_equity_is_not_flagged() -> None:
    r = stress_test("crash", {"Market": -0.5}, {"Market": 200_000.0}, ["Market"], None, 100_000.0)
    assert r.correlated_pnl == -100_000.0
    assert r.pnl_pct == -1.0
    assert r.exceeds_equity is False


def test_gain_beyond_equity_is_not_flagged() -> None:
    r = stress_test("rally", {"Market": 0.10}, {"Market": 2_000_000.0}, ["Market"], None, 100_000.0)
    assert r.pnl_pct == approx(2.0)
    assert r.exceeds_equity is False


def test_exceeds_equity_uses_correlated_loss() -> None:
    # direct −9,000 (within equity 10,000) but Value moves −0.015 × 100,000 = −1,500 → −10,500.
    r = stress_test("m", {"Market": -0.10}, {"Market": 90_000.0, "Value": 100_000.0}, COV_FACTORS,
                    COV, 10_000.0)
    assert r.direct_pnl == approx(-9_000.0)
    assert r.correlated_pnl == approx(-10_500.0)
    assert r.pnl_pct == approx(-1.05)
    assert r.exceeds_equity is True
    # and the other way round: direct beyond equity, correlated within it → not flagged.
    r = stress_test("m", {"Market": -0.10}, {"Market": 110_000.0, "Value": -100_000.0}, COV_FACTORS,
                    COV, 10_500.0)
    assert r.direct_pnl == approx(-11_000.0)
    assert r.correlated_pnl == approx(-9_500.0)
    assert r.exceeds_equity is False


def test_zero_equity_pct_none() -> None:
    r = stress_test("m", {"Market": 0.10}, {"Market": 1_000.0}, ["Market"], None, 0.0)
    assert r.pnl_pct is None
    assert r.exceeds_equity is False


# ---------------------------------------------------------------- linearity (property)

PROP_FACTORS = ["Market", "Value", "Size", RATES]


@st.composite
def stress_inputs(draw: st.DrawFn):
    a = draw(hnp.arrays(np.float64, (4, 4), elements=st.floats(-0.05, 0.05, allow_subnormal=False)))
    diag = draw(hnp.arrays(np.float64, 4, elements=st.floats(0.001, 0.01)))
    cov = pd.DataFrame(a @ a.T + np.diag(diag), index=PROP_FACTORS, columns=PROP_FACTORS)
    shocked = draw(st.lists(st.sampled_from(PROP_FACTORS), min_size=1, max_size=4, unique=True))
    shocks = {f: draw(st.floats(-0.03, 0.03) if f == RATES else st.floats(-0.5, 0.5)) for f in shocked}
    exposed = draw(st.lists(st.sampled_from(PROP_FACTORS), min_size=1, max_size=4, unique=True))
    exposures = {f: draw(st.floats(-1e6, 1e6)) for f in exposed}
    return cov, shocks, exposures


@settings(deadline=None, max_examples=200)
@given(stress_inputs(), st.floats(1_000.0, 1e7))
def test_stress_pnl_matches_numpy_and_is_linear_in_shocks(inputs, equity: float) -> None:
    cov, shocks, exposures = inputs
    tol = {"rel": 1e-8, "abs": 1e-6}

    # Independent computation: rates through −17 × Δy, then Σ_us Σ_ss⁻¹ s with np.linalg.solve.
    moves = {f: -17.0 * v if f == RATES else v for f, v in shocks.items()}
    direct = sum(exposures.get(f, 0.0) * m for f, m in moves.items())
    unshocked = [f for f in PROP_FACTORS if f not in moves]
    propagated = 0.0
    if unshocked:
        cond = _numpy_conditional(cov, moves)
        propagated = sum(exposures.get(f, 0.0) * cond[f] for f in unshocked)

    r1 = stress_test("s", shocks, exposures, PROP_FACTORS, cov, equity)
    assert r1.direct_pnl == pytest.approx(direct, **tol)
    assert r1.correlated_pnl == pytest.approx(direct + propagated, **tol)

    doubled = stress_test("s", {f: 2 * v for f, v in shocks.items()}, exposures, PROP_FACTORS, cov, equity)
    assert doubled.direct_pnl == pytest.approx(2 * r1.direct_pnl, **tol)
    assert doubled.correlated_pnl == pytest.approx(2 * r1.correlated_pnl, **tol)
    assert doubled.correlation_effect == pytest.approx(2 * r1.correlation_effect, **tol)

    negated = stress_test("s", {f: -v for f, v in shocks.items()}, exposures, PROP_FACTORS, cov, equity)
    assert negated.correlated_pnl == pytest.approx(-r1.correlated_pnl, **tol)


# ---------------------------------------------------------------- stress_summary


def _result(sid: str, correlated: float, exceeds: bool = False) -> StressResult:
    return StressResult(sid, correlated, correlated, 0.0, correlated / 100_000.0, exceeds, {})


def test_stress_summary_by_hand() -> None:
    results = [_result("market_crash_35", -9_000.0), _result("market_rally_25", 2_500.0),
               _result("value_rotation_20", -500.0)]
    summary = stress_summary(results)
    assert summary == {
        "worst_scenario": "market_crash_35", "worst_pnl": -9_000.0,
        "best_scenario": "market_rally_25", "best_pnl": 2_500.0,
        "mean_pnl": approx(-7_000.0 / 3),  # (−9,000 + 2,500 − 500) / 3
        "scenarios": 3, "exceeds_equity": [],
    }


def test_stress_summary_uses_correlated_not_direct_pnl() -> None:
    a = StressResult("a", -100.0, -5_000.0, -4_900.0, None, False, {})
    b = StressResult("b", -3_000.0, -1_000.0, 2_000.0, None, False, {})
    summary = stress_summary([a, b])
    assert (summary["worst_scenario"], summary["worst_pnl"]) == ("a", -5_000.0)
    assert (summary["best_scenario"], summary["best_pnl"]) == ("b", -1_000.0)
    assert summary["mean_pnl"] == approx(-3_000.0)


def test_stress_summary_lists_exceeds_equity_in_input_order() -> None:
    results = [_result("x", -300_000.0, True), _result("y", 1.0), _result("z", -150_000.0, True)]
    assert stress_summary(results)["exceeds_equity"] == ["x", "z"]


def test_stress_summary_one_result() -> None:
    summary = stress_summary([_result("only", -42.0)])
    assert summary["worst_scenario"] == summary["best_scenario"] == "only"
    assert summary["worst_pnl"] == summary["best_pnl"] == summary["mean_pnl"] == -42.0
    assert summary["scenarios"] == 1


def test_stress_summary_empty() -> None:
    assert stress_summary([]) == {"worst_scenario": None, "worst_pnl": None, "best_scenario": None,
                                  "best_pnl": None, "mean_pnl": None, "scenarios": 0,
                                  "exceeds_equity": []}


def test_market_scenarios_are_left_out_when_the_market_factor_has_no_data():
    from calculations.scenarios import market_risk

    results, unavailable = market_risk(None, [], 50_000.0, 1_000_000.0)
    assert {r.scenario for r in results} == {"rates_up_100bp", "rates_down_100bp", "rates_up_200bp",
                                             "rates_down_200bp"}
    assert unavailable == {f"market_{d}_{n}": "factor_unavailable" for d in ("up", "down") for n in (5, 10, 20)}


def test_scenario_propagation_matches_numpy_and_a_precomputed_one_changes_nothing() -> None:
    """The per-date propagation (shared by every portfolio) equals the direct formula, and
    stress_test gives the same result with it as when it computes it itself. A rate shock is a
    yield change: it enters as −duration × Δy, and only factors with data are conditioned on."""
    shocks = {"Market": -0.20, "Size": -0.10, RATES: 0.01}
    available = ["Market", "Value", "Size"]  # no Interest Rate data
    propagation = scenario_propagation(shocks, available, COV)
    assert propagation == pytest.approx(_numpy_conditional(COV, {"Market": -0.20, "Size": -0.10}), rel=1e-10)
    exposures = {"Market": 1_000_000.0, "Value": -250_000.0, "Size": 400_000.0, RATES: 50_000.0}
    computed = stress_test("s", shocks, exposures, available, COV, 2_000_000.0)
    shared = stress_test("s", shocks, exposures, available, COV, 2_000_000.0, propagation=propagation)
    assert shared == computed
    # Value moves to Σ_us Σ_ss⁻¹ s; the direct part is Market and Size only (rates unavailable)
    assert computed.direct_pnl == pytest.approx(1_000_000.0 * -0.20 + 400_000.0 * -0.10)
    assert computed.correlation_effect == pytest.approx(-250_000.0 * propagation["Value"])
    assert scenario_propagation(shocks, available, None) == {}


def test_revaluing_many_options_at_once_equals_each_by_the_independent_formula() -> None:
    """A chunk's options (calls and puts, long and short, a wiped-out underlying) revalued under
    every market shock in one `revaluation_pnl` call: each cell equals the independent formula
    for that option and shock, and market_risk given the precomputed rows equals market_risk
    computing them itself."""
    from calculations.scenarios import MARKET_SHOCKS, revaluation_pnl

    options = [CALLS,
               OptionRevaluation(uuid.UUID(int=11), -3, 50.0, 55.0, 0.25, 0.03, 0.40, "P", 0.8, 0.02),
               OptionRevaluation(uuid.UUID(int=12), 1, 100.0, 100.0, 0.5, 0.04, 0.25, "P", 5.0),
               OptionRevaluation(uuid.UUID(int=13), 4, 20.0, 18.0, 1.5, 0.01, 0.6, "C", 1.1)]
    pnl = revaluation_pnl(options, MARKET_SHOCKS)
    assert pnl.shape == (4, len(MARKET_SHOCKS))
    for row, o in zip(pnl, options, strict=True):
        for cell, shock in zip(row, MARKET_SHOCKS, strict=True):
            shocked = max(o.spot * (1 + o.market_beta * shock), 1e-9)
            expected = o.quantity * 100 * (ref_bs(shocked, o.strike, o.years, o.rate, o.volatility, o.right,
                                                  o.dividend_yield)
                                           - ref_bs(o.spot, o.strike, o.years, o.rate, o.volatility, o.right,
                                                    o.dividend_yield))
            assert cell == pytest.approx(expected, rel=1e-9, abs=1e-9)
    alone = market_risk(STOCK_MARKET, options, 50_000.0, EQUITY)
    given = market_risk(STOCK_MARKET, options, 50_000.0, EQUITY, option_pnl=pnl)
    assert alone == given


# ---------------------------------------------------------------- stress_tests_books: many books at once


def test_stress_tests_books_match_the_per_book_formula_and_do_not_depend_on_the_chunk() -> None:
    """Many books × scenarios at once against the SPEC §6.5 formula written here book by book:
    direct = Σ over shocked factors with data and exposure of exposure × move; correlated adds
    every unshocked covariance factor's exposure × its conditional move (numpy solve). Factor
    `Value` has no data (its shock moves nothing and is not propagated); a scenario names a factor
    outside the exposure columns. Each book computed alone gives bit-identical numbers."""
    rng = np.random.default_rng(7)
    names = ["Market", "Value", "Size", RATES]
    cov = COV.copy()
    available = ["Market", "Size", RATES]
    exposures = rng.normal(0.0, 100_000.0, size=(9, len(names)))
    exposures[rng.random(exposures.shape) < 0.25] = np.nan  # no exposure to that factor
    exposures[3, 2] = 0.0
    equity = rng.uniform(50_000.0, 500_000.0, size=9)
    equity[5] = 1_000.0  # a loss larger than equity
    raw = [("m", {"Market": -0.2}), ("mv", {"Market": 0.1, "Value": -0.3}), ("r", {RATES: 0.01}),
           ("odd", {"Size": 0.05, "Crypto": 0.5}), ("none", {})]
    scenarios = [scenario_moves(sid, shocks, available, cov) for sid, shocks in raw]
    books = stress_tests_books(exposures, names, equity, scenarios, available)
    for i in range(len(exposures)):
        held = {f: exposures[i, j] for j, f in enumerate(names) if not np.isnan(exposures[i, j])}
        for (sid, shocks), result in zip(raw, books[i], strict=True):
            moves = {f: (-17.0 * v if f == RATES else v) for f, v in shocks.items()}
            direct = sum(held[f] * m for f, m in moves.items() if f in available and held.get(f))
            usable = {f: m for f, m in moves.items() if f in available and f in cov.index}
            conditional = _numpy_conditional(cov, usable) if usable else {}
            propagated = sum(held.get(f, 0.0) * m for f, m in conditional.items() if f not in moves)
            assert result.scenario_id == sid
            assert result.direct_pnl == pytest.approx(direct, rel=1e-12, abs=1e-9)
            assert result.correlated_pnl == pytest.approx(direct + propagated, rel=1e-10, abs=1e-9)
            assert result.exceeds_equity == (direct + propagated < -equity[i])
            if "Value" in shocks:
                assert result.factor_impacts["Value"]["reason"] == "factor_unavailable"
            alone = stress_tests_books(exposures[i:i + 1], names, equity[i:i + 1], scenarios, available)[0]
            assert [(r.direct_pnl, r.correlated_pnl) for r in alone] == [
                (r.direct_pnl, r.correlated_pnl) for r in books[i]]
