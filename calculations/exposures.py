"""Position and portfolio factor exposures from symbol betas (SPEC §6.3)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExposureInput:
    """One position's dollar sensitivity to its market symbol: signed market value for stocks,
    `dollar_delta` for options (whose `symbol` is then the underlying)."""

    position_id: uuid.UUID
    symbol: str
    dollar_value: float


@dataclass(frozen=True)
class PositionExposure:
    position_id: uuid.UUID
    symbol: str
    factor: str
    beta: float
    exposure_dollar: float


@dataclass(frozen=True)
class PortfolioExposure:
    factor: str
    exposure_dollar: float
    beta: float | None  # exposure ÷ equity; None when equity is 0


@dataclass(frozen=True)
class Exposures:
    positions: list[PositionExposure]
    portfolio: list[PortfolioExposure]
    analyzed: int
    skipped: dict[uuid.UUID, str] = field(default_factory=dict)  # position id → reason

    def by_factor(self) -> dict[str, float]:
        """Portfolio exposure in dollars per factor."""
        return {p.factor: p.exposure_dollar for p in self.portfolio}


def factor_exposures(inputs: Sequence[ExposureInput], betas: Mapping[str, Mapping[str, float]],
                     equity: float, factor_order: Sequence[str]) -> Exposures:
    """exposure_dollar = dollar_value × β for every factor the symbol has a beta for; portfolio
    exposure = Σ positions; portfolio beta = exposure ÷ equity (NAV, dollars).

    A position whose symbol has no betas is skipped (`insufficient_history`). Factors appear in
    `factor_order`; a factor no position has a beta for is left out. Shorts (negative values)
    reduce exposure.
    """
    positions: list[PositionExposure] = []
    skipped: dict[uuid.UUID, str] = {}
    totals: dict[str, float] = {}
    for item in inputs:
        symbol_betas = betas.get(item.symbol)
        if not symbol_betas:
            skipped[item.position_id] = "insufficient_history"
            continue
        for factor in factor_order:
            if factor in symbol_betas:
                exposure = item.dollar_value * symbol_betas[factor]
                positions.append(PositionExposure(item.position_id, item.symbol, factor,
                                                  symbol_betas[factor], exposure))
                totals[factor] = totals.get(factor, 0.0) + exposure
    portfolio = [PortfolioExposure(f, totals[f], totals[f] / equity if equity else None)
                 for f in factor_order if f in totals]
    return Exposures(positions, portfolio, len(inputs) - len(skipped), skipped)
