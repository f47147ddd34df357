"""Telling operators instead of leaving them to look (SPEC §11).

`Observers` is what the entry point and the run call at the run's edges: `run_started` once the
run holds its lock, `run_finished` with the SPEC §2 summary, `run_not_started` when a `run`
command cannot start after its settings were read (database unreachable, unmigrated...),
`crashed` for an exception nothing else caught. Each integration is off unless its variable is
set, bounded (`INTEGRATION_TIMEOUT_SECONDS` per call, never retried), never raises into the run
and never changes the exit code: a delivery that fails is one `integration_failed` warning
naming the integration and the error (never its URL).

- `ALERT_WEBHOOK_URL`: a Slack-compatible message (batch/observability/alerts.py);
- `HEALTHCHECK_URL`: dead-man's-switch pings (batch/observability/healthcheck.py);
- `PROMETHEUS_PUSHGATEWAY_URL`: the run's gauges (batch/observability/metrics.py);
- `SENTRY_DSN`: error events and cron check-ins (batch/observability/sentry.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from batch.observability.alerts import EXIT_LOCKED, AlertPolicy, not_started_message, run_message
from batch.observability.delivery import bounded, post
from batch.observability.healthcheck import ping_url
from batch.redact import error_text
from batch.settings import Settings

log = structlog.get_logger()

INTEGRATION_TIMEOUT_SECONDS = 5.0  # per call (SPEC §11)


class Observers:
    """The run's configured integrations (none when no variable is set)."""

    def __init__(self, settings: Settings, timeout: float | None = None) -> None:
        self.settings = settings
        self.timeout = INTEGRATION_TIMEOUT_SECONDS if timeout is None else timeout
        self.policy = AlertPolicy(settings.alert_on == "always", settings.alert_failed_share,
                                  settings.alert_slow_seconds)
        self.run_id: str | None = None
        self.sentry: Any = None
        if settings.sentry_dsn is not None:
            self._deliver("sentry", self._start_sentry)

    def _start_sentry(self) -> None:
        from batch import __version__
        from batch.observability.sentry import SentryReporter

        settings = self.settings
        assert settings.sentry_dsn is not None
        self.sentry = SentryReporter(settings.sentry_dsn.reveal(), monitor_slug=settings.sentry_monitor_slug,
                                     release=f"sigmasight-batch@{__version__}", timeout=self.timeout,
                                     secrets=settings.secrets())

    def _deliver(self, integration: str, send: Callable[[], Any]) -> None:
        """Call `send`; log a failure instead of raising it (a report must never stop a run)."""
        t0 = time.monotonic()
        try:
            send()
        except Exception as exc:  # noqa: BLE001 any delivery failure: logged, never raised
            log.warning("integration_failed", integration=integration, error=error_text(exc),
                        seconds=round(time.monotonic() - t0, 3))

    def _to_sentry(self, call: Callable[[Any], Any]) -> None:
        """`call(reporter)` within the bound, when Sentry is configured."""
        sentry = self.sentry
        if sentry is not None:
            self._deliver("sentry", lambda: bounded(lambda: call(sentry), self.timeout))

    def _ping(self, event: str | int, body: str = "") -> None:
        if self.settings.healthcheck_url is not None:
            url = ping_url(self.settings.healthcheck_url.reveal(), event)
            self._deliver("healthcheck", lambda: post(url, self.timeout, content=body))

    def _alert(self, message: dict[str, Any]) -> None:
        if self.settings.alert_webhook_url is not None:
            url = self.settings.alert_webhook_url.reveal()
            self._deliver("webhook", lambda: post(url, self.timeout, json=message))

    def run_started(self, run_id: str) -> None:
        """The run holds its lock and starts."""
        self.run_id = run_id
        self._ping("start", f"run {run_id}")
        self._to_sentry(lambda sentry: sentry.run_started(run_id))

    def run_finished(self, summary: Mapping[str, Any]) -> None:
        """The run ended with `summary` (SPEC §2; its `exit_code` is the process's): the alert if
        one is due, the metrics, the healthcheck's end ping, Sentry's events and check-in."""
        reasons = self.policy.reasons(summary)
        if reasons or self.policy.always:
            self._alert(run_message(summary, reasons))
        if self.settings.prometheus_pushgateway_url is not None:
            self._deliver("pushgateway", lambda: self._push(summary))
        code = summary.get("exit_code", 1)
        if code != EXIT_LOCKED:
            self._ping(code, f"run {summary.get('run_id')}: {summary.get('status')}")
        self._to_sentry(lambda sentry: sentry.run_finished(summary))
        self.close()

    def _push(self, summary: Mapping[str, Any]) -> None:
        from batch.observability.metrics import peak_rss_bytes, push_run_metrics

        assert self.settings.prometheus_pushgateway_url is not None
        push_run_metrics(self.settings.prometheus_pushgateway_url.reveal(), summary, finished_at=time.time(),
                         peak_rss_bytes=peak_rss_bytes(), timeout=self.timeout)

    def run_not_started(self, error: str, exit_code: int) -> None:
        """A `run` command that could not start (`error`, one line; exits `exit_code`)."""
        self._alert(not_started_message(error, exit_code))
        self._ping(exit_code, error)
        self._to_sentry(lambda sentry: sentry.run_not_started(error, exit_code))

    def crashed(self, exc: BaseException) -> None:
        """An exception nothing else caught ends the process (exit 1)."""
        error = f"crashed: {error_text(exc)}"
        self._alert(not_started_message(error, 1, self.run_id))
        self._ping(1, error)
        self._to_sentry(lambda sentry: sentry.crashed(exc))

    def close(self) -> None:
        """Flush what is still queued (Sentry), within the bound; once."""
        sentry, self.sentry = self.sentry, None
        if sentry is not None:
            self._deliver("sentry", lambda: bounded(sentry.close, self.timeout + 1.0))
