"""A backfill equals the single-date runs it stands for, and a forced re-run changes no value
(SPEC §7: idempotent, no look-ahead, "a backfill of D1..Dn equals n single-date runs").

Each test runs on SQLite and PostgreSQL through the real entry point, on the demo portfolios.
"""

from __future__ import annotations

from datetime import date
from itertools import pairwise

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from models import (
    CorrelationRun,
    FactorCorrelation,
    MarketPrice,
    PortfolioSnapshot,
    PositionGreeks,
    StressTestResult,
    SymbolFactorBeta,
)
from tests.conftest import RESULT_TABLES, dump_results

START, END = "2022-12-14", "2022-12-28"
# NYSE sessions in [START, END], by hand: weekends and Monday 2022-12-26 (Christmas observed) out.
SESSIONS = [date(2022, 12, d) for d in (14, 15, 16, 19, 20, 21, 22, 23, 27, 28)]
MIDDLE = SESSIONS[4]  # 2022-12-20




def snapshots(engine) -> dict[tuple, tuple[float, float]]:
    """(portfolio_id, date) → (daily_pnl, cumulative_pnl)."""
    with Session(engine) as s:
        rows = s.execute(select(PortfolioSnapshot.portfolio_id, PortfolioSnapshot.snapshot_date,
                                PortfolioSnapshot.daily_pnl, PortfolioSnapshot.cumulative_pnl)).all()
    return {(pid, day): (pnl, cum) for pid, day, pnl, cum in rows}


def test_a_backfill_equals_single_date_runs_and_a_forced_rerun_changes_nothing(seeded, engine) -> None:
    """One test per dialect (a backfill costs seconds): backfill, check the P&L chain, forget the
    results, replay the sessions one by one, compare; then force the middle date again."""
    code, summary, *_ = seeded("--start", START, "--end", END, "--json")
    assert code == 0, summary["failed_portfolios"]
    assert summary["as_of_dates"] == [d.isoformat() for d in SESSIONS]
    assert summary["portfolios"] == {"succeeded": 4 * len(SESSIONS), "failed": 0, "skipped": 0}
    from_backfill = dump_results(engine)
    assert all(from_backfill[m.__tablename__] for m in (PortfolioSnapshot, SymbolFactorBeta, FactorCorrelation,
                                                        StressTestResult, PositionGreeks, CorrelationRun))

    # cumulative_pnl(D) = cumulative_pnl(previous session) + daily_pnl(D); the first is daily_pnl.
    rows = snapshots(engine)
    portfolios = {pid for pid, _ in rows}
    assert len(portfolios) == 4 and len(rows) == 4 * len(SESSIONS)
    for pid in portfolios:
        pnl, cum = rows[(pid, SESSIONS[0])]
        assert cum == pytest.approx(pnl, abs=1e-9)
        for previous, day in pairwise(SESSIONS):
            assert rows[(pid, day)][1] == pytest.approx(rows[(pid, previous)][1] + rows[(pid, day)][0],
                                                        rel=1e-12, abs=1e-6), (pid, day)

    # The same sessions as ten single-date runs, in order, on the prices the backfill stored.
    with Session(engine) as s:
        prices = s.scalar(select(func.count()).select_from(MarketPrice))
    with Session(engine) as s, s.begin():
        for model in RESULT_TABLES:
            s.execute(delete(model))
    assert not any(dump_results(engine).values())
    for day in SESSIONS:
        code, summary, *_ = seeded("--date", day.isoformat(), "--skip-sync", "--json")
        assert code == 0 and summary["portfolios"]["succeeded"] == 4, (day, summary["failed_portfolios"])
    assert dump_results(engine) == from_backfill
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(MarketPrice)) == prices

    # Forcing the middle date again (sync included) changes no row, later snapshots included.
    later = {k: v for k, v in rows.items() if k[1] > MIDDLE}
    assert len(later) == 4 * 5
    code, summary, *_ = seeded("--date", MIDDLE.isoformat(), "--force", "--json")
    assert code == 0 and summary["as_of_dates"] == [MIDDLE.isoformat()]
    assert summary["portfolios"] == {"succeeded": 4, "failed": 0, "skipped": 0}
    assert dump_results(engine) == from_backfill
    assert {k: v for k, v in snapshots(engine).items() if k[1] > MIDDLE} == later
