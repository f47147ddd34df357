"""Delivering to a third party within a bound (SPEC §11: at most INTEGRATION_TIMEOUT_SECONDS per
call, never retried): a call on a thread of its own that the run waits for only so long."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx


def bounded(send: Callable[[], Any], seconds: float) -> Any:
    """`send()` on a thread of its own, waited for at most `seconds`: its result, or its error
    raised here, or TimeoutError when it has not returned by then (the thread is abandoned — a
    daemon, it never holds the process up)."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = send()
        except BaseException as exc:  # noqa: BLE001 handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=call, name="integration", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def post(url: str, seconds: float, *, json: Any = None, content: str | None = None) -> None:
    """POST to `url`, bounded by `seconds` in all; raise for a status ≥ 400 (naming only the
    status, never the URL: it may carry a token)."""
    def send() -> None:
        response = httpx.post(url, json=json, content=content, timeout=seconds)
        if response.status_code >= 400:
            raise RuntimeError(f"HTTP {response.status_code}")

    bounded(send, seconds)
