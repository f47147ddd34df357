"""Settings from the environment (SPEC §3), read once at the entry point and passed down."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from batch.errors import ConfigError

EMBEDDED_DB_FILENAME = "sigmasight.db"
PROVIDERS = ("sample", "yfinance", "fmp", "polygon")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ALERT_ON = ("failure", "always")


@dataclass(frozen=True)
class Secret:
    """A credential read from the environment (API key, DSN): `reveal()` hands it to the one
    client that needs it; `str`, `repr` and f-strings show only that it is set, so logs, error
    reports and the settings' own repr never carry it (SPEC §11)."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret('***')"


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = (env.get(name) or "").strip()
    return Secret(value) if value else None


@dataclass(frozen=True, repr=False)
class Settings:
    database_url: str  # shown masked (`safe_database_url`) by repr
    embedded_database: Path | None  # the SQLite file when DATABASE_URL is unset
    market_data_provider: str = "sample"
    fmp_api_key: Secret | None = None
    polygon_api_key: Secret | None = None
    risk_free_rate: float = 0.04  # annual, continuously compounded
    batch_timeout_seconds: float = 3600.0
    watchdog_grace_seconds: float = 300.0
    max_retry_attempts: int = 3
    max_retry_delay_seconds: float = 30.0  # total wait across one call's retries
    provider_timeout_seconds: float = 30.0  # read timeout per HTTP request (connect: 5 s)
    fmp_requests_per_minute: float = 60.0
    fmp_requests_per_day: int = 250  # FMP's free plan; counted per UTC day across runs
    polygon_requests_per_minute: float = 5.0  # Polygon's free plan
    yfinance_requests_per_minute: float = 60.0
    log_format: str = "json"
    log_level: str = "INFO"
    sentry_dsn: Secret | None = None
    sentry_monitor_slug: str = "sigmasight-batch"
    # SPEC §11: each integration off when unset; URLs that may carry a token are secrets
    alert_webhook_url: Secret | None = None
    alert_on: str = "failure"  # or "always": every run's outcome is posted
    alert_failed_share: float = 0.5  # alert when this fraction of the units or more failed
    alert_slow_seconds: float = 5400.0  # alert when a run takes longer
    prometheus_pushgateway_url: Secret | None = None
    healthcheck_url: Secret | None = None
    catch_up_sessions: int = 5  # a cron run first computes the recent sessions left incomplete
    dask_scheduler_address: str | None = None  # run the portfolio stage on this Dask cluster

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
        """Build settings from `env` (default: os.environ). Raises ConfigError naming the variable."""
        env = os.environ if env is None else env
        raw_url = (env.get("DATABASE_URL") or "").strip()
        if raw_url:
            database_url, embedded = normalise_database_url(raw_url), None
        else:
            embedded = (cwd or Path.cwd()) / EMBEDDED_DB_FILENAME
            database_url = f"sqlite:///{embedded}"
        provider = (env.get("MARKET_DATA_PROVIDER") or "sample").strip().lower()
        if provider not in PROVIDERS:
            raise ConfigError(f"MARKET_DATA_PROVIDER={provider!r} is not one of {', '.join(PROVIDERS)}")
        log_format = (env.get("LOG_FORMAT") or ("console" if sys.stdout.isatty() else "json")).lower()
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"LOG_FORMAT={log_format!r} is not one of {', '.join(LOG_FORMATS)}")
        log_level = (env.get("LOG_LEVEL") or "INFO").upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL={log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        return cls(
            database_url=database_url,
            embedded_database=embedded,
            market_data_provider=provider,
            fmp_api_key=_secret(env, "FMP_API_KEY"),
            polygon_api_key=_secret(env, "POLYGON_API_KEY"),
            risk_free_rate=_number(env, "RISK_FREE_RATE", 0.04, low=-0.05, high=1.0),
            batch_timeout_seconds=_number(env, "BATCH_TIMEOUT_SECONDS", 3600.0, low=0.0, high=7 * 86400),
            watchdog_grace_seconds=_number(env, "BATCH_WATCHDOG_GRACE_SECONDS", 300.0, low=1.0, high=86400.0),
            max_retry_attempts=int(_number(env, "MAX_RETRY_ATTEMPTS", 3, low=1, high=20, integer=True)),
            max_retry_delay_seconds=_number(env, "MAX_RETRY_DELAY_SECONDS", 30.0, low=0.0, high=3600.0),
            provider_timeout_seconds=_number(env, "PROVIDER_TIMEOUT_SECONDS", 30.0, low=1.0, high=600.0),
            fmp_requests_per_minute=_number(env, "FMP_REQUESTS_PER_MINUTE", 60.0, low=0.01, high=10_000.0),
            fmp_requests_per_day=int(_number(env, "FMP_REQUESTS_PER_DAY", 250, low=1, high=100_000_000,
                                             integer=True)),
            polygon_requests_per_minute=_number(env, "POLYGON_REQUESTS_PER_MINUTE", 5.0, low=0.01,
                                                high=10_000.0),
            yfinance_requests_per_minute=_number(env, "YFINANCE_REQUESTS_PER_MINUTE", 60.0, low=0.01,
                                                 high=10_000.0),
            log_format=log_format,
            log_level=log_level,
            sentry_dsn=_secret(env, "SENTRY_DSN"),
            sentry_monitor_slug=(env.get("SENTRY_MONITOR_SLUG") or "").strip() or "sigmasight-batch",
            alert_webhook_url=_secret(env, "ALERT_WEBHOOK_URL"),
            alert_on=_choice(env, "ALERT_ON", "failure", ALERT_ON),
            alert_failed_share=_number(env, "ALERT_FAILED_SHARE", 0.5, low=0.0, high=1.0),
            alert_slow_seconds=_number(env, "ALERT_SLOW_SECONDS", 5400.0, low=1.0, high=7 * 86400),
            prometheus_pushgateway_url=_secret(env, "PROMETHEUS_PUSHGATEWAY_URL"),
            healthcheck_url=_secret(env, "HEALTHCHECK_URL"),
            catch_up_sessions=int(_number(env, "CATCH_UP_SESSIONS", 5, low=0, high=60, integer=True)),
            dask_scheduler_address=(env.get("DASK_SCHEDULER_ADDRESS") or "").strip() or None,
        )

    def __repr__(self) -> str:
        """Every setting, the database password masked and credentials shown as `Secret('***')`."""
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["database_url"] = self.safe_database_url
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    __str__ = __repr__

    def secrets(self) -> list[str]:
        """Every credential configured: the Secret values and the database password."""
        values = [v.reveal() for v in vars(self).values() if isinstance(v, Secret)]
        password = make_url(self.database_url).password
        return values + ([str(password)] if password else [])

    @property
    def safe_database_url(self) -> str:
        """The database URL with any password masked, for logs and messages."""
        return make_url(self.database_url).render_as_string(hide_password=True)


SUPPORTED_DATABASE_URLS = ("postgresql+psycopg://user:pass@host:5432/db (postgres://, postgresql:// and "
                           "postgresql+psycopg2:// are read as psycopg 3), sqlite:///relative/path.db or "
                           "sqlite:////absolute/path.db")


def normalise_database_url(url: str, source: str = "DATABASE_URL") -> str:
    """Map `postgres://`, `postgresql://` and `postgresql+psycopg2://` (the forms platforms hand
    out) to the psycopg 3 driver. Raises ConfigError for any other dialect or driver, and for a
    SQLite URL with a host, naming `source` and the scheme (never the password)."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a non-numeric port raises here
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"{source} is not a valid database URL ({type(exc).__name__})") from None
    if parsed.drivername not in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        raise ConfigError(f"{source} scheme {parsed.drivername + '://'!r} is not supported: use "
                          f"{SUPPORTED_DATABASE_URLS}")
    if parsed.get_backend_name() == "sqlite" and (parsed.host or parsed.username or parsed.port):
        raise ConfigError(f"{source}: a SQLite URL has no host (got {parsed.host!r}): use "
                          "sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return url


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def _number(env: Mapping[str, str], name: str, default: float, *, low: float, high: float,
            integer: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}={raw!r} is not {kind}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} is outside [{low}, {high}]")
    return value
