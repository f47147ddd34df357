"""structlog configuration, done once at the entry point (SPEC §10)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """JSON lines (production) or a console renderer, on stdout (SPEC §10).

    Context bound with `structlog.contextvars.bind_contextvars` (run_id, portfolio_id, as_of)
    is merged into every event.
    """
    renderer = structlog.processors.JSONRenderer() if log_format == "json" \
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    # httpx logs full request URLs (API keys are query parameters) at INFO: keep it quiet.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=structlog.PrintLoggerFactory(),  # sys.stdout looked up per logger
        cache_logger_on_first_use=False,
    )
