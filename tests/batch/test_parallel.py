"""The per-portfolio stage on local worker processes and on a Dask cluster gives the serial run's
results, records and counts (issue #6); a lost worker is reported, never silent.

Each test runs on SQLite and PostgreSQL through the real entry point, on the demo portfolios.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from batch import runner as runner_module
from batch.engines import ENGINES
from batch.runner import Executor, run_chunk_task
from models import BatchJobResult, BatchRun, PortfolioSnapshot
from tests.conftest import (
    RESULT_TABLES,
    assert_interrupted_with_whole_units,
    dump_results,
    process_env,
)

START, END = "2022-12-22", "2022-12-28"
SESSIONS = ["2022-12-22", "2022-12-23", "2022-12-27", "2022-12-28"]  # 2022-12-26: Christmas observed


def forget_results(engine) -> None:
    with Session(engine) as s, s.begin():
        for model in RESULT_TABLES:
            s.execute(delete(model))


def run_records(engine, run_id: str) -> tuple[BatchRun, dict[tuple, str]]:
    """The run's record and its job records: (as_of, portfolio_id, job) → status."""
    with Session(engine) as s:
        run = s.get(BatchRun, uuid.UUID(run_id))
        jobs = {(j.as_of_date, j.portfolio_id, j.job): j.status for j in s.scalars(
            select(BatchJobResult).where(BatchJobResult.run_id == uuid.UUID(run_id)))}
    return run, jobs


def test_workers_and_dask_reproduce_the_serial_run(seeded, engine) -> None:
    """Serial backfill → results A. Forget every result row, backfill again on 2 local worker
    processes → B; forget again, on a 2-worker Dask LocalCluster → C. A == B == C, and every
    run has the same counts and one record per (date, portfolio, job)."""
    serial = seeded("--start", START, "--end", END, "--json")
    assert serial.code == 0, serial.summary["failed_portfolios"]
    assert serial.summary["portfolios"] == {"succeeded": 4 * len(SESSIONS), "failed": 0, "skipped": 0}
    expected = dump_results(engine)
    _, serial_jobs = run_records(engine, serial.summary["run_id"])
    assert len(serial_jobs) == 4 * len(SESSIONS) * len(ENGINES) + 2 * len(SESSIONS) + 2

    for flags in (["--workers", "2"], ["--executor", "dask", "--workers", "2"]):
        forget_results(engine)
        with Session(engine) as s:
            assert s.scalar(select(func.count()).select_from(PortfolioSnapshot)) == 0
        result = seeded("--start", START, "--end", END, "--skip-sync", "--json", *flags)
        assert result.code == 0, (flags, result.summary["failed_portfolios"])
        assert result.summary["portfolios"] == serial.summary["portfolios"]
        for job in [e.name for e in ENGINES] + ["symbol_betas", "factor_correlations"]:
            assert result.summary["jobs"][job] == serial.summary["jobs"][job], (flags, job)
        assert dump_results(engine) == expected, flags
        run, jobs = run_records(engine, result.summary["run_id"])
        assert run.status == "success" and run.completed_units == run.total_units == 4 * len(SESSIONS)
        assert {k: v for k, v in jobs.items() if k[1] is not None} == \
            {k: v for k, v in serial_jobs.items() if k[1] is not None}, flags


class LosesFirstChunk(Executor):
    """Runs chunks in this process with the real worker entry point, except that the first
    chunk's worker is 'lost' before doing anything."""

    workers = 2

    def map(self, tasks, shared):
        for i, task in enumerate(tasks):
            yield task, RuntimeError("worker process died") if i == 0 else run_chunk_task(task, shared)

    def stop(self) -> None:
        return None


def test_a_lost_worker_fails_its_chunk_loudly_and_the_rest_commits(seeded, engine, monkeypatch) -> None:
    real_runner = runner_module.Runner

    def with_lossy_executor(*args, **kwargs):
        kwargs["executor"] = LosesFirstChunk()
        return real_runner(*args, **kwargs)

    monkeypatch.setattr("batch.cli.Runner", with_lossy_executor)
    result = seeded("--date", END, "--json")
    assert result.code == 1 and result.summary["status"] == "partial"
    # 4 portfolios, 2 workers → chunks of one portfolio; the first chunk is lost
    failed = result.summary["failed_portfolios"]
    assert result.summary["portfolios"] == {"succeeded": 3, "failed": 1, "skipped": 0}
    assert len(failed) == 1 and failed[0]["job"] == "worker" and "worker process died" in failed[0]["error"]
    lost = uuid.UUID(failed[0]["portfolio_id"])
    _, jobs = run_records(engine, result.summary["run_id"])
    assert jobs[(date(2022, 12, 28), lost, "worker")] == "failed"
    with Session(engine) as s:
        owners = set(s.scalars(select(PortfolioSnapshot.portfolio_id)))
        run = s.get(BatchRun, uuid.UUID(result.summary["run_id"]))
    assert lost not in owners and len(owners) == 3
    assert run.status == "partial" and run.exit_code == 1
    # the next (serial) run computes the lost portfolio; the others are complete
    monkeypatch.setattr("batch.cli.Runner", real_runner)
    again = seeded("--date", END, "--json")
    assert again.code == 0 and again.summary["portfolios"] == {"succeeded": 1, "failed": 0, "skipped": 3}


class FirstWorkerWithoutDatabase(Executor):
    """Runs chunks in this process with the real worker entry point; the first chunk's worker
    finds the database unreachable (a refused port), as in an outage."""

    workers = 2

    def map(self, tasks, shared):
        for i, task in enumerate(tasks):
            if i == 0:
                settings = dataclasses.replace(task.settings,
                                               database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
                task = dataclasses.replace(task, settings=settings)
            try:
                yield task, run_chunk_task(task, shared)
            except Exception as exc:
                yield task, exc

    def stop(self) -> None:
        return None


def test_a_database_error_in_a_worker_is_reported_as_itself(seeded, engine, monkeypatch) -> None:
    real_runner = runner_module.Runner
    monkeypatch.setattr("batch.cli.Runner",
                        lambda *a, **kw: real_runner(*a, **{**kw, "executor": FirstWorkerWithoutDatabase()}))
    result = seeded("--date", END, "--json")
    assert result.code == 1 and result.summary["portfolios"] == {"succeeded": 3, "failed": 1, "skipped": 0}
    [failed] = result.summary["failed_portfolios"]
    assert failed["job"] == "worker" and failed["error"].startswith("OperationalError: "), failed
    assert "port 1 failed" in failed["error"] and "worker lost" not in failed["error"]
    with Session(engine) as s:
        recorded = s.scalars(select(BatchJobResult.error).where(BatchJobResult.job == "worker")).all()
    assert recorded == [failed["error"]]


def test_impossible_executor_flags_exit_2(cli) -> None:
    for flags, message in ((["--workers", "0"], "--workers 0"),
                           (["--executor", "serial", "--workers", "3"], "cannot use --workers 3"),
                           (["--executor", "threads"], "invalid choice")):
        result = cli("--date", END, "--skip-sync", *flags)
        assert result.code == 2, flags
        assert message in result.err, (flags, result.err)



def _children(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.add(int(entry.name))
    return found


def _alive(pids: set[int], wait: float = 5.0) -> dict[int, str]:
    """The command lines of the processes in `pids` still running after `wait` seconds."""
    until = time.monotonic() + wait
    while True:
        alive = {}
        for pid in pids:
            try:
                if "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():
                    alive[pid] = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
            except OSError:
                continue
        if not alive or time.monotonic() > until:
            return alive
        time.sleep(0.2)


def _start_two_worker_backfill(database_url: str, tmp_path, units: int, stderr: int) -> subprocess.Popen:
    """Seed the demo, start a 2022 backfill on 2 local workers as a real process, and return it
    once `units` portfolio-dates have committed (its workers log on the job's stdout)."""
    env = process_env(DATABASE_URL=database_url)
    seed = subprocess.run([sys.executable, "-m", "batch", "seed-demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert seed.returncode == 0, seed.stderr
    proc = subprocess.Popen([sys.executable, "-m", "batch", "--start", "2022-01-03", "--end", "2022-12-28",
                             "--workers", "2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)
    deadline = time.monotonic() + 180
    seen = 0
    for line in proc.stdout:
        seen += '"portfolio_succeeded"' in line
        if seen >= units or time.monotonic() > deadline:
            break
    return proc


def test_sigterm_stops_the_workers_and_rolls_back_their_units(database_url, engine, tmp_path) -> None:
    """A backfill on 2 local workers, SIGTERM once a few units committed: exit 143, the run is
    `interrupted`, no worker process outlives the job, exactly the units recorded successful
    were committed, and the lock is free."""
    proc = _start_two_worker_backfill(database_url, tmp_path, units=6, stderr=subprocess.PIPE)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the job should be running worker processes"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    survivors = _alive(workers)
    assert not survivors, f"outlived the job: {survivors}"
    assert_interrupted_with_whole_units(engine, at_least=6)


def test_unreachable_dask_scheduler_exits_2_having_computed_nothing(seeded, engine, monkeypatch) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:9")
    result = seeded("--date", END, "--skip-sync")
    assert result.code == 2
    assert "Dask scheduler tcp://127.0.0.1:9 (DASK_SCHEDULER_ADDRESS) unreachable" in result.err
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(PortfolioSnapshot)) == 0
        assert s.scalar(select(func.count()).select_from(BatchRun)) == 0


def test_workers_die_with_a_killed_parent_and_commit_nothing_after(database_url, engine, tmp_path) -> None:
    """kill -9 of the job (what the OOM killer does to the biggest process) mid-backfill on 2 local
    workers: within seconds no process the job started is left, and no unit commits after the
    kill — work without the run lock would be a second writer once the next run starts."""
    proc = _start_two_worker_backfill(database_url, tmp_path, units=4, stderr=subprocess.DEVNULL)
    children = _children(proc.pid)
    assert len(children) >= 2, "the job should be running worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()

    def committed() -> int:
        with Session(engine) as s:
            return s.scalar(select(func.count()).select_from(PortfolioSnapshot))

    at_kill = committed()
    survivors = _alive(children)
    time.sleep(2)
    assert not survivors, f"outlived the job: {survivors}"
    assert committed() == at_kill, "units were committed after the job was killed"
    assert at_kill >= 4
