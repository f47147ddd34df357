"""SPEC §6.7 "The series always chains": after any order of single runs, backfills and
`--force --portfolio` reruns, the stored snapshot series equals one computed from scratch.

Oracles: (1) a from-scratch backfill of the same sessions on the same database (results wiped
first) and (2) the chaining rule applied by hand with numpy to the stored rows: cumulative P&L
is the running sum of `daily_pnl`, `daily_return` is `daily_pnl` over the previous session's
stored `total_value` (None when that session has no snapshot).
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from batch import calendar
from batch.demo import INDIVIDUAL, demo_id
from models import PortfolioSnapshot, Position

CHAIN_COLUMNS = ("daily_pnl", "total_value", "daily_return", "cumulative_pnl")


def series(engine) -> dict[tuple, tuple]:
    """(portfolio, date) → the chain columns and the chain flag."""
    with Session(engine) as s:
        rows = s.scalars(select(PortfolioSnapshot)).all()
        return {(r.portfolio_id, r.snapshot_date): (
            *(None if getattr(r, c) is None else float(getattr(r, c)) for c in CHAIN_COLUMNS),
            tuple(f for f in r.data_quality["flags"] if f in ("no_previous_snapshot", "zero_previous_value")))
            for r in rows}


def assert_chained_by_hand(stored: dict[tuple, tuple]) -> None:
    """Every portfolio's stored series obeys the chaining rule, oldest first."""
    for pid in {p for p, _ in stored}:
        days = sorted(d for p, d in stored if p == pid)
        pnl = np.array([stored[pid, d][0] for d in days])
        total = np.array([stored[pid, d][1] for d in days])
        np.testing.assert_allclose([stored[pid, d][3] for d in days], np.cumsum(pnl), rtol=1e-12, atol=1e-6)
        for i, d in enumerate(days):
            has_previous = i > 0 and days[i - 1] == calendar.previous_session(d)
            expected = pnl[i] / total[i - 1] if has_previous else None
            got = stored[pid, d][2]
            if expected is None:
                assert got is None and stored[pid, d][4] == ("no_previous_snapshot",), (pid, d)
            else:
                assert got == pytest.approx(expected, rel=1e-9) and stored[pid, d][4] == (), (pid, d)


def from_scratch(cli, engine, start: str, end: str) -> dict[tuple, tuple]:
    with Session(engine) as s, s.begin():
        s.execute(delete(PortfolioSnapshot))
    result = cli("--start", start, "--end", end, "--skip-sync")
    assert result.code == 0, result.err
    return series(engine)


def test_a_backfill_rechains_a_day_computed_before_it(seeded, engine):
    """The README's order: one day, then the backfill that ends on it (which skips it as
    already complete)."""
    assert seeded("--date", "2022-12-28").code == 0
    assert seeded("--start", "2022-12-20", "--end", "2022-12-28").code == 0
    stored = series(engine)
    assert_chained_by_hand(stored)
    individual = stored[demo_id("portfolio", INDIVIDUAL), date(2022, 12, 28)]
    assert individual[2] is not None  # a return again: 12-27 exists now
    assert stored == from_scratch(seeded, engine, "2022-12-20", "2022-12-28")


def test_a_missed_day_run_later_rechains_the_days_after_it(seeded, engine):
    """The README's missed-day recipe: 12-19, skip 12-20, 12-21..12-23, then 12-20 with --force
    and the whole range again."""
    assert seeded("--date", "2022-12-19").code == 0
    assert seeded("--start", "2022-12-21", "--end", "2022-12-23", "--skip-sync").code == 0
    assert seeded("--date", "2022-12-20", "--force", "--skip-sync").code == 0
    assert seeded("--start", "2022-12-19", "--end", "2022-12-23", "--skip-sync").code == 0
    stored = series(engine)
    assert_chained_by_hand(stored)
    assert stored == from_scratch(seeded, engine, "2022-12-19", "2022-12-23")


def test_one_portfolio_rerun_after_fixing_positions_rechains_its_later_days(seeded, engine):
    """Fix a position, recompute one earlier day for that portfolio only: its later snapshot's
    cumulative P&L follows (its own daily P&L is that day's, computed when it ran)."""
    pid = demo_id("portfolio", INDIVIDUAL)
    assert seeded("--start", "2022-12-23", "--end", "2022-12-28").code == 0
    before = series(engine)
    with Session(engine) as s, s.begin():
        first = s.scalars(select(Position).where(Position.portfolio_id == pid).order_by(Position.symbol)).first()
        s.execute(update(Position).where(Position.id == first.id).values(quantity=first.quantity * 2))
    assert seeded("--date", "2022-12-27", "--force", "--skip-sync", "--portfolio", str(pid)).code == 0
    after = series(engine)
    assert_chained_by_hand(after)
    d27, d28 = date(2022, 12, 27), date(2022, 12, 28)
    assert after[pid, d27][0] != before[pid, d27][0]  # the fix changed 12-27's P&L
    assert after[pid, d28][0] == before[pid, d28][0]  # 12-28 was not recomputed...
    assert after[pid, d28][3] == pytest.approx(before[pid, d28][3] - before[pid, d27][0] + after[pid, d27][0])
    others = {k: v for k, v in before.items() if k[0] != pid}
    assert {k: v for k, v in after.items() if k[0] != pid} == others  # ...and nobody else moved
