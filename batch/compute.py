"""Computing a chunk of (portfolio, as-of date) units in memory (SPEC §7): the chunk's loaded
inputs go through the engines in registration order, each engine over every unit of the chunk
at once, and each unit ends as a `UnitResult` (batch/persist.py) — its staged rows and job
records, or only its records when it failed or was skipped. Nothing is read or written here;
the run's stop check and clock come in as `Hooks` (batch/stopping.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import structlog

from batch import repository
from batch.db import describe_error
from batch.engines import Chunk, DateContext, Engine, Unit, skipped_result
from batch.errors import Interrupted, InvalidInputRow
from batch.redact import error_text
from batch.persist import Failure, JobRecord, Replacement, UnitResult, rolled_back
from batch.settings import Settings
from batch.stopping import Hooks

log = structlog.get_logger()


@dataclass
class _UnitWork:
    """One unit while its chunk is computed: the unit (None when its inputs were not loaded),
    the job records so far, engine → the failure it inherits, and its first failure."""

    portfolio: repository.PortfolioRow
    started: float
    broken: dict[str, str]
    unit: Unit | None = None
    records: list[JobRecord] = field(default_factory=list)
    failure: Failure | None = None


def compute_chunk(engines: Sequence[Engine], settings: Settings, as_of: date,
                  chunk: Sequence[repository.PortfolioRow], complete: set[uuid.UUID] | frozenset[uuid.UUID],
                  shared: DateContext | None,
                  inputs: dict[uuid.UUID, repository.UnitInputs | InvalidInputRow],
                  load_error: str | None, hooks: Hooks) -> list[UnitResult]:
    """Compute the (portfolio, as_of) units of `chunk` in memory, in chunk order. `inputs`: each
    unit's loaded inputs (a unit missing from it fails as job `unit` with `load_error`, why the
    chunk's inputs could not be read); `shared`: the date's context (None only when every unit
    is `complete`).

    A unit with results already (`complete`, no --force) is skipped; one with a stored input row
    that cannot be used (`InvalidInputRow`) fails as job `inputs`, nothing computed. The others go
    through `engines` in order, each engine over all of them at once (`_run_engine`). A unit's
    first failure loses it: nothing of it is written, its engines after it are recorded `skipped`
    (`upstream_failed` if they depend on it, else `rolled_back`) and those that had succeeded
    become `skipped` (`rolled_back`). Engines depending on a failed global engine are skipped with
    `upstream_failed` and the unit fails (the next run computes it again)."""
    results: dict[uuid.UUID, UnitResult] = {}
    live: list[_UnitWork] = []
    for portfolio in chunk:
        if portfolio.id in complete:  # results exist and no --force
            results[portfolio.id] = UnitResult(portfolio.id, "skipped", tuple(
                JobRecord(e.name, "skipped", 0, None, skipped_result(
                    e.name, portfolio, as_of, None, "already_complete",
                    "results exist for this date; use --force to recompute"))
                for e in engines))
            continue
        assert shared is not None, "the date step runs whenever a unit of the date needs computing"
        unit_inputs = inputs.get(portfolio.id)
        invalid = unit_inputs if isinstance(unit_inputs, InvalidInputRow) else portfolio.invalid
        if invalid is not None:
            failure = Failure("inputs", str(invalid))
            results[portfolio.id] = UnitResult(
                portfolio.id, "failed", (JobRecord("inputs", "failed", 0, failure.error),), failure=failure)
            continue
        work = _UnitWork(portfolio, hooks.monotonic(), {name: name for name in shared.failed})
        if unit_inputs is None:
            work.failure = Failure("unit", f"RuntimeError: inputs not loaded: {load_error}")
        else:
            work.unit = Unit(portfolio, as_of, unit_inputs)
        live.append(work)
    if live:
        log.info("chunk_computing", as_of=as_of.isoformat(), units=len(live))
    for engine in engines:
        hooks.check_stop()
        runnable = [w for w in live if _ready(engine, w, as_of, shared)]
        if runnable:
            assert shared is not None
            _run_engine(engine, settings, shared, runnable, hooks)
    for work in live:
        results[work.portfolio.id] = _unit_result(work, hooks)
    return [results[p.id] for p in chunk]


def deadline_skips(engines: Sequence[Engine], as_of: date,
                   portfolios: Sequence[repository.PortfolioRow]) -> list[UnitResult]:
    """Past the soft deadline: every unit of `portfolios` skipped (`deadline`), each engine
    recorded `skipped` with its skip payload."""
    return [UnitResult(p.id, "skipped", tuple(
        JobRecord(e.name, "skipped", 0, "deadline",
                  skipped_result(e.name, p, as_of, None, "deadline", "run deadline passed"))
        for e in engines), deadline=True) for p in portfolios]


def _ready(engine: Engine, work: _UnitWork, as_of: date, shared: DateContext | None) -> bool:
    """Whether `engine` runs for the unit; if not, record why (its skip payload)."""
    if work.unit is None:
        return False
    root = next((work.broken[d] for d in engine.depends_on if d in work.broken), None)
    held = len(work.unit.held)
    if root is None and work.failure is not None:  # the unit is lost: do not compute
        work.records.append(JobRecord(engine.name, "skipped", 0, f"rolled_back: {work.failure.job} failed",
                                      skipped_result(engine.name, work.portfolio, as_of, held,
                                                     "rolled_back", f"{work.failure.job} failed")))
        return False
    if root is not None:
        work.broken[engine.name] = root
        work.records.append(JobRecord(engine.name, "skipped", 0, f"upstream_failed: {root}",
                                      skipped_result(engine.name, work.portfolio, as_of, held,
                                                     "upstream_failed", f"{root} failed")))
        # a failed global step leaves this portfolio-date incomplete: it fails so that the
        # next run computes it again
        if shared is not None and root in shared.failed and work.failure is None:
            work.failure = Failure(engine.name, f"upstream_failed: {root}: {shared.failed[root]}")
        return False
    return True


def _run_engine(engine: Engine, settings: Settings, shared: DateContext, units: list[_UnitWork],
                hooks: Hooks) -> None:
    """Run `engine` over `units` and record each unit's outcome or error: all of them in one
    call (one `Chunk`), its milliseconds shared out among the units' records (the shares summing
    to the whole); if that call raises, it is run again for each unit alone, so only the units it
    fails for fail."""
    if len(units) > 1:
        t0 = hooks.monotonic()
        try:
            outcomes = engine.run(Chunk(settings, shared, [w.unit for w in units]))
        except Interrupted:
            raise
        except Exception as exc:
            hooks.raise_if_stopping(exc)
            log.warning("chunk_engine_failed", job=engine.name, error=describe_error(exc), units=len(units))
        else:
            share, rest = divmod(hooks.ms(t0), len(units))
            for k, (work, outcome) in enumerate(zip(units, outcomes, strict=True)):
                work.records.append(JobRecord(engine.name, outcome.status, share + (k < rest), None, outcome.result))
            return
    for work in units:
        hooks.check_stop()
        structlog.contextvars.bind_contextvars(portfolio_id=str(work.portfolio.id))
        t0 = hooks.monotonic()
        try:
            [outcome] = engine.run(Chunk(settings, shared, [work.unit]))
        except Interrupted:
            raise
        except Exception as exc:
            hooks.raise_if_stopping(exc)
            error = error_text(exc)
            log.exception("engine_failed", job=engine.name)
            work.broken[engine.name] = engine.name
            work.failure = work.failure or Failure(engine.name, error)
            work.records.append(JobRecord(engine.name, "failed", hooks.ms(t0), error))
            continue
        finally:
            structlog.contextvars.unbind_contextvars("portfolio_id")
        work.records.append(JobRecord(engine.name, outcome.status, hooks.ms(t0), None, outcome.result))


def _unit_result(work: _UnitWork, hooks: Hooks) -> UnitResult:
    """What a computed unit leaves: its staged rows and records, or, when it failed, only its
    records (the successful ones turned `rolled_back`)."""
    if work.failure is not None:
        duration_ms = hooks.ms(work.started)
        return UnitResult(work.portfolio.id, "failed", rolled_back(work.records, work.failure, duration_ms),
                          failure=work.failure, duration_ms=duration_ms)
    assert work.unit is not None
    writes = tuple(Replacement(table, key, rows) for table, (key, rows) in work.unit.writes.items())
    return UnitResult(work.portfolio.id, "succeeded", tuple(work.records), writes,
                      duration_ms=hooks.ms(work.started))
