"""NYSE trading-session logic: the one place the batch decides what a session is.

All session questions (is this a trading day, which session precedes it, how many
sessions between two dates, ...) go through this module. It is backed by
``pandas_market_calendars`` ("NYSE"), whose schedule is built once over a fixed
range and cached as a sorted tuple of ``datetime.date`` plus a frozenset, so every
lookup afterwards is a set membership test or a ``bisect``.

The module never reads the clock: callers pass "now" in (see ``new_york_today``).
Dates outside the cached range raise ``ValueError`` rather than guessing.
"""

from __future__ import annotations

import warnings
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import pandas as pd
import pandas_market_calendars as pmc

__all__ = [
    "NotASessionError",
    "covered_range",
    "is_trading_day",
    "new_york_today",
    "previous_session",
    "session_offset",
    "session_on_or_after",
    "session_on_or_before",
    "sessions_back",
    "to_session",
    "trading_days",
]

NEW_YORK = ZoneInfo("America/New_York")

# Range of the cached schedule (inclusive). Queries outside it raise ValueError.
_RANGE_START = date(1990, 1, 1)
_RANGE_END = date(2040, 12, 31)

# Unscheduled full-day NYSE closures that older pandas_market_calendars releases
# may not know about. Each is removed from the schedule only if pmc still lists it
# as a session, so once pmc knows a date its entry here is a harmless no-op.
# (pandas_market_calendars 5.5.0 already has all of these; pyproject allows >=4.4.)
_EXTRA_CLOSURES: tuple[date, ...] = (
    date(2018, 12, 5),  # National day of mourning: President George H. W. Bush.
    date(2025, 1, 9),  # National day of mourning: President Jimmy Carter.
)

# pandas 3.x: pmc's schedule() triggers a Pandas4Warning (deprecated pandas API used
# inside pmc). The class does not exist on pandas 2.x, hence the getattr.
_PANDAS4_WARNING: type[Warning] | None = getattr(pd.errors, "Pandas4Warning", None)


class NotASessionError(ValueError):
    """A date that had to be an NYSE session is not one."""

    def __init__(self, value: date, param: str = "date") -> None:
        self.value = value
        self.param = param
        super().__init__(f"{value.isoformat()} is not an NYSE session (param {param!r})")

    def __reduce__(self) -> tuple[type[NotASessionError], tuple[date, str]]:
        return (type(self), (self.value, self.param))


@dataclass(frozen=True, slots=True)
class _Sessions:
    ordered: tuple[date, ...]
    members: frozenset[date]
    first: date  # first covered date (inclusive)
    last: date  # last covered date (inclusive)


def _apply_extra_closures(
    sessions: tuple[date, ...], closures: tuple[date, ...]
) -> tuple[date, ...]:
    """Drop each closure date that the upstream schedule still lists as a session."""
    listed = set(closures).intersection(sessions)
    if not listed:
        return sessions
    return tuple(d for d in sessions if d not in listed)


@lru_cache(maxsize=1)
def _sessions() -> _Sessions:
    """Build (once) the NYSE session set for the covered range."""
    calendar = pmc.get_calendar("NYSE")
    with warnings.catch_warnings():
        if _PANDAS4_WARNING is not None:
            warnings.filterwarnings("ignore", category=_PANDAS4_WARNING)
        schedule = calendar.schedule(
            start_date=_RANGE_START.isoformat(), end_date=_RANGE_END.isoformat()
        )
    ordered = tuple(sorted({ts.date() for ts in schedule.index}))
    ordered = _apply_extra_closures(ordered, _EXTRA_CLOSURES)
    return _Sessions(ordered, frozenset(ordered), _RANGE_START, _RANGE_END)


def _check(d: object, param: str) -> date:
    """Validate that ``d`` is a plain ``date`` inside the covered range."""
    # datetime (and pd.Timestamp) subclass date but would silently never match.
    if not isinstance(d, date) or isinstance(d, datetime):
        raise TypeError(f"{param} must be a datetime.date (not datetime), got {type(d).__name__}")
    cal = _sessions()
    if not cal.first <= d <= cal.last:
        raise ValueError(
            f"{param}={d.isoformat()} is outside the covered NYSE calendar range "
            f"{cal.first.isoformat()}..{cal.last.isoformat()}"
        )
    return d


def _out_of_data(what: str, d: date) -> ValueError:
    cal = _sessions()
    return ValueError(
        f"no NYSE session {what} {d.isoformat()} within the covered range "
        f"{cal.first.isoformat()}..{cal.last.isoformat()}"
    )


def covered_range() -> tuple[date, date]:
    """First and last date (inclusive) of the cached calendar data."""
    cal = _sessions()
    return cal.first, cal.last


def is_trading_day(d: date) -> bool:
    """True if ``d`` is an NYSE session (early-close days count as sessions)."""
    _check(d, "d")
    return d in _sessions().members


def trading_days(start: date, end: date) -> list[date]:
    """Sessions in ``[start, end]`` inclusive, ascending. Raises if start > end."""
    _check(start, "start")
    _check(end, "end")
    if start > end:
        raise ValueError(f"start {start.isoformat()} is after end {end.isoformat()}")
    ordered = _sessions().ordered
    return list(ordered[bisect_left(ordered, start) : bisect_right(ordered, end)])


def previous_session(d: date) -> date:
    """The latest session strictly before ``d`` (``d`` need not be a session)."""
    _check(d, "d")
    ordered = _sessions().ordered
    i = bisect_left(ordered, d)
    if i == 0:
        raise _out_of_data("before", d)
    return ordered[i - 1]


def _next_session(d: date) -> date:
    """The earliest session strictly after ``d``."""
    ordered = _sessions().ordered
    i = bisect_right(ordered, d)
    if i == len(ordered):
        raise _out_of_data("after", d)
    return ordered[i]


def session_on_or_before(d: date) -> date:
    """``d`` if it is a session, else the latest session before it."""
    _check(d, "d")
    ordered = _sessions().ordered
    i = bisect_right(ordered, d)
    if i == 0:
        raise _out_of_data("on or before", d)
    return ordered[i - 1]


def session_on_or_after(d: date) -> date:
    """``d`` if it is a session, else the earliest session after it."""
    _check(d, "d")
    ordered = _sessions().ordered
    i = bisect_left(ordered, d)
    if i == len(ordered):
        raise _out_of_data("on or after", d)
    return ordered[i]


def to_session(d: date, direction: str | None = None, param: str = "date") -> date:
    """Return ``d`` if it is a session, else roll it per ``direction``.

    ``direction=None`` raises ``NotASessionError`` (naming ``param``) for a
    non-session; ``"previous"`` gives the latest session before ``d``; ``"next"``
    the earliest session after it. Any other direction raises ``ValueError``
    (checked up front, even when ``d`` is a session).
    """
    if direction not in (None, "previous", "next"):
        raise ValueError(f"direction must be None, 'previous' or 'next', got {direction!r}")
    _check(d, param)
    if d in _sessions().members:
        return d
    if direction is None:
        raise NotASessionError(d, param)
    if direction == "previous":
        return previous_session(d)
    return _next_session(d)


def sessions_back(as_of: date, n: int) -> list[date]:
    """The ``n`` sessions ending at ``as_of`` inclusive, ascending.

    ``as_of`` must be a session (else ``NotASessionError``); ``n`` must be >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check(as_of, "as_of")
    cal = _sessions()
    if as_of not in cal.members:
        raise NotASessionError(as_of, "as_of")
    end = bisect_right(cal.ordered, as_of)  # index just past as_of
    if end < n:
        raise ValueError(
            f"only {end} sessions up to {as_of.isoformat()} in the covered range "
            f"(starting {cal.first.isoformat()}), {n} requested"
        )
    return list(cal.ordered[end - n : end])


def session_offset(d: date, later: date) -> int:
    """Number of sessions ``s`` with ``d < s <= later`` (staleness in sessions).

    Neither date need be a session. If ``later <= d`` the interval is empty: 0.
    """
    _check(d, "d")
    _check(later, "later")
    if later <= d:
        return 0
    ordered = _sessions().ordered
    return bisect_right(ordered, later) - bisect_right(ordered, d)


def new_york_today(now: datetime) -> date:
    """The America/New_York calendar date of the aware datetime ``now``."""
    if not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime, got {type(now).__name__}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got naive {now.isoformat()}")
    return now.astimezone(NEW_YORK).date()
