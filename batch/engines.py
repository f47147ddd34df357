"""The engines and their registries.

Two kinds, each registered as (name, function[, dependencies]):

- **global engines** run once per as-of date before the portfolios (symbol betas, factor
  covariance); each commits on its own and leaves its in-memory output in a `DateContext`;
- **portfolio engines** run in registration order over a `Chunk` — the (portfolio, as-of date)
  units of one chunk at once, on arrays — and return one outcome per unit. Dependencies may
  name engines of either kind.

The run loop (batch/compute.py) knows nothing about what an engine computes: a new engine is a
function plus a `register(...)` call here. A portfolio engine reads the units' inputs (loaded
beforehand, a chunk at a time; no engine queries the database) and the date's shared context,
calls the pure functions of `calculations/`, stages each unit's result rows for its natural key
(`Unit.replace`; the runner writes them in bulk once every engine of the unit has succeeded),
and returns a `JobOutcome` per unit; it raises on failure. "Nothing to compute" is a `skipped`
outcome carrying the SPEC §8 payload.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import delete
from sqlalchemy.orm import Session

from batch import calendar, repository
from batch.db import bulk_insert, bulk_insert_columns
from batch.settings import Settings
from batch.sync import HISTORY_SESSIONS
from calculations import correlations as corr
from calculations import factors
from calculations.exposures import ExposureInput, Exposures, factor_exposures_books
from calculations.greeks import PositionGreeks, option_greeks_books
from calculations.positions import (
    OPTIONS,
    PRIVATE,
    PUBLIC,
    PositionInput,
    price_symbols,
)
from calculations.prices import LatestCloses, usable_closes
from calculations.scenarios import (
    DEFAULT_DURATION,
    MARKET_SHOCKS,
    OptionRevaluation,
    ScenarioMoves,
    StressResult,
    market_risk,
    revaluation_pnl,
    scenario_moves,
    stress_summary,
    stress_tests_books,
)
from calculations.snapshot import build_snapshot
from calculations.valuation import BAD_CLOSES_IGNORED, Book, DailyPnl, Valuation, daily_pnl_books, value_books
from models import (
    CorrelationCluster,
    CorrelationMatrix,
    CorrelationRun,
    FactorCorrelation,
    MarketRiskResult,
    PairwiseCorrelation,
    PortfolioFactorExposure,
    PortfolioSnapshot,
    PositionFactorExposure,
    PositionValuation,
    StressTestResult,
    SymbolFactorBeta,
)
from models import (
    PositionGreeks as PositionGreeksRow,
)

STALE_AFTER_SESSIONS = 5


@dataclass(frozen=True)
class JobOutcome:
    status: str  # "success" or "skipped"
    result: dict[str, Any]


@dataclass(frozen=True)
class PriceWindow:
    """The stored closes of a run's market symbols over every session its as-of dates need
    (`history` sessions ending at the first date, through the last), read once
    (`repository.load_closes`) and sliced for each date by `DateContext.load_closes`. Raw: a
    non-positive or non-finite close is kept as stored (each slice is cleaned, `usable_closes`)."""

    closes: pd.DataFrame  # indexed by every session of the range (ascending), one column per symbol
    symbols: frozenset[str]
    _betas: dict[tuple, WindowBetas] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def load(cls, session: Session, symbols: set[str] | list[str], first: date, last: date,
             history: int) -> PriceWindow:
        """One read of `symbols` from `history` sessions before `first` (inclusive) to `last`."""
        days = calendar.sessions_back(last, history + calendar.session_offset(first, last))
        frame = repository.load_closes(session, symbols, days[0], last)
        return cls(frame.reindex(index=pd.Index(days, dtype=object), columns=sorted(set(symbols))),
                   frozenset(symbols))

    @property
    def first_session(self) -> date:
        return self.closes.index[0]

    @property
    def last_session(self) -> date:
        return self.closes.index[-1]

    def slice(self, symbols: set[str] | list[str], as_of: date, sessions: int) -> pd.DataFrame:
        """Exactly what `repository.session_closes(symbols, as_of, sessions)` reads: the
        `sessions` sessions ending at `as_of` (nothing after it), one column per symbol. Raises
        ValueError for sessions or symbols outside the window."""
        days = calendar.sessions_back(as_of, sessions)
        missing = set(symbols) - self.symbols
        if days[0] < self.first_session or as_of > self.last_session or missing:
            raise ValueError(f"closes of {sorted(missing)[:5] or 'its symbols'} {days[0]}..{as_of} are outside "
                             f"the price window {self.first_session}..{self.last_session}")
        return self.closes.reindex(index=pd.Index(days, dtype=object), columns=sorted(set(symbols)))

    def symbol_betas(self, proxies: Mapping[str, str | None]) -> WindowBetas | None:
        """The batched symbol-beta fits of this window for the factor `proxies` (made on first
        use, kept for the run's later dates); None when a proxy is not one of its symbols."""
        key = tuple(sorted(proxies.items()))
        cached = self._betas.get(key)
        if cached is None:
            if not {p for p in proxies.values() if p} <= self.symbols:
                return None
            self._betas.clear()  # one proxy mapping at a time
            cached = self._betas[key] = WindowBetas(self, proxies)
        return cached


BETA_BLOCK_DATES = 32  # as-of dates fitted by one batched solve (bounds the fits kept in memory)


class WindowBetas:
    """Every symbol's betas (SPEC §6.3) on the sessions of a `PriceWindow`, fitted for
    BETA_BLOCK_DATES dates at a time by one batched solve (`factors.fit_symbol_betas_dates`), the
    first time a date of the block asks (`fit`); each date then takes its own. A date's fit is
    what `run_symbol_betas` fits for it alone from its `market_closes`: the same closes (the
    window's, bad ones read as missing), returns, factor returns and usable factors of that
    date's last BETA_WINDOW sessions, every symbol's estimates depending only on its own returns.
    Bad closes are not recorded here: each date's `DateContext.load_closes` records its own."""

    def __init__(self, window: PriceWindow, proxies: Mapping[str, str | None]) -> None:
        self.proxies = dict(proxies)
        self.proxy_symbols = sorted({p for p in proxies.values() if p})
        self.returns = factors.simple_returns(usable_closes(window.closes)[0])  # one row per session after the first
        self.proxy_returns = self.returns[self.proxy_symbols]
        self.factor_returns = factors.factor_returns(self.proxy_returns, self.proxies)[0]
        self.position = {day: i for i, day in enumerate(self.returns.index)}
        self.fits: dict[date, factors.BetaFit] = {}  # fitted, not yet taken

    def fit(self, as_of: date, symbols: list[str]) -> factors.BetaFit | None:
        """`as_of`'s fit of `symbols` (each a window symbol), once per date (a date's fit is
        dropped once taken); None when the window has fewer than BETA_WINDOW returns up to it."""
        at = self.position.get(as_of)
        if at is None or at + 1 < factors.BETA_WINDOW:
            return None
        if as_of not in self.fits:
            days = self.returns.index[at:at + BETA_BLOCK_DATES]
            self.fits = dict(zip(days, self._fit_block(at, len(days)), strict=True))
        return self.fits.pop(as_of).take(symbols)

    def _fit_block(self, first: int, count: int) -> list[factors.BetaFit]:
        """The fits of the `count` sessions from row `first` on: each date's usable factors over
        its own last BETA_WINDOW returns (as `run_symbol_betas` decides them), one solve."""
        dates = []
        for stop in range(first + 1, first + count + 1):
            proxy_returns = self.proxy_returns.iloc[stop - factors.BETA_WINDOW:stop]
            usable, unavailable = usable_factors(*factors.factor_returns(proxy_returns, self.proxies))
            dates.append(factors.FitDate(stop, tuple(usable.columns), unavailable))
        return factors.fit_symbol_betas_dates(self.returns, self.factor_returns, dates)


@dataclass(frozen=True)
class ChunkCloses:
    """The closes a chunk's units share (`DateContext.closes_with`): the date's market frame
    beside the chunk's own closes, as a frame and prepared for look-ups."""

    own: repository.OwnCloses
    frame: pd.DataFrame
    prices: LatestCloses


@dataclass
class DateContext:
    """Shared by everything computed for one as-of date: the global engines write `outputs`,
    the portfolio engines read them. `session` is set only while a global engine runs.
    `window` holds the run's closes (read once for all its dates); it is not sent to worker
    processes, whose portfolio engines read `market_closes`."""

    settings: Settings
    as_of: date
    portfolio_ids: list[uuid.UUID] | None  # the run's --portfolio filter (None: all)
    window: PriceWindow | None = None  # the global engines' closes; None: read from the database
    outputs: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # global engine → error
    session: Session | None = None
    # closes of every synced market symbol over HISTORY_SESSIONS sessions ending at as_of
    market_closes: pd.DataFrame | None = None
    stress_scenarios: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # active ones
    # symbol → sessions whose stored close was non-positive or non-finite, read as missing
    bad_closes: dict[str, list[date]] = field(default_factory=dict)
    _chunk_closes: ChunkCloses | None = None  # see closes_with

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for the workers without the window and the session (they use neither)."""
        return {**self.__dict__, "window": None, "session": None, "_chunk_closes": None}

    def load_closes(self, symbols: set[str] | list[str], sessions: int) -> pd.DataFrame:
        """Closes over the `sessions` sessions ending at `as_of` (as repository.session_closes
        reads them; a slice of `window`) with every non-positive or non-finite close read as
        missing and recorded in `bad_closes`: the one way the global engines read closes. A
        symbol the window lacks (an input row added since it was read) is read on its own."""
        assert self.session is not None
        wanted = set(symbols)
        if self.window is None:
            raw = repository.session_closes(self.session, wanted, self.as_of, sessions)
        else:
            extra = wanted - self.window.symbols
            raw = self.window.slice(wanted - extra, self.as_of, sessions)
            if extra:
                raw = pd.concat([raw, repository.session_closes(self.session, extra, self.as_of, sessions)],
                                axis=1)[sorted(wanted)]
        closes, bad = usable_closes(raw)
        for symbol, days in bad.items():
            self.bad_closes[symbol] = sorted(set(self.bad_closes.get(symbol, [])) | set(days))
        return closes

    @cached_property
    def market_symbols(self) -> frozenset[str]:
        """The columns of `market_closes` (set once the symbol-betas engine has loaded them)."""
        return frozenset() if self.market_closes is None else frozenset(self.market_closes.columns)

    def closes_with(self, own: repository.OwnCloses) -> ChunkCloses:
        """`market_closes` beside a chunk's own closes (symbols outside it), as a frame and
        prepared for look-ups: built once per chunk (the last one kept) and shared by its units.
        Only `own` when the market closes were never loaded."""
        if self._chunk_closes is not None and self._chunk_closes.own is own:
            return self._chunk_closes
        frame = own.frame if self.market_closes is None else pd.concat(
            [self.market_closes, own.frame.drop(columns=[c for c in own.frame.columns
                                                          if c in self.market_symbols])], axis=1)
        self._chunk_closes = ChunkCloses(own, frame, LatestCloses(frame))
        return self._chunk_closes

    @cached_property
    def latest_closes(self) -> LatestCloses:
        """`market_closes` prepared for the chunk-wide price look-ups of valuation and P&L (empty
        when the market closes were never loaded: every position is then priced from its unit's
        own closes)."""
        return LatestCloses(self.market_closes if self.market_closes is not None else pd.DataFrame())

    @cached_property
    def return_panel(self) -> corr.ReturnPanel | None:
        """The last CORRELATION_WINDOW log returns of every column of `market_closes`, prepared
        once for the date (SPEC §6.6): each portfolio's correlation matrix is a block of it.
        None when the market closes were never loaded (the symbol-betas engine failed first)."""
        if self.market_closes is None:
            return None
        return corr.closes_panel(self.market_closes)


@dataclass
class Unit:
    """One (portfolio, as-of date) of a chunk: its inputs (loaded beforehand; nothing dated after
    `as_of`), what its engines leave for the engines after them (`outputs`: engine name → value)
    and the rows staged for it (`writes`: table → (key, rows), written by the runner once every
    engine of the unit has succeeded)."""

    portfolio: repository.PortfolioRow
    as_of: date
    inputs: repository.UnitInputs
    outputs: dict[str, Any] = field(default_factory=dict)
    writes: dict[type, tuple[dict[str, Any], list[dict[str, Any]]]] = field(default_factory=dict)

    @property
    def portfolio_id(self) -> uuid.UUID:
        return self.portfolio.id

    @property
    def positions(self) -> list[PositionInput]:
        return self.inputs.positions

    @cached_property
    def held(self) -> list[PositionInput]:
        """Positions held at the as-of close."""
        return [p for p in self.positions if p.is_held_on(self.as_of)]

    def replace(self, table: type, rows: list[dict[str, Any]], date_column: str = "as_of_date") -> int:
        """Stage `rows` as this portfolio's rows of `table` for the as-of date (a later call for
        the same table supersedes an earlier one)."""
        self.writes[table] = ({"portfolio_id": self.portfolio_id, date_column: self.as_of}, list(rows))
        return len(rows)

    def stored_in(self, table: type) -> dict[str, Any]:
        """SPEC §8: a map that `table` holds, recorded in the job record as the table's name and
        the number of rows this unit stages for it. Raises if the unit stages nothing for `table`
        (a record must never point at a table its rows did not go to)."""
        if table not in self.writes:
            raise RuntimeError(f"job record points at {table.__tablename__}, but the unit stages no rows for it")
        return stored_in(table, len(self.writes[table][1]))


@dataclass
class Chunk:
    """What a portfolio engine computes over: units of one as-of date (in chunk order), the run's
    settings and the date's shared context. No engine queries the database."""

    settings: Settings
    shared: DateContext
    units: list[Unit]

    @property
    def as_of(self) -> date:
        return self.shared.as_of

    @cached_property
    def previous_session(self) -> date:
        return calendar.previous_session(self.as_of)

    def closes(self, unit: Unit) -> ChunkCloses:
        """The closes `unit` is priced from over the HISTORY_SESSIONS sessions ending at `as_of`:
        the date's market frame beside its chunk's own closes (built once per chunk and shared,
        `DateContext.closes_with`). The date's array look-up (`DateContext.latest_closes`) prices
        the PUBLIC positions; these serve the others (options, PRIVATE marks, symbols outside the
        market frame)."""
        return self.shared.closes_with(unit.inputs.own_closes)

    def bad_closes(self, unit: Unit) -> dict[str, list[date]]:
        """Symbol → sessions whose stored close the pricing of `unit` reads as missing
        (non-positive or non-finite), for the symbols its positions are priced from."""
        symbols = price_symbols(unit.positions)
        bad = {s: d for s, d in self.shared.bad_closes.items() if s in symbols}
        bad.update((s, d) for s, d in unit.inputs.own_closes.bad.items() if s in symbols)
        return bad


@dataclass(frozen=True)
class Engine:
    """A portfolio engine: `run` computes every unit of a chunk at once and returns one outcome
    per unit, in their order, staging each unit's rows on it. It raises only for what it cannot
    pin on one unit; the runner then runs it for each unit alone (a chunk of one), so only the
    units it fails for fail."""

    name: str
    run: Callable[[Chunk], list[JobOutcome]]
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class GlobalEngine:
    name: str
    run: Callable[[DateContext], JobOutcome]


ENGINES: list[Engine] = []
GLOBAL_ENGINES: list[GlobalEngine] = []


def register(engine: Engine | GlobalEngine) -> Engine | GlobalEngine:
    """Add an engine after its dependencies (which must already be registered)."""
    known = {e.name for e in ENGINES} | {e.name for e in GLOBAL_ENGINES}
    missing = [d for d in getattr(engine, "depends_on", ()) if d not in known]
    if missing or engine.name in known:
        raise ValueError(f"cannot register engine {engine.name!r}: unknown dependencies {missing} "
                         "or duplicate name")
    (GLOBAL_ENGINES if isinstance(engine, GlobalEngine) else ENGINES).append(engine)
    return engine


def _quality(flag: str, message: str, analyzed: int, total: int | None, data_days: int,
             **extra: Any) -> dict[str, Any]:
    """SPEC §8 `data_quality`. `total` is None when the positions were never loaded (a unit
    skipped for the deadline or as already complete)."""
    return {"flag": flag, "message": message, "positions_analyzed": analyzed,
            "positions_total": total, "positions_skipped": None if total is None else total - analyzed,
            "data_days": data_days, **extra}


# --- global: symbol betas (SPEC §6.3) --------------------------------------------------------


def usable_factors(frame: pd.DataFrame, unavailable: dict[str, str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Drop factor columns that cannot be estimated on: fewer than MIN_OBSERVATIONS returns in
    the window (`insufficient_history`) or no variation (`zero_variance`, e.g. two factors given
    the same proxy). Returns the kept columns and every unavailable factor with its reason."""
    unavailable = dict(unavailable)
    for name in frame.columns:
        column = frame[name].dropna()
        if len(column) < factors.MIN_OBSERVATIONS:
            unavailable[name] = "insufficient_history"
        elif float(column.std()) == 0.0:
            unavailable[name] = "zero_variance"
    if factors.MARKET in unavailable:  # style returns are defined in excess of the market
        for name in frame.columns:
            if name not in (factors.MARKET, factors.RATES):
                unavailable.setdefault(name, "factor_unavailable")
    return frame.drop(columns=[c for c in frame.columns if c in unavailable]), unavailable



@dataclass(frozen=True)
class SymbolBetas:
    betas: dict[str, dict[str, float]]  # symbol → factor → beta (capped), available factors only
    stats: dict[str, dict[str, Any]]  # symbol → r_squared, observations
    unavailable: dict[str, str]  # factor → reason
    zero_variance: frozenset[str] = frozenset()  # symbols fitted without betas (constant returns)


def run_symbol_betas(ctx: DateContext) -> JobOutcome:
    """Fit every synced symbol's betas once for the date, in one batched pass.

    A run restricted with --portfolio reuses the betas already stored for the date and fits only
    symbols without them, so it never changes another portfolio's inputs.
    """
    s = ctx.session
    proxies = repository.factor_proxies(s)
    proxy_symbols = sorted({p for p in proxies.values() if p})
    symbols = repository.symbols_held(s, ctx.as_of, ctx.as_of, ctx.portfolio_ids)
    # one load of every market symbol's history for the date, shared by all portfolios
    ctx.market_closes = ctx.load_closes(set(symbols) | set(proxy_symbols), HISTORY_SESSIONS)
    stored = repository.stored_symbol_betas(s, symbols, ctx.as_of) if ctx.portfolio_ids else []
    reused = {r.symbol for r in stored}
    to_fit = [sym for sym in symbols if sym not in reused]
    fit = _symbol_beta_fit(ctx, to_fit, proxies)
    all_unavailable = dict(fit.unavailable)
    fitted = fit.fitted_symbols()
    columns = _symbol_beta_columns(fit, fitted, all_unavailable)
    stale = delete(SymbolFactorBeta).where(SymbolFactorBeta.as_of_date == ctx.as_of)
    if ctx.portfolio_ids:
        stale = stale.where(SymbolFactorBeta.symbol.in_(to_fit))
    s.execute(stale)
    written = bulk_insert_columns(s, SymbolFactorBeta, columns,
                                  {"as_of_date": ctx.as_of, "window_days": fit.window_days})
    ctx.outputs["symbol_betas"] = _symbol_betas_output(fit, stored, all_unavailable)
    capped_cells = np.nonzero(fit.capped)
    return JobOutcome("success", {
        "symbols": len(symbols), "fitted": len(fitted), "reused": len(reused), "skipped": fit.skipped,
        "factor_unavailable": all_unavailable, "vif": fit.vif,
        "capped": sorted({f"{fit.symbols[i]}:{fit.factors[j]}" for i, j in zip(*capped_cells, strict=True)}),
        "degenerate": {flag: sorted({fit.symbols[i] for i in np.flatnonzero((fit.quality == flag).any(axis=1))})
                       for flag in (factors.EXACT_FIT, factors.ZERO_VARIANCE)},
        "window_days": fit.window_days, "rows_written": written,
        "bad_closes": {sym: [d.isoformat() for d in days] for sym, days in ctx.bad_closes.items()},
    })


def _symbol_beta_fit(ctx: DateContext, to_fit: list[str], proxies: dict[str, str | None]) -> factors.BetaFit:
    """The date's fit of `to_fit`: taken from the run's batched fit of its price window when the
    window holds every symbol and proxy (`WindowBetas`), else fitted for the date alone from its
    `market_closes` (no window, or a symbol added since it was read) — the same numbers."""
    batch = ctx.window.symbol_betas(proxies) if ctx.window is not None and set(to_fit) <= ctx.window.symbols else None
    fit = batch.fit(ctx.as_of, to_fit) if batch is not None else None
    if fit is not None:
        return fit
    proxy_symbols = sorted({p for p in proxies.values() if p})
    closes = ctx.market_closes.reindex(columns=sorted(set(to_fit) | set(proxy_symbols)))
    returns = factors.simple_returns(closes.iloc[-(factors.BETA_WINDOW + 1):])
    factor_frame, unavailable = usable_factors(*factors.factor_returns(returns[proxy_symbols], proxies))
    return factors.fit_symbol_betas(returns[to_fit], factor_frame, unavailable)


def _symbol_beta_columns(fit: factors.BetaFit, fitted: list[str],
                         unavailable: dict[str, str]) -> dict[str, Any]:
    """The `symbol_factor_betas` rows of a fit, column-wise (as_of_date and window_days are
    constants): one per fitted (symbol, factor) cell, then one NULL row per fitted symbol and
    unavailable factor carrying the reason. A cell's quality_flag is its degenerate-fit flag,
    else full_history when its fit used the whole window, else limited_history."""
    rows, cols = np.nonzero(fit.fitted)
    observations = fit.observations[rows, cols]
    history = np.where(observations >= fit.window_days, "full_history", "limited_history").astype(object)
    degenerate = fit.quality[rows, cols]
    flags = np.where(degenerate == None, history, degenerate)  # noqa: E711 (elementwise)
    symbols = np.array(fit.symbols, dtype=object)
    names = np.array(fit.factors, dtype=object)
    n_missing = len(fitted) * len(unavailable)
    missing_symbols = np.repeat(np.array(fitted, dtype=object), len(unavailable))
    missing_factors = np.tile(np.array(list(unavailable), dtype=object), len(fitted))
    missing_flags = np.tile(np.array(list(unavailable.values()), dtype=object), len(fitted))
    nothing = np.full(n_missing, np.nan)
    return {
        "symbol": np.concatenate([symbols[rows], missing_symbols]),
        "factor": np.concatenate([names[cols], missing_factors]),
        "beta": np.concatenate([fit.beta[rows, cols], nothing]),
        "std_error": np.concatenate([fit.std_error[rows, cols], nothing]),
        "t_stat": np.concatenate([fit.t_stat[rows, cols], nothing]),
        "r_squared": np.concatenate([fit.r_squared[rows, cols], nothing]),
        "observations": np.concatenate([observations, np.zeros(n_missing, dtype=np.int64)]),
        "capped": np.concatenate([fit.capped[rows, cols], np.zeros(n_missing, dtype=bool)]),
        "quality_flag": np.concatenate([flags, missing_flags]),
    }


def _symbol_betas_output(fit: factors.BetaFit, stored: list[SymbolFactorBeta],
                         unavailable: dict[str, str]) -> SymbolBetas:
    """The in-memory `SymbolBetas` of a fit plus the rows reused from storage: betas where a
    cell has one, the Market cell's r_squared and observations as a symbol's stats, and the
    symbols whose returns were constant (zero_variance)."""
    betas: dict[str, dict[str, float]] = {}
    stats: dict[str, dict[str, Any]] = {}
    zero_variance: set[str] = set()
    for r in stored:
        if r.beta is None:
            if r.quality_flag == factors.ZERO_VARIANCE:
                zero_variance.add(r.symbol)
            continue
        betas.setdefault(r.symbol, {})[r.factor] = float(r.beta)
        if r.factor == factors.MARKET:
            stats[r.symbol] = {"r_squared": r.r_squared, "observations": r.observations}
    has_beta = fit.fitted & ~np.isnan(fit.beta)
    names = fit.factors
    for symbol, row, keep in zip(fit.symbols, fit.beta.tolist(), has_beta.tolist(), strict=True):
        if not any(keep):
            continue
        betas[symbol] = (dict(zip(names, row, strict=True)) if all(keep)  # the usual: every fitted factor
                         else {name: value for name, value, k in zip(names, row, keep, strict=True) if k})
    if factors.MARKET in names:
        m = names.index(factors.MARKET)
        r_squared = fit.r_squared[:, m].tolist()
        observations = fit.observations[:, m].tolist()
        for i in np.flatnonzero(has_beta[:, m]).tolist():
            r2 = r_squared[i]
            stats[fit.symbols[i]] = {"r_squared": None if r2 != r2 else r2, "observations": observations[i]}
    zero_variance.update(fit.symbols[i] for i in
                         np.flatnonzero((fit.quality == factors.ZERO_VARIANCE).any(axis=1)).tolist())
    return SymbolBetas(betas, stats, unavailable, frozenset(zero_variance))


# --- global: factor covariance and correlations (SPEC §6.5, §6.6) ------------------------------


@dataclass(frozen=True)
class FactorCovariance:
    covariance: pd.DataFrame | None  # factor × factor, daily returns; None when too little data
    observations: int
    unavailable: dict[str, str]


def run_factor_correlations(ctx: DateContext) -> JobOutcome:
    """EWMA (λ = 0.94) covariance of the factor returns over 252 sessions; correlations stored
    once per as-of date, each unordered pair (and the diagonal) once, in factor order. A factor
    with fewer than MIN_OBSERVATIONS returns in the window, or with zero variance, is left out
    (reported), so one short history never empties the matrix for the others."""
    s = ctx.session
    proxies = repository.factor_proxies(s)
    proxy_symbols = sorted({p for p in proxies.values() if p})
    closes = ctx.load_closes(proxy_symbols, factors.COVARIANCE_WINDOW + 1)
    factor_frame, unavailable = usable_factors(*factors.factor_returns(factors.simple_returns(closes), proxies))
    s.execute(delete(FactorCorrelation).where(FactorCorrelation.as_of_date == ctx.as_of))
    result = {"factors": [], "observations": 0, "decay": factors.EWMA_LAMBDA,
              "factor_unavailable": unavailable, "rows_written": 0, "reason": None}
    if factor_frame.shape[1] == 0 or factor_frame.dropna().shape[0] < factors.MIN_OBSERVATIONS:
        ctx.outputs["factor_correlations"] = FactorCovariance(None, 0, unavailable)
        return JobOutcome("skipped", {**result, "reason": "insufficient_history"})
    cov, observations = factors.ewma_covariance(factor_frame)
    correlation = factors.correlation_from_covariance(cov)
    names = list(cov.index)
    rows = [{"as_of_date": ctx.as_of, "factor_1": a, "factor_2": b,
             "correlation": float(correlation.loc[a, b]), "observations": observations,
             "decay": factors.EWMA_LAMBDA}
            for i, a in enumerate(names) for b in names[i:]]
    bulk_insert(s, FactorCorrelation, rows)
    ctx.outputs["factor_correlations"] = FactorCovariance(cov, observations, unavailable)
    return JobOutcome("success", {**result, "factors": names, "observations": observations,
                                  "rows_written": len(rows)})


# --- job records: summaries with the same keys whether computed or skipped (SPEC §8) ---------
#
# A job record is a summary, not a second copy of the results: a per-position, per-pair,
# per-factor or per-scenario map that a result table holds is recorded as `stored_in(...)`, and
# a list that grows with the book is cut by `capped(...)`, so the seven records of a unit stay
# under 4 KB of JSON (tests/batch/test_job_records.py measures them as stored).

RECORD_LIST_CAP = 5  # entries kept of a list or map that grows with the book


def stored_in(table: type, rows: int) -> dict[str, Any]:
    """`{"stored_in": <table name>, "rows": n}`: the map is in `table`, n rows for this unit."""
    return {"stored_in": table.__tablename__, "rows": rows}


def capped(record: dict[str, Any], *keys: str, notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """`record` with each list or map at `keys` cut to its first RECORD_LIST_CAP entries. A cut
    one is said so: `<key>_count` (its exact length) and `<key>_truncated: true` are added to
    `notes` (default: beside it, in the returned copy; a dict the caller passes when `record`'s
    top-level keys must not change). An uncut one is left exactly as it was."""
    out = dict(record)
    for key in keys:
        values = out.get(key)
        if values is None or len(values) <= RECORD_LIST_CAP:
            continue
        out[key] = (dict(list(values.items())[:RECORD_LIST_CAP]) if isinstance(values, dict)
                    else list(values)[:RECORD_LIST_CAP])
        target = out if notes is None else notes
        target[f"{key}_count"] = len(values)
        target[f"{key}_truncated"] = True
    return out


def valuation_payload(flag: str, message: str, total: int | None, **values: Any) -> dict[str, Any]:
    """`positions` points at `position_valuations` (one row per valued position: price, source,
    market value, flags); `flags` counts the positions carrying each flag ({} when none is)."""
    base = {"total_value": None, "long_value": None, "short_value": None, "gross_exposure": None,
            "net_exposure": None, "private_value": None, "cash_value": None, "num_positions": total,
            "skipped_positions": [], "positions": {}, "flags": {}}
    analyzed = values.pop("analyzed", 0)
    quality = _quality(flag, message, analyzed, total, 1 if analyzed else 0)
    return {**capped({**base, **values}, "skipped_positions", notes=quality), "data_quality": quality}


def greeks_payload(flag: str, message: str, total: int | None, **values: Any) -> dict[str, Any]:
    analyzed = values.pop("analyzed", 0)
    return {"totals": {}, "positions": {}, "records_stored": 0, **values,
            "data_quality": _quality(flag, message, analyzed, total, 0)}


def factors_payload(flag: str, message: str, total: int | None, portfolio_id: uuid.UUID,
                    as_of: date) -> dict[str, Any]:
    """SPEC §8 factor-analysis skip payload (flag `no_public_positions`, or why it did not run)."""
    return {
        "factor_betas": {}, "position_betas": {}, "regression_stats": {},
        "data_quality": {"flag": flag, "quality_flag": flag, "message": message,
                         "positions_analyzed": 0, "positions_total": total,
                         "positions_skipped": total, "data_days": 0},
        "metadata": {"calculation_date": as_of.isoformat(), "regression_window_days": 0,
                     "status": "SKIPPED_NO_PUBLIC_POSITIONS" if flag == NO_PUBLIC else f"SKIPPED_{flag.upper()}",
                     "portfolio_id": str(portfolio_id)},
        "storage_results": {"position_storage": {"records_stored": 0, "skipped": True},
                            "portfolio_storage": {"records_stored": 0, "skipped": True}},
    }


def market_risk_payload(flag: str, message: str, total: int | None, **values: Any) -> dict[str, Any]:
    analyzed = values.pop("analyzed", 0)
    skipped = flag not in ("full_history", "factor_unavailable")
    quality = _quality(flag, message, analyzed, total, 0)
    record = {"skipped": skipped, "skip_reason": flag if skipped else None, "scenarios": {},
              "unavailable": {}, "options_revalued": 0, "options_not_revalued": {},
              "duration_years": DEFAULT_DURATION, **values}
    return {**capped(record, "options_not_revalued", notes=quality), "data_quality": quality}


def stress_payload(flag: str, message: str, total: int | None, portfolio_id: uuid.UUID, as_of: date,
                   portfolio_name: str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """SPEC §8 stress-test skip payload."""
    return {
        "stress_test_results": {"direct_impacts": {}, "correlated_impacts": {}, "summary_stats": {},
                                "portfolio_id": str(portfolio_id), "calculation_date": as_of.isoformat(),
                                "skipped": True,
                                "skip_reason": "no_factor_exposures" if flag == NO_PUBLIC else flag},
        "portfolio_name": portfolio_name, "correlation_matrix_info": info or {},
        "data_quality": _quality(flag, message, 0, total, 0),
    }


def correlations_payload(flag: str, message: str, total: int | None, as_of: date,
                         **quality: Any) -> dict[str, Any]:
    """SPEC §8 correlations skip payload."""
    return {"status": "SKIPPED", "message": "No public positions with sufficient data",
            "correlation_matrix": {}, "clusters": [],
            "metrics": {"avg_correlation": 0.0, "positions_analyzed": 0},
            "calculation_date": as_of.isoformat(), "duration_days": corr.CORRELATION_WINDOW,
            "data_quality": capped(_quality(flag, message, 0, total, 0, positions_merged=0, **quality),
                                   "excluded")}


def snapshot_payload(flag: str, message: str, total: int | None, **values: Any) -> dict[str, Any]:
    """`greeks` (computed) points at the snapshot row, whose portfolio Greek columns hold them
    (all of them are in the greeks record); `data_quality` is the stored snapshot's, with its
    per-symbol lists capped."""
    quality = values.pop("data_quality", None) or _quality(flag, message, 0, total, 0)
    return {"total_value": None, "daily_pnl": None, "daily_return": None, "cumulative_pnl": None,
            "market_beta": None, "greeks": {}, **values,
            "data_quality": capped(quality, "skipped_positions", "stale_symbols", "bad_close_symbols",
                                   "unpriced_for_pnl")}


NO_PUBLIC = "no_public_positions"


def skipped_result(engine: str, portfolio: repository.PortfolioRow, as_of: date, total: int | None,
                   flag: str, message: str) -> dict[str, Any]:
    """The result recorded for `engine` when it did not run (`upstream_failed`, `deadline`,
    `already_complete`): the engine's own keys, with that flag."""
    if engine == "factors":
        return factors_payload(flag, message, total, portfolio.id, as_of)
    if engine == "stress_tests":
        return stress_payload(flag, message, total, portfolio.id, as_of, portfolio.name)
    if engine == "correlations":
        return correlations_payload(flag, message, total, as_of)
    builders = {"valuation": valuation_payload, "greeks": greeks_payload,
                "market_risk": market_risk_payload, "snapshot": snapshot_payload}
    builder = builders.get(engine)
    return builder(flag, message, total) if builder else {"data_quality": _quality(flag, message, 0, total, 0)}


# --- valuation (SPEC §6.1) --------------------------------------------------------------------


def run_valuation(chunk: Chunk) -> list[JobOutcome]:
    """Value every book of the chunk at once (SPEC §6.1, `value_books`) and stage one
    `position_valuations` row per position valued, priced or not (an unpriced one: NULL price and
    market value, its reason in `flags`)."""
    units = chunk.units
    stale_before = calendar.sessions_back(chunk.as_of, STALE_AFTER_SESSIONS + 1)[0]
    valuations = value_books([Book(u.positions, u.portfolio.cash_balance, u.inputs.marks) for u in units],
                             chunk.shared.latest_closes, lambda i: chunk.closes(units[i]).prices, chunk.as_of,
                             stale_before, risk_free_rate=chunk.settings.risk_free_rate)
    return [_valuation_outcome(unit, v, chunk.bad_closes(unit)) for unit, v in zip(units, valuations, strict=True)]


def _valuation_outcome(unit: Unit, v: Valuation, bad_closes: dict[str, list[date]]) -> JobOutcome:
    """Keep one unit's valuation for the engines after it, stage its rows, and summarise it."""
    if bad_closes:  # the symbols it was priced from had closes read as missing: say so
        v = dataclasses.replace(v, positions=tuple(
            p._replace(flags=(*p.flags, BAD_CLOSES_IGNORED))
            if {p.position.symbol, p.position.market_symbol} & bad_closes.keys() else p
            for p in v.positions))
    unit.outputs["valuation"] = v
    unit.replace(PositionValuation, [
        {"position_id": p.position.id, "symbol": p.position.symbol, "quantity": p.position.quantity,
         "price": p.price, "price_date": p.price_date, "price_source": p.price_source,
         "market_value": p.market_value, "flags": list(p.flags)} for p in v.positions])
    stale = [p.position.symbol for p in v.positions if "stale_prices" in p.flags]
    flag = "missing_prices" if v.skipped else ("stale_prices" if stale else "ok")
    return JobOutcome("success", valuation_payload(
        flag, f"{v.num_positions - len(v.skipped)} of {v.num_positions} positions valued", v.num_positions,
        analyzed=v.num_positions - len(v.skipped),
        total_value=v.total_value, long_value=v.long_value, short_value=v.short_value,
        gross_exposure=v.gross_exposure, net_exposure=v.net_exposure, private_value=v.private_value,
        cash_value=v.cash_value, skipped_positions=list(v.skipped),
        positions=unit.stored_in(PositionValuation),
        flags=dict(Counter(name for p in v.positions for name in dict.fromkeys(p.flags)))))


# --- Greeks (SPEC §6.2) -----------------------------------------------------------------------


def run_greeks(chunk: Chunk) -> list[JobOutcome]:
    """Every option position of the chunk modelled in one vectorised pass (`option_greeks_books`
    on the chunk's closes), then each unit's rows and record."""
    units = chunk.units
    options = [[p for p in u.held if p.asset_class == OPTIONS and not p.sign_error()] for u in units]
    modelled = option_greeks_books(options, lambda i: chunk.closes(units[i]).prices, chunk.as_of,
                                   chunk.settings.risk_free_rate)
    return [_greeks_outcome(unit, mine, {p.id: modelled[p.id] for p in mine})
            for unit, mine in zip(units, options, strict=True)]


def _greeks_outcome(unit: Unit, options: list[PositionInput],
                    greeks: dict[uuid.UUID, PositionGreeks]) -> JobOutcome:
    unit.outputs["greeks"] = greeks
    rows = [{"position_id": g.position_id, "model_price": g.model_price,
             "underlying_price": g.underlying_price, "volatility": g.volatility, "delta": g.delta,
             "gamma": g.gamma, "theta": g.theta, "vega": g.vega, "rho": g.rho,
             "dollar_delta": g.dollar_delta, "status": g.status} for g in greeks.values()]
    unit.replace(PositionGreeksRow, rows)
    ok = sum(1 for g in greeks.values() if g.status == "ok")
    flag = "no_option_positions" if not options else ("ok" if ok == len(options) else "partial")
    # Portfolio Greeks of a book without options are a computed zero; only a book with nothing
    # market-priced has nothing to compute.
    market_positions = [p for p in unit.held if p.asset_class != PRIVATE]
    return JobOutcome("success" if market_positions else "skipped", greeks_payload(
        flag if market_positions else NO_PUBLIC, f"{ok} of {len(options)} option positions modelled",
        len(options), analyzed=ok, totals=greek_totals(greeks),
        positions=unit.stored_in(PositionGreeksRow) if market_positions else {}, records_stored=len(rows)))


def greek_totals(greeks: dict[uuid.UUID, PositionGreeks]) -> dict[str, float]:
    """Portfolio Greeks: sums of the position-level (contracts × 100) values."""
    return {name: sum(getattr(g, name) for g in greeks.values())
            for name in ("delta", "gamma", "theta", "vega", "rho", "dollar_delta")}


def regression_summary(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The factor record's `regression_stats`: how many symbols' fits the book uses, their
    fewest observations, and the lowest and mean R² (None when no fit has one); the per-symbol
    statistics are in `symbol_factor_betas`. Empty when no fit is used."""
    if not stats:
        return {}
    r2 = [s["r_squared"] for s in stats if s["r_squared"] is not None]
    return {"symbols": len(stats), "observations_min": min(s["observations"] for s in stats),
            "r_squared_min": min(r2, default=None), "r_squared_mean": sum(r2) / len(r2) if r2 else None}


# --- factor exposures (SPEC §6.3, §8) ----------------------------------------------------------


def run_factors(chunk: Chunk) -> list[JobOutcome]:
    """Every unit's position and portfolio factor exposures (SPEC §6.3) in one array pass over
    the chunk (`factor_exposures_books`): stocks by market value, modelled options by dollar
    delta, each times its market symbol's betas."""
    units = chunk.units
    symbol_betas: SymbolBetas = chunk.shared.outputs["symbol_betas"]
    books = [_exposure_inputs(unit) for unit in units]
    exposures = factor_exposures_books(books, symbol_betas.betas, [u.outputs["valuation"].total_value for u in units],
                                       factors.FACTOR_ORDER)
    return [_factors_outcome(unit, inputs, book, symbol_betas)
            for unit, inputs, book in zip(units, books, exposures, strict=True)]


def _exposure_inputs(unit: Unit) -> list[ExposureInput]:
    """What carries a unit's factor exposure: each valued stock's market value, each modelled
    option's dollar delta (on its underlying)."""
    valuation: Valuation = unit.outputs["valuation"]
    greeks: dict[uuid.UUID, PositionGreeks] = unit.outputs.get("greeks", {})
    inputs: list[ExposureInput] = []
    for priced in valuation.positions:
        pos = priced.position
        if pos.asset_class == PUBLIC and priced.market_value is not None:
            inputs.append(ExposureInput(pos.id, pos.symbol, priced.market_value))
        elif pos.asset_class == OPTIONS and pos.id in greeks and greeks[pos.id].status == "ok":
            inputs.append(ExposureInput(pos.id, pos.underlying, greeks[pos.id].dollar_delta))
    return inputs


def _factors_outcome(unit: Unit, inputs: list[ExposureInput], exposures: Exposures,
                     symbol_betas: SymbolBetas) -> JobOutcome:
    valuation: Valuation = unit.outputs["valuation"]
    unit.outputs["factors"] = exposures
    total = valuation.num_positions
    if exposures.analyzed == 0:
        unit.replace(PositionFactorExposure, [])
        unit.replace(PortfolioFactorExposure, [])
        return JobOutcome("skipped", factors_payload(
            NO_PUBLIC, "Portfolio contains no public positions with sufficient price history", total,
            unit.portfolio_id, unit.as_of))
    position_rows = [{"position_id": e.position_id, "factor": e.factor, "beta": e.beta,
                      "exposure_dollar": e.exposure_dollar} for e in exposures.positions]
    portfolio_rows = [{"factor": e.factor, "beta": e.beta, "exposure_dollar": e.exposure_dollar}
                      for e in exposures.portfolio]
    unit.replace(PositionFactorExposure, position_rows)
    unit.replace(PortfolioFactorExposure, portfolio_rows)
    used = {i.symbol for i in inputs if i.position_id not in exposures.skipped}
    symbol_of = {i.position_id: i.symbol for i in inputs}
    observations = [symbol_betas.stats[s]["observations"] for s in used if s in symbol_betas.stats]
    data_days = min(observations) if observations else 0
    flag = "full_history" if data_days >= factors.BETA_WINDOW and not exposures.skipped else "limited_history"
    return JobOutcome("success", {
        "factor_betas": unit.stored_in(PortfolioFactorExposure),
        "position_betas": unit.stored_in(PositionFactorExposure),
        "regression_stats": regression_summary([symbol_betas.stats[s] for s in used if s in symbol_betas.stats]),
        "data_quality": capped(_quality(
            flag, f"{exposures.analyzed} of {total} positions have factor betas", exposures.analyzed,
            total, data_days, quality_flag=flag,
            factor_unavailable=sorted(symbol_betas.unavailable),
            skipped_positions={str(k): factors.ZERO_VARIANCE if symbol_of[k] in symbol_betas.zero_variance else v
                               for k, v in exposures.skipped.items()}), "skipped_positions"),
        "metadata": {"calculation_date": unit.as_of.isoformat(),
                     "regression_window_days": factors.BETA_WINDOW, "status": "COMPLETED",
                     "portfolio_id": str(unit.portfolio_id)},
        "storage_results": {"position_storage": {"records_stored": len(position_rows), "skipped": False},
                            "portfolio_storage": {"records_stored": len(portfolio_rows), "skipped": False}},
    })


# --- market-risk scenarios (SPEC §6.4) --------------------------------------------------------


def run_market_risk(chunk: Chunk) -> list[JobOutcome]:
    """Every unit's market-risk scenarios (SPEC §6.4): the stocks by Σ market value × β_M, every
    modelled option of the chunk fully revalued under every market shock in one vectorised pass
    (`revaluation_pnl`), each unit summing its own options' rows."""
    betas: SymbolBetas = chunk.shared.outputs["symbol_betas"]
    plans = [_market_risk_options(unit, betas, chunk.settings.risk_free_rate) for unit in chunk.units]
    everything = [o for options, _ in plans if options is not None for o in options]
    pnl = revaluation_pnl(everything, MARKET_SHOCKS)
    outcomes = []
    start = 0
    for unit, (options, not_revalued) in zip(chunk.units, plans, strict=True):
        if options is None:
            outcomes.append(_market_risk_outcome(unit, betas, None, {}, None))
            continue
        outcomes.append(_market_risk_outcome(unit, betas, options, not_revalued, pnl[start:start + len(options)]))
        start += len(options)
    return outcomes


def _market_risk_options(unit: Unit, betas: SymbolBetas,
                         rate: float) -> tuple[list[OptionRevaluation] | None, dict[str, str]]:
    """A unit's options to revalue (None: the unit has no factor exposures, nothing to compute)
    and those left out with why (position id → greeks status, or `no_underlying_beta`)."""
    exposures: Exposures = unit.outputs["factors"]
    if exposures.analyzed == 0:
        return None, {}
    greeks: dict[uuid.UUID, PositionGreeks] = unit.outputs.get("greeks", {})
    positions = {p.id: p for p in unit.held}
    options = []
    not_revalued: dict[str, str] = {}
    for pid, g in greeks.items():
        pos = positions[pid]
        beta = betas.betas.get(pos.underlying, {}).get(factors.MARKET)
        if g.status != "ok" or beta is None:
            not_revalued[str(pid)] = g.status if g.status != "ok" else "no_underlying_beta"
            continue
        terms = pos.contract  # status "ok" implies the terms resolved
        options.append(OptionRevaluation(pid, pos.quantity, g.underlying_price, terms.strike, g.years,
                                         rate, g.volatility, terms.right, beta))
    return options, not_revalued


def _market_risk_outcome(unit: Unit, betas: SymbolBetas, options: list[OptionRevaluation] | None,
                         not_revalued: dict[str, str], option_pnl: np.ndarray | None) -> JobOutcome:
    exposures: Exposures = unit.outputs["factors"]
    valuation: Valuation = unit.outputs["valuation"]
    total = valuation.num_positions
    if options is None:
        unit.replace(MarketRiskResult, [])
        return JobOutcome("skipped", market_risk_payload(NO_PUBLIC, "Portfolio has no factor exposures", total))
    option_ids = {p.position.id for p in valuation.positions if p.position.asset_class == OPTIONS}
    market_available = factors.MARKET not in betas.unavailable
    stock_market = sum(e.exposure_dollar for e in exposures.positions
                       if e.factor == factors.MARKET and e.position_id not in option_ids)
    rate_exposure = exposures.by_factor().get(factors.RATES)
    scenarios, unavailable = market_risk(stock_market if market_available else None, options,
                                         rate_exposure, valuation.total_value, option_pnl=option_pnl)
    unit.replace(MarketRiskResult, [{"scenario": r.scenario, "shock": r.shock, "pnl": r.pnl,
                                     "pnl_pct": r.pnl_pct} for r in scenarios])
    flag = "factor_unavailable" if unavailable else "full_history"
    return JobOutcome("success", market_risk_payload(
        flag, f"{len(scenarios)} scenarios computed", total, analyzed=exposures.analyzed,
        scenarios=unit.stored_in(MarketRiskResult), unavailable=unavailable, options_revalued=len(options),
        options_not_revalued=not_revalued))


# --- stress tests (SPEC §6.5, §8) -------------------------------------------------------------


def _stress_scenarios(shared: DateContext) -> list[ScenarioMoves]:
    """The date's active scenarios with their factor moves (shocked and propagated): they depend
    on no portfolio, so they are computed once per date and kept on `shared`. A factor has data
    when its betas could be fitted; the covariance only drives propagation."""
    moves = shared.outputs.get("stress_moves")
    if moves is None:
        covariance: FactorCovariance = shared.outputs["factor_correlations"]
        symbol_betas: SymbolBetas = shared.outputs["symbol_betas"]
        available = [f for f in factors.FACTOR_ORDER if f not in symbol_betas.unavailable]
        moves = shared.outputs["stress_moves"] = [
            scenario_moves(sid, shocks, available, covariance.covariance) for sid, shocks in shared.stress_scenarios]
    return moves


def run_stress_tests(chunk: Chunk) -> list[JobOutcome]:
    """Every unit's stress tests (SPEC §6.5) at once: the chunk's portfolio exposures as a
    units × factors matrix times the date's scenario moves (`stress_tests_books`)."""
    covariance: FactorCovariance = chunk.shared.outputs["factor_correlations"]
    symbol_betas: SymbolBetas = chunk.shared.outputs["symbol_betas"]
    info = {"factors": [] if covariance.covariance is None else list(covariance.covariance.index),
            "observations": covariance.observations, "decay": factors.EWMA_LAMBDA,
            "method": "conditional_expectation", "factor_unavailable": covariance.unavailable}
    scenarios = _stress_scenarios(chunk.shared)
    exposed = [u for u in chunk.units if u.outputs["factors"].analyzed > 0]
    matrix = np.full((len(exposed), len(factors.FACTOR_ORDER)), np.nan)
    column = {f: j for j, f in enumerate(factors.FACTOR_ORDER)}
    for i, unit in enumerate(exposed):
        for factor, dollars in unit.outputs["factors"].by_factor().items():
            matrix[i, column[factor]] = dollars
    equity = np.array([u.outputs["valuation"].total_value for u in exposed], dtype=float)
    available = [f for f in factors.FACTOR_ORDER if f not in symbol_betas.unavailable]
    results = iter(stress_tests_books(matrix, factors.FACTOR_ORDER, equity, scenarios, available))
    return [_stress_outcome(unit, next(results) if unit.outputs["factors"].analyzed > 0 else None, info,
                            covariance) for unit in chunk.units]


def _stress_outcome(unit: Unit, results: list[StressResult] | None, info: dict[str, Any],
                    covariance: FactorCovariance) -> JobOutcome:
    exposures: Exposures = unit.outputs["factors"]
    total = unit.outputs["valuation"].num_positions
    if results is None:
        unit.replace(StressTestResult, [])
        return JobOutcome("skipped", stress_payload(NO_PUBLIC, "Portfolio has no factor exposures", total,
                                                    unit.portfolio_id, unit.as_of, unit.portfolio.name, info))
    unit.replace(StressTestResult, [
        {"scenario_id": r.scenario_id, "direct_pnl": r.direct_pnl, "correlated_pnl": r.correlated_pnl,
         "correlation_effect": r.correlation_effect, "pnl_pct": r.pnl_pct,
         "exceeds_equity": r.exceeds_equity, "factor_impacts": r.factor_impacts} for r in results])
    flag = "full_history" if covariance.covariance is not None else "factor_unavailable"
    payload = stress_payload(flag, f"{len(results)} scenarios", total, unit.portfolio_id, unit.as_of,
                             unit.portfolio.name, info)
    payload["stress_test_results"].update(
        direct_impacts=unit.stored_in(StressTestResult), correlated_impacts=unit.stored_in(StressTestResult),
        summary_stats=capped(stress_summary(results), "exceeds_equity"), skipped=False, skip_reason=None)
    # the date's factor correlation matrix, stored once per date: each unordered pair and the diagonal
    n = len(info["factors"])
    payload["correlation_matrix_info"] = stored_in(FactorCorrelation, n * (n + 1) // 2)
    payload["data_quality"] = _quality(flag, f"{len(results)} scenarios", exposures.analyzed, total,
                                       covariance.observations)
    return JobOutcome("success", payload)


# --- correlations (SPEC §6.6, §8) --------------------------------------------------------------


def run_correlations(chunk: Chunk) -> list[JobOutcome]:
    """Every unit's correlation matrix (SPEC §6.6) as a block of the date's return panel
    (`DateContext.return_panel`, prepared once per date: each block reads its pairwise-complete
    sums from it), its clusters and metrics."""
    return [_correlations_outcome(chunk, unit) for unit in chunk.units]


def _correlation_panel(chunk: Chunk, unit: Unit, symbols: Mapping[str, float]) -> corr.ReturnPanel:
    """The returns a unit's correlations read: the date's panel, which holds every market symbol;
    only when the market closes were never loaded (the symbol-betas engine failed before loading
    them) a panel of the chunk's closes of `symbols` — the same computation over a smaller
    universe, read from the same closes."""
    panel = chunk.shared.return_panel
    if panel is not None and all(s in panel.columns for s in symbols):
        return panel
    return corr.closes_panel(chunk.closes(unit).frame.reindex(columns=sorted(symbols)))


def _correlations_outcome(chunk: Chunk, unit: Unit) -> JobOutcome:
    valuation: Valuation = unit.outputs["valuation"]
    greeks: dict[uuid.UUID, PositionGreeks] = unit.outputs.get("greeks", {})
    values: dict[str, float] = {}
    stocks: list[str] = []  # the symbol of each stock position that enters, one entry per position
    options: list[str] = []  # the underlying of each option merged into it, one entry per position
    for priced in valuation.positions:
        pos = priced.position
        if pos.asset_class == PUBLIC and priced.market_value is not None:
            values[pos.symbol] = values.get(pos.symbol, 0.0) + priced.market_value
            stocks.append(pos.symbol)
        elif pos.asset_class == OPTIONS and pos.id in greeks and greeks[pos.id].status == "ok":
            values[pos.underlying] = values.get(pos.underlying, 0.0) + greeks[pos.id].dollar_delta
            options.append(pos.underlying)
    kept, excluded = corr.eligible_exposures(values, valuation.gross_exposure)
    result = None
    if len(kept) >= 2:
        result = corr.correlate(kept, _correlation_panel(chunk, unit, kept), excluded=excluded)
    total = valuation.num_positions
    for table in (CorrelationRun, CorrelationMatrix, CorrelationCluster):
        unit.replace(table, [])
    if result is None:
        return JobOutcome("skipped", correlations_payload(
            NO_PUBLIC, "No public positions with sufficient data", total, unit.as_of, excluded=excluded))
    unit.replace(CorrelationRun, [{
        "window_days": corr.CORRELATION_WINDOW, "avg_abs_correlation": result.avg_abs_correlation,
        "weighted_correlation": result.weighted_correlation,
        "effective_positions": result.effective_positions, "positions_included": result.positions_included,
        "positions_excluded": result.positions_excluded, "status": "success"}])
    symbols = result.symbols
    rhos = [[None if math.isnan(v) else v for v in row] for row in result.matrix.tolist()]
    counts = result.observations.tolist()
    # one row: the sorted symbols and both matrices (the pairwise_correlations view unnests it)
    unit.replace(CorrelationMatrix, [{
        "window_days": corr.CORRELATION_WINDOW, "symbols": symbols, "matrix": rhos,
        "observations": [[int(n) for n in row] for row in counts]}])
    pairs = len(symbols) * (len(symbols) - 1) // 2
    unit.replace(CorrelationCluster, [{"cluster_number": c.number, "symbols": c.symbols,
                                       "avg_correlation": c.avg_correlation, "weight": c.weight}
                                      for c in result.clusters])
    # SPEC §6.6: each position counted once — analysed (a stock in the matrix), merged (an option
    # folded into its underlying's row) or skipped (anything that did not reach the matrix)
    included = set(symbols)
    analyzed = sum(1 for sym in stocks if sym in included)
    merged = sum(1 for sym in options if sym in included)
    quality = capped(_quality("full_history", f"{len(symbols)} symbols, {pairs} pairs", analyzed, total,
                              int(result.observations.min()), positions_merged=merged,
                              excluded=result.excluded), "excluded")
    quality["positions_skipped"] = total - analyzed - merged
    return JobOutcome("success", {
        "status": "SUCCESS", "message": f"{len(symbols)} positions correlated",
        "correlation_matrix": stored_in(PairwiseCorrelation, pairs),  # the view over the matrix row
        "clusters": unit.stored_in(CorrelationCluster),
        "metrics": {"avg_correlation": result.avg_abs_correlation,
                    "weighted_correlation": result.weighted_correlation,
                    "effective_positions": result.effective_positions,
                    "positions_analyzed": result.positions_included},
        "calculation_date": unit.as_of.isoformat(), "duration_days": corr.CORRELATION_WINDOW,
        "data_quality": quality})


# --- snapshot (SPEC §6.7) ---------------------------------------------------------------------


def run_snapshot(chunk: Chunk) -> list[JobOutcome]:
    """Every unit's snapshot (SPEC §6.7): the chunk's daily P&L in one pass (`daily_pnl_books`),
    then each unit's row chained from its prior snapshot."""
    units = chunk.units
    pnls = daily_pnl_books([Book(u.positions, u.portfolio.cash_balance) for u in units], chunk.shared.latest_closes,
                           lambda i: chunk.closes(units[i]).prices, chunk.as_of, chunk.previous_session,
                           risk_free_rate=chunk.settings.risk_free_rate)
    return [_snapshot_outcome(unit, pnl, chunk.previous_session) for unit, pnl in zip(units, pnls, strict=True)]


def _snapshot_outcome(unit: Unit, pnl: DailyPnl, previous_session: date) -> JobOutcome:
    valuation: Valuation = unit.outputs["valuation"]
    row = build_snapshot(valuation, pnl, previous_session, unit.inputs.prior)
    totals = greek_totals(unit.outputs.get("greeks", {}))
    exposures: Exposures | None = unit.outputs.get("factors")
    market = next((e for e in exposures.portfolio if e.factor == factors.MARKET), None) if exposures else None
    row.update(portfolio_delta=totals["delta"], portfolio_gamma=totals["gamma"],
               portfolio_theta=totals["theta"], portfolio_vega=totals["vega"],
               market_beta=market.beta if market else None)
    row.pop("snapshot_date")
    unit.replace(PortfolioSnapshot, [row], date_column="snapshot_date")
    return JobOutcome("success", snapshot_payload(
        row["data_quality"]["flag"], row["data_quality"]["message"], valuation.num_positions,
        total_value=row["total_value"], daily_pnl=row["daily_pnl"], daily_return=row["daily_return"],
        cumulative_pnl=row["cumulative_pnl"], market_beta=row["market_beta"],
        greeks=unit.stored_in(PortfolioSnapshot), data_quality=row["data_quality"]))


register(GlobalEngine("symbol_betas", run_symbol_betas))
register(GlobalEngine("factor_correlations", run_factor_correlations))
register(Engine("valuation", run_valuation))
register(Engine("greeks", run_greeks, depends_on=("valuation",)))
register(Engine("factors", run_factors, depends_on=("valuation", "greeks", "symbol_betas")))
register(Engine("market_risk", run_market_risk, depends_on=("factors", "greeks")))
register(Engine("stress_tests", run_stress_tests, depends_on=("factors", "factor_correlations")))
register(Engine("correlations", run_correlations, depends_on=("valuation", "greeks")))
register(Engine("snapshot", run_snapshot, depends_on=("valuation", "greeks")))
