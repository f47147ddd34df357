"""The offline `sample` provider and its bundled data (SPEC §5.1).

Expected values are read straight from the bundled files with the standard library (csv, gzip,
json, hashlib), not through the provider's pandas code path, or come from published facts.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
from datetime import date
from importlib import resources

import pytest

from batch import calendar
from batch.providers import PRICE_COLUMNS, SampleProvider
from batch.providers.sample import _bundled_closes

FIRST, LAST = date(2014, 1, 2), date(2022, 12, 28)
STOCKS = ["AAPL", "AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO", "LLY", "MRK", "MSFT",
          "PEP", "PFE", "PG", "RRC", "UNH", "WMT", "XOM"]
ETFS = ["MTUM", "QUAL", "SIZE", "USMV", "VLUE"]
INDEX = "^GSPC"
ALL_SYMBOLS = sorted(STOCKS + ETFS + [INDEX])


def _data_file(name: str):
    return resources.files("batch") / "data" / name


def _raw_csv() -> tuple[list[str], list[dict[str, str]]]:
    """The bundled CSV parsed with the csv module: (header, rows as dicts of strings)."""
    with _data_file("sample_prices.csv.gz").open("rb") as raw:
        text = gzip.decompress(raw.read()).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module")
def raw_csv() -> tuple[list[str], list[dict[str, str]]]:
    return _raw_csv()


@pytest.fixture(scope="module")
def provider() -> SampleProvider:
    return SampleProvider()


# --- the bundled file -------------------------------------------------------------------------


def test_bundle_has_exactly_the_26_documented_symbols(raw_csv, provider) -> None:
    header, _ = raw_csv
    assert header[0] == "date"
    assert sorted(header[1:]) == ALL_SYMBOLS
    assert len(header[1:]) == 26
    assert sorted(provider.symbols()) == ALL_SYMBOLS


def test_bundle_covers_every_nyse_session_in_range_and_nothing_else(raw_csv) -> None:
    _, rows = raw_csv
    dates = [date.fromisoformat(r["date"]) for r in rows]
    assert dates == sorted(dates) and len(set(dates)) == len(dates)
    assert dates == calendar.trading_days(FIRST, LAST)


def test_2019_has_the_published_252_sessions(raw_csv) -> None:
    """Independent of the calendar module: NYSE had 252 trading sessions in 2019."""
    _, rows = raw_csv
    in_2019 = [r for r in rows if r["date"].startswith("2019-")]
    assert len(in_2019) == 252


@pytest.mark.parametrize("closed", [
    date(2018, 12, 5),   # national day of mourning, President George H. W. Bush
    date(2019, 7, 4),    # Independence Day
    date(2022, 6, 20),   # Juneteenth (observed), first NYSE holiday in 2022
    date(2022, 12, 26),  # Christmas (observed)
    date(2020, 4, 10),   # Good Friday
])
def test_known_market_closures_are_absent(raw_csv, closed: date) -> None:
    _, rows = raw_csv
    assert closed.isoformat() not in {r["date"] for r in rows}


def test_every_cell_is_a_positive_finite_number(raw_csv) -> None:
    _, rows = raw_csv
    for row in rows:
        for symbol in ALL_SYMBOLS:
            cell = row[symbol]
            assert cell.strip() != "", (row["date"], symbol)
            value = float(cell)
            assert math.isfinite(value) and value > 0, (row["date"], symbol, cell)


def test_loaded_frame_has_no_nan_and_matches_the_session_list() -> None:
    frame = _bundled_closes()
    assert list(frame.index) == calendar.trading_days(FIRST, LAST)
    assert sorted(frame.columns) == ALL_SYMBOLS
    assert not frame.isna().any().any()
    assert (frame > 0).all().all()


def test_provenance_sha256_matches_the_bundled_file() -> None:
    provenance = json.loads(_data_file("sample_prices.provenance.json").read_text())
    digest = hashlib.sha256(_data_file(provenance["output"]).read_bytes()).hexdigest()
    assert provenance["output"] == "sample_prices.csv.gz"
    assert digest == provenance["sha256"]


def test_provenance_describes_the_bundle(raw_csv) -> None:
    provenance = json.loads(_data_file("sample_prices.provenance.json").read_text())
    _, rows = raw_csv
    assert provenance["start_date"] == FIRST.isoformat() and provenance["end_date"] == LAST.isoformat()
    assert sorted(provenance["symbols"]) == ALL_SYMBOLS
    assert provenance["row_count"] == len(rows)
    assert provenance["source"]["license"] == "BSD-3-Clause"


# --- the provider -----------------------------------------------------------------------------


def test_coverage_is_the_bundled_range(provider) -> None:
    assert provider.coverage() == (FIRST, LAST)
    assert provider.name == "sample"


@pytest.mark.parametrize("symbol, day", [("AAPL", LAST), ("^GSPC", LAST), ("MTUM", FIRST),
                                         ("XOM", date(2020, 3, 23))])
def test_spot_values_equal_the_file(raw_csv, provider, symbol: str, day: date) -> None:
    _, rows = raw_csv
    expected = float(next(r for r in rows if r["date"] == day.isoformat())[symbol])
    batch = provider.get_daily_prices([symbol], day, day)
    assert batch.failed == {}
    assert len(batch.rows) == 1
    row = batch.rows.iloc[0]
    assert (row["symbol"], row["date"]) == (symbol, day)
    assert row["close"] == pytest.approx(expected, abs=1e-9)


def test_aapl_close_on_the_last_day_is_the_files_value(raw_csv, provider) -> None:
    _, rows = raw_csv
    last = rows[-1]
    assert last["date"] == "2022-12-28"
    close = provider.get_daily_prices(["AAPL"], LAST, LAST).rows["close"].iloc[0]
    assert close == float(last["AAPL"]) == 125.674


def test_get_daily_prices_returns_long_rows_only_inside_the_window(provider) -> None:
    start, end = date(2022, 12, 17), date(2022, 12, 28)  # a Saturday .. the last day
    batch = provider.get_daily_prices(["AAPL", "MSFT", "^GSPC"], start, end)
    rows = batch.rows
    assert list(rows.columns) == PRICE_COLUMNS
    sessions = calendar.trading_days(start, end)
    assert len(rows) == 3 * len(sessions)
    assert set(rows["date"]) == set(sessions)
    assert all(type(d) is date for d in rows["date"])
    assert all(start <= d <= end for d in rows["date"])
    assert not rows.duplicated(["symbol", "date"]).any()
    assert set(rows["symbol"]) == {"AAPL", "MSFT", "^GSPC"}
    # Only adjusted closes exist in the source.
    assert rows[["open", "high", "low", "volume"]].isna().all().all()
    assert batch.failed == {}


def test_unknown_symbols_are_reported_failed_not_raised(provider) -> None:
    batch = provider.get_daily_prices(["AAPL", "NOPE", "TLT"], date(2022, 12, 27), date(2022, 12, 28))
    assert batch.failed == {"NOPE": "unknown_symbol", "TLT": "unknown_symbol"}
    assert set(batch.rows["symbol"]) == {"AAPL"} and len(batch.rows) == 2


def test_only_unknown_symbols_gives_empty_rows(provider) -> None:
    batch = provider.get_daily_prices(["NOPE"], date(2022, 12, 27), date(2022, 12, 28))
    assert batch.rows.empty and list(batch.rows.columns) == PRICE_COLUMNS
    assert batch.failed == {"NOPE": "unknown_symbol"}


def test_window_outside_coverage_is_empty(provider) -> None:
    batch = provider.get_daily_prices(["AAPL"], date(2023, 1, 3), date(2023, 1, 31))
    assert batch.rows.empty and batch.failed == {}


def test_weekend_only_window_is_empty(provider) -> None:
    batch = provider.get_daily_prices(["AAPL"], date(2022, 12, 24), date(2022, 12, 25))
    assert batch.rows.empty


def test_a_symbol_requested_twice_is_served_once(provider) -> None:
    batch = provider.get_daily_prices(["AAPL", "AAPL"], date(2022, 12, 27), date(2022, 12, 28))
    assert len(batch.rows) == 2 and set(batch.rows["symbol"]) == {"AAPL"}


# --- company profiles -------------------------------------------------------------------------


def test_bundled_profiles_cover_every_symbol_but_the_index(provider) -> None:
    raw = json.loads(_data_file("company_profiles.json").read_text())
    assert len(raw) == 25
    assert sorted(p["symbol"] for p in raw) == sorted(STOCKS + ETFS)
    batch = provider.get_company_profiles(ALL_SYMBOLS)
    assert len(batch.profiles) == 25
    assert batch.failed == {INDEX: "no_profile"}
    assert INDEX not in {p["symbol"] for p in batch.profiles}


def test_etfs_are_flagged_and_stocks_are_not(provider) -> None:
    profiles = {p["symbol"]: p for p in provider.get_company_profiles(ALL_SYMBOLS).profiles}
    assert {s for s, p in profiles.items() if p["is_etf"]} == set(ETFS)
    for symbol in STOCKS:
        assert profiles[symbol]["is_etf"] is False
        assert profiles[symbol]["company_name"] and profiles[symbol]["sector"]
    assert profiles["AAPL"]["company_name"] == "Apple Inc."


def test_profiles_are_copies_not_the_cached_dicts(provider) -> None:
    first = provider.get_company_profiles(["AAPL"]).profiles[0]
    first["company_name"] = "changed"
    assert provider.get_company_profiles(["AAPL"]).profiles[0]["company_name"] == "Apple Inc."
