"""Tests for calculations.valuation: latest_close, price_position, value_portfolio, daily_pnl
(SPEC §6.1, §6.7).

Fixtures are tiny hand-built price tables; every expected dollar amount is written as the
arithmetic on those inputs (quantity × price × multiplier), never produced by the code under test.
"""

from __future__ import annotations

import itertools
import math
import uuid
from datetime import date

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calculations.positions import OPTIONS, PRIVATE, PUBLIC, PositionInput
from calculations.prices import latest_close, usable_closes
from calculations.valuation import (
    daily_pnl,
    price_position,
    value_portfolio,
)

NaN = math.nan
_ids = itertools.count(1)

# NYSE sessions around Christmas 2022 (2022-12-26 was the observed Christmas holiday).
D16 = date(2022, 12, 16)  # Fri — option expiration
D19, D20, D21 = date(2022, 12, 19), date(2022, 12, 20), date(2022, 12, 21)
D22, D23 = date(2022, 12, 22), date(2022, 12, 23)
D27, D28 = date(2022, 12, 27), date(2022, 12, 28)
AS_OF = D28
ENTRY = date(2022, 12, 1)

RATE = 0.04  # risk-free rate passed to option model pricing
MSFT_CALL = "MSFT230120C00240000"  # traded
JNJ_PUT = "JNJ230120P00170000"  # never traded
KO_CALL = "KO221216C00060000"  # expired 2022-12-16, strike 60


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-9)


def frame(rows: dict[date, dict[str, float]]) -> pd.DataFrame:
    """Closes indexed by datetime.date (ascending), one column per symbol, NaN for missing."""
    df = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    df.index = pd.Index(list(df.index), dtype=object)
    return df


def pos(symbol: str, position_type: str, quantity: float, entry_price: float, *,
        entry_date: date = ENTRY, exit_date: date | None = None,
        investment_class: str | None = None, underlying: str | None = None,
        strike: float | None = None, expiration: date | None = None) -> PositionInput:
    if investment_class is None and position_type in ("LC", "LP", "SC", "SP"):
        investment_class = OPTIONS
    return PositionInput(
        id=uuid.UUID(int=next(_ids)), symbol=symbol, position_type=position_type,
        quantity=quantity, entry_price=entry_price, entry_date=entry_date, exit_date=exit_date,
        investment_class=investment_class, underlying_symbol=underlying, strike_price=strike,
        expiration_date=expiration,
    )


def private(symbol: str, value: float) -> PositionInput:
    return pos(symbol, "LONG", 1.0, value, investment_class=PRIVATE)


# ---------------------------------------------------------------------------------------------
# The worked example
# ---------------------------------------------------------------------------------------------

CLOSES = frame({
    D16: {"AAPL": 134.50, "XOM": 107.00, "MSFT": 244.00, "JNJ": 178.00, "KO": 63.50,
          MSFT_CALL: 9.00},
    D23: {"AAPL": 131.00, "XOM": 108.00, "MSFT": 238.00, "JNJ": 177.00, "KO": 63.80,
          MSFT_CALL: 6.00, "RENTAL_CONDO": 150_000.0},
    D27: {"AAPL": 130.00, "XOM": 109.50, "MSFT": 236.00, "JNJ": 178.50, "KO": 64.20,
          MSFT_CALL: 5.00},
    D28: {"AAPL": 126.00, "XOM": 110.00, "MSFT": 234.00, "JNJ": 176.00, "KO": 64.00,
          MSFT_CALL: 5.50},
})

AAPL_LONG = pos("AAPL", "LONG", 100.0, 140.00)
XOM_SHORT = pos("XOM", "SHORT", -50.0, 100.00)
MSFT_LC = pos(MSFT_CALL, "LC", 2.0, 8.00, underlying="MSFT", strike=240.0,
              expiration=date(2023, 1, 20))
# NULL investment_class on purpose: a LP is an option even when the class was never set.
JNJ_LP = PositionInput(
    id=uuid.UUID(int=900), symbol=JNJ_PUT, position_type="LP", quantity=4.0, entry_price=2.50,
    entry_date=ENTRY, investment_class=None, underlying_symbol="JNJ", strike_price=170.0,
    expiration_date=date(2023, 1, 20),
)
KO_LC_EXPIRED = pos(KO_CALL, "LC", 3.0, 1.20, underlying="KO", strike=60.0, expiration=D16)
BX = private("BX_PRIVATE_EQUITY", 285_000.0)
CONDO = private("RENTAL_CONDO", 142_500.0)
CASH = 10_000.0

PORTFOLIO = [AAPL_LONG, XOM_SHORT, MSFT_LC, JNJ_LP, KO_LC_EXPIRED, BX, CONDO]

# Hand-computed position values at the close of 2022-12-28:
AAPL_MV = 100 * 126.00  # 12,600
XOM_MV = -50 * 110.00  # -5,500
MSFT_LC_MV = 2 * 5.50 * 100  # 1,100   traded price under the option symbol
JNJ_LP_MV = 4 * 2.50 * 100  # 1,000   no traded price -> entry price
KO_LC_MV = 3 * (63.50 - 60.0) * 100  # 1,050   KO close on expiry 12-16, not 12-28's 64.00
BX_MV = 1 * 285_000.0  # entry value, no mark
CONDO_MV = 1 * 150_000.0  # latest mark (12-23), not the 142,500 entry

LONG = AAPL_MV + MSFT_LC_MV + JNJ_LP_MV + KO_LC_MV  # 15,750
SHORT = XOM_MV  # -5,500
PRIVATE_VALUE = BX_MV + CONDO_MV  # 435,000


def by_symbol(valuation) -> dict:
    return {p.position.symbol: p for p in valuation.positions}


def test_worked_example_position_values() -> None:
    v = value_portfolio(PORTFOLIO, CLOSES, AS_OF, cash=CASH, risk_free_rate=RATE)
    p = by_symbol(v)

    assert p["AAPL"].market_value == approx(AAPL_MV)
    assert (p["AAPL"].price, p["AAPL"].price_date, p["AAPL"].price_source) == (126.00, D28, "market")
    assert p["AAPL"].flags == ()

    assert p["XOM"].market_value == approx(XOM_MV)
    assert p["XOM"].price_source == "market"

    assert p[MSFT_CALL].market_value == approx(MSFT_LC_MV)
    assert (p[MSFT_CALL].price, p[MSFT_CALL].price_source) == (5.50, "market")

    assert p[JNJ_PUT].market_value == approx(JNJ_LP_MV)
    assert (p[JNJ_PUT].price, p[JNJ_PUT].price_date, p[JNJ_PUT].price_source) == (2.50, None, "entry")
    assert p[JNJ_PUT].flags == ("model_price_unavailable",)

    assert p[KO_CALL].market_value == approx(KO_LC_MV)
    assert p[KO_CALL].price == approx(63.50 - 60.0)
    assert (p[KO_CALL].price_date, p[KO_CALL].price_source) == (D16, "intrinsic")
    assert p[KO_CALL].flags == ("expired",)

    assert p["BX_PRIVATE_EQUITY"].market_value == approx(BX_MV)
    assert p["BX_PRIVATE_EQUITY"].price_source == "entry"

    assert p["RENTAL_CONDO"].market_value == approx(CONDO_MV)
    assert (p["RENTAL_CONDO"].price_date, p["RENTAL_CONDO"].price_source) == (D23, "mark")


def test_worked_example_aggregates() -> None:
    v = value_portfolio(PORTFOLIO, CLOSES, AS_OF, cash=CASH, risk_free_rate=RATE)

    assert v.as_of == AS_OF
    assert v.long_value == approx(12_600 + 1_100 + 1_000 + 1_050)
    assert v.long_value == approx(LONG)
    assert v.short_value == approx(-5_500)
    assert v.gross_exposure == approx(15_750 + 5_500)  # 21,250
    assert v.net_exposure == approx(15_750 - 5_500)  # 10,250
    assert v.private_value == approx(285_000 + 150_000)  # 435,000
    assert v.cash_value == CASH
    assert v.total_value == approx(10_250 + 435_000 + 10_000)  # 455,250
    assert v.num_positions == 7
    assert v.num_long == 4  # AAPL, MSFT call, JNJ put, KO call
    assert v.num_short == 1  # XOM
    assert v.num_private == 2
    assert v.skipped == ()


def test_short_option_is_negative_and_counted_short() -> None:
    # Short 3 MSFT calls at the traded 5.50: 3 contracts × 5.50 × 100, negative.
    sc = pos(MSFT_CALL, "SC", -3.0, 7.00, underlying="MSFT", strike=240.0,
             expiration=date(2023, 1, 20))
    v = value_portfolio([sc], CLOSES, AS_OF, cash=0.0, risk_free_rate=RATE)
    assert v.positions[0].market_value == approx(-3 * 5.50 * 100)
    assert v.short_value == approx(-1_650)
    assert v.long_value == 0
    assert v.gross_exposure == approx(1_650)
    assert (v.num_long, v.num_short) == (0, 1)


@pytest.mark.parametrize(
    ("position_type", "quantity", "strike", "expected_mv"),
    [
        ("LC", 3.0, 60.0, 3 * (63.50 - 60.0) * 100),  # ITM call: 1,050
        ("LC", 3.0, 65.0, 0.0),  # OTM call expires worthless
        ("LP", 2.0, 65.0, 2 * (65.0 - 63.50) * 100),  # ITM put: 300
        ("LP", 2.0, 60.0, 0.0),  # OTM put
        ("SP", -2.0, 65.0, -2 * (65.0 - 63.50) * 100),  # short ITM put: -300
        ("SC", -1.0, 62.0, -1 * (63.50 - 62.0) * 100),  # short ITM call: -150
    ],
)
def test_expired_option_valued_at_intrinsic_on_expiry(position_type: str, quantity: float,
                                                       strike: float, expected_mv: float) -> None:
    option = pos("KO221216X", position_type, quantity, 1.00, underlying="KO", strike=strike,
                 expiration=D16)
    priced = price_position(option, CLOSES, AS_OF, risk_free_rate=RATE)
    assert priced.market_value == approx(expected_mv)
    assert priced.price_source == "intrinsic"
    assert priced.price_date == D16
    assert "expired" in priced.flags


def test_option_expiring_today_uses_todays_underlying_close() -> None:
    option = pos("KO221228C00060000", "LC", 1.0, 1.00, underlying="KO", strike=60.0,
                 expiration=D28)
    priced = price_position(option, CLOSES, D28, risk_free_rate=RATE)
    assert priced.market_value == approx(1 * (64.00 - 60.0) * 100)
    assert priced.price_date == D28


def test_expired_option_with_old_traded_quote_uses_intrinsic() -> None:
    # Last trade 2022-11-01 at 5.00; expired 2022-12-16 with KO at 63.50 -> intrinsic 3.50.
    closes = frame({date(2022, 11, 1): {"KO": 61.00, KO_CALL: 5.00},
                    D16: {"KO": 63.50, KO_CALL: NaN}})
    option = pos(KO_CALL, "LC", 1.0, 1.00, underlying="KO", strike=60.0, expiration=D16)
    priced = price_position(option, closes, AS_OF, risk_free_rate=RATE)
    assert priced.price_source == "intrinsic"
    assert priced.market_value == approx(1 * (63.50 - 60.0) * 100)
    assert "expired" in priced.flags


# ---------------------------------------------------------------------------------------------
# stale, missing and invalid prices
# ---------------------------------------------------------------------------------------------

def test_stale_price_is_flagged_but_still_valued() -> None:
    closes = frame({
        D19: {"OLD": 20.00, "EDGE": 30.00, "FRESH": 40.00, "RENTAL_CONDO": 150_000.0},
        D20: {"OLD": NaN, "EDGE": 31.00, "FRESH": 41.00},
        D28: {"OLD": NaN, "EDGE": NaN, "FRESH": 42.00},
    })
    positions = [pos("OLD", "LONG", 10.0, 1.0), pos("EDGE", "LONG", 10.0, 1.0),
                 pos("FRESH", "LONG", 10.0, 1.0), CONDO]
    # stale_before = D20: a close dated D19 is stale; one dated exactly D20 is not.
    v = value_portfolio(positions, closes, D28, cash=0.0, stale_before=D20, risk_free_rate=RATE)
    p = by_symbol(v)
    assert (p["OLD"].price, p["OLD"].price_date) == (20.00, D19)
    assert p["OLD"].market_value == approx(10 * 20.00)
    assert p["OLD"].flags == ("stale_prices",)
    assert p["EDGE"].price_date == D20
    assert p["EDGE"].flags == ()
    assert p["FRESH"].flags == ()
    # A private mark is not a market price: an old mark (D19) is not flagged stale.
    assert (p["RENTAL_CONDO"].price_source, p["RENTAL_CONDO"].price_date) == ("mark", D19)
    assert p["RENTAL_CONDO"].flags == ()
    assert v.private_value == approx(150_000.0)
    assert v.long_value == approx(10 * 20.00 + 10 * 31.00 + 10 * 42.00)
    assert v.skipped == ()


def test_missing_price_is_skipped_and_adds_nothing() -> None:
    closes = frame({D27: {"AAPL": 130.00, "NOPX": NaN}, D28: {"AAPL": 126.00, "NOPX": NaN}})
    positions = [pos("AAPL", "LONG", 100.0, 140.0),
                 pos("NOPX", "LONG", 10.0, 5.0),  # all-NaN column
                 pos("GHOST", "SHORT", -10.0, 5.0)]  # no column at all
    v = value_portfolio(positions, closes, D28, cash=1_000.0, risk_free_rate=RATE)
    p = by_symbol(v)
    for symbol in ("NOPX", "GHOST"):
        assert p[symbol].market_value is None
        assert p[symbol].price is None
        assert p[symbol].flags == ("missing_price",)
    assert v.skipped == ("NOPX: missing_price", "GHOST: missing_price")
    assert v.long_value == approx(100 * 126.00)
    assert v.short_value == 0
    assert v.total_value == approx(100 * 126.00 + 1_000.0)
    assert v.num_positions == 3  # held positions, including the two skipped ones
    assert (v.num_long, v.num_short, v.num_private) == (1, 0, 0)


def test_long_with_negative_quantity_is_skipped() -> None:
    bad = pos("AAPL", "LONG", -100.0, 140.0)
    v = value_portfolio([bad, pos("XOM", "SHORT", -50.0, 100.0)], CLOSES, AS_OF, cash=0.0, risk_free_rate=RATE)
    p = by_symbol(v)
    assert p["AAPL"].market_value is None
    assert p["AAPL"].flags == ("invalid_quantity",)
    assert len(v.skipped) == 1
    assert v.skipped[0].startswith("AAPL: ")
    assert "negative quantity" in v.skipped[0]
    assert v.long_value == 0
    assert v.short_value == approx(-50 * 110.00)
    assert (v.num_long, v.num_short) == (0, 1)


def test_short_with_positive_quantity_is_skipped() -> None:
    v = value_portfolio([pos("XOM", "SHORT", 50.0, 100.0)], CLOSES, AS_OF, cash=0.0, risk_free_rate=RATE)
    assert v.positions[0].flags == ("invalid_quantity",)
    assert v.long_value == 0 and v.short_value == 0


def test_exited_positions_are_excluded() -> None:
    exited_today = pos("AAPL", "LONG", 100.0, 140.0, exit_date=D28)
    exits_tomorrow = pos("XOM", "SHORT", -50.0, 100.0, exit_date=date(2022, 12, 29))
    not_yet_entered = pos("MSFT", "LONG", 10.0, 230.0, entry_date=date(2022, 12, 29))
    v = value_portfolio([exited_today, exits_tomorrow, not_yet_entered], CLOSES, D28, cash=0.0, risk_free_rate=RATE)
    assert [p.position.symbol for p in v.positions] == ["XOM"]
    assert v.long_value == 0
    assert v.short_value == approx(-50 * 110.00)
    assert v.num_positions == 1


@pytest.mark.parametrize("positions", [[], [pos("AAPL", "LONG", 100.0, 1.0, exit_date=D20)]])
def test_empty_portfolio_is_cash(positions: list[PositionInput]) -> None:
    v = value_portfolio(positions, CLOSES, AS_OF, cash=25_000.0, risk_free_rate=RATE)
    assert v.positions == ()
    assert (v.long_value, v.short_value, v.gross_exposure, v.net_exposure, v.private_value) \
        == (0, 0, 0, 0, 0)
    assert v.total_value == 25_000.0
    assert (v.num_positions, v.num_long, v.num_short, v.num_private) == (0, 0, 0, 0)
    assert v.skipped == ()


def test_empty_price_table() -> None:
    empty = frame({})
    v = value_portfolio([BX, pos("AAPL", "LONG", 1.0, 1.0)], empty, AS_OF, cash=5.0, risk_free_rate=RATE)
    assert v.private_value == approx(285_000.0)
    assert v.skipped == ("AAPL: missing_price",)
    assert v.total_value == approx(285_000.0 + 5.0)


# ---------------------------------------------------------------------------------------------
# latest_close and look-ahead
# ---------------------------------------------------------------------------------------------

LOOKAHEAD = frame({
    D20: {"A": 10.0, "B": NaN},
    D21: {"A": NaN, "B": 20.0},
    D22: {"A": 12.0, "B": 21.0},
    D23: {"A": 99.0, "B": 99.0},  # "the future" relative to D22 / D21
})


@pytest.mark.parametrize(
    ("symbol", "on", "expected"),
    [
        ("A", D22, (D22, 12.0)),
        ("A", D21, (D20, 10.0)),  # NaN on D21 skipped -> previous finite close
        ("A", D19, None),  # nothing on or before
        ("B", D20, None),  # only NaN on or before
        ("B", D21, (D21, 20.0)),
        ("A", D28, (D23, 99.0)),
        ("MISSING", D22, None),
        (None, D22, None),
    ],
)
def test_latest_close(symbol: str | None, on: date, expected) -> None:
    assert latest_close(LOOKAHEAD, symbol, on) == expected


def test_valuation_has_no_look_ahead() -> None:
    positions = [pos("A", "LONG", 10.0, 1.0), pos("B", "SHORT", -5.0, 1.0)]
    v = value_portfolio(positions, LOOKAHEAD, D22, cash=0.0, risk_free_rate=RATE)
    truncated = value_portfolio(positions, LOOKAHEAD.loc[[D20, D21, D22]], D22, cash=0.0, risk_free_rate=RATE)
    assert v.long_value == approx(10 * 12.0)
    assert v.short_value == approx(-5 * 21.0)
    assert (v.long_value, v.short_value) == (truncated.long_value, truncated.short_value)


def test_expired_option_ignores_underlying_after_expiry() -> None:
    # Expired on D21; KO rallies afterwards. Only the D21 close (61.00) may be used.
    closes = frame({D21: {"KO": 61.00}, D22: {"KO": 70.00}, D23: {"KO": 75.00}})
    option = pos("KO221221C00060000", "LC", 1.0, 0.5, underlying="KO", strike=60.0,
                 expiration=D21)
    assert price_position(option, closes, D23, risk_free_rate=RATE).market_value == approx(1 * (61.00 - 60.0) * 100)


# ---------------------------------------------------------------------------------------------
# daily_pnl (unit level; chained snapshots are in test_snapshot.py)
# ---------------------------------------------------------------------------------------------

def test_daily_pnl_hand_computed() -> None:
    opened_today = pos("MSFT", "LONG", 10.0, 235.00, entry_date=D28)
    exited_today = pos("JNJ", "LONG", 10.0, 170.00, exit_date=D28)
    positions = [AAPL_LONG, XOM_SHORT, MSFT_LC, opened_today, exited_today, BX, CONDO]
    result = daily_pnl(positions, CLOSES, D28, D27, risk_free_rate=RATE)
    expected = (
        100 * (126.00 - 130.00)  # AAPL long: -400
        + -50 * (110.00 - 109.50)  # XOM short: -25
        + 2 * 100 * (5.50 - 5.00)  # MSFT call, traded: +100
        + 10 * (234.00 - 235.00)  # MSFT opened today vs entry price: -10
        # JNJ exited today: nothing; BX / RENTAL_CONDO private: 0
    )
    assert result.pnl == approx(expected)  # -335
    assert result.unpriced == ()


def test_daily_pnl_lists_positions_without_a_previous_price() -> None:
    closes = frame({D27: {"AAPL": 130.0, "NEW": NaN}, D28: {"AAPL": 126.0, "NEW": 10.0}})
    positions = [pos("AAPL", "LONG", 1.0, 1.0),
                 pos("NEW", "LONG", 5.0, 1.0),  # no close on the previous session
                 pos("GONE", "LONG", 5.0, 1.0)]  # no close at all
    result = daily_pnl(positions, closes, D28, D27, risk_free_rate=RATE)
    assert result.pnl == approx(1 * (126.0 - 130.0))
    assert result.unpriced == ("NEW", "GONE")


def test_daily_pnl_lists_sign_error_positions_as_unpriced() -> None:
    closes = frame({D27: {"AAPL": 130.0}, D28: {"AAPL": 126.0}})
    positions = [pos("AAPL", "LONG", 1.0, 1.0), pos("BAD", "LONG", -3.0, 1.0)]
    result = daily_pnl(positions, closes, D28, D27, risk_free_rate=RATE)
    assert result.pnl == approx(1 * (126.0 - 130.0))  # the bad position adds nothing
    assert result.unpriced == ("BAD",)


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

_price = st.floats(min_value=0.5, max_value=5_000.0, allow_nan=False, allow_infinity=False)


@st.composite
def portfolios(draw) -> tuple[list[PositionInput], pd.DataFrame, float]:
    n_public = draw(st.integers(min_value=0, max_value=6))
    n_private = draw(st.integers(min_value=0, max_value=3))
    row: dict[str, float] = {}
    positions: list[PositionInput] = []
    for i in range(n_public):
        symbol = f"S{i}"
        row[symbol] = draw(_price)
        side = draw(st.sampled_from(["LONG", "SHORT"]))
        qty = draw(st.integers(min_value=1, max_value=10_000))
        positions.append(pos(symbol, side, qty if side == "LONG" else -qty, 1.0))
    for i in range(n_private):
        positions.append(private(f"P{i}_PRIVATE_FUND", draw(st.floats(1.0, 1e7))))
    cash = draw(st.floats(min_value=-1e6, max_value=1e7))
    closes = frame({D28: row}) if row else frame({})
    return positions, closes, cash


def _scaled(p: PositionInput, k: int) -> PositionInput:
    return PositionInput(
        id=p.id, symbol=p.symbol, position_type=p.position_type, quantity=p.quantity * k,
        entry_price=p.entry_price, entry_date=p.entry_date, exit_date=p.exit_date,
        investment_class=p.investment_class,
    )


@given(book=portfolios())
def test_aggregate_identities(book) -> None:
    positions, closes, cash = book
    v = value_portfolio(positions, closes, D28, cash=cash, risk_free_rate=RATE)
    assert v.long_value >= 0 >= v.short_value
    assert v.gross_exposure == pytest.approx(v.long_value - v.short_value)
    assert v.gross_exposure >= 0
    assert v.net_exposure == pytest.approx(v.long_value + v.short_value)
    assert v.total_value == pytest.approx(v.net_exposure + v.private_value + v.cash_value)
    assert v.num_long + v.num_short + v.num_private == v.num_positions == len(positions)
    assert v.skipped == ()


@given(book=portfolios(), k=st.integers(min_value=1, max_value=50))
def test_scaling_quantities_scales_exposures(book, k: int) -> None:
    positions, closes, cash = book
    base = value_portfolio(positions, closes, D28, cash=cash, risk_free_rate=RATE)
    scaled = value_portfolio([_scaled(p, k) for p in positions], closes, D28, cash=cash, risk_free_rate=RATE)
    for field in ("long_value", "short_value", "gross_exposure", "net_exposure",
                  "private_value"):
        assert getattr(scaled, field) == pytest.approx(k * getattr(base, field), rel=1e-9,
                                                       abs=1e-6)
    assert scaled.total_value == pytest.approx(
        k * (base.net_exposure + base.private_value) + cash, rel=1e-9, abs=1e-6)
    assert (scaled.num_long, scaled.num_short, scaled.num_private) == \
        (base.num_long, base.num_short, base.num_private)


@given(
    prices=st.tuples(_price, _price),
    qty=st.integers(min_value=1, max_value=10_000),
    side=st.sampled_from(["LONG", "SHORT"]),
)
def test_daily_pnl_is_value_change_for_a_held_stock(prices, qty: int, side: str) -> None:
    before, after = prices
    quantity = qty if side == "LONG" else -qty
    closes = frame({D27: {"X": before}, D28: {"X": after}})
    p = pos("X", side, quantity, 1.0)
    pnl = daily_pnl([p], closes, D28, D27, risk_free_rate=RATE).pnl
    assert pnl == pytest.approx(quantity * (after - before), rel=1e-9, abs=1e-6)
    v27 = value_portfolio([p], closes, D27, cash=0.0, risk_free_rate=RATE)
    v28 = value_portfolio([p], closes, D28, cash=0.0, risk_free_rate=RATE)
    assert pnl == pytest.approx(v28.total_value - v27.total_value, rel=1e-9, abs=1e-6)


def test_worked_example_premises() -> None:
    # Guard: the worked example's NULL-class put is an option, so it got the ×100 multiplier.
    assert JNJ_LP.asset_class == OPTIONS
    assert AAPL_LONG.asset_class == PUBLIC


def _bsm_put_independent(s: float, k: float, t: float, r: float, vol: float) -> float:
    """Black–Scholes put written out with math.erf (no code under test)."""
    n = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
    d1 = (math.log(s / k) + (r + vol * vol / 2) * t) / (vol * math.sqrt(t))
    d2 = d1 - vol * math.sqrt(t)
    return k * math.exp(-r * t) * n(-d2) - s * n(-d1)


def test_untraded_option_with_an_underlying_price_is_valued_at_the_model_price():
    put = PositionInput(
        id=uuid.UUID(int=999), symbol=JNJ_PUT, position_type="LP", quantity=3.0, entry_price=2.50,
        entry_date=ENTRY, investment_class=OPTIONS, underlying_symbol="JNJ", strike_price=170.0,
        expiration_date=date(2023, 1, 20), implied_volatility=0.25)
    closes = frame({D27: {"JNJ": 176.0}, D28: {"JNJ": 177.0}})
    priced = price_position(put, closes, D28, risk_free_rate=RATE)
    per_share = _bsm_put_independent(177.0, 170.0, (date(2023, 1, 20) - D28).days / 365, RATE, 0.25)
    assert priced.price_source == "model"
    assert priced.price == pytest.approx(per_share, rel=1e-10)
    assert priced.market_value == pytest.approx(3 * 100 * per_share, rel=1e-10)
    assert "model_price_unavailable" not in priced.flags


def test_expired_option_without_an_expiration_column_uses_its_occ_expiry():
    call = PositionInput(id=uuid.UUID(int=1001), symbol="KO221216C00060000", position_type="LC",
                         quantity=3.0, entry_price=1.0, entry_date=ENTRY, investment_class=OPTIONS,
                         underlying_symbol="KO")
    closes = frame({D16: {"KO": 63.5}, D27: {"KO": 64.0}, D28: {"KO": 64.5}})
    priced = price_position(call, closes, D28, risk_free_rate=RATE)
    assert priced.price_source == "intrinsic" and "expired" in priced.flags
    assert priced.market_value == approx(3 * 100 * (63.5 - 60.0))  # KO's close on 2022-12-16


def test_an_option_whose_terms_cannot_be_read_is_not_valued_at_its_entry_price():
    # SPEC §6.2: a malformed OCC symbol without strike/expiration columns is reported, not guessed
    malformed = PositionInput(id=uuid.UUID(int=1002), symbol="AAPL_CALL_150", position_type="LC",
                              quantity=2.0, entry_price=5.0, entry_date=ENTRY, investment_class=None,
                              underlying_symbol="AAPL")
    priced = price_position(malformed, CLOSES, AS_OF, risk_free_rate=RATE)
    assert (priced.price, priced.market_value, priced.price_source) == (None, None, None)
    assert priced.flags == ("invalid_contract",)

    v = value_portfolio([AAPL_LONG, malformed], CLOSES, AS_OF, cash=CASH, risk_free_rate=RATE)
    assert v.skipped == ("AAPL_CALL_150: invalid_contract",)
    assert v.long_value == approx(AAPL_MV)  # 12,600: nothing for the option
    assert v.total_value == approx(AAPL_MV + CASH)


def test_usable_closes_reads_non_positive_and_non_finite_closes_as_missing():
    closes = frame({D22: {"A": 10.0, "B": NaN, "C": 1.0},
                    D23: {"A": 0.0, "B": -2.0, "C": 2.0},
                    D27: {"A": 11.0, "B": math.inf, "C": 3.0},
                    D28: {"A": -0.0, "B": 4.0, "C": 4.0}})
    cleaned, bad = usable_closes(closes)
    expected = frame({D22: {"A": 10.0, "B": NaN, "C": 1.0}, D23: {"A": NaN, "B": NaN, "C": 2.0},
                      D27: {"A": 11.0, "B": NaN, "C": 3.0}, D28: {"A": NaN, "B": 4.0, "C": 4.0}})
    pd.testing.assert_frame_equal(cleaned, expected)
    assert bad == {"A": [D23, D28], "B": [D23, D27]}  # B's NaN was missing already: not reported
    assert latest_close(cleaned, "A", D28) == (D27, 11.0)  # never the −0.0
    clean_only = closes[["C"]]
    same, nothing = usable_closes(clean_only)
    assert same is clean_only and nothing == {}


# ---------------------------------------------------------------------------------------------
# A chunk of books at once (value_books, daily_pnl_books) against direct per-position formulas
# ---------------------------------------------------------------------------------------------


def _random_chunk(seed: int):
    """40 books over a 30-session frame of 25 symbols with gaps (NaN), a symbol with no close at
    all, stale symbols (last close weeks back), shorts, positions entered on the as-of date or
    exited, and some sign errors; plus the worked example's options and private holdings in a
    few books (priced from each book's own frame)."""
    import numpy as np

    from batch import calendar

    rng = np.random.default_rng(seed)
    days = calendar.sessions_back(AS_OF, 30)
    symbols = [f"S{i:02d}" for i in range(25)]
    values = 50 + rng.random((len(days), len(symbols))) * 100
    values[rng.random(values.shape) < 0.15] = np.nan  # gaps
    values[:, 3] = np.nan  # never priced
    values[-12:, 4] = np.nan  # stale: nothing in the last 12 sessions
    values[-1, 5] = np.nan  # no close today: the latest is the day before
    closes = pd.DataFrame(values, index=pd.Index(days, dtype=object), columns=symbols)
    books = []
    for b in range(40):
        positions = []
        for _ in range(int(rng.integers(0, 12))):
            sym = symbols[int(rng.integers(0, len(symbols)))]
            short = rng.random() < 0.3
            qty = float(rng.integers(1, 500)) * (-1 if short else 1)
            if rng.random() < 0.05:
                qty = -qty  # a sign error
            entry = days[int(rng.integers(0, len(days)))]
            exit_day = days[int(rng.integers(0, len(days)))] if rng.random() < 0.1 else None
            positions.append(pos(sym, "SHORT" if short else "LONG", qty, float(50 + rng.random() * 100),
                                 entry_date=entry, exit_date=exit_day))
        if b % 7 == 0:
            positions += [MSFT_LC, JNJ_LP, KO_LC_EXPIRED, BX, CONDO, AAPL_LONG]
        books.append(positions)
    return closes, books


def _direct_price(closes: pd.DataFrame, symbol: str, on: date) -> tuple[date, float] | None:
    """The latest close on or before `on`, read directly with pandas (the oracle)."""
    if symbol not in closes.columns:
        return None
    column = closes.loc[[d for d in closes.index if d <= on], symbol].dropna()
    return (column.index[-1], float(column.iloc[-1])) if len(column) else None


def test_value_books_matches_direct_formulas_book_by_book():
    from calculations.prices import LatestCloses
    from calculations.valuation import Book, value_books

    closes, books = _random_chunk(11)
    # the stocks are priced from the chunk's market frame; the options and private holdings,
    # outside it, from each book's own frame (the worked example's closes)
    market = LatestCloses(closes)
    own = pd.concat([closes, CLOSES.reindex(index=closes.index)], axis=1)
    own = own.loc[:, ~own.columns.duplicated()]
    asked: list[int] = []

    def closes_of(i: int) -> pd.DataFrame:
        asked.append(i)
        return own

    stale_before = closes.index[-6]
    chunk = value_books([Book(p, 1_000.0 * i) for i, p in enumerate(books)], market, closes_of, AS_OF,
                        stale_before, risk_free_rate=RATE)
    assert sorted(set(asked)) == [i for i in range(40) if i % 7 == 0]  # only books with options/private
    for i, (positions, v) in enumerate(zip(books, chunk, strict=True)):
        long_value = short_value = 0.0
        for p in v.positions:
            mine = p.position
            if mine.asset_class != PUBLIC or mine.symbol not in closes.columns:
                continue
            if mine.sign_error() or mine.exit_date is not None and mine.exit_date < mine.entry_date:
                assert p.market_value is None
                continue
            quote = _direct_price(closes, mine.symbol, AS_OF)
            if quote is None:
                assert p.market_value is None and p.flags == ("missing_price",)
                continue
            assert (p.price_date, p.price) == quote
            assert p.market_value == approx(mine.quantity * quote[1])
            assert ("stale_prices" in p.flags) == (quote[0] < stale_before)
            long_value += max(p.market_value, 0.0)
            short_value += min(p.market_value, 0.0)
        held = [p for p in positions if p.is_held_on(AS_OF) or p.exit_date is not None
                and p.exit_date < p.entry_date <= AS_OF]
        assert v.num_positions == len(held)
        alone = value_portfolio(positions, own, AS_OF, 1_000.0 * i, stale_before, risk_free_rate=RATE)
        assert v == alone  # a book's valuation does not depend on the chunk it is valued in
        if i % 7:
            assert v.long_value == approx(long_value) and v.short_value == approx(short_value)
            assert v.total_value == approx(long_value + short_value + 1_000.0 * i)


def test_daily_pnl_books_matches_the_direct_formula():
    from calculations.prices import LatestCloses
    from calculations.valuation import Book, daily_pnl_books

    closes, books = _random_chunk(12)
    previous = closes.index[-2]
    pnls = daily_pnl_books([Book(p, 0.0) for p in books], LatestCloses(closes), lambda i: closes,
                           AS_OF, previous, risk_free_rate=RATE)
    for positions, pnl in zip(books, pnls, strict=True):
        if any(p.asset_class != PUBLIC for p in positions):
            continue  # the options are covered by the worked examples above
        total, unpriced = 0.0, []
        for p in positions:
            if not p.is_held_on(AS_OF):
                continue
            now = _direct_price(closes, p.symbol, AS_OF)
            before = _direct_price(closes, p.symbol, previous) if p.is_held_on(previous) else (None, p.entry_price)
            if p.sign_error() or now is None or before is None:
                unpriced.append(p.symbol)
                continue
            total += p.quantity * (now[1] - before[1])
        assert pnl.pnl == approx(total)
        assert list(pnl.unpriced) == unpriced


def test_latest_closes_agrees_with_latest_close_on_every_session():
    import numpy as np

    from calculations.prices import LatestCloses

    closes, _ = _random_chunk(13)
    table = LatestCloses(closes)
    codes = np.array([table.code(s) for s in [*closes.columns, "UNKNOWN"]])
    for day in [closes.index[0], closes.index[10], AS_OF, date(2022, 1, 3)]:
        prices, rows = table.on(codes, day)
        for symbol, price, row in zip([*closes.columns, "UNKNOWN"], prices, rows, strict=True):
            quote = _direct_price(closes, symbol, day)
            if quote is None:
                assert math.isnan(price) and row == -1
            else:
                assert (closes.index[row], price) == quote
