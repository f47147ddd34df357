"""What a run computes (SPEC §2, §7): the resolved request (`RunRequest`, built by the CLI) and
its `Plan` — the as-of dates, the portfolios, and per date the units that already have results
(skipped unless --force) — read from the database in one place."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy.orm import Session

from batch import calendar, repository

# units per chunk (--chunk-size): their inputs are loaded together and their results committed in
# one transaction (SPEC §7); bounds memory and what an interruption loses
DEFAULT_CHUNK_SIZE = 200


@dataclass(frozen=True)
class RunRequest:
    """A resolved run: the sessions to compute (ascending; empty when the run is skipped)."""

    as_of_dates: list[date]
    requested_start: date
    requested_end: date
    skip_reason: str | None = None
    force: bool = False
    portfolio_ids: list[uuid.UUID] = field(default_factory=list)  # empty: every portfolio
    skip_sync: bool = False
    skip_profiles: bool = False
    trigger: str = "manual"
    chunk_size: int = DEFAULT_CHUNK_SIZE  # units written per transaction (SPEC §7)
    catch_up_sessions: int = 0  # a cron run: look back this many sessions for incomplete ones (SPEC §11)
    catch_up: tuple[date, ...] = ()  # the sessions found incomplete, run before the requested ones


@dataclass(frozen=True, slots=True)
class Plan:
    """The run's units: every portfolio of `portfolios` (active, of the request's filter, ordered
    by id) on every date of `as_of_dates` (ascending), dates in order."""

    as_of_dates: tuple[date, ...]
    portfolios: tuple[repository.PortfolioRow, ...]
    force: bool

    @property
    def total_units(self) -> int:
        return len(self.as_of_dates) * len(self.portfolios)

    def complete(self, session: Session, as_of: date) -> set[uuid.UUID]:
        """Portfolios with results (a snapshot) for `as_of` already, which the run skips; none
        with --force. Read when the date's turn comes, so a backfill holds one date's set."""
        return set() if self.force else repository.portfolios_with_snapshot(session, as_of)

    def chunks(self, size: int) -> list[list[repository.PortfolioRow]]:
        """The portfolios in chunks of `size` (the last one shorter), in order."""
        return [list(self.portfolios[i:i + size]) for i in range(0, len(self.portfolios), size)]


def with_catch_up(session: Session, request: RunRequest) -> RunRequest:
    """SPEC §11 catch-up: the `catch_up_sessions` sessions before the requested date on which some
    active portfolio (of the request's filter) lacks complete results, put before the requested
    sessions, oldest first (`catch_up` names them). A request without a look-back, or with nothing
    to catch up, is returned as it is; a skipped one (today is not a session) runs the sessions
    caught up."""
    if request.catch_up_sessions < 1:
        return request
    window = calendar.sessions_back(calendar.previous_session(request.requested_end), request.catch_up_sessions)
    missing = [d for d in repository.sessions_missing_results(session, window, request.portfolio_ids)
               if d not in request.as_of_dates]
    if not missing:
        return request
    return dataclasses.replace(request, as_of_dates=sorted(missing) + list(request.as_of_dates),
                               catch_up=tuple(sorted(missing)), skip_reason=None)


def plan_run(session: Session, request: RunRequest) -> Plan:
    """The plan of a request that runs (`skip_reason` None): its dates and the active portfolios
    of its filter (every one when `portfolio_ids` is empty)."""
    return Plan(tuple(request.as_of_dates), tuple(repository.active_portfolios(session, request.portfolio_ids)),
                request.force)
