"""Tests for batch.calendar (NYSE session logic).

The golden table below is written by hand from the NYSE's published holiday rules
(and its announced special closures), not computed by the code under test.
"""

from __future__ import annotations

import pickle
import warnings
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from batch import calendar as cal
from batch.calendar import (
    NotASessionError,
    covered_range,
    is_trading_day,
    new_york_today,
    previous_session,
    session_offset,
    session_on_or_after,
    session_on_or_before,
    sessions_back,
    to_session,
    trading_days,
)

UTC = timezone.utc

# (date, expected_is_session, label) -- written by hand, 2022-2026.
GOLDEN: list[tuple[date, bool, str]] = [
    # ---- 2022 ----
    # New Year's Day 2022 fell on a Saturday; NYSE does not observe a Saturday
    # holiday on the preceding Friday when that Friday ends a year -> 2021-12-31 open.
    (date(2021, 12, 31), True, "Fri 2021-12-31 open (NY 2022 on Sat, not observed)"),
    (date(2022, 1, 1), False, "Sat New Year's Day 2022"),
    (date(2022, 1, 3), True, "Mon 2022-01-03 open (no Monday observance)"),
    (date(2022, 1, 17), False, "MLK Day 2022"),
    (date(2022, 2, 21), False, "Presidents' Day 2022"),
    (date(2022, 4, 15), False, "Good Friday 2022"),
    (date(2022, 5, 30), False, "Memorial Day 2022"),
    (date(2022, 6, 17), True, "Fri before Juneteenth 2022 open"),
    (date(2022, 6, 20), False, "Juneteenth 2022 observed (19th was Sunday)"),
    (date(2022, 7, 4), False, "Independence Day 2022"),
    (date(2022, 9, 5), False, "Labor Day 2022"),
    (date(2022, 11, 24), False, "Thanksgiving 2022"),
    (date(2022, 11, 25), True, "Day after Thanksgiving 2022 (early close)"),
    (date(2022, 12, 23), True, "Fri 2022-12-23 open"),
    (date(2022, 12, 24), False, "Sat 2022-12-24 weekend"),
    (date(2022, 12, 25), False, "Sun Christmas 2022"),
    (date(2022, 12, 26), False, "Christmas 2022 observed (Monday)"),
    (date(2022, 12, 27), True, "Tue 2022-12-27 ordinary weekday"),
    # ---- 2023 ----
    (date(2023, 1, 2), False, "New Year's Day 2023 observed (1st was Sunday)"),
    (date(2023, 1, 16), False, "MLK Day 2023"),
    (date(2023, 2, 20), False, "Presidents' Day 2023"),
    (date(2023, 3, 15), True, "Wed 2023-03-15 ordinary weekday"),
    (date(2023, 4, 7), False, "Good Friday 2023"),
    (date(2023, 5, 29), False, "Memorial Day 2023"),
    (date(2023, 6, 19), False, "Juneteenth 2023"),
    (date(2023, 7, 3), True, "Mon 2023-07-03 (early close)"),
    (date(2023, 7, 4), False, "Independence Day 2023"),
    (date(2023, 9, 4), False, "Labor Day 2023"),
    (date(2023, 11, 23), False, "Thanksgiving 2023"),
    (date(2023, 11, 24), True, "Day after Thanksgiving 2023 (early close)"),
    (date(2023, 12, 25), False, "Christmas 2023"),
    # ---- 2024 ----
    (date(2024, 1, 1), False, "New Year's Day 2024"),
    (date(2024, 1, 15), False, "MLK Day 2024"),
    (date(2024, 2, 19), False, "Presidents' Day 2024"),
    (date(2024, 2, 29), True, "Thu leap day 2024 ordinary weekday"),
    (date(2024, 3, 29), False, "Good Friday 2024"),
    (date(2024, 5, 27), False, "Memorial Day 2024"),
    (date(2024, 6, 15), False, "Sat 2024-06-15 weekend"),
    (date(2024, 6, 19), False, "Juneteenth 2024"),
    (date(2024, 7, 3), True, "Wed 2024-07-03 (early close)"),
    (date(2024, 7, 4), False, "Independence Day 2024"),
    (date(2024, 9, 2), False, "Labor Day 2024"),
    (date(2024, 11, 11), True, "Veterans Day 2024 (NYSE open)"),
    (date(2024, 11, 28), False, "Thanksgiving 2024"),
    (date(2024, 11, 29), True, "Day after Thanksgiving 2024 (early close)"),
    (date(2024, 12, 24), True, "Christmas Eve 2024 (early close)"),
    (date(2024, 12, 25), False, "Christmas 2024"),
    # ---- 2025 ----
    (date(2025, 1, 1), False, "New Year's Day 2025"),
    (date(2025, 1, 8), True, "Wed 2025-01-08 open"),
    (date(2025, 1, 9), False, "National day of mourning, President Carter"),
    (date(2025, 1, 10), True, "Fri 2025-01-10 open"),
    (date(2025, 1, 20), False, "MLK Day 2025"),
    (date(2025, 2, 17), False, "Presidents' Day 2025"),
    (date(2025, 4, 18), False, "Good Friday 2025"),
    (date(2025, 5, 26), False, "Memorial Day 2025"),
    (date(2025, 6, 19), False, "Juneteenth 2025"),
    (date(2025, 7, 3), True, "Thu 2025-07-03 (early close)"),
    (date(2025, 7, 4), False, "Independence Day 2025"),
    (date(2025, 9, 1), False, "Labor Day 2025"),
    (date(2025, 10, 13), True, "Columbus Day 2025 (NYSE open)"),
    (date(2025, 11, 27), False, "Thanksgiving 2025"),
    (date(2025, 11, 28), True, "Day after Thanksgiving 2025 (early close)"),
    (date(2025, 12, 24), True, "Christmas Eve 2025 (early close)"),
    (date(2025, 12, 25), False, "Christmas 2025"),
    (date(2025, 12, 26), True, "Fri 2025-12-26 open"),
    # ---- 2026 ----
    (date(2026, 1, 1), False, "New Year's Day 2026"),
    (date(2026, 1, 2), True, "Fri 2026-01-02 open"),
    (date(2026, 1, 19), False, "MLK Day 2026"),
    (date(2026, 2, 16), False, "Presidents' Day 2026"),
    (date(2026, 4, 3), False, "Good Friday 2026"),
    (date(2026, 5, 25), False, "Memorial Day 2026"),
    (date(2026, 6, 19), False, "Juneteenth 2026"),
    (date(2026, 7, 3), False, "Independence Day 2026 observed (4th is Saturday)"),
    (date(2026, 7, 4), False, "Sat Independence Day 2026"),
    (date(2026, 9, 7), False, "Labor Day 2026"),
    (date(2026, 11, 26), False, "Thanksgiving 2026"),
    (date(2026, 11, 27), True, "Day after Thanksgiving 2026 (early close)"),
    (date(2026, 12, 24), True, "Christmas Eve 2026 (early close)"),
    (date(2026, 12, 25), False, "Christmas 2026"),
    (date(2026, 12, 31), True, "Thu 2026-12-31 open"),
]


@pytest.mark.parametrize(
    ("day", "expected"),
    [(d, e) for d, e, _ in GOLDEN],
    ids=[f"{d.isoformat()}-{label}" for d, _, label in GOLDEN],
)
def test_golden_table(day: date, expected: bool) -> None:
    assert is_trading_day(day) is expected


def test_historic_special_closure_bush_2018() -> None:
    assert not is_trading_day(date(2018, 12, 5))
    assert is_trading_day(date(2018, 12, 4))
    assert is_trading_day(date(2018, 12, 6))


def test_session_counts_per_year() -> None:
    # Published NYSE session counts.
    assert len(trading_days(date(2022, 1, 1), date(2022, 12, 31))) == 251
    assert len(trading_days(date(2023, 1, 1), date(2023, 12, 31))) == 250


def test_trading_days_inclusive_ascending() -> None:
    assert trading_days(date(2022, 12, 19), date(2022, 12, 30)) == [
        date(2022, 12, 19),
        date(2022, 12, 20),
        date(2022, 12, 21),
        date(2022, 12, 22),
        date(2022, 12, 23),
        date(2022, 12, 27),
        date(2022, 12, 28),
        date(2022, 12, 29),
        date(2022, 12, 30),
    ]


def test_trading_days_edges() -> None:
    assert trading_days(date(2022, 12, 23), date(2022, 12, 23)) == [date(2022, 12, 23)]
    assert trading_days(date(2022, 12, 24), date(2022, 12, 26)) == []


def test_trading_days_start_after_end_raises() -> None:
    with pytest.raises(ValueError, match=r"2022-12-30.*2022-12-19"):
        trading_days(date(2022, 12, 30), date(2022, 12, 19))


def test_to_session_returns_session_unchanged() -> None:
    for direction in (None, "previous", "next"):
        assert to_session(date(2022, 12, 23), direction) == date(2022, 12, 23)


def test_to_session_without_direction_raises() -> None:
    with pytest.raises(NotASessionError) as excinfo:
        to_session(date(2022, 12, 25), param="as_of")
    err = excinfo.value
    assert isinstance(err, ValueError)
    assert err.value == date(2022, 12, 25)
    assert err.param == "as_of"
    assert str(err) == "2022-12-25 is not an NYSE session (param 'as_of')"


def test_not_a_session_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(NotASessionError(date(2022, 12, 25), "as_of")))
    assert (err.value, err.param, str(err)) == (
        date(2022, 12, 25),
        "as_of",
        "2022-12-25 is not an NYSE session (param 'as_of')",
    )


def test_to_session_with_direction() -> None:
    assert to_session(date(2022, 12, 25), "previous") == date(2022, 12, 23)
    assert to_session(date(2022, 12, 25), "next") == date(2022, 12, 27)
    assert to_session(date(2025, 1, 9), "previous") == date(2025, 1, 8)
    assert to_session(date(2025, 1, 9), "next") == date(2025, 1, 10)


def test_to_session_bad_direction_raises() -> None:
    with pytest.raises(ValueError, match="direction"):
        to_session(date(2022, 12, 25), "forward")
    with pytest.raises(ValueError, match="direction"):
        to_session(date(2022, 12, 23), "prev")  # rejected even for a session


def test_previous_session_over_holiday_weekend() -> None:
    # Sat 24, Sun 25, Mon 26 (Christmas observed) closed.
    assert previous_session(date(2022, 12, 27)) == date(2022, 12, 23)
    assert previous_session(date(2022, 12, 26)) == date(2022, 12, 23)
    # New Year 2023 observed Mon Jan 2.
    assert previous_session(date(2023, 1, 3)) == date(2022, 12, 30)
    # Strictly before, even when d is a session.
    assert previous_session(date(2022, 12, 23)) == date(2022, 12, 22)


def test_session_on_or_before_and_after() -> None:
    assert session_on_or_before(date(2022, 12, 25)) == date(2022, 12, 23)
    assert session_on_or_after(date(2022, 12, 24)) == date(2022, 12, 27)
    assert session_on_or_before(date(2022, 12, 23)) == date(2022, 12, 23)
    assert session_on_or_after(date(2022, 12, 23)) == date(2022, 12, 23)


def test_sessions_back() -> None:
    got = sessions_back(date(2023, 1, 3), 3)
    assert got == [date(2022, 12, 29), date(2022, 12, 30), date(2023, 1, 3)]
    window = sessions_back(date(2022, 12, 30), 9)
    assert len(window) == 9
    assert window[-1] == date(2022, 12, 30)
    assert window[0] == date(2022, 12, 19)
    assert sessions_back(date(2022, 12, 30), 1) == [date(2022, 12, 30)]


def test_sessions_back_requires_session() -> None:
    with pytest.raises(NotASessionError, match=r"2022-12-26 .*'as_of'"):
        sessions_back(date(2022, 12, 26), 5)


@pytest.mark.parametrize("n", [0, -1])
def test_sessions_back_rejects_non_positive_n(n: int) -> None:
    with pytest.raises(ValueError, match="n must be"):
        sessions_back(date(2022, 12, 30), n)


def test_sessions_back_beyond_history_raises() -> None:
    first_session = session_on_or_after(covered_range()[0])
    with pytest.raises(ValueError, match="requested"):
        sessions_back(first_session, 2)


def test_session_offset() -> None:
    assert session_offset(date(2022, 12, 23), date(2022, 12, 23)) == 0
    assert session_offset(date(2022, 12, 23), date(2022, 12, 27)) == 1
    assert session_offset(date(2022, 12, 23), date(2022, 12, 26)) == 0
    # Thu 22 -> Tue 3 Jan: 23, 27, 28, 29, 30, 3 = 6 sessions.
    assert session_offset(date(2022, 12, 22), date(2023, 1, 3)) == 6
    # Non-session start.
    assert session_offset(date(2022, 12, 24), date(2022, 12, 27)) == 1
    # Empty interval when later precedes d.
    assert session_offset(date(2022, 12, 27), date(2022, 12, 23)) == 0


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # EST (UTC-5): 03:30Z is 22:30 the previous evening.
        (datetime(2022, 12, 29, 3, 30, tzinfo=UTC), date(2022, 12, 28)),
        (datetime(2022, 12, 29, 4, 59, tzinfo=UTC), date(2022, 12, 28)),
        (datetime(2022, 12, 29, 5, 0, tzinfo=UTC), date(2022, 12, 29)),
        # EDT (UTC-4).
        (datetime(2022, 7, 1, 3, 30, tzinfo=UTC), date(2022, 6, 30)),
        (datetime(2022, 7, 1, 4, 0, tzinfo=UTC), date(2022, 7, 1)),
        # Non-UTC aware input: 12:00 Tokyo (UTC+9) = 22:00 previous day EST.
        (datetime(2022, 12, 29, 12, 0, tzinfo=ZoneInfo("Asia/Tokyo")), date(2022, 12, 28)),
        (datetime(2022, 12, 29, 0, 0, tzinfo=timezone(timedelta(hours=-5))), date(2022, 12, 29)),
    ],
)
def test_new_york_today(now: datetime, expected: date) -> None:
    assert new_york_today(now) == expected


def test_new_york_today_rejects_naive() -> None:
    with pytest.raises(ValueError, match="aware"):
        new_york_today(datetime(2022, 12, 29, 3, 30))


def test_covered_range() -> None:
    first, last = covered_range()
    assert first <= date(2000, 1, 3) and last >= date(2035, 12, 31)
    assert is_trading_day(session_on_or_after(first))
    assert is_trading_day(session_on_or_before(last))


def test_out_of_range_raises_naming_date_and_range() -> None:
    first, last = covered_range()
    beyond = last + timedelta(days=1)
    before = first - timedelta(days=1)
    pattern = rf"{beyond.isoformat()}.*{first.isoformat()}\.\.{last.isoformat()}"
    with pytest.raises(ValueError, match=pattern):
        is_trading_day(beyond)
    with pytest.raises(ValueError, match=before.isoformat()):
        trading_days(before, date(2000, 1, 10))
    with pytest.raises(ValueError, match=beyond.isoformat()):
        session_offset(date(2022, 1, 3), beyond)


def test_rejects_datetime_for_date() -> None:
    with pytest.raises(TypeError):
        is_trading_day(datetime(2022, 12, 23, 12, 0))  # type: ignore[arg-type]


def test_extra_closures_applied_only_when_listed() -> None:
    sessions = (date(2025, 1, 8), date(2025, 1, 9), date(2025, 1, 10))
    closures = (date(2025, 1, 9), date(2018, 12, 5))
    assert cal._apply_extra_closures(sessions, closures) == (date(2025, 1, 8), date(2025, 1, 10))
    already = (date(2025, 1, 8), date(2025, 1, 10))
    assert cal._apply_extra_closures(already, closures) is already


def test_schedule_build_emits_no_warnings() -> None:
    cal._sessions.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cal._sessions()
        assert [str(w.message) for w in caught] == []
    finally:
        cal._sessions.cache_clear()
