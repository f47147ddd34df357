"""Tests for calculations.snapshot.build_snapshot (SPEC §6.7), chained over several sessions.

Every expected number is written as hand arithmetic on the tiny price table below.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import date

import pandas as pd
import pytest

from calculations.positions import PRIVATE, PositionInput
from calculations.snapshot import PriorSnapshot, build_snapshot
from calculations.valuation import daily_pnl, value_portfolio

_ids = itertools.count(1)

# NYSE sessions: 2022-12-26 was the observed Christmas holiday, so D3's previous session is D2.
D0, D1, D2, D3 = date(2022, 12, 21), date(2022, 12, 22), date(2022, 12, 23), date(2022, 12, 27)
PREVIOUS = {D1: D0, D2: D1, D3: D2}

RATE = 0.04  # risk-free rate passed to option model pricing
CLOSES = pd.DataFrame(
    {
        "AAPL": [133.00, 132.00, 131.50, 130.00],
        "XOM": [107.00, 108.00, 109.00, 111.00],
        "MSFT": [234.00, 235.00, 240.00, 236.00],
        "RENTAL_CONDO": [float("nan"), float("nan"), 150_000.0, float("nan")],
    },
    index=pd.Index([D0, D1, D2, D3], dtype=object),
)


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-9)


def pos(symbol: str, position_type: str, quantity: float, entry_price: float,
        entry_date: date = date(2022, 12, 1), investment_class: str | None = None) -> PositionInput:
    return PositionInput(id=uuid.UUID(int=next(_ids)), symbol=symbol, position_type=position_type,
                         quantity=quantity, entry_price=entry_price, entry_date=entry_date,
                         investment_class=investment_class)


def snapshot(positions, day: date, cash: float, prior: PriorSnapshot | None,
             closes: pd.DataFrame = CLOSES) -> dict:
    valuation = value_portfolio(positions, closes, day, cash=cash, risk_free_rate=RATE)
    pnl = daily_pnl(positions, closes, day, PREVIOUS[day], risk_free_rate=RATE)
    return build_snapshot(valuation, pnl, PREVIOUS[day], prior)


def as_prior(row: dict) -> PriorSnapshot:
    return PriorSnapshot(row["snapshot_date"], row["total_value"], row["cumulative_pnl"])


# ---------------------------------------------------------------------------------------------
# Three chained sessions
# ---------------------------------------------------------------------------------------------

AAPL_LONG = pos("AAPL", "LONG", 100.0, 140.00)
XOM_SHORT = pos("XOM", "SHORT", -50.0, 100.00)
MSFT_NEW = pos("MSFT", "LONG", 20.0, 238.00, entry_date=D2)  # bought intraday D2 at 238, closes 240
BOOK = [AAPL_LONG, XOM_SHORT, MSFT_NEW]
CASH = 20_000.0

# Hand computation
# D1: AAPL 100×132 = 13,200; XOM −50×108 = −5,400; MSFT not yet held.
#     total = 13,200 − 5,400 + 20,000 = 27,800
#     P&L vs D0: 100×(132 − 133) + (−50)×(108 − 107) = −100 − 50 = −150
# D2: AAPL 100×131.5 = 13,150; XOM −50×109 = −5,450; MSFT 20×240 = 4,800.
#     total = 13,150 + 4,800 − 5,450 + 20,000 = 32,500
#     P&L: 100×(131.5 − 132) + (−50)×(109 − 108) + 20×(240 − 238 entry) = −50 − 50 + 40 = −60
#     return = −60 / 27,800;   cumulative = −150 − 60 = −210
# D3: AAPL 100×130 = 13,000; XOM −50×111 = −5,550; MSFT 20×236 = 4,720.
#     total = 13,000 + 4,720 − 5,550 + 20,000 = 32,170
#     P&L: 100×(130 − 131.5) + (−50)×(111 − 109) + 20×(236 − 240 D2 close) = −150 − 100 − 80 = −330
#     return = −330 / 32,500;  cumulative = −210 − 330 = −540
#     (check: 32,170 − 32,500 = −330, no trades on D3)


def test_three_session_chain() -> None:
    s1 = snapshot(BOOK, D1, CASH, prior=None)
    s2 = snapshot(BOOK, D2, CASH, prior=as_prior(s1))
    s3 = snapshot(BOOK, D3, CASH, prior=as_prior(s2))

    assert s1["snapshot_date"] == D1
    assert s1["total_value"] == approx(100 * 132.00 - 50 * 108.00 + 20_000)
    assert s1["long_value"] == approx(13_200)
    assert s1["short_value"] == approx(-5_400)
    assert s1["daily_pnl"] == approx(100 * (132.00 - 133.00) + -50 * (108.00 - 107.00))
    assert s1["daily_return"] is None
    assert "no_previous_snapshot" in s1["data_quality"]["flags"]
    assert s1["cumulative_pnl"] == approx(-150)
    assert (s1["num_positions"], s1["num_long"], s1["num_short"]) == (2, 1, 1)

    assert s2["snapshot_date"] == D2
    assert s2["total_value"] == approx(100 * 131.50 - 50 * 109.00 + 20 * 240.00 + 20_000)
    assert s2["long_value"] == approx(13_150 + 4_800)
    assert s2["short_value"] == approx(-5_450)
    assert s2["gross_exposure"] == approx(17_950 + 5_450)
    assert s2["net_exposure"] == approx(17_950 - 5_450)
    assert s2["daily_pnl"] == approx(
        100 * (131.50 - 132.00) + -50 * (109.00 - 108.00) + 20 * (240.00 - 238.00))
    assert s2["daily_return"] == approx(-60 / 27_800)
    assert s2["cumulative_pnl"] == approx(-150 - 60)
    assert "no_previous_snapshot" not in s2["data_quality"]["flags"]
    assert (s2["num_positions"], s2["num_long"], s2["num_short"]) == (3, 2, 1)

    assert s3["snapshot_date"] == D3
    assert s3["total_value"] == approx(100 * 130.00 - 50 * 111.00 + 20 * 236.00 + 20_000)
    assert s3["daily_pnl"] == approx(
        100 * (130.00 - 131.50) + -50 * (111.00 - 109.00) + 20 * (236.00 - 240.00))
    assert s3["daily_return"] == approx(-330 / 32_500)
    assert s3["cumulative_pnl"] == approx(-150 - 60 - 330)
    assert s3["total_value"] - s2["total_value"] == approx(s3["daily_pnl"])  # no trades on D3

    for row in (s1, s2, s3):
        assert row["cash_value"] == CASH
        assert row["private_value"] == 0
        assert row["data_quality"]["flag"] == "ok"
        assert row["data_quality"]["positions_skipped"] == 0


def test_snapshot_has_all_spec_columns() -> None:
    row = snapshot(BOOK, D1, CASH, prior=None)
    for column in ("total_value", "cash_value", "long_value", "short_value", "gross_exposure",
                   "net_exposure", "private_value", "daily_pnl", "daily_return",
                   "cumulative_pnl", "num_positions", "num_long", "num_short", "num_private",
                   "data_quality"):
        assert column in row
    for key in ("flag", "message", "positions_analyzed", "positions_total", "positions_skipped",
                "data_days"):
        assert key in row["data_quality"]


# ---------------------------------------------------------------------------------------------
# Private-only portfolio
# ---------------------------------------------------------------------------------------------

PRIVATE_BOOK = [
    pos("BX_PRIVATE_EQUITY", "LONG", 1.0, 285_000.0, investment_class=PRIVATE),
    pos("RENTAL_CONDO", "LONG", 1.0, 142_500.0, investment_class=PRIVATE),  # mark 150,000 on D2
]


def test_private_only_portfolio() -> None:
    s1 = snapshot(PRIVATE_BOOK, D1, 5_000.0, prior=None)
    s2 = snapshot(PRIVATE_BOOK, D2, 5_000.0, prior=as_prior(s1))

    # D1: no mark yet -> entry values.
    assert s1["private_value"] == approx(285_000 + 142_500)
    assert s1["total_value"] == approx(285_000 + 142_500 + 5_000)
    # D2: the condo has a mark of 150,000.
    assert s2["private_value"] == approx(285_000 + 150_000)
    assert s2["total_value"] == approx(285_000 + 150_000 + 5_000)

    for row in (s1, s2):
        assert row["daily_pnl"] == 0
        assert row["long_value"] == 0 and row["short_value"] == 0
        assert row["gross_exposure"] == 0 and row["net_exposure"] == 0
        assert (row["num_positions"], row["num_long"], row["num_short"], row["num_private"]) \
            == (2, 0, 0, 2)
        assert row["data_quality"]["flag"] == "no_public_positions"
    assert s1["daily_return"] is None
    assert s2["daily_return"] == 0.0  # 0 / 432,500
    assert s2["cumulative_pnl"] == 0


# ---------------------------------------------------------------------------------------------
# Prior snapshot edge cases
# ---------------------------------------------------------------------------------------------

def test_prior_older_than_previous_session_gives_no_return() -> None:
    # D3's previous session is D2; the latest stored snapshot is from D1 (D2 missing).
    prior = PriorSnapshot(snapshot_date=D1, total_value=27_800.0, cumulative_pnl=-150.0)
    s3 = snapshot(BOOK, D3, CASH, prior=prior)
    assert s3["daily_return"] is None
    assert "no_previous_snapshot" in s3["data_quality"]["flags"]
    assert s3["daily_pnl"] == approx(-330)  # still D2 -> D3 mark-to-market
    assert s3["cumulative_pnl"] == approx(-150 - 330)


def test_zero_previous_value_gives_no_return() -> None:
    prior = PriorSnapshot(snapshot_date=D2, total_value=0.0, cumulative_pnl=0.0)
    s3 = snapshot(BOOK, D3, CASH, prior=prior)
    assert s3["daily_return"] is None
    assert "zero_previous_value" in s3["data_quality"]["flags"]


def test_missing_price_sets_quality_flag_and_counts() -> None:
    book = [AAPL_LONG, pos("NOPX", "LONG", 10.0, 5.0)]
    s = snapshot(book, D2, 0.0, prior=None)
    dq = s["data_quality"]
    assert dq["flag"] == "missing_prices"
    assert dq["positions_total"] == 2
    assert dq["positions_skipped"] == 1
    assert dq["positions_analyzed"] == 1
    assert dq["skipped_positions"] == ["NOPX: missing_price"]
    assert dq["unpriced_for_pnl"] == ["NOPX"]
    assert "pnl_incomplete" in dq["flags"]
    assert s["total_value"] == approx(100 * 131.50)
    assert s["daily_pnl"] == approx(100 * (131.50 - 132.00))


def test_stale_price_sets_quality_flag() -> None:
    closes = CLOSES.copy()
    closes.loc[[D2, D3], "XOM"] = float("nan")  # XOM last closed on D1
    valuation = value_portfolio(BOOK, closes, D3, cash=CASH, stale_before=D2, risk_free_rate=RATE)
    pnl = daily_pnl(BOOK, closes, D3, D2, risk_free_rate=RATE)
    s = build_snapshot(valuation, pnl, D2, prior=None)
    assert s["data_quality"]["flag"] == "stale_prices"
    assert s["data_quality"]["stale_symbols"] == ["XOM"]
    assert s["short_value"] == approx(-50 * 108.00)  # valued at its last (D1) close
    # XOM unchanged (108 -> 108): P&L from AAPL and MSFT only.
    assert s["daily_pnl"] == approx(100 * (130.00 - 131.50) + 20 * (236.00 - 240.00))


# --- re-chaining (SPEC §6.7 "The series always chains") ------------------------------------


def test_rechain_recomputes_returns_and_cumulative_from_the_prior_by_hand():
    from calculations.snapshot import ChainLink, rechain

    prior = PriorSnapshot(D0, 1_000.0, 50.0)
    links = [ChainLink(D1, D0, 1_010.0, 10.0), ChainLink(D2, D1, 1_000.0, -10.0),
             ChainLink(D3, D2, 1_030.0, 30.0)]
    out = rechain(prior, links)
    assert [c.daily_return for c in out] == [approx(10 / 1_000), approx(-10 / 1_010), approx(30 / 1_000)]
    assert [c.cumulative_pnl for c in out] == [approx(60.0), approx(50.0), approx(80.0)]
    assert [c.chain_flag for c in out] == [None, None, None]


def test_rechain_flags_gaps_and_zero_values_and_starts_from_nothing():
    from calculations.snapshot import ChainLink, rechain

    # no prior: the first link starts the series; D3's previous session D2 is missing (a gap)
    out = rechain(None, [ChainLink(D1, D0, 0.0, 5.0), ChainLink(D3, D2, 100.0, 7.0)])
    assert [(c.daily_return, c.cumulative_pnl, c.chain_flag) for c in out] == [
        (None, 5.0, "no_previous_snapshot"), (None, 12.0, "no_previous_snapshot")]
    # the prior on the previous session but worth 0: no return, flagged
    out = rechain(PriorSnapshot(D0, 0.0, 1.0), [ChainLink(D1, D0, 10.0, 2.0)])
    assert [(c.daily_return, c.cumulative_pnl, c.chain_flag) for c in out] == [(None, 3.0, "zero_previous_value")]
    assert rechain(PriorSnapshot(D0, 1.0, 0.0), []) == []


def test_a_malformed_option_is_named_in_the_snapshot_quality() -> None:
    malformed = PositionInput(id=uuid.UUID(int=7001), symbol="AAPL_CALL_150", position_type="LC",
                              quantity=2.0, entry_price=5.0, entry_date=date(2022, 12, 1),
                              underlying_symbol="AAPL")
    s = snapshot([AAPL_LONG, malformed], D2, 0.0, prior=None)
    dq = s["data_quality"]
    assert (dq["flag"], dq["message"]) == ("missing_prices", "1 position(s) could not be valued")
    assert dq["skipped_positions"] == ["AAPL_CALL_150: invalid_contract"]
    assert (dq["positions_analyzed"], dq["positions_skipped"]) == (1, 1)
    assert s["total_value"] == approx(100 * 131.50)  # the option adds nothing, not 2 × 100 × 5
