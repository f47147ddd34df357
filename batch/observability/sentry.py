"""Sentry error events and Sentry Crons check-ins (SPEC §11, `SENTRY_DSN`, extra `[sentry]`).

`SentryReporter` owns one sentry-sdk client of its own: it is never installed as the process's
global client (no `sentry_sdk.init`), every capture runs in a fresh isolation scope bound to
it, and it has no integrations at all (`default_integrations=False`,
`auto_enabling_integrations=False`). So nothing is hooked into global state: no
`sys.excepthook`, no `atexit` flush, no signal handler, no logging handler, no patched httpx /
http.client / subprocess, no `sys.argv` in events; the exit code and signal handling stay the
entry point's. Sending happens on the SDK's daemon worker thread: a capture only queues an
envelope (it never blocks the run), each HTTP request is bounded by `timeout` and `close()`
waits at most `timeout` for the queue.

What is sent (nothing else is collected: no local variables, no PII, no breadcrumbs):
- an engine failure: one error event `<job> failed: <error>` tagged `job`, `portfolio_id`
  ("global" for a failure that is not a portfolio's), `as_of`, `run_id`;
- a crash: one exception event (stack frames with source lines, without `vars`);
- check-ins for the monitor `monitor_slug`: `in_progress` at the start, then `ok` or `error`
  with the duration, each carrying `MONITOR_CONFIG` (Sentry creates or updates the monitor).

Every event and check-in goes through `scrub` before it is queued. The DSN's public key is in
the `X-Sentry-Auth` header of each request (that is how Sentry authenticates an SDK); it is
dropped from the envelope header (the tracing "dynamic sampling context", unused here) and
masked in event bodies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from batch.errors import ConfigError
from batch.redact import scrubber

if TYPE_CHECKING:
    from collections.abc import Iterator

    import sentry_sdk

CRON_SCHEDULE = "30 23 * * 1-5"  # the cron entry of SPEC §9, in UTC
MONITOR_CONFIG: dict[str, Any] = {"schedule": {"type": "crontab", "value": CRON_SCHEDULE}, "timezone": "UTC"}
def _import_sentry() -> Any:
    """The sentry_sdk module; ConfigError naming the extra when it is not installed."""
    try:
        import sentry_sdk
        import sentry_sdk.crons  # noqa: F401 capture_checkin
        import sentry_sdk.transport  # noqa: F401 HttpTransport
    except ImportError as exc:
        raise ConfigError("SENTRY_DSN is set but sentry-sdk is not installed: pip install '.[sentry]'") from exc
    return sentry_sdk


class SentryReporter:
    """Error events and cron check-ins for one run, sent to the Sentry project of `dsn`.

    `dsn`: the revealed `SENTRY_DSN`; `monitor_slug`: the Crons monitor (`SENTRY_MONITOR_SLUG`);
    `release`: e.g. `sigmasight-batch@<version>`; `timeout`: seconds bounding each HTTP request
    and `close()`'s wait; `secrets`: literal values (API keys, passwords, URLs) to mask wherever
    they appear. Raises ConfigError when sentry-sdk is missing or the DSN is malformed (the
    message never contains the DSN). The methods queue and return; they never wait on the network.
    """

    def __init__(self, dsn: str, *, monitor_slug: str, release: str, timeout: float,
                 secrets: Iterable[str] = (), monotonic: Callable[[], float] = time.monotonic) -> None:
        sdk = _import_sentry()
        self._sdk = sdk
        self.monitor_slug = monitor_slug
        self.timeout = timeout
        self._monotonic = monotonic
        self._check_in_id: str | None = None
        self._started_at: float | None = None
        self.run_id: str | None = None
        public_key = dsn.split("://", 1)[-1].split("@", 1)[0].split(":", 1)[0] if "@" in dsn else ""
        self._scrub = scrubber([*secrets, dsn, public_key], url_tokens=True)
        bounded = type("BoundedHttpTransport", (sdk.transport.HttpTransport,), {"TIMEOUT": timeout})
        try:
            self._client: sentry_sdk.Client | None = sdk.Client(
                dsn,
                release=release,
                transport=bounded,
                default_integrations=False,  # no excepthook, atexit, logging, argv, stdlib patches
                auto_enabling_integrations=False,  # no patched httpx or other installed libraries
                integrations=[],
                include_local_variables=False,  # SPEC §11: local variables are not sent
                # send_default_pii is left unset: sentry-sdk 2.75 then treats it as False, and setting
                # it explicitly emits a DeprecationWarning (it is superseded by data_collection)
                max_breadcrumbs=0,
                traces_sample_rate=None,
                auto_session_tracking=False,
                enable_backpressure_handling=False,  # no health-check thread
                spotlight=False,  # SENTRY_SPOTLIGHT in the environment must not send events elsewhere
                shutdown_timeout=timeout,
                before_send=self._before_send,
                before_send_transaction=self._before_send,
            )
        except sdk.utils.BadDsn:
            raise ConfigError("SENTRY_DSN is not a valid Sentry DSN "
                              "(expected https://<key>@<host>/<project>)") from None

    def _before_send(self, event: dict[str, Any], hint: Any) -> dict[str, Any]:
        """Scrub an event or check-in; drop the trace's dynamic sampling context (it names the DSN key)."""
        trace = event.get("contexts", {}).get("trace")
        if isinstance(trace, dict):
            trace.pop("dynamic_sampling_context", None)
        scrubbed: dict[str, Any] = self._scrub(event)
        return scrubbed

    @contextmanager
    def _scope(self) -> Iterator[sentry_sdk.Scope]:
        """A fresh isolation and current scope bound to this reporter's client only."""
        scopes = self._sdk.scope
        isolation = scopes.Scope(ty=scopes.ScopeType.ISOLATION, client=self._client)
        current = scopes.Scope(ty=scopes.ScopeType.CURRENT, client=self._client)
        with scopes.use_isolation_scope(isolation), scopes.use_scope(current):
            yield current

    def _check_in(self, status: str, duration: float | None = None) -> None:
        """Send a check-in; `error`/`ok` close the open `in_progress` one (or stand alone)."""
        if self._client is None:
            return
        with self._scope():
            check_in_id = self._sdk.crons.capture_checkin(
                monitor_slug=self.monitor_slug, check_in_id=self._check_in_id, status=status,
                duration=duration, monitor_config=MONITOR_CONFIG)
        self._check_in_id = check_in_id if status == "in_progress" else None

    def _event(self, message: str, tags: Mapping[str, str]) -> None:
        if self._client is None:
            return
        with self._scope() as scope:
            for key, value in tags.items():
                scope.set_tag(key, value)
            scope.capture_message(message, level="error")

    def run_started(self, run_id: str) -> None:
        """Check-in `in_progress` for the monitor; its id is kept for the run's end."""
        self.run_id = run_id
        self._started_at = self._monotonic()
        self._check_in("in_progress")

    def run_finished(self, summary: Mapping[str, Any]) -> None:
        """One error event per `summary["failed_portfolios"]` entry, then check-in `ok` (exit code 0)
        or `error` with `summary["duration_seconds"]`. A failure without `as_of` (a market-data sync)
        is tagged with the run's last as-of date; one without `portfolio_id` with "global"."""
        run_id = str(summary.get("run_id") or self.run_id or "")
        dates = summary.get("as_of_dates") or []
        for failure in summary.get("failed_portfolios") or []:
            tags = {"job": str(failure.get("job")), "portfolio_id": str(failure.get("portfolio_id") or "global"),
                    "as_of": str(failure.get("as_of") or (dates[-1] if dates else "none")), "run_id": run_id}
            self._event(f"{failure.get('job')} failed: {failure.get('error')}", tags)
        self._check_in("ok" if summary.get("exit_code") == 0 else "error", summary.get("duration_seconds"))

    def run_not_started(self, error: str, exit_code: int) -> None:
        """One error event `run not started (exit <code>): <error>`, then check-in `error`."""
        self._event(f"run not started (exit {exit_code}): {error}", {"job": "run", "exit_code": str(exit_code)})
        self._check_in("error", self._duration())

    def crashed(self, exc: BaseException) -> None:
        """One exception event marked unhandled (no local variables), then check-in `error`."""
        if self._client is not None:
            with self._scope() as scope:
                if self.run_id is not None:
                    scope.set_tag("run_id", self.run_id)
                event, hint = self._sdk.utils.event_from_exception(
                    exc, client_options=self._client.options, mechanism={"type": "sigmasight_batch", "handled": False})
                scope.capture_event(event, hint=hint)
        self._check_in("error", self._duration())

    def _duration(self) -> float | None:
        return None if self._started_at is None else round(self._monotonic() - self._started_at, 3)

    def close(self) -> None:
        """Wait at most `timeout` seconds for queued envelopes, then stop the client (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            client.close(timeout=self.timeout)
