"""The run loop through the command line, on SQLite and PostgreSQL (SPEC §2, §7)."""

from __future__ import annotations

import json
import uuid
from datetime import date

import pandas as pd
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.conftest import each_unit
from batch import db
from batch import engines as engines_module
from batch import runner as runner_module
from batch.demo import HEDGE_FUND, INDIVIDUAL, PRIVATE_ONLY, PRIVATES, demo_id
from batch.engines import Engine, JobOutcome
from models import BatchJobResult, BatchRun, MarketPrice, PortfolioSnapshot

AS_OF = "2022-12-28"


def snapshot_rows(engine) -> list[tuple]:
    with Session(engine) as s:
        rows = s.execute(select(PortfolioSnapshot).order_by(
            PortfolioSnapshot.portfolio_id, PortfolioSnapshot.snapshot_date)).scalars().all()
        return [tuple(getattr(r, c.name) for c in PortfolioSnapshot.__table__.columns if c.name != "id")
                for r in rows]


def count(engine, model) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(model))


def test_demo_run_writes_a_snapshot_for_every_demo_portfolio(seeded, engine):
    code, summary, _, err = seeded("--date", AS_OF, "--json")
    assert code == 0, err
    assert summary["status"] == "success" and summary["exit_code"] == 0
    assert summary["portfolios"] == {"succeeded": 4, "failed": 0, "skipped": 0}
    assert summary["as_of_dates"] == [AS_OF]
    with Session(engine) as s:
        dated = s.execute(select(PortfolioSnapshot.portfolio_id, PortfolioSnapshot.snapshot_date)).all()
    assert len(dated) == 4 and {d for _, d in dated} == {date(2022, 12, 28)}
    # The sample has no Growth/Interest Rate proxies: reported, not hidden.
    assert summary["market_data"]["failed_symbols"] == ["TLT", "VUG"]


def test_non_session_without_force_is_skipped_and_writes_nothing(seeded, engine):
    code, summary, _, _ = seeded("--date", "2022-12-24", "--json")  # a Saturday
    assert code == 0
    assert summary["status"] == "skipped" and summary["reason"] == "not_a_trading_day"
    assert count(engine, PortfolioSnapshot) == 0
    assert count(engine, MarketPrice) == 0
    assert count(engine, BatchJobResult) == 0
    with Session(engine) as s:
        run = s.scalars(select(BatchRun)).one()
    assert run.status == "skipped" and run.exit_code == 0


def test_force_on_a_weekend_computes_the_previous_session(seeded, engine):
    code, summary, _, err = seeded("--date", "2022-12-24", "--force", "--json")
    assert code == 0, err
    assert summary["as_of_dates"] == ["2022-12-23"]
    with Session(engine) as s:
        dates = set(s.scalars(select(PortfolioSnapshot.snapshot_date)))
    assert dates == {date(2022, 12, 23)}


@pytest.mark.parametrize("bad", ["2022-13-01", "yesterday", "2022-12-2", "28/12/2022"])
def test_bad_date_is_a_usage_error(seeded, engine, bad):
    code, _, _, err = seeded("--date", bad)
    assert code == 2
    assert bad in err
    assert count(engine, BatchRun) == 0


def test_unknown_portfolio_is_a_usage_error(seeded, engine):
    unknown = uuid.UUID(int=12345)
    code, _, _, err = seeded("--date", AS_OF, "--portfolio", str(unknown))
    assert code == 2
    assert str(unknown) in err
    assert count(engine, BatchRun) == 0


def test_outside_sample_coverage_stops_before_computing(seeded, engine):
    code, _, _, err = seeded("--date", "2023-01-05")
    assert code == 2
    assert "2014-01-02..2022-12-28" in err and "MARKET_DATA_PROVIDER" in err
    assert count(engine, BatchRun) == 0


def test_lock_held_exits_75_and_does_nothing(seeded, engine):
    with db.run_lock(engine):
        code, _, _, err = seeded("--date", AS_OF)
    assert code == 75
    assert count(engine, BatchRun) == 0 and count(engine, PortfolioSnapshot) == 0
    # released: the next run proceeds
    assert seeded("--date", AS_OF)[0] == 0


def test_failing_engine_rolls_back_only_that_portfolio(seeded, engine, monkeypatch):
    victim = demo_id("portfolio", HEDGE_FUND)

    def explode(unit):
        if unit.portfolio_id == victim:
            raise RuntimeError("injected failure")
        return JobOutcome("success", {})

    registry = list(engines_module.ENGINES) + [
        Engine("exploder", each_unit(explode), depends_on=("snapshot",)),
        Engine("after_exploder", each_unit(lambda unit: JobOutcome("success", {})), depends_on=("exploder",)),
    ]
    monkeypatch.setattr(runner_module, "ENGINES", registry)
    code, summary, _, _ = seeded("--date", AS_OF, "--json")
    assert code == 1
    assert summary["status"] == "partial"
    assert summary["portfolios"] == {"succeeded": 3, "failed": 1, "skipped": 0}
    assert summary["failed_portfolios"] == [{"portfolio_id": str(victim), "as_of": AS_OF,
                                             "job": "exploder", "error": "RuntimeError: injected failure"}]
    with Session(engine) as s:
        owners = set(s.scalars(select(PortfolioSnapshot.portfolio_id)))
        jobs = {r.job: r for r in s.scalars(select(BatchJobResult).where(BatchJobResult.portfolio_id == victim))}
    assert victim not in owners and len(owners) == 3  # the snapshot written before the failure rolled back
    assert jobs["exploder"].status == "failed"
    assert jobs["after_exploder"].status == "skipped" and "upstream_failed" in jobs["after_exploder"].error
    assert jobs["snapshot"].status == "skipped" and "rolled_back" in jobs["snapshot"].error


def test_same_date_twice_leaves_identical_results(seeded, engine):
    assert seeded("--date", AS_OF)[0] == 0
    first = snapshot_rows(engine)
    prices = count(engine, MarketPrice)
    code, summary, _, _ = seeded("--date", AS_OF, "--json")  # complete: skipped, nothing changes
    assert code == 0 and summary["portfolios"]["skipped"] == 4
    assert snapshot_rows(engine) == first
    code, summary, _, _ = seeded("--date", AS_OF, "--force", "--json")  # recomputed: same values
    assert code == 0 and summary["portfolios"]["succeeded"] == 4
    assert snapshot_rows(engine) == first
    assert count(engine, MarketPrice) == prices


def test_private_only_portfolio_gets_a_snapshot_at_marks(seeded, engine):
    pid = demo_id("portfolio", PRIVATE_ONLY)
    code, summary, _, _ = seeded("--date", AS_OF, "--portfolio", str(pid), "--json")
    assert code == 0 and summary["portfolios"] == {"succeeded": 1, "failed": 0, "skipped": 0}
    with Session(engine) as s:
        snap = s.scalars(select(PortfolioSnapshot)).one()
    marks = sum(value for _, value, _ in PRIVATES[PRIVATE_ONLY])  # quantity 1, entry = value
    assert snap.portfolio_id == pid
    assert snap.private_value == pytest.approx(marks)
    assert snap.total_value == pytest.approx(marks + 5_000.0)  # + demo cash
    assert snap.daily_pnl == 0.0 and snap.num_private == len(PRIVATES[PRIVATE_ONLY])
    assert snap.data_quality["flag"] == "no_public_positions"


def test_backfill_pnl_matches_prices_computed_independently(seeded, engine):
    """Individual investor (longs only, entered 2022-01-03): daily P&L = Σ shares × Δclose,
    computed here straight from the bundled CSV with pandas."""
    from batch.demo import LONGS
    from batch.providers.sample import _bundled_closes

    pid = demo_id("portfolio", INDIVIDUAL)
    code, summary, _, _ = seeded("--start", "2022-12-21", "--end", AS_OF, "--portfolio", str(pid), "--json")
    assert code == 0
    assert summary["as_of_dates"] == ["2022-12-21", "2022-12-22", "2022-12-23", "2022-12-27", AS_OF]
    closes = _bundled_closes()
    shares = pd.Series(dict(LONGS[INDIVIDUAL]), dtype=float)
    window = closes.loc[date(2022, 12, 20):date(2022, 12, 28), shares.index]
    expected_pnl = (window.diff().iloc[1:] * shares).sum(axis=1)
    with Session(engine) as s:
        snaps = s.scalars(select(PortfolioSnapshot).order_by(PortfolioSnapshot.snapshot_date)).all()
    assert [x.snapshot_date for x in snaps] == list(expected_pnl.index)
    assert [x.daily_pnl for x in snaps] == pytest.approx(list(expected_pnl), abs=1e-6)
    assert snaps[-1].cumulative_pnl == pytest.approx(expected_pnl.sum(), abs=1e-6)
    # daily_return divides by the previous snapshot's total value
    for before, after in zip(snaps, snaps[1:]):
        assert after.daily_return == pytest.approx(after.daily_pnl / before.total_value)
    assert snaps[0].daily_return is None


def test_history_lists_runs(seeded):
    seeded("--date", AS_OF)
    code, _, out, _ = seeded("history", "--json")
    rows = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and rows[0]["status"] == "success" and rows[0]["exit_code"] == 0


def test_a_run_collects_garbage_less_often_and_restores_the_thresholds(seeded, monkeypatch):
    """While a run computes, the young-generation threshold is COLLECT_AFTER_ALLOCATIONS (seen
    from inside an engine); afterwards the process's own thresholds are back."""
    import gc

    seen = []
    registry = list(engines_module.ENGINES) + [
        Engine("threshold_probe",
               each_unit(lambda unit: seen.append(gc.get_threshold()) or JobOutcome("success", {})))]
    monkeypatch.setattr(runner_module, "ENGINES", registry)
    before = gc.get_threshold()
    gc.set_threshold(555, *before[1:])
    try:
        assert seeded("--date", AS_OF, "--json")[0] == 0
        assert gc.get_threshold() == (555, *before[1:])
    finally:
        gc.set_threshold(*before)
    assert seen and {t[0] for t in seen} == {runner_module.COLLECT_AFTER_ALLOCATIONS}
