"""SENTRY_DSN (SPEC §11): the real sentry-sdk sends to a real HTTP server on 127.0.0.1 standing in
for Sentry; the tests parse the envelopes it receives (event tags, the check-in sequence, no local
variables, no secret) and time `close()` against a server answering 500, one that never answers and
a port nobody listens on."""

from __future__ import annotations

import atexit
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sentry_sdk
import sentry_sdk.integrations
from sentry_sdk.profiler import continuous_profiler

from batch.errors import ConfigError
from batch.observability import INTEGRATION_TIMEOUT_SECONDS
from batch.observability.sentry import MONITOR_CONFIG, SentryReporter
from batch.redact import scrubber
from tests.recording_server import Recorder, Request, closed_port_url, recording_server

SLUG = "sigmasight-batch-test"
RUN_ID = "7f1c6a0e-0000-4000-8000-000000000001"
PG_PASSWORD = "hunter2-pg-9z"
FMP_KEY = "fmpKEY-55aa77bb"
OTHER_KEY = "sk-live-3141592653"


@dataclass(frozen=True)
class Sentry:
    """A recording server (tests/recording_server.py) standing in for Sentry: the DSN pointing at
    it, the requests it received (bodies decompressed) and the envelope items in them."""

    recorder: Recorder

    @property
    def dsn(self) -> str:
        return f"http://publickey@{self.recorder.url.removeprefix('http://')}/42"

    @property
    def requests(self) -> list[Request]:
        return self.recorder.requests

    def items(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Every envelope item received, in order: (item header, payload)."""
        return [item for r in self.requests for item in parse_envelope(r.body)[1]]


def parse_envelope(body: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Sentry's envelope format: a JSON header line, then items (a JSON header line, then a payload of
    `length` bytes when the header gives it, else up to the next newline)."""
    header_line, _, rest = body.partition(b"\n")
    items = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item = json.loads(item_line)
        if "length" in item:
            payload, rest = rest[:item["length"]], rest[item["length"]:].removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((item, json.loads(payload)))
    return json.loads(header_line), items


def _global_state() -> tuple[Any, ...]:
    return (sys.excepthook, threading.excepthook, signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
            signal.getsignal(signal.SIGHUP), tuple(sorted(sentry_sdk.integrations._installed_integrations)))


@pytest.fixture(autouse=True)
def isolated() -> Iterator[None]:
    """Each test builds its own reporter (its own client); none may leave a global client, hook,
    signal handler or installed integration behind. The one atexit callback allowed is the
    continuous profiler's teardown, which every sentry-sdk client registers once per process (it
    stops a profiler that is never started here: no tracing, no profiling)."""
    before, callbacks = _global_state(), atexit._ncallbacks()
    first_client = continuous_profiler._scheduler is None
    assert not sentry_sdk.get_client().is_active()
    yield
    assert not sentry_sdk.get_client().is_active()
    assert _global_state() == before
    assert atexit._ncallbacks() - callbacks in ((0, 1) if first_client else (0,))
    assert continuous_profiler._scheduler is None or not continuous_profiler._scheduler.running


@pytest.fixture
def sentry() -> Iterator[Sentry]:
    with recording_server() as recorder:
        yield Sentry(recorder)


def _reporter(dsn: str, timeout: float = 2.0, **kwargs: Any) -> SentryReporter:
    return SentryReporter(dsn, monitor_slug=SLUG, release="sigmasight-batch@test", timeout=timeout, **kwargs)


def _summary(exit_code: int, failed: list[dict[str, Any]], duration: float = 42.5) -> dict[str, Any]:
    return {"run_id": RUN_ID, "status": "partial" if failed else "success", "exit_code": exit_code,
            "as_of_dates": ["2022-12-27", "2022-12-28"], "failed_portfolios": failed, "duration_seconds": duration}


FAILED = [
    {"portfolio_id": "11111111-1111-4111-8111-111111111111", "as_of": "2022-12-27", "job": "greeks",
     "error": "ValueError: negative volatility"},
    {"portfolio_id": "22222222-2222-4222-8222-222222222222", "as_of": "2022-12-28", "job": "factor_betas",
     "error": "LinAlgError: singular matrix"},
    {"portfolio_id": None, "job": "market_data", "error": "ProviderError: all 12 symbols failed"},
]


def _events(server: Sentry) -> list[dict[str, Any]]:
    return [payload for item, payload in server.items() if item["type"] == "event"]


def _check_ins(server: Sentry) -> list[dict[str, Any]]:
    return [payload for item, payload in server.items() if item["type"] == "check_in"]


def test_failures_are_tagged_error_events_between_in_progress_and_error_check_ins(sentry):
    reporter = _reporter(sentry.dsn)
    reporter.run_started(RUN_ID)
    reporter.run_finished(_summary(1, FAILED))
    reporter.close()

    assert {r.path for r in sentry.requests} == {"/api/42/envelope/"}
    assert [item["type"] for item, _ in sentry.items()] == ["check_in", "event", "event", "event", "check_in"]
    events = _events(sentry)
    assert [e["message"] for e in events] == ["greeks failed: ValueError: negative volatility",
                                              "factor_betas failed: LinAlgError: singular matrix",
                                              "market_data failed: ProviderError: all 12 symbols failed"]
    assert [e["level"] for e in events] == ["error"] * 3
    assert [e["tags"] for e in events] == [
        {"job": "greeks", "portfolio_id": "11111111-1111-4111-8111-111111111111", "as_of": "2022-12-27",
         "run_id": RUN_ID},
        {"job": "factor_betas", "portfolio_id": "22222222-2222-4222-8222-222222222222", "as_of": "2022-12-28",
         "run_id": RUN_ID},
        {"job": "market_data", "portfolio_id": "global", "as_of": "2022-12-28", "run_id": RUN_ID},  # last as-of
    ]
    assert all(e["release"] == "sigmasight-batch@test" and e["sdk"]["integrations"] == [] for e in events)
    assert all("extra" not in e or "sys.argv" not in e["extra"] for e in events)  # no ArgvIntegration
    start, end = _check_ins(sentry)
    assert (start["status"], end["status"]) == ("in_progress", "error")
    assert start["monitor_slug"] == end["monitor_slug"] == SLUG
    assert start["check_in_id"] == end["check_in_id"] and len(start["check_in_id"]) == 32
    assert start["monitor_config"] == end["monitor_config"] == {
        "schedule": {"type": "crontab", "value": "30 23 * * 1-5"}, "timezone": "UTC"}
    assert MONITOR_CONFIG["schedule"]["value"] == "30 23 * * 1-5"
    assert (start["duration"], end["duration"]) == (None, 42.5)


def test_a_successful_run_sends_in_progress_then_ok_and_no_event(sentry):
    reporter = _reporter(sentry.dsn)
    reporter.run_started(RUN_ID)
    reporter.run_finished(_summary(0, [], duration=12.25))
    reporter.close()
    assert _events(sentry) == []
    assert [(c["status"], c["duration"]) for c in _check_ins(sentry)] == [("in_progress", None), ("ok", 12.25)]
    assert len({c["check_in_id"] for c in _check_ins(sentry)}) == 1


def test_a_run_that_cannot_start_is_one_event_and_an_error_check_in(sentry):
    reporter = _reporter(sentry.dsn)
    reporter.run_not_started("DatabaseUnavailable: database 127.0.0.1:1/risk unreachable", 2)
    reporter.close()
    (event,) = _events(sentry)
    assert event["message"] == "run not started (exit 2): DatabaseUnavailable: database 127.0.0.1:1/risk unreachable"
    assert event["tags"] == {"job": "run", "exit_code": "2"}
    assert [(c["status"], c["monitor_slug"]) for c in _check_ins(sentry)] == [("error", SLUG)]


def _engine_step(book: dict[str, float]) -> float:
    connection_string = f"postgresql://batch:{PG_PASSWORD}@db.internal:5432/risk"  # a local, never sent
    weight = book["missing"]  # KeyError
    return weight + len(connection_string)


def test_a_crash_is_an_exception_event_without_local_variables(sentry):
    reporter = _reporter(sentry.dsn)
    reporter.run_started(RUN_ID)
    try:
        _engine_step({"AAPL": 0.5})
    except KeyError as exc:
        reporter.crashed(exc)
    reporter.close()

    (event,) = _events(sentry)
    (exception,) = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("KeyError", "'missing'")
    assert exception["mechanism"] == {"type": "sigmasight_batch", "handled": False}
    frames = exception["stacktrace"]["frames"]
    assert [f["function"] for f in frames][-2:] == ["test_a_crash_is_an_exception_event_without_local_variables",
                                                    "_engine_step"]
    assert all("vars" not in f for f in frames)
    assert event["tags"] == {"run_id": RUN_ID}
    assert [c["status"] for c in _check_ins(sentry)] == ["in_progress", "error"]
    assert all(PG_PASSWORD.encode() not in r.body for r in sentry.requests)


def test_no_secret_reaches_sentry_and_the_dsn_key_travels_only_in_the_auth_header(sentry):
    reporter = _reporter(sentry.dsn, secrets=[OTHER_KEY])
    reporter.run_started(RUN_ID)
    failed = [
        {"portfolio_id": "p1", "as_of": "2022-12-28", "job": "valuation",
         "error": f"OperationalError: connection to postgresql://batch:{PG_PASSWORD}@db.internal:5432/risk refused"},
        {"portfolio_id": None, "as_of": "2022-12-28", "job": "market_data",
         "error": f"HTTPStatusError: 401 for https://financialmodelingprep.com/api/v3/quote/AAPL?apikey={FMP_KEY}"},
        {"portfolio_id": "p2", "as_of": "2022-12-28", "job": "greeks",
         "error": f"vendor said: key {OTHER_KEY} revoked"},
    ]
    reporter.run_finished(_summary(1, failed))
    try:
        raise RuntimeError(f"api_key={FMP_KEY} rejected by https://batch:{PG_PASSWORD}@proxy.internal")
    except RuntimeError as exc:
        reporter.crashed(exc)
    reporter.close()

    bodies = b"".join(r.body for r in sentry.requests)
    envelope_headers = [parse_envelope(r.body)[0] for r in sentry.requests]
    assert all("trace" not in h for h in envelope_headers)  # the dynamic sampling context names the key
    assert len(_events(sentry)) == 4 and len(_check_ins(sentry)) == 3
    for secret in (PG_PASSWORD, FMP_KEY, OTHER_KEY, "publickey"):
        assert secret.encode() not in bodies, secret
    messages = [e.get("message") or e["exception"]["values"][0]["value"] for e in _events(sentry)]
    assert messages == [
        "valuation failed: OperationalError: connection to postgresql://batch:***@db.internal:5432/risk refused",
        "market_data failed: HTTPStatusError: 401 for https://financialmodelingprep.com/api/v3/quote/AAPL?apikey=***",
        "greeks failed: vendor said: key *** revoked",
        "api_key=*** rejected by https://batch:***@proxy.internal",
    ]
    auth = {r.headers["X-Sentry-Auth"] for r in sentry.requests}
    assert auth == {"Sentry sentry_key=publickey, sentry_version=7, sentry_client=sentry.python/"
                    + sentry_sdk.VERSION}


@pytest.mark.parametrize("mode", ["500", "hang", "closed"])
def test_a_failing_endpoint_raises_nothing_and_close_is_bounded(mode):
    with recording_server("error" if mode == "500" else "ok" if mode == "closed" else mode) as recorder:
        server = None if mode == "closed" else Sentry(recorder)
        dsn = f"http://publickey@{closed_port_url().removeprefix('http://')}/42" if server is None else server.dsn
        timeout = INTEGRATION_TIMEOUT_SECONDS
        reporter = _reporter(dsn, timeout=timeout)
        t0 = time.monotonic()
        reporter.run_started(RUN_ID)
        reporter.run_finished(_summary(1, FAILED))
        calls = time.monotonic() - t0
        reporter.close()
        closed = time.monotonic() - t0
        assert calls < 0.5  # the captures only queue: the run is not delayed
        assert closed < timeout + 1.0
        if server is not None:
            assert len(server.requests) >= 1  # the endpoint was really tried
            sent = [item["type"] for item, _ in server.items() if item["type"] != "client_report"]
            assert mode != "500" or sent == ["check_in", "event", "event", "event", "check_in"]  # no retry


def test_missing_sentry_sdk_is_a_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # `import sentry_sdk` raises ImportError
    with pytest.raises(ConfigError) as raised:
        _reporter("http://publickey@127.0.0.1:9/42")
    assert str(raised.value) == "SENTRY_DSN is set but sentry-sdk is not installed: pip install '.[sentry]'"


def test_a_malformed_dsn_is_a_config_error_that_does_not_echo_it():
    with pytest.raises(ConfigError) as raised:
        _reporter("not-a-dsn-secretvalue")
    assert "secretvalue" not in str(raised.value) and "SENTRY_DSN" in str(raised.value)


def test_the_client_collects_no_pii_and_no_local_variables(sentry):
    reporter = _reporter(sentry.dsn)
    options = reporter._client.options
    assert not options["send_default_pii"] and options["data_collection"]["user_info"] is False
    assert options["include_local_variables"] is False
    assert options["data_collection"]["stack_frame_variables"] is False
    assert options["default_integrations"] is False and options["auto_enabling_integrations"] is False
    reporter.close()
    reporter.close()  # idempotent
    reporter.run_started(RUN_ID)  # after close: nothing sent, nothing raised
    assert sentry.requests == []


@pytest.mark.parametrize(("raw", "expected"), [
    ("postgresql://batch:pw-1@db:5432/risk", "postgresql://batch:***@db:5432/risk"),
    ("https://0123abcd@o1.ingest.sentry.io/42", "https://***@o1.ingest.sentry.io/42"),
    ("GET /quote?symbol=AAPL&apikey=k-99&limit=5", "GET /quote?symbol=AAPL&apikey=***&limit=5"),
    ('{"password": "p w"}', '{"password": "***"}'),
    ("token: abc.def, next", "token: ***, next"),
    ("KeyError: 'missing'", "KeyError: 'missing'"),
    ("plain https://example.com/path?x=1", "plain https://example.com/path?x=1"),
    ("literal LIT-SECRET-1 inside", "literal *** inside"),
], ids=["url-password", "url-token", "query-key", "json-quoted", "colon", "not-a-key", "plain-url", "literal"])
def test_scrubber_masks_strings(raw, expected):
    assert scrubber(["LIT-SECRET-1", "ab"], url_tokens=True)(raw) == expected


def test_scrubber_masks_values_of_secret_keys_at_any_depth():
    scrub = scrubber()
    event = {"extra": {"FMP_API_KEY": "k", "db": {"password": 5, "token": None, "user": "batch"}},
             "list": [{"dsn": "x"}, "a"], "tags": {"job": "greeks"}}
    assert scrub(event) == {"extra": {"FMP_API_KEY": "***", "db": {"password": "***", "token": None, "user": "batch"}},
                            "list": [{"dsn": "***"}, "a"], "tags": {"job": "greeks"}}


def test_the_job_reports_an_engine_failure_and_its_check_ins(seeded, sentry, monkeypatch):
    """End to end through the observers: a demo run with SENTRY_DSN set and one book's engine
    failing sends `in_progress`, one error event tagged with that failure, then `error`; the
    database password and an API key configured for the run appear in no envelope byte."""
    from batch import runner as runner_module
    from batch.demo import HEDGE_FUND, demo_id
    from batch.engines import ENGINES, Engine, JobOutcome
    from tests.conftest import each_unit

    victim = demo_id("portfolio", HEDGE_FUND)

    def explode(unit):
        if unit.portfolio_id == victim:
            raise RuntimeError("injected failure apikey=abc-SECRET-123")
        return JobOutcome("success", {})

    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    monkeypatch.setenv("FMP_API_KEY", "fmp-SECRET-456")
    monkeypatch.setattr(runner_module, "ENGINES",
                        [*ENGINES, Engine("exploder", each_unit(explode), depends_on=("snapshot",))])
    result = seeded("--date", "2022-12-28", "--json")
    assert result.code == 1
    kinds = [(header["type"], payload.get("status")) for header, payload in sentry.items()]
    assert kinds == [("check_in", "in_progress"), ("event", None), ("check_in", "error")]
    event = sentry.items()[1][1]
    assert event["tags"] == {"job": "exploder", "portfolio_id": str(victim), "as_of": "2022-12-28",
                             "run_id": result.summary["run_id"]}
    assert event["level"] == "error" and "exploder failed: RuntimeError: injected failure" in json.dumps(event)
    assert all(b"SECRET" not in r.body for r in sentry.requests)
