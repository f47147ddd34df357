"""Factor returns, factor betas and the factor covariance (SPEC §6.3, §6.5, §6.6).

Frames are indexed by NYSE session (ascending `datetime.date`), one column per symbol or per
factor; returns are simple daily returns as fractions (0.01 = 1%). The caller reindexes prices to
the session calendar, so a missing price is a NaN row entry, never a missing row. Nothing here
fills a gap: a row that lacks a value is dropped from the fit that needs it, and the number of
rows actually used is reported as `observations`.

Model (SPEC §6.3), fitted once per symbol over the last `window` sessions:

    r_i = α + β_M·Market + Σ_k β_k·Style_k + ε        (joint OLS, intercept)
    r_i = α + β_R·Interest Rate + ε                     (separate univariate OLS, intercept)

where Market is the market proxy's return, each Style_k is its proxy's return in excess of the
market, and Interest Rate is the rate proxy's raw return. Estimates follow statsmodels' OLS
(nonrobust) exactly — s² = RSS/(n − k) with k counting the intercept, cov = s²(X'X)⁻¹,
t = β/se, R² = 1 − RSS/TSS (centered) — but symbols that share a complete-case row mask are
solved together: one pseudo-inverse of the design per mask, applied to every symbol's returns;
and a backfill fits all its as-of dates at once (`fit_symbol_betas_dates`: the designs of every
date's masks decomposed as stacks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pandas as pd

FACTOR_ORDER = (
    "Market", "Value", "Growth", "Momentum", "Quality", "Size", "Low Volatility", "Interest Rate",
)
MARKET, RATES = "Market", "Interest Rate"
STYLE_FACTORS = tuple(f for f in FACTOR_ORDER if f not in (MARKET, RATES))

BETA_WINDOW, MIN_OBSERVATIONS, BETA_CAP = 90, 60, 5.0
EWMA_LAMBDA, COVARIANCE_WINDOW = 0.94, 252

# Reasons (SPEC §8 quality flags where they exist).
FACTOR_UNAVAILABLE = "factor_unavailable"
INSUFFICIENT_HISTORY = "insufficient_history"
COLLINEAR_FACTORS = "collinear_factors"
ZERO_VARIANCE = "zero_variance"
EXACT_FIT = "exact_fit"

# A fit is degenerate when one sum of squares is this small relative to another (SPEC §6.3).
DEGENERATE_RATIO = 1e-20

_NOTHING_UNAVAILABLE: Mapping[str, str] = MappingProxyType({})


# --------------------------------------------------------------------------------------------
# Returns
# --------------------------------------------------------------------------------------------

def simple_returns(closes: pd.DataFrame) -> pd.DataFrame:
    """Daily simple returns `close_t / close_{t-1} − 1` from closes indexed by every session.

    `closes`: DataFrame indexed by session (ascending, unique), one column per symbol, prices
    in dollars, NaN where a symbol has no close. The previous *row* is the previous session, so
    a missing close makes both adjacent returns NaN; nothing is filled. The first row (which
    has no previous session) is dropped, so the result has `len(closes) − 1` rows (0 if
    `closes` has at most one row). A zero close yields an infinite return: the engines read
    non-positive or non-finite closes as missing before they get here (`prices.usable_closes`).

    Raises ValueError if the index is not strictly increasing.
    """
    _require_strictly_increasing(closes.index, "closes")
    values = closes.astype(float)
    return (values / values.shift(1) - 1.0).iloc[1:]


def factor_returns(proxy_returns: pd.DataFrame,
                   proxies: Mapping[str, str | None]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Factor returns as SPEC §6.3 defines them, from the proxies' simple returns.

    `proxy_returns`: DataFrame indexed by session, one column per proxy symbol (fractions).
    `proxies`: factor name → proxy symbol (None when no proxy is defined). Every key must be one
    of `FACTOR_ORDER`; a factor of `FACTOR_ORDER` missing from the mapping counts as having no
    proxy.

    Returns `(frame, unavailable)`. `frame` has the same index as `proxy_returns` and one column
    per available factor, in `FACTOR_ORDER`:
      - "Market": the market proxy's return;
      - each style factor: its proxy's return minus the market proxy's return (same row; NaN
        if either is NaN);
      - "Interest Rate": the rate proxy's raw return.
    A factor is unavailable — left out of `frame` and reported in `unavailable` as
    `{factor: "factor_unavailable"}` — if its proxy is None, not a column of `proxy_returns`,
    or its resulting column is all-NaN (e.g. the proxy has no returns, or a style proxy never
    has a return on a day the market has one). If Market is unavailable, every style factor is
    unavailable too; Interest Rate does not depend on Market.

    Raises ValueError for a factor name outside `FACTOR_ORDER` or duplicate proxy columns.
    """
    unknown = sorted(set(proxies) - set(FACTOR_ORDER))
    if unknown:
        raise ValueError(f"proxies: unknown factor name(s) {unknown}; expected names from "
                         f"{FACTOR_ORDER}")
    if proxy_returns.columns.has_duplicates:
        raise ValueError("proxy_returns: duplicate proxy columns")

    def proxy_column(factor: str) -> pd.Series | None:
        symbol = proxies.get(factor)
        if symbol is None or symbol not in proxy_returns.columns:
            return None
        return proxy_returns[symbol].astype(float)

    market = proxy_column(MARKET)
    columns: dict[str, pd.Series] = {}
    unavailable: dict[str, str] = {}
    for factor in FACTOR_ORDER:
        raw = proxy_column(factor)
        if raw is None:
            series = None
        elif factor == MARKET or factor == RATES:
            series = raw
        elif market is None:
            series = None
        else:
            series = raw - market
        if series is None or series.isna().all():
            unavailable[factor] = FACTOR_UNAVAILABLE
        else:
            columns[factor] = series.rename(factor)
        if factor == MARKET and factor in unavailable:
            market = None
    frame = pd.DataFrame(columns, index=proxy_returns.index, columns=list(columns), dtype=float)
    return frame, unavailable


# --------------------------------------------------------------------------------------------
# Betas
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BetaEstimate:
    """One symbol's beta on one factor. `beta` is capped at ±cap (then `capped` is True);
    `std_error` and `t_stat` are the uncapped fit's (t = uncapped β / se). `r_squared` is the
    R² of the regression the beta came from: the joint model for Market and styles, the
    univariate model for Interest Rate. `observations` is the number of sessions in that fit.

    A degenerate fit (SPEC §6.3) says so in `quality` instead of carrying noise as statistics:
      - `zero_variance`: the symbol's returns are constant over the fitted rows (TSS ≤ 1e-20 ×
        Σr², e.g. a constant price) — beta, std_error, t_stat and r_squared are all None;
      - `exact_fit`: RSS ≤ 1e-20 × TSS (e.g. a factor proxy regressed on its own factor) — the
        beta and R² stand, std_error and t_stat (rounding noise) are None.
    `quality` is None for an ordinary fit."""

    symbol: str
    factor: str
    beta: float | None
    std_error: float | None
    t_stat: float | None
    r_squared: float | None
    observations: int
    capped: bool
    quality: str | None = None


@dataclass(frozen=True)
class BetaFit:
    """Result of `fit_symbol_betas`, as arrays (no Python object per estimate).

    `symbols`: every input symbol, in input column order (S). `factors`: the fitted factor
    columns, in `FACTOR_ORDER` (F). The S × F arrays hold one estimate per cell where `fitted`
    is True (the fields of `BetaEstimate`):
      - `beta`, `std_error`, `t_stat`, `r_squared`: float, NaN where the `BetaEstimate` field
        would be None (and wherever `fitted` is False);
      - `observations`: int, sessions in the fit the cell came from (0 where not fitted);
      - `capped`: bool; `quality`: object array of "zero_variance" / "exact_fit" / None.
    `r_squared` and `observations` are per cell, not per symbol: Interest Rate comes from its
    own univariate fit, so its R² and row count differ from the joint model's.
    `skipped`: symbol → reason for symbols with no estimates at all, in input order.
    `unavailable`: factor → "factor_unavailable" (as passed in). `vif`: variance inflation factor
    per joint-model factor (Market and styles), over the window's complete cases of those factor
    columns.
    `window_days`: sessions in the window (≤ `window`)."""

    symbols: tuple[str, ...]
    factors: tuple[str, ...]
    fitted: np.ndarray
    beta: np.ndarray
    std_error: np.ndarray
    t_stat: np.ndarray
    r_squared: np.ndarray
    observations: np.ndarray
    capped: np.ndarray
    quality: np.ndarray
    skipped: dict[str, str]
    unavailable: dict[str, str]
    vif: dict[str, float]
    window_days: int

    def fitted_symbols(self) -> list[str]:
        """Symbols with at least one estimate, in input order."""
        return [self.symbols[i] for i in np.flatnonzero(self.fitted.any(axis=1))]

    def take(self, symbols: Sequence[str]) -> BetaFit:
        """The fit of `symbols` alone (each one of `self.symbols`), in their order: what fitting
        only them gives, as a symbol's estimates depend on its own returns and the factors only."""
        at = {s: i for i, s in enumerate(self.symbols)}
        rows = np.array([at[s] for s in symbols], dtype=np.intp)
        return dataclasses.replace(
            self, symbols=tuple(symbols), fitted=self.fitted[rows], beta=self.beta[rows],
            std_error=self.std_error[rows], t_stat=self.t_stat[rows], r_squared=self.r_squared[rows],
            observations=self.observations[rows], capped=self.capped[rows], quality=self.quality[rows],
            skipped={s: self.skipped[s] for s in symbols if s in self.skipped})

    def estimates(self) -> list[BetaEstimate]:
        """One `BetaEstimate` per fitted cell, symbols in input order, factors in
        `FACTOR_ORDER` (a readable view for tests and debugging; the engines read the arrays)."""
        def value(array: np.ndarray, i: int, j: int) -> float | None:
            v = float(array[i, j])
            return None if np.isnan(v) else v
        return [BetaEstimate(self.symbols[i], self.factors[j], value(self.beta, i, j),
                             value(self.std_error, i, j), value(self.t_stat, i, j),
                             value(self.r_squared, i, j), int(self.observations[i, j]),
                             bool(self.capped[i, j]), self.quality[i, j])
                for i, j in zip(*np.nonzero(self.fitted), strict=True)]


@dataclass(frozen=True)
class _Ols:
    """Batched OLS results for m designs of n rows and k columns (intercept first), each with g
    targets: params/bse/tvalues are m × k × g, rsquared m × g, `nobs` = n. `zero_variance` and
    `exact_fit` (m × g booleans, never both) mark the degenerate targets (see `BetaEstimate`)."""

    params: np.ndarray
    bse: np.ndarray
    tvalues: np.ndarray
    rsquared: np.ndarray
    nobs: int
    zero_variance: np.ndarray
    exact_fit: np.ndarray


def _pinvs(designs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """For each design (n × k, the intercept column included): its pseudo-inverse (k × n) and
    diag((X'X)⁻¹) = diag(pinv · pinvᵀ) (k), or None if the design is rank-deficient. Designs of
    one shape are decomposed as one stack, by one SVD giving both the rank (with
    `np.linalg.matrix_rank`'s tolerance: σ > σ_max · max(n, k) · eps) and the pseudo-inverse (as
    `np.linalg.pinv` forms it: σ ≤ 1e-15 · σ_max discarded). Each matrix of a stack gets exactly
    what it would get alone."""
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(designs)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, design in enumerate(designs):
        by_shape.setdefault(design.shape, []).append(i)
    for shape, members in by_shape.items():
        u, s, vt = np.linalg.svd(np.stack([designs[i] for i in members]), full_matrices=False)
        top = s.max(axis=-1, keepdims=True)
        full = (s > top * max(shape) * np.finfo(float).eps).sum(axis=-1) == shape[1]
        inverse = np.divide(1.0, s, out=np.zeros_like(s), where=s > 1e-15 * top)
        pinv = np.matmul(np.swapaxes(vt[full], -1, -2), inverse[full][..., None] * np.swapaxes(u[full], -1, -2))
        unscaled = np.einsum("gij,gij->gi", pinv, pinv)
        for i, p, v in zip(np.asarray(members)[full].tolist(), pinv, unscaled, strict=True):
            out[i] = (p, v)
    return out


def _ols(designs: np.ndarray, pinvs: np.ndarray, unscaled_var: np.ndarray, targets: np.ndarray) -> _Ols:
    """OLS of the g targets of each of m designs: `designs` m × n × k (intercept first, full
    rank), their pseudo-inverses m × k × n and diag((X'X)⁻¹) m × k (`_pinvs`), `targets`
    m × n × g. Same formulas as statsmodels `OLS(y, add_constant(X)).fit()` (pinv method,
    nonrobust covariance)."""
    n, k = designs.shape[1:]
    params = pinvs @ targets
    resid = targets - designs @ params
    rss = (resid * resid).sum(axis=1)
    centered = targets - targets.mean(axis=1, keepdims=True)
    tss = (centered * centered).sum(axis=1)
    bse = np.sqrt(unscaled_var[:, :, None] * (rss / (n - k))[:, None, :])
    with np.errstate(divide="ignore", invalid="ignore"):  # se = 0 / TSS = 0: flagged below
        tvalues = params / bse
        rsquared = 1.0 - rss / tss
    zero_variance = tss <= DEGENERATE_RATIO * (targets * targets).sum(axis=1)
    exact_fit = ~zero_variance & (rss <= DEGENERATE_RATIO * tss)
    return _Ols(params=params, bse=bse, tvalues=tvalues, rsquared=rsquared, nobs=n,
                zero_variance=zero_variance, exact_fit=exact_fit)


def _groups_by_mask(valid: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group the columns of the boolean matrix `valid` (rows × symbols) by identical column.
    Returns (row mask, column indices ascending) pairs, in order of first appearance."""
    if valid.shape[1] == 0:
        return []
    # one bytes key per column (its rows packed into bits), so np.unique sorts scalars, not rows
    packed = np.ascontiguousarray(np.packbits(valid.T, axis=1))
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    members = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(first)))[:-1]
    groups = np.split(members, bounds)
    return [(valid[:, groups[g][0]], groups[g]) for g in np.argsort(first, kind="stable")]


def _vifs(designs: list[np.ndarray]) -> list[list[float]]:
    """The variance inflation factor of each column of each design (n × p): VIF_j = 1 / (1 − R²_j),
    R²_j from regressing column j on the other columns with an intercept (statsmodels'
    `variance_inflation_factor` on a design with a constant). A single column gets 1.0; a
    perfectly explained column inf; a constant column NaN. The auxiliary regressions of every
    design are solved as stacks, one per shape."""
    aux: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for design in designs:
        n = design.shape[0]
        for j in range(design.shape[1]):
            aux.append(np.column_stack([np.ones(n), np.delete(design, j, axis=1)]))
            targets.append(design[:, j])
    r2 = np.empty(len(aux))
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(aux):
        by_shape.setdefault(x.shape, []).append(i)
    for members in by_shape.values():
        x = np.stack([aux[i] for i in members])
        y = np.stack([targets[i] for i in members])
        resid = y - (x @ (np.linalg.pinv(x) @ y[..., None]))[..., 0]
        centered = y - y.mean(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2[members] = 1.0 - (resid * resid).sum(axis=-1) / (centered * centered).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        vif = (1.0 / (1.0 - r2)).tolist()
    out, at = [], 0
    for design in designs:
        out.append(vif[at:at + design.shape[1]])
        at += design.shape[1]
    return out


@dataclass(frozen=True, slots=True)
class FitDate:
    """One as-of date of `fit_symbol_betas_dates`. Its rows are the last `window` rows before
    position `stop` (so `stop` is its as-of row's position + 1; 0: no rows). `factors`: the
    factor columns usable on that date (columns of the factor frame; the others are ignored for
    it — a factor may be usable on one date and not another). `unavailable`: that date's
    unavailable factors with their reasons, passed through to its `BetaFit`."""

    stop: int
    factors: tuple[str, ...]
    unavailable: Mapping[str, str] = dataclasses.field(default_factory=dict)


def fit_symbol_betas(symbol_returns: pd.DataFrame, factors: pd.DataFrame,
                     unavailable: Mapping[str, str] = _NOTHING_UNAVAILABLE, *,
                     window: int = BETA_WINDOW, min_obs: int = MIN_OBSERVATIONS,
                     cap: float = BETA_CAP) -> BetaFit:
    """Per-symbol factor betas (SPEC §6.3) over the last `window` rows.

    `symbol_returns`: DataFrame indexed by session, one column per symbol, simple returns
    (fractions), NaN where missing; its last row is the as-of session. `factors`: the
    `factor_returns` frame on the same index (columns a subset of `FACTOR_ORDER`).
    `unavailable`: the factors reported unavailable by `factor_returns`, passed through.

    Joint model: OLS with intercept of each symbol on every factor column except Interest Rate,
    over the window rows where the symbol and all those factors have a return. Fewer than
    `min_obs` such rows → the symbol is skipped with "insufficient_history" and gets no
    estimates at all. If the design of those rows is rank-deficient (e.g. a stale style proxy
    whose excess return is exactly −Market) the symbol is skipped with "collinear_factors";
    `vif` shows which factors are to blame.

    Interest Rate (if a column): a separate univariate OLS with intercept over the rows where
    the symbol and the rate factor have a return, for symbols not skipped by the joint model.
    If fewer than `min_obs` rows remain (or the rate column is constant over them), the symbol
    simply has no Interest Rate estimate (nothing is added to `skipped`; its joint estimates
    stand). When Interest Rate is the only
    factor, it decides `skipped` instead.

    Cap: |β| > `cap` → β = ±`cap`, `capped=True`; std_error and t_stat stay those of the
    uncapped fit, so the t-stat still describes the estimate that was actually found.

    Degenerate fits are estimates with `quality` set (`zero_variance`: no beta or statistics;
    `exact_fit`: beta and R² without std_error/t_stat — see `BetaEstimate`), never skipped.

    `vif` covers Market and styles over the window's complete factor rows; it is NaN for every
    factor when fewer than `min_obs` such rows exist (no symbol can be fitted then either).
    With no factor columns at all, nothing is fitted and nothing is skipped.

    This is `fit_symbol_betas_dates` for one date (the last row, every factor column).

    Raises ValueError if the indexes differ, a factor name is not in `FACTOR_ORDER`, a factor
    is both a column and listed as unavailable, symbols are duplicated, `window` < 1, `cap`
    ≤ 0, or `min_obs` does not exceed the joint model's parameter count (n − k must be > 0).
    """
    date = FitDate(len(symbol_returns.index), tuple(str(c) for c in factors.columns), unavailable)
    return fit_symbol_betas_dates(symbol_returns, factors, [date], window=window, min_obs=min_obs,
                                  cap=cap)[0]


@dataclass
class _DateFit:
    """The arrays of one date's `BetaFit` while they are filled (see `fit_symbol_betas_dates`)."""

    rows: slice
    joint: list[str]
    names: list[str]
    fitted: np.ndarray
    beta: np.ndarray
    std_error: np.ndarray
    t_stat: np.ndarray
    r_squared: np.ndarray
    observations: np.ndarray
    capped: np.ndarray
    quality: np.ndarray
    skipped: np.ndarray  # per symbol: reason or None
    vif: dict[str, float]

    @classmethod
    def empty(cls, rows: slice, joint: list[str], names: list[str], n_symbols: int) -> _DateFit:
        shape = (n_symbols, len(names))
        return cls(rows, joint, names, np.zeros(shape, dtype=bool), *(np.full(shape, np.nan) for _ in range(4)),
                   np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=bool), np.full(shape, None, dtype=object),
                   np.full(n_symbols, None, dtype=object), {})

    def record(self, result: _Ols, which: np.ndarray | slice, columns: np.ndarray, names: list[str],
               cap: float) -> None:
        """Store the estimates of `result`'s targets `which` (flat indices over its m × g
        targets) as the cells of symbol `columns` (in the same order) and factors `names`."""
        def flat(values: np.ndarray) -> np.ndarray:  # m × k × g → k × (m·g), the targets picked
            return np.moveaxis(values, 1, -1).reshape(-1, values.shape[1])[which].T

        cells = np.ix_(columns, [self.names.index(n) for n in names])
        zero = result.zero_variance.reshape(-1)[which][:, None]
        exact = result.exact_fit.reshape(-1)[which][:, None]
        raw = flat(result.params)[1:].T  # targets × p, the intercept dropped
        over = (np.abs(raw) > cap) & ~zero
        self.fitted[cells] = True
        self.beta[cells] = np.where(zero, np.nan, np.where(over, np.copysign(cap, raw), raw))
        self.std_error[cells] = np.where(zero | exact, np.nan, flat(result.bse)[1:].T)
        self.t_stat[cells] = np.where(zero | exact, np.nan, flat(result.tvalues)[1:].T)
        r_squared = result.rsquared.reshape(-1)[which][:, None]
        self.r_squared[cells] = np.where(zero, np.nan, np.broadcast_to(r_squared, raw.shape))
        self.observations[cells] = result.nobs
        self.capped[cells] = over
        self.quality[cells] = np.where(zero, ZERO_VARIANCE, np.where(exact, EXACT_FIT, None))


_SMALL_GROUP = 8  # groups of at most this many symbols are solved symbol by symbol, stacked
_STACK = 1024  # symbols per stacked solve (bounds its memory: ~2 × STACK × n × k floats)


def fit_symbol_betas_dates(symbol_returns: pd.DataFrame, factors: pd.DataFrame, dates: Sequence[FitDate], *,
                           window: int = BETA_WINDOW, min_obs: int = MIN_OBSERVATIONS,
                           cap: float = BETA_CAP) -> list[BetaFit]:
    """`fit_symbol_betas` for many as-of dates of one frame in one batched solve: one `BetaFit`
    per `FitDate`, in order, each exactly what `fit_symbol_betas` gives for the date's rows and
    factors (`symbol_returns.iloc[:stop]`, `factors.iloc[:stop][list(date.factors)]`).

    `symbol_returns`, `factors`: as for `fit_symbol_betas`, over every row any date uses (a
    backfill's whole price window); `factors` holds every factor usable on some date. Per date,
    symbols sharing a complete-case row mask form a group; the designs of all groups of all dates
    are decomposed as stacks (one per design shape), then each group's pseudo-inverse is applied
    to its symbols' returns at once.

    Raises ValueError as `fit_symbol_betas` does, and if a date's `stop` is outside
    0..len(rows) or its factors are not columns of `factors`.
    """
    if not symbol_returns.index.equals(factors.index):
        raise ValueError("symbol_returns and factors must share the same index")
    unknown = [c for c in factors.columns if c not in FACTOR_ORDER]
    if unknown:
        raise ValueError(f"factors: unknown factor column(s) {unknown}; expected names from "
                         f"{FACTOR_ORDER}")
    if symbol_returns.columns.has_duplicates:
        raise ValueError("symbol_returns: duplicate symbol columns")
    if window < 1:
        raise ValueError(f"window must be ≥ 1, got {window}")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    n_rows = len(symbol_returns.index)
    for date in dates:
        if not 0 <= date.stop <= n_rows:
            raise ValueError(f"FitDate.stop must be in 0..{n_rows}, got {date.stop}")
        missing = [f for f in date.factors if f not in factors.columns]
        if missing:
            raise ValueError(f"FitDate.factors: {missing} are not columns of factors")
        contradictory = sorted(set(date.factors) & set(date.unavailable))
        if contradictory:
            raise ValueError(f"unavailable: {contradictory} are also columns of factors")
        n_params = 1 + max(len([f for f in date.factors if f != RATES]), 1)
        if min_obs <= n_params:
            raise ValueError(f"min_obs must exceed the number of model parameters ({n_params}), "
                             f"got {min_obs}")

    returns = symbol_returns.to_numpy(dtype=float)
    valid_returns = ~np.isnan(returns)
    factor_values = factors.to_numpy(dtype=float)
    factor_column = {str(c): i for i, c in enumerate(factors.columns)}
    symbols = [str(s) for s in symbol_returns.columns.tolist()]
    all_columns = np.arange(len(symbols))
    fits: list[_DateFit] = []
    for date in dates:
        joint = [f for f in FACTOR_ORDER if f in date.factors and f != RATES]
        names = joint + ([RATES] if RATES in date.factors else [])
        fits.append(_DateFit.empty(slice(max(date.stop - window, 0), date.stop), joint, names, len(symbols)))

    def fit_all(models: list[tuple[_DateFit, list[str], np.ndarray, bool]]) -> None:
        """Models of many dates — (the date's fit, regressor names, symbol columns, whether a
        symbol it cannot fit is skipped) — solved together."""
        groups: list[tuple[_DateFit, list[str], np.ndarray, np.ndarray, bool]] = []
        designs: list[np.ndarray] = []
        for fit, names, columns, skip in models:
            regressors = factor_values[fit.rows][:, [factor_column[n] for n in names]]
            regressor_valid = ~np.isnan(regressors).any(axis=1)
            valid = valid_returns[fit.rows][:, columns] & regressor_valid[:, None]
            for rows, members in _groups_by_mask(valid):
                chosen = columns[members]
                if rows.sum() >= min_obs:
                    groups.append((fit, names, rows, chosen, skip))
                    design = np.empty((int(rows.sum()), 1 + len(names)))
                    design[:, 0] = 1.0  # the intercept
                    design[:, 1:] = regressors[rows]
                    designs.append(design)
                elif skip:
                    fit.skipped[chosen] = INSUFFICIENT_HISTORY
        # a large group: its pseudo-inverse applied to all its symbols' returns in one product;
        # the symbols of small groups (gaps of their own): one target per design, stacked by shape
        singles: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # shape → (group, symbol column)
        solved = _pinvs(designs)
        for g, ((fit, names, rows, chosen, skip), design) in enumerate(zip(groups, designs, strict=True)):
            if solved[g] is None:
                if skip:
                    fit.skipped[chosen] = COLLINEAR_FACTORS
            elif len(chosen) <= _SMALL_GROUP:
                singles.setdefault(design.shape, []).extend((g, c) for c in chosen.tolist())
            else:
                pinv, unscaled = solved[g]
                targets = returns[fit.rows][np.ix_(rows, chosen)]
                result = _ols(design[None], pinv[None], unscaled[None], targets[None])
                fit.record(result, slice(None), chosen, names, cap)
        for pairs in singles.values():
            for at in range(0, len(pairs), _STACK):
                chunk = pairs[at:at + _STACK]
                result = _ols(np.stack([designs[g] for g, _ in chunk]),
                              np.stack([solved[g][0] for g, _ in chunk]),
                              np.stack([solved[g][1] for g, _ in chunk]),
                              np.stack([returns[groups[g][0].rows][groups[g][2], c] for g, c in chunk])[:, :, None])
                by_fit: dict[int, list[int]] = {}
                for i, (g, _) in enumerate(chunk):
                    by_fit.setdefault(id(groups[g][0]), []).append(i)
                for members in by_fit.values():
                    fit, names = groups[chunk[members[0]][0]][:2]
                    fit.record(result, np.array(members), np.array([chunk[i][1] for i in members]), names, cap)

    joint_fits = [fit for fit in fits if fit.joint]
    vif_designs: list[np.ndarray] = []
    vif_fits: list[_DateFit] = []
    for fit in joint_fits:
        design = factor_values[fit.rows][:, [factor_column[n] for n in fit.joint]]
        complete = design[~np.isnan(design).any(axis=1)]
        if len(complete) >= min_obs:
            vif_designs.append(complete)
            vif_fits.append(fit)
        else:
            fit.vif = dict.fromkeys(fit.joint, float("nan"))
    for fit, values in zip(vif_fits, _vifs(vif_designs), strict=True):
        fit.vif = dict(zip(fit.joint, values, strict=True))
    fit_all([(fit, fit.joint, all_columns, True) for fit in joint_fits])
    # Interest Rate: the symbols the joint model kept; when it is the only factor, it decides `skipped`
    fit_all([(fit, [RATES], np.flatnonzero(fit.skipped == None), not fit.joint)  # noqa: E711 (elementwise)
             for fit in fits if RATES in fit.names])
    return [BetaFit(symbols=tuple(symbols), factors=tuple(fit.names), fitted=fit.fitted, beta=fit.beta,
                    std_error=fit.std_error, t_stat=fit.t_stat, r_squared=fit.r_squared,
                    observations=fit.observations, capped=fit.capped, quality=fit.quality,
                    skipped={symbols[i]: fit.skipped[i] for i in np.flatnonzero(fit.skipped != None)},  # noqa: E711
                    unavailable=dict(date.unavailable), vif=fit.vif, window_days=fit.rows.stop - fit.rows.start)
            for fit, date in zip(fits, dates, strict=True)]


# --------------------------------------------------------------------------------------------
# Covariance and correlation
# --------------------------------------------------------------------------------------------

def ewma_covariance(factors: pd.DataFrame, *, decay: float = EWMA_LAMBDA,
                    window: int = COVARIANCE_WINDOW) -> tuple[pd.DataFrame, int]:
    """Zero-mean (RiskMetrics) exponentially weighted covariance of factor returns (SPEC §6.5).

    `factors`: the `factor_returns` frame (fractions, one column per factor). Takes the last
    `window` rows, keeps the rows complete across all columns (n of them), weights them
    w_i ∝ decay^i with i = 0 for the most recent kept row, normalised to sum to 1, and returns
    Σ = Σ_i w_i r_{t−i} r_{t−i}ᵀ (daily, in return² units) as a DataFrame indexed and columned
    by factor in input order, together with n.

    Raises ValueError if fewer than 2 complete rows remain, if `decay` is not in (0, 1], or if
    `window` < 2.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    if window < 2:
        raise ValueError(f"window must be ≥ 2, got {window}")
    rows = factors.iloc[-window:].astype(float).dropna(how="any")
    n = len(rows)
    if n < 2:
        raise ValueError(f"ewma_covariance needs at least 2 complete rows, got {n}")
    values = rows.to_numpy()
    weights = decay ** np.arange(n - 1, -1, -1, dtype=float)  # oldest row first, newest = 1
    weights /= weights.sum()
    cov = (values * weights[:, None]).T @ values
    cov = (cov + cov.T) / 2.0  # exact symmetry
    return pd.DataFrame(cov, index=rows.columns, columns=rows.columns), n


def correlation_from_covariance(cov: pd.DataFrame) -> pd.DataFrame:
    """Correlation D^{-1/2} Σ D^{-1/2} of a covariance matrix, with an exact 1.0 diagonal and
    entries clipped to [−1, 1] against rounding. A factor with zero variance has an undefined
    correlation: its row and column (diagonal included) are NaN.

    Raises ValueError if `cov` is not square with matching index and columns.
    """
    if cov.shape[0] != cov.shape[1] or not cov.index.equals(cov.columns):
        raise ValueError("cov must be square with identical index and columns")
    values = cov.to_numpy(dtype=float)
    variances = np.diag(values).copy()
    scale = np.full_like(variances, np.nan)
    positive = variances > 0
    scale[positive] = 1.0 / np.sqrt(variances[positive])
    corr = np.clip(values * np.outer(scale, scale), -1.0, 1.0)
    np.fill_diagonal(corr, np.where(positive, 1.0, np.nan))
    return pd.DataFrame(corr, index=cov.index, columns=cov.columns)


def _require_strictly_increasing(index: pd.Index, name: str) -> None:
    if not (index.is_monotonic_increasing and index.is_unique):
        raise ValueError(f"{name}: index must be strictly increasing sessions")
