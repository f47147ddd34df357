"""The per-portfolio engines and their registry.

An engine is (name, function, dependencies). The run loop (batch/runner.py) calls the functions
of every registered engine in order for each (portfolio, as-of date), each inside a savepoint
of that unit's transaction. A later engine is added with `register(...)`; the loop is untouched.

An engine function takes a `UnitContext`, may write its result rows through `ctx.session`
(replacing rows for its natural key), and returns a `JobOutcome`. It raises on failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

import pandas as pd
from sqlalchemy.orm import Session

from batch import calendar, repository
from batch.settings import Settings
from batch.sync import HISTORY_SESSIONS
from calculations.positions import PositionInput
from calculations.snapshot import build_snapshot
from calculations.valuation import Valuation, daily_pnl, value_portfolio
from models import PortfolioSnapshot

STALE_AFTER_SESSIONS = 5


@dataclass(frozen=True)
class JobOutcome:
    status: str  # "success" or "skipped"
    result: dict[str, Any]


@dataclass
class UnitContext:
    """Everything an engine may use for one (portfolio, as-of date). Prices are loaded lazily and
    never dated after `as_of` (no look-ahead)."""

    session: Session
    settings: Settings
    portfolio: repository.PortfolioRow
    as_of: date
    positions: list[PositionInput]
    outputs: dict[str, Any] = field(default_factory=dict)  # engine name → in-memory output

    @property
    def portfolio_id(self) -> uuid.UUID:
        return self.portfolio.id

    @cached_property
    def previous_session(self) -> date:
        return calendar.previous_session(self.as_of)

    @cached_property
    def closes(self) -> pd.DataFrame:
        """Closes for every symbol the positions reference (own symbol, underlying), over the
        last HISTORY_SESSIONS sessions ending at `as_of`."""
        symbols = {p.symbol for p in self.positions} | {
            p.underlying for p in self.positions if p.asset_class == "OPTIONS" and p.underlying}
        start = calendar.sessions_back(self.as_of, HISTORY_SESSIONS)[0]
        return repository.load_closes(self.session, symbols, start, self.as_of)


@dataclass(frozen=True)
class Engine:
    name: str
    run: Callable[[UnitContext], JobOutcome]
    depends_on: tuple[str, ...] = ()


ENGINES: list[Engine] = []


def register(engine: Engine) -> Engine:
    """Add an engine after its dependencies (which must already be registered)."""
    known = {e.name for e in ENGINES}
    missing = [d for d in engine.depends_on if d not in known]
    if missing or engine.name in known:
        raise ValueError(f"cannot register engine {engine.name!r}: unknown dependencies {missing} "
                         f"or duplicate name")
    ENGINES.append(engine)
    return engine


# --- valuation (SPEC §6.1) --------------------------------------------------------------------


def run_valuation(ctx: UnitContext) -> JobOutcome:
    stale_before = calendar.sessions_back(ctx.as_of, STALE_AFTER_SESSIONS + 1)[0]
    valuation = value_portfolio(ctx.positions, ctx.closes, ctx.as_of, ctx.portfolio.cash_balance,
                                stale_before=stale_before)
    ctx.outputs["valuation"] = valuation
    return JobOutcome("success", _valuation_result(valuation))


def _valuation_result(v: Valuation) -> dict[str, Any]:
    return {
        "total_value": v.total_value, "long_value": v.long_value, "short_value": v.short_value,
        "gross_exposure": v.gross_exposure, "net_exposure": v.net_exposure,
        "private_value": v.private_value, "cash_value": v.cash_value,
        "num_positions": v.num_positions, "skipped_positions": list(v.skipped),
        "positions": [
            {"position_id": str(p.position.id), "symbol": p.position.symbol,
             "market_value": p.market_value, "price": p.price,
             "price_date": p.price_date.isoformat() if p.price_date else None,
             "price_source": p.price_source, "flags": list(p.flags)}
            for p in v.positions
        ],
    }


# --- snapshot (SPEC §6.7) ---------------------------------------------------------------------


def run_snapshot(ctx: UnitContext) -> JobOutcome:
    valuation: Valuation = ctx.outputs["valuation"]
    pnl = daily_pnl(ctx.positions, ctx.closes, ctx.as_of, ctx.previous_session)
    prior = repository.prior_snapshot(ctx.session, ctx.portfolio_id, ctx.as_of)
    row = build_snapshot(valuation, pnl, ctx.previous_session, prior)
    key = {"portfolio_id": ctx.portfolio_id, "snapshot_date": row.pop("snapshot_date")}
    repository.replace_rows(ctx.session, PortfolioSnapshot, key, [row])
    return JobOutcome("success", {
        "total_value": row["total_value"], "daily_pnl": row["daily_pnl"],
        "daily_return": row["daily_return"], "cumulative_pnl": row["cumulative_pnl"],
        "data_quality": row["data_quality"],
    })


register(Engine("valuation", run_valuation))
register(Engine("snapshot", run_snapshot, depends_on=("valuation",)))
