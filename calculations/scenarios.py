"""Market-risk scenarios (SPEC §6.4) and factor stress tests with conditional propagation
(SPEC §6.5). Money in dollars, shocks as fractions, rate shocks as decimal yield changes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from calculations.greeks import bsm_greeks_arrays

MARKET_SHOCKS = (0.05, -0.05, 0.10, -0.10, 0.20, -0.20)
RATE_SHOCKS = (0.01, -0.01, 0.02, -0.02)  # ±100bp, ±200bp
DEFAULT_DURATION = 17.0  # years: a long-Treasury ETF
RATES = "Interest Rate"


def rate_shock_to_return(delta_yield: float, duration: float = DEFAULT_DURATION) -> float:
    """The rate proxy's return for a yield change: −duration × Δy (0.01 → −0.17 at 17 years)."""
    return -duration * delta_yield


def scenario_name(kind: str, shock: float) -> str:
    """`market_up_10`, `market_down_5`, `rates_up_100bp`, … (names stored in market_risk_results)."""
    direction = "up" if shock > 0 else "down"
    if kind == "market":
        return f"market_{direction}_{round(abs(shock) * 100)}"
    return f"rates_{direction}_{round(abs(shock) * 10_000)}bp"


@dataclass(frozen=True)
class OptionRevaluation:
    """What a full Black–Scholes revaluation of one option position needs. `quantity` in
    contracts (signed), prices per share, `market_beta` of the underlying."""

    position_id: uuid.UUID
    quantity: float
    spot: float
    strike: float
    years: float
    rate: float
    volatility: float
    right: str
    market_beta: float
    dividend_yield: float = 0.0

    def pnl(self, market_shock: float) -> float:
        """Dollar P&L with the underlying at spot × (1 + β × shock), all else equal."""
        return float(revaluation_pnl([self], [market_shock])[0, 0])


def revaluation_pnl(options: Sequence[OptionRevaluation], market_shocks: Sequence[float]) -> np.ndarray:
    """Dollar P&L of each option (rows) under each market shock (columns), every one fully
    revalued by Black–Scholes in one vectorised pass: the underlying at spot × (1 + β × shock)
    (floored at 1e-9 dollars, a wiped-out underlying), all else equal, minus today's price;
    × quantity × 100. (0 × k) when there are no options."""
    if not options:
        return np.zeros((0, len(market_shocks)))
    n, k = len(options), len(market_shocks)
    column = {name: np.array([getattr(o, name) for o in options], dtype=float)
              for name in ("quantity", "spot", "strike", "years", "rate", "volatility", "market_beta",
                           "dividend_yield")}
    is_call = np.array([o.right == "C" for o in options])
    for name in ("spot", "strike", "years", "volatility"):
        bad = column[name][~(np.isfinite(column[name]) & (column[name] > 0))]
        if bad.size:
            raise ValueError(f"{name} must be a positive finite number, got {float(bad[0])!r}")
    shocked = np.maximum(column["spot"][:, None] * (1.0 + column["market_beta"][:, None] * np.asarray(
        market_shocks, dtype=float)[None, :]), 1e-9)
    spots = np.concatenate([column["spot"][:, None], shocked], axis=1).ravel()  # today, then each shock

    def repeat(values: np.ndarray) -> np.ndarray:
        return np.repeat(values, k + 1)

    prices = bsm_greeks_arrays(spots, repeat(column["strike"]), repeat(column["years"]), repeat(column["rate"]),
                               repeat(column["volatility"]), repeat(is_call),
                               repeat(column["dividend_yield"])).price.reshape(n, k + 1)
    return column["quantity"][:, None] * 100.0 * (prices[:, 1:] - prices[:, :1])


@dataclass(frozen=True)
class ScenarioPnl:
    scenario: str
    shock: float
    pnl: float
    pnl_pct: float | None  # pnl ÷ equity


def market_risk(stock_market_exposure: float | None, options: Sequence[OptionRevaluation],
                rate_exposure: float | None, equity: float,
                duration: float = DEFAULT_DURATION,
                option_pnl: np.ndarray | None = None) -> tuple[list[ScenarioPnl], dict[str, str]]:
    """Market scenarios: Σ stock market value × β_M × shock (`stock_market_exposure` is that
    Σ MV × β_M) plus each option fully revalued. Rate scenarios: rate exposure × (−duration × Δy).
    Returns the scenarios and those left out with reason `factor_unavailable`: the market ones
    when `stock_market_exposure` is None (no market factor data), the rate ones when
    `rate_exposure` is None. `option_pnl`: `revaluation_pnl(options, MARKET_SHOCKS)` when the
    caller computed it already (for many books at once), else computed here."""
    results = []
    unavailable: dict[str, str] = {}
    if option_pnl is None and stock_market_exposure is not None:
        option_pnl = revaluation_pnl(options, MARKET_SHOCKS)
    for shock in MARKET_SHOCKS:
        name = scenario_name("market", shock)
        if stock_market_exposure is None:
            unavailable[name] = "factor_unavailable"
            continue
        pnl = stock_market_exposure * shock + sum(option_pnl[:, MARKET_SHOCKS.index(shock)].tolist())
        results.append(ScenarioPnl(name, shock, pnl, _pct(pnl, equity)))
    for shock in RATE_SHOCKS:
        name = scenario_name("rates", shock)
        if rate_exposure is None:
            unavailable[name] = "factor_unavailable"
            continue
        pnl = rate_exposure * rate_shock_to_return(shock, duration)
        results.append(ScenarioPnl(name, shock, pnl, _pct(pnl, equity)))
    return results, unavailable


def _pct(pnl: float, equity: float) -> float | None:
    return pnl / equity if equity else None


@dataclass(frozen=True)
class StressResult:
    scenario_id: str
    direct_pnl: float
    correlated_pnl: float
    correlation_effect: float
    pnl_pct: float | None
    exceeds_equity: bool
    factor_impacts: dict[str, dict[str, Any]]


def conditional_moves(covariance: pd.DataFrame, shocked: Mapping[str, float]) -> dict[str, float]:
    """E[r_u | r_s = s] = Σ_us Σ_ss⁻¹ s for every factor u of `covariance` not in `shocked`.
    Shocked factors absent from the covariance are ignored. A singular Σ_ss uses the
    pseudo-inverse. Empty when nothing shocked is in the covariance."""
    names = list(covariance.index)
    s_at = [i for i, f in enumerate(names) if f in shocked]
    u_at = [i for i, f in enumerate(names) if f not in shocked]
    if not s_at or not u_at:
        return {}
    # positional indexing: label lookups cost more than the algebra
    same_order = list(covariance.columns) == names
    sigma = (covariance if same_order else covariance.loc[names, names]).to_numpy()
    sigma_ss = sigma[np.ix_(s_at, s_at)]
    sigma_us = sigma[np.ix_(u_at, s_at)]
    s = np.array([shocked[names[i]] for i in s_at])
    u_names = [names[i] for i in u_at]
    moves = sigma_us @ (np.linalg.pinv(sigma_ss) @ s)
    return dict(zip(u_names, (float(m) for m in moves), strict=True))


def factor_moves(shocks: Mapping[str, float], duration: float = DEFAULT_DURATION) -> dict[str, float]:
    """A scenario's shocks as factor returns (Interest Rate: a yield change, mapped by duration)."""
    return {f: rate_shock_to_return(v, duration) if f == RATES else v for f, v in shocks.items()}


def scenario_propagation(shocks: Mapping[str, float], available_factors: Sequence[str],
                         covariance: pd.DataFrame | None,
                         duration: float = DEFAULT_DURATION) -> dict[str, float]:
    """The unshocked factors' conditional moves for a scenario: `conditional_moves` given the
    shocked factors that have data. It depends on no portfolio, so one computation per
    scenario and date serves every portfolio (`stress_test(..., propagation=...)`). Empty
    without a covariance."""
    if covariance is None:
        return {}
    usable = {f: m for f, m in factor_moves(shocks, duration).items() if f in available_factors}
    return conditional_moves(covariance, usable)


@dataclass(frozen=True)
class ScenarioMoves:
    """A stress scenario's factor returns on a date (SPEC §6.5), the same for every book: the
    shocks as given (Interest Rate as a yield change), the shocked factors' returns (duration
    mapped) and the unshocked factors' conditional moves (`scenario_propagation`; empty without a
    covariance)."""

    scenario_id: str
    shocks: Mapping[str, float]
    shocked: Mapping[str, float]
    propagated: Mapping[str, float]


def scenario_moves(scenario_id: str, shocks: Mapping[str, float], available_factors: Sequence[str],
                   covariance: pd.DataFrame | None, duration: float = DEFAULT_DURATION,
                   propagation: Mapping[str, float] | None = None) -> ScenarioMoves:
    """One scenario's `ScenarioMoves` (`propagation`: its conditional moves when already computed)."""
    if propagation is None:
        propagation = scenario_propagation(shocks, available_factors, covariance, duration)
    return ScenarioMoves(scenario_id, dict(shocks), factor_moves(shocks, duration),
                         dict(propagation) if covariance is not None else {})


def stress_tests_books(exposures: np.ndarray, factor_names: Sequence[str], equity: np.ndarray,
                       scenarios: Sequence[ScenarioMoves],
                       available_factors: Sequence[str]) -> list[list[StressResult]]:
    """Every scenario for every book at once: `exposures` is books × factors in dollars (NaN: the
    book has no exposure to that factor), `equity` one value per book. Direct P&L = exposures @
    the shocked factors' returns (a factor without data — not in `available_factors` — or outside
    `factor_names` moves nothing); correlated P&L adds exposures @ the unshocked factors'
    conditional moves. Returns each book's results in scenario order, with `factor_impacts`
    saying per factor where its move came from and why it contributes nothing (`factor_unavailable`,
    `no_exposure`). No clipping: a loss larger than equity sets `exceeds_equity`."""
    exposures = np.asarray(exposures, dtype=float).reshape(-1, len(factor_names))
    column = {f: j for j, f in enumerate(factor_names)}
    direct_moves = np.zeros((len(factor_names), len(scenarios)))
    conditional_moves_ = np.zeros((len(factor_names), len(scenarios)))
    for k, scenario in enumerate(scenarios):
        for factor, move in scenario.shocked.items():
            if factor in available_factors and factor in column:
                direct_moves[column[factor], k] = move
        for factor, move in scenario.propagated.items():
            if factor not in scenario.shocked and factor in column:
                conditional_moves_[column[factor], k] = move
    known = np.nan_to_num(exposures, nan=0.0)
    direct = np.zeros((len(known), len(scenarios)))
    propagated = np.zeros_like(direct)
    for j in range(len(factor_names)):  # factor by factor: a book's sums never depend on the other books
        direct += known[:, j:j + 1] * direct_moves[j]
        propagated += known[:, j:j + 1] * conditional_moves_[j]
    correlated = direct + propagated
    books = []
    for i, row in enumerate(exposures.tolist()):
        held = {f: v for f, v in zip(factor_names, row, strict=True) if v == v}  # NaN: no exposure
        results = []
        for k, scenario in enumerate(scenarios):
            d, c, e = float(direct[i, k]), float(correlated[i, k]), float(equity[i])
            results.append(StressResult(scenario.scenario_id, d, c, c - d, _pct(c, e), c < 0 and -c > e,
                                        _factor_impacts(scenario, held, available_factors)))
        books.append(results)
    return books


def _factor_impacts(scenario: ScenarioMoves, exposures: Mapping[str, float],
                    available_factors: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per factor of a scenario: its source (`shock` or `conditional`), move, the book's exposure
    and P&L, and `reason` when it contributes nothing for a reason other than a zero move."""
    impacts: dict[str, dict[str, Any]] = {}
    for factor, move in scenario.shocked.items():
        exposure = exposures.get(factor)
        entry = {"source": "shock", "shock": scenario.shocks[factor], "factor_return": move,
                 "exposure": exposure, "pnl": 0.0}
        if factor not in available_factors:
            entry["reason"] = "factor_unavailable"
        elif not exposure:
            entry["reason"] = "no_exposure"
        else:
            entry["pnl"] = exposure * move
        impacts[factor] = entry
    for factor, move in scenario.propagated.items():
        if factor in scenario.shocked:  # shocked but without data: contributes 0, never propagated
            continue
        entry = {"source": "conditional", "shock": None, "factor_return": move,
                 "exposure": exposures.get(factor), "pnl": exposures.get(factor, 0.0) * move}
        if factor not in exposures:
            entry["reason"] = "no_exposure"
        impacts[factor] = entry
    return impacts


def stress_test(scenario_id: str, shocks: Mapping[str, float], exposures: Mapping[str, float],
                available_factors: Sequence[str], covariance: pd.DataFrame | None, equity: float,
                duration: float = DEFAULT_DURATION,
                propagation: Mapping[str, float] | None = None) -> StressResult:
    """`stress_tests_books` for one book and one scenario, its exposures a factor → dollars map."""
    names = list(exposures)
    moves = scenario_moves(scenario_id, shocks, available_factors, covariance, duration, propagation)
    return stress_tests_books(np.array([[exposures[f] for f in names]]), names, np.array([equity]),
                              [moves], available_factors)[0][0]


def stress_summary(results: Sequence[StressResult]) -> dict[str, Any]:
    """Worst, best and mean correlated P&L in dollars (None for no results)."""
    if not results:
        return {"worst_scenario": None, "worst_pnl": None, "best_scenario": None, "best_pnl": None,
                "mean_pnl": None, "scenarios": 0, "exceeds_equity": []}
    worst = min(results, key=lambda r: r.correlated_pnl)
    best = max(results, key=lambda r: r.correlated_pnl)
    return {"worst_scenario": worst.scenario_id, "worst_pnl": worst.correlated_pnl,
            "best_scenario": best.scenario_id, "best_pnl": best.correlated_pnl,
            "mean_pnl": sum(r.correlated_pnl for r in results) / len(results),
            "scenarios": len(results),
            "exceeds_equity": [r.scenario_id for r in results if r.exceeds_equity]}
