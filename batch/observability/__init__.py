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

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from batch.settings import Settings

log = structlog.get_logger()

INTEGRATION_TIMEOUT_SECONDS = 5.0  # per call (SPEC §11)


class Observers:
    """The run's configured integrations (none when no variable is set)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_id: str | None = None
        self.started = False

    def _deliver(self, integration: str, send: Callable[[], Any]) -> None:
        """Call `send`; log a failure instead of raising it (a report must never stop a run)."""
        try:
            send()
        except Exception as exc:  # noqa: BLE001 any delivery failure: logged, never raised
            log.warning("integration_failed", integration=integration, error=f"{type(exc).__name__}: {exc}")

    def run_started(self, run_id: str) -> None:
        """The run holds its lock and starts."""
        self.run_id, self.started = run_id, True

    def run_finished(self, summary: Mapping[str, Any]) -> None:
        """The run ended with `summary` (SPEC §2; its `exit_code` is the process's)."""

    def run_not_started(self, error: str, exit_code: int) -> None:
        """A `run` command that could not start (`error`, one line; exits `exit_code`)."""

    def crashed(self, exc: BaseException) -> None:
        """An exception nothing else caught ends the process."""
