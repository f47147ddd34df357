"""Failure alerts and healthcheck pings (SPEC §11), with real HTTP servers on 127.0.0.1 standing in
for Slack and the healthcheck service (tests/recording_server.py): what the job sends, when, and
that an endpoint answering 500, never answering, or not listening changes neither the exit code
nor the run by more than its bound."""

from __future__ import annotations

import json
import time

from batch import observability
from batch import runner as runner_module
from batch.demo import HEDGE_FUND, demo_id
from batch.engines import ENGINES, Engine, JobOutcome
from batch.observability.alerts import FAILURES_LISTED, AlertPolicy, run_message
from tests.conftest import each_unit
from tests.recording_server import closed_port_url, recording_server

AS_OF = "2022-12-28"


def _summary(**overrides) -> dict:
    base = {"run_id": "r1", "status": "success", "exit_code": 0, "as_of_dates": [AS_OF],
            "portfolios": {"succeeded": 4, "failed": 0, "skipped": 0}, "failed_portfolios": [],
            "market_data": {"status": "success", "failed_symbols": []}, "duration_seconds": 12.5}
    return {**base, **overrides}


def test_the_alert_conditions_by_hand() -> None:
    policy = AlertPolicy(failed_share=0.5, slow_seconds=100.0)
    assert policy.reasons(_summary()) == []
    assert policy.reasons(_summary(exit_code=75)) == []  # locked out: nothing was done
    assert policy.reasons(_summary(exit_code=1, portfolios={"succeeded": 3, "failed": 1, "skipped": 9})) == [
        "exit code 1"]  # 1 of 4 computed: below the share
    assert policy.reasons(_summary(exit_code=1, portfolios={"succeeded": 2, "failed": 2, "skipped": 0})) == [
        "exit code 1", "2 of 4 portfolio-dates failed"]
    assert policy.reasons(_summary(market_data={"status": "failed", "failed_symbols": ["A"]})) == [
        "market-data sync failed completely"]
    assert policy.reasons(_summary(duration_seconds=100.5)) == ["ran 100 s (alert above 100 s)"]
    assert policy.reasons(_summary(exit_code=1, error="database error on x: gone")) == ["exit code 1", "database error"]
    assert policy.reasons(_summary(catch_up=["2022-12-21", "2022-12-22"])) == ["caught up 2 missed session(s)"]


def test_the_message_lists_the_first_failures_and_counts_the_rest() -> None:
    failures = [{"portfolio_id": f"p{i}", "as_of": AS_OF, "job": "valuation", "error": f"E{i}"} for i in range(13)]
    failures.append({"portfolio_id": None, "as_of": AS_OF, "job": "symbol_betas", "error": "G"})
    message = run_message(_summary(status="failed", exit_code=1, failed_portfolios=failures,
                                   market_data={"status": "partial", "failed_symbols": ["XYZ", "QQQ"]},
                                   incomplete_sessions=["2022-12-23", "2022-12-27"]),
                          ["exit code 1"])
    assert message["text"] == f"sigmasight-batch failed (exit 1) as of {AS_OF}: exit code 1"
    body = json.dumps(message["blocks"])
    assert all(f"p{i} {AS_OF} valuation: E{i}" in body for i in range(FAILURES_LISTED))
    assert f"p{FAILURES_LISTED} " not in body and "and 4 more" in body
    assert "*failed symbols* (2) XYZ, QQQ" in body and "*run* `r1`" in body
    assert "*sessions still incomplete* 2022-12-23, 2022-12-27" in body


def _events(out: str, event: str) -> list[dict]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def test_a_failed_run_is_posted_and_pinged_a_successful_one_only_pinged(seeded, monkeypatch):
    victim = demo_id("portfolio", HEDGE_FUND)

    def explode(unit):
        if unit.portfolio_id == victim:
            raise RuntimeError("injected failure")
        return JobOutcome("success", {})

    with recording_server() as slack, recording_server() as hc:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", slack.url + "/hook/T000/B000/secret")
        monkeypatch.setenv("HEALTHCHECK_URL", hc.url + "/ping/abc")
        ok = seeded("--date", AS_OF, "--json")
        assert ok.code == 0 and slack.requests == []  # a success is not posted by default
        assert [(r.method, r.path) for r in hc.requests] == [("POST", "/ping/abc/start"), ("POST", "/ping/abc/0")]
        monkeypatch.setattr(runner_module, "ENGINES",
                            [*ENGINES, Engine("exploder", each_unit(explode), depends_on=("snapshot",))])
        failed = seeded("--date", AS_OF, "--force", "--skip-sync", "--json")
    assert failed.code == 1
    [post] = slack.requests
    assert (post.method, post.path, post.headers["Content-Type"]) == ("POST", "/hook/T000/B000/secret",
                                                                        "application/json")
    message = json.loads(post.body)
    assert message["text"] == f"sigmasight-batch partial (exit 1) as of {AS_OF}: exit code 1"
    body = json.dumps(message["blocks"])
    assert f"{victim} {AS_OF} exploder: RuntimeError: injected failure" in body
    assert "3 succeeded, 1 failed, 0 skipped" in body and failed.summary["run_id"] in body
    assert [r.path for r in hc.requests[2:]] == ["/ping/abc/start", "/ping/abc/1"]


def test_always_posts_a_success_and_a_run_that_cannot_start_is_posted(seeded, monkeypatch):
    with recording_server() as slack, recording_server() as hc:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", slack.url)
        monkeypatch.setenv("HEALTHCHECK_URL", hc.url)
        monkeypatch.setenv("ALERT_ON", "always")
        ok = seeded("--date", AS_OF, "--json")
        monkeypatch.setenv("DATABASE_URL", "postgresql://batch:pw@127.0.0.1:1/risk")
        down = seeded("--date", AS_OF, "--json")
    assert ok.code == 0 and down.code == 2
    success, not_started = (json.loads(r.body) for r in slack.requests)
    assert success["text"] == f"sigmasight-batch success (exit 0) as of {AS_OF}"
    assert "4 succeeded, 0 failed, 0 skipped" in json.dumps(success["blocks"])
    assert not_started["text"].startswith("sigmasight-batch could not start (exit 2): ")
    assert "127.0.0.1:1" in not_started["text"] and ":pw@" not in not_started["text"]
    assert [r.path for r in hc.requests] == ["/start", "/0", "/2"]  # no /start: the run never started


def test_endpoints_that_fail_hang_or_are_absent_change_nothing_but_the_log(seeded, monkeypatch):
    """Each call is bounded (1 s here instead of 5): a server that never answers costs about the
    bound per call; one answering 500 or not listening fails at once; the exit code stays 0."""
    monkeypatch.setattr(observability, "INTEGRATION_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setenv("ALERT_ON", "always")
    assert seeded("--date", AS_OF, "--json").code == 0  # the first run syncs: not timed
    for mode in ("hang", "error", "absent"):
        with recording_server("ok" if mode == "absent" else mode) as server:
            url = closed_port_url() if mode == "absent" else server.url
            monkeypatch.setenv("ALERT_WEBHOOK_URL", url)
            monkeypatch.setenv("HEALTHCHECK_URL", url)
            t0 = time.monotonic()
            result = seeded("--date", AS_OF, "--force", "--skip-sync", "--json")
            elapsed = time.monotonic() - t0
        failures = _events(result.out, "integration_failed")
        assert result.code == 0 and result.summary["status"] == "success", mode
        assert [f["integration"] for f in failures] == ["healthcheck", "webhook", "healthcheck"], mode
        seconds = [f["seconds"] for f in failures]
        if mode == "hang":
            assert all(0.95 <= s <= 1.6 for s in seconds), seconds
            assert {f["error"] for f in failures} == {"TimeoutError: no answer within 1 s"}
        else:
            assert all(s < 0.5 for s in seconds), (mode, seconds)
        if mode == "error":
            assert {f["error"] for f in failures} == {"RuntimeError: HTTP 500"}
        assert elapsed < 60, elapsed  # a guard against hanging, not a performance claim
