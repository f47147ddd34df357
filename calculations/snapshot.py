"""Daily portfolio snapshot (SPEC §6.7): one row of values, counts and P&L per session."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from calculations.valuation import BAD_CLOSES_IGNORED, DailyPnl, Valuation


@dataclass(frozen=True)
class PriorSnapshot:
    """The latest stored snapshot before the one being built."""

    snapshot_date: date
    total_value: float
    cumulative_pnl: float


# data_quality flags that depend on the previous snapshot (rewritten whenever the series re-chains)
CHAIN_FLAGS = ("no_previous_snapshot", "zero_previous_value")


@dataclass(frozen=True)
class ChainLink:
    """One stored snapshot as the chain sees it: its P&L does not depend on earlier snapshots,
    its `daily_return` and `cumulative_pnl` do."""

    snapshot_date: date
    previous_session: date  # the NYSE session before `snapshot_date`
    total_value: float  # dollars
    daily_pnl: float  # dollars


@dataclass(frozen=True)
class Chained:
    """The path-dependent columns of one snapshot."""

    snapshot_date: date
    total_value: float
    daily_return: float | None  # fraction; None when `chain_flag` is set
    cumulative_pnl: float  # dollars
    chain_flag: str | None  # one of CHAIN_FLAGS, or None


def chain_step(link: ChainLink, prior: PriorSnapshot | Chained | None) -> Chained:
    """`daily_return` = daily P&L ÷ the prior snapshot's total value, only when that snapshot is
    dated at `link.previous_session` and its total value is non-zero; otherwise None with the
    reason (`no_previous_snapshot`, `zero_previous_value`). `cumulative_pnl` = the prior's
    cumulative P&L (0 without a prior) + today's P&L."""
    if prior is None or prior.snapshot_date != link.previous_session:
        daily_return, flag = None, "no_previous_snapshot"
    elif prior.total_value == 0:
        daily_return, flag = None, "zero_previous_value"
    else:
        daily_return, flag = link.daily_pnl / prior.total_value, None
    cumulative = (prior.cumulative_pnl if prior is not None else 0.0) + link.daily_pnl
    return Chained(link.snapshot_date, link.total_value, daily_return, cumulative, flag)


def rechain(prior: PriorSnapshot | None, links: Sequence[ChainLink]) -> list[Chained]:
    """The path-dependent columns of `links` (ascending dates, every stored snapshot after
    `prior`), chained oldest first from `prior` (None: the series starts at `links[0]`).
    Equal to building the series from scratch in date order. Empty `links` → []."""
    out: list[Chained] = []
    previous: PriorSnapshot | Chained | None = prior
    for link in links:
        previous = chain_step(link, previous)
        out.append(previous)
    return out


def build_snapshot(valuation: Valuation, pnl: DailyPnl, previous_session: date,
                   prior: PriorSnapshot | None) -> dict[str, Any]:
    """Snapshot columns for `valuation.as_of` (dollars; `daily_return` a fraction).

    `daily_return` and `cumulative_pnl` chain from `prior` as `chain_step` says (flagged when
    `daily_return` is None).
    """
    chained = chain_step(ChainLink(valuation.as_of, previous_session, valuation.total_value, pnl.pnl), prior)
    flags: list[str] = [chained.chain_flag] if chained.chain_flag else []
    stale = sorted({p.position.symbol for p in valuation.positions if "stale_prices" in p.flags})
    unmodelled = sorted({p.position.symbol for p in valuation.positions
                         if "model_price_unavailable" in p.flags})
    ignored = sorted({p.position.symbol for p in valuation.positions if BAD_CLOSES_IGNORED in p.flags})
    if stale:
        flags.append("stale_prices")
    if ignored:
        flags.append(BAD_CLOSES_IGNORED)
    if unmodelled:
        flags.append("model_price_unavailable")
    if pnl.unpriced:
        flags.append("pnl_incomplete")
    market_positions = valuation.num_positions - valuation.num_private
    if valuation.skipped:
        flag = "missing_prices"
    elif market_positions == 0:
        flag = "no_public_positions"
    elif stale:
        flag = "stale_prices"
    else:
        flag = "ok"
    messages = {
        "missing_prices": f"{len(valuation.skipped)} position(s) could not be valued",
        "no_public_positions": "Portfolio holds no public or option positions; valued at marks",
        "stale_prices": f"prices older than 5 sessions for {', '.join(stale)}",
        "ok": "all positions valued",
    }
    return {
        "snapshot_date": valuation.as_of,
        "total_value": valuation.total_value,
        "cash_value": valuation.cash_value,
        "long_value": valuation.long_value,
        "short_value": valuation.short_value,
        "gross_exposure": valuation.gross_exposure,
        "net_exposure": valuation.net_exposure,
        "private_value": valuation.private_value,
        "daily_pnl": pnl.pnl,
        "daily_return": chained.daily_return,
        "cumulative_pnl": chained.cumulative_pnl,
        "num_positions": valuation.num_positions,
        "num_long": valuation.num_long,
        "num_short": valuation.num_short,
        "num_private": valuation.num_private,
        "data_quality": {
            "flag": flag,
            "message": messages[flag],
            "positions_analyzed": valuation.num_positions - len(valuation.skipped),
            "positions_total": valuation.num_positions,
            "positions_skipped": len(valuation.skipped),
            "data_days": 1,
            "flags": flags,
            "skipped_positions": list(valuation.skipped),
            "stale_symbols": stale,
            "bad_close_symbols": ignored,
            "unpriced_for_pnl": list(pnl.unpriced),
        },
    }
