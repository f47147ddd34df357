"""Failure alerts (SPEC §11 `ALERT_WEBHOOK_URL`): when a run must be reported, and the
Slack-compatible message (`text` for notifications and plain webhooks, `blocks` for Slack's
layout) that says what happened. Pure: the facade posts the message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EXIT_LOCKED = 75  # another run held the lock: nothing was done, nothing to report
FAILURES_LISTED = 10  # failed portfolios shown in a message


@dataclass(frozen=True)
class AlertPolicy:
    """When a finished run is posted: always (`ALERT_ON=always`), or when it failed (exit ≠ 0
    and ≠ 75) or an alert condition holds — failed units ≥ `failed_share` of the units computed,
    a market-data sync that failed completely, longer than `slow_seconds`, a database error,
    sessions caught up."""

    always: bool = False
    failed_share: float = 0.5
    slow_seconds: float = 5400.0

    def reasons(self, summary: Mapping[str, Any]) -> list[str]:
        """Why `summary` must be reported (empty: it need not be, unless `always`)."""
        reasons = []
        code = summary.get("exit_code")
        if code not in (0, EXIT_LOCKED):
            reasons.append(f"exit code {code}")
        units = summary.get("portfolios") or {}
        computed = units.get("succeeded", 0) + units.get("failed", 0)
        if computed and units.get("failed", 0) / computed >= self.failed_share:
            reasons.append(f"{units['failed']} of {computed} portfolio-dates failed")
        if (summary.get("market_data") or {}).get("status") == "failed":
            reasons.append("market-data sync failed completely")
        if (summary.get("duration_seconds") or 0.0) > self.slow_seconds:
            reasons.append(f"ran {summary['duration_seconds']:.0f} s (alert above {self.slow_seconds:.0f} s)")
        if str(summary.get("error") or "").startswith("database error"):
            reasons.append("database error")
        if summary.get("catch_up"):
            reasons.append(f"caught up {len(summary['catch_up'])} missed session(s)")
        return reasons


def run_message(summary: Mapping[str, Any], reasons: list[str]) -> dict[str, Any]:
    """The message for a finished run: status and exit code, why it is reported, as-of dates,
    duration, units, the first FAILURES_LISTED failures (job and error), failed symbols, sessions
    caught up and freshness when the summary has them."""
    dates = summary.get("as_of_dates") or []
    span = "-" if not dates else (dates[0] if len(dates) == 1 else f"{dates[0]}..{dates[-1]}")
    units = summary.get("portfolios") or {}
    headline = (f"sigmasight-batch {summary.get('status')} (exit {summary.get('exit_code')}) as of {span}"
                + (f": {'; '.join(reasons)}" if reasons else ""))
    facts = [f"*run* `{summary.get('run_id')}`",
             f"*duration* {summary.get('duration_seconds')} s",
             f"*portfolio-dates* {units.get('succeeded', 0)} succeeded, {units.get('failed', 0)} failed, "
             f"{units.get('skipped', 0)} skipped"]
    failed_symbols = (summary.get("market_data") or {}).get("failed_symbols") or []
    if failed_symbols:
        facts.append(f"*failed symbols* ({len(failed_symbols)}) {', '.join(map(str, failed_symbols[:20]))}")
    if summary.get("catch_up"):
        facts.append(f"*caught up* {', '.join(map(str, summary['catch_up']))}")
    if summary.get("incomplete_sessions"):
        facts.append(f"*sessions still incomplete* {', '.join(summary['incomplete_sessions'])}")
    if summary.get("error"):
        facts.append(f"*error* {summary['error']}")
    failures = summary.get("failed_portfolios") or []
    lines = [f"• {f.get('portfolio_id') or 'global'} {f.get('as_of')} {f.get('job')}: {f.get('error')}"
             for f in failures[:FAILURES_LISTED]]
    if len(failures) > FAILURES_LISTED:
        lines.append(f"… and {len(failures) - FAILURES_LISTED} more")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(facts)}}]
    if lines:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*failures*\n" + "\n".join(lines)}})
    return {"text": headline, "blocks": blocks}


def not_started_message(error: str, exit_code: int, run_id: str | None = None) -> dict[str, Any]:
    """The message for a `run` that could not start (database unreachable, unmigrated...) or, with
    `run_id`, for a run that crashed."""
    what = "could not start" if run_id is None else f"run {run_id} crashed"
    headline = f"sigmasight-batch {what} (exit {exit_code}): {error}"
    return {"text": headline, "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": f"sigmasight-batch {what}"[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*exit code* {exit_code}\n*error* {error}"}}]}
