"""`sigmasight-batch` command line (SPEC §2). The clock and the environment are read here, once."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from batch import __version__, calendar, db, redact, repository
from batch.check import as_dicts, run_checks
from batch.demo import seed_demo
from batch.errors import (
    ConfigError,
    CoverageError,
    DatabaseUnavailable,
    Interrupted,
    LockHeld,
)
from batch.executors import EXECUTORS, make_executor
from batch.log import configure_logging, silence_stdout
from batch.observability import Observers
from batch.plan import DEFAULT_CHUNK_SIZE, RunRequest
from batch.providers import MarketDataProvider, NotFetching, get_provider
from batch.runner import Runner
from batch.settings import Settings
from models import BatchRun

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75
COMMANDS = ("run", "init-db", "seed-demo", "check", "history")
EXIT_CODES_HELP = """exit codes:
  0        every selected portfolio succeeded, or the run was skipped (not an NYSE session)
  1        the run finished but a portfolio or a global step failed; the summary names them
  2        usage or configuration error (bad flag or date, unknown portfolio id, unreachable
           or unmigrated database, date outside the provider's data): nothing was computed
  75       another run holds the run lock: nothing was done
  130/143  interrupted by SIGINT/SIGTERM: the chunk in flight was rolled back"""
log = structlog.get_logger()


def _iso_date(text: str) -> date:
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in YYYY-MM-DD form") from None


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a portfolio UUID") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; each command's parser is in its namespace as `command_parser`."""
    parser = argparse.ArgumentParser(
        prog="sigmasight-batch", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Nightly portfolio-risk batch: sync market data, then value and snapshot every\n"
                    "portfolio. `run` is the default command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the daily job (default)", epilog=EXIT_CODES_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--date", type=_iso_date, metavar="YYYY-MM-DD",
                     help="as-of date (default: today in America/New_York)")
    run.add_argument("--start", type=_iso_date, metavar="YYYY-MM-DD",
                     help="backfill: first date (with --end)")
    run.add_argument("--end", type=_iso_date, metavar="YYYY-MM-DD",
                     help="backfill: last date (with --start)")
    run.add_argument("--force", action="store_true",
                     help="run on a non-session date (as of the previous session) and recompute "
                          "dates that already have results")
    run.add_argument("--portfolio", type=_uuid, action="append", default=[], metavar="UUID",
                     help="restrict to this portfolio (repeatable)")
    run.add_argument("--skip-sync", action="store_true", help="use prices and profiles already stored")
    run.add_argument("--skip-profiles", action="store_true", help="do not sync company profiles")
    run.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="run the per-portfolio stage on N local worker processes (default 1: in this "
                          "process); with --executor dask and no DASK_SCHEDULER_ADDRESS, the size of a "
                          "local Dask cluster")
    run.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="K",
                     help=f"portfolio-dates written per transaction (default {DEFAULT_CHUNK_SIZE}): each "
                          "unit is whole or absent, and an interruption loses at most the K in flight")
    run.add_argument("--executor", choices=EXECUTORS, default=None,
                     help="where the per-portfolio stage runs (default: dask if DASK_SCHEDULER_ADDRESS "
                          "is set, processes if --workers > 1, else serial)")
    run.add_argument("--trigger", choices=("manual", "cron"), default="manual", help=argparse.SUPPRESS)
    sub.add_parser("init-db", help="create or upgrade the schema (Alembic migrations)")
    sub.add_parser("seed-demo", help="load the four demo portfolios (idempotent)")
    check = sub.add_parser("check", help="preflight checks")
    check.add_argument("--json", action="store_true")
    history = sub.add_parser("history", help="recent runs and their outcome")
    history.add_argument("--limit", type=_positive_int, default=10, metavar="N",
                         help="the N latest runs (default 10)")
    history.add_argument("--json", action="store_true")
    for command_parser in sub.choices.values():
        command_parser.set_defaults(command_parser=command_parser)
    parser.epilog = f"`run` is the default command: `sigmasight-batch [run] [options]`.\n\n{run.format_help()}"
    return parser


def _did_you_mean(unknown: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """' (did you mean --date?)' for the first unknown word close to an option of `parser` (or,
    for a word without dashes, to a command); '' when none is close."""
    actions = parser._actions  # noqa: SLF001 - argparse has no public list of a parser's options
    options = [o for a in actions if a.help != argparse.SUPPRESS for o in a.option_strings]
    for word in unknown:
        name = word.split("=", 1)[0]
        close = difflib.get_close_matches(name, options if name.startswith("-") else COMMANDS, n=1)
        if close:
            return f" (did you mean {close[0]}?)" if name.startswith("-") else \
                f" (did you mean the command {close[0]!r}?)"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (SPEC §2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
            parser.error(f"unknown command {argv[0]!r}{_did_you_mean(argv[:1], parser)}; "
                         f"commands: {', '.join(COMMANDS)}")
        if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
            argv = ["run", *argv]
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # reported under the command's own usage, with the closest option
            args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}"
                                      f"{_did_you_mean(unknown, args.command_parser)}")
    except SystemExit as exc:  # argparse: usage errors exit 2, --help and --version exit 0
        return int(exc.code or 0)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return _usage_error(str(exc))
    redact.remember(settings.secrets())  # masked in every log line and recorded error from here on
    configure_logging(settings.log_format, settings.log_level)
    structlog.contextvars.clear_contextvars()
    # SPEC §11: a `run` is reported to the configured integrations, even when it cannot start
    observers = Observers(settings) if args.command == "run" else None
    try:
        return _command(args, settings, observers)
    except Exception as exc:  # nothing else caught it: reported, then raised as before
        if observers is not None:
            observers.crashed(exc)
        raise
    finally:
        if observers is not None:
            observers.close()


def _not_started(observers: Observers | None, message: str, code: int) -> int:
    """A `run` that could not start: reported (SPEC §11); returns `code`."""
    if observers is not None:
        observers.run_not_started(message, code)
    return code


def _command(args: argparse.Namespace, settings: Settings, observers: Observers | None) -> int:
    """The command of `args` with `settings`; returns the exit code."""
    engine: Engine | None = None
    # Only commands that write may create a SQLite file: init-db always, run and seed-demo the
    # embedded default ("created on first use"). check and history never create a database.
    creates = args.command == "init-db" or (settings.embedded_database is not None
                                            and args.command in ("run", "seed-demo"))
    try:
        engine = db.make_engine(settings.database_url, create=creates)
        if args.command == "run":
            return _run(args, settings, engine, observers)
        if args.command == "check":
            return _check(settings, engine, args.json)
        if args.command == "init-db":
            db.check_reachable(engine)
            db.migrate(engine)
            with Session(engine) as s, s.begin():
                repository.ensure_factor_definitions(s, settings.market_data_provider)
                repository.ensure_stress_scenarios(s)
            print(f"schema at migration {db.head_revision()} on {db.describe(engine)}")
            return EXIT_OK
        if args.command == "history" and settings.embedded_database is not None \
                and not settings.embedded_database.exists():
            print("[]" if args.json else f"no runs recorded: {settings.embedded_database} does not exist yet")
            return EXIT_OK
        _open_database(settings, engine, create=creates)
        if args.command == "seed-demo":
            with Session(engine) as s, s.begin():
                counts = seed_demo(s)
                repository.ensure_factor_definitions(s, settings.market_data_provider)
                repository.ensure_stress_scenarios(s)
            print(f"demo data: {counts['portfolios']} portfolios, {counts['positions']} positions")
            return EXIT_OK
        if args.command == "history":
            return _history(engine, args.limit, args.json)
        raise AssertionError(args.command)
    except (ConfigError, CoverageError, DatabaseUnavailable, NotImplementedError) as exc:
        return _not_started(observers, str(exc), _usage_error(str(exc)))
    except LockHeld as exc:
        log.warning("run_lock_held", detail=str(exc))
        print(f"sigmasight-batch: {exc}; nothing was done", file=sys.stderr)
        return EXIT_LOCKED
    except Interrupted as exc:
        return _not_started(observers, f"interrupted by signal {exc.signum}", exc.exit_code)
    except db.DATABASE_ERRORS as exc:  # the database failed mid-command
        message = (f"database error on {db.describe(engine) if engine is not None else settings.safe_database_url}: "
                   f"{db.describe_error(exc)}")
        print(f"sigmasight-batch: error: {message}", file=sys.stderr)
        return _not_started(observers, message, EXIT_FAILED)
    finally:
        if engine is not None:
            engine.dispose()


def _usage_error(message: str) -> int:
    print(f"sigmasight-batch: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _open_database(settings: Settings, engine: Engine, create: bool = True) -> None:
    """Reach the database; with `create`, create the schema of a brand-new embedded file; else
    require head."""
    db.check_reachable(engine)
    if create and settings.embedded_database is not None and db.create_if_empty(engine):
        log.info("database_created", path=str(settings.embedded_database), revision=db.head_revision())
        return
    db.require_current_schema(engine)


def resolve_request(args: argparse.Namespace, today: date, catch_up_sessions: int = 0) -> RunRequest:
    """Turn the run flags into the sessions to compute. Raises ConfigError for bad combinations.
    A cron run without --date or --start also looks back `catch_up_sessions` sessions (SPEC §11)."""
    if args.date and (args.start or args.end):
        raise ConfigError("use either --date or --start/--end, not both")
    if bool(args.start) != bool(args.end):
        raise ConfigError("--start and --end go together")
    if args.chunk_size < 1:
        raise ConfigError(f"--chunk-size {args.chunk_size} must be at least 1 (portfolio-dates per transaction)")
    common = dict(force=args.force, portfolio_ids=list(dict.fromkeys(args.portfolio)),
                  skip_sync=args.skip_sync, skip_profiles=args.skip_profiles, trigger=args.trigger,
                  chunk_size=args.chunk_size,
                  catch_up_sessions=catch_up_sessions if args.trigger == "cron" and not (args.date or args.start) else 0)
    if args.start:
        if args.start > args.end:
            raise ConfigError(f"--start {args.start} is after --end {args.end}")
        sessions = calendar.trading_days(args.start, args.end)
        return RunRequest(sessions, args.start, args.end,
                          skip_reason=None if sessions else "not_a_trading_day", **common)
    day = args.date or today
    if calendar.is_trading_day(day):
        return RunRequest([day], day, day, **common)
    if args.force:
        return RunRequest([calendar.session_on_or_before(day)], day, day, **common)
    return RunRequest([], day, day, skip_reason="not_a_trading_day", **common)


def check_coverage(provider: MarketDataProvider, dates: Sequence[date]) -> None:
    coverage = provider.coverage()
    if coverage is None or not dates:
        return
    outside = [d for d in dates if not coverage[0] <= d <= coverage[1]]
    if outside:
        raise CoverageError(
            f"as-of {outside[0]} is outside the '{provider.name}' provider's data "
            f"({coverage[0]}..{coverage[1]}); pick a date in that range with --date, or set "
            "MARKET_DATA_PROVIDER=yfinance|fmp|polygon (with its API key) for current prices")


def _run(args: argparse.Namespace, settings: Settings, engine: Engine, observers: Observers | None) -> int:
    run_id = uuid.uuid4()  # bound now so every event of the run carries it
    structlog.contextvars.bind_contextvars(run_id=str(run_id))
    try:
        request = resolve_request(args, calendar.new_york_today(datetime.now(UTC)), settings.catch_up_sessions)
    except ValueError as exc:  # calendar input errors (e.g. a date beyond its coverage)
        raise ConfigError(str(exc)) from None
    if request.skip_sync and settings.market_data_provider != "sample":
        provider: MarketDataProvider = NotFetching(settings.market_data_provider)  # no key needed
    else:
        provider = get_provider(settings)
    check_coverage(provider, request.as_of_dates)
    _open_database(settings, engine, create=settings.embedded_database is not None)
    if request.portfolio_ids:
        with Session(engine) as s:
            unknown = repository.unknown_portfolio_ids(s, request.portfolio_ids)
        if unknown:
            raise ConfigError(f"unknown portfolio id(s): {', '.join(map(str, unknown))}")
    executor = make_executor(args.executor, args.workers, settings.dask_scheduler_address)
    try:
        summary = Runner(settings, engine, provider, executor=executor, observers=observers).run(request, run_id)
    finally:
        close = getattr(provider, "close", None)  # network providers hold an HTTP client
        if close is not None:
            close()
    if observers is not None:  # before the summary, which stays the last line of stdout
        observers.run_finished(summary)
    try:
        if args.json:
            print(json.dumps(summary))
        else:
            _print_summary(summary)
        sys.stdout.flush()
    except OSError:  # a broken stdout (closed pipe, full disk): the outcome is recorded anyway
        silence_stdout()
    if summary.get("error"):  # the run stopped outside a unit (e.g. its database failed)
        print(f"sigmasight-batch: error: run {summary['run_id']} stopped: {summary['error']}", file=sys.stderr)
    return summary["exit_code"]


def _print_summary(summary: dict[str, Any]) -> None:
    p = summary["portfolios"]
    dates = summary["as_of_dates"]
    span = f"{dates[0]}..{dates[-1]}" if len(dates) > 1 else (dates[0] if dates else "-")
    print(f"run {summary['run_id']}: {summary['status']} (exit {summary['exit_code']}) as of {span}; "
          f"portfolios {p['succeeded']} succeeded, {p['failed']} failed, {p['skipped']} skipped; "
          f"{summary['duration_seconds']}s")
    for job, counts in summary.get("jobs", {}).items():
        print(f"  {job:<20} " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    for failure in summary["failed_portfolios"]:
        print(f"  failed: {failure.get('portfolio_id') or 'global'} {failure['job']}: {failure['error']}")


def _check(settings: Settings, engine: Engine, as_json: bool) -> int:
    checks = run_checks(settings, engine, calendar.new_york_today(datetime.now(UTC)))
    passed = all(c.status != "failed" for c in checks)
    if as_json:
        print(json.dumps({"ok": passed, "checks": as_dicts(checks)}))
    else:
        for c in checks:
            print(f"[{ {'ok': 'ok', 'failed': 'FAIL', 'warning': 'warn'}[c.status]:>4}] {c.name:<11} {c.detail}")
        print("preflight passed" if passed else "preflight FAILED")
    return EXIT_OK if passed else EXIT_FAILED


def _run_state(run: BatchRun) -> str:
    """The recorded status, except that a run that ended without recording its end (killed, or
    its database failed) is reported `abandoned`: a `running` record whose process is gone (same
    host, pid not alive), or one the next run closed (`failed`, reason `abandoned`)."""
    if run.status == "failed" and (run.summary or {}).get("reason") == "abandoned":
        return "abandoned"
    if run.status != "running" or run.hostname != socket.gethostname():
        return run.status
    try:
        os.kill(run.pid, 0)
    except ProcessLookupError:
        return "abandoned"
    except PermissionError:  # alive, owned by another user
        return run.status
    return run.status


def _history(engine: Engine, limit: int, as_json: bool) -> int:
    with Session(engine) as s:
        runs = s.scalars(select(BatchRun).order_by(BatchRun.started_at.desc()).limit(limit)).all()
    rows = [{
        "run_id": str(r.id), "started_at": r.started_at.isoformat(),
        "finished_at": r.finished_at.isoformat() if r.finished_at else None, "status": _run_state(r),
        "trigger": r.trigger, "as_of_start": r.as_of_start.isoformat() if r.as_of_start else None,
        "as_of_end": r.as_of_end.isoformat() if r.as_of_end else None,
        "units": f"{r.completed_units}/{r.total_units}", "exit_code": r.exit_code,
        "host": f"{r.hostname}:{r.pid}",
    } for r in runs]
    if as_json:
        print(json.dumps(rows))
        return EXIT_OK
    print(f"{'started (UTC)':<20} {'status':<12} {'exit':>4} {'as of':<23} {'units':>9}  run id")
    for r in rows:
        span = r["as_of_start"] if r["as_of_start"] == r["as_of_end"] else f"{r['as_of_start']}..{r['as_of_end']}"
        print(f"{r['started_at'][:19]:<20} {r['status']:<12} {str(r['exit_code'] if r['exit_code'] is not None else '-'):>4} "
              f"{span or '-':<23} {r['units']:>9}  {r['run_id']}")
    return EXIT_OK
