"""`sigmasight-batch check`: the operators' preflight before enabling the cron (SPEC §2).

Every check reports ok / failed (or warning, which does not fail the preflight) with a detail
line that never contains a secret (passwords and API keys are masked).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from batch import calendar, db, repository
from batch.errors import ConfigError, DatabaseUnavailable, LockHeld
from batch.executors import CONNECT_TIMEOUT_SECONDS
from batch.providers import get_provider
from batch.settings import Settings

REQUIRED_PACKAGES = ("sqlalchemy", "psycopg", "pandas", "numpy", "scipy", "pandas_market_calendars",
                     "structlog", "tenacity", "alembic", "httpx", "prometheus_client")
KEY_VARIABLES = {"fmp": "FMP_API_KEY", "polygon": "POLYGON_API_KEY"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "failed", "warning"
    detail: str
    data: Any = None  # structured facts for `check --json` (freshness: per portfolio)


def run_checks(settings: Settings, engine: Engine, as_of: date) -> list[Check]:
    """All preflight checks, in order. Never raises for a failing check."""
    checks = [_python(), _packages(settings)]
    new_file = settings.embedded_database
    if new_file is not None and not new_file.exists():  # not created here: check only reads
        return checks + [
            Check("database", "ok", f"sqlite file {new_file} does not exist yet: the first run creates it"),
            Check("migrations", "ok", f"new embedded database: the first run creates the schema "
                                      f"({db.head_revision()})"),
            Check("run_lock", "ok", "free"),
            *_rest(settings, as_of)]
    database = _database(engine)
    checks.append(database)
    if database.status == "ok":
        migrations = _migrations(settings, engine)
        checks += [migrations, _lock(engine)]
        if migrations.status == "ok" and not db.is_empty(engine):
            checks.append(_freshness(engine, as_of))
    else:
        checks += [Check("migrations", "failed", "not checked: database unreachable"),
                   Check("run_lock", "failed", "not checked: database unreachable")]
    return checks + _rest(settings, as_of)


def _rest(settings: Settings, as_of: date) -> list[Check]:
    """The checks that do not need the database."""
    checks = [_provider(settings, as_of), _calendar(as_of)]
    if settings.dask_scheduler_address:
        checks.append(_dask(settings.dask_scheduler_address))
    return checks


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info >= (3, 11)
    return Check("python", "ok" if ok else "failed", f"Python {version}" + ("" if ok else " (3.11+ required)"))


def _packages(settings: Settings) -> Check:
    wanted = (list(REQUIRED_PACKAGES) + (["yfinance"] if settings.market_data_provider == "yfinance" else [])
              + (["sentry_sdk"] if settings.sentry_dsn is not None else []))
    missing = []
    for name in wanted:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        hint = "".join(f" (pip install '.[{extra}]')" for module, extra in (("yfinance", "yfinance"),
                                                                           ("sentry_sdk", "sentry"))
                       if module in missing)
        return Check("packages", "failed", f"cannot import: {', '.join(missing)}{hint}")
    return Check("packages", "ok", f"{len(wanted)} required packages importable")


def _database(engine: Engine) -> Check:
    try:
        db.check_reachable(engine)
    except DatabaseUnavailable as exc:
        return Check("database", "failed", str(exc))
    return Check("database", "ok", f"reachable: {db.describe(engine)}")


def _migrations(settings: Settings, engine: Engine) -> Check:
    head = db.head_revision()
    if settings.embedded_database is not None and db.is_empty(engine):
        return Check("migrations", "ok", f"new embedded database: the first run creates the schema ({head})")
    current = db.current_revision(engine)
    if current != head:
        return Check("migrations", "failed", f"at {current or 'none'}, head is {head}: run `sigmasight-batch init-db`")
    return Check("migrations", "ok", f"at head ({head})")


def _lock(engine: Engine) -> Check:
    try:
        with db.run_lock(engine):
            pass
    except LockHeld as exc:
        return Check("run_lock", "failed", f"{exc}: a run is in progress")
    return Check("run_lock", "ok", "free")


def _provider(settings: Settings, as_of: date) -> Check:
    name = settings.market_data_provider
    try:
        provider = get_provider(settings)
    except ConfigError as exc:
        return Check("provider", "failed", str(exc))
    coverage = provider.coverage()
    key = KEY_VARIABLES.get(name)
    detail = f"{name}" + (f" ({key} is set)" if key else "")
    if coverage is not None and not coverage[0] <= as_of <= coverage[1]:
        return Check("provider", "failed",
                     f"{detail}: the cron would refuse today ({as_of}): the offline data covers "
                     f"{coverage[0]}..{coverage[1]} only, so a run dated today exits 2 — set "
                     "MARKET_DATA_PROVIDER=yfinance|fmp|polygon for current prices (runs with --date inside "
                     "the data still work)")
    return Check("provider", "ok", detail)


def _freshness(engine: Engine, today: date) -> Check:
    """SPEC §11: per active portfolio, the last session with complete results (a snapshot); a
    warning when some are more than one session behind the latest session on or before `today`
    (the previous night's run should have computed it)."""
    latest = calendar.session_on_or_before(today)
    with Session(engine) as s:
        last = repository.last_complete_sessions(s)
    behind = {str(pid): (day.isoformat() if day else None) for pid, day in last.items()
              if day is None or calendar.session_offset(day, latest) > 1}
    data = {"latest_session": latest.isoformat(), "portfolios": len(last), "behind": len(behind),
            "last_complete": {str(pid): day.isoformat() if day else None for pid, day in last.items()}}
    if not last:
        return Check("freshness", "ok", "no active portfolio", data)
    days = [d for d in last.values() if d is not None]
    span = f"{min(days)}..{max(days)}" if days else "none"
    detail = (f"{len(last)} active portfolios, last complete sessions {span}; {len(behind)} more than one session "
              f"behind {latest}")
    return Check("freshness", "warning" if behind else "ok", detail, data)


def _dask(address: str, timeout_seconds: float = CONNECT_TIMEOUT_SECONDS) -> Check:
    """The Dask scheduler of DASK_SCHEDULER_ADDRESS answers and has workers."""
    try:
        from distributed import Client  # noqa: PLC0415 - optional dependency
    except ImportError:
        return Check("dask", "failed", "DASK_SCHEDULER_ADDRESS is set but the distributed package is "
                                       "missing: pip install 'sigmasight-batch[dask]'")
    try:
        with Client(address, timeout=timeout_seconds) as client:
            workers = len(client.scheduler_info().get("workers", {}))
    except (OSError, TimeoutError) as exc:
        return Check("dask", "failed", f"scheduler {address} unreachable: {type(exc).__name__}")
    if workers == 0:
        return Check("dask", "failed", f"scheduler {address} has no workers")
    return Check("dask", "ok", f"scheduler {address}: {workers} workers")


def _calendar(as_of: date) -> Check:
    first, last = calendar.covered_range()
    need_from, need_to = date(as_of.year, 1, 1), date(as_of.year + 1, 12, 31)
    if first > need_from or last < need_to:
        return Check("calendar", "failed", f"NYSE calendar covers {first}..{last}, need {need_from}..{need_to}")
    sessions = len(calendar.trading_days(date(as_of.year + 1, 1, 1), need_to))
    if sessions < 240:
        return Check("calendar", "failed", f"only {sessions} NYSE sessions known for {as_of.year + 1}")
    return Check("calendar", "ok", f"NYSE sessions known through {need_to} ({sessions} in {as_of.year + 1})")


def as_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    return [{"name": c.name, "status": c.status, "detail": c.detail, **({"data": c.data} if c.data else {})}
            for c in checks]
