"""The analytics engines end to end through the CLI, on SQLite and PostgreSQL (SPEC §6, §7, §8)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from batch import calendar
from batch.db import upsert
from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, PRIVATE_ONLY, PRIVATES, demo_id
from models import (
    BatchJobResult,
    CorrelationCluster,
    CorrelationMatrix,
    CorrelationRun,
    MarketPrice,
    MarketRiskResult,
    PairwiseCorrelation,
    Portfolio,
    PortfolioFactorExposure,
    PortfolioSnapshot,
    Position,
    PositionFactorExposure,
    PositionGreeks,
    StressTestResult,
    SymbolFactorBeta,
)
from tests.conftest import dump_results

AS_OF = date(2022, 12, 28)
PORTFOLIO_TABLES = (PositionFactorExposure, PortfolioFactorExposure, PositionGreeks, MarketRiskResult,
                    StressTestResult, CorrelationRun, CorrelationMatrix, PairwiseCorrelation, CorrelationCluster)
PORTFOLIO_JOBS = ("valuation", "greeks", "factors", "market_risk", "stress_tests", "correlations", "snapshot")
ANALYTIC_JOBS = ("factors", "market_risk", "stress_tests", "correlations")


@pytest.fixture
def cli_env(seeded):
    return seeded




def jobs_for(engine, portfolio_id) -> dict[str, BatchJobResult]:
    with Session(engine) as s:
        return {j.job: j for j in s.scalars(select(BatchJobResult).where(BatchJobResult.portfolio_id == portfolio_id))}


def test_demo_run_writes_every_engine_and_skips_only_the_private_book(cli_env, engine):
    code, summary, *_ = cli_env("--date", "2022-12-28", "--json")
    assert code == 0 and summary["portfolios"] == {"succeeded": 4, "failed": 0, "skipped": 0}
    with Session(engine) as s:
        globals_ = {j.job: j.status for j in s.scalars(select(BatchJobResult).where(BatchJobResult.portfolio_id.is_(None)))}
    assert globals_ == {"market_data": "success", "company_profiles": "success", "symbol_betas": "success",
                        "factor_correlations": "success"}
    for key in (INDIVIDUAL, HNW, HEDGE_FUND):
        pid = demo_id("portfolio", key)
        assert {j: r.status for j, r in jobs_for(engine, pid).items()} == {j: "success" for j in PORTFOLIO_JOBS}
        with Session(engine) as s:
            for model in (PortfolioFactorExposure, MarketRiskResult, StressTestResult, CorrelationRun):
                assert s.scalars(select(model).where(model.portfolio_id == pid)).first() is not None, model
    private = demo_id("portfolio", PRIVATE_ONLY)
    statuses = {j: r.status for j, r in jobs_for(engine, private).items()}
    assert statuses == {"valuation": "success", "greeks": "skipped", "factors": "skipped",
                        "market_risk": "skipped", "stress_tests": "skipped", "correlations": "skipped",
                        "snapshot": "success"}
    with Session(engine) as s:
        for model in PORTFOLIO_TABLES:
            assert s.scalars(select(model).where(model.portfolio_id == private)).first() is None, model
        hf = s.scalars(select(PortfolioSnapshot).where(PortfolioSnapshot.portfolio_id == demo_id("portfolio", HEDGE_FUND))).one()
        greeks = s.scalars(select(PositionGreeks).where(PositionGreeks.portfolio_id == demo_id("portfolio", HEDGE_FUND))).all()
        stress = s.scalars(select(StressTestResult)).all()
    assert len(greeks) == 8 and {g.status for g in greeks} == {"ok"}
    assert hf.portfolio_delta == pytest.approx(sum(g.delta for g in greeks))
    assert hf.portfolio_vega == pytest.approx(sum(g.vega for g in greeks))
    assert hf.market_beta is not None and 0 < hf.market_beta < 2
    assert len(stress) == 3 * 18


def test_skip_payloads_follow_the_contract_and_write_nothing(cli_env, engine):
    """Private-only demo book, and a book whose only PUBLIC position has 10 sessions of prices."""
    thin = uuid.UUID(int=77)
    days = calendar.sessions_back(AS_OF, 10)
    now = datetime(2022, 12, 28, 23, 30, tzinfo=UTC)
    with Session(engine) as s, s.begin():
        s.add(Portfolio(id=thin, name="Thin history", cash_balance=1000.0, currency="USD"))
        s.flush()
        s.add(Position(id=uuid.UUID(int=78), portfolio_id=thin, symbol="NEWCO", position_type="LONG",
                       quantity=1000.0, entry_price=50.0, entry_date=days[0], investment_class="PUBLIC"))
        upsert(s, MarketPrice, [{"symbol": "NEWCO", "date": d, "close": 50.0 + i, "source": "test",
                                 "updated_at": now} for i, d in enumerate(days)], key=("symbol", "date"))
    code, summary, *_ = cli_env("--date", "2022-12-28", "--json")
    assert code == 0
    assert "NEWCO" in summary["market_data"]["failed_symbols"]  # the sample provider does not know it
    for pid, total in ((demo_id("portfolio", PRIVATE_ONLY), len(PRIVATES[PRIVATE_ONLY])), (thin, 1)):
        jobs = jobs_for(engine, pid)
        assert {j: jobs[j].status for j in ANALYTIC_JOBS} == {j: "skipped" for j in ANALYTIC_JOBS}
        assert jobs["factors"].result == {
            "factor_betas": {}, "position_betas": {}, "regression_stats": {},
            "data_quality": {"flag": "no_public_positions", "quality_flag": "no_public_positions",
                             "message": "Portfolio contains no public positions with sufficient price history",
                             "positions_analyzed": 0, "positions_total": total, "positions_skipped": total,
                             "data_days": 0},
            "metadata": {"calculation_date": "2022-12-28", "regression_window_days": 0,
                         "status": "SKIPPED_NO_PUBLIC_POSITIONS", "portfolio_id": str(pid)},
            "storage_results": {"position_storage": {"records_stored": 0, "skipped": True},
                                "portfolio_storage": {"records_stored": 0, "skipped": True}},
        }
        corr = jobs["correlations"].result
        assert set(corr) == {"status", "message", "correlation_matrix", "clusters", "metrics",
                             "calculation_date", "duration_days", "data_quality"}
        assert (corr["status"], corr["message"], corr["correlation_matrix"], corr["clusters"], corr["metrics"]) == \
            ("SKIPPED", "No public positions with sufficient data", {}, [],
             {"avg_correlation": 0.0, "positions_analyzed": 0})
        stress = jobs["stress_tests"].result
        assert set(stress) == {"stress_test_results", "portfolio_name", "correlation_matrix_info", "data_quality"}
        inner = stress["stress_test_results"]
        assert set(inner) == {"direct_impacts", "correlated_impacts", "summary_stats", "portfolio_id",
                              "calculation_date", "skipped", "skip_reason"}
        assert (inner["skipped"], inner["skip_reason"], inner["direct_impacts"], inner["correlated_impacts"]) == \
            (True, "no_factor_exposures", {}, {})
        with Session(engine) as s:
            for model in PORTFOLIO_TABLES:
                assert s.scalars(select(model).where(model.portfolio_id == pid)).first() is None, model
            assert s.scalars(select(PortfolioSnapshot).where(PortfolioSnapshot.portfolio_id == pid)).one()


def test_success_and_skip_factor_results_share_keys(cli_env, engine):
    cli_env("--date", "2022-12-28")
    ok = jobs_for(engine, demo_id("portfolio", INDIVIDUAL))["factors"].result
    skipped = jobs_for(engine, demo_id("portfolio", PRIVATE_ONLY))["factors"].result
    assert set(ok) == set(skipped)
    assert set(skipped["data_quality"]) <= set(ok["data_quality"])


def test_hnw_factor_result_counts_its_private_positions_as_skipped(cli_env, engine):
    cli_env("--date", "2022-12-28")
    quality = jobs_for(engine, demo_id("portfolio", HNW))["factors"].result["data_quality"]
    assert quality["positions_total"] == 18 + 11
    assert quality["positions_skipped"] == 11
    assert quality["positions_analyzed"] == 18


def test_stored_betas_match_an_independent_least_squares(cli_env, engine):
    """SPEC §6.3 model rebuilt from market_prices with numpy: r_i on [1, M, V−M, Mo−M, Q−M, S−M, LV−M]."""
    cli_env("--date", "2022-12-28")
    proxies = {"Market": "^GSPC", "Value": "VLUE", "Momentum": "MTUM", "Quality": "QUAL", "Size": "SIZE",
               "Low Volatility": "USMV"}
    sessions = calendar.sessions_back(AS_OF, 91)
    with Session(engine) as s:
        rows = s.execute(select(MarketPrice.date, MarketPrice.symbol, MarketPrice.close).where(
            MarketPrice.date >= sessions[0], MarketPrice.date <= AS_OF)).all()
        stored = s.execute(select(SymbolFactorBeta.symbol, SymbolFactorBeta.factor, SymbolFactorBeta.beta,
                                  SymbolFactorBeta.observations).where(
            SymbolFactorBeta.as_of_date == AS_OF, SymbolFactorBeta.beta.is_not(None))).all()
    closes = pd.DataFrame(rows, columns=["date", "symbol", "close"]).pivot(index="date", columns="symbol",
                                                                           values="close").reindex(sessions)
    returns = (closes / closes.shift(1) - 1).iloc[1:]
    market = returns[proxies["Market"]].to_numpy()
    styles = [returns[proxies[f]].to_numpy() - market for f in ("Value", "Momentum", "Quality", "Size",
                                                                "Low Volatility")]
    design = np.column_stack([np.ones(90), market, *styles])
    names = ["Market", "Value", "Momentum", "Quality", "Size", "Low Volatility"]
    by_symbol: dict[str, dict[str, float]] = {}
    for symbol, factor, beta, obs in stored:
        assert obs == 90
        by_symbol.setdefault(symbol, {})[factor] = beta
    assert {"AAPL", "XOM", "MSFT", "JPM"} <= set(by_symbol)
    for symbol, betas in by_symbol.items():
        coef, *_ = np.linalg.lstsq(design, returns[symbol].to_numpy(), rcond=None)
        expected = {n: float(np.clip(c, -5, 5)) for n, c in zip(names, coef[1:], strict=True)}
        assert betas == pytest.approx(expected, abs=1e-6), symbol


def test_no_look_ahead_later_prices_do_not_change_results(cli_env, engine):
    day = date(2022, 12, 27)
    assert cli_env("--date", "2022-12-27")[0] == 0
    before = dump_results(engine)
    later = [date(2022, 12, 28), date(2022, 12, 29), date(2022, 12, 30)]
    now = datetime(2023, 1, 1, tzinfo=UTC)
    with Session(engine) as s, s.begin():
        symbols = list(s.scalars(select(MarketPrice.symbol).distinct()))
        upsert(s, MarketPrice, [{"symbol": sym, "date": d, "close": 1000.0 + i, "source": "test",
                                 "updated_at": now} for sym in symbols for i, d in enumerate(later)],
               key=("symbol", "date"))
    assert cli_env("--date", day.isoformat(), "--force", "--skip-sync")[0] == 0
    assert dump_results(engine) == before


def test_rerun_with_force_changes_no_result_row(cli_env, engine):
    assert cli_env("--date", "2022-12-28")[0] == 0
    first = dump_results(engine)
    assert cli_env("--date", "2022-12-28", "--force")[0] == 0
    assert dump_results(engine) == first


def test_portfolio_filter_changes_only_that_portfolios_rows(cli_env, engine):
    assert cli_env("--date", "2022-12-28")[0] == 0
    target = demo_id("portfolio", INDIVIDUAL)
    with Session(engine) as s, s.begin():  # close one position: a forced re-run must drop its rows
        pos = s.scalars(select(Position).where(Position.portfolio_id == target, Position.symbol == "KO")).one()
        pos.exit_date = date(2022, 12, 1)
        ko = pos.id
    before = dump_results(engine, PORTFOLIO_TABLES + (PortfolioSnapshot,))
    assert cli_env("--date", "2022-12-28", "--force", "--portfolio", str(target))[0] == 0
    after = dump_results(engine, PORTFOLIO_TABLES + (PortfolioSnapshot,))
    with Session(engine) as s:
        assert s.scalars(select(PositionFactorExposure).where(PositionFactorExposure.position_id == ko)).first() is None
    marker = json.dumps(str(target))  # every portfolio table carries portfolio_id
    for table in before:
        assert [r for r in after[table] if marker not in r] == [r for r in before[table] if marker not in r], table
    assert after != before


def test_factor_proxies_fitted_on_their_own_factor_store_no_statistics(cli_env, engine):
    """SPEC §6.3: a proxy's return is its factor's (Market + excess) exactly: its joint fit is an
    exact fit — betas kept (1 on Market and its own factor), NULL std_error/t_stat, exact_fit."""
    own = {"VLUE": "Value", "MTUM": "Momentum", "QUAL": "Quality", "SIZE": "Size", "USMV": "Low Volatility"}
    cli_env("--date", "2022-12-28")
    with Session(engine) as s:
        rows = s.execute(select(SymbolFactorBeta).where(SymbolFactorBeta.as_of_date == AS_OF,
                                                        SymbolFactorBeta.beta.is_not(None))).scalars().all()
        result = s.scalars(select(BatchJobResult.result).where(BatchJobResult.job == "symbol_betas")).one()
    for r in rows:
        if r.symbol in own:
            expected = 1.0 if r.factor in ("Market", own[r.symbol]) else 0.0
            assert r.beta == pytest.approx(expected, abs=1e-9), (r.symbol, r.factor)
            assert (r.std_error, r.t_stat, r.quality_flag) == (None, None, "exact_fit"), (r.symbol, r.factor)
            assert r.r_squared == pytest.approx(1.0, abs=1e-12)
        else:  # the stocks: ordinary fits, with finite statistics of a sane size
            assert r.quality_flag == "full_history", (r.symbol, r.factor)
            assert r.std_error > 0 and abs(r.t_stat) < 1e3, (r.symbol, r.factor)
    assert {r.symbol for r in rows} >= set(own) | {"AAPL", "XOM"}
    assert result["degenerate"] == {"exact_fit": sorted(own), "zero_variance": []}


def test_correlation_counts_options_merged_into_their_underlying(cli_env, engine):
    """SPEC §6.6: the hedge-fund book's 8 options are merged into their underlyings' rows, so all
    30 positions are used: 22 stocks analysed + 8 options merged, none skipped."""
    cli_env("--date", "2022-12-28")
    book = demo_id("portfolio", HEDGE_FUND)
    with Session(engine) as s:
        held = s.execute(select(Position.investment_class, Position.underlying_symbol).where(
            Position.portfolio_id == book)).all()
        pairs = s.execute(select(PairwiseCorrelation.symbol_1, PairwiseCorrelation.symbol_2).where(
            PairwiseCorrelation.portfolio_id == book, PairwiseCorrelation.as_of_date == AS_OF)).all()
    quality = jobs_for(engine, book)["correlations"].result["data_quality"]
    matrix = {sym for pair in pairs for sym in pair}  # the symbols of the stored matrix
    assert sum(1 for cls, _ in held if cls == "PUBLIC") == 22
    assert {u for cls, u in held if cls == "OPTIONS"} <= matrix  # every underlying has a row
    assert (quality["positions_total"], quality["positions_analyzed"], quality.get("positions_merged"),
            quality["positions_skipped"], quality["excluded"]) == (30, 22, 8, 0, {})
    hnw = jobs_for(engine, demo_id("portfolio", HNW))["correlations"].result["data_quality"]
    assert (hnw["positions_total"], hnw["positions_analyzed"], hnw.get("positions_merged"),
            hnw["positions_skipped"]) == (29, 18, 0, 11)  # the 11 PRIVATE assets never enter
