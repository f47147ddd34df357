"""The run's gauges on a real Prometheus Pushgateway (SPEC §11, batch/observability/metrics.py).

The gateway: TEST_PUSHGATEWAY_URL (default http://127.0.0.1:9091; `.ci/run` starts one). When it
cannot be reached these tests are skipped with a visible reason — except under CI=true, where that
is a failure (as tests/conftest.py does for PostgreSQL). Every test pushes to its own group
(`instance=test-<uuid>`) and deletes it afterwards, so parallel workers do not interfere. Expected
values are written out by hand from the summaries below, never computed by the module under test.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from batch.observability.metrics import JOB, peak_rss_bytes, push_run_metrics
from tests.recording_server import closed_port_url, recording_server

GATEWAY = os.environ.get("TEST_PUSHGATEWAY_URL", "http://127.0.0.1:9091").rstrip("/")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

SUCCESS = {  # a successful night (shape of the SPEC §2 summary; only the keys the gauges read matter)
    "status": "success", "exit_code": 0, "duration_seconds": 2.228,
    "portfolios": {"succeeded": 4, "failed": 0, "skipped": 0},
    "market_data": {"symbols_requested": 28, "symbols_updated": 26, "rows_written": 7800,
                    "failed_symbols": ["TLT", "VUG"], "status": "success"},
    "stage_seconds": {"sync": 1.982, "global_engines": 0.09, "unit_writes": 0.043, "portfolios": 0.09},
}
FAILURE = {  # the next night: one unit failed, the sync lost three symbols, fewer stages ran
    "status": "partial", "exit_code": 1, "duration_seconds": 61.5,
    "portfolios": {"succeeded": 2, "failed": 1, "skipped": 1},
    "market_data": {"symbols_requested": 28, "symbols_updated": 25, "rows_written": 25,
                    "failed_symbols": ["TLT", "VUG", "XYZ"], "status": "partial"},
    "stage_seconds": {"sync": 60.25},
}
T_SUCCESS = 1_700_000_000.5  # unix seconds
T_FAILURE = 1_700_086_400.25


@pytest.fixture(scope="session")
def gateway() -> str:
    """The Pushgateway's base URL, once it answers /-/ready."""
    try:
        urllib.request.urlopen(f"{GATEWAY}/-/ready", timeout=5).close()
    except OSError as exc:
        message = f"Prometheus Pushgateway not reachable at {GATEWAY}: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: the metrics tests must run)", pytrace=False)
        pytest.skip(message)
    return GATEWAY


@pytest.fixture
def group(gateway: str) -> Iterator[dict[str, str]]:
    """A grouping key of this test alone; the group is deleted afterwards."""
    key = {"instance": f"test-{uuid.uuid4().hex}"}
    yield key
    request = urllib.request.Request(f"{gateway}/metrics/job/{JOB}/instance/{key['instance']}", method="DELETE")
    urllib.request.urlopen(request, timeout=5).close()


def read_group(gateway: str, key: dict[str, str]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The sigmasight gauges the gateway holds for (job, `key`), read from /api/v1/metrics:
    {metric name: {labels other than job and the grouping key (sorted pairs): value}}."""
    with urllib.request.urlopen(f"{gateway}/api/v1/metrics", timeout=5) as response:
        groups = json.load(response)["data"]
    wanted = {"job": JOB, **key}
    [found] = [g for g in groups if g["labels"] == wanted]
    out = {}
    for name, family in found.items():
        if not name.startswith("sigmasight_"):
            continue  # labels, last_push_successful, push_time_seconds, push_failure_time_seconds
        assert family["type"] == "GAUGE", name
        out[name] = {tuple(sorted((k, v) for k, v in m["labels"].items() if k not in wanted)): float(m["value"])
                     for m in family["metrics"]}
    return out


def one(value: float) -> dict[tuple, float]:
    return {(): value}


EXPECTED_SUCCESS = {
    "sigmasight_batch_last_run_timestamp_seconds": one(1_700_000_000.5),
    "sigmasight_batch_last_success_timestamp_seconds": one(1_700_000_000.5),
    "sigmasight_batch_exit_code": one(0),
    "sigmasight_batch_duration_seconds": {
        (("stage", "sync"),): 1.982, (("stage", "global_engines"),): 0.09, (("stage", "unit_writes"),): 0.043,
        (("stage", "portfolios"),): 0.09, (("stage", "total"),): 2.228},
    "sigmasight_batch_units": {(("status", "succeeded"),): 4, (("status", "failed"),): 0,
                               (("status", "skipped"),): 0},
    "sigmasight_batch_symbols_failed": one(2),
    "sigmasight_batch_rows_written": one(7800),
    "sigmasight_batch_peak_rss_bytes": one(123_456_789),
}


def test_success_then_failure_keeps_the_last_success_time(gateway, group):
    push_run_metrics(gateway, SUCCESS, finished_at=T_SUCCESS, peak_rss_bytes=123_456_789, timeout=5.0,
                     grouping_key=group)
    assert read_group(gateway, group) == EXPECTED_SUCCESS

    push_run_metrics(gateway, FAILURE, finished_at=T_FAILURE, peak_rss_bytes=200_000_000, timeout=5.0,
                     grouping_key=group)
    assert read_group(gateway, group) == {
        "sigmasight_batch_last_run_timestamp_seconds": one(1_700_086_400.25),
        "sigmasight_batch_last_success_timestamp_seconds": one(1_700_000_000.5),  # kept from the success
        "sigmasight_batch_exit_code": one(1),
        # the family is replaced as a whole: the stages the failed run did not reach are gone
        "sigmasight_batch_duration_seconds": {(("stage", "sync"),): 60.25, (("stage", "total"),): 61.5},
        "sigmasight_batch_units": {(("status", "succeeded"),): 2, (("status", "failed"),): 1,
                                   (("status", "skipped"),): 1},
        "sigmasight_batch_symbols_failed": one(3),
        "sigmasight_batch_rows_written": one(25),
        "sigmasight_batch_peak_rss_bytes": one(200_000_000),
    }


def test_a_first_run_that_fails_sends_no_success_time(gateway, group):
    push_run_metrics(gateway, FAILURE, finished_at=T_FAILURE, peak_rss_bytes=1, timeout=5.0, grouping_key=group)
    pushed = read_group(gateway, group)
    assert "sigmasight_batch_last_success_timestamp_seconds" not in pushed
    assert pushed["sigmasight_batch_last_run_timestamp_seconds"] == one(1_700_086_400.25)
    assert pushed["sigmasight_batch_exit_code"] == one(1)


def test_stage_durations_are_labelled_and_no_stage_leaves_the_total(gateway, group):
    summary = {**SUCCESS, "stage_seconds": {"sync": 0.5, "portfolios": 12.125, "unit_writes": 3.0},
               "duration_seconds": 16.0}
    push_run_metrics(gateway, summary, finished_at=T_SUCCESS, peak_rss_bytes=1, timeout=5.0, grouping_key=group)
    assert read_group(gateway, group)["sigmasight_batch_duration_seconds"] == {
        (("stage", "sync"),): 0.5, (("stage", "portfolios"),): 12.125, (("stage", "unit_writes"),): 3.0,
        (("stage", "total"),): 16.0}

    empty = {**SUCCESS, "stage_seconds": {}, "duration_seconds": 0.004}  # e.g. a run with nothing to do
    push_run_metrics(gateway, empty, finished_at=T_SUCCESS, peak_rss_bytes=1, timeout=5.0, grouping_key=group)
    assert read_group(gateway, group)["sigmasight_batch_duration_seconds"] == {(("stage", "total"),): 0.004}


def test_credentials_in_the_url_are_accepted_by_the_gateway(gateway, group):
    scheme, rest = gateway.split("://", 1)
    push_run_metrics(f"{scheme}://ops:s3cret@{rest}", SUCCESS, finished_at=T_SUCCESS, peak_rss_bytes=123_456_789,
                     timeout=5.0, grouping_key=group)
    assert read_group(gateway, group) == EXPECTED_SUCCESS


def test_a_summary_without_a_gauge_key_raises_before_sending(gateway, group):
    summary = {k: v for k, v in SUCCESS.items() if k != "market_data"}
    with pytest.raises(KeyError, match="market_data"):
        push_run_metrics(gateway, summary, finished_at=T_SUCCESS, peak_rss_bytes=1, timeout=5.0, grouping_key=group)
    with urllib.request.urlopen(f"{gateway}/api/v1/metrics", timeout=5) as response:
        assert all(g["labels"].get("instance") != group["instance"] for g in json.load(response)["data"])


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_a_non_positive_timeout_is_refused(timeout):
    with pytest.raises(ValueError, match="timeout"):
        push_run_metrics("http://127.0.0.1:9", SUCCESS, finished_at=T_SUCCESS, peak_rss_bytes=1, timeout=timeout)


# --- endpoints that misbehave: real local servers -------------------------------------------------------------


def test_credentials_are_sent_as_basic_auth_not_in_the_request():
    with recording_server(200) as server:
        base = server.url
        authed = base.replace("http://", "http://ops:p%40ss%3Aword@")  # user ops, password p@ss:word (URL-encoded)
        push_run_metrics(authed, SUCCESS, finished_at=T_SUCCESS, peak_rss_bytes=1, timeout=5.0,
                         grouping_key={"instance": "a"})
    [request] = server.requests
    assert request.path == f"/metrics/job/{JOB}/instance/a"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"ops:p@ss:word").decode()
    assert request.headers["Host"] == base.removeprefix("http://")
    assert b"sigmasight_batch_exit_code 0.0" in request.body


def test_no_credentials_no_authorization_header_and_job_only_group():
    with recording_server(202) as server:
        push_run_metrics(server.url, SUCCESS, finished_at=T_SUCCESS, peak_rss_bytes=1, timeout=5.0)
    [request] = server.requests
    assert request.path == f"/metrics/job/{JOB}"
    assert "Authorization" not in request.headers


def test_a_gateway_answering_500_raises_without_naming_the_url():
    with recording_server(500) as server:
        base = server.url
        authed = base.replace("http://", "http://ops:s3cret@")
        with pytest.raises(urllib.error.HTTPError) as caught:
            push_run_metrics(authed, SUCCESS, finished_at=T_SUCCESS, peak_rss_bytes=1, timeout=5.0)
    assert caught.value.code == 500
    assert len(server.requests) == 1  # one attempt, no retry
    shown = f"{type(caught.value).__name__}: {caught.value}"  # what the facade logs
    assert "s3cret" not in shown and base.removeprefix("http://") not in shown


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 where connections are queued by the kernel but never answered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def test_a_gateway_that_never_answers_raises_within_the_timeout(silent_port):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        push_run_metrics(f"http://127.0.0.1:{silent_port}", SUCCESS, finished_at=T_SUCCESS, peak_rss_bytes=1,
                         timeout=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.0, elapsed


@pytest.fixture
def trickling_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose server sends a response header line every 0.2 s and never ends the
    headers: each socket read succeeds in time, so only a bound on the whole exchange stops it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(0.2):
                    conn.sendall(b"X-Slow: 1\r\n")
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1]
    stop.set()
    sock.close()


def test_a_gateway_trickling_its_answer_is_cut_at_the_timeout(trickling_port):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        push_run_metrics(f"http://127.0.0.1:{trickling_port}", SUCCESS, finished_at=T_SUCCESS, peak_rss_bytes=1,
                         timeout=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.0, elapsed


def test_nothing_listening_raises_at_once():
    started = time.monotonic()
    with pytest.raises(urllib.error.URLError) as caught:
        push_run_metrics(closed_port_url(), SUCCESS, finished_at=T_SUCCESS, peak_rss_bytes=1, timeout=5.0)
    elapsed = time.monotonic() - started
    assert isinstance(caught.value.reason, ConnectionRefusedError)
    assert elapsed < 0.5, elapsed


# --- peak RSS --------------------------------------------------------------------------------------------------


def _vm_hwm_bytes() -> int:
    """The kernel's own peak-RSS figure for this process (/proc/self/status VmHWM, kB)."""
    with open("/proc/self/status") as status:
        [line] = [x for x in status if x.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def test_peak_rss_is_the_kernels_high_water_mark_in_bytes():
    before = peak_rss_bytes()
    assert abs(before - _vm_hwm_bytes()) < 1024 * 1024
    block = bytearray(b"\x01" * (96 * 1024 * 1024))  # 96 MiB, every page written
    after = peak_rss_bytes()
    assert abs(after - _vm_hwm_bytes()) < 1024 * 1024
    assert after >= before
    assert after >= 96 * 1024 * 1024  # at least the block itself is resident
    del block


def test_the_job_pushes_its_run_through_the_observers(seeded, gateway, monkeypatch):
    """End to end: a demo run with PROMETHEUS_PUSHGATEWAY_URL set leaves its summary's figures in
    the job's group (job only, as in production). The SQLite and PostgreSQL variants of this test
    may push concurrently with the same figures, so the run time is checked as a window."""
    monkeypatch.setenv("PROMETHEUS_PUSHGATEWAY_URL", gateway)
    started = time.time()
    result = seeded("--date", "2022-12-28", "--json")
    assert result.code == 0
    pushed = {name: {tuple(p for p in labels if p != ("instance", "")): v for labels, v in samples.items()}
              for name, samples in read_group(gateway, {}).items()}  # the job-only group's empty instance
    summary = result.summary
    assert pushed["sigmasight_batch_exit_code"] == one(0)
    assert pushed["sigmasight_batch_units"] == {(("status", k),): v for k, v in summary["portfolios"].items()}
    assert pushed["sigmasight_batch_rows_written"] == one(summary["market_data"]["rows_written"])
    assert pushed["sigmasight_batch_symbols_failed"] == one(len(summary["market_data"]["failed_symbols"]))
    [(_, last_run)] = pushed["sigmasight_batch_last_run_timestamp_seconds"].items()
    assert started <= last_run <= time.time()
    assert set(pushed["sigmasight_batch_duration_seconds"]) == {
        (("stage", s),) for s in [*summary["stage_seconds"], "total"]}
    [(_, rss)] = pushed["sigmasight_batch_peak_rss_bytes"].items()
    assert rss > 50 * 2**20  # this process has imported pandas and run the job
