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


class Interrupted(BaseException):
    """Raised from the SIGINT/SIGTERM/SIGHUP handler to unwind the unit in progress.

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
