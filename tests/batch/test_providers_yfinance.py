"""The yfinance provider (SPEC §5.1, §5.3), without network.

Parsing, symbol mapping and error classification run on a fake client whose `Ticker(symbol)`
returns the shapes yfinance 1.7.0 returns (read from its source; fixtures in
tests/fixtures/yfinance, see the README there). The real package is exercised offline: every
host fails to resolve, which must surface as `unreachable`, quickly, and fail the market-data
step end to end while the engines run on stored prices.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from batch.errors import ConfigError
from batch.fetching import CircuitBreaker, RetryPolicy
from batch.providers import PRICE_COLUMNS
from batch.providers.yahoo import YFinanceProvider, yahoo_symbol
from batch.sync import validate_prices
from models import BatchJobResult, PortfolioSnapshot

yf = pytest.importorskip("yfinance")
yf_exc = pytest.importorskip("yfinance.exceptions")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yfinance"
NEW_YORK = "America/New_York"
D = date


# -- fixtures: frames shaped exactly like Ticker.history() ---------------------------------------

def yf_index(days: list[date]) -> pd.DatetimeIndex:
    """How yfinance 1.7.0 builds a daily index (scrapers/history.py, 'Prepare for combine')."""
    index = pd.to_datetime(days).tz_localize(NEW_YORK, ambiguous=True, nonexistent="shift_forward")
    index.name = "Date"
    return index


def history_frame(name: str) -> pd.DataFrame:
    """A fixture CSV as the DataFrame `Ticker(name).history(..., actions=False)` returns."""
    raw = pd.read_csv(FIXTURES / f"{name}.csv", dtype={"Volume": "int64"})
    stamps = pd.to_datetime(raw.pop("Date"), utc=True).dt.tz_convert(NEW_YORK)
    frame = raw.astype({c: "float64" for c in ("Open", "High", "Low", "Close")})
    frame.index = yf_index([ts.date() for ts in stamps])
    if len(frame):  # the fixture's own offsets must agree with yfinance's localisation
        assert list(frame.index) == list(stamps)
    return frame[["Open", "High", "Low", "Close", "Volume"]]


def info_dict(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "info" / f"{name}.json").read_text())


class FakeTicker:
    def __init__(self, client: FakeClient, symbol: str) -> None:
        self.client, self.symbol = client, symbol

    def _next(self, table: dict[str, Any]) -> Any:
        outcome = table[self.symbol]
        if isinstance(outcome, list):  # a script: one outcome per call
            outcome = outcome.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def history(self, **kwargs: Any) -> pd.DataFrame:
        self.client.calls.append(("history", self.symbol, kwargs))
        debug = getattr(getattr(self.client, "config", None), "debug", None)
        if debug is not None:
            self.client.hide_exceptions_seen.append(debug.hide_exceptions)
        return self._next(self.client.histories)

    @property
    def info(self) -> dict[str, Any]:
        self.client.calls.append(("info", self.symbol, {}))
        return self._next(self.client.infos)


class FakeClient:
    """The `yfinance` module surface the provider uses: `Ticker(symbol)`."""

    def __init__(self, histories: dict[str, Any] | None = None, infos: dict[str, Any] | None = None) -> None:
        self.histories, self.infos = histories or {}, infos or {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.hide_exceptions_seen: list[bool] = []

    def Ticker(self, symbol: str) -> FakeTicker:
        return FakeTicker(self, symbol)


class CountingLimiter:
    def __init__(self) -> None:
        self.acquired = 0

    def acquire(self) -> None:
        self.acquired += 1


def make(client: FakeClient, attempts: int = 3) -> tuple[YFinanceProvider, list[float], CountingLimiter]:
    sleeps: list[float] = []
    limiter = CountingLimiter()
    provider = YFinanceProvider(RetryPolicy(attempts=attempts, initial_wait=0.5, max_wait=2.0,
                                            sleep=sleeps.append), limiter, client)
    return provider, sleeps, limiter


def as_tuples(rows: pd.DataFrame) -> list[tuple]:
    return [tuple(None if isinstance(v, float) and math.isnan(v) else v for v in r)
            for r in rows[PRICE_COLUMNS].itertuples(index=False)]


def curl_http_error(status: int) -> Exception:
    from curl_cffi.requests.exceptions import HTTPError

    return HTTPError(f"HTTP Error {status}", response=SimpleNamespace(status_code=status))


# -- the fixtures themselves ---------------------------------------------------------------------

def test_fixture_frames_have_the_shape_yfinance_returns():
    frame = history_frame("AAPL")
    assert list(frame.columns) == ["Open", "High", "Low", "Close", "Volume"]
    assert frame.index.name == "Date" and str(frame.index.tz) == NEW_YORK
    assert frame.index.dtype == yf_index([D(2022, 12, 19)]).dtype
    assert frame["Volume"].dtype == np.int64 and frame["Close"].dtype == np.float64
    assert frame.index[0] == pd.Timestamp("2022-12-19 00:00", tz=NEW_YORK)
    assert history_frame("EMPTY").empty


# -- prices --------------------------------------------------------------------------------------

def test_history_is_parsed_into_price_rows():
    client = FakeClient({"AAPL": history_frame("AAPL")})
    provider, sleeps, limiter = make(client)
    batch = provider.get_daily_prices(["AAPL"], D(2022, 12, 19), D(2022, 12, 28))
    assert batch.failed == {}
    assert list(batch.rows.columns) == PRICE_COLUMNS
    assert as_tuples(batch.rows) == [  # the fixture's values, typed as PriceBatch promises
        ("AAPL", D(2022, 12, 19), 135.11, 135.2, 131.32, 132.37, 79592600),
        ("AAPL", D(2022, 12, 20), 131.39, 133.25, 129.89, 132.3, 77432800),
        ("AAPL", D(2022, 12, 22), 134.35, 134.56, 130.3, 132.23, 77852100),
        ("AAPL", D(2022, 12, 23), 130.92, 132.42, 129.64, 131.86, 63814900),
        ("AAPL", D(2022, 12, 27), 131.38, 131.41, 128.72, 130.03, 69007800),
        ("AAPL", D(2022, 12, 28), 129.67, 131.03, 125.87, 126.04, 85438400),
    ]
    assert all(type(d) is date for d in batch.rows["date"])
    assert limiter.acquired == 1 and sleeps == []


def test_history_is_requested_adjusted_without_actions_and_end_inclusive():
    client = FakeClient({"AAPL": history_frame("AAPL")})
    provider, _, _ = make(client)
    provider.get_daily_prices(["AAPL"], D(2022, 12, 19), D(2022, 12, 28))
    [(what, symbol, kwargs)] = client.calls
    assert (what, symbol) == ("history", "AAPL")
    # Yahoo's `end` is exclusive: the day after our inclusive end.
    assert kwargs["start"] == D(2022, 12, 19) and kwargs["end"] == D(2022, 12, 29)
    assert kwargs["auto_adjust"] is True and kwargs["actions"] is False
    assert kwargs["timeout"] > 0
    assert "raise_errors" not in kwargs  # deprecated in yfinance 1.7.0 (DeprecationWarning)


def test_the_exclusive_end_crosses_month_and_year_ends():
    client = FakeClient({"AAPL": history_frame("AAPL")})
    provider, _, _ = make(client)
    provider.get_daily_prices(["AAPL"], D(2022, 12, 1), D(2022, 12, 31))
    assert client.calls[0][2]["end"] == D(2022, 12, 31) + timedelta(days=1) == D(2023, 1, 1)


def test_midnight_new_york_is_that_date_in_any_index_timezone():
    frame = history_frame("AAPL")
    as_utc = frame.copy()
    as_utc.index = as_utc.index.tz_convert("UTC")  # 2022-12-19 05:00 UTC
    for variant in (frame, as_utc):
        provider, _, _ = make(FakeClient({"AAPL": variant}))
        rows = provider.get_daily_prices(["AAPL"], D(2022, 12, 19), D(2022, 12, 28)).rows
        assert rows["date"].iloc[0] == D(2022, 12, 19)
        assert list(rows["date"]) == [ts.date() for ts in frame.index]


def test_dates_are_right_across_the_daylight_saving_change():
    provider, _, _ = make(FakeClient({"XOM": history_frame("XOM")}))
    rows = provider.get_daily_prices(["XOM"], D(2022, 11, 1), D(2022, 11, 30)).rows
    assert list(rows["date"]) == [D(2022, 11, 3), D(2022, 11, 4), D(2022, 11, 7), D(2022, 11, 8)]
    assert list(rows["close"]) == [112.5, 113.25, 114.0, 112.0]


def test_a_missing_session_stays_missing():
    provider, _, _ = make(FakeClient({"AAPL": history_frame("AAPL")}))
    rows = provider.get_daily_prices(["AAPL"], D(2022, 12, 19), D(2022, 12, 28)).rows
    assert D(2022, 12, 21) not in set(rows["date"])  # a session, absent from the fixture
    assert len(rows) == 6 and rows["close"].notna().all()


def test_rows_outside_the_requested_range_are_dropped():
    provider, _, _ = make(FakeClient({"AAPL": history_frame("AAPL")}))
    rows = provider.get_daily_prices(["AAPL"], D(2022, 12, 20), D(2022, 12, 23)).rows
    assert list(rows["date"]) == [D(2022, 12, 20), D(2022, 12, 22), D(2022, 12, 23)]


def test_a_nan_close_is_passed_on_for_the_sync_to_reject():
    frame = history_frame("AAPL")
    frame.loc[frame.index[1], "Close"] = np.nan
    provider, _, _ = make(FakeClient({"AAPL": frame}))
    rows = provider.get_daily_prices(["AAPL"], D(2022, 12, 19), D(2022, 12, 28)).rows
    clean, rejected = validate_prices(rows)
    assert [(r["date"], r["reason"]) for r in rejected] == [("2022-12-20", "non_finite_close")]
    assert len(clean) == 5


def test_share_class_symbols_are_mapped_to_yahoo_and_back():
    assert yahoo_symbol("BRK.B") == "BRK-B" and yahoo_symbol("AAPL") == "AAPL"
    assert yahoo_symbol("^GSPC") == "^GSPC"
    client = FakeClient({"BRK-B": history_frame("BRK-B"), "AAPL": history_frame("AAPL")})
    provider, _, _ = make(client)
    batch = provider.get_daily_prices(["BRK.B", "AAPL"], D(2022, 12, 22), D(2022, 12, 27))
    assert [symbol for _, symbol, _ in client.calls] == ["BRK-B", "AAPL"]
    assert batch.failed == {}
    brk = batch.rows[batch.rows["symbol"] == "BRK.B"]
    assert list(brk["date"]) == [D(2022, 12, 22), D(2022, 12, 23), D(2022, 12, 27)]
    assert list(brk["close"]) == [303.75, 306.5, 308.25]
    assert "BRK-B" not in set(batch.rows["symbol"])


def test_failures_are_reported_under_our_symbol():
    client = FakeClient({"BRK-B": yf_exc.YFTzMissingError("BRK-B")})
    provider, _, _ = make(client)
    assert provider.get_daily_prices(["BRK.B"], D(2022, 12, 22), D(2022, 12, 27)).failed == {
        "BRK.B": "unknown_symbol"}


def test_an_empty_history_is_no_data():
    provider, sleeps, _ = make(FakeClient({"AAPL": history_frame("EMPTY"),
                                           "XOM": history_frame("XOM")}))
    batch = provider.get_daily_prices(["AAPL", "XOM"], D(2022, 11, 1), D(2022, 11, 30))
    assert batch.failed == {"AAPL": "no_data"}
    assert set(batch.rows["symbol"]) == {"XOM"} and sleeps == []


def test_nothing_in_range_is_no_data_and_an_all_failed_batch_has_the_columns():
    provider, _, _ = make(FakeClient({"AAPL": history_frame("AAPL")}))
    batch = provider.get_daily_prices(["AAPL"], D(2023, 1, 3), D(2023, 1, 6))
    assert batch.failed == {"AAPL": "no_data"}
    assert batch.rows.empty and list(batch.rows.columns) == PRICE_COLUMNS


@pytest.mark.parametrize(("error", "reason"), [
    (yf_exc.YFTzMissingError("ZZZZ"), "unknown_symbol"),
    (yf_exc.YFTickerMissingError("ZZZZ", "no data"), "unknown_symbol"),
    (yf_exc.YFPricesMissingError("ZZZZ", "(1d 2022-12-01 -> 2022-12-29)"), "no_data"),
    (curl_http_error(404), "unknown_symbol"),
    (curl_http_error(400), "rejected"),
    (ValueError("something yfinance did not expect"), "rejected"),
    (KeyError("chart"), "rejected"),
])
def test_permanent_errors_are_classified_and_not_retried(error, reason):
    client = FakeClient({"ZZZZ": error})
    provider, sleeps, limiter = make(client)
    assert provider.get_daily_prices(["ZZZZ"], D(2022, 12, 1), D(2022, 12, 28)).failed == {"ZZZZ": reason}
    assert len(client.calls) == 1 and limiter.acquired == 1 and sleeps == []


def test_an_unexpected_error_is_logged_with_its_type():
    provider, _, _ = make(FakeClient({"ZZZZ": KeyError("chart")}))
    with capture_logs() as logs:
        provider.get_daily_prices(["ZZZZ"], D(2022, 12, 1), D(2022, 12, 28))
    [event] = [e for e in logs if e["event"] == "yfinance_unexpected_error"]
    assert event["error_type"] == "builtins.KeyError" and event["symbol"] == "ZZZZ"


def test_a_malformed_history_is_reported():
    provider, _, _ = make(FakeClient({"A": None, "B": pd.DataFrame({"Close": [1.0]})}))
    failed = provider.get_daily_prices(["A", "B"], D(2022, 12, 1), D(2022, 12, 28)).failed
    assert failed == {"A": "malformed_response", "B": "malformed_response"}


def test_classification_is_by_type_never_by_message():
    client = FakeClient({"A": ValueError("Connection timed out (HTTP 503)"),
                         "B": ConnectionError("404 Not Found: no such symbol")})
    provider, _, _ = make(client, attempts=1)
    failed = provider.get_daily_prices(["A", "B"], D(2022, 12, 1), D(2022, 12, 28)).failed
    assert failed == {"A": "rejected", "B": "unreachable"}


def _transient_errors() -> list[Any]:
    from curl_cffi.requests import exceptions as curl
    from requests import exceptions as req

    return [
        pytest.param(lambda: ConnectionError("reset"), id="builtin-ConnectionError"),
        pytest.param(lambda: TimeoutError("slow"), id="builtin-TimeoutError"),
        pytest.param(lambda: curl.ConnectionError("x"), id="curl-ConnectionError"),
        pytest.param(lambda: curl.DNSError("x"), id="curl-DNSError"),
        pytest.param(lambda: curl.Timeout("x"), id="curl-Timeout"),
        pytest.param(lambda: req.ConnectionError("x"), id="requests-ConnectionError"),
        pytest.param(lambda: req.ReadTimeout("x"), id="requests-ReadTimeout"),
        pytest.param(lambda: yf_exc.YFRateLimitError(), id="YFRateLimitError"),
        pytest.param(lambda: curl_http_error(429), id="HTTP-429"),
        pytest.param(lambda: curl_http_error(503), id="HTTP-503"),
    ]


@pytest.mark.parametrize("make_error", _transient_errors())
def test_transient_errors_are_retried_then_succeed(make_error):
    client = FakeClient({"AAPL": [make_error(), make_error(), history_frame("AAPL")]})
    provider, sleeps, limiter = make(client, attempts=3)
    batch = provider.get_daily_prices(["AAPL"], D(2022, 12, 19), D(2022, 12, 28))
    assert batch.failed == {} and len(batch.rows) == 6
    assert len(sleeps) == 2  # two retries, waited through the injected sleep
    assert all(0 < s <= 2.0 for s in sleeps)
    assert len(client.calls) == 3 and limiter.acquired == 3  # the rate limit covers every try


def test_a_transient_error_that_persists_is_unreachable_after_the_attempts():
    client = FakeClient({"AAPL": [ConnectionError("down")] * 5})
    provider, sleeps, _ = make(client, attempts=3)
    assert provider.get_daily_prices(["AAPL"], D(2022, 12, 1), D(2022, 12, 28)).failed == {
        "AAPL": "unreachable"}
    assert len(client.calls) == 3 and len(sleeps) == 2


def test_the_circuit_breaker_bounds_calls_when_every_call_fails_to_connect():
    symbols = [f"S{i:02d}" for i in range(20)]
    from curl_cffi.requests.exceptions import DNSError

    client = FakeClient({s: [DNSError("no resolve")] * 3 for s in symbols},
                        {s: DNSError("no resolve") for s in symbols})
    provider, sleeps, _ = make(client, attempts=3)
    batch = provider.get_daily_prices(symbols, D(2022, 12, 1), D(2022, 12, 28))
    assert batch.failed == {s: "unreachable" for s in symbols}
    threshold = CircuitBreaker().threshold
    assert len(client.calls) == threshold * 3  # threshold symbols × attempts, not 20 × 3
    assert len(sleeps) == threshold * 2
    # The breaker belongs to the provider (one per run): profiles are not tried again.
    profiles = provider.get_company_profiles(symbols)
    assert profiles.failed == {s: "unreachable" for s in symbols} and len(client.calls) == threshold * 3


def test_yfinance_is_made_to_raise_during_a_call_and_restored_after():
    client = FakeClient({"AAPL": history_frame("AAPL")})
    client.config = SimpleNamespace(debug=SimpleNamespace(hide_exceptions=True))
    provider, _, _ = make(client)
    provider.get_daily_prices(["AAPL"], D(2022, 12, 19), D(2022, 12, 28))
    assert client.hide_exceptions_seen == [False]
    assert client.config.debug.hide_exceptions is True


def test_concurrent_calls_all_see_raising_and_the_setting_is_restored_once():
    """Profiles are fetched from a thread pool: overlapping calls must not serialise on the
    setting (a lock held across the call would deadlock the barrier) nor restore it early."""
    barrier = threading.Barrier(2, timeout=10)

    class OverlappingClient(FakeClient):
        def Ticker(self, symbol: str) -> FakeTicker:
            ticker = super().Ticker(symbol)
            plain = ticker.history

            def history(**kwargs: Any) -> pd.DataFrame:
                barrier.wait()  # both calls are in flight here
                frame = plain(**kwargs)
                barrier.wait()  # and neither has left yet
                return frame
            ticker.history = history
            return ticker

    client = OverlappingClient({"AAPL": history_frame("AAPL"), "XOM": history_frame("XOM")})
    client.config = SimpleNamespace(debug=SimpleNamespace(hide_exceptions=True))
    provider, _, _ = make(client)
    results: dict[str, Any] = {}
    threads = [threading.Thread(target=lambda s=s: results.__setitem__(
        s, provider.get_daily_prices([s], D(2022, 11, 1), D(2022, 12, 31)))) for s in ("AAPL", "XOM")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert {s: r.failed for s, r in results.items()} == {"AAPL": {}, "XOM": {}}
    assert client.hide_exceptions_seen == [False, False]
    assert client.config.debug.hide_exceptions is True


# -- profiles ------------------------------------------------------------------------------------

def test_profiles_from_info():
    client = FakeClient(infos={"AAPL": info_dict("AAPL"), "SPY": info_dict("SPY"),
                               "BRK-B": info_dict("BRK-B"), "VFIAX": info_dict("VFIAX"),
                               "ZZZZ": info_dict("UNKNOWN")})
    provider, sleeps, _ = make(client)
    batch = provider.get_company_profiles(["AAPL", "SPY", "BRK.B", "VFIAX", "ZZZZ"])
    assert batch.failed == {"ZZZZ": "unknown_symbol"}
    by_symbol = {p["symbol"]: p for p in batch.profiles}
    assert by_symbol["AAPL"] == {
        "symbol": "AAPL", "company_name": "Apple Inc.", "sector": "Technology",
        "industry": "Consumer Electronics", "exchange": "NMS", "country": "United States",
        "market_cap": 2003000000000, "is_etf": False}
    assert by_symbol["SPY"] == {
        "symbol": "SPY", "company_name": "SPDR S&P 500 ETF Trust", "sector": None, "industry": None,
        "exchange": "PCX", "country": None, "market_cap": None, "is_etf": True}
    assert by_symbol["BRK.B"]["company_name"] == "Berkshire Hathaway Inc."
    assert by_symbol["BRK.B"]["is_etf"] is False
    # no longName: shortName; a mutual fund counts as a fund
    assert by_symbol["VFIAX"]["company_name"] == "Vanguard 500 Index Fund Admiral"
    assert by_symbol["VFIAX"]["is_etf"] is True
    assert [s for _, s, _ in client.calls] == ["AAPL", "SPY", "BRK-B", "VFIAX", "ZZZZ"]
    assert sleeps == []


@pytest.mark.parametrize(("info", "reason"), [
    ({"trailingPegRatio": None}, "unknown_symbol"),
    (None, "malformed_response"),
    (curl_http_error(404), "unknown_symbol"),
])
def test_profile_failures(info, reason):
    provider, _, _ = make(FakeClient(infos={"ZZZZ": info}))
    assert provider.get_company_profiles(["ZZZZ"]).failed == {"ZZZZ": reason}


# -- construction --------------------------------------------------------------------------------

def test_the_default_client_is_the_yfinance_module():
    provider = YFinanceProvider(RetryPolicy(), CountingLimiter())
    assert provider.client is yf and provider.name == "yfinance" and provider.coverage() is None


def test_without_yfinance_installed_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "yfinance", None)  # makes `import yfinance` fail
    with pytest.raises(ConfigError, match=r"pip install '\.\[yfinance\]'"):
        YFinanceProvider(RetryPolicy(), CountingLimiter())


# -- the real package, offline -------------------------------------------------------------------

def _yahoo_resolves() -> bool:
    try:
        socket.getaddrinfo("query2.finance.yahoo.com", 443)
    except OSError:
        return False
    return True


offline = pytest.mark.skipif(_yahoo_resolves(), reason="Yahoo resolves here: these tests assert "
                             "the offline behaviour and must not call the network")


@offline
def test_real_yfinance_without_network_reports_every_symbol_unreachable():
    from batch.fetching import RateLimiter

    provider = YFinanceProvider(RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.01), RateLimiter(10_000))
    hide_before = yf.config.debug.hide_exceptions
    started = time.monotonic()
    batch = provider.get_daily_prices(["AAPL", "MSFT", "XOM", "JPM"], D(2022, 12, 1), D(2022, 12, 28))
    elapsed = time.monotonic() - started
    assert batch.failed == {s: "unreachable" for s in ("AAPL", "MSFT", "XOM", "JPM")}
    assert batch.rows.empty and list(batch.rows.columns) == PRICE_COLUMNS
    assert elapsed < 60  # a guard against hanging, not a performance claim
    assert yf.config.debug.hide_exceptions == hide_before  # yfinance's setting is restored


# -- end to end: the CLI with MARKET_DATA_PROVIDER=yfinance, offline ----------------------------

AS_OF = "2022-12-28"


def snapshot_values(engine) -> dict[tuple, tuple]:
    with Session(engine) as s:
        rows = s.scalars(select(PortfolioSnapshot)).all()
        return {(r.portfolio_id, r.snapshot_date): (r.total_value, r.daily_pnl, r.num_positions)
                for r in rows}


@offline
def test_unreachable_yahoo_fails_market_data_and_engines_run_on_stored_prices(
        cli, engine, monkeypatch, capsys):
    assert cli("seed-demo")[0] == 0
    code, _, _, err = cli("--date", AS_OF, "--json")  # the sample provider fills prices
    assert code == 0, err
    before = snapshot_values(engine)
    assert {d for _, d in before} == {D(2022, 12, 28)} and len(before) == 4

    monkeypatch.setenv("MARKET_DATA_PROVIDER", "yfinance")
    monkeypatch.setenv("MAX_RETRY_DELAY_SECONDS", "1")
    started = time.monotonic()
    code, summary, _, err = cli("--date", AS_OF, "--force", "--json")
    wall = time.monotonic() - started
    with capsys.disabled():
        print(f"\n[yfinance offline run: {wall:.2f} s wall, "
              f"{summary['market_data']['symbols_requested']} symbols requested]")

    assert code == 1, err
    assert summary["exit_code"] == 1
    market = summary["market_data"]
    assert market["status"] == "failed"
    assert market["symbols_requested"] == len(market["failed_symbols"]) > 0
    assert {"portfolio_id": None, "job": "market_data", "error": "every requested symbol failed"} \
        in summary["failed_portfolios"]
    assert summary["portfolios"]["succeeded"] == 4
    assert wall < 120  # a guard against hanging, not a performance claim

    run_id = summary["run_id"]
    with Session(engine) as s:
        jobs = s.scalars(select(BatchJobResult).where(BatchJobResult.run_id == uuid.UUID(run_id))).all()
        snapshots = s.scalars(select(PortfolioSnapshot)).all()
    market_job = [j for j in jobs if j.job == "market_data"]
    assert [j.status for j in market_job] == ["failed"]
    assert set(market_job[0].result["failures"].values()) == {"unreachable"}
    snapshot_jobs = [j for j in jobs if j.job == "snapshot"]
    assert len(snapshot_jobs) == 4 and {j.status for j in snapshot_jobs} == {"success"}
    assert {j.as_of_date for j in snapshot_jobs} == {D(2022, 12, 28)}
    assert len(snapshots) == 4 and {r.snapshot_date for r in snapshots} == {D(2022, 12, 28)}
    for row in snapshots:  # the stored prices are current: nothing is stale
        quality = row.data_quality
        assert quality["flag"] != "stale_prices"
        assert "stale_prices" not in quality.get("flags", [])
    assert snapshot_values(engine) == before  # recomputed on the same stored prices
