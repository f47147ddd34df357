"""Named exceptions of the shell. Each carries the offending value and where it came from."""

from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A setting or command-line value is invalid (exit code 2)."""


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or is not migrated (exit code 2)."""


class CoverageError(ValueError):
    """The configured provider has no data for the requested as-of date (exit code 2)."""


class LockHeld(RuntimeError):
    """Another run holds the run lock (exit code 75)."""


class WorkerLost(RuntimeError):
    """A worker process (or Dask worker) died under its chunk; the message says how."""


class Interrupted(BaseException):
    """Raised from the SIGINT/SIGTERM/SIGHUP handler to unwind the chunk in progress.

    A BaseException so that engine code catching `Exception` cannot swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal: 130 for SIGINT, 143 for SIGTERM; SIGHUP (a closed terminal or a
        supervisor's stop) is treated as SIGTERM, 143."""
        return 128 + (signal.SIGTERM if self.signum == signal.SIGHUP else self.signum)


class InvalidInputRow(ValueError):
    """A stored input row the batch cannot use (a value of the wrong type, NaN, an infinite
    date...). It fails its portfolio alone (SPEC §7). `where` names the row (`position <id>`),
    `column` the column, `value` the stored value as read."""

    def __init__(self, where: str, column: str, value: object, problem: str) -> None:
        super().__init__(where, column, value, problem)  # all in args: the exception pickles
        self.where, self.column, self.value, self.problem = where, column, value, problem

    def __str__(self) -> str:
        return f"{self.where}: {self.column} {str(self.value)!r} {self.problem}"

class LockLost(BaseException):
    """The run lock was lost mid-run (its PostgreSQL session was terminated, the locked file was
    replaced, or the run's process died under a worker). The run stops starting work and records
    `failed` with reason `lock_lost` (exit code 1). A BaseException, like Interrupted, so that no
    `except Exception` counts it as one unit's failure and carries on."""


class ParentDeleted(RuntimeError):
    """A unit's result rows name a portfolio, position or stress scenario deleted while the run
    computed it: the unit is not written (it fails with job `write`)."""
