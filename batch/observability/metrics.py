"""The run's gauges, pushed to a Prometheus Pushgateway (SPEC §11, `PROMETHEUS_PUSHGATEWAY_URL`).

The Pushgateway is the Prometheus project's own answer for batch jobs: the job pushes once at the
end of a run, Prometheus scrapes the gateway. `push_run_metrics` uses `pushadd_to_gateway` (HTTP
POST), which replaces only the metric families it sends and keeps the others of the group: after a
failed run, `sigmasight_batch_last_success_timestamp_seconds` (not sent) still holds the time of
the last successful run, so "no success for 26 hours" is one alert rule.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.error import HTTPError
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from batch.observability.delivery import bounded

JOB = "sigmasight_batch"  # the Pushgateway `job` label (SPEC §11)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (`getrusage` ru_maxrss: KiB on Linux,
    bytes on macOS). Children are not counted."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def push_run_metrics(gateway_url: str, summary: Mapping[str, Any], *, finished_at: float, peak_rss_bytes: int,
                     timeout: float, grouping_key: Mapping[str, str] | None = None) -> None:
    """Push the run's gauges to the Pushgateway at `gateway_url` (job `sigmasight_batch`, plus
    `grouping_key`; None = the job alone, one group that every run replaces).

    `summary` is the run's SPEC §2 summary; `finished_at` the run's end in unix seconds;
    `peak_rss_bytes` the process's peak RSS in bytes. Gauges sent:

    - `sigmasight_batch_last_run_timestamp_seconds` = `finished_at`;
    - `sigmasight_batch_last_success_timestamp_seconds` = `finished_at`, only when `exit_code` is 0
      (otherwise not sent, so the gateway keeps the previous success's value);
    - `sigmasight_batch_exit_code`;
    - `sigmasight_batch_duration_seconds{stage}`: one sample per `stage_seconds` key, plus
      `stage="total"` = `duration_seconds` (seconds, wall clock);
    - `sigmasight_batch_units{status}`: `portfolios` succeeded / failed / skipped (unit counts);
    - `sigmasight_batch_symbols_failed`: number of `market_data.failed_symbols`;
    - `sigmasight_batch_rows_written`: `market_data.rows_written`, the market-data rows (prices)
      the sync wrote — not the engines' result rows, which the summary does not count;
    - `sigmasight_batch_peak_rss_bytes` = `peak_rss_bytes`.

    Credentials in the URL (`https://user:pass@host`) are sent as HTTP Basic auth, not in the URL.
    `timeout` (seconds, > 0) bounds the whole push: name resolution, connection, request and
    response. Raises on any failure — KeyError for a summary lacking a key, TimeoutError when the
    gateway did not answer in time, OSError (urllib's HTTPError / URLError) for an error status or
    a refused connection; no message names the URL. Never prints.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labelnames=labels, registry=registry)

    exit_code = int(summary["exit_code"])
    gauge("sigmasight_batch_last_run_timestamp_seconds", "End of the last run, unix seconds.").set(finished_at)
    if exit_code == 0:
        gauge("sigmasight_batch_last_success_timestamp_seconds",
              "End of the last run that exited 0, unix seconds.").set(finished_at)
    gauge("sigmasight_batch_exit_code", "Exit code of the last run (0 success).").set(exit_code)
    duration = gauge("sigmasight_batch_duration_seconds", "Wall-clock seconds of the last run, per stage.", ("stage",))
    for stage, seconds in summary["stage_seconds"].items():
        duration.labels(stage=stage).set(float(seconds))
    duration.labels(stage="total").set(float(summary["duration_seconds"]))
    units = gauge("sigmasight_batch_units", "Portfolio units of the last run, per status.", ("status",))
    for status in ("succeeded", "failed", "skipped"):
        units.labels(status=status).set(int(summary["portfolios"][status]))
    market = summary["market_data"]
    gauge("sigmasight_batch_symbols_failed", "Symbols the last market-data sync could not update.").set(
        len(market["failed_symbols"]))
    gauge("sigmasight_batch_rows_written", "Market-data rows the last run's sync wrote.").set(
        int(market["rows_written"]))
    gauge("sigmasight_batch_peak_rss_bytes", "Peak resident set size of the last run's process, bytes.").set(
        peak_rss_bytes)

    url, username, password = _split_credentials(gateway_url)
    pushadd_to_gateway(url, job=JOB, registry=registry, grouping_key=dict(grouping_key or {}), timeout=timeout,
                       handler=_bounded_handler(timeout, username, password))


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`url` without its `user:password@` part, and that user and password (None when absent)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return (urlunsplit(parts._replace(netloc=netloc)), unquote(parts.username or ""),
            unquote(parts.password or ""))


def _bounded_handler(deadline: float, username: str | None, password: str | None) -> Callable[..., Callable[[], None]]:
    """A prometheus-client push handler whose whole exchange ends within `deadline` seconds.

    urllib's own timeout applies to each socket operation (a server trickling bytes, or a slow name
    lookup, could outlast it), so the request runs bounded (`delivery.bounded`): a thread left
    behind is a daemon that only holds its socket: it ends at its next socket timeout or error, or
    with the process.
    """

    def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                data: bytes) -> Callable[[], None]:
        if username is not None:
            send = basic_auth_handler(url, method, timeout, headers, data, username, password)
        else:
            send = default_handler(url, method, timeout, headers, data)

        def handle() -> None:
            try:
                bounded(send, deadline)
            except HTTPError as exc:
                exc.close()  # the error response's socket; code and reason stay readable
                raise
            except TimeoutError:
                raise TimeoutError(f"the Pushgateway did not answer within {deadline:g} s") from None

        return handle

    return handler
