"""Tests for calculations.correlations: eligible_exposures, log_returns, correlate (SPEC §6.6).

Expected values never come from the code under test: they are hand arithmetic on tiny inputs,
correlations fixed by construction (orthonormal Hadamard columns mixed by the Cholesky factor of
a chosen correlation matrix, so the sample correlation IS that matrix), or an independent numpy
computation (np.corrcoef on the pairwise-complete rows).
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.linalg import hadamard

from calculations.correlations import (
    ReturnPanel,
    CLUSTER_THRESHOLD,
    CORRELATION_WINDOW,
    MIN_OVERLAP,
    MIN_POSITION_VALUE,
    MIN_WEIGHT,
    Cluster,
    correlate,
    eligible_exposures,
    log_returns,
    pairwise_correlations,
    return_panel,
)

SAMPLE_PRICES = Path(__file__).resolve().parents[2] / "batch" / "data" / "sample_prices.csv.gz"

NaN = math.nan


def correlate_frame(exposures: dict[str, float], returns: pd.DataFrame,
                    **kwargs: object) -> CorrelationResult | None:
    """`correlate` on a panel of every column of `returns` (rows: sessions)."""
    return correlate(exposures, return_panel(list(returns.columns), returns.to_numpy(dtype=float)),
                     **kwargs)


def frames(result: CorrelationResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The result's matrix and observations labelled by its symbols, for readable look-ups."""
    return (pd.DataFrame(result.matrix, index=result.symbols, columns=result.symbols),
            pd.DataFrame(result.observations, index=result.symbols, columns=result.symbols))


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-12)


def sessions(n: int, start: date = date(2024, 1, 2)) -> list[date]:
    """n ascending dates standing in for NYSE sessions (log_returns only needs row order)."""
    return [start + timedelta(days=i) for i in range(n)]


def correlated_series(target: list[list[float]], symbols: list[str], rows: int = 32,
                      scale: float = 0.01) -> pd.DataFrame:
    """Returns whose sample Pearson correlation equals `target` (up to rounding).

    Columns 1.. of a Sylvester Hadamard matrix have mean zero and are mutually orthogonal; after
    dividing by √rows they are orthonormal (HᵀH = I). X = H Lᵀ with L Lᵀ = target then has
    centred cross-products XᵀX = L Lᵀ = target, i.e. sample correlation = target.
    """
    h = hadamard(rows)[:, 1:len(symbols) + 1] / math.sqrt(rows)
    chol = np.linalg.cholesky(np.array(target, dtype=float))
    return pd.DataFrame(scale * h @ chol.T, columns=symbols)


def numpy_pearson(x: np.ndarray, y: np.ndarray, min_overlap: int) -> tuple[float, int]:
    """Independent reference: np.corrcoef on the rows where both series are present."""
    both = ~np.isnan(x) & ~np.isnan(y)
    n = int(both.sum())
    if n < min_overlap:
        return NaN, n
    return float(np.corrcoef(x[both], y[both])[0, 1]), n


def test_constants_match_spec() -> None:
    assert (CORRELATION_WINDOW, MIN_OVERLAP) == (90, 20)
    assert (MIN_POSITION_VALUE, MIN_WEIGHT) == (10_000.0, 0.01)
    assert CLUSTER_THRESHOLD == 0.7


def test_fixture_correlations_are_exact_by_construction() -> None:
    target = [[1.0, 0.6, -0.8], [0.6, 1.0, -0.48], [-0.8, -0.48, 1.0]]
    df = correlated_series(target, ["X", "Y", "Z"])
    np.testing.assert_allclose(np.corrcoef(df.to_numpy().T), target, rtol=0, atol=1e-14)


# ---------------------------------------------------------------- eligible_exposures


def test_eligible_value_threshold_inclusive_and_uses_absolute_value() -> None:
    # gross 1,000,000: every size here is ≥ 1% by weight except where noted, so only value bites.
    values = {"A": 10_000.0, "B": 9_999.99, "C": -10_000.0, "D": -9_999.0, "E": 0.0, "F": NaN,
              "G": -250_000.0}
    kept, excluded = eligible_exposures(values, 1_000_000.0)
    assert kept == {"A": 10_000.0, "C": -10_000.0, "G": -250_000.0}  # signed values preserved
    assert excluded == {"B": "below_min_value", "D": "below_min_value", "E": "below_min_value",
                        "F": "below_min_value"}


def test_eligible_weight_threshold_inclusive_and_uses_absolute_value() -> None:
    # gross 3,000,000: 1% = 30,000.
    values = {"A": 30_000.0, "B": 29_999.0, "C": -45_000.0, "D": -20_000.0, "E": 5_000.0}
    kept, excluded = eligible_exposures(values, 3_000_000.0)
    assert kept == {"A": 30_000.0, "C": -45_000.0}
    # E fails both tests; the value test is reported first.
    assert excluded == {"B": "below_min_weight", "D": "below_min_weight", "E": "below_min_value"}


def test_eligible_thresholds_are_configurable() -> None:
    values = {"A": 600.0, "B": -400.0, "C": 50.0}
    kept, excluded = eligible_exposures(values, 1_000.0, min_value=100.0, min_weight=0.4)
    assert kept == {"A": 600.0, "B": -400.0}
    assert excluded == {"C": "below_min_value"}
    kept, excluded = eligible_exposures(values, 1_000.0, min_value=0.0, min_weight=0.5)
    assert kept == {"A": 600.0}
    assert excluded == {"B": "below_min_weight", "C": "below_min_weight"}


@pytest.mark.parametrize("gross", [0.0, -100_000.0, NaN])
def test_eligible_non_positive_gross_keeps_nothing(gross: float) -> None:
    kept, excluded = eligible_exposures({"A": 50_000.0, "B": 1_000.0}, gross)
    assert kept == {}
    assert excluded == {"A": "below_min_weight", "B": "below_min_value"}


def test_eligible_empty() -> None:
    assert eligible_exposures({}, 1_000_000.0) == ({}, {})


# ---------------------------------------------------------------- log_returns


def test_log_returns_gap_is_not_bridged() -> None:
    d = sessions(6)
    closes = pd.DataFrame({"A": [100.0, 110.0, NaN, 121.0, 133.1, 133.1],
                           "B": [50.0, 50.0, 25.0, 25.0, 50.0, NaN]}, index=d)
    got = log_returns(closes)
    assert list(got.index) == d[1:]
    assert list(got.columns) == ["A", "B"]
    a, b = got["A"].tolist(), got["B"].tolist()
    assert a[0] == approx(math.log(1.1))
    assert math.isnan(a[1])  # 110 → missing
    assert math.isnan(a[2])  # missing → 121: not log(121/110)
    assert a[3] == approx(math.log(1.1))
    assert a[4] == approx(0.0)
    assert b[:4] == [approx(0.0), approx(math.log(0.5)), approx(0.0), approx(math.log(2.0))]
    assert math.isnan(b[4])


def test_log_returns_window_keeps_last_returns() -> None:
    d = sessions(6)
    closes = pd.DataFrame({"A": [1.0, 2.0, 4.0, 8.0, 4.0, 4.0]}, index=d)
    got = log_returns(closes, window=3)
    assert list(got.index) == d[3:]
    assert got["A"].tolist() == [approx(math.log(2.0)), approx(math.log(0.5)), approx(0.0)]
    assert len(log_returns(closes, window=10)) == 5


def test_log_returns_default_window_91_closes_give_90_returns() -> None:
    d = sessions(100)
    closes = pd.DataFrame({"A": [100.0 * 1.01 ** i for i in range(100)]}, index=d)
    got = log_returns(closes)
    assert len(got) == 90
    assert list(got.index) == d[10:]
    np.testing.assert_allclose(got["A"].to_numpy(), math.log(1.01), rtol=1e-12)


def test_log_returns_degenerate_inputs() -> None:
    one = log_returns(pd.DataFrame({"A": [100.0]}, index=sessions(1)))
    assert one.empty and list(one.columns) == ["A"]
    all_nan = log_returns(pd.DataFrame({"A": [NaN, NaN, NaN]}, index=sessions(3)))
    assert len(all_nan) == 2 and all_nan["A"].isna().all()


@pytest.mark.parametrize("bad", [0.0, -5.0, math.inf])
def test_log_returns_rejects_non_positive_or_infinite_close(bad: float) -> None:
    closes = pd.DataFrame({"A": [100.0, bad, 101.0]}, index=sessions(3))
    with pytest.raises(ValueError, match="positive"):
        log_returns(closes)


def test_log_returns_rejects_unordered_index_and_bad_window() -> None:
    d = sessions(3)
    with pytest.raises(ValueError, match="increasing"):
        log_returns(pd.DataFrame({"A": [1.0, 2.0, 3.0]}, index=[d[1], d[0], d[2]]))
    with pytest.raises(ValueError, match="increasing"):
        log_returns(pd.DataFrame({"A": [1.0, 2.0, 3.0]}, index=[d[0], d[0], d[2]]))
    with pytest.raises(ValueError, match="window"):
        log_returns(pd.DataFrame({"A": [1.0, 2.0, 3.0]}, index=d), window=0)


# ---------------------------------------------------------------- pairwise_correlations (matrix form)
# Oracle: pandas' pairwise-complete Pearson, `DataFrame.corr(min_periods=20)` (a per-pair loop
# over the common rows), and np.corrcoef on the common rows; never the masked sums under test.


def pandas_oracle(returns: np.ndarray, min_overlap: int = MIN_OVERLAP) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.DataFrame(returns)
    present = frame.notna().to_numpy(dtype=np.int64)
    return frame.corr(min_periods=min_overlap).to_numpy(), present.T @ present


def assert_matches_oracle(returns: np.ndarray, min_overlap: int = MIN_OVERLAP) -> None:
    expected, expected_n = pandas_oracle(returns, min_overlap)
    got = pairwise_correlations(returns, min_overlap)
    np.testing.assert_array_equal(got.observations, expected_n)
    assert got.observations.dtype == np.int64
    np.testing.assert_array_equal(np.isnan(got.matrix), np.isnan(expected))  # same undefined pairs
    np.testing.assert_allclose(got.matrix, expected, rtol=0, atol=1e-12)  # NaN compares equal
    np.testing.assert_array_equal(got.matrix, got.matrix.T)  # exactly symmetric


def sample_log_returns() -> pd.DataFrame:
    closes = pd.read_csv(SAMPLE_PRICES, index_col=0)
    return np.log(closes).diff().iloc[1:]


@pytest.mark.parametrize("end", range(90, 2264, 97))
def test_pairwise_matches_pandas_on_the_sample_prices(end: int) -> None:
    window = sample_log_returns().iloc[end - 90:end].to_numpy()  # 90 returns × 26 symbols
    assert window.shape == (90, 26) and not np.isnan(window).any()
    assert_matches_oracle(window)


@pytest.mark.parametrize("seed", range(6))
def test_pairwise_matches_pandas_on_the_sample_prices_with_gaps_and_stale_stretches(seed: int) -> None:
    rng = np.random.default_rng(seed)
    returns = sample_log_returns()
    end = int(rng.integers(90, len(returns)))
    window = returns.iloc[end - 90:end].to_numpy().copy()
    window[rng.random(window.shape) < rng.uniform(0.05, 0.5)] = NaN  # scattered gaps
    window[:int(rng.integers(50, 80)), 3] = NaN  # a late listing: some pairs < 20 overlaps
    window[10:60, 5] = np.where(np.isnan(window[10:60, 5]), NaN, 0.0)  # a stale price: 0 returns
    window[:, 7] = NaN  # no history at all
    window[:, 9] = np.where(np.isnan(window[:, 9]), NaN, 0.0)  # constant over the whole window
    assert_matches_oracle(window)


def test_pairwise_hand_built_case() -> None:
    # A, B: 25 sessions, B = 2A + 1 where both exist → ρ = 1 over their overlap;
    # C = −A on the first 20 rows only → exactly 20 overlaps, ρ = −1;
    # D: 19 returns → every pair of D below 20 overlaps (NaN) and its own diagonal NaN.
    a = np.array([0.01 * ((k * 7) % 11 - 5) for k in range(25)])
    returns = np.full((25, 4), NaN)
    returns[:, 0] = a
    returns[:, 1] = 2.0 * a + 1.0
    returns[:20, 2] = -a[:20]
    returns[6:, 3] = a[6:] ** 2
    got = pairwise_correlations(returns)
    assert got.observations.tolist() == [[25, 25, 20, 19], [25, 25, 20, 19],
                                         [20, 20, 20, 14], [19, 19, 14, 19]]
    m = got.matrix
    assert m[0, 1] == pytest.approx(1.0, abs=1e-15) and m[0, 2] == pytest.approx(-1.0, abs=1e-15)
    assert m[1, 2] == pytest.approx(-1.0, abs=1e-15)
    assert np.isnan(m[3]).all() and np.isnan(m[:, 3]).all()
    assert np.diag(m)[:3].tolist() == [1.0, 1.0, 1.0]
    assert_matches_oracle(returns)


def test_pairwise_constant_over_the_overlap_only_is_undefined() -> None:
    # A is constant (0.0: a stale price) on rows 0..29 and varies on rows 30..59; B exists only
    # on rows 0..29, C only on rows 20..59. A is constant over its overlap with B (ρ undefined,
    # NaN, whatever B does) but not over its overlap with C. A value equal in every row but
    # rounded differently would not count as constant: the test is exact equality.
    rng = np.random.default_rng(4)
    returns = np.full((60, 3), NaN)
    returns[:30, 0] = 0.0
    returns[30:, 0] = rng.normal(0.0, 0.02, 30)
    returns[:30, 1] = rng.normal(0.0, 0.02, 30)
    returns[20:, 2] = rng.normal(0.0, 0.02, 40)
    got = pairwise_correlations(returns)
    assert got.observations[0, 1] == 30 and got.observations[0, 2] == 40
    assert np.isnan(got.matrix[0, 1]) and np.isnan(got.matrix[1, 0])
    assert got.matrix[0, 2] == pytest.approx(numpy_pearson(returns[:, 0], returns[:, 2], 20)[0],
                                             rel=1e-12)
    assert_matches_oracle(returns)
    # nonzero constant, and −0.0 mixed with 0.0 (equal values): still constant
    returns[:30, 0] = 0.013
    assert np.isnan(pairwise_correlations(returns).matrix[0, 1])
    returns[:30, 0] = np.where(np.arange(30) % 2 == 0, 0.0, -0.0)
    assert np.isnan(pairwise_correlations(returns).matrix[0, 1])
    assert_matches_oracle(returns)


def exact_pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson over the rows where both are present, in exact rational arithmetic (one final
    rounding): an oracle that loses nothing to cancellation."""
    both = ~np.isnan(x) & ~np.isnan(y)
    a, b = [Fraction(v) for v in x[both]], [Fraction(v) for v in y[both]]
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((p - ma) * (q - mb) for p, q in zip(a, b, strict=True))
    va, vb = sum((p - ma) ** 2 for p in a), sum((q - mb) ** 2 for q in b)
    return float(cov) / math.sqrt(float(va) * float(vb))


def test_pairwise_precise_when_the_series_sit_far_from_zero() -> None:
    # Pearson is shift-invariant; one-pass sums on raw series around 100 with spread 1e-3 would
    # lose ~10 digits to cancellation. Centring each column by its window mean first keeps the
    # result within a few ulps of the exact value (pandas' running-mean update is off by ~4e-12
    # on this input, so the oracle here is exact rational arithmetic).
    rng = np.random.default_rng(21)
    noise = rng.normal(0.0, 1e-3, size=(90, 4))
    noise[:, 1] += 0.5 * noise[:, 0]
    noise[rng.random(noise.shape) < 0.25] = NaN
    returns = 100.0 + noise
    got = pairwise_correlations(returns).matrix
    for i in range(4):
        for j in range(i + 1, 4):
            assert got[i, j] == pytest.approx(exact_pearson(returns[:, i], returns[:, j]),
                                              rel=0, abs=1e-14)


def test_pairwise_degenerate_shapes() -> None:
    one = pairwise_correlations(np.linspace(-0.01, 0.02, 30)[:, None])
    assert one.matrix.tolist() == [[1.0]] and one.observations.tolist() == [[30]]
    empty = pairwise_correlations(np.empty((90, 0)))
    assert empty.matrix.shape == empty.observations.shape == (0, 0)
    no_rows = pairwise_correlations(np.empty((0, 2)))
    assert np.isnan(no_rows.matrix).all() and no_rows.observations.tolist() == [[0, 0], [0, 0]]
    all_nan = pairwise_correlations(np.full((40, 2), NaN))
    assert np.isnan(all_nan.matrix).all() and not all_nan.observations.any()
    constant = pairwise_correlations(np.full((40, 2), 0.01))
    assert np.isnan(constant.matrix).all() and (constant.observations == 40).all()


def test_pairwise_min_overlap_boundary() -> None:
    rng = np.random.default_rng(8)
    returns = rng.normal(0.0, 0.02, size=(30, 2))
    returns[:11, 1] = NaN  # 19 common sessions
    assert np.isnan(pairwise_correlations(returns).matrix[0, 1])
    assert not np.isnan(pairwise_correlations(returns, min_overlap=19).matrix[0, 1])
    assert_matches_oracle(returns, 19)
    returns[10, 1] = 0.001  # 20 common sessions
    assert not np.isnan(pairwise_correlations(returns).matrix[0, 1])


@settings(deadline=None, max_examples=200)
@given(hnp.arrays(np.float64, st.tuples(st.integers(0, 45), st.integers(1, 6)),
                  elements=st.one_of(st.just(NaN), st.just(-0.0),
                                     st.integers(-20, 20).map(lambda k: k * 0.005))))
def test_pairwise_matches_pandas_on_arbitrary_tables(returns: np.ndarray) -> None:
    # Returns on a coarse grid on purpose: ties, zeros (stale prices) and series constant over
    # some overlap are common. (Not arbitrary floats: a series moving by 1e-9 over its overlap
    # with another while moving by 1e-2 elsewhere is beyond one-pass sums — see
    # `ReturnPanel.correlations`.)
    assert_matches_oracle(returns)


def test_panel_block_is_the_block_of_the_universe() -> None:
    rng = np.random.default_rng(12)
    data = rng.normal(0.0, 0.02, size=(90, 12)) + rng.normal(0.0, 0.01, size=(90, 1))
    data[rng.random(data.shape) < 0.3] = NaN
    symbols = [f"S{k:02d}" for k in range(12)]
    panel = return_panel(symbols, data)
    assert isinstance(panel, ReturnPanel)
    expected, expected_n = pandas_oracle(data)
    pick = ["S07", "S02", "S11", "S05"]  # any order: the block follows it
    idx = [symbols.index(s) for s in pick]
    block = panel.correlations(pick)
    np.testing.assert_allclose(block.matrix, expected[np.ix_(idx, idx)], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(block.observations, expected_n[np.ix_(idx, idx)])
    assert panel.count("S03") == int((~np.isnan(data[:, 3])).sum()) and panel.count("NOPE") == 0
    with pytest.raises(KeyError, match="NOPE"):
        panel.correlations(["S01", "NOPE"])


def test_return_panel_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        return_panel(["A", "B"], np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"duplicate symbols in the return panel: \['A'\]"):
        return_panel(["A", "B", "A"], np.zeros((5, 3)))
    with pytest.raises(ValueError, match="infinite"):
        return_panel(["A"], np.array([[0.01], [math.inf]]))
    with pytest.raises(ValueError, match="at most 9000 sessions"):
        return_panel(["A"], np.zeros((9_001, 1)))


# ---------------------------------------------------------------- correlate: matrix


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pearson_matches_numpy_on_pairwise_complete_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = ["AAPL", "JNJ", "KO", "MSFT", "XOM"]
    data = rng.normal(0.0005, 0.02, size=(90, 5))
    data[:, 1] += 0.7 * data[:, 0]  # some genuine correlation
    data[rng.random((90, 5)) < 0.2] = NaN
    data[:60, 4] = NaN  # XOM: ~24 returns, so some of its pairs fall below 20 overlaps
    returns = pd.DataFrame(data, columns=symbols)
    result = correlate_frame(dict.fromkeys(symbols, 50_000.0), returns)
    assert result is not None
    assert result.symbols == symbols
    for i, a in enumerate(symbols):
        for j, b in enumerate(symbols):
            got = frames(result)[0].loc[a, b]
            n = int(frames(result)[1].loc[a, b])
            if i == j:
                assert got == 1.0
                assert n == int(np.sum(~np.isnan(data[:, i])))
                continue
            expected, expected_n = numpy_pearson(data[:, i], data[:, j], 20)
            assert n == expected_n
            if math.isnan(expected):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(expected, rel=1e-12, abs=1e-13)


def test_pair_with_fewer_than_min_overlap_is_nan_not_zero() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(0.0, 0.02, size=40)
    cols = {name: np.full(40, NaN) for name in "ABCD"}
    cols["A"][0:30] = base[0:30]  # 30 returns
    cols["B"][15:40] = base[15:40]  # 25 returns; overlap with A = rows 15..29 = 15
    cols["C"][:] = rng.normal(0.0, 0.02, size=40)  # 40 returns
    cols["D"][20:40] = base[20:40] * 3.0  # exactly 20 returns; with B: rows 20..39 = 20
    returns = pd.DataFrame(cols)
    result = correlate_frame(dict.fromkeys("ABCD", 25_000.0), returns)
    assert result is not None
    m, obs = frames(result)
    assert obs.loc["A", "B"] == obs.loc["B", "A"] == 15
    assert obs.loc["A", "C"] == 30 and obs.loc["B", "C"] == 25
    assert obs.loc["A", "D"] == 10 and obs.loc["B", "D"] == 20 and obs.loc["C", "D"] == 20
    assert [obs.loc[s, s] for s in "ABCD"] == [30, 25, 40, 20]
    assert result.observations.dtype.kind == "i"
    assert math.isnan(m.loc["A", "B"]) and math.isnan(m.loc["B", "A"])  # identical data, 15 rows
    assert math.isnan(m.loc["A", "D"])
    assert m.loc["B", "D"] == pytest.approx(1.0, abs=1e-12)  # exactly 20 overlaps: has a value
    assert m.loc["A", "C"] == pytest.approx(numpy_pearson(cols["A"], cols["C"], 20)[0], rel=1e-12)
    # A and B are identical where both exist, but with no valid ρ they are not clustered;
    # B and D (ρ = 1) are.
    assert [c.symbols for c in result.clusters] == [["B", "D"]]

    relaxed = correlate_frame(dict.fromkeys("ABCD", 25_000.0), returns, min_overlap=10)
    assert relaxed is not None
    assert frames(relaxed)[0].loc["A", "B"] == pytest.approx(1.0, abs=1e-12)
    assert frames(relaxed)[0].loc["A", "D"] == pytest.approx(1.0, abs=1e-12)
    assert [c.symbols for c in relaxed.clusters] == [["A", "B", "D"]]


# ---------------------------------------------------------------- correlate: metrics


def test_three_symbol_metrics_by_hand() -> None:
    # ρ_XY = 0.6, ρ_XZ = −0.8, ρ_YZ = −0.48 by construction; Z is a short.
    target = [[1.0, 0.6, -0.8], [0.6, 1.0, -0.48], [-0.8, -0.48, 1.0]]
    returns = correlated_series(target, ["X", "Y", "Z"])
    result = correlate_frame({"Z": -20_000.0, "X": 50_000.0, "Y": 30_000.0}, returns)
    assert result is not None
    assert result.symbols == ["X", "Y", "Z"]
    assert result.weights == {"X": approx(0.5), "Y": approx(0.3), "Z": approx(0.2)}
    np.testing.assert_allclose(result.matrix, target, rtol=0, atol=1e-12)
    # mean |ρ| = (0.6 + 0.8 + 0.48) / 3
    assert result.avg_abs_correlation == approx(1.88 / 3)
    # Σ w_i w_j ρ_ij = 0.15·0.6 + 0.10·(−0.8) + 0.06·(−0.48) = −0.0188; Σ w_i w_j = 0.31
    assert result.weighted_correlation == approx(-0.0188 / 0.31)
    # wᵀRw = (0.25 + 0.09 + 0.04) + 2·(−0.0188) = 0.3424
    assert result.effective_positions == approx(1 / 0.3424)
    assert result.clusters == []  # distances 0.4, 1.8, 1.48 are all > 0.3
    assert (result.positions_included, result.positions_excluded) == (3, 0)
    assert result.excluded == {}

    # Lower the bar to ρ ≥ 0.5: X and Y (ρ = 0.6) now form a cluster.
    loose = correlate_frame({"Z": -20_000.0, "X": 50_000.0, "Y": 30_000.0}, returns, threshold=0.5)
    assert loose is not None
    assert loose.clusters == [Cluster(1, ["X", "Y"], approx(0.6), approx(0.8))]


def test_orthogonal_series_effective_positions_equal_n() -> None:
    symbols = [f"S{i}" for i in range(8)]
    returns = pd.DataFrame(hadamard(64)[:, 1:9] * 2.0 ** -7, columns=symbols)
    result = correlate_frame(dict.fromkeys(symbols, 40_000.0), returns)
    assert result is not None
    off = result.matrix[~np.eye(8, dtype=bool)]
    np.testing.assert_allclose(off, 0.0, atol=1e-14)
    assert result.effective_positions == approx(8.0)
    assert result.avg_abs_correlation == pytest.approx(0.0, abs=1e-14)
    assert result.weighted_correlation == pytest.approx(0.0, abs=1e-14)
    assert result.clusters == []


def test_r_forced_to_identity_gives_exactly_n_and_no_pair_metrics() -> None:
    # Disjoint histories: every pair has 0 overlaps, so every off-diagonal ρ is NaN and is
    # treated as 0 in wᵀRw — R is exactly the identity.
    rng = np.random.default_rng(3)
    cols = {s: np.full(80, NaN) for s in "ABCD"}
    for k, s in enumerate("ABCD"):
        cols[s][20 * k:20 * (k + 1)] = rng.normal(0.0, 0.02, size=20)
    returns = pd.DataFrame(cols)
    result = correlate_frame(dict.fromkeys("ABCD", 30_000.0), returns)
    assert result is not None
    assert result.effective_positions == 4.0  # 1 / (4 · 0.25²), exact
    assert result.avg_abs_correlation is None and result.weighted_correlation is None
    assert result.clusters == []
    assert np.isnan(result.matrix[~np.eye(4, dtype=bool)]).all()
    assert (result.observations == np.diag([20, 20, 20, 20])).all()

    unequal = correlate_frame({"A": 60_000.0, "B": -30_000.0, "C": 15_000.0, "D": 15_000.0}, returns)
    assert unequal is not None
    assert unequal.effective_positions == approx(1 / (0.5**2 + 0.25**2 + 0.125**2 + 0.125**2))


def test_independent_random_series_effective_positions_close_to_n() -> None:
    rng = np.random.default_rng(11)
    symbols = ["A", "B", "C", "D", "E", "F"]
    returns = pd.DataFrame(rng.normal(0.0, 0.02, size=(5_000, 6)), columns=symbols)
    result = correlate_frame(dict.fromkeys(symbols, 20_000.0), returns)
    assert result is not None
    assert result.effective_positions == pytest.approx(6.0, rel=0.05)
    assert result.avg_abs_correlation is not None and result.avg_abs_correlation < 0.05
    assert result.clusters == []


def test_perfectly_correlated_pair_clusters_and_anticorrelated_does_not() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(0.0, 0.02, size=60)
    returns = pd.DataFrame({"A": base, "B": 2.5 * base, "C": -base,
                            "D": rng.normal(0.0, 0.02, size=60)})
    result = correlate_frame(dict.fromkeys("ABCD", 10_000.0), returns)
    assert result is not None
    m = frames(result)[0]
    assert m.loc["A", "B"] == pytest.approx(1.0, abs=1e-12)
    assert m.loc["A", "C"] == pytest.approx(-1.0, abs=1e-12)
    assert m.loc["B", "C"] == pytest.approx(-1.0, abs=1e-12)
    assert result.clusters == [Cluster(1, ["A", "B"], pytest.approx(1.0, abs=1e-12), approx(0.5))]

    pair = correlate_frame({"A": 10_000.0, "C": 10_000.0}, returns)
    assert pair is not None
    assert pair.clusters == []
    assert pair.weighted_correlation == pytest.approx(-1.0, abs=1e-12)
    # wᵀRw = 0.5 − 0.5 = 0: perfectly offsetting, documented as None rather than ∞.
    assert pair.effective_positions is None


def test_weights_use_absolute_exposure() -> None:
    returns = correlated_series([[1.0, 0.0], [0.0, 1.0]], ["L", "S"])
    result = correlate_frame({"L": 75_000.0, "S": -25_000.0}, returns)
    assert result is not None
    assert result.weights == {"L": approx(0.75), "S": approx(0.25)}
    assert sum(result.weights.values()) == approx(1.0)


# ---------------------------------------------------------------- correlate: clustering


def test_average_linkage_not_single_linkage() -> None:
    # d_AB = 0.1, d_AC = 0.2, d_BC = 0.5. Single linkage joins C at 0.2; average linkage
    # joins C at (0.2 + 0.5) / 2 = 0.35 > 0.3, so C stays out.
    target = [[1.0, 0.9, 0.8], [0.9, 1.0, 0.5], [0.8, 0.5, 1.0]]
    result = correlate_frame(dict.fromkeys("ABC", 10_000.0), correlated_series(target, ["A", "B", "C"]))
    assert result is not None
    assert result.clusters == [Cluster(1, ["A", "B"], approx(0.9), approx(2 / 3))]


def test_average_linkage_not_complete_linkage() -> None:
    # d_AB = 0.1, d_AC = 0.2, d_BC = 0.35. Complete linkage would need 0.35 ≤ 0.3; average
    # linkage joins C at (0.2 + 0.35) / 2 = 0.275.
    target = [[1.0, 0.9, 0.8], [0.9, 1.0, 0.65], [0.8, 0.65, 1.0]]
    result = correlate_frame(dict.fromkeys("ABC", 10_000.0), correlated_series(target, ["A", "B", "C"]))
    assert result is not None
    assert result.clusters == [Cluster(1, ["A", "B", "C"], approx((0.9 + 0.8 + 0.65) / 3),
                                       approx(1.0))]


def test_average_linkage_averages_over_all_members_not_subclusters() -> None:
    # A, B merge at d 0.05, C joins them at 0.15. D's distances to A, B, C are 0.2, 0.2, 0.48:
    # average linkage (UPGMA) gives (0.2 + 0.2 + 0.48) / 3 ≈ 0.293 ≤ 0.3, so D joins; weighted
    # linkage (WPGMA) would give (0.2 + 0.48) / 2 = 0.34 and leave D out.
    target = [[1.0, 0.95, 0.85, 0.8], [0.95, 1.0, 0.85, 0.8],
              [0.85, 0.85, 1.0, 0.52], [0.8, 0.8, 0.52, 1.0]]
    result = correlate_frame(dict.fromkeys("ABCD", 10_000.0),
                       correlated_series(target, ["A", "B", "C", "D"]))
    assert result is not None
    assert result.clusters == [
        Cluster(1, ["A", "B", "C", "D"], approx((0.95 + 0.85 + 0.8 + 0.85 + 0.8 + 0.52) / 6),
                approx(1.0))]


BLOCKS = [[1.0, 0.95, 0.0, 0.0, 0.0],
          [0.95, 1.0, 0.0, 0.0, 0.0],
          [0.0, 0.0, 1.0, 0.9, 0.0],
          [0.0, 0.0, 0.9, 1.0, 0.0],
          [0.0, 0.0, 0.0, 0.0, 1.0]]
BLOCK_SYMBOLS = ["XOM", "CVX", "MSFT", "AAPL", "KO"]  # (XOM, CVX) and (MSFT, AAPL) co-move


def test_clusters_numbered_by_weight_then_first_symbol() -> None:
    returns = correlated_series(BLOCKS, BLOCK_SYMBOLS)
    heavy_tech = {"XOM": 10_000.0, "CVX": 10_000.0, "MSFT": 30_000.0, "AAPL": 30_000.0,
                  "KO": 20_000.0}
    result = correlate_frame(heavy_tech, returns)
    assert result is not None
    assert result.clusters == [Cluster(1, ["AAPL", "MSFT"], approx(0.9), approx(0.6)),
                               Cluster(2, ["CVX", "XOM"], approx(0.95), approx(0.2))]

    heavy_energy = {**heavy_tech, "XOM": 40_000.0, "CVX": 40_000.0}  # total 160,000
    result = correlate_frame(heavy_energy, returns)
    assert result is not None
    assert [(c.number, c.symbols, c.weight) for c in result.clusters] == [
        (1, ["CVX", "XOM"], approx(0.5)), (2, ["AAPL", "MSFT"], approx(0.375))]

    equal = correlate_frame(dict.fromkeys(BLOCK_SYMBOLS, 10_000.0), returns)
    assert equal is not None  # equal weights 0.4 / 0.4: ties broken by first symbol
    assert [(c.number, c.symbols) for c in equal.clusters] == [(1, ["AAPL", "MSFT"]),
                                                               (2, ["CVX", "XOM"])]


def _noisy_block_returns() -> tuple[dict[str, float], pd.DataFrame]:
    rng = np.random.default_rng(2024)
    f1, f2 = rng.normal(0, 0.02, 90), rng.normal(0, 0.02, 90)
    cols = {"AAPL": f1 + rng.normal(0, 0.005, 90), "MSFT": f1 + rng.normal(0, 0.005, 90),
            "NVDA": f1 + rng.normal(0, 0.008, 90), "XOM": f2 + rng.normal(0, 0.005, 90),
            "CVX": f2 + rng.normal(0, 0.005, 90), "KO": rng.normal(0, 0.01, 90),
            "JNJ": rng.normal(0, 0.01, 90), "SPY": 0.5 * f1 + 0.5 * f2}
    returns = pd.DataFrame(cols)
    returns.iloc[rng.random(returns.shape) < 0.1] = NaN
    exposures = {s: float(10_000 * (k + 1)) * (-1) ** k for k, s in enumerate(cols)}
    return exposures, returns


_EXPOSURES, _RETURNS = _noisy_block_returns()
_REFERENCE = correlate_frame(_EXPOSURES, _RETURNS)


def naive_average_linkage(symbols: list[str], dist: np.ndarray, cut: float) -> list[list[str]]:
    """Independent UPGMA: repeatedly merge the two groups with the smallest mean pairwise
    distance while it is ≤ `cut` (average linkage is monotone, so this equals cutting the tree).
    Returns the groups of ≥ 2 symbols, each sorted, sorted by first symbol."""
    groups = [[i] for i in range(len(symbols))]
    while len(groups) > 1:
        best = min(((float(np.mean(dist[np.ix_(a, b)])), x, y)
                    for x, a in enumerate(groups) for y, b in enumerate(groups) if x < y))
        if best[0] > cut:
            break
        _, x, y = best
        groups[x] = groups[x] + groups[y]
        del groups[y]
    return sorted(sorted(symbols[i] for i in g) for g in groups if len(g) >= 2)


def test_noisy_blocks_clusters_match_independent_average_linkage() -> None:
    assert _REFERENCE is not None
    symbols = sorted(_RETURNS.columns)
    data = _RETURNS[symbols].to_numpy()
    n = len(symbols)
    rho = np.array([[1.0 if i == j else numpy_pearson(data[:, i], data[:, j], 20)[0]
                     for j in range(n)] for i in range(n)])
    expected = naive_average_linkage(symbols, 1.0 - rho, 1.0 - CLUSTER_THRESHOLD)
    # SPY (half each factor) joins the energy pair: its mean distance to {CVX, XOM} is < 0.3.
    assert expected == [["AAPL", "MSFT", "NVDA"], ["CVX", "SPY", "XOM"]]
    # Exposures are 10k·(k+1) in insertion order AAPL, MSFT, NVDA, XOM, CVX, KO, JNJ, SPY (Σ 360k):
    # energy + SPY = (5 + 4 + 8) / 36, tech = (1 + 2 + 3) / 36 → energy cluster is number 1.
    pos = {s: k for k, s in enumerate(symbols)}

    def mean_rho(names: list[str]) -> float:
        idx = [pos[s] for s in names]
        return float(np.mean(rho[np.ix_(idx, idx)][np.triu_indices(len(idx), k=1)]))

    assert _REFERENCE.clusters == [
        Cluster(1, ["CVX", "SPY", "XOM"], approx(mean_rho(["CVX", "SPY", "XOM"])), approx(17 / 36)),
        Cluster(2, ["AAPL", "MSFT", "NVDA"], approx(mean_rho(["AAPL", "MSFT", "NVDA"])),
                approx(6 / 36)),
    ]
    again = correlate_frame(_EXPOSURES, _RETURNS)
    assert again is not None and again.clusters == _REFERENCE.clusters  # deterministic runs


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_random_clusters_match_independent_average_linkage(seed: int) -> None:
    rng = np.random.default_rng(seed)
    factors = rng.normal(0, 0.02, size=(60, 3))
    loadings = rng.uniform(-1.0, 1.0, size=(3, 9)) * (rng.random((3, 9)) < 0.5)
    data = factors @ loadings + rng.normal(0, 0.006, size=(60, 9))
    data[rng.random(data.shape) < 0.1] = NaN
    symbols = [f"S{k}" for k in range(9)]
    result = correlate_frame(dict.fromkeys(symbols, 1e5), pd.DataFrame(data, columns=symbols))
    assert result is not None
    rho = np.array([[1.0 if i == j else numpy_pearson(data[:, i], data[:, j], 20)[0]
                     for j in range(9)] for i in range(9)])
    expected = naive_average_linkage(symbols, 1.0 - rho, 1.0 - CLUSTER_THRESHOLD)
    assert sorted(c.symbols for c in result.clusters) == expected


@settings(deadline=None, max_examples=40)
@given(st.permutations(list(_EXPOSURES)), st.permutations(list(_RETURNS.columns)))
def test_clusters_and_matrix_independent_of_input_order(exposure_order: list[str],
                                                         column_order: list[str]) -> None:
    assert _REFERENCE is not None
    exposures = {s: _EXPOSURES[s] for s in exposure_order}
    result = correlate_frame(exposures, _RETURNS[column_order])
    assert result is not None
    assert result.symbols == _REFERENCE.symbols
    assert result.clusters == _REFERENCE.clusters
    np.testing.assert_array_equal(result.matrix, _REFERENCE.matrix)  # NaN where NaN, else equal
    np.testing.assert_array_equal(result.observations, _REFERENCE.observations)
    assert result.weights == _REFERENCE.weights
    assert (result.avg_abs_correlation, result.weighted_correlation,
            result.effective_positions) == (_REFERENCE.avg_abs_correlation,
                                            _REFERENCE.weighted_correlation,
                                            _REFERENCE.effective_positions)


# ---------------------------------------------------------------- correlate: properties


@st.composite
def return_tables(draw: st.DrawFn) -> pd.DataFrame:
    n_symbols = draw(st.integers(2, 6))
    rows = draw(st.integers(15, 40))
    values = draw(hnp.arrays(np.float64, (rows, n_symbols),
                             elements=st.floats(-0.1, 0.1, allow_subnormal=False)))
    missing = draw(hnp.arrays(np.bool_, (rows, n_symbols), elements=st.booleans()))
    values[missing] = NaN
    return pd.DataFrame(values, columns=[f"S{k}" for k in range(n_symbols)])


@settings(deadline=None, max_examples=150)
@given(return_tables())
def test_matrix_symmetric_unit_diagonal_and_bounded(returns: pd.DataFrame) -> None:
    symbols = list(returns.columns)
    counts = {s: int(returns[s].notna().sum()) for s in symbols}
    enough = sorted(s for s in symbols if counts[s] >= MIN_OVERLAP)
    result = correlate_frame(dict.fromkeys(symbols, 10_000.0), returns)
    if len(enough) < 2:
        assert result is None
        return
    assert result is not None
    assert result.symbols == enough
    assert result.excluded == {s: "insufficient_history" for s in symbols if s not in enough}
    assert result.positions_included + result.positions_excluded == len(symbols)
    m = result.matrix
    assert m.shape == (len(enough), len(enough))
    np.testing.assert_array_equal(m, m.T)  # NaN positions equal too
    assert (np.diag(m) == 1.0).all()
    finite = m[~np.isnan(m)]
    assert ((finite >= -1.0) & (finite <= 1.0)).all()
    obs = result.observations
    np.testing.assert_array_equal(obs, obs.T)
    present = returns[enough].notna().to_numpy()
    for i in range(len(enough)):
        for j in range(len(enough)):
            assert obs[i, j] == int(np.sum(present[:, i] & present[:, j]))
            if obs[i, j] < MIN_OVERLAP:
                assert math.isnan(m[i, j])
    assert sum(result.weights.values()) == approx(1.0)
    for c in result.clusters:
        assert len(c.symbols) >= 2 and c.symbols == sorted(c.symbols)
        assert c.avg_correlation >= CLUSTER_THRESHOLD - 1e-9 or len(c.symbols) > 2


# ---------------------------------------------------------------- correlate: exclusions, errors


def test_insufficient_history_and_upstream_exclusions() -> None:
    rng = np.random.default_rng(9)
    returns = pd.DataFrame(rng.normal(0, 0.02, size=(30, 3)), columns=["A", "B", "SHORTHIST"])
    returns.loc[19:, "SHORTHIST"] = NaN  # 19 returns
    kept, upstream = eligible_exposures(
        {"A": 100_000.0, "B": -80_000.0, "SHORTHIST": 50_000.0, "NODATA": 40_000.0,
         "TINY": 5_000.0}, 275_000.0)
    assert upstream == {"TINY": "below_min_value"}
    result = correlate_frame(kept, returns, excluded=upstream)
    assert result is not None
    assert result.symbols == ["A", "B"]
    assert result.excluded == {"NODATA": "insufficient_history",
                               "SHORTHIST": "insufficient_history", "TINY": "below_min_value"}
    assert (result.positions_included, result.positions_excluded) == (2, 3)
    assert result.weights == {"A": approx(100 / 180), "B": approx(80 / 180)}


def test_fewer_than_two_symbols_returns_none() -> None:
    rng = np.random.default_rng(1)
    returns = pd.DataFrame(rng.normal(0, 0.02, size=(30, 2)), columns=["A", "B"])
    returns.loc[5:, "B"] = NaN
    assert correlate_frame({"A": 50_000.0, "B": 50_000.0}, returns) is None
    assert correlate_frame({"A": 50_000.0}, returns) is None
    assert correlate_frame({}, returns) is None
    assert correlate_frame({"A": 50_000.0, "B": 50_000.0}, returns.iloc[:0]) is None


def test_invalid_inputs_raise() -> None:
    returns = correlated_series([[1.0, 0.0], [0.0, 1.0]], ["A", "B"])
    with pytest.raises(ValueError, match="finite"):
        correlate_frame({"A": NaN, "B": 1.0}, returns)
    with pytest.raises(ValueError, match="both included and excluded"):
        correlate_frame({"A": 1.0, "B": 1.0}, returns, excluded={"A": "below_min_value"})
    with pytest.raises(ValueError, match="all zero"):
        correlate_frame({"A": 0.0, "B": 0.0}, returns)
    with pytest.raises(ValueError, match="infinite"):
        correlate_frame({"A": 1.0, "B": 1.0}, returns.assign(B=returns["B"].where(returns.index > 0,
                                                                          math.inf)))
    with pytest.raises(ValueError, match="duplicate"):
        correlate_frame({"A": 1.0, "B": 1.0}, pd.concat([returns, returns["A"]], axis=1))
    with pytest.raises(ValueError, match="min_overlap"):
        correlate_frame({"A": 1.0, "B": 1.0}, returns, min_overlap=1)


@pytest.mark.parametrize("seed", range(4))
def test_tree_cut_equals_scipy_fcluster(seed: int) -> None:
    # the clusters cut the average-linkage tree themselves; scipy's fcluster is the oracle,
    # including cut heights exactly at a merge (inclusive)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    from calculations.correlations import _cut

    rng = np.random.default_rng(seed)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        rho = np.corrcoef(rng.normal(size=(n, 2)) @ rng.normal(size=(2, 40))
                          + rng.normal(size=(n, 40)) * rng.uniform(0.1, 2.0))
        distance = 1.0 - rho
        np.fill_diagonal(distance, 0.0)
        tree = linkage(squareform(distance, checks=False), method="average")
        for height in (0.3, float(rng.uniform(0.0, 1.5)), float(tree[rng.integers(0, n - 1), 2])):
            expected = fcluster(tree, t=height, criterion="distance")
            got = np.array(_cut(tree, height))
            assert {tuple(np.flatnonzero(expected == v)) for v in set(expected.tolist())} == \
                   {tuple(np.flatnonzero(got == v)) for v in set(got.tolist())}
