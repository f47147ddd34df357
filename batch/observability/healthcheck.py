"""Dead-man's-switch pings (SPEC §11 `HEALTHCHECK_URL`), in the healthchecks.io convention:
`<url>/start` when a run starts, `<url>/<exit code>` when it ends (0 = success). A monitoring
service that does not hear the end in time (the platform skipped the night, the process was
killed) raises the alarm itself."""

from __future__ import annotations


def ping_url(base: str, event: str | int) -> str:
    """`base` (trailing slashes ignored) followed by `/start` or `/<exit code>`."""
    return f"{base.rstrip('/')}/{event}"
