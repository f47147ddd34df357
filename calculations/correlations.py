"""Position correlations, diversification metrics and correlation clusters (SPEC §6.6).

Pipeline (the caller decides which positions are PUBLIC and aggregates option delta-dollars onto
their underlying; PRIVATE positions never reach this module):

1. `eligible_exposures` — keep symbols whose |exposure| and |exposure| ÷ gross exposure pass the
   thresholds;
2. `log_returns` — daily log returns from a close table indexed by NYSE session;
3. `return_panel` — those returns prepared once for a whole universe (e.g. every market symbol
   of an as-of date);
4. `correlate` — the block of the universe's pairwise-complete Pearson matrix for the included
   symbols (`ReturnPanel.correlations`: masked matrix products, one computation for every
   case — gaps, short overlaps, constant series), metrics and clusters, or None when fewer than
   two symbols have enough history (the caller then emits the §8 skip payload).

Units: exposures in dollars (signed, shorts negative), returns as natural-log fractions, weights
as fractions summing to 1. Pure: no database, clock, environment or logging.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

CORRELATION_WINDOW, MIN_OVERLAP = 90, 20
MIN_POSITION_VALUE, MIN_WEIGHT = 10_000.0, 0.01
CLUSTER_THRESHOLD = 0.7

# Exclusion reasons
BELOW_MIN_VALUE = "below_min_value"
BELOW_MIN_WEIGHT = "below_min_weight"
INSUFFICIENT_HISTORY = "insufficient_history"

# wᵀRw at or below this is treated as degenerate (see `CorrelationResult.effective_positions`).
_MIN_QUADRATIC_FORM = 1e-12


@dataclass(frozen=True)
class Cluster:
    """A group of ≥ 2 symbols joined by average linkage at ρ ≥ the threshold.

    `symbols` sorted; `avg_correlation` = mean ρ over the cluster's distinct pairs that have a
    value; `weight` = Σ of the members' weights (fraction of the included exposure).
    """

    number: int
    symbols: list[str]
    avg_correlation: float
    weight: float


@dataclass(frozen=True)
class CorrelationResult:
    """Correlations among the included symbols of one portfolio on one as-of date.

    - `symbols`: included symbols, sorted; `matrix` and `observations` (k × k arrays) are indexed
      by them on both axes, in that order.
    - `excluded`: symbol → reason (`below_min_value`, `below_min_weight`, `insufficient_history`).
    - `weights`: |exposure| ÷ Σ|exposure| over the included symbols (sums to 1).
    - `matrix`: Pearson ρ on pairwise-complete observations; NaN where a pair has fewer than
      `min_overlap` common observations, or where either series is constant over the overlap
      (ρ undefined). Never 0 in place of "unknown". Diagonal exactly 1.0, values in [−1, 1].
    - `observations`: number of sessions where both symbols have a return (int); the diagonal is
      each symbol's own count.
    - `avg_abs_correlation`: mean |ρ_ij| over distinct pairs i < j with a value; None if no pair
      has one.
    - `weighted_correlation`: Σ_{i<j} w_i w_j ρ_ij ÷ Σ_{i<j} w_i w_j over pairs with a value; None
      if no pair has one.
    - `effective_positions`: 1 ÷ (wᵀ R w), where R is `matrix` with NaN pairs treated as ρ = 0
      (unknown pairs count as uncorrelated, so with no known pair it is 1 ÷ Σ w_i²; N for N equal
      uncorrelated positions). None when wᵀ R w ≤ 1e-12 — perfectly offsetting positions (e.g. an
      equally weighted pair with ρ = −1) or a pairwise-complete R that is not positive
      semi-definite — since the ratio is then meaningless.
    - `clusters`: see `Cluster`; numbered 1.. by descending weight, then first symbol.
    """

    symbols: list[str]
    excluded: dict[str, str]
    weights: dict[str, float]
    matrix: np.ndarray
    observations: np.ndarray
    avg_abs_correlation: float | None
    weighted_correlation: float | None
    effective_positions: float | None
    clusters: list[Cluster]
    positions_included: int
    positions_excluded: int


def eligible_exposures(
    values: Mapping[str, float],
    gross_exposure: float,
    *,
    min_value: float = MIN_POSITION_VALUE,
    min_weight: float = MIN_WEIGHT,
) -> tuple[dict[str, float], dict[str, str]]:
    """Split per-symbol exposures into those eligible for correlation analysis and the rest.

    `values`: symbol → signed dollar exposure (stock market values plus option delta-dollars,
    aggregated per underlying by the caller). `gross_exposure`: the portfolio's gross exposure in
    dollars (the denominator of the weight test).

    A symbol is kept when |value| ≥ `min_value` AND |value| ÷ `gross_exposure` ≥ `min_weight`
    (both inclusive; shorts are judged by their absolute size). Otherwise it is excluded with
    `below_min_value` (checked first) or `below_min_weight`. A non-finite value fails the value
    test. When `gross_exposure` ≤ 0 (or NaN) no weight can be formed, so nothing passes the weight
    test.

    Returns `(kept, excluded)`: kept maps symbol → the signed value as given; excluded maps
    symbol → reason. Both preserve the input order.
    """
    kept: dict[str, float] = {}
    excluded: dict[str, str] = {}
    gross_ok = gross_exposure > 0  # False for NaN as well
    for symbol, value in values.items():
        size = abs(value)
        if not size >= min_value:  # NaN-safe: NaN fails
            excluded[symbol] = BELOW_MIN_VALUE
        elif not gross_ok or not size / gross_exposure >= min_weight:
            excluded[symbol] = BELOW_MIN_WEIGHT
        else:
            kept[symbol] = value
    return kept, excluded


def log_returns(closes: pd.DataFrame, window: int = CORRELATION_WINDOW) -> pd.DataFrame:
    """Daily log returns of the last `window` sessions.

    `closes`: DataFrame indexed by every NYSE session in ascending order (one row per session,
    including sessions where a symbol has no price), one column per symbol, closes in dollars,
    NaN where missing. The caller passes only closes dated on or before the as-of date.

    The return dated at session t is log(close_t ÷ close_{t−1}) where t−1 is the previous ROW
    (session); if either close is missing the return is NaN — a gap is never bridged across
    sessions, and nothing is filled. The first row has no previous session and yields no return.
    Result: the last `window` return rows (fewer if `closes` has ≤ `window` rows), same columns,
    float dtype. `window + 1` closes give `window` returns.

    Raises ValueError when `window` < 1, the index is not strictly increasing, or a close is not
    positive (bad data must be removed upstream, not turned into ±inf here).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window!r}")
    if not closes.index.is_monotonic_increasing or not closes.index.is_unique:
        raise ValueError("closes must be indexed by session in strictly increasing order")
    values = closes.to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isnan(values) & ~(np.isfinite(values) & (values > 0))  # ≤ 0 or ±inf
    if bad.any():
        columns = sorted({str(closes.columns[j]) for j in np.nonzero(bad)[1]})
        raise ValueError(f"closes must be positive and finite; bad values in {columns}")
    logs = np.log(values)
    returns = pd.DataFrame(logs[1:] - logs[:-1], index=closes.index[1:], columns=closes.columns)
    return returns.iloc[-window:]


@dataclass(frozen=True, slots=True, eq=False)
class PairwiseCorrelations:
    """Pairwise-complete Pearson correlations of k series (rows and columns in the caller's order).

    - `matrix` (k × k float): ρ over the sessions where both series have a return; NaN where the
      pair has fewer than `min_overlap` such sessions or either series is constant over them
      (ρ undefined). Diagonal 1.0 where the series has ≥ `min_overlap` returns and is not
      constant, else NaN. The same undefined entries as
      `pandas.DataFrame.corr(min_periods=min_overlap)`, values equal to rounding.
    - `observations` (k × k int64): the number of sessions where both have a return; the
      diagonal is each series' own count.
    """

    matrix: np.ndarray
    observations: np.ndarray


# n·Σr² over a window of T sessions is at most T⁴, exact in float64 below 2⁵³ (T < 9,741).
_MAX_SESSIONS = 9_000


@dataclass(frozen=True, slots=True, eq=False)
class ReturnPanel:
    """Returns of many symbols over one window, prepared once so that the pairwise-complete
    correlations of any subset are a handful of masked matrix products (`correlations`).

    Axes of the arrays: rows = the window's sessions (ascending), columns = `symbols`.
    - `present`: 1.0 where the symbol has a return that session, 0.0 at a gap;
    - `centred`: the return minus the symbol's mean over the whole window, 0.0 at a gap (Pearson
      over any subset of sessions is shift-invariant; centring first keeps the one-pass sums
      of `correlations` small, so they lose little to cancellation — see its precision note);
    - `ranks`: the dense rank (1, 2, …) of the return among the symbol's distinct returns, 0.0
      at a gap — small integers, so sums of them are exact and tell, exactly, whether a series
      is constant over any set of sessions;
    - `counts`: returns per symbol (int64).
    Build with `return_panel`.
    """

    symbols: tuple[str, ...]
    columns: dict[str, int]  # symbol → column
    present: np.ndarray
    centred: np.ndarray
    ranks: np.ndarray
    counts: np.ndarray

    def count(self, symbol: str) -> int:
        """Returns of `symbol` in the window (0 for a symbol the panel does not hold)."""
        column = self.columns.get(symbol)
        return 0 if column is None else int(self.counts[column])

    def correlations(self, symbols: Sequence[str], min_overlap: int = MIN_OVERLAP) -> PairwiseCorrelations:
        """The pairwise-complete correlations among `symbols` (each held by the panel), in
        that order. For a pair (i, j) with overlap S (sessions where both have a return),
        n = |S| and x the centred returns:

            cov = Σ_S xᵢxⱼ − Σ_S xᵢ · Σ_S xⱼ ÷ n,   varᵢ = Σ_S xᵢ² − (Σ_S xᵢ)² ÷ n,
            ρ = cov ÷ √(varᵢ varⱼ)

        where every Σ_S is one matrix product with the presence mask (a gap contributes 0).
        ρ is NaN when n < `min_overlap` or either series is constant over S (decided exactly on
        the ranks: n·Σ_S r² = (Σ_S r)² only for a constant series), clipped to [−1, 1] and
        exactly symmetric. Raises KeyError naming a symbol the panel does not hold.

        Precision: ρ is within a few ulps × (d ÷ s)² of the exact value, where s is a series'
        spread over the overlap and d the distance between its mean there and its window mean
        (the centre subtracted); for daily returns d ≲ s and ρ agrees with pandas' per-pair
        loop to ~1e-15. A series that barely moves over the overlap (say by 1e-9) while moving
        by 1e-2 elsewhere loses digits; an exactly constant one is always NaN.
        """
        missing = [s for s in symbols if s not in self.columns]
        if missing:
            raise KeyError(f"symbols not in the return panel: {missing}")
        cols = np.fromiter((self.columns[s] for s in symbols), dtype=np.intp, count=len(symbols))
        return _pairwise(self.centred[:, cols], self.present[:, cols], self.ranks[:, cols], min_overlap)


def closes_panel(closes: pd.DataFrame, window: int = CORRELATION_WINDOW) -> ReturnPanel:
    """`return_panel` of the last `window` log returns of `closes` (`log_returns`'s frame: rows
    every session ascending, a column per symbol, NaN where missing; `window + 1` closes used)."""
    returns = log_returns(closes.iloc[-(window + 1):], window)
    return return_panel([str(c) for c in returns.columns], returns.to_numpy(dtype=float))


def return_panel(symbols: Sequence[str], returns: np.ndarray) -> ReturnPanel:
    """Prepare `returns` (rows: sessions of one window, ascending; columns: `symbols`; NaN where
    a symbol has no return) for `ReturnPanel.correlations`.

    Raises ValueError for a shape that does not match `symbols`, duplicate symbols, infinite
    returns, or a window longer than 9,000 sessions (beyond it the exact constancy test on
    ranks could round).
    """
    values = np.asarray(returns, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(symbols):
        raise ValueError(f"returns must be (sessions × {len(symbols)} symbols), got shape {values.shape}")
    if len(set(symbols)) != len(symbols):
        twice = sorted({s for s in symbols if list(symbols).count(s) > 1})
        raise ValueError(f"duplicate symbols in the return panel: {twice}")
    if values.shape[0] > _MAX_SESSIONS:
        raise ValueError(f"return window must be at most {_MAX_SESSIONS} sessions, got {values.shape[0]}")
    if np.isinf(values).any():
        raise ValueError("returns contain infinite values")
    present = ~np.isnan(values)
    counts = present.sum(axis=0)
    means = np.where(present, values, 0.0).sum(axis=0) / np.maximum(counts, 1)
    centred = np.where(present, values - means, 0.0)
    # dense ranks per column: sort (NaN last), a new rank wherever the sorted value changes
    order = np.argsort(values, axis=0, kind="stable")
    ordered = np.take_along_axis(values, order, axis=0)
    step = np.ones(values.shape, dtype=np.int64)
    step[1:] = ordered[1:] != ordered[:-1]
    ranks = np.empty(values.shape, dtype=float)
    np.put_along_axis(ranks, order, np.cumsum(step, axis=0).astype(float), axis=0)
    return ReturnPanel(
        symbols=tuple(symbols), columns={s: k for k, s in enumerate(symbols)},
        present=present.astype(float), centred=centred, ranks=np.where(present, ranks, 0.0),
        counts=counts.astype(np.int64))


def pairwise_correlations(returns: np.ndarray, min_overlap: int = MIN_OVERLAP) -> PairwiseCorrelations:
    """Pairwise-complete Pearson correlations among all columns of `returns` (rows: sessions;
    NaN where missing), as `ReturnPanel.correlations` computes them."""
    values = np.asarray(returns, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"returns must be 2-D (sessions × series), got shape {values.shape}")
    labels = [str(k) for k in range(values.shape[1])]
    return return_panel(labels, values).correlations(labels, min_overlap)


def _pairwise(x: np.ndarray, m: np.ndarray, r: np.ndarray, min_overlap: int) -> PairwiseCorrelations:
    """`ReturnPanel.correlations` on the selected columns: centred returns `x`, presence `m`,
    ranks `r` (rows: sessions; columns: the k series)."""
    n = m.T @ m  # n[i, j] = sessions where both have a return (exact small integers)
    sx = x.T @ m  # sx[i, j] = Σ of xᵢ over the sessions shared with j
    sxx = (x * x).T @ m
    sxy = x.T @ x
    sr = r.T @ m
    srr = (r * r).T @ m
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = sxy - sx * sx.T / n
        var = sxx - sx * sx / n  # var[i, j]: variance sum of i over the overlap with j
        scale = var * var.T
        rho = cov / np.sqrt(scale)
    varies = n * srr - sr * sr > 0  # i takes ≥ 2 distinct values over the overlap with j (exact)
    defined = (n >= min_overlap) & varies & varies.T & (scale > 0)
    rho = np.where(defined, np.clip(rho, -1.0, 1.0), np.nan)
    rho = np.triu(rho, 1)
    rho = rho + rho.T  # exactly symmetric (the strict upper triangle mirrored)
    np.fill_diagonal(rho, np.where(np.diag(defined), 1.0, np.nan))
    return PairwiseCorrelations(matrix=rho, observations=np.rint(n).astype(np.int64))


def correlate(
    exposures: Mapping[str, float],
    panel: ReturnPanel,
    *,
    min_overlap: int = MIN_OVERLAP,
    threshold: float = CLUSTER_THRESHOLD,
    excluded: Mapping[str, str] | None = None,
) -> CorrelationResult | None:
    """Correlation matrix, diversification metrics and clusters for the given exposures.

    `exposures`: symbol → signed dollar exposure, already filtered by `eligible_exposures`
    (finite; weights use |exposure|). `panel`: the returns of a universe holding these symbols
    (e.g. every market symbol of the date, from `log_returns` + `return_panel`); symbols it
    does not hold have no history. `excluded`: exclusions decided upstream (e.g. the second
    value of `eligible_exposures`), carried into the result so it lists every exclusion; must
    not overlap `exposures`.

    A symbol with fewer than `min_overlap` returns (or none in the panel) is excluded with
    `insufficient_history`. Returns None when fewer than two symbols remain. Otherwise the
    matrix is the block of the panel's pairwise-complete correlations for the included symbols
    (`ReturnPanel.correlations`; see `CorrelationResult` for the metrics' definitions).

    Clusters: average-linkage hierarchical clustering (scipy) on distance 1 − ρ, with NaN ρ taken
    as distance 1 (no evidence of co-movement); the tree is cut at distance 1 − `threshold`
    (inclusive), so a group is kept when its members' average ρ ≥ `threshold`; only groups of
    ≥ 2 symbols are reported. Symbols are sorted before anything is computed, so the result does
    not depend on the order of `exposures` or of the panel's columns.

    Raises ValueError for a non-finite exposure, all-zero included exposures, `min_overlap` < 2,
    or a symbol both in `exposures` and `excluded`.
    """
    if min_overlap < 2:
        raise ValueError(f"min_overlap must be >= 2 (Pearson needs two points), "
                         f"got {min_overlap!r}")
    prior = dict(excluded or {})
    both = sorted(set(prior) & set(exposures))
    if both:
        raise ValueError(f"symbols both included and excluded: {both}")
    bad = sorted(s for s, v in exposures.items() if not math.isfinite(v))
    if bad:
        raise ValueError(f"exposures must be finite; got non-finite values for {bad}")

    candidates = sorted(exposures)
    history_excluded = {s: INSUFFICIENT_HISTORY for s in candidates if panel.count(s) < min_overlap}
    symbols = [s for s in candidates if s not in history_excluded]
    all_excluded = {**prior, **history_excluded}
    if len(symbols) < 2:
        return None

    sizes = np.array([abs(exposures[s]) for s in symbols], dtype=float)
    total = sizes.sum()
    if not total > 0:
        raise ValueError("included exposures are all zero; weights are undefined")
    w = sizes / total
    weights = dict(zip(symbols, w.tolist(), strict=True))

    pairs = panel.correlations(symbols, min_overlap)
    rho = pairs.matrix
    np.fill_diagonal(rho, 1.0)  # a constant included series still correlates 1 with itself

    iu = np.triu_indices(len(symbols), k=1)
    pair_rho = rho[iu]
    known = ~np.isnan(pair_rho)
    pair_w = (w[:, None] * w[None, :])[iu]
    if known.any():
        avg_abs = float(np.mean(np.abs(pair_rho[known])))
        weighted = float(np.sum(pair_w[known] * pair_rho[known]) / np.sum(pair_w[known]))
    else:
        avg_abs = weighted = None

    r_filled = np.where(np.isnan(rho), 0.0, rho)
    quad = float(w @ r_filled @ w)
    effective = 1.0 / quad if quad > _MIN_QUADRATIC_FORM else None

    clusters = _clusters(symbols, rho, weights, threshold)

    return CorrelationResult(
        symbols=symbols,
        excluded=dict(sorted(all_excluded.items())),
        weights=weights,
        matrix=rho,
        observations=pairs.observations,
        avg_abs_correlation=avg_abs,
        weighted_correlation=weighted,
        effective_positions=effective,
        clusters=clusters,
        positions_included=len(symbols),
        positions_excluded=len(all_excluded),
    )


def _clusters(symbols: list[str], rho: np.ndarray, weights: Mapping[str, float],
              threshold: float) -> list[Cluster]:
    """Average-linkage clusters of ≥ 2 symbols at ρ ≥ `threshold` (see `correlate`).

    `symbols` sorted; `rho` symmetric with unit diagonal, NaN for unknown pairs.
    """
    distance = 1.0 - np.where(np.isnan(rho), 0.0, rho)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average")
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(_cut(tree, 1.0 - threshold)):
        groups.setdefault(label, []).append(index)

    found: list[tuple[list[str], float, float]] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        names = sorted(symbols[i] for i in members)
        sub = rho[np.ix_(members, members)][np.triu_indices(len(members), k=1)]
        # Members were merged at average distance ≤ 1 − threshold < 1 (for threshold > 0), which
        # needs at least one known pair; guard anyway so a NaN can never leak out.
        known = sub[~np.isnan(sub)]
        avg = float(np.mean(known)) if known.size else math.nan
        found.append((names, avg, float(sum(weights[s] for s in names))))

    found.sort(key=lambda c: (-c[2], c[0][0]))
    return [Cluster(number=n, symbols=names, avg_correlation=avg, weight=weight)
            for n, (names, avg, weight) in enumerate(found, start=1)]


def _cut(tree: np.ndarray, height: float) -> list[int]:
    """Flat-cluster label of each leaf of a scipy linkage `tree` cut at `height` (inclusive):
    leaves whose subtree's highest merge is ≤ `height` share the label of that subtree's top —
    scipy's `fcluster(tree, height, criterion="distance")`, without its per-call validation.
    Rows of `tree` merge nodes (leaves 0..n−1, merge k is node n + k) in creation order."""
    n = len(tree) + 1
    parent = list(range(2 * n - 1))
    top = [0.0] * (2 * n - 1)  # highest merge inside each node's subtree

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k, (a, b, dist, _) in enumerate(tree.tolist()):
        node = n + k
        top[node] = max(dist, top[int(a)], top[int(b)])
        if top[node] <= height:
            parent[root(int(a))] = node
            parent[root(int(b))] = node
    return [root(i) for i in range(n)]

