"""The engines and their registries.

Two kinds, each registered as (name, function[, dependencies]):

- **global engines** run once per as-of date before the portfolios (symbol betas, factor
  covariance); each commits on its own and leaves its in-memory output in a `DateContext`;
- **portfolio engines** run for each (portfolio, as-of date) in registration order, each inside a
  savepoint of that unit's single transaction. Dependencies may name engines of either kind.

The run loop (batch/runner.py) knows nothing about what an engine computes: a new engine is a
function plus a `register(...)` call here. An engine loads its inputs, calls the pure functions of
`calculations/`, replaces its result rows for its natural key, and returns a `JobOutcome`; it
raises on failure. "Nothing to compute" is a `skipped` outcome carrying the SPEC §8 payload.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

import pandas as pd
from sqlalchemy import delete
from sqlalchemy.orm import Session

from batch import calendar, repository
from batch.settings import Settings
from batch.sync import HISTORY_SESSIONS
from calculations import correlations as corr
from calculations import factors
from calculations.exposures import ExposureInput, Exposures, factor_exposures
from calculations.greeks import PositionGreeks, option_greeks
from calculations.positions import OPTIONS, PRIVATE, PUBLIC, PositionInput
from calculations.scenarios import (
    DEFAULT_DURATION,
    OptionRevaluation,
    market_risk,
    stress_summary,
    stress_test,
)
from calculations.snapshot import build_snapshot
from calculations.valuation import Valuation, daily_pnl, value_portfolio
from models import (
    CorrelationCluster,
    CorrelationRun,
    FactorCorrelation,
    MarketRiskResult,
    PairwiseCorrelation,
    PortfolioFactorExposure,
    PortfolioSnapshot,
    PositionFactorExposure,
    PositionGreeks as PositionGreeksRow,
    StressTestResult,
    SymbolFactorBeta,
)

STALE_AFTER_SESSIONS = 5


@dataclass(frozen=True)
class JobOutcome:
    status: str  # "success" or "skipped"
    result: dict[str, Any]


@dataclass
class DateContext:
    """Shared by everything computed for one as-of date: the global engines write `outputs`,
    the portfolio engines read them. `session` is set only while a global engine runs."""

    settings: Settings
    as_of: date
    portfolio_ids: list[uuid.UUID] | None  # the run's --portfolio filter (None: all)
    outputs: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # global engine → error
    session: Session | None = None


@dataclass
class UnitContext:
    """Everything a portfolio engine may use for one (portfolio, as-of date). Prices are loaded
    lazily and never dated after `as_of` (no look-ahead)."""

    session: Session
    settings: Settings
    portfolio: repository.PortfolioRow
    as_of: date
    positions: list[PositionInput]
    shared: DateContext
    outputs: dict[str, Any] = field(default_factory=dict)  # engine name → in-memory output

    @property
    def portfolio_id(self) -> uuid.UUID:
        return self.portfolio.id

    @cached_property
    def held(self) -> list[PositionInput]:
        """Positions held at the as-of close."""
        return [p for p in self.positions if p.is_held_on(self.as_of)]

    @cached_property
    def previous_session(self) -> date:
        return calendar.previous_session(self.as_of)

    @cached_property
    def closes(self) -> pd.DataFrame:
        """Closes of every symbol the positions reference (own symbol, option underlying) over
        the HISTORY_SESSIONS sessions ending at `as_of`, indexed by every session."""
        symbols = {p.symbol for p in self.positions} | {
            p.underlying for p in self.positions if p.asset_class == OPTIONS and p.underlying}
        return repository.session_closes(self.session, symbols, self.as_of, HISTORY_SESSIONS)

    def replace(self, table: type, rows: list[dict[str, Any]], date_column: str = "as_of_date") -> int:
        """Replace this portfolio's rows of `table` for the as-of date with `rows`."""
        key = {"portfolio_id": self.portfolio_id, date_column: self.as_of}
        return repository.replace_rows(self.session, table, key, rows)


@dataclass(frozen=True)
class Engine:
    name: str
    run: Callable[[UnitContext], JobOutcome]
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class GlobalEngine:
    name: str
    run: Callable[[DateContext], JobOutcome]


ENGINES: list[Engine] = []
GLOBAL_ENGINES: list[GlobalEngine] = []


def register(engine: Engine | GlobalEngine) -> Engine | GlobalEngine:
    """Add an engine after its dependencies (which must already be registered)."""
    known = {e.name for e in ENGINES} | {e.name for e in GLOBAL_ENGINES}
    missing = [d for d in getattr(engine, "depends_on", ()) if d not in known]
    if missing or engine.name in known:
        raise ValueError(f"cannot register engine {engine.name!r}: unknown dependencies {missing} "
                         "or duplicate name")
    (GLOBAL_ENGINES if isinstance(engine, GlobalEngine) else ENGINES).append(engine)
    return engine


def _quality(flag: str, message: str, analyzed: int, total: int, data_days: int,
             **extra: Any) -> dict[str, Any]:
    return {"flag": flag, "message": message, "positions_analyzed": analyzed,
            "positions_total": total, "positions_skipped": total - analyzed, "data_days": data_days,
            **extra}


# --- global: symbol betas (SPEC §6.3) --------------------------------------------------------


@dataclass(frozen=True)
class SymbolBetas:
    betas: dict[str, dict[str, float]]  # symbol → factor → beta (capped), available factors only
    stats: dict[str, dict[str, Any]]  # symbol → r_squared, observations
    unavailable: dict[str, str]  # factor → reason


def run_symbol_betas(ctx: DateContext) -> JobOutcome:
    """Fit every synced symbol's betas once for the date, in one batched pass."""
    s = ctx.session
    proxies = repository.factor_proxies(s)
    symbols = repository.symbols_held(s, ctx.as_of, ctx.as_of, ctx.portfolio_ids)
    proxy_symbols = [p for p in proxies.values() if p]
    closes = repository.session_closes(s, set(symbols) | set(proxy_symbols), ctx.as_of,
                                       factors.BETA_WINDOW + 1)
    returns = factors.simple_returns(closes)
    factor_frame, unavailable = factors.factor_returns(returns[proxy_symbols], proxies)
    fit = factors.fit_symbol_betas(returns[symbols], factor_frame, unavailable)
    all_unavailable = {**fit.unavailable, **unavailable}
    fitted = sorted({e.symbol for e in fit.estimates})
    rows = [{"symbol": e.symbol, "factor": e.factor, "as_of_date": ctx.as_of, "beta": e.beta,
             "std_error": e.std_error, "t_stat": e.t_stat, "r_squared": e.r_squared,
             "observations": e.observations, "window_days": fit.window_days, "capped": e.capped,
             "quality_flag": "full_history" if e.observations >= fit.window_days else "limited_history"}
            for e in fit.estimates]
    rows += [{"symbol": symbol, "factor": factor, "as_of_date": ctx.as_of, "beta": None,
              "std_error": None, "t_stat": None, "r_squared": None, "observations": 0,
              "window_days": fit.window_days, "capped": False, "quality_flag": reason}
             for symbol in fitted for factor, reason in all_unavailable.items()]
    s.execute(delete(SymbolFactorBeta).where(SymbolFactorBeta.as_of_date == ctx.as_of,
                                             SymbolFactorBeta.symbol.in_(symbols)))
    if rows:
        s.execute(SymbolFactorBeta.__table__.insert(), rows)
    betas: dict[str, dict[str, float]] = {}
    stats: dict[str, dict[str, Any]] = {}
    for e in fit.estimates:
        betas.setdefault(e.symbol, {})[e.factor] = e.beta
        if e.factor == factors.MARKET:
            stats[e.symbol] = {"r_squared": e.r_squared, "observations": e.observations}
    ctx.outputs["symbol_betas"] = SymbolBetas(betas, stats, all_unavailable)
    return JobOutcome("success", {
        "symbols": len(symbols), "fitted": len(fitted), "skipped": fit.skipped,
        "factor_unavailable": sorted(all_unavailable), "vif": fit.vif,
        "capped": sorted({f"{e.symbol}:{e.factor}" for e in fit.estimates if e.capped}),
        "window_days": fit.window_days, "rows_written": len(rows),
    })


# --- global: factor covariance and correlations (SPEC §6.5, §6.6) ------------------------------


@dataclass(frozen=True)
class FactorCovariance:
    covariance: pd.DataFrame | None  # factor × factor, daily returns; None when too little data
    observations: int
    unavailable: dict[str, str]


def run_factor_correlations(ctx: DateContext) -> JobOutcome:
    """EWMA (λ = 0.94) covariance of the factor returns over 252 sessions; correlations stored
    once per as-of date, each unordered pair (and the diagonal) once, in factor order."""
    s = ctx.session
    proxies = repository.factor_proxies(s)
    proxy_symbols = [p for p in proxies.values() if p]
    closes = repository.session_closes(s, proxy_symbols, ctx.as_of, factors.COVARIANCE_WINDOW + 1)
    factor_frame, unavailable = factors.factor_returns(factors.simple_returns(closes), proxies)
    s.execute(delete(FactorCorrelation).where(FactorCorrelation.as_of_date == ctx.as_of))
    if factor_frame.shape[1] == 0 or factor_frame.dropna().shape[0] < 2:
        ctx.outputs["factor_correlations"] = FactorCovariance(None, 0, unavailable)
        return JobOutcome("skipped", {"reason": "insufficient_history", "factor_unavailable": unavailable})
    cov, observations = factors.ewma_covariance(factor_frame)
    correlation = factors.correlation_from_covariance(cov)
    names = list(cov.index)
    rows = [{"as_of_date": ctx.as_of, "factor_1": a, "factor_2": b,
             "correlation": float(correlation.loc[a, b]), "observations": observations,
             "decay": factors.EWMA_LAMBDA}
            for i, a in enumerate(names) for b in names[i:]]
    s.execute(FactorCorrelation.__table__.insert(), rows)
    ctx.outputs["factor_correlations"] = FactorCovariance(cov, observations, unavailable)
    return JobOutcome("success", {"factors": names, "observations": observations,
                                  "decay": factors.EWMA_LAMBDA, "factor_unavailable": unavailable,
                                  "rows_written": len(rows)})


# --- valuation (SPEC §6.1) --------------------------------------------------------------------


def run_valuation(ctx: UnitContext) -> JobOutcome:
    stale_before = calendar.sessions_back(ctx.as_of, STALE_AFTER_SESSIONS + 1)[0]
    valuation = value_portfolio(ctx.positions, ctx.closes, ctx.as_of, ctx.portfolio.cash_balance,
                                stale_before=stale_before, risk_free_rate=ctx.settings.risk_free_rate)
    ctx.outputs["valuation"] = valuation
    return JobOutcome("success", {
        "total_value": valuation.total_value, "long_value": valuation.long_value,
        "short_value": valuation.short_value, "gross_exposure": valuation.gross_exposure,
        "net_exposure": valuation.net_exposure, "private_value": valuation.private_value,
        "cash_value": valuation.cash_value, "num_positions": valuation.num_positions,
        "skipped_positions": list(valuation.skipped),
        "positions": [
            {"position_id": str(p.position.id), "symbol": p.position.symbol,
             "market_value": p.market_value, "price": p.price,
             "price_date": p.price_date.isoformat() if p.price_date else None,
             "price_source": p.price_source, "flags": list(p.flags)}
            for p in valuation.positions
        ],
    })


# --- Greeks (SPEC §6.2) -----------------------------------------------------------------------


def run_greeks(ctx: UnitContext) -> JobOutcome:
    options = [p for p in ctx.held if p.asset_class == OPTIONS and not p.sign_error()]
    greeks = {p.id: option_greeks(p, ctx.closes, ctx.as_of, ctx.settings.risk_free_rate) for p in options}
    ctx.outputs["greeks"] = greeks
    rows = [{"position_id": g.position_id, "model_price": g.model_price,
             "underlying_price": g.underlying_price, "volatility": g.volatility, "delta": g.delta,
             "gamma": g.gamma, "theta": g.theta, "vega": g.vega, "rho": g.rho,
             "dollar_delta": g.dollar_delta, "status": g.status} for g in greeks.values()]
    ctx.replace(PositionGreeksRow, rows)
    totals = greek_totals(greeks)
    statuses = {str(pid): g.status for pid, g in greeks.items()}
    ok = sum(1 for g in greeks.values() if g.status == "ok")
    flag = "no_option_positions" if not options else ("ok" if ok == len(options) else "partial")
    market_positions = [p for p in ctx.held if p.asset_class != PRIVATE]
    # Portfolio Greeks of a book without options are a computed zero; only a book with nothing
    # market-priced has nothing to compute.
    return JobOutcome("success" if market_positions else "skipped", {
        "totals": totals, "positions": statuses, "records_stored": len(rows),
        "data_quality": _quality(flag, f"{ok} of {len(options)} option positions modelled", ok,
                                 len(options), 0),
    })


def greek_totals(greeks: dict[uuid.UUID, PositionGreeks]) -> dict[str, float]:
    """Portfolio Greeks: sums of the position-level (contracts × 100) values."""
    return {name: sum(getattr(g, name) for g in greeks.values())
            for name in ("delta", "gamma", "theta", "vega", "rho", "dollar_delta")}


# --- factor exposures (SPEC §6.3, §8) ----------------------------------------------------------


def run_factors(ctx: UnitContext) -> JobOutcome:
    valuation: Valuation = ctx.outputs["valuation"]
    greeks: dict[uuid.UUID, PositionGreeks] = ctx.outputs.get("greeks", {})
    symbol_betas: SymbolBetas = ctx.shared.outputs["symbol_betas"]
    inputs: list[ExposureInput] = []
    for priced in valuation.positions:
        pos = priced.position
        if pos.asset_class == PUBLIC and priced.market_value is not None:
            inputs.append(ExposureInput(pos.id, pos.symbol, priced.market_value))
        elif pos.asset_class == OPTIONS and pos.id in greeks and greeks[pos.id].status == "ok":
            inputs.append(ExposureInput(pos.id, pos.underlying, greeks[pos.id].dollar_delta))
    exposures = factor_exposures(inputs, symbol_betas.betas, valuation.total_value, factors.FACTOR_ORDER)
    ctx.outputs["factors"] = exposures
    total = valuation.num_positions
    position_rows = [{"position_id": e.position_id, "factor": e.factor, "beta": e.beta,
                      "exposure_dollar": e.exposure_dollar} for e in exposures.positions]
    portfolio_rows = [{"factor": e.factor, "beta": e.beta, "exposure_dollar": e.exposure_dollar}
                      for e in exposures.portfolio]
    if exposures.analyzed == 0:
        ctx.replace(PositionFactorExposure, [])
        ctx.replace(PortfolioFactorExposure, [])
        return JobOutcome("skipped", factor_skip_payload(ctx.portfolio_id, ctx.as_of, total))
    ctx.replace(PositionFactorExposure, position_rows)
    ctx.replace(PortfolioFactorExposure, portfolio_rows)
    used = {i.symbol for i in inputs if i.position_id not in exposures.skipped}
    observations = [symbol_betas.stats[s]["observations"] for s in used if s in symbol_betas.stats]
    data_days = min(observations) if observations else 0
    flag = "full_history" if data_days >= factors.BETA_WINDOW and not exposures.skipped else "limited_history"
    position_betas: dict[str, dict[str, float]] = {}
    for e in exposures.positions:
        position_betas.setdefault(str(e.position_id), {})[e.factor] = e.beta
    return JobOutcome("success", {
        "factor_betas": {e.factor: e.beta for e in exposures.portfolio},
        "position_betas": position_betas,
        "regression_stats": {s: symbol_betas.stats[s] for s in sorted(used) if s in symbol_betas.stats},
        "data_quality": _quality(
            flag, f"{exposures.analyzed} of {total} positions have factor betas", exposures.analyzed,
            total, data_days, quality_flag=flag,
            factor_unavailable=sorted(symbol_betas.unavailable),
            skipped_positions={str(k): v for k, v in exposures.skipped.items()}),
        "metadata": {"calculation_date": ctx.as_of.isoformat(),
                     "regression_window_days": factors.BETA_WINDOW, "status": "COMPLETED",
                     "portfolio_id": str(ctx.portfolio_id)},
        "storage_results": {"position_storage": {"records_stored": len(position_rows), "skipped": False},
                            "portfolio_storage": {"records_stored": len(portfolio_rows), "skipped": False}},
    })


def factor_skip_payload(portfolio_id: uuid.UUID, as_of: date, positions_total: int) -> dict[str, Any]:
    """SPEC §8: the factor-analysis result when no PUBLIC/OPTIONS position has betas."""
    return {
        "factor_betas": {}, "position_betas": {}, "regression_stats": {},
        "data_quality": {"flag": "no_public_positions", "quality_flag": "no_public_positions",
                         "message": "Portfolio contains no public positions with sufficient price history",
                         "positions_analyzed": 0, "positions_total": positions_total,
                         "positions_skipped": positions_total, "data_days": 0},
        "metadata": {"calculation_date": as_of.isoformat(), "regression_window_days": 0,
                     "status": "SKIPPED_NO_PUBLIC_POSITIONS", "portfolio_id": str(portfolio_id)},
        "storage_results": {"position_storage": {"records_stored": 0, "skipped": True},
                            "portfolio_storage": {"records_stored": 0, "skipped": True}},
    }


# --- market-risk scenarios (SPEC §6.4) --------------------------------------------------------


def run_market_risk(ctx: UnitContext) -> JobOutcome:
    exposures: Exposures = ctx.outputs["factors"]
    valuation: Valuation = ctx.outputs["valuation"]
    greeks: dict[uuid.UUID, PositionGreeks] = ctx.outputs.get("greeks", {})
    betas: SymbolBetas = ctx.shared.outputs["symbol_betas"]
    if exposures.analyzed == 0:
        ctx.replace(MarketRiskResult, [])
        return JobOutcome("skipped", {"skipped": True, "skip_reason": "no_factor_exposures",
                                      "scenarios": {}, "unavailable": {}})
    option_ids = {p.position.id for p in valuation.positions if p.position.asset_class == OPTIONS}
    stock_market = sum(e.exposure_dollar for e in exposures.positions
                       if e.factor == factors.MARKET and e.position_id not in option_ids)
    positions = {p.id: p for p in ctx.held}
    options = []
    not_revalued: dict[str, str] = {}
    for pid, g in greeks.items():
        pos = positions[pid]
        beta = betas.betas.get(pos.underlying, {}).get(factors.MARKET)
        if g.status != "ok" or beta is None:
            not_revalued[str(pid)] = g.status if g.status != "ok" else "no_underlying_beta"
            continue
        options.append(OptionRevaluation(pid, pos.quantity, g.underlying_price, pos.strike_price, g.years,
                                         ctx.settings.risk_free_rate, g.volatility,
                                         "C" if pos.position_type in ("LC", "SC") else "P", beta))
    rate_exposure = exposures.by_factor().get(factors.RATES)
    scenarios, unavailable = market_risk(stock_market, options, rate_exposure, valuation.total_value)
    ctx.replace(MarketRiskResult, [{"scenario": r.scenario, "shock": r.shock, "pnl": r.pnl,
                                    "pnl_pct": r.pnl_pct} for r in scenarios])
    return JobOutcome("success", {
        "skipped": False, "skip_reason": None,
        "scenarios": {r.scenario: {"shock": r.shock, "pnl": r.pnl, "pnl_pct": r.pnl_pct} for r in scenarios},
        "unavailable": unavailable, "options_revalued": len(options), "options_not_revalued": not_revalued,
        "duration_years": DEFAULT_DURATION,
    })


# --- stress tests (SPEC §6.5, §8) -------------------------------------------------------------


def run_stress_tests(ctx: UnitContext) -> JobOutcome:
    exposures: Exposures = ctx.outputs["factors"]
    valuation: Valuation = ctx.outputs["valuation"]
    covariance: FactorCovariance = ctx.shared.outputs["factor_correlations"]
    base = {"portfolio_id": str(ctx.portfolio_id), "calculation_date": ctx.as_of.isoformat()}
    info = {"factors": [] if covariance.covariance is None else list(covariance.covariance.index),
            "observations": covariance.observations, "decay": factors.EWMA_LAMBDA,
            "method": "conditional_expectation"}
    if exposures.analyzed == 0:
        ctx.replace(StressTestResult, [])
        return JobOutcome("skipped", {
            "stress_test_results": {"direct_impacts": {}, "correlated_impacts": {}, "summary_stats": {},
                                    **base, "skipped": True, "skip_reason": "no_factor_exposures"},
            "portfolio_name": ctx.portfolio.name, "correlation_matrix_info": info,
            "data_quality": _quality("no_public_positions", "Portfolio has no factor exposures", 0,
                                     valuation.num_positions, 0)})
    scenarios = repository.active_stress_scenarios(ctx.session)
    available = info["factors"]
    results = [stress_test(sid, shocks, exposures.by_factor(), available, covariance.covariance,
                           valuation.total_value) for sid, shocks in scenarios]
    ctx.replace(StressTestResult, [
        {"scenario_id": r.scenario_id, "direct_pnl": r.direct_pnl, "correlated_pnl": r.correlated_pnl,
         "correlation_effect": r.correlation_effect, "pnl_pct": r.pnl_pct,
         "exceeds_equity": r.exceeds_equity, "factor_impacts": r.factor_impacts} for r in results])
    return JobOutcome("success", {
        "stress_test_results": {
            "direct_impacts": {r.scenario_id: r.direct_pnl for r in results},
            "correlated_impacts": {r.scenario_id: {"correlated_pnl": r.correlated_pnl,
                                                   "correlation_effect": r.correlation_effect,
                                                   "pnl_pct": r.pnl_pct, "exceeds_equity": r.exceeds_equity,
                                                   "factor_impacts": r.factor_impacts} for r in results},
            "summary_stats": stress_summary(results), **base, "skipped": False, "skip_reason": None},
        "portfolio_name": ctx.portfolio.name, "correlation_matrix_info": info,
        "data_quality": _quality("full_history" if covariance.covariance is not None else "factor_unavailable",
                                 f"{len(results)} scenarios", exposures.analyzed, valuation.num_positions,
                                 covariance.observations)})


# --- correlations (SPEC §6.6, §8) --------------------------------------------------------------


def run_correlations(ctx: UnitContext) -> JobOutcome:
    valuation: Valuation = ctx.outputs["valuation"]
    greeks: dict[uuid.UUID, PositionGreeks] = ctx.outputs.get("greeks", {})
    values: dict[str, float] = {}
    for priced in valuation.positions:
        pos = priced.position
        if pos.asset_class == PUBLIC and priced.market_value is not None:
            values[pos.symbol] = values.get(pos.symbol, 0.0) + priced.market_value
        elif pos.asset_class == OPTIONS and pos.id in greeks and greeks[pos.id].status == "ok":
            values[pos.underlying] = values.get(pos.underlying, 0.0) + greeks[pos.id].dollar_delta
    kept, excluded = corr.eligible_exposures(values, valuation.gross_exposure)
    result = None
    if len(kept) >= 2:
        closes = ctx.closes.reindex(columns=sorted(kept)).iloc[-(corr.CORRELATION_WINDOW + 1):]
        result = corr.correlate(kept, corr.log_returns(closes), excluded=excluded)
    total = valuation.num_positions
    private = sum(1 for p in valuation.positions if p.position.asset_class == PRIVATE)
    for table in (CorrelationRun, PairwiseCorrelation, CorrelationCluster):
        ctx.replace(table, [])
    if result is None:
        return JobOutcome("skipped", {
            "status": "SKIPPED", "message": "No public positions with sufficient data",
            "correlation_matrix": {}, "clusters": [],
            "metrics": {"avg_correlation": 0.0, "positions_analyzed": 0},
            "calculation_date": ctx.as_of.isoformat(), "duration_days": corr.CORRELATION_WINDOW,
            "data_quality": _quality("no_public_positions", "No public positions with sufficient data",
                                     0, total, 0, excluded=excluded, private_positions=private)})
    ctx.replace(CorrelationRun, [{
        "window_days": corr.CORRELATION_WINDOW, "avg_abs_correlation": result.avg_abs_correlation,
        "weighted_correlation": result.weighted_correlation,
        "effective_positions": result.effective_positions, "positions_included": result.positions_included,
        "positions_excluded": result.positions_excluded, "status": "success"}])
    symbols = result.symbols
    pairs = []
    for i, a in enumerate(symbols):
        for b in symbols[i + 1:]:
            rho = result.matrix.loc[a, b]
            pairs.append({"symbol_1": a, "symbol_2": b, "correlation": None if pd.isna(rho) else float(rho),
                          "observations": int(result.observations.loc[a, b])})
    ctx.replace(PairwiseCorrelation, pairs)
    ctx.replace(CorrelationCluster, [{"cluster_number": c.number, "symbols": c.symbols,
                                      "avg_correlation": c.avg_correlation, "weight": c.weight}
                                     for c in result.clusters])
    matrix = {a: {b: (None if pd.isna(result.matrix.loc[a, b]) else float(result.matrix.loc[a, b]))
                  for b in symbols} for a in symbols}
    return JobOutcome("success", {
        "status": "SUCCESS", "message": f"{len(symbols)} positions correlated",
        "correlation_matrix": matrix,
        "clusters": [{"number": c.number, "symbols": c.symbols, "avg_correlation": c.avg_correlation,
                      "weight": c.weight} for c in result.clusters],
        "metrics": {"avg_correlation": result.avg_abs_correlation,
                    "weighted_correlation": result.weighted_correlation,
                    "effective_positions": result.effective_positions,
                    "positions_analyzed": result.positions_included},
        "calculation_date": ctx.as_of.isoformat(), "duration_days": corr.CORRELATION_WINDOW,
        "data_quality": _quality("full_history", f"{len(symbols)} symbols, {len(pairs)} pairs",
                                 result.positions_included, total, int(result.observations.min().min()),
                                 excluded=result.excluded)})


# --- snapshot (SPEC §6.7) ---------------------------------------------------------------------


def run_snapshot(ctx: UnitContext) -> JobOutcome:
    valuation: Valuation = ctx.outputs["valuation"]
    pnl = daily_pnl(ctx.positions, ctx.closes, ctx.as_of, ctx.previous_session,
                    risk_free_rate=ctx.settings.risk_free_rate)
    prior = repository.prior_snapshot(ctx.session, ctx.portfolio_id, ctx.as_of)
    row = build_snapshot(valuation, pnl, ctx.previous_session, prior)
    totals = greek_totals(ctx.outputs.get("greeks", {}))
    exposures: Exposures | None = ctx.outputs.get("factors")
    market = next((e for e in exposures.portfolio if e.factor == factors.MARKET), None) if exposures else None
    row.update(portfolio_delta=totals["delta"], portfolio_gamma=totals["gamma"],
               portfolio_theta=totals["theta"], portfolio_vega=totals["vega"],
               market_beta=market.beta if market else None)
    row.pop("snapshot_date")
    ctx.replace(PortfolioSnapshot, [row], date_column="snapshot_date")
    return JobOutcome("success", {
        "total_value": row["total_value"], "daily_pnl": row["daily_pnl"],
        "daily_return": row["daily_return"], "cumulative_pnl": row["cumulative_pnl"],
        "market_beta": row["market_beta"], "greeks": totals, "data_quality": row["data_quality"],
    })


register(GlobalEngine("symbol_betas", run_symbol_betas))
register(GlobalEngine("factor_correlations", run_factor_correlations))
register(Engine("valuation", run_valuation))
register(Engine("greeks", run_greeks, depends_on=("valuation",)))
register(Engine("factors", run_factors, depends_on=("valuation", "greeks", "symbol_betas")))
register(Engine("market_risk", run_market_risk, depends_on=("factors", "greeks")))
register(Engine("stress_tests", run_stress_tests, depends_on=("factors", "factor_correlations")))
register(Engine("correlations", run_correlations, depends_on=("valuation", "greeks")))
register(Engine("snapshot", run_snapshot, depends_on=("valuation", "greeks")))
