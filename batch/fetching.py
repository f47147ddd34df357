"""What network providers share (SPEC §5.3): error classes, bounded retries with tenacity, a
client-side rate limit, a circuit breaker, and a JSON-over-HTTP client with explicit timeouts.

Transient (retried): connection errors, timeouts, HTTP 429 and 5xx (honouring Retry-After).
Permanent (never retried): other 4xx, unknown symbols, bad or missing keys, malformed bodies.
Classification is by exception type and status code only, never by message text. API keys never
appear in messages or logs.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import httpx
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

log = structlog.get_logger()
T = TypeVar("T")

# Per-symbol failure reasons reported in `failed_symbols` (see batch.sync.PERMANENT_REASONS).
UNKNOWN_SYMBOL, NO_DATA, UNREACHABLE, REJECTED, MALFORMED = (
    "unknown_symbol", "no_data", "unreachable", "rejected", "malformed_response")
# Requests the client itself refuses to make (RequestRefused): the provider's daily quota is
# spent, or the run's deadline for the sync has passed.
QUOTA_EXHAUSTED, DEADLINE = "quota_exhausted", "deadline"


class ProviderError(Exception):
    """A provider call failed. `reason` is one of the per-symbol failure reasons."""

    reason = REJECTED

    def __init__(self, provider: str, message: str, *, symbol: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider, self.symbol, self.status = provider, symbol, status


class TransientProviderError(ProviderError):
    """Worth retrying: timeouts, connection errors, HTTP 429 and 5xx."""

    reason = UNREACHABLE

    def __init__(self, provider: str, message: str, *, retry_after: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(provider, message, **kwargs)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """Not worth retrying: the request itself is wrong (4xx) or the body is unusable."""


class UnknownSymbol(PermanentProviderError):
    reason = UNKNOWN_SYMBOL


class NoData(PermanentProviderError):
    """The symbol is known (or indistinguishable from known) but has no bars in the window."""

    reason = NO_DATA


class MalformedResponse(PermanentProviderError):
    reason = MALFORMED


class AuthenticationError(PermanentProviderError):
    """The API key is missing or rejected. Fails the whole sync, naming the key variable."""


class RequestRefused(Exception):
    """The rate limiter refused to make a request (`reason`: QUOTA_EXHAUSTED or DEADLINE). Not
    retried; `per_symbol` fails the symbol and the rest of its call with the same reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"request refused: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: at most `attempts` tries and `max_total_delay` seconds of waiting, jittered
    exponential backoff from `initial_wait` up to `max_wait`, or the server's Retry-After."""

    attempts: int = 3
    max_total_delay: float = 30.0
    initial_wait: float = 0.5
    max_wait: float = 10.0
    sleep: Callable[[float], None] = time.sleep

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Run `fn`, retrying transient errors; the last error is re-raised."""
        backoff = wait_exponential_jitter(multiplier=self.initial_wait, max=self.max_wait,
                                          jitter=self.initial_wait)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            hinted = getattr(error, "retry_after", None)  # the server's Retry-After wins
            return min(hinted, self.max_total_delay) if hinted is not None else backoff(state)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning("provider_retry", call=what, attempt=state.attempt_number,
                        wait_seconds=round(state.next_action.sleep, 3) if state.next_action else None,
                        error_type=type(error).__name__, status=getattr(error, "status", None))

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.max_total_delay),
            wait=wait, retry=retry_if_exception_type(TransientProviderError), reraise=True,
            sleep=self.sleep, before_sleep=before_sleep)
        return retrying(fn)


def utc_today() -> date:
    return datetime.now(UTC).date()


@dataclass
class DailyQuota:
    """At most `per_day` requests per UTC calendar day (a plan's daily allowance, e.g. FMP's
    free 250). `used` counts the requests of `day`; `restore` adds those of earlier runs that
    day (the sync keeps the count in `provider_request_counts`). A new day starts at 0."""

    per_day: int
    today: Callable[[], date] = utc_today
    day: date | None = None
    used: int = 0

    def remaining(self) -> int:
        day = self.today()
        if day != self.day:
            self.day, self.used = day, 0
        return max(self.per_day - self.used, 0)

    def restore(self, day: date, used: int) -> None:
        """Take the count stored for `day` if that is today (the larger of it and ours)."""
        self.remaining()
        if day == self.day:
            self.used = max(self.used, used)


@dataclass
class RateLimiter:
    """Every request of a network provider passes `acquire()`: at most `per_minute` calls per
    rolling minute, spaced evenly (60 / per_minute seconds); at most `quota` calls per UTC day
    (None: no daily limit); none once `stop()` returns a reason (the sync sets it to the run's
    deadline). A refused request raises RequestRefused, at once or after the spacing wait."""

    per_minute: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    quota: DailyQuota | None = None
    stop: Callable[[], str | None] | None = None
    _next: float = field(default=0.0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def acquire(self) -> None:
        with self._lock:
            self._check_stop()
            if self.quota is not None and self.quota.remaining() == 0:
                raise RequestRefused(QUOTA_EXHAUSTED)
            now = self.clock()
            if self._next > now:
                self.sleep(self._next - now)
                now = self._next
                self._check_stop()  # the deadline may have passed while waiting
            if self.quota is not None:
                self.quota.used += 1
            self._next = now + 60.0 / self.per_minute

    def _check_stop(self) -> None:
        reason = self.stop() if self.stop is not None else None
        if reason:
            raise RequestRefused(reason)


@dataclass
class CircuitBreaker:
    """Stops calling a provider after `threshold` consecutive unreachable symbols, so an outage
    costs seconds, not retries × symbols."""

    threshold: int = 3
    failures: int = 0

    @property
    def open(self) -> bool:
        return self.failures >= self.threshold

    def record(self, ok: bool) -> None:
        self.failures = 0 if ok else self.failures + 1


def per_symbol(provider: str, symbols: Iterable[str], fetch: Callable[[str], T],
               breaker: CircuitBreaker | None = None) -> tuple[dict[str, T], dict[str, str]]:
    """Call `fetch(symbol)` for each symbol; one symbol's failure never stops the others.
    Returns (results, failures with reasons). AuthenticationError propagates: a bad key fails
    every symbol alike and must be reported once, naming the variable. A RequestRefused (quota
    spent, deadline passed) fails that symbol and every later one with its reason, unasked."""
    breaker = breaker or CircuitBreaker()
    results: dict[str, T] = {}
    failed: dict[str, str] = {}
    refused: str | None = None  # once the limiter refuses, it refuses the rest of the call too
    for symbol in symbols:
        if refused is not None:
            failed[symbol] = refused
            continue
        if breaker.open:
            failed[symbol] = UNREACHABLE
            continue
        try:
            results[symbol] = fetch(symbol)
            breaker.record(True)
        except AuthenticationError:
            raise
        except RequestRefused as exc:
            refused = failed[symbol] = exc.reason
            log.warning("provider_requests_refused", provider=provider, reason=exc.reason, first_symbol=symbol)
        except ProviderError as exc:
            failed[symbol] = exc.reason
            breaker.record(not isinstance(exc, TransientProviderError))
            log.warning("provider_symbol_failed", provider=provider, symbol=symbol, reason=exc.reason,
                        status=exc.status, error=str(exc))
    if breaker.open:
        log.error("provider_unreachable", provider=provider, skipped=sum(
            1 for r in failed.values() if r == UNREACHABLE))
    return results, failed


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


class HttpJsonClient:
    """GET JSON from one provider's REST API with explicit connect/read timeouts, the rate
    limit and the retry policy. The API key is sent as a query parameter and never logged or
    put into an error message."""

    def __init__(self, provider: str, base_url: str, *, key: str | None, key_param: str, key_env: str,
                 retry: RetryPolicy, limiter: RateLimiter, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, transport: httpx.BaseTransport | None = None,
                 auth_statuses: tuple[int, ...] = (401, 403)) -> None:
        if not key:
            raise AuthenticationError(provider, f"{key_env} is not set: the {provider} provider needs an API key")
        self.provider, self.key, self.key_param, self.key_env = provider, key, key_param, key_env
        self.retry, self.limiter, self.auth_statuses = retry, limiter, auth_statuses
        self.client = httpx.Client(base_url=base_url, transport=transport, follow_redirects=False,
                                   timeout=httpx.Timeout(read_timeout, connect=connect_timeout))

    def close(self) -> None:
        self.client.close()

    def get_json(self, path: str, params: dict[str, Any] | None = None, *, symbol: str | None = None) -> Any:
        return self.retry.call(lambda: self._get_once(path, params or {}, symbol), f"{self.provider} {path}")

    def _get_once(self, path: str, params: dict[str, Any], symbol: str | None) -> Any:
        self.limiter.acquire()
        try:
            response = self.client.get(path, params={**params, self.key_param: self.key})
        except httpx.TimeoutException as exc:
            raise TransientProviderError(self.provider, f"timeout ({type(exc).__name__})", symbol=symbol) from None
        except httpx.TransportError as exc:
            raise TransientProviderError(self.provider, f"connection failed ({type(exc).__name__})",
                                         symbol=symbol) from None
        status = response.status_code
        if status in self.auth_statuses:
            raise AuthenticationError(self.provider, f"HTTP {status}: the API key in {self.key_env} was "
                                      "rejected", symbol=symbol, status=status)
        if status == 429 or status >= 500:
            raise TransientProviderError(self.provider, f"HTTP {status}", symbol=symbol, status=status,
                                         retry_after=parse_retry_after(response.headers.get("Retry-After")))
        if status == 404:
            raise UnknownSymbol(self.provider, f"HTTP 404 for {symbol or path}", symbol=symbol, status=status)
        if status >= 400:
            raise PermanentProviderError(self.provider, f"HTTP {status}", symbol=symbol, status=status)
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MalformedResponse(self.provider, f"malformed JSON for {symbol or path}", symbol=symbol,
                                    status=status) from None
