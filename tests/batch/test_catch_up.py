"""Catch-up of missed nights (SPEC §11 `CATCH_UP_SESSIONS`): a cron run first computes, oldest first,
the recent sessions on which some active portfolio lacks complete results, then today; the
summary names them and the alert says so. Counts come from plain SQL over the stored rows."""

from __future__ import annotations

import json
from datetime import date

from sqlalchemy import delete, text

from batch import calendar
from models import PortfolioSnapshot
from tests.recording_server import recording_server

TODAY = date(2022, 12, 28)
MISSED = ["2022-12-21", "2022-12-22", "2022-12-23", "2022-12-27"]  # 12-26: Christmas observed


def _snapshots_per_day(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {str(d)[:10]: n for d, n in conn.execute(text(
            "SELECT snapshot_date, COUNT(*) FROM portfolio_snapshots GROUP BY snapshot_date"))}


def test_a_cron_run_computes_the_missed_sessions_oldest_first_then_today(seeded, engine, monkeypatch):
    first = seeded("--date", "2022-12-20", "--json")
    assert first.code == 0  # freshness: of the five sessions up to 12-20, only 12-20 is complete
    assert first.summary["incomplete_sessions"] == ["2022-12-14", "2022-12-15", "2022-12-16", "2022-12-19"]
    monkeypatch.setattr(calendar, "new_york_today", lambda now: TODAY)  # the cron's "today"
    with recording_server() as slack:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", slack.url)
        result = seeded("run", "--trigger", "cron", "--json")
    assert result.code == 0, result.err
    assert result.summary["catch_up"] == MISSED
    assert result.summary["as_of_dates"] == [*MISSED, TODAY.isoformat()]
    assert result.summary["incomplete_sessions"] == []  # 12-20..12-28 all complete now
    assert result.summary["portfolios"] == {"succeeded": 4 * 5, "failed": 0, "skipped": 0}
    assert _snapshots_per_day(engine) == {d: 4 for d in ["2022-12-20", *MISSED, "2022-12-28"]}
    with engine.connect() as conn:  # written oldest first: the run's records in insertion order
        order = [str(d)[:10] for d in conn.execute(text(
            "SELECT as_of_date FROM batch_job_results WHERE run_id = :r AND portfolio_id IS NOT NULL ORDER BY id"),
            {"r": result.summary["run_id"] if engine.dialect.name == "postgresql"
             else result.summary["run_id"].replace("-", "")}).scalars()]
    assert order == sorted(order) and order[0] == MISSED[0] and order[-1] == TODAY.isoformat()
    [alert] = slack.requests
    assert "caught up 4 missed session(s)" in json.loads(alert.body)["text"]

    again = seeded("run", "--trigger", "cron", "--json")  # nothing missed any more
    assert (again.code, again.summary["catch_up"], again.summary["as_of_dates"]) == (0, [], [TODAY.isoformat()])


def test_only_a_cron_run_without_a_date_catches_up_and_zero_disables_it(seeded, engine, monkeypatch):
    assert seeded("--date", "2022-12-20", "--json").code == 0
    monkeypatch.setattr(calendar, "new_york_today", lambda now: TODAY)
    manual = seeded("--json")  # a manual run of today
    dated = seeded("run", "--trigger", "cron", "--date", TODAY.isoformat(), "--json")
    monkeypatch.setenv("CATCH_UP_SESSIONS", "0")
    disabled = seeded("run", "--trigger", "cron", "--json")
    for result in (manual, dated, disabled):
        assert (result.code, result.summary["catch_up"]) == (0, [])
    assert _snapshots_per_day(engine) == {"2022-12-20": 4, "2022-12-28": 4}
    monkeypatch.setenv("CATCH_UP_SESSIONS", "2")  # a window of two sessions: 12-23 and 12-27
    with engine.begin() as conn:  # the 12-20 results lost: outside the two-session window, left alone
        conn.execute(delete(PortfolioSnapshot).where(PortfolioSnapshot.snapshot_date == date(2022, 12, 20)))
    two = seeded("run", "--trigger", "cron", "--json")
    assert two.summary["catch_up"] == ["2022-12-23", "2022-12-27"]
    assert "2022-12-20" not in _snapshots_per_day(engine)
