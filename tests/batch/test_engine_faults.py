"""Regression tests for engine defects found in review: odd option data, failing or partial
global inputs, non-finite numbers, stale rows, marks off the session calendar (SPEC §6–§8)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from batch import calendar
from batch import runner as runner_module
from batch.db import upsert
from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, demo_id
from batch.engines import GlobalEngine
from models import (
    BatchJobResult,
    FactorCorrelation,
    FactorDefinition,
    MarketPrice,
    MarketRiskResult,
    Portfolio,
    PortfolioSnapshot,
    Position,
    StressTestResult,
    SymbolFactorBeta,
)

AS_OF = "2022-12-28"
NOW = datetime(2022, 12, 28, 23, 30, tzinfo=UTC)


@pytest.fixture
def run(seeded):
    return seeded


def jobs(engine, portfolio_id, run_id=None) -> dict[str, BatchJobResult]:
    with Session(engine) as s:
        query = select(BatchJobResult).where(BatchJobResult.portfolio_id == portfolio_id)
        if run_id:
            query = query.where(BatchJobResult.run_id == uuid.UUID(run_id))
        return {j.job: j for j in s.scalars(query)}


def test_option_without_strike_or_expiry_columns_uses_its_occ_symbol(run, engine):
    hf = demo_id("portfolio", HEDGE_FUND)
    assert run("--date", AS_OF)[0] == 0
    with Session(engine) as s:
        before = {r.scenario: r.pnl for r in s.scalars(select(MarketRiskResult).where(MarketRiskResult.portfolio_id == hf))}
    with Session(engine) as s, s.begin():
        s.execute(update(Position).where(Position.portfolio_id == hf, Position.investment_class == "OPTIONS")
                  .values(strike_price=None, expiration_date=None))
    code, summary, *_ = run("--date", AS_OF, "--force", "--skip-sync", "--json")
    assert code == 0, summary["failed_portfolios"]
    with Session(engine) as s:
        after = {r.scenario: r.pnl for r in s.scalars(select(MarketRiskResult).where(MarketRiskResult.portfolio_id == hf))}
    assert after == pytest.approx(before, rel=1e-12)


def test_failed_global_engine_fails_the_date_and_the_next_run_recomputes_it(run, engine, monkeypatch):
    def broken(ctx):
        raise RuntimeError("injected global failure")

    registry = [GlobalEngine("symbol_betas", broken)] + [e for e in runner_module.GLOBAL_ENGINES
                                                         if e.name != "symbol_betas"]
    monkeypatch.setattr(runner_module, "GLOBAL_ENGINES", registry)
    code, summary, *_ = run("--date", AS_OF, "--json")
    assert code == 1 and summary["status"] == "failed"
    assert summary["portfolios"]["succeeded"] == 0 and summary["portfolios"]["failed"] == 4
    with Session(engine) as s:
        assert s.scalars(select(PortfolioSnapshot)).first() is None  # not marked complete
    factors_job = jobs(engine, demo_id("portfolio", INDIVIDUAL))["factors"]
    assert factors_job.status == "skipped" and "upstream_failed: symbol_betas" in factors_job.error
    assert factors_job.result["data_quality"]["flag"] == "upstream_failed"
    monkeypatch.undo()
    monkeypatch.setenv("DATABASE_URL", str(engine.url.render_as_string(hide_password=False)))
    code, summary, *_ = run("--date", AS_OF, "--json")
    assert code == 0 and summary["portfolios"]["succeeded"] == 4


def test_a_short_factor_history_does_not_zero_the_other_factors(run, engine):
    assert run("--date", AS_OF)[0] == 0
    with Session(engine) as s:
        before = {(r.portfolio_id, r.scenario_id): r.direct_pnl for r in s.scalars(select(StressTestResult))}
    with Session(engine) as s, s.begin():  # two closes of the rate proxy: far too few
        upsert(s, MarketPrice, [{"symbol": "TLT", "date": d, "close": c, "source": "test", "updated_at": NOW}
                                for d, c in ((date(2022, 12, 27), 100.0), (date(2022, 12, 28), 101.0))],
               key=("symbol", "date"))
    code, *_ = run("--date", AS_OF, "--force", "--skip-sync", "--json")
    assert code == 0
    with Session(engine) as s:
        after = {(r.portfolio_id, r.scenario_id): r.direct_pnl for r in s.scalars(select(StressTestResult))}
        factor_names = set(s.scalars(select(FactorCorrelation.factor_1)))
        job = s.scalars(select(BatchJobResult).where(BatchJobResult.job == "factor_correlations")
                        .order_by(BatchJobResult.id.desc())).first()
    assert after == pytest.approx(before, rel=1e-12)
    assert "Market" in factor_names and "Interest Rate" not in factor_names
    assert job.status == "success" and job.result["factor_unavailable"]["Interest Rate"] == "insufficient_history"


def test_constant_price_symbol_stores_no_non_finite_numbers(run, engine):
    pid = uuid.UUID(int=501)
    days = calendar.sessions_back(date(2022, 12, 28), 300)
    with Session(engine) as s, s.begin():
        s.add(Portfolio(id=pid, name="Flat", cash_balance=0.0, currency="USD"))
        s.flush()
        s.add(Position(id=uuid.UUID(int=502), portfolio_id=pid, symbol="FLAT", position_type="LONG",
                       quantity=1000.0, entry_price=10.0, entry_date=days[0], investment_class="PUBLIC"))
        upsert(s, MarketPrice, [{"symbol": "FLAT", "date": d, "close": 10.0, "source": "test", "updated_at": NOW}
                                for d in days], key=("symbol", "date"))
    assert run("--date", AS_OF)[0] == 0
    with Session(engine) as s:
        rows = s.scalars(select(SymbolFactorBeta).where(SymbolFactorBeta.symbol == "FLAT")).all()
    numbers = [v for r in rows for v in (r.beta, r.std_error, r.t_stat, r.r_squared) if v is not None]
    assert rows and all(math.isfinite(v) for v in numbers)


def test_two_factors_on_one_proxy_do_not_crash_the_run(run, engine):
    with Session(engine) as s, s.begin():
        s.execute(update(FactorDefinition).where(FactorDefinition.name == "Value").values(proxy_symbol="^GSPC"))
    code, summary, *_ = run("--date", AS_OF, "--json")
    assert code == 0, summary["failed_portfolios"]
    with Session(engine) as s:
        job = s.scalars(select(BatchJobResult).where(BatchJobResult.job == "symbol_betas")).one()
    assert job.result["factor_unavailable"]["Value"] == "zero_variance"


def test_exited_symbol_leaves_no_stale_betas(run, engine):
    assert run("--date", AS_OF)[0] == 0
    with Session(engine) as s, s.begin():
        s.execute(update(Position).where(Position.symbol == "RRC").values(exit_date=date(2022, 12, 28)))
    assert run("--date", AS_OF, "--force", "--skip-sync")[0] == 0
    with Session(engine) as s:
        assert s.scalars(select(SymbolFactorBeta).where(SymbolFactorBeta.symbol == "RRC")).first() is None


def test_private_mark_dated_on_a_weekend_is_used(run, engine):
    with Session(engine) as s, s.begin():
        upsert(s, MarketPrice, [{"symbol": "BX_PRIVATE_EQUITY", "date": date(2022, 12, 24), "close": 300_000.0,
                                 "source": "mark", "updated_at": NOW}], key=("symbol", "date"))
    assert run("--date", AS_OF)[0] == 0
    with Session(engine) as s:
        snap = s.scalars(select(PortfolioSnapshot).where(PortfolioSnapshot.portfolio_id == demo_id("portfolio", HNW))).one()
    entry_total = 285_000 + 142_500 * 5 + 285_000 + 42_750 + 28_500 + 57_000 + 28_500
    assert snap.private_value == pytest.approx(entry_total - 285_000 + 300_000)


def test_records_of_engines_that_did_not_run_keep_each_engines_keys(run, engine):
    code, first, *_ = run("--date", AS_OF, "--json")
    code, second, *_ = run("--date", AS_OF, "--json")  # complete: every engine recorded skipped
    pid = demo_id("portfolio", HEDGE_FUND)
    computed, skipped = jobs(engine, pid, first["run_id"]), jobs(engine, pid, second["run_id"])
    assert set(computed) == set(skipped)
    for job in computed:
        assert set(skipped[job].result) == set(computed[job].result), job
        assert skipped[job].result["data_quality"]["flag"] == "already_complete"
