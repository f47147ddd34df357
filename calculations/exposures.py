"""Position and portfolio factor exposures from symbol betas (SPEC §6.3)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class ExposureInput(NamedTuple):
    """One position's dollar sensitivity to its market symbol: signed market value for stocks,
    `dollar_delta` for options (whose `symbol` is then the underlying)."""

    position_id: uuid.UUID
    symbol: str
    dollar_value: float


class PositionExposure(NamedTuple):
    """One (position, factor) cell (a named tuple: a chunk builds ~50 per book, cheaply)."""

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
    """`factor_exposures_books` for one book."""
    return factor_exposures_books([inputs], betas, [equity], factor_order)[0]


def factor_exposures_books(books: Sequence[Sequence[ExposureInput]], betas: Mapping[str, Mapping[str, float]],
                           equities: Sequence[float], factor_order: Sequence[str]) -> list[Exposures]:
    """Every book's exposures in one array pass: exposure_dollar = dollar_value × β for every
    factor the symbol has a beta for (a (position × factor) product over the whole chunk);
    portfolio exposure = Σ positions (summed in position order); portfolio beta = exposure ÷
    equity (NAV, dollars; None when equity is 0).

    A position whose symbol has no betas is skipped (`insufficient_history`). Factors appear in
    `factor_order` (per position, then per book); a factor no position of the book has a beta for
    is left out. Shorts (negative values) reduce exposure.
    """
    items = [item for book in books for item in book]
    book_of = np.repeat(np.arange(len(books)), [len(book) for book in books])
    symbols = sorted({item.symbol for item in items})
    row_of = {symbol: i for i, symbol in enumerate(symbols)}
    matrix = np.zeros((len(symbols), len(factor_order)))
    has = np.zeros((len(symbols), len(factor_order)), dtype=bool)
    known = np.array([bool(betas.get(symbol)) for symbol in symbols], dtype=bool)  # has any beta
    for symbol, i in row_of.items():
        for j, factor in enumerate(factor_order):
            beta = (betas.get(symbol) or {}).get(factor)
            if beta is not None:
                matrix[i, j], has[i, j] = beta, True
    rows = np.array([row_of[item.symbol] for item in items], dtype=np.int64)
    values = np.array([item.dollar_value for item in items], dtype=float)
    cell_beta = matrix[rows] if items else np.zeros((0, len(factor_order)))
    cell_has = has[rows] if items else np.zeros((0, len(factor_order)), dtype=bool)
    cell_dollars = values[:, None] * cell_beta
    with_betas = known[rows] if items else np.zeros(0, dtype=bool)
    # Σ per (book, factor) in position order: bincount adds its weights sequentially
    flat = (book_of[:, None] * len(factor_order) + np.arange(len(factor_order))[None, :])[cell_has]
    size = len(books) * len(factor_order)
    totals = np.bincount(flat, weights=cell_dollars[cell_has], minlength=size).reshape(len(books), -1)
    present = np.bincount(flat, minlength=size).reshape(len(books), -1) > 0
    out = []
    start = 0
    beta_rows, dollar_rows, has_rows = cell_beta.tolist(), cell_dollars.tolist(), cell_has.tolist()
    for b, book in enumerate(books):
        positions: list[PositionExposure] = []
        skipped: dict[uuid.UUID, str] = {}
        for k, item in enumerate(book, start):
            if not with_betas[k]:
                skipped[item.position_id] = "insufficient_history"
                continue
            cells, dollars, mask = beta_rows[k], dollar_rows[k], has_rows[k]
            positions.extend(PositionExposure(item.position_id, item.symbol, factor, cells[j], dollars[j])
                             for j, factor in enumerate(factor_order) if mask[j])
        start += len(book)
        equity = equities[b]
        portfolio = [PortfolioExposure(f, float(totals[b, j]), float(totals[b, j]) / equity if equity else None)
                     for j, f in enumerate(factor_order) if present[b, j]]
        out.append(Exposures(positions, portfolio, len(book) - len(skipped), skipped))
    return out
