"""Secrets never printed (SPEC §11): one masking rule for every channel — logs (a structlog
processor), error lines recorded in job records and summaries, and Sentry's events — plus the
process's own secrets (`remember`: the configured credentials and database password), masked as
literals wherever they appear."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter literal secrets are not searched for (they would mask ordinary words)

# scheme://user:password@  ->  scheme://user:***@ ;  scheme://token@  ->  scheme://***@ (a DSN's key)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:?#]*:)[^\s/@?#]+(?=@)")
_URL_TOKEN = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@:?#]+(?=@)")
_SECRET_WORDS = r"api[_-]?key|apikey|key|token|secret|passw(?:or)?d|pwd|dsn|auth|credentials?|signature"
# apikey=XYZ, ?token=XYZ, "password": "X Y", password: 'XYZ' (the name must end with the word)
_KEY_VALUE = re.compile(rf"(?i)(?P<head>\b[\w.-]*?(?:{_SECRET_WORDS})['\"]?\s*[=:]\s*)"
                        r"(?:\"[^\"]*\"|'[^']*'|[^\s'\"&,;)}\]]+)")
_SECRET_KEY_NAME = re.compile(rf"(?i)(?:{_SECRET_WORDS}|cookie)$")


def _mask_value(match: re.Match[str]) -> str:
    """`name=value` with its value masked, keeping the value's quotes."""
    quote = match.group(0)[len(match.group("head"))]
    return match.group("head") + (f"{quote}{MASK}{quote}" if quote in "'\"" else MASK)


def scrubber(secrets: Iterable[str] = (), *, url_tokens: bool = False) -> Callable[[Any], Any]:
    """A function masking secrets in a JSON-like value (dicts, lists, strings; anything else as is).

    Strings: URL credentials (`scheme://user:pw@` keeps the user; with `url_tokens` also
    `scheme://token@`, a DSN's key, keeps nothing),
    `name=value` / `name: value` pairs whose name ends like a key, token, secret, password, dsn or
    auth, and every literal of `secrets` (at least `MIN_SECRET_LENGTH` characters) become `***`.
    Mappings: the value of a key named like those is `***` whatever it is (None stays None).
    """
    literals = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def text(value: str) -> str:
        for literal in literals:
            value = value.replace(literal, MASK)
        value = _URL_PASSWORD.sub(rf"\g<head>{MASK}", value)
        if url_tokens:
            value = _URL_TOKEN.sub(rf"\g<head>{MASK}", value)
        return _KEY_VALUE.sub(_mask_value, value)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return text(value)
        if isinstance(value, Mapping):
            return {k: (MASK if value[k] is not None and isinstance(k, str) and _SECRET_KEY_NAME.search(k)
                        else scrub(value[k])) for k in value}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        return value

    return scrub



_process_scrub: Callable[[Any], Any] = scrubber()


def remember(secrets: Iterable[str]) -> None:
    """Mask these values (the run's credentials) from now on, wherever `redact` is applied."""
    global _process_scrub
    _process_scrub = scrubber(secrets)


def redact(value: Any) -> Any:
    """`value` with the remembered secrets, URL passwords and `name=value` secrets masked."""
    return _process_scrub(value)


def error_text(exc: BaseException) -> str:
    """`Type: message`, redacted: how an error is recorded (job records, summaries, logs)."""
    return redact(f"{type(exc).__name__}: {exc}")


def redact_event(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: every value of the event redacted (after exceptions are formatted)."""
    return {key: redact(value) for key, value in event.items()}
