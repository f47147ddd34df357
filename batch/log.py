"""structlog configuration, done once at the entry point (SPEC §10)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from batch.redact import redact_event


def silence_stdout() -> None:
    """Send the rest of this process's stdout to /dev/null (after a write failed: a closed pipe, a
    full disk). The descriptor itself is redirected, so output still buffered in `sys.stdout` is
    flushed there too and the interpreter's exit flush cannot fail; a stdout without a descriptor
    is replaced."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):  # no descriptor (e.g. a capture object)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (kept open for the process)


class _StdoutLogger(structlog.PrintLogger):
    """Prints to the current `sys.stdout`; a write that fails silences stdout instead of raising.
    Logs are not the job: a broken log collector must not stop the run nor its bookkeeping."""

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except (OSError, ValueError):  # EPIPE, ENOSPC, EFBIG; ValueError: stdout closed
            silence_stdout()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _LibraryHandler(logging.Handler):
    """Stdlib `logging` records of libraries (psycopg, SQLAlchemy's pool, Dask...) rendered by the
    job's own structlog renderer onto the same failure-proof stdout, so a library warning is a
    JSON line with `run_id`, never plain text on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # noqa: BLE001 a record that cannot be formatted is dropped, not raised
            return
        _StdoutLogger().msg(message)


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """JSON lines (production) or a console renderer, on stdout (SPEC §10).

    Context bound with `structlog.contextvars.bind_contextvars` (run_id, portfolio_id, as_of)
    is merged into every event. A failing stdout is silenced, never raised (`_StdoutLogger`).
    """
    renderer = structlog.processors.JSONRenderer() if log_format == "json" \
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    handler = _LibraryHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_logger_name,
                           structlog.stdlib.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True),
                           structlog.processors.format_exc_info, redact_event]))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _LibraryHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, getattr(logging, level)))  # libraries: warnings and worse
    # httpx logs full request URLs (API keys are query parameters) at INFO: keep it quiet.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_event,  # SPEC §11: no secret in any log line
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=lambda *_: _StdoutLogger(),  # sys.stdout looked up per write
        cache_logger_on_first_use=False,
    )
