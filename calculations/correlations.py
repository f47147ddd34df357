"""Position correlations, diversification metrics and correlation clusters (SPEC §6.6).

Pipeline (the caller decides which positions are PUBLIC and aggregates option delta-dollars onto
their underlying; PRIVATE positions never reach this module):

1. `eligible_exposures` — keep symbols whose |exposure| and |exposure| ÷ gross exposure pass the
   thresholds;
2. `log_returns` — daily log returns from a close table indexed by NYSE session;
3. `correlate` — pairwise-complete Pearson matrix, metrics and clusters, or None when fewer than
   two symbols have enough history (the caller then emits the §8 skip payload).

Units: exposures in dollars (signed, shorts negative), returns as natural-log fractions, weights
as fractions summing to 1. Pure: no database, clock, environment or logging.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
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

    - `symbols`: included symbols, sorted; `matrix` and `observations` are indexed by them on both
      axes, in that order.
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
    matrix: pd.DataFrame
    observations: pd.DataFrame
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


def correlate(
    exposures: Mapping[str, float],
    returns: pd.DataFrame,
    *,
    min_overlap: int = MIN_OVERLAP,
    threshold: float = CLUSTER_THRESHOLD,
    excluded: Mapping[str, str] | None = None,
) -> CorrelationResult | None:
    """Correlation matrix, diversification metrics and clusters for the given exposures.

    `exposures`: symbol → signed dollar exposure, already filtered by `eligible_exposures`
    (finite; weights use |exposure|). `returns`: DataFrame indexed by session, one column per
    symbol (e.g. from `log_returns`), NaN where missing; columns not in `exposures` are ignored.
    `excluded`: exclusions decided upstream (e.g. the second value of `eligible_exposures`),
    carried into the result so it lists every exclusion; must not overlap `exposures`.

    A symbol with fewer than `min_overlap` non-NaN returns (or no column at all) is excluded with
    `insufficient_history`. Returns None when fewer than two symbols remain. Otherwise ρ is
    Pearson over the rows where both symbols have a return, NaN for pairs with fewer than
    `min_overlap` such rows (see `CorrelationResult` for the metrics' definitions).

    Clusters: average-linkage hierarchical clustering (scipy) on distance 1 − ρ, with NaN ρ taken
    as distance 1 (no evidence of co-movement); the tree is cut at distance 1 − `threshold`
    (inclusive), so a group is kept when its members' average ρ ≥ `threshold`; only groups of
    ≥ 2 symbols are reported. Symbols are sorted before anything is computed, so the result does
    not depend on the order of `exposures` or of the columns of `returns`.

    Raises ValueError for a non-finite exposure, all-zero included exposures, infinite returns,
    duplicate return columns, `min_overlap` < 2, or a symbol both in `exposures` and `excluded`.
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
    if not returns.columns.is_unique:
        raise ValueError("returns has duplicate columns")

    candidates = sorted(exposures)
    present = [s for s in candidates if s in returns.columns]
    data = pd.DataFrame(returns[present].to_numpy(dtype=float, na_value=np.nan),
                        index=returns.index, columns=present)
    if np.isinf(data.to_numpy()).any():
        raise ValueError("returns contain infinite values")
    counts = data.notna().sum().to_dict()

    history_excluded = {s: INSUFFICIENT_HISTORY for s in candidates
                        if counts.get(s, 0) < min_overlap}
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

    data = data[symbols]
    present_mask = data.notna().to_numpy(dtype=float)
    obs = (present_mask.T @ present_mask).round().astype(np.int64)
    observations = pd.DataFrame(obs, index=symbols, columns=symbols)

    rho = data.corr(method="pearson", min_periods=min_overlap).to_numpy(dtype=float, copy=True)
    rho = np.clip((rho + rho.T) / 2.0, -1.0, 1.0)  # exact symmetry; clip rounding past ±1
    np.fill_diagonal(rho, 1.0)
    matrix = pd.DataFrame(rho, index=symbols, columns=symbols)

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
        matrix=matrix,
        observations=observations,
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
    labels = fcluster(tree, t=1.0 - threshold, criterion="distance")

    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
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
