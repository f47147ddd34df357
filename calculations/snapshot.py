"""Daily portfolio snapshot (SPEC §6.7): one row of values, counts and P&L per session."""

from __future__ import annotations

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


def build_snapshot(valuation: Valuation, pnl: DailyPnl, previous_session: date,
                   prior: PriorSnapshot | None) -> dict[str, Any]:
    """Snapshot columns for `valuation.as_of` (dollars; `daily_return` a fraction).

    `daily_return` = daily P&L ÷ the prior snapshot's total value, only when that snapshot is
    dated at `previous_session` and its total value is non-zero; otherwise None (flagged).
    `cumulative_pnl` = the prior snapshot's cumulative P&L (0 if none) + today's P&L.
    """
    flags: list[str] = []
    if prior is not None and prior.snapshot_date == previous_session and prior.total_value != 0:
        daily_return = pnl.pnl / prior.total_value
    else:
        daily_return = None
        flags.append("no_previous_snapshot" if prior is None or prior.snapshot_date != previous_session
                     else "zero_previous_value")
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
        "daily_return": daily_return,
        "cumulative_pnl": (prior.cumulative_pnl if prior else 0.0) + pnl.pnl,
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
