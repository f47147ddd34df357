"""Which symbols are synced, market-data sync and validation, company profiles (SPEC §5.2, §5.3).

Database tests: each runs on SQLite and on PostgreSQL (the `engine` fixture).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from importlib import resources

import httpx
import pandas as pd
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from batch import calendar
from batch.fetching import DailyQuota, RateLimiter, RetryPolicy
from batch.providers import PRICE_COLUMNS, PriceBatch, ProfileBatch, SampleProvider
from batch.providers.rest import FmpProvider
from batch.repository import ensure_factor_definitions, symbols_held
from batch.sync import (
    history_start,
    sync_company_profiles,
    sync_market_data,
    validate_prices,
)
from models import (
    BatchJobResult,
    CompanyProfile,
    MarketPrice,
    Portfolio,
    Position,
    ProfileAbsence,
    ProviderRequestCount,
)

NOW = datetime(2022, 12, 28, 23, 45, tzinfo=timezone.utc)
AS_OF = date(2022, 12, 28)
WINDOW_START, WINDOW_END = date(2022, 12, 1), date(2022, 12, 28)


# --- helpers ----------------------------------------------------------------------------------


def add_portfolio(s: Session, name: str = "p", deleted: bool = False) -> uuid.UUID:
    pid = uuid.uuid4()
    s.add(Portfolio(id=pid, name=name, cash_balance=0.0, currency="USD",
                    deleted_at=NOW if deleted else None))
    s.flush()
    return pid


def add_position(s: Session, portfolio_id: uuid.UUID, symbol: str, *, position_type: str = "LONG",
                 quantity: float = 10.0, investment_class: str | None = "PUBLIC",
                 entry_date: date = date(2022, 1, 3), exit_date: date | None = None,
                 underlying_symbol: str | None = None, strike_price: float | None = None,
                 expiration_date: date | None = None, deleted: bool = False) -> uuid.UUID:
    pos_id = uuid.uuid4()
    s.add(Position(id=pos_id, portfolio_id=portfolio_id, symbol=symbol, position_type=position_type,
                   quantity=quantity, entry_price=1.0, entry_date=entry_date, exit_date=exit_date,
                   investment_class=investment_class, underlying_symbol=underlying_symbol,
                   strike_price=strike_price, expiration_date=expiration_date,
                   deleted_at=NOW if deleted else None))
    s.flush()
    return pos_id


def seed_holdings(engine, symbols: Sequence[str], entry_date: date = date(2022, 1, 3)) -> uuid.UUID:
    with Session(engine) as s, s.begin():
        pid = add_portfolio(s)
        for symbol in symbols:
            add_position(s, pid, symbol, entry_date=entry_date)
    return pid


def stored_prices(engine, symbol: str | None = None) -> dict[tuple[str, date], float]:
    with Session(engine) as s:
        query = select(MarketPrice.symbol, MarketPrice.date, MarketPrice.close)
        if symbol is not None:
            query = query.where(MarketPrice.symbol == symbol)
        return {(sym, d): float(c) for sym, d, c in s.execute(query)}


def price_count(engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(MarketPrice))


def sync(engine, provider, as_of_dates=(AS_OF,), portfolio_ids=None, now: datetime = NOW):
    with Session(engine) as s, s.begin():
        return sync_market_data(s, provider, list(as_of_dates), portfolio_ids, now)


def file_closes() -> dict[tuple[str, date], float]:
    """The bundled closes read with the csv module (independent of the provider's pandas path)."""
    raw = (resources.files("batch") / "data" / "sample_prices.csv.gz").read_bytes()
    reader = csv.DictReader(io.StringIO(gzip.decompress(raw).decode()))
    out = {}
    for row in reader:
        day = date.fromisoformat(row.pop("date"))
        for symbol, value in row.items():
            out[(symbol, day)] = float(value)
    return out


# --- symbols_held -----------------------------------------------------------------------------


def test_symbols_held_applies_every_rule(engine) -> None:
    with Session(engine) as s, s.begin():
        pid = add_portfolio(s)
        add_position(s, pid, "AAPL", investment_class=None)                  # NULL class: included
        add_position(s, pid, "GE", position_type="SHORT", quantity=-50)       # short: included
        add_position(s, pid, "BX_PRIVATE_EQUITY", investment_class="PRIVATE", quantity=1)
        add_position(s, pid, "MSFT230120C00250000", position_type="LC", quantity=2,
                     investment_class="OPTIONS", underlying_symbol="MSFT", strike_price=250.0,
                     expiration_date=date(2023, 1, 20))
        # An option with a NULL class is still an option: it contributes its underlying.
        add_position(s, pid, "KO230120P00060000", position_type="LP", quantity=1,
                     investment_class=None, underlying_symbol="KO", strike_price=60.0,
                     expiration_date=date(2023, 1, 20))
        add_position(s, pid, "DELETED", deleted=True)
        add_position(s, pid, "ZERO", quantity=0)
        add_position(s, pid, "GONE", exit_date=date(2022, 11, 15))            # exited before window
        add_position(s, pid, "EXITED_AT_START", exit_date=WINDOW_START)       # not held at any close
        add_position(s, pid, "LATE_EXIT", exit_date=date(2022, 12, 15))       # held part of window
        add_position(s, pid, "FUTURE", entry_date=date(2023, 1, 5))           # entered after window
        dead = add_portfolio(s, "deleted", deleted=True)
        add_position(s, dead, "IN_DELETED_PORTFOLIO")
    with Session(engine) as s:
        held = symbols_held(s, WINDOW_START, WINDOW_END)
    assert held == ["AAPL", "GE", "KO", "LATE_EXIT", "MSFT"]


def test_symbols_held_option_contributes_underlying_not_occ_symbol(engine) -> None:
    with Session(engine) as s, s.begin():
        pid = add_portfolio(s)
        add_position(s, pid, "AAPL230317C00150000", position_type="LC", quantity=10,
                     investment_class="OPTIONS", underlying_symbol="AAPL", strike_price=150.0,
                     expiration_date=date(2023, 3, 17))
    with Session(engine) as s:
        assert symbols_held(s, WINDOW_START, WINDOW_END) == ["AAPL"]


def test_symbols_held_null_class_is_not_private(engine) -> None:
    with Session(engine) as s, s.begin():
        pid = add_portfolio(s)
        add_position(s, pid, "JPM", investment_class=None)
        add_position(s, pid, "RENTAL_CONDO", investment_class="PRIVATE", quantity=1)
    with Session(engine) as s:
        assert symbols_held(s, WINDOW_START, WINDOW_END) == ["JPM"]


def test_symbols_held_portfolio_filter_restricts(engine) -> None:
    with Session(engine) as s, s.begin():
        first, second = add_portfolio(s, "a"), add_portfolio(s, "b")
        add_position(s, first, "AAPL")
        add_position(s, first, "MSFT")
        add_position(s, second, "JPM")
        add_position(s, second, "AAPL")
    with Session(engine) as s:
        assert symbols_held(s, WINDOW_START, WINDOW_END) == ["AAPL", "JPM", "MSFT"]
        assert symbols_held(s, WINDOW_START, WINDOW_END, [second]) == ["AAPL", "JPM"]
        assert symbols_held(s, WINDOW_START, WINDOW_END, [first]) == ["AAPL", "MSFT"]
        assert symbols_held(s, WINDOW_START, WINDOW_END, [uuid.uuid4()]) == []


def test_symbols_held_on_an_empty_database_is_empty(engine) -> None:
    with Session(engine) as s:
        assert symbols_held(s, WINDOW_START, WINDOW_END) == []


# --- sync with the real sample provider -------------------------------------------------------


def test_first_sync_backfills_the_whole_window(engine) -> None:
    seed_holdings(engine, ["AAPL", "MSFT"])
    provider = SampleProvider()
    sessions = calendar.trading_days(history_start(AS_OF, provider.coverage()), AS_OF)
    # Independent of history_start: the window is the 300 sessions ending on the as-of date.
    assert sessions == calendar.sessions_back(AS_OF, 300)

    result = sync(engine, provider)

    assert result.symbols_requested == 2
    assert result.symbols_updated == 2
    assert result.rows_written == 2 * len(sessions) == 600
    assert result.failed_symbols == [] and not result.all_failed
    assert result.rejected_rows == []
    stored = stored_prices(engine)
    assert set(stored) == {(sym, d) for sym in ("AAPL", "MSFT") for d in sessions}
    expected = file_closes()
    for key, close in stored.items():
        assert close == pytest.approx(expected[key], abs=1e-6), key
    with Session(engine) as s:
        sources = set(s.scalars(select(MarketPrice.source)))
    assert sources == {"sample"}


def test_first_sync_near_the_start_of_coverage_is_clamped(engine) -> None:
    seed_holdings(engine, ["KO"], entry_date=date(2014, 1, 2))
    as_of = date(2014, 3, 3)
    result = sync(engine, SampleProvider(), [as_of])
    sessions = calendar.trading_days(date(2014, 1, 2), as_of)
    assert result.rows_written == len(sessions)
    assert set(stored_prices(engine)) == {("KO", d) for d in sessions}


def test_backfill_range_window_runs_from_the_first_as_of_to_the_last(engine) -> None:
    seed_holdings(engine, ["PG"])
    first, last = date(2022, 12, 20), AS_OF
    result = sync(engine, SampleProvider(), calendar.trading_days(first, last))
    expected = calendar.sessions_back(first, 300) + calendar.trading_days(date(2022, 12, 21), last)
    assert result.rows_written == len(expected)
    assert set(stored_prices(engine)) == {("PG", d) for d in expected}


def test_second_sync_fetches_nothing(engine) -> None:
    seed_holdings(engine, ["AAPL", "MSFT"])
    provider = SampleProvider()
    sync(engine, provider)
    before = price_count(engine)

    again = sync(engine, provider)

    assert again.symbols_requested == 0
    assert again.rows_written == 0
    assert again.symbols_updated == 0
    assert again.failed_symbols == [] and not again.all_failed
    assert price_count(engine) == before


def test_missing_rows_of_one_symbol_are_refetched_alone(engine) -> None:
    seed_holdings(engine, ["AAPL", "MSFT"])
    provider = SampleProvider()
    sync(engine, provider)
    gone = [date(2022, 12, 20), date(2022, 12, 21)]  # two consecutive sessions
    with Session(engine) as s, s.begin():
        s.execute(delete(MarketPrice).where(MarketPrice.symbol == "MSFT", MarketPrice.date.in_(gone)))
    total = price_count(engine)

    result = sync(engine, provider)

    assert result.symbols_requested == 1
    assert result.symbols_updated == 1
    assert result.rows_written == 2
    assert price_count(engine) == total + 2
    expected = file_closes()
    restored = stored_prices(engine, "MSFT")
    for day in gone:
        assert restored[("MSFT", day)] == pytest.approx(expected[("MSFT", day)], abs=1e-6)


def test_unknown_symbol_is_reported_not_fatal(engine) -> None:
    seed_holdings(engine, ["AAPL", "NOTREAL"])
    result = sync(engine, SampleProvider())
    assert result.symbols_requested == 2
    assert result.failed_symbols == ["NOTREAL"]
    assert result.failures == {"NOTREAL": "unknown_symbol"}
    assert result.all_failed is False
    assert result.symbols_updated == 1 and result.rows_written == 300
    assert {sym for sym, _ in stored_prices(engine)} == {"AAPL"}
    assert result.summary()["failed_symbols"] == ["NOTREAL"]


def test_only_unknown_symbols_is_not_all_failed(engine) -> None:
    seed_holdings(engine, ["NOTREAL", "ALSO_NOT"])
    result = sync(engine, SampleProvider())
    assert result.failed_symbols == ["ALSO_NOT", "NOTREAL"]
    assert result.all_failed is False  # unknown_symbol is permanent, not an unreachable provider
    assert result.rows_written == 0 and price_count(engine) == 0


def test_factor_proxies_are_synced_and_unavailable_ones_reported(engine) -> None:
    with Session(engine) as s, s.begin():
        ensure_factor_definitions(s, "sample")
    result = sync(engine, SampleProvider())
    # sample proxies: ^GSPC VLUE VUG MTUM QUAL SIZE USMV TLT; VUG and TLT are not bundled.
    assert result.symbols_requested == 8
    assert result.failed_symbols == ["TLT", "VUG"]
    assert not result.all_failed
    assert {sym for sym, _ in stored_prices(engine)} == {"^GSPC", "MTUM", "QUAL", "SIZE", "USMV", "VLUE"}
    assert result.rows_written == 6 * 300


def test_portfolio_filter_syncs_only_that_portfolios_symbols(engine) -> None:
    with Session(engine) as s, s.begin():
        first, second = add_portfolio(s, "a"), add_portfolio(s, "b")
        add_position(s, first, "AAPL")
        add_position(s, second, "JPM")
    result = sync(engine, SampleProvider(), portfolio_ids=[second])
    assert result.symbols_requested == 1
    assert {sym for sym, _ in stored_prices(engine)} == {"JPM"}


# --- a fake provider: bad data and failures ---------------------------------------------------


FAKE_COVERAGE = (date(2022, 12, 1), date(2022, 12, 9))
FAKE_SESSIONS = [date(2022, 12, d) for d in (1, 2, 5, 6, 7, 8, 9)]


class FakeProvider:
    """Serves `rows` ((symbol, date, close) in order) inside [start, end]; fails `failed`."""

    name = "fake"

    def __init__(self, rows: list[tuple[str, date, float]], failed: dict[str, str] | None = None) -> None:
        self.rows = rows
        self.failed = failed or {}
        self.calls: list[tuple[list[str], date, date]] = []

    def coverage(self) -> tuple[date, date]:
        return FAKE_COVERAGE

    def get_daily_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceBatch:
        self.calls.append((list(symbols), start, end))
        wanted = [r for r in self.rows
                  if r[0] in symbols and r[0] not in self.failed and start <= r[1] <= end]
        frame = pd.DataFrame(
            [{"symbol": sym, "date": d, "open": None, "high": None, "low": None, "close": c, "volume": None}
             for sym, d, c in wanted], columns=PRICE_COLUMNS)
        return PriceBatch(frame, {s: r for s, r in self.failed.items() if s in symbols})

    def get_company_profiles(self, symbols: Sequence[str]) -> ProfileBatch:
        return ProfileBatch([], {s: "unreachable" for s in symbols})


def fake_sync(engine, provider: FakeProvider, now: datetime = NOW):
    return sync(engine, provider, [date(2022, 12, 9)], now=now)


def test_bad_rows_are_rejected_with_reasons_and_duplicates_keep_the_last(engine) -> None:
    seed_holdings(engine, ["AAA"])
    provider = FakeProvider([
        ("AAA", date(2022, 12, 1), math.nan),
        ("AAA", date(2022, 12, 2), math.inf),
        ("AAA", date(2022, 12, 3), 50.0),       # a Saturday
        ("AAA", date(2022, 12, 5), 0.0),
        ("AAA", date(2022, 12, 6), -3.0),
        ("AAA", date(2022, 12, 7), 10.0),
        ("AAA", date(2022, 12, 8), 12.0),
        ("AAA", date(2022, 12, 7), 11.0),       # duplicate: the last one wins
        ("AAA", date(2022, 12, 9), 13.0),
    ])

    result = fake_sync(engine, provider)

    assert provider.calls == [(["AAA"], date(2022, 12, 1), date(2022, 12, 9))]
    assert stored_prices(engine) == {("AAA", date(2022, 12, 7)): 11.0, ("AAA", date(2022, 12, 8)): 12.0,
                                     ("AAA", date(2022, 12, 9)): 13.0}
    assert result.rows_written == 3 and result.symbols_updated == 1
    reasons = {(r["symbol"], r["date"]): r["reason"] for r in result.rejected_rows}
    assert reasons == {
        ("AAA", "2022-12-01"): "non_finite_close",
        ("AAA", "2022-12-02"): "non_finite_close",
        ("AAA", "2022-12-03"): "not_a_session",
        ("AAA", "2022-12-05"): "non_positive_close",
        ("AAA", "2022-12-06"): "non_positive_close",
        ("AAA", "2022-12-07"): "duplicate_superseded",  # 10.0, overridden by 11.0
    }
    assert result.result()["rejected_count"] == 6
    assert result.failed_symbols == [] and not result.all_failed


def test_a_corrected_price_on_a_later_sync_replaces_the_old_one(engine) -> None:
    seed_holdings(engine, ["AAA"])
    first = {d: 10.0 + i for i, d in enumerate(FAKE_SESSIONS)}
    first[date(2022, 12, 1)] = math.nan     # bad: rejected, so still missing
    first[date(2022, 12, 9)] = -1.0         # bad: rejected, so still missing
    first[date(2022, 12, 6)] = 999.0        # a wrong but valid price: stored
    provider = FakeProvider([("AAA", d, c) for d, c in first.items()])
    fake_sync(engine, provider)
    assert set(stored_prices(engine)) == {("AAA", d) for d in FAKE_SESSIONS[1:-1]}
    assert stored_prices(engine)[("AAA", date(2022, 12, 6))] == 999.0

    corrected = {d: 10.0 + i for i, d in enumerate(FAKE_SESSIONS)}
    provider.rows = [("AAA", d, c) for d, c in corrected.items()]
    later = NOW + timedelta(days=1)
    result = fake_sync(engine, provider, now=later)

    # The missing first and last sessions make the sync fetch the span between them; every row
    # fetched is upserted on (symbol, date), so the bad 999.0 is replaced, not duplicated.
    assert result.rejected_rows == []
    assert stored_prices(engine) == {("AAA", d): c for d, c in corrected.items()}
    assert price_count(engine) == len(FAKE_SESSIONS)
    with Session(engine) as s:
        updated = s.scalar(select(MarketPrice.updated_at).where(
            MarketPrice.symbol == "AAA", MarketPrice.date == date(2022, 12, 6)))
    # SQLite hands back a naive datetime (stored as UTC); PostgreSQL an aware one.
    assert (updated if updated.tzinfo else updated.replace(tzinfo=timezone.utc)) == later


def test_every_symbol_unreachable_is_all_failed(engine) -> None:
    seed_holdings(engine, ["AAA", "BBB"])
    provider = FakeProvider([], failed={"AAA": "unreachable", "BBB": "unreachable"})
    result = fake_sync(engine, provider)
    assert result.all_failed is True
    assert result.failed_symbols == ["AAA", "BBB"]
    assert result.rows_written == 0 and result.symbols_updated == 0
    assert price_count(engine) == 0


def test_unreachable_plus_unknown_is_still_all_failed(engine) -> None:
    seed_holdings(engine, ["AAA", "BBB"])
    provider = FakeProvider([], failed={"AAA": "unreachable", "BBB": "unknown_symbol"})
    assert fake_sync(engine, provider).all_failed is True


def test_one_symbol_unreachable_is_not_all_failed(engine) -> None:
    seed_holdings(engine, ["AAA", "BBB"])
    provider = FakeProvider([("BBB", d, 20.0) for d in FAKE_SESSIONS], failed={"AAA": "unreachable"})
    result = fake_sync(engine, provider)
    assert result.all_failed is False
    assert result.failed_symbols == ["AAA"]
    assert result.rows_written == len(FAKE_SESSIONS)


def test_nothing_held_requests_nothing(engine) -> None:
    provider = FakeProvider([])
    result = fake_sync(engine, provider)
    assert provider.calls == []
    assert result.symbols_requested == 0 and result.all_failed is False


# --- validate_prices on tiny frames (no database) ---------------------------------------------


def _frame(rows: list[tuple[str, date, object]]) -> pd.DataFrame:
    return pd.DataFrame([{"symbol": s, "date": d, "open": None, "high": None, "low": None, "close": c,
                          "volume": None} for s, d, c in rows], columns=PRICE_COLUMNS)


def test_validate_prices_empty_frame() -> None:
    clean, rejected = validate_prices(_frame([]))
    assert clean.empty and rejected == []


def test_validate_prices_one_good_row() -> None:
    clean, rejected = validate_prices(_frame([("A", date(2022, 12, 7), 5.0)]))
    assert list(zip(clean["symbol"], clean["date"], clean["close"])) == [("A", date(2022, 12, 7), 5.0)]
    assert rejected == []


def test_validate_prices_all_nan() -> None:
    clean, rejected = validate_prices(_frame([("A", d, math.nan) for d in FAKE_SESSIONS]))
    assert clean.empty
    assert [r["reason"] for r in rejected] == ["non_finite_close"] * len(FAKE_SESSIONS)


def test_validate_prices_rejects_none_and_text_and_negative_infinity() -> None:
    clean, rejected = validate_prices(_frame([("A", date(2022, 12, 7), None), ("B", date(2022, 12, 7), "x"),
                                              ("C", date(2022, 12, 7), -math.inf)]))
    assert clean.empty
    assert {r["symbol"] for r in rejected} == {"A", "B", "C"}
    assert {r["symbol"]: r["reason"] for r in rejected}["C"] == "non_finite_close"


def test_validate_prices_keeps_the_last_duplicate_per_symbol_only() -> None:
    day = date(2022, 12, 7)
    clean, _ = validate_prices(_frame([("A", day, 1.0), ("B", day, 7.0), ("A", day, 2.0), ("A", day, 3.0)]))
    assert sorted(zip(clean["symbol"], clean["close"])) == [("A", 3.0), ("B", 7.0)]


# --- company profiles -------------------------------------------------------------------------


REQUIRED_PROFILE_KEYS = {"status", "total", "successful", "failed", "duration_seconds"}
ALL_SAMPLE = sorted(SampleProvider().symbols())


def test_profiles_are_stored_and_the_index_is_skipped(engine) -> None:
    with Session(engine) as s, s.begin():
        summary = sync_company_profiles(s, SampleProvider(), ALL_SAMPLE, NOW)
    assert REQUIRED_PROFILE_KEYS <= set(summary)
    assert summary["status"] == "success"
    assert (summary["total"], summary["successful"], summary["failed"]) == (25, 25, 0)
    assert summary["duration_seconds"] >= 0
    with Session(engine) as s:
        rows = {p.symbol: p for p in s.scalars(select(CompanyProfile))}
        assert len(rows) == 25 and "^GSPC" not in rows
        assert {sym for sym, p in rows.items() if p.is_etf} == {"MTUM", "QUAL", "SIZE", "USMV", "VLUE"}
        assert rows["AAPL"].company_name == "Apple Inc." and rows["AAPL"].source == "sample"


def test_fresh_profiles_are_not_fetched_again_within_seven_days(engine) -> None:
    with Session(engine) as s, s.begin():
        sync_company_profiles(s, SampleProvider(), ALL_SAMPLE, NOW)
    with Session(engine) as s, s.begin():
        again = sync_company_profiles(s, SampleProvider(), ALL_SAMPLE, NOW + timedelta(days=6))
    assert REQUIRED_PROFILE_KEYS <= set(again)
    assert (again["total"], again["already_fresh"], again["requested"], again["successful"],
            again["failed"]) == (25, 25, 0, 0, 0)
    assert again["status"] == "success"
    with Session(engine) as s, s.begin():
        stale = sync_company_profiles(s, SampleProvider(), ALL_SAMPLE, NOW + timedelta(days=8))
    assert (stale["total"], stale["requested"], stale["successful"]) == (25, 25, 25)


def test_profiles_without_a_bundled_entry_are_known_absent_not_failed(engine) -> None:
    with Session(engine) as s, s.begin():
        summary = sync_company_profiles(s, SampleProvider(), ["AAPL", "TLT", "^GSPC"], NOW)
    assert summary["status"] == "success"
    assert (summary["total"], summary["successful"], summary["known_absent"], summary["failed"]) == (2, 1, 1, 0)
    assert summary["known_absent_symbols"] == ["TLT"]
    with Session(engine) as s:
        absence = s.get(ProfileAbsence, "TLT")
        assert (absence.source, absence.reason) == ("sample", "no_profile")


def test_profile_provider_failure_does_not_raise(engine) -> None:
    with Session(engine) as s, s.begin():
        summary = sync_company_profiles(s, FakeProvider([]), ["AAA", "BBB"], NOW)
    assert summary["status"] == "failed"
    assert (summary["total"], summary["successful"], summary["failed"]) == (2, 0, 2)
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(CompanyProfile)) == 0


class RecordingProfiles:
    """The sample provider's profiles under `name`, recording every symbol asked; symbols in
    `down` fail `unreachable` (a transient failure)."""

    def __init__(self, name: str = "sample", down: Sequence[str] = ()) -> None:
        self.name, self.down, self.asked = name, set(down), []
        self.sample = SampleProvider()

    def get_company_profiles(self, symbols: Sequence[str]) -> ProfileBatch:
        self.asked.extend(symbols)
        batch = self.sample.get_company_profiles([s for s in symbols if s not in self.down])
        return ProfileBatch(batch.profiles, {**batch.failed, **{s: "unreachable" for s in symbols if s in self.down}})


EQUITIES = [s for s in ALL_SAMPLE if not s.startswith("^")]  # the 25 with bundled profiles
WITH_ABSENT = sorted(EQUITIES + ["TLT", "VUG"])  # TLT and VUG have none: 27 symbols


def profiles_sync(engine, provider, symbols, now) -> dict:
    with Session(engine) as s, s.begin():
        return sync_company_profiles(s, provider, symbols, now)


def counts(summary: dict) -> tuple:
    keys = ("status", "total", "already_fresh", "known_absent", "requested", "successful", "failed")
    return tuple(summary[k] for k in keys)


@pytest.mark.parametrize("first", [WITH_ABSENT, ["TLT", "VUG"]], ids=["full-first", "absent-first"])
def test_a_rerun_reports_profiles_with_the_same_meaning_as_the_first_run(engine, first) -> None:
    """Issue #10 item 9: the first run said `partial, total 27` and a healthy rerun `failed,
    total 2` for the same two symbols without a profile (TLT, VUG). Both are `success` now,
    every symbol is counted once (total = already_fresh + known_absent + successful + failed),
    and the rerun does not ask the provider for TLT and VUG again."""
    provider = RecordingProfiles()
    one = profiles_sync(engine, provider, first, NOW)
    provider.asked.clear()
    two = profiles_sync(engine, provider, WITH_ABSENT, NOW + timedelta(days=1))
    if first is WITH_ABSENT:
        assert counts(one) == ("success", 27, 0, 2, 27, 25, 0)
        assert counts(two) == ("success", 27, 25, 2, 0, 0, 0)
    else:
        assert counts(one) == ("success", 2, 0, 2, 2, 0, 0)
        assert counts(two) == ("success", 27, 0, 2, 25, 25, 0)
    assert "TLT" not in provider.asked and "VUG" not in provider.asked
    assert one["known_absent_symbols"] == two["known_absent_symbols"] == ["TLT", "VUG"]
    for summary in (one, two):
        assert summary["total"] == (summary["already_fresh"] + summary["known_absent"] + summary["successful"]
                                    + summary["failed"])


def test_known_absent_is_asked_again_after_30_days_or_by_another_provider(engine) -> None:
    profiles_sync(engine, RecordingProfiles(), ["AAPL", "TLT"], NOW)
    later = RecordingProfiles()
    profiles_sync(engine, later, ["AAPL", "TLT"], NOW + timedelta(days=29))
    assert "TLT" not in later.asked
    other = RecordingProfiles(name="other")
    summary = profiles_sync(engine, other, ["AAPL", "TLT"], NOW + timedelta(days=1))
    assert "TLT" in other.asked and summary["known_absent"] == 1
    with Session(engine) as s:  # the absence is now the other provider's
        assert s.get(ProfileAbsence, "TLT").source == "other"
    much_later = RecordingProfiles(name="other")
    profiles_sync(engine, much_later, ["TLT"], NOW + timedelta(days=1 + 30))
    assert much_later.asked == ["TLT"]


def test_a_profile_found_later_replaces_the_absence(engine) -> None:
    with Session(engine) as s, s.begin():
        s.add(ProfileAbsence(symbol="MSFT", source="sample", reason="unknown_symbol",
                             checked_at=NOW - timedelta(days=31)))
    summary = profiles_sync(engine, RecordingProfiles(), ["MSFT"], NOW)
    assert counts(summary) == ("success", 1, 0, 0, 1, 1, 0)
    with Session(engine) as s:
        assert s.get(ProfileAbsence, "MSFT") is None
        assert s.get(CompanyProfile, "MSFT").company_name == "Microsoft Corporation"


def test_transient_profile_failures_are_partial_or_failed_and_asked_again(engine) -> None:
    partial = profiles_sync(engine, RecordingProfiles(down=["AAPL"]), ["AAPL", "MSFT", "TLT"], NOW)
    assert counts(partial) == ("partial", 3, 0, 1, 3, 1, 1)
    assert partial["failures"] == {"AAPL": "unreachable"}
    again = RecordingProfiles(down=["AAPL"])
    failed = profiles_sync(engine, again, ["AAPL", "MSFT", "TLT"], NOW + timedelta(days=1))
    assert again.asked == ["AAPL"]  # a transient failure is not remembered
    assert counts(failed) == ("failed", 3, 1, 1, 1, 0, 1)


# --- deadline and daily quota (network providers) ---------------------------------------------


class Clock:
    """A monotonic clock that moves only when the rate limiter sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FmpServer:
    """An httpx MockTransport handler in FMP's `historical-price-full` shape: a bar (close 10)
    for every NYSE session in the requested window; every request is recorded with its time."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock, self.requests = clock, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        symbol = request.url.path.rsplit("/", 1)[-1]
        self.requests.append((symbol, self.clock() if self.clock else None))
        lo, hi = (date.fromisoformat(request.url.params[k]) for k in ("from", "to"))
        bars = [{"date": d.isoformat(), "open": 10.0, "high": 10.0, "low": 10.0, "close": 10.0,
                 "adjClose": 10.0, "volume": 100} for d in calendar.trading_days(lo, hi)]
        return httpx.Response(200, json={"symbol": symbol, "historical": bars[::-1]})


def fmp(server: FmpServer, limiter: RateLimiter) -> FmpProvider:
    return FmpProvider("test-key", RetryPolicy(sleep=lambda s: None), limiter, transport=httpx.MockTransport(server))


def test_market_data_sync_requests_nothing_past_the_deadline(engine) -> None:
    """Polygon's 5 requests a minute space requests 12 s apart: with the deadline 30 s away the
    requests go at 0, 12 and 24 s; the fourth would go at 36 s, so it and the fifth are
    reported `deadline`, unasked."""
    seed_holdings(engine, ["AAA", "BBB", "CCC", "DDD", "EEE"])
    clock = Clock()
    server = FmpServer(clock)
    with fmp(server, RateLimiter(5, clock=clock, sleep=clock.sleep)) as provider:
        with Session(engine) as s, s.begin():
            result = sync_market_data(s, provider, [AS_OF], None, NOW, deadline=30.0, clock=clock)
    assert server.requests == [("AAA", 0.0), ("BBB", 12.0), ("CCC", 24.0)]
    assert result.failures == {"DDD": "deadline", "EEE": "deadline"}
    assert result.symbols_updated == 3
    assert {sym for sym, _ in stored_prices(engine)} == {"AAA", "BBB", "CCC"}


def test_daily_quota_holds_across_runs_of_the_same_day(engine) -> None:
    """FMP_REQUESTS_PER_DAY=4: a first run uses 3 requests; a second run the same UTC day (a new
    process: a new provider and quota) may make only 1 more, the rest are `quota_exhausted`; the
    next day the remaining symbols are fetched."""
    day = [date(2022, 12, 28)]
    pid = seed_holdings(engine, ["AAA", "BBB", "CCC"])

    def run() -> tuple[FmpServer, object]:
        server = FmpServer()
        limiter = RateLimiter(10_000, sleep=lambda s: None, quota=DailyQuota(4, today=lambda: day[0]))
        with fmp(server, limiter) as provider, Session(engine) as s, s.begin():
            return server, sync_market_data(s, provider, [AS_OF], None, NOW)

    first, _ = run()
    assert len(first.requests) == 3
    with Session(engine) as s, s.begin():
        for symbol in ("DDD", "EEE", "FFF"):
            add_position(s, pid, symbol)
    second, result = run()
    assert [sym for sym, _ in second.requests] == ["DDD"]
    assert result.failures == {"EEE": "quota_exhausted", "FFF": "quota_exhausted"}
    with Session(engine) as s:
        stored = s.get(ProviderRequestCount, "fmp")
        assert (stored.day, stored.requests) == (date(2022, 12, 28), 4)
    day[0] = date(2022, 12, 29)
    third, result = run()
    assert [sym for sym, _ in third.requests] == ["EEE", "FFF"] and result.failures == {}
    with Session(engine) as s:
        stored = s.get(ProviderRequestCount, "fmp")
        assert (stored.day, stored.requests) == (date(2022, 12, 29), 2)


def test_the_run_stops_syncing_at_half_its_budget(engine) -> None:
    """The runner gives the sync SYNC_SHARE_OF_BUDGET (½) of BATCH_TIMEOUT_SECONDS on its own
    clock: with 60 s, requests stop at 30 s. At 5 a minute the first three of the eight factor
    proxies (IWM, MTUM, QUAL, alphabetically) are fetched at 0, 12 and 24 s; the other five are
    reported `deadline`, and the profiles, asked after the deadline, are not requested at all."""
    from batch.runner import Runner, RunRequest
    from batch.settings import Settings

    clock = Clock()
    server = FmpServer(clock)
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), embedded_database=None,
                        market_data_provider="fmp", batch_timeout_seconds=60.0)
    with fmp(server, RateLimiter(5, clock=clock, sleep=clock.sleep)) as provider:
        summary = Runner(settings, engine, provider, monotonic=clock, utcnow=lambda: NOW).run(
            RunRequest(as_of_dates=[AS_OF], requested_start=AS_OF, requested_end=AS_OF))
    assert server.requests == [("IWM", 0.0), ("MTUM", 12.0), ("QUAL", 24.0)]
    assert summary["market_data"]["failed_symbols"] == ["SPY", "TLT", "USMV", "VTV", "VUG"]
    assert summary["company_profiles"]["status"] == "failed"
    with Session(engine) as s:
        jobs = {j.job: j.result for j in s.scalars(select(BatchJobResult).where(BatchJobResult.portfolio_id.is_(None)))}
    assert set(jobs["market_data"]["failures"].values()) == {"deadline"}
    assert set(jobs["company_profiles"]["failures"].values()) == {"deadline"}
