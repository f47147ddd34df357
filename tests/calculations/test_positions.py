"""Tests for calculations.positions: the symbol classification rule (SPEC §9) and the
PositionInput helpers (asset class, held-on-date, quantity sign checks).

Every expectation is written by hand from the SPEC, never produced by the code under test.
"""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calculations.options import is_occ_symbol
from calculations.positions import (
    OPTIONS,
    PRIVATE,
    PRIVATE_PATTERNS,
    PUBLIC,
    PositionInput,
    classify_symbol,
    price_symbols,
)


def make_position(
    position_type: str = "LONG",
    quantity: float = 10.0,
    *,
    symbol: str = "AAPL",
    entry_date: date = date(2022, 12, 22),
    exit_date: date | None = None,
    investment_class: str | None = None,
    underlying_symbol: str | None = None,
) -> PositionInput:
    return PositionInput(
        id=uuid.UUID(int=1),
        symbol=symbol,
        position_type=position_type,
        quantity=quantity,
        entry_price=100.0,
        entry_date=entry_date,
        exit_date=exit_date,
        investment_class=investment_class,
        underlying_symbol=underlying_symbol,
    )


# ---------------------------------------------------------------------------------------------
# classify_symbol
# ---------------------------------------------------------------------------------------------

# The demo high-net-worth book's private holdings (SPEC §9) plus the other pattern families.
@pytest.mark.parametrize(
    "symbol",
    [
        "BX_PRIVATE_EQUITY",
        "A16Z_VC_FUND",
        "RENTAL_CONDO",
        "RENTAL_SFH",
        "CRYPTO_BTC_ETH",
        "ART_COLLECTIBLES",
        "STARWOOD_REIT",
        "TWO_SIGMA_FUND",
        "HOME_EQUITY",
        "MONEY_MARKET",
        "TREASURY_BILLS",
        "KKR_PE_III",  # `_PE_`
    ],
)
def test_private_symbols_are_private(symbol: str) -> None:
    assert classify_symbol(symbol) == PRIVATE


@pytest.mark.parametrize("symbol", ["bx_private_equity", "  Home_Equity  "])
def test_private_patterns_are_case_and_whitespace_insensitive(symbol: str) -> None:
    assert classify_symbol(symbol) == PRIVATE


@pytest.mark.parametrize(
    "symbol",
    [
        "SPY250919C00460000",  # compact OCC
        "SPY   250919C00460000",  # padded 21-character OSI
        "AAPL230120P00150000",
        "BRK.B 250620C00400000",  # root with a dot, padded to 6
    ],
)
def test_occ_symbols_are_options(symbol: str) -> None:
    assert classify_symbol(symbol) == OPTIONS


@pytest.mark.parametrize("symbol", ["AAPL", "BRK.B", "SPY", "MSFT", "XOM"])
def test_plain_tickers_are_public(symbol: str) -> None:
    assert classify_symbol(symbol) == PUBLIC


@pytest.mark.parametrize(
    "symbol",
    [
        "SPY250919C0046000",  # 7-digit strike
        "SPY251319C00460000",  # month 13
        "SPY  250919C00460000",  # wrong pad width (5 characters)
    ],
)
def test_almost_occ_symbols_are_public(symbol: str) -> None:
    # Not a strict OCC symbol and no private pattern -> PUBLIC.
    assert classify_symbol(symbol) == PUBLIC


@pytest.mark.parametrize(
    "symbol",
    [
        # Each of these is a *valid* OCC symbol (root <= 6 chars, YYMMDD, C/P, 8 digits) whose
        # root contains a private pattern: the private rule is checked first (SPEC §9).
        "REIT250919C00460000",
        "FUND  250919P00012500",
        "SIGMA 250919C00460000",
    ],
)
def test_private_pattern_wins_over_option_pattern(symbol: str) -> None:
    assert is_occ_symbol(symbol)  # premise: it really does look like an option
    assert classify_symbol(symbol) == PRIVATE


@given(
    prefix=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", max_size=6),
    pattern=st.sampled_from(PRIVATE_PATTERNS),
    suffix=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ", max_size=15),
)
def test_any_symbol_containing_a_private_pattern_is_private(prefix: str, pattern: str,
                                                            suffix: str) -> None:
    assert classify_symbol(prefix + pattern + suffix) == PRIVATE


# ---------------------------------------------------------------------------------------------
# asset_class / multiplier / market_symbol
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("investment_class", "position_type", "expected"),
    [
        # NULL investment_class is *not* PRIVATE (SPEC §5.2): decided by the position type.
        (None, "LONG", PUBLIC),
        (None, "SHORT", PUBLIC),
        (None, "LC", OPTIONS),
        (None, "LP", OPTIONS),
        (None, "SC", OPTIONS),
        (None, "SP", OPTIONS),
        ("PUBLIC", "LONG", PUBLIC),
        ("OPTIONS", "LC", OPTIONS),
        ("PRIVATE", "LONG", PRIVATE),
    ],
)
def test_asset_class(investment_class: str | None, position_type: str, expected: str) -> None:
    qty = -1.0 if position_type in ("SHORT", "SC", "SP") else 1.0
    pos = make_position(position_type, qty, investment_class=investment_class)
    assert pos.asset_class == expected


def test_multiplier_and_market_symbol() -> None:
    stock = make_position("LONG", 100.0, symbol="AAPL")
    option = make_position("LC", 2.0, symbol="AAPL230120C00150000", underlying_symbol="AAPL")
    private = make_position("LONG", 1.0, symbol="BX_PRIVATE_EQUITY", investment_class=PRIVATE)
    assert (stock.multiplier, stock.market_symbol) == (1.0, "AAPL")
    assert (option.multiplier, option.market_symbol) == (100.0, "AAPL")
    assert (private.multiplier, private.market_symbol) == (1.0, None)


# ---------------------------------------------------------------------------------------------
# is_held_on
# ---------------------------------------------------------------------------------------------

def test_is_held_on_boundaries() -> None:
    pos = make_position(entry_date=date(2022, 12, 22), exit_date=date(2022, 12, 27))
    assert pos.is_held_on(date(2022, 12, 21)) is False  # before entry
    assert pos.is_held_on(date(2022, 12, 22)) is True  # entry day: held at its close
    assert pos.is_held_on(date(2022, 12, 23)) is True
    assert pos.is_held_on(date(2022, 12, 27)) is False  # exit day: not held at its close
    assert pos.is_held_on(date(2022, 12, 28)) is False


def test_open_position_is_held_indefinitely() -> None:
    pos = make_position(entry_date=date(2022, 12, 22), exit_date=None)
    assert pos.is_held_on(date(2030, 1, 2)) is True


@pytest.mark.parametrize("position_type", ["LONG", "SHORT", "LC"])
def test_zero_quantity_is_not_held(position_type: str) -> None:
    pos = make_position(position_type, 0.0, entry_date=date(2022, 12, 22))
    assert pos.is_held_on(date(2022, 12, 23)) is False


# ---------------------------------------------------------------------------------------------
# sign_error
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("position_type", "quantity"),
    [
        ("LONG", 100.0),
        ("SHORT", -50.0),
        ("LC", 2.0),
        ("LP", 1.0),
        ("SC", -3.0),
        ("SP", -1.0),
        ("LONG", 0.0),
        ("SHORT", 0.0),
    ],
)
def test_consistent_signs_have_no_error(position_type: str, quantity: float) -> None:
    assert make_position(position_type, quantity).sign_error() is None


@pytest.mark.parametrize(
    ("position_type", "quantity", "fragment"),
    [
        ("LONG", -100.0, "LONG with negative quantity"),
        ("LC", -2.0, "LC with negative quantity"),
        ("LP", -1.0, "LP with negative quantity"),
        ("SHORT", 50.0, "SHORT with positive quantity"),
        ("SC", 3.0, "SC with positive quantity"),
        ("SP", 1.0, "SP with positive quantity"),
    ],
)
def test_contradicting_signs_are_reported(position_type: str, quantity: float,
                                          fragment: str) -> None:
    message = make_position(position_type, quantity).sign_error()
    assert message is not None
    assert fragment in message


def test_unknown_position_type_is_reported() -> None:
    message = make_position("BUY", 10.0).sign_error()
    assert message is not None
    assert "BUY" in message


def test_option_terms_fall_back_to_the_occ_symbol():
    from calculations.positions import OptionContract

    typed_long = PositionInput(id=uuid.UUID(int=1), symbol="AAPL230317C00150000", position_type="LONG",
                               quantity=2.0, entry_price=5.0, entry_date=date(2022, 11, 1),
                               investment_class="OPTIONS")
    assert typed_long.contract == OptionContract("C", 150.0, date(2023, 3, 17))
    put = PositionInput(id=uuid.UUID(int=2), symbol="JPM230616P00125000", position_type="SP",
                        quantity=-1.0, entry_price=5.0, entry_date=date(2022, 11, 1),
                        investment_class="OPTIONS", strike_price=120.0)
    assert put.contract == OptionContract("P", 120.0, date(2023, 6, 16))  # the column wins
    stock = PositionInput(id=uuid.UUID(int=3), symbol="AAPL", position_type="LONG", quantity=1.0,
                          entry_price=1.0, entry_date=date(2022, 1, 3))
    assert stock.contract is None


def test_price_symbols_are_own_symbols_plus_option_underlyings() -> None:
    positions = [make_position("LONG", 100.0, symbol="MSFT"),
                 make_position("LC", 2.0, symbol="AAPL230120C00150000", underlying_symbol="AAPL"),
                 make_position("LONG", 1.0, symbol="BX_PRIVATE_EQUITY", investment_class=PRIVATE)]
    assert price_symbols(positions) == {"MSFT", "AAPL230120C00150000", "AAPL", "BX_PRIVATE_EQUITY"}
    assert price_symbols([]) == set()
