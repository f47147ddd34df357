"""Bad input end to end: provider rows that must never be stored, positions that must be skipped
and flagged without hurting anyone else, and dates that are not sessions (SPEC §5.3, §6, §7).

Database tests run on SQLite and PostgreSQL (the `engine`, `cli` and `seeded` fixtures).
Expected values are written out by hand or read back from `market_prices`, never computed by the
code under test.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Float, Numeric, Uuid, bindparam, func, inspect, select, text
from sqlalchemy.orm import Session

from batch import calendar
from batch.db import upsert
from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, PRIVATE_ONLY, demo_id
from batch.engines import RECORD_LIST_CAP
from batch.providers import PRICE_COLUMNS, PriceBatch, ProfileBatch
from batch.repository import symbols_held
from batch.sync import HISTORY_SESSIONS, sync_market_data, validate_prices
from models import (
    Base,
    BatchJobResult,
    MarketPrice,
    PairwiseCorrelation,
    Portfolio,
    PortfolioSnapshot,
    Position,
    PositionFactorExposure,
    PositionGreeks,
    PositionValuation,
    SymbolFactorBeta,
)
from tests.conftest import RESULT_TABLES

AS_OF = date(2022, 12, 28)
NOW = datetime(2022, 12, 28, 23, 30, tzinfo=UTC)

# NYSE sessions from 2022-12-19 to 2023-01-03, by hand: Christmas (observed Monday 12-26) and
# New Year (observed Monday 2023-01-02) are holidays; weekends are not sessions.
SESSIONS = frozenset([date(2022, 12, d) for d in (19, 20, 21, 22, 23, 27, 28, 29, 30)] + [date(2023, 1, 3)])
NON_SESSIONS = (date(2022, 12, 24), date(2022, 12, 25), date(2022, 12, 26), date(2022, 12, 31),
                date(2023, 1, 1), date(2023, 1, 2))


# --- validate_prices: a property test, no database --------------------------------------------


def frame(rows: Sequence[tuple[str, date, object]]) -> pd.DataFrame:
    return pd.DataFrame([{"symbol": s, "date": d, "open": None, "high": None, "low": None, "close": c,
                          "volume": None} for s, d, c in rows], columns=PRICE_COLUMNS)


def expected_reason(day: date, close: float) -> str | None:
    """Why a row must be rejected, or None. A bad value is reported before a bad date."""
    if not math.isfinite(close):
        return "non_finite_close"
    if close <= 0:
        return "non_positive_close"
    if day not in SESSIONS:
        return "not_a_session"
    return None


closes = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, -1e-9, 1e-9, 1.0, 123.45]),
    st.floats(min_value=-1e6, max_value=1e6),
    st.floats(allow_nan=True, allow_infinity=True),
)
price_rows = st.lists(st.tuples(st.sampled_from(["AAA", "BBB", "CCC"]),
                                st.sampled_from(sorted(SESSIONS) + list(NON_SESSIONS)), closes),
                      min_size=1, max_size=40)  # the empty frame has its own test below


@settings(max_examples=300, deadline=None)
@given(price_rows)
def test_validate_prices_keeps_only_valid_session_rows_last_valid_duplicate_wins(rows) -> None:
    """Rejected rows are treated as never received: the last *valid* row of each (symbol, date)
    is kept, even when a later duplicate is invalid. This matches what happens across syncs (a
    rejected row on a later sync never overwrites a stored good price, test_sync) — a NaN
    "correction" must not erase a usable price. Every invalid row is reported with its reason."""
    clean, rejected = validate_prices(frame(rows))

    want: dict[tuple[str, date], float] = {}
    valid_seen: dict[tuple[str, date], list[float]] = {}
    want_rejected: Counter = Counter()
    for symbol, day, close in rows:
        reason = expected_reason(day, close)
        if reason is None:
            want[(symbol, day)] = close  # a later valid row replaces an earlier one
            valid_seen.setdefault((symbol, day), []).append(close)
        else:
            want_rejected[(symbol, day.isoformat(), reason)] += 1
    for (symbol, day), seen in valid_seen.items():  # overridden different values are reported
        for close in seen[:-1]:
            if close != seen[-1]:
                want_rejected[(symbol, day.isoformat(), "duplicate_superseded")] += 1

    got = list(zip(clean["symbol"], clean["date"], clean["close"], strict=True))
    assert len({(s, d) for s, d, _ in got}) == len(got), "duplicate (symbol, date) in the output"
    assert all(math.isfinite(c) and c > 0 and d in SESSIONS for _, d, c in got)
    assert {(s, d): c for s, d, c in got} == want
    assert Counter((r["symbol"], r["date"], r["reason"]) for r in rejected) == want_rejected


def test_validate_prices_on_an_empty_frame_keeps_the_columns() -> None:
    clean, rejected = validate_prices(frame([]))
    assert clean.empty and rejected == []
    assert list(clean.columns) == PRICE_COLUMNS


def test_validate_prices_last_duplicate_invalid_keeps_the_last_valid_one() -> None:
    day = date(2022, 12, 27)
    clean, rejected = validate_prices(frame([("AAA", day, 10.0), ("AAA", day, 11.0), ("AAA", day, math.nan),
                                             ("BBB", day, -2.0), ("BBB", day, 0.0)]))
    assert list(zip(clean["symbol"], clean["close"], strict=True)) == [("AAA", 11.0)]
    assert [(r["symbol"], r["reason"]) for r in rejected] == [
        ("AAA", "non_finite_close"), ("BBB", "non_positive_close"), ("BBB", "non_positive_close"),
        ("AAA", "duplicate_superseded")]  # 10.0, overridden by 11.0


def test_validate_prices_reports_a_superseded_duplicate() -> None:
    day = date(2022, 12, 27)
    clean, rejected = validate_prices(frame([("AAA", day, 10.0), ("AAA", day, 11.0)]))
    assert list(clean["close"]) == [11.0]
    assert [(r["symbol"], r["date"], r["close"]) for r in rejected] == [("AAA", "2022-12-27", "10.0")]
    assert rejected[0]["reason"]


@pytest.mark.parametrize("bogus", [date(1970, 1, 1), date(2041, 1, 2)], ids=["epoch", "beyond-calendar"])
def test_validate_prices_drops_a_date_outside_the_calendar_range(bogus: date) -> None:
    try:
        clean, rejected = validate_prices(frame([("AAA", bogus, 10.0), ("AAA", date(2022, 12, 27), 11.0)]))
    except ValueError as exc:
        raise AssertionError(f"validate_prices raised {exc!r}") from exc
    assert list(zip(clean["date"], clean["close"], strict=True)) == [(date(2022, 12, 27), 11.0)]
    assert [(r["date"], r["reason"]) for r in rejected] == [(bogus.isoformat(), "not_a_session")]


# --- sync_market_data with a provider that returns garbage -------------------------------------


FAKE_COVERAGE = (date(2022, 12, 1), date(2022, 12, 9))  # sessions: 1, 2, 5, 6, 7, 8, 9


class GarbageProvider:
    """Returns `rows` ((symbol, date, open, high, low, close, volume)) for the requested symbols,
    whatever the requested dates (a provider need not respect the window)."""

    name = "garbage"

    def __init__(self, rows: Sequence[tuple]) -> None:
        self.rows = list(rows)

    def coverage(self) -> tuple[date, date]:
        return FAKE_COVERAGE

    def get_daily_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceBatch:
        wanted = [dict(zip(PRICE_COLUMNS, r, strict=True)) for r in self.rows if r[0] in symbols]
        return PriceBatch(pd.DataFrame(wanted, columns=PRICE_COLUMNS), {})

    def get_company_profiles(self, symbols: Sequence[str]) -> ProfileBatch:
        return ProfileBatch([], {s: "no_profile" for s in symbols})


def hold(engine, symbols: Sequence[str]) -> None:
    with Session(engine) as s, s.begin():
        pid = uuid.uuid4()
        s.add(Portfolio(id=pid, name="holder", cash_balance=0.0, currency="USD"))
        s.flush()
        for symbol in symbols:
            s.add(Position(id=uuid.uuid4(), portfolio_id=pid, symbol=symbol, position_type="LONG",
                           quantity=10.0, entry_price=1.0, entry_date=date(2022, 1, 3),
                           investment_class="PUBLIC"))


def stored(engine) -> list[MarketPrice]:
    with Session(engine) as s:
        return list(s.scalars(select(MarketPrice).order_by(MarketPrice.symbol, MarketPrice.date)))


def garbage_sync(engine, provider: GarbageProvider):
    with Session(engine) as s, s.begin():
        return sync_market_data(s, provider, [date(2022, 12, 9)], None, NOW)


def d(day: int) -> date:
    return date(2022, 12, day)


def test_sync_stores_no_non_finite_or_non_positive_close(engine) -> None:
    hold(engine, ["AAA", "BBB"])
    provider = GarbageProvider([(s, day, None, None, None, c, None) for s, day, c in [
        ("AAA", d(1), math.nan), ("AAA", d(2), math.inf), ("AAA", d(5), -math.inf), ("AAA", d(6), 0.0),
        ("AAA", d(7), -4.0), ("AAA", d(8), 20.0), ("AAA", d(8), 21.0),     # duplicate: 21 wins
        ("AAA", d(9), 30.0), ("AAA", d(9), math.nan),                       # invalid last: 30 stays
        ("AAA", d(3), 25.0), ("AAA", d(4), 26.0),                           # Saturday, Sunday
        ("BBB", d(1), None), ("BBB", d(2), "n/a"), ("BBB", d(5), 7.5), ("BBB", d(5), -7.5),
    ]])

    result = garbage_sync(engine, provider)

    rows = stored(engine)
    assert all(math.isfinite(r.close) and r.close > 0 for r in rows)
    assert {(r.symbol, r.date): r.close for r in rows} == {("AAA", d(8)): 21.0, ("AAA", d(9)): 30.0,
                                                          ("BBB", d(5)): 7.5}
    assert Counter((r["symbol"], r["date"], r["reason"]) for r in result.rejected_rows) == Counter({
        ("AAA", "2022-12-01", "non_finite_close"): 1, ("AAA", "2022-12-02", "non_finite_close"): 1,
        ("AAA", "2022-12-05", "non_finite_close"): 1, ("AAA", "2022-12-06", "non_positive_close"): 1,
        ("AAA", "2022-12-07", "non_positive_close"): 1, ("AAA", "2022-12-09", "non_finite_close"): 1,
        ("AAA", "2022-12-03", "not_a_session"): 1, ("AAA", "2022-12-04", "not_a_session"): 1,
        ("BBB", "2022-12-01", "non_numeric_close"): 1, ("BBB", "2022-12-02", "non_numeric_close"): 1,
        ("BBB", "2022-12-05", "non_positive_close"): 1,
        ("AAA", "2022-12-08", "duplicate_superseded"): 1,  # 20.0, overridden by 21.0
    })
    assert result.rows_written == 3 and result.failed_symbols == []


def test_sync_with_bad_open_high_low_volume_stores_nothing_non_finite(engine) -> None:
    hold(engine, ["AAA"])
    provider = GarbageProvider([
        ("AAA", date(2022, 12, 1), math.inf, -1.0, math.nan, 10.0, None),
        ("AAA", date(2022, 12, 2), 10.0, 11.0, 9.0, 10.5, math.inf),
        ("AAA", date(2022, 12, 5), 0.0, -math.inf, 10.0, 10.8, -5),
        ("AAA", date(2022, 12, 6), 10.0, 11.0, 9.0, 11.0, 1000),
    ])
    garbage_sync(engine, provider)  # must not raise
    rows = stored(engine)
    assert (rows[-1].date, rows[-1].close, rows[-1].volume) == (date(2022, 12, 6), 11.0, 1000)
    for r in rows:
        assert all(v is None or (math.isfinite(v) and v > 0) for v in (r.open, r.high, r.low, r.close)), r.date
        assert r.volume is None or r.volume >= 0, r.date


# --- bad positions through a real run ----------------------------------------------------------


BAD = uuid.UUID(int=0xBAD)
EMPTY = uuid.UUID(int=0xE0)
GOOD_ID = uuid.UUID(int=0xBAD00)
SQL_SYMBOL = 'X"; DROP TABLE positions;--'
# id → (symbol, type, quantity, extra columns); each must be skipped or flagged.
BAD_POSITIONS = {
    uuid.UUID(int=0xBAD01): ("AAPL", "LONG", -10.0, {}),
    uuid.UUID(int=0xBAD02): ("MSFT", "SHORT", 10.0, {}),
    uuid.UUID(int=0xBAD03): ("JPM", "LONG", 10.0, {"entry_date": date(2022, 6, 1), "exit_date": date(2022, 3, 1)}),
    uuid.UUID(int=0xBAD04): ("NOPRC230317C00100000", "LC", 2.0, {
        "investment_class": "OPTIONS", "underlying_symbol": "NOPRC", "strike_price": 100.0,
        "expiration_date": date(2023, 3, 17), "entry_price": 5.0}),
    uuid.UUID(int=0xBAD05): ("AAPL_CALL_150", "LC", 2.0, {"investment_class": None, "entry_price": 5.0}),
    uuid.UUID(int=0xBAD06): ("ZZZNOTREAL", "LONG", 10.0, {}),
    uuid.UUID(int=0xBAD07): ("O'REILLY", "LONG", 10.0, {}),
    uuid.UUID(int=0xBAD08): (SQL_SYMBOL, "LONG", 10.0, {}),
}
OPTION_STATUS = {uuid.UUID(int=0xBAD04): "missing_underlying_price", uuid.UUID(int=0xBAD05): "invalid_contract"}
BAD_ONLY_SYMBOLS = {"NOPRC", "ZZZNOTREAL", "O'REILLY", SQL_SYMBOL, SQL_SYMBOL.upper(), "AAPL_CALL_150"}
DEMO = [demo_id("portfolio", k) for k in (INDIVIDUAL, HNW, HEDGE_FUND, PRIVATE_ONLY)]


def add_bad_books(engine) -> None:
    with Session(engine) as s, s.begin():
        s.add(Portfolio(id=BAD, name="Bad book", cash_balance=1000.0, currency="USD"))
        s.add(Portfolio(id=EMPTY, name="Empty book", cash_balance=500.0, currency="USD"))
        s.flush()
        s.add(Position(id=GOOD_ID, portfolio_id=BAD, symbol="KO", position_type="LONG", quantity=100.0,
                       entry_price=60.0, entry_date=date(2022, 1, 3), investment_class="PUBLIC"))
        for pid, (symbol, ptype, qty, extra) in BAD_POSITIONS.items():
            columns = {"entry_price": 100.0, "entry_date": date(2022, 1, 3), "investment_class": "PUBLIC", **extra}
            s.add(Position(id=pid, portfolio_id=BAD, symbol=symbol, position_type=ptype, quantity=qty, **columns))


def dump_without(engine, portfolios: set[uuid.UUID], symbols: set[str]) -> dict[str, list[tuple]]:
    """Every result row (no surrogate ids) except those of `portfolios` or about `symbols`."""
    out = {}
    with Session(engine) as s:
        for model in RESULT_TABLES:
            cols = [c for c in model.__table__.columns if c.name != "id"]
            kept = []
            for row in s.execute(select(*cols)).mappings():
                if row.get("portfolio_id") in portfolios or row.get("symbol") in symbols:
                    continue
                kept.append(tuple(json.dumps(row[c.name], sort_keys=True, default=str) for c in cols))
            out[model.__tablename__] = sorted(kept)
    return out


def non_finite_numbers(engine) -> list[tuple[str, str, float]]:
    """(table, column, value) for every stored non-finite number in any Float/Numeric column."""
    found = []
    with Session(engine) as s:
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if isinstance(column.type, (Float, Numeric)):
                    for (value,) in s.execute(select(column).where(column.is_not(None))):
                        if not math.isfinite(float(value)):
                            found.append((table.name, column.name, value))
    return found


def valuations(engine, portfolio_id: uuid.UUID) -> dict[uuid.UUID, PositionValuation]:
    """The book's stored per-position valuations on AS_OF, by position id."""
    with Session(engine) as s:
        return {v.position_id: v for v in s.scalars(select(PositionValuation).where(
            PositionValuation.portfolio_id == portfolio_id, PositionValuation.as_of_date == AS_OF))}


def jobs(engine, portfolio_id: uuid.UUID, run_id: str) -> dict[str, BatchJobResult]:
    with Session(engine) as s:
        return {j.job: j for j in s.scalars(select(BatchJobResult).where(
            BatchJobResult.portfolio_id == portfolio_id, BatchJobResult.run_id == uuid.UUID(run_id)))}


def assert_clean_exit(result) -> None:
    assert result.code in (0, 1), result.err
    assert result.summary is not None and result.summary["exit_code"] == result.code
    assert "Traceback" not in result.err and "Traceback" not in result.out


def test_bad_positions_are_skipped_and_flagged_and_change_nobody_else(seeded, engine) -> None:
    first = seeded("--date", "2022-12-28", "--json")
    assert first.code == 0
    before = dump_without(engine, {BAD, EMPTY}, BAD_ONLY_SYMBOLS)
    add_bad_books(engine)

    result = seeded("--date", "2022-12-28", "--force", "--json")

    assert_clean_exit(result)
    assert non_finite_numbers(engine) == []
    assert inspect(engine).has_table("positions")
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Position)) == 79 + 1 + len(BAD_POSITIONS)
        assert s.scalar(select(Position.symbol).where(Position.id == uuid.UUID(int=0xBAD08))) == SQL_SYMBOL
        ko_close = s.scalar(select(MarketPrice.close).where(MarketPrice.symbol == "KO", MarketPrice.date == AS_OF))
        exposed = set(s.scalars(select(PositionFactorExposure.position_id).where(
            PositionFactorExposure.portfolio_id == BAD)))
        greeks = dict(s.execute(select(PositionGreeks.position_id, PositionGreeks.status).where(
            PositionGreeks.portfolio_id == BAD)).all())
        snapshot = s.scalars(select(PortfolioSnapshot).where(PortfolioSnapshot.portfolio_id == BAD)).one()
        good_exposure = s.scalars(select(PositionFactorExposure).where(
            PositionFactorExposure.position_id == GOOD_ID, PositionFactorExposure.factor == "Market")).one()
        empty_snapshot = s.scalars(select(PortfolioSnapshot).where(PortfolioSnapshot.portfolio_id == EMPTY)).one()

    # Everybody else: exactly the results of the run without the bad books.
    assert dump_without(engine, {BAD, EMPTY}, BAD_ONLY_SYMBOLS) == before
    assert all(jobs(engine, pid, result.summary["run_id"])["snapshot"].status == "success" for pid in DEMO)

    # The good position is valued at its stored close (its exposure is that value × its beta)
    # and is not flagged.
    bad_jobs = jobs(engine, BAD, result.summary["run_id"])
    valuation = bad_jobs["valuation"].result
    stored = valuations(engine, BAD)
    good = stored[GOOD_ID]
    assert (good.symbol, good.quantity, good.price, good.price_date, good.price_source, good.flags) == (
        "KO", 100.0, ko_close, AS_OF, "market", [])
    assert good.market_value == pytest.approx(100 * ko_close, rel=1e-12)
    assert GOOD_ID in exposed
    assert good_exposure.exposure_dollar == pytest.approx(100 * ko_close * good_exposure.beta)

    # Each bad position held on the date is skipped (no value) or visibly flagged, and never enters
    # the factor analytics; the options report why they could not be modelled.
    assert exposed == {GOOD_ID}
    assert greeks == OPTION_STATUS
    skipped_symbols = {entry.split(":")[0] for entry in snapshot.data_quality["skipped_positions"]}
    # symbols are read upper-cased (as the sync stores them); JPM exited before it entered; the
    # malformed option is reported, never valued at its entry price (SPEC §6.2)
    assert skipped_symbols == {"AAPL", "MSFT", "JPM", "ZZZNOTREAL", "O'REILLY", SQL_SYMBOL.upper(),
                               "AAPL_CALL_150"}
    assert "AAPL_CALL_150: invalid_contract" in snapshot.data_quality["skipped_positions"]
    assert valuation["data_quality"]["flag"] == "missing_prices"
    assert snapshot.data_quality["flag"] == "missing_prices"
    assert snapshot.data_quality["positions_skipped"] == 7
    # The job record is a summary (SPEC §8): the 7 skipped and the 8 flagged positions (every bad
    # one; the option without an underlying price is valued but flagged) are listed up to the cap
    # with their exact counts.
    assert valuation["skipped_positions"] == snapshot.data_quality["skipped_positions"][:RECORD_LIST_CAP]
    assert (valuation["data_quality"]["skipped_positions_count"],
            valuation["data_quality"]["skipped_positions_truncated"]) == (7, True)
    # Every bad position has its row in position_valuations, with its reason: unpriced ones a NULL
    # market value (never 0); the option without an underlying price held at its entry price
    # (2 contracts × 100 × 5.0). The record counts the flags and points at the table.
    assert set(stored) == {GOOD_ID, *BAD_POSITIONS}
    expected = {0xBAD01: ["invalid_quantity"], 0xBAD02: ["invalid_quantity"], 0xBAD03: ["invalid_dates"],
                0xBAD05: ["invalid_contract"], 0xBAD06: ["missing_price"], 0xBAD07: ["missing_price"],
                0xBAD08: ["missing_price"]}
    for number, flags in expected.items():
        row = stored[uuid.UUID(int=number)]
        assert (row.market_value, row.price, row.price_source, row.flags) == (None, None, None, flags), hex(number)
    assert stored[uuid.UUID(int=0xBAD01)].quantity == -10.0
    assert stored[uuid.UUID(int=0xBAD08)].symbol == SQL_SYMBOL.upper()
    unmodelled = stored[uuid.UUID(int=0xBAD04)]
    assert (unmodelled.price, unmodelled.price_source, unmodelled.market_value, unmodelled.flags) == (
        5.0, "entry", 1000.0, ["model_price_unavailable"])
    assert valuation["positions"] == {"stored_in": "position_valuations", "rows": 9}
    assert valuation["flags"] == {"invalid_quantity": 2, "invalid_dates": 1, "invalid_contract": 1,
                                  "missing_price": 3, "model_price_unavailable": 1}
    assert {"model_price_unavailable", "pnl_incomplete"} <= set(snapshot.data_quality["flags"])
    assert snapshot.num_short == 0  # the SHORT with a positive quantity is not counted as anything

    # The portfolio without positions: valued at its cash, analytics skipped with the §8 payloads.
    empty_jobs = jobs(engine, EMPTY, result.summary["run_id"])
    assert (empty_snapshot.total_value, empty_snapshot.num_positions, empty_snapshot.daily_pnl) == (500.0, 0, 0.0)
    assert {j: empty_jobs[j].status for j in ("valuation", "factors", "market_risk", "stress_tests",
                                               "correlations", "snapshot")} == {
        "valuation": "success", "factors": "skipped", "market_risk": "skipped", "stress_tests": "skipped",
        "correlations": "skipped", "snapshot": "success"}
    assert empty_jobs["factors"].result["metadata"]["status"] == "SKIPPED_NO_PUBLIC_POSITIONS"
    assert empty_jobs["stress_tests"].result["stress_test_results"]["skip_reason"] == "no_factor_exposures"


def test_a_position_exited_before_its_entry_is_reported(seeded, engine) -> None:
    add_bad_books(engine)
    result = seeded("--date", "2022-12-28", "--json")
    assert_clean_exit(result)
    with Session(engine) as s:
        snapshot = s.scalars(select(PortfolioSnapshot).where(PortfolioSnapshot.portfolio_id == BAD)).one()
    assert "JPM: exit_date 2022-03-01 before entry_date 2022-06-01" in snapshot.data_quality["skipped_positions"]


# --- dates that are not sessions ----------------------------------------------------------------


@pytest.mark.parametrize("args", [("--date", "2022-12-25"), ("--start", "2022-12-24", "--end", "2022-12-26")],
                         ids=["christmas", "holiday-weekend-range"])
def test_a_non_session_date_is_skipped_and_writes_nothing_but_the_run(seeded, engine, args) -> None:
    result = seeded(*args, "--json")
    assert_clean_exit(result)
    assert result.code == 0
    assert (result.summary["status"], result.summary["reason"], result.summary["as_of_dates"]) == \
        ("skipped", "not_a_trading_day", [])
    with Session(engine) as s:
        for model in RESULT_TABLES + (MarketPrice, BatchJobResult):
            assert s.scalar(select(func.count()).select_from(model)) == 0, model.__tablename__


# --- stored input rows the driver or the engines cannot use (issue #10 items 15, 26) -------------
# Each case is one portfolio holding 100 KO (a symbol the demo books hold too), broken by one
# statement written as an operator would type it in psql / sqlite3. The portfolio must fail alone
# with job `inputs` and a one-line error naming the row, the column and the value; the demo books,
# loaded in the same chunk, must compute exactly what they compute without it.

MARKED = "ACME_MARKED_HOLDING"  # a PRIVATE symbol with a bad mark (only its book holds it)
# case → (dialects, statement with :row (the bad row's id), expected error with {row})
BAD_ROWS = {
    "pg-exit-infinity": ({"postgresql"}, "UPDATE positions SET exit_date = 'infinity' WHERE id = :row",
                         "position {row}: exit_date 'infinity' is not a date"),
    "pg-expiration-minus-infinity": (
        {"postgresql"}, "UPDATE positions SET expiration_date = '-infinity' WHERE id = :row",
        "position {row}: expiration_date '-infinity' is not a date"),
    "pg-quantity-nan": ({"postgresql"}, "UPDATE positions SET quantity = 'NaN' WHERE id = :row",
                        "position {row}: quantity 'NaN' is not a finite number"),
    "pg-strike-nan": ({"postgresql"}, "UPDATE positions SET strike_price = 'NaN' WHERE id = :row",
                      "position {row}: strike_price 'NaN' is not a finite number"),
    "pg-iv-infinity": ({"postgresql"}, "UPDATE positions SET implied_volatility = 'Infinity' WHERE id = :row",
                       "position {row}: implied_volatility 'inf' is not a finite number"),
    "pg-cash-nan": ({"postgresql"}, "UPDATE portfolios SET cash_balance = 'NaN' WHERE id = :row",
                    "portfolio {row}: cash_balance 'NaN' is not a finite number"),
    "pg-prior-snapshot-nan": (
        {"postgresql"}, "UPDATE portfolio_snapshots SET total_value = 'NaN' WHERE portfolio_id = :row",
        "portfolio_snapshots {row} 2022-12-27: total_value 'nan' is not a finite number"),
    "pg-mark-nan": ({"postgresql"}, f"UPDATE market_prices SET close = 'NaN' WHERE symbol = '{MARKED}'",
                    f"market_prices {MARKED} 2022-12-20: close 'NaN' is not a finite number"),
    "sqlite-quantity-text": ({"sqlite"}, "UPDATE positions SET quantity = 'ten' WHERE id = :row",
                             "position {row}: quantity 'ten' is not a number"),
    "sqlite-quantity-nan-text": ({"sqlite"}, "UPDATE positions SET quantity = 'NaN' WHERE id = :row",
                                 "position {row}: quantity 'NaN' is not a finite number"),
    "sqlite-strike-overflow": ({"sqlite"}, "UPDATE positions SET strike_price = 1e999 WHERE id = :row",
                               "position {row}: strike_price 'inf' is not a finite number"),
    "sqlite-entry-date-text": ({"sqlite"}, "UPDATE positions SET entry_date = 'soon' WHERE id = :row",
                               "position {row}: entry_date 'soon' is not a date"),
    "sqlite-cash-text": ({"sqlite"}, "UPDATE portfolios SET cash_balance = 'ten' WHERE id = :row",
                         "portfolio {row}: cash_balance 'ten' is not a number"),
    "sqlite-prior-snapshot-text": (
        {"sqlite"}, "UPDATE portfolio_snapshots SET cumulative_pnl = 'lots' WHERE portfolio_id = :row",
        "portfolio_snapshots {row} 2022-12-27: cumulative_pnl 'lots' is not a number"),
    "sqlite-mark-text": ({"sqlite"}, f"UPDATE market_prices SET close = 'ten' WHERE symbol = '{MARKED}'",
                         f"market_prices {MARKED} 2022-12-20: close 'ten' is not a number"),
    "unknown-investment-class": (
        {"sqlite", "postgresql"}, "UPDATE positions SET investment_class = 'EQUITY' WHERE id = :row",
        "position {row}: investment_class 'EQUITY' is not one of PUBLIC, OPTIONS, PRIVATE or NULL"),
}


def add_broken_books(engine) -> dict[uuid.UUID, str]:
    """One book per BAD_ROWS case of this dialect, broken by its raw statement; returns
    portfolio id → the error it must fail with."""
    dialect = engine.dialect.name
    cases = {name: case for name, case in BAD_ROWS.items() if dialect in case[0]}
    expected = {}
    with Session(engine) as s, s.begin():
        for n, (name, (_, statement, error)) in enumerate(sorted(cases.items()), start=1):
            pid, bad_row = uuid.UUID(int=0xB00C00 + n), uuid.UUID(int=0xB00C00 + 100 + n)
            s.add(Portfolio(id=pid, name=name, cash_balance=1000.0, currency="USD"))
            s.flush()
            s.add(Position(id=uuid.UUID(int=0xB00C00 + 200 + n), portfolio_id=pid, symbol="KO",
                           position_type="LONG", quantity=100.0, entry_price=60.0,
                           entry_date=date(2022, 1, 3), investment_class="PUBLIC"))
            s.add(Position(id=bad_row, portfolio_id=pid, symbol="KO230317C00060000", position_type="LC",
                           quantity=2.0, entry_price=3.0, entry_date=date(2022, 11, 15), investment_class="OPTIONS",
                           underlying_symbol="KO", strike_price=60.0, expiration_date=date(2023, 3, 17)))
            if "snapshot" in name:
                s.add(PortfolioSnapshot(
                    portfolio_id=pid, snapshot_date=date(2022, 12, 27), total_value=7000.0, cash_value=1000.0,
                    long_value=6000.0, short_value=0.0, gross_exposure=6000.0, net_exposure=6000.0,
                    private_value=0.0, daily_pnl=0.0, cumulative_pnl=0.0, num_positions=2, num_long=2,
                    num_short=0, num_private=0, data_quality={}))
            if "mark" in name:
                s.add(Position(id=uuid.UUID(int=0xB00C00 + 300 + n), portfolio_id=pid, symbol=MARKED,
                               position_type="LONG", quantity=1.0, entry_price=250_000.0,
                               entry_date=date(2021, 6, 30), investment_class="PRIVATE"))
                s.add(MarketPrice(symbol=MARKED, date=date(2022, 12, 20), close=260_000.0, source="manual",
                                  updated_at=NOW))
            s.flush()
            target = pid if ("cash" in name or "snapshot" in name) else bad_row
            if ":row" in statement:
                s.execute(text(statement).bindparams(bindparam("row", type_=Uuid())), {"row": target})
            else:
                s.execute(text(statement))
            expected[pid] = error.format(row=target)
    return expected


def test_a_bad_input_row_fails_only_its_portfolio(seeded, engine) -> None:
    """Issue #10 item 15 / 26: before, one such row failed every portfolio of the chunk
    ('inputs not loaded: DataError: date too large', "could not convert string to float: 'ten'")
    or failed its unit with a raw NotNullViolation (NaN quantity or cash)."""
    first = seeded("--date", "2022-12-28", "--json")
    assert first.code == 0, first.err
    before = dump_without(engine, set(), set())
    expected = add_broken_books(engine)
    assert len(expected) >= 8

    result = seeded("--date", "2022-12-28", "--force", "--json")

    assert result.code == 1 and result.summary["exit_code"] == 1
    assert "Traceback" not in result.err and "Traceback" not in result.out
    assert result.summary["portfolios"] == {"succeeded": len(DEMO), "failed": len(expected), "skipped": 0}
    assert {uuid.UUID(f["portfolio_id"]): (f["job"], f["error"]) for f in result.summary["failed_portfolios"]} \
        == {pid: ("inputs", error) for pid, error in expected.items()}
    for pid, error in expected.items():  # one job record: the one-line error; nothing else written
        recorded = jobs(engine, pid, result.summary["run_id"])
        assert {j: (r.status, r.error) for j, r in recorded.items()} == {"inputs": ("failed", error)}
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(PortfolioSnapshot).where(
            PortfolioSnapshot.portfolio_id.in_(list(expected)),
            PortfolioSnapshot.snapshot_date == AS_OF)) == 0
        market_data = s.scalars(select(BatchJobResult).where(
            BatchJobResult.run_id == uuid.UUID(result.summary["run_id"]), BatchJobResult.job == "market_data")).one()
    assert market_data.status == "success"  # the sync read the same positions and carried on
    # the demo books, in the same chunk, computed exactly what they computed without the bad rows
    assert dump_without(engine, set(expected), set()) == before
    assert all(jobs(engine, pid, result.summary["run_id"])["snapshot"].status == "success" for pid in DEMO)


def set_class(engine, position_id: uuid.UUID, value: str) -> None:
    """Set investment_class as an operator would, in raw SQL."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE positions SET investment_class = :v WHERE id = :row").bindparams(
            bindparam("row", type_=Uuid())), {"v": value, "row": position_id})


def test_investment_class_is_read_whatever_its_case_and_whitespace(seeded, engine) -> None:
    """Issue #10 item 26: ' private ' was read as PUBLIC, so a 250,000 holding dropped out of NAV
    as missing_price; 'public' and 'Options' are read as PUBLIC and OPTIONS."""
    pid, holding, ko, option = (uuid.UUID(int=0xC1A55 + k) for k in range(4))
    with Session(engine) as s, s.begin():
        s.add(Portfolio(id=pid, name="lower-case classes", cash_balance=1000.0, currency="USD"))
        s.flush()
        s.add(Position(id=holding, portfolio_id=pid, symbol="ACME_HOLDINGS", position_type="LONG", quantity=1.0,
                       entry_price=250_000.0, entry_date=date(2021, 6, 30), investment_class="PRIVATE"))
        s.add(Position(id=ko, portfolio_id=pid, symbol="KO", position_type="LONG", quantity=100.0,
                       entry_price=60.0, entry_date=date(2022, 1, 3), investment_class="PUBLIC"))
        s.add(Position(id=option, portfolio_id=pid, symbol="KO230317C00060000", position_type="LC", quantity=2.0,
                       entry_price=3.0, entry_date=date(2022, 11, 15), investment_class="OPTIONS",
                       underlying_symbol="KO", strike_price=60.0, expiration_date=date(2023, 3, 17)))
    set_class(engine, holding, " private ")
    set_class(engine, ko, "public")
    set_class(engine, option, "Options")

    result = seeded("--date", "2022-12-28", "--json")

    assert result.code == 0, result.err
    with Session(engine) as s:
        snapshot = s.scalars(select(PortfolioSnapshot).where(PortfolioSnapshot.portfolio_id == pid)).one()
        ko_close = s.scalar(select(MarketPrice.close).where(MarketPrice.symbol == "KO", MarketPrice.date == AS_OF))
        greeks = {g.position_id: g for g in s.scalars(select(PositionGreeks).where(
            PositionGreeks.portfolio_id == pid))}
    valuation = jobs(engine, pid, result.summary["run_id"])["valuation"].result
    assert valuation["skipped_positions"] == [] and valuation["flags"] == {}
    stored = valuations(engine, pid)
    assert {k: (v.price_source, v.flags) for k, v in stored.items()} == {
        holding: ("entry", []), ko: ("market", []), option: ("model", [])}
    assert stored[option].price == greeks[option].model_price
    assert (stored[holding].market_value, stored[ko].market_value) == (250_000.0, pytest.approx(100 * ko_close))
    assert (snapshot.private_value, snapshot.num_private) == (250_000.0, 1)  # at its entry value (no mark)
    assert list(greeks) == [option]  # modelled as an option
    option_value = 2 * 100 * greeks[option].model_price  # 2 contracts of 100 at the model price
    assert option_value > 0
    assert snapshot.long_value == pytest.approx(100 * ko_close + option_value)
    assert snapshot.total_value == pytest.approx(1000.0 + 250_000.0 + 100 * ko_close + option_value)


def test_the_sync_excludes_private_whatever_its_case_and_includes_null(engine) -> None:
    """SPEC §5.2: PRIVATE excluded NULL-safely, with the class compared as the engines read it."""
    pid = uuid.uuid4()
    classes = {"ACME_HOLDINGS": " private ", "OTHER_ASSET": "Private", "MSFT": None, "KO": "public"}
    with Session(engine) as s, s.begin():
        s.add(Portfolio(id=pid, name="classes", cash_balance=0.0, currency="USD"))
        s.flush()
        ids = {symbol: uuid.uuid4() for symbol in classes}
        for symbol, row in ids.items():
            s.add(Position(id=row, portfolio_id=pid, symbol=symbol, position_type="LONG", quantity=1.0,
                           entry_price=1.0, entry_date=date(2022, 1, 3), investment_class="PUBLIC"))
    for symbol, value in classes.items():
        with engine.begin() as conn:
            conn.execute(text("UPDATE positions SET investment_class = :v WHERE id = :row").bindparams(
                bindparam("row", type_=Uuid())), {"v": value, "row": ids[symbol]})

    with Session(engine) as s:
        held = symbols_held(s, AS_OF, AS_OF)

    assert held == ["KO", "MSFT"]


# --- bad closes already stored (a manual fix, an old load that bypassed validation) ---------------


BAD_CLOSES_BOOK = uuid.UUID(int=0xBADC)
NEG_CALL = uuid.UUID(int=0xBADC10)
ZERO_ID = uuid.UUID(int=0xBADC01)  # the book's ZERO position (add_bad_close_book numbers them from 1)
BAD_CLOSE_AT = -30  # NEG's bad close: 30 sessions before the as-of date, inside every window


def add_bad_close_book(engine) -> tuple[dict[str, list[tuple[date, float]]], list[date]]:
    """ZERO = KO's closes with a 0 close on the as-of date; NEG = XOM's with a −5 close 30 sessions
    back; FLAT = 50.0 every session. Stored directly, as an old load would have. Returns the rows
    stored per symbol and the 300 sessions they cover."""
    days = calendar.sessions_back(AS_OF, HISTORY_SESSIONS)
    with Session(engine) as s, s.begin():
        stored_closes = {sym: dict(s.execute(select(MarketPrice.date, MarketPrice.close).where(
            MarketPrice.symbol == sym, MarketPrice.date >= days[0], MarketPrice.date <= AS_OF)).all())
            for sym in ("KO", "XOM")}
        rows = {"ZERO": [(d, 0.0 if d == AS_OF else float(stored_closes["KO"][d])) for d in days],
                "NEG": [(d, -5.0 if d == days[BAD_CLOSE_AT] else float(stored_closes["XOM"][d])) for d in days],
                "FLAT": [(d, 50.0) for d in days]}
        upsert(s, MarketPrice, [{"symbol": sym, "date": d, "close": c, "source": "old_load", "updated_at": NOW}
                                for sym, series in rows.items() for d, c in series], key=("symbol", "date"))
        s.add(Portfolio(id=BAD_CLOSES_BOOK, name="Bad closes", cash_balance=0.0, currency="USD"))
        s.flush()
        for n, (symbol, qty) in enumerate([("ZERO", 1000.0), ("NEG", 500.0), ("FLAT", 1000.0)], start=1):
            s.add(Position(id=uuid.UUID(int=0xBADC00 + n), portfolio_id=BAD_CLOSES_BOOK, symbol=symbol,
                           position_type="LONG", quantity=qty, entry_price=50.0, entry_date=date(2022, 1, 3),
                           investment_class="PUBLIC"))
        s.add(Position(id=NEG_CALL, portfolio_id=BAD_CLOSES_BOOK, symbol="NEG230317C00110000",
                       position_type="LC", quantity=5.0, entry_price=6.0, entry_date=date(2022, 1, 3),
                       investment_class="OPTIONS", underlying_symbol="NEG", strike_price=110.0,
                       expiration_date=date(2023, 3, 17)))
    return rows, days


def test_bad_stored_closes_are_missing_data_for_every_engine(seeded, engine) -> None:
    """SPEC §5.3/§6: a zero or negative stored close is read as a missing close (flagged): never a
    price, never one end of a return. A constant price is a zero-variance fit (SPEC §6.3)."""
    assert seeded("--date", "2022-12-28").code == 0  # stores the sample prices
    rows, days = add_bad_close_book(engine)

    result = seeded("--date", "2022-12-28", "--force", "--skip-sync", "--json")

    assert result.code == 0, result.err
    # Expected values from the raw stored closes with the bad ones dropped, by pandas/numpy.
    raw = pd.DataFrame({sym: dict(series) for sym, series in rows.items()}).reindex(days)
    clean = raw.where(raw > 0)
    with Session(engine) as s:
        proxy_rows = s.execute(select(MarketPrice.date, MarketPrice.symbol, MarketPrice.close).where(
            MarketPrice.symbol.in_(["^GSPC", "VLUE", "MTUM", "QUAL", "SIZE", "USMV"]),
            MarketPrice.date >= days[-91])).all()
        betas = {(r.symbol, r.factor): r for r in s.scalars(select(SymbolFactorBeta).where(
            SymbolFactorBeta.as_of_date == AS_OF, SymbolFactorBeta.symbol.in_(["ZERO", "NEG", "FLAT"])))}
        greeks = s.scalars(select(PositionGreeks).where(PositionGreeks.position_id == NEG_CALL)).one()
        pair = s.scalars(select(PairwiseCorrelation).where(
            PairwiseCorrelation.portfolio_id == BAD_CLOSES_BOOK, PairwiseCorrelation.symbol_1 == "NEG",
            PairwiseCorrelation.symbol_2 == "ZERO")).one()
        snapshot = s.scalars(select(PortfolioSnapshot).where(PortfolioSnapshot.portfolio_id == BAD_CLOSES_BOOK)).one()
        zero_exposure = s.scalars(select(PositionFactorExposure).where(
            PositionFactorExposure.position_id == ZERO_ID, PositionFactorExposure.factor == "Market")).one()
    proxies = pd.DataFrame(proxy_rows, columns=["date", "symbol", "close"]).pivot(
        index="date", columns="symbol", values="close").astype(float).reindex(days[-91:])
    proxy_returns = (proxies / proxies.shift(1) - 1).iloc[1:]
    market = proxy_returns["^GSPC"]
    design = pd.concat([market] + [proxy_returns[p] - market for p in ("VLUE", "MTUM", "QUAL", "SIZE", "USMV")],
                       axis=1, keys=["Market", "Value", "Momentum", "Quality", "Size", "Low Volatility"])
    returns = (clean / clean.shift(1) - 1).iloc[-90:]

    # Factor betas: fitted on the returns that remain (88 for NEG, 89 for ZERO), limited_history
    for symbol, observations in (("NEG", 88), ("ZERO", 89)):
        keep = returns[symbol].notna()
        assert int(keep.sum()) == observations
        x = np.column_stack([np.ones(observations), design[keep].to_numpy()])
        coef, *_ = np.linalg.lstsq(x, returns[symbol][keep].to_numpy(), rcond=None)
        for factor, expected in zip(design.columns, coef[1:], strict=True):
            row = betas[symbol, factor]
            assert row.beta == pytest.approx(expected, abs=1e-9), (symbol, factor)
            assert (row.observations, row.quality_flag) == (observations, "limited_history")
    # FLAT: zero variance, no beta and no statistics
    for factor in design.columns:
        row = betas["FLAT", factor]
        assert (row.beta, row.std_error, row.t_stat, row.r_squared, row.quality_flag) == (
            None, None, None, None, "zero_variance"), factor

    # ... so its position has no factor exposure, for that reason (not "insufficient_history")
    factor_quality = jobs(engine, BAD_CLOSES_BOOK, result.summary["run_id"])["factors"].result["data_quality"]
    assert factor_quality["skipped_positions"] == {str(uuid.UUID(int=0xBADC03)): "zero_variance"}

    # Option realised volatility: 63 log returns of NEG, the two touching the bad close dropped
    logs = np.log(clean["NEG"]).diff().iloc[-63:].dropna()
    assert len(logs) == 61
    assert greeks.status == "ok"
    assert greeks.volatility == pytest.approx(float(np.std(logs, ddof=1) * math.sqrt(252)), rel=1e-9)

    # Correlations: log returns over 90 sessions, pairwise complete (87 common)
    log_returns = np.log(clean[["NEG", "ZERO"]]).diff().iloc[-90:].dropna()
    assert pair.observations == len(log_returns) == 87
    assert pair.correlation == pytest.approx(float(np.corrcoef(log_returns.T)[0, 1]), abs=1e-9)

    # Valuation: ZERO at its last good close (the previous session: its exposure is that value ×
    # its beta), flagged, and reported
    valuation = jobs(engine, BAD_CLOSES_BOOK, result.summary["run_id"])["valuation"].result
    assert zero_exposure.exposure_dollar == pytest.approx(1000 * rows["ZERO"][-2][1] * zero_exposure.beta, rel=1e-12)
    zero = valuations(engine, BAD_CLOSES_BOOK)[ZERO_ID]
    assert (zero.price, zero.price_date, zero.price_source) == (rows["ZERO"][-2][1], rows["ZERO"][-2][0], "market")
    assert zero.market_value == pytest.approx(1000 * rows["ZERO"][-2][1], rel=1e-12)
    assert "bad_closes_ignored" in zero.flags
    # ZERO, NEG and the call on NEG are priced from symbols with a bad close; FLAT is not
    assert {k for k, v in valuations(engine, BAD_CLOSES_BOOK).items() if "bad_closes_ignored" in v.flags} == {
        ZERO_ID, uuid.UUID(int=0xBADC02), NEG_CALL}
    assert valuation["flags"] == {"bad_closes_ignored": 3}
    assert "bad_closes_ignored" in snapshot.data_quality["flags"]
    assert snapshot.data_quality["bad_close_symbols"] == ["NEG", "NEG230317C00110000", "ZERO"]
    with Session(engine) as s:
        symbol_job = s.scalars(select(BatchJobResult).where(
            BatchJobResult.job == "symbol_betas", BatchJobResult.run_id == uuid.UUID(result.summary["run_id"]))).one()
    assert symbol_job.result["bad_closes"] == {"NEG": [days[BAD_CLOSE_AT].isoformat()], "ZERO": [AS_OF.isoformat()]}
    assert non_finite_numbers(engine) == []
