"""Tests for calculations.options: OCC/OSI symbol parsing and formatting, intrinsic value.

OCC symbol layout (OCC "Options Symbology Initiative"): root (padded to 6 in the OSI form),
YYMMDD expiration, C/P, strike × 1000 as 8 digits. Expected values below are read off the
symbol by hand.
"""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calculations.options import (
    MalformedOccSymbol,
    OccSymbol,
    intrinsic_value,
    is_occ_symbol,
    parse_occ,
)

# SPY, expiring 2025-09-19, call, strike 00460000 / 1000 = 460.000
SPY_CALL = OccSymbol(root="SPY", expiration=date(2025, 9, 19), right="C", strike=460.0)


@pytest.mark.parametrize("symbol", ["SPY250919C00460000", "SPY   250919C00460000"])
def test_parse_compact_and_padded(symbol: str) -> None:
    parsed = parse_occ(symbol)
    assert parsed.root == "SPY"
    assert parsed.expiration == date(2025, 9, 19)
    assert parsed.right == "C"
    assert parsed.strike == 460.0
    assert parsed == SPY_CALL


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        # put, strike 00012500 / 1000 = 12.5
        ("KO230120P00012500", OccSymbol("KO", date(2023, 1, 20), "P", 12.5)),
        # six-character root: no padding needed in either form
        ("GOOGL1231215C01234567", OccSymbol("GOOGL1", date(2023, 12, 15), "C", 1234.567)),
        # root with a dot, padded with one space to width 6
        ("BRK.B 250620P00400000", OccSymbol("BRK.B", date(2025, 6, 20), "P", 400.0)),
        # one-character root padded with five spaces; leap day 2024-02-29 is a real date
        ("F     240229C00000500", OccSymbol("F", date(2024, 2, 29), "C", 0.5)),
    ],
)
def test_parse_other_shapes(symbol: str, expected: OccSymbol) -> None:
    assert parse_occ(symbol) == expected


def test_format_compact_and_padded() -> None:
    assert SPY_CALL.format() == "SPY250919C00460000"
    assert SPY_CALL.format(padded=True) == "SPY   250919C00460000"
    assert len(SPY_CALL.format(padded=True)) == 21


@pytest.mark.parametrize(
    ("symbol", "padded"),
    [
        ("SPY250919C00460000", False),
        ("SPY   250919C00460000", True),
        ("KO230120P00012500", False),
        ("KO    230120P00012500", True),
        ("BRK.B 250620P00400000", True),
    ],
)
def test_round_trip(symbol: str, padded: bool) -> None:
    assert parse_occ(symbol).format(padded=padded) == symbol


@pytest.mark.parametrize(
    "symbol",
    [
        "SPY251319C00460000",  # month 13
        "SPY250230C00460000",  # 30 February
        "SPY230229C00460000",  # 29 February in a non-leap year
        "SPY250900C00460000",  # day 0
        "SPY  250919C00460000",  # padded to 5, not 6
        "SPY    250919C00460000",  # padded to 7, not 6
        "spy250919c00460000",  # lower case
        "SPY250919C0046000",  # 7 strike digits
        "SPY250919C",  # no strike at all
        "SPY250919C00000000",  # zero strike
        "SPY250919X00460000",  # right neither C nor P
        "SPY2509C00460000",  # 4-digit date
        "250919C00460000",  # no root
        "TOOLONG250919C00460000",  # 7-character root
        " SPY250919C00460000",  # leading space
        "",  # empty string
    ],
)
def test_malformed_symbols_raise(symbol: str) -> None:
    with pytest.raises(MalformedOccSymbol) as excinfo:
        parse_occ(symbol)
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.symbol == symbol
    assert repr(symbol) in str(excinfo.value)
    assert is_occ_symbol(symbol) is False


def test_malformed_symbol_is_a_value_error() -> None:
    assert issubclass(MalformedOccSymbol, ValueError)
    with pytest.raises(ValueError, match="SPY251319C00460000"):
        parse_occ("SPY251319C00460000")


def test_trailing_newline_is_malformed() -> None:
    with pytest.raises(MalformedOccSymbol):
        parse_occ("SPY250919C00460000\n")


def test_non_ascii_digits_are_malformed() -> None:
    with pytest.raises(MalformedOccSymbol):
        parse_occ("SPY\u0662\u06650919C00460000")


def test_is_occ_symbol() -> None:
    assert is_occ_symbol("SPY250919C00460000") is True
    assert is_occ_symbol("SPY   250919C00460000") is True
    assert is_occ_symbol("AAPL") is False
    assert is_occ_symbol("BX_PRIVATE_EQUITY") is False


@given(
    root=st.from_regex(r"[A-Z][A-Z0-9.]{0,5}", fullmatch=True),
    expiration=st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31)),
    right=st.sampled_from(["C", "P"]),
    millis=st.integers(min_value=1, max_value=99_999_999),
    padded=st.booleans(),
)
def test_format_parse_round_trip_property(root: str, expiration: date, right: str, millis: int,
                                          padded: bool) -> None:
    contract = OccSymbol(root, expiration, right, millis / 1000)
    text = contract.format(padded=padded)
    assert len(text) == (21 if padded else len(root) + 15)
    assert parse_occ(text) == contract
    assert parse_occ(text).format(padded=padded) == text


# ---------------------------------------------------------------------------------------------
# intrinsic_value (per share, dollars)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("right", "underlying", "strike", "expected"),
    [
        ("C", 470.0, 460.0, 470.0 - 460.0),  # call in the money
        ("C", 450.0, 460.0, 0.0),  # call out of the money
        ("C", 460.0, 460.0, 0.0),  # call at the money
        ("P", 450.0, 460.0, 460.0 - 450.0),  # put in the money
        ("P", 470.0, 460.0, 0.0),  # put out of the money
        ("P", 460.0, 460.0, 0.0),  # put at the money
        ("C", 63.5, 60.0, 3.5),
        ("P", 63.5, 65.0, 1.5),
    ],
)
def test_intrinsic_value(right: str, underlying: float, strike: float, expected: float) -> None:
    assert intrinsic_value(right, underlying, strike) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("right", ["X", "c", "CALL", ""])
def test_intrinsic_value_rejects_bad_right(right: str) -> None:
    with pytest.raises(ValueError, match="right"):
        intrinsic_value(right, 100.0, 90.0)
