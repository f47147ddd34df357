"""Tests for calculations.exposures: factor_exposures and Exposures.by_factor (SPEC §6.3).

Where the expected values come from: hand arithmetic on a three-position book (a long stock, a
short stock and a long call entered by its dollar delta), written out line by line below, and
for the rescaling property the arithmetic identity k × (v × β) = (k × v) × β checked with a
tolerance on random inputs.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calculations.exposures import (
    ExposureInput,
    Exposures,
    PortfolioExposure,
    PositionExposure,
    factor_exposures,
)

# The SPEC §6.3 names, in the SPEC's order (written out here, not imported from the code).
FACTORS = ["Market", "Value", "Growth", "Momentum", "Quality", "Size", "Low Volatility",
           "Interest Rate"]

AAPL_LONG = uuid.UUID(int=1)
XOM_SHORT = uuid.UUID(int=2)
AAPL_CALL = uuid.UUID(int=3)
NO_BETAS = uuid.UUID(int=4)

BETAS = {
    "AAPL": {"Market": 1.2, "Size": -0.3},
    "XOM": {"Market": 0.8, "Value": 0.5},
}
EQUITY = 100_000.0


def _book() -> list[ExposureInput]:
    return [
        ExposureInput(AAPL_LONG, "AAPL", 100 * 150.0),  # long 100 AAPL at $150: MV 15,000
        ExposureInput(XOM_SHORT, "XOM", -50 * 100.0),  # short 50 XOM at $100: MV −5,000
        ExposureInput(AAPL_CALL, "AAPL", 6_000.0),  # long call, dollar_delta 6,000 on AAPL
    ]


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-9)


# ---------------------------------------------------------------- the hand-computed book


def test_position_exposures_by_hand() -> None:
    result = factor_exposures(_book(), BETAS, EQUITY, FACTORS)
    # Per input, the factors in FACTORS order that the symbol has a beta for.
    expected = [
        (AAPL_LONG, "AAPL", "Market", 1.2, 18_000.0),  # 15,000 × 1.2
        (AAPL_LONG, "AAPL", "Size", -0.3, -4_500.0),  # 15,000 × −0.3
        (XOM_SHORT, "XOM", "Market", 0.8, -4_000.0),  # −5,000 × 0.8
        (XOM_SHORT, "XOM", "Value", 0.5, -2_500.0),  # −5,000 × 0.5
        (AAPL_CALL, "AAPL", "Market", 1.2, 7_200.0),  # 6,000 × 1.2
        (AAPL_CALL, "AAPL", "Size", -0.3, -1_800.0),  # 6,000 × −0.3
    ]
    got = [(p.position_id, p.symbol, p.factor, p.beta, p.exposure_dollar) for p in result.positions]
    assert [g[:4] for g in got] == [e[:4] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[4] == approx(e[4])
    assert all(isinstance(p, PositionExposure) for p in result.positions)


def test_portfolio_exposures_and_betas_by_hand() -> None:
    result = factor_exposures(_book(), BETAS, EQUITY, FACTORS)
    # Market: 15,000×1.2 − 5,000×0.8 + 6,000×1.2 = 18,000 − 4,000 + 7,200 = 21,200
    # Value:  −5,000×0.5 = −2,500
    # Size:   15,000×(−0.3) + 6,000×(−0.3) = −4,500 − 1,800 = −6,300
    # beta = exposure ÷ 100,000
    expected = [("Market", 21_200.0, 0.212), ("Value", -2_500.0, -0.025), ("Size", -6_300.0, -0.063)]
    assert [p.factor for p in result.portfolio] == ["Market", "Value", "Size"]  # FACTORS order
    for p, (factor, dollars, beta) in zip(result.portfolio, expected, strict=True):
        assert isinstance(p, PortfolioExposure)
        assert p.factor == factor
        assert p.exposure_dollar == approx(dollars)
        assert p.beta == approx(beta)
    assert result.analyzed == 3
    assert result.skipped == {}


def test_by_factor_is_the_portfolio_dollars_in_factor_order() -> None:
    by_factor = factor_exposures(_book(), BETAS, EQUITY, FACTORS).by_factor()
    assert list(by_factor) == ["Market", "Value", "Size"]
    assert by_factor == {"Market": approx(21_200.0), "Value": approx(-2_500.0),
                         "Size": approx(-6_300.0)}


def test_factor_nobody_has_is_absent() -> None:
    result = factor_exposures(_book(), BETAS, EQUITY, FACTORS)
    absent = {"Growth", "Momentum", "Quality", "Low Volatility", "Interest Rate"}
    assert absent.isdisjoint(p.factor for p in result.portfolio)
    assert absent.isdisjoint(p.factor for p in result.positions)
    assert absent.isdisjoint(result.by_factor())


def test_factor_order_is_the_given_order_not_the_beta_dict_order() -> None:
    order = ["Size", "Value", "Market"]
    result = factor_exposures(_book(), BETAS, EQUITY, order)
    assert [p.factor for p in result.portfolio] == ["Size", "Value", "Market"]
    assert [p.factor for p in result.positions if p.position_id == AAPL_LONG] == ["Size", "Market"]
    assert [p.factor for p in result.positions if p.position_id == XOM_SHORT] == ["Value", "Market"]


def test_betas_for_factors_outside_the_order_are_ignored() -> None:
    betas = {"AAPL": {"Market": 1.2, "Size": -0.3}}
    result = factor_exposures([ExposureInput(AAPL_LONG, "AAPL", 15_000.0)], betas, EQUITY,
                              ["Market"])
    assert [(p.factor, p.exposure_dollar) for p in result.positions] == [("Market", approx(18_000.0))]
    assert result.by_factor() == {"Market": approx(18_000.0)}


def test_short_only_book_has_negative_exposure_and_beta() -> None:
    result = factor_exposures([ExposureInput(XOM_SHORT, "XOM", -5_000.0)], BETAS, 20_000.0, FACTORS)
    # Market −5,000 × 0.8 = −4,000 → beta −0.2; Value −5,000 × 0.5 = −2,500 → beta −0.125
    assert [(p.factor, p.exposure_dollar, p.beta) for p in result.portfolio] == [
        ("Market", approx(-4_000.0), approx(-0.2)), ("Value", approx(-2_500.0), approx(-0.125))]


def test_long_and_short_can_cancel_to_zero() -> None:
    inputs = [ExposureInput(AAPL_LONG, "AAPL", 10_000.0), ExposureInput(AAPL_CALL, "AAPL", -10_000.0)]
    result = factor_exposures(inputs, BETAS, EQUITY, FACTORS)
    # Both positions have the factor, so it is present with 0 exposure (not left out).
    assert result.by_factor() == {"Market": approx(0.0), "Size": approx(0.0)}
    assert [p.beta for p in result.portfolio] == [approx(0.0), approx(0.0)]


# ---------------------------------------------------------------- skips and degenerate inputs


def test_symbol_without_betas_is_skipped_insufficient_history() -> None:
    inputs = [*_book(), ExposureInput(NO_BETAS, "NEWCO", 9_999.0)]
    result = factor_exposures(inputs, BETAS, EQUITY, FACTORS)
    assert result.skipped == {NO_BETAS: "insufficient_history"}
    assert result.analyzed == 3  # 4 inputs − 1 skipped
    assert NO_BETAS not in {p.position_id for p in result.positions}
    # The skipped position does not move the portfolio numbers.
    assert result.by_factor() == {"Market": approx(21_200.0), "Value": approx(-2_500.0),
                                  "Size": approx(-6_300.0)}


def test_symbol_with_empty_beta_map_is_skipped() -> None:
    result = factor_exposures([ExposureInput(NO_BETAS, "NEWCO", 1_000.0)], {"NEWCO": {}}, EQUITY,
                              FACTORS)
    assert result.skipped == {NO_BETAS: "insufficient_history"}
    assert result.analyzed == 0
    assert result.positions == [] and result.portfolio == []


def test_every_position_skipped() -> None:
    inputs = [ExposureInput(uuid.UUID(int=10 + k), f"X{k}", 1_000.0) for k in range(3)]
    result = factor_exposures(inputs, BETAS, EQUITY, FACTORS)
    assert result.analyzed == 0
    assert result.skipped == {uuid.UUID(int=10 + k): "insufficient_history" for k in range(3)}
    assert result.positions == [] and result.portfolio == []
    assert result.by_factor() == {}


def test_empty_input() -> None:
    result = factor_exposures([], BETAS, EQUITY, FACTORS)
    assert result == Exposures([], [], 0, {})
    assert result.by_factor() == {}


def test_zero_equity_gives_beta_none_but_keeps_dollars() -> None:
    result = factor_exposures(_book(), BETAS, 0.0, FACTORS)
    assert [p.beta for p in result.portfolio] == [None, None, None]
    assert result.by_factor() == {"Market": approx(21_200.0), "Value": approx(-2_500.0),
                                  "Size": approx(-6_300.0)}


def test_negative_equity_beta_is_still_exposure_over_equity() -> None:
    result = factor_exposures([ExposureInput(AAPL_LONG, "AAPL", 15_000.0)], BETAS, -50_000.0,
                              ["Market"])
    assert result.portfolio[0].beta == approx(18_000.0 / -50_000.0)


# ---------------------------------------------------------------- property: rescaling


finite = st.floats(-1e7, 1e7, allow_nan=False, allow_infinity=False, allow_subnormal=False)
beta_values = st.floats(-5.0, 5.0, allow_nan=False, allow_subnormal=False)
scale = st.floats(-10.0, 10.0, allow_nan=False, allow_subnormal=False)


@st.composite
def books(draw: st.DrawFn) -> tuple[list[ExposureInput], dict[str, dict[str, float]]]:
    symbols = ["A", "B", "C"]
    factors = ["Market", "Value", "Size"]
    betas = {}
    for s in symbols:
        chosen = draw(st.lists(st.sampled_from(factors), min_size=1, max_size=3, unique=True))
        betas[s] = {f: draw(beta_values) for f in chosen}
    n = draw(st.integers(1, 6))
    inputs = [ExposureInput(uuid.UUID(int=100 + i), draw(st.sampled_from(symbols)), draw(finite))
              for i in range(n)]
    return inputs, betas


@settings(deadline=None, max_examples=200)
@given(books(), st.data(), scale, st.floats(1_000.0, 1e8, allow_nan=False))
def test_rescaling_one_position_scales_its_exposures_only(book, data, k: float, equity: float) -> None:
    inputs, betas = book
    i = data.draw(st.integers(0, len(inputs) - 1), label="rescaled position")
    target = inputs[i]
    rescaled = list(inputs)
    rescaled[i] = ExposureInput(target.position_id, target.symbol, target.dollar_value * k)

    before = factor_exposures(inputs, betas, equity, FACTORS)
    after = factor_exposures(rescaled, betas, equity, FACTORS)

    mine_before = {p.factor: p for p in before.positions if p.position_id == target.position_id}
    mine_after = {p.factor: p for p in after.positions if p.position_id == target.position_id}
    assert list(mine_after) == list(mine_before)
    for factor, p in mine_before.items():
        q = mine_after[factor]
        assert q.beta == p.beta  # betas do not change when a position is rescaled
        assert q.exposure_dollar == pytest.approx(k * p.exposure_dollar, rel=1e-9, abs=1e-6)

    # The other positions are untouched.
    others_before = [p for p in before.positions if p.position_id != target.position_id]
    others_after = [p for p in after.positions if p.position_id != target.position_id]
    assert others_after == others_before

    # Portfolio exposure moves linearly: new = old + (k − 1) × this position's exposure.
    old, new = before.by_factor(), after.by_factor()
    assert list(new) == list(old)
    size = max(abs(v.dollar_value) for v in rescaled + inputs) * 5.0 * len(inputs)
    for factor, old_value in old.items():
        delta = (k - 1.0) * mine_before[factor].exposure_dollar if factor in mine_before else 0.0
        assert new[factor] == pytest.approx(old_value + delta, rel=1e-9, abs=1e-9 * size + 1e-9)
    for p_new in after.portfolio:
        assert p_new.beta == pytest.approx(p_new.exposure_dollar / equity, rel=1e-12, abs=1e-15)
    assert after.analyzed == before.analyzed == len(inputs)


def test_a_chunk_of_books_matches_each_book_by_the_direct_formula():
    """40 random books over 30 symbols (some without betas, some with a few factors only),
    computed as one chunk, against the formula written out per book: each (position, factor)
    cell is value × β, each portfolio total the plain sum of its cells, beta = total ÷ equity."""
    import numpy as np

    from calculations.exposures import factor_exposures_books

    rng = np.random.default_rng(5)
    symbols = [f"S{i}" for i in range(30)]
    betas = {s: {f: float(rng.normal()) for f in FACTORS if rng.random() < 0.7}
             for s in symbols[:25]}  # S25..S29 have no betas
    books = [[ExposureInput(uuid.UUID(int=1000 * b + k), symbols[int(rng.integers(0, 30))],
                            float(rng.normal() * 50_000)) for k in range(int(rng.integers(0, 15)))]
             for b in range(40)]
    equities = [float(rng.random() * 1e6) if b % 9 else 0.0 for b in range(40)]
    chunk = factor_exposures_books(books, betas, equities, FACTORS)
    for book, equity, got in zip(books, equities, chunk, strict=True):
        cells = [(i.position_id, i.symbol, f, betas[i.symbol][f], i.dollar_value * betas[i.symbol][f])
                 for i in book if betas.get(i.symbol) for f in FACTORS if f in betas[i.symbol]]
        assert [(p.position_id, p.symbol, p.factor, p.beta, p.exposure_dollar) for p in got.positions] == cells
        totals = {f: sum(c[4] for c in cells if c[2] == f) for f in FACTORS if any(c[2] == f for c in cells)}
        assert [(p.factor, p.exposure_dollar) for p in got.portfolio] == [
            (f, pytest.approx(totals[f], rel=1e-12, abs=1e-6)) for f in FACTORS if f in totals]
        for p in got.portfolio:
            assert p.beta is None if equity == 0 else p.beta == pytest.approx(totals[p.factor] / equity, rel=1e-12)
        assert got.skipped == {i.position_id: "insufficient_history" for i in book if not betas.get(i.symbol)}
        assert got.analyzed == len(book) - len(got.skipped)
