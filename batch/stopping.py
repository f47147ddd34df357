"""How a run stops early (SPEC §2): the stop signals (SIGINT, SIGTERM, SIGHUP: roll back what is
in flight, record `interrupted`), the watchdog that ends a hung process, and the `Hooks` through
which computing and persisting a chunk check for a stop and read the run's clock."""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batch.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each: roll back, record `interrupted`


@dataclass(frozen=True, slots=True)
class Hooks:
    """What computing and writing a chunk need from the run. `check_stop()` raises Interrupted once a stop signal
    arrived; `raise_if_stopping(exc)`, in an `except`, raises Interrupted from `exc` when a stop
    caused it (nothing is then recorded failed); `monotonic()` is the run's clock in seconds."""

    check_stop: Callable[[], None]
    raise_if_stopping: Callable[[Exception], None]
    monotonic: Callable[[], float]

    def ms(self, since: float) -> int:
        """Whole milliseconds from `since` (a `monotonic()` reading) to now."""
        return int(round((self.monotonic() - since) * 1000))


def arm_watchdog(seconds: float) -> None:
    """(Re)arm this process's watchdog: in `seconds`, dump every thread's stack and exit 1."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.__stderr__)


def cancel_watchdog() -> None:
    faulthandler.cancel_dump_traceback_later()


class StopSignals:
    """The run's stop signals. The first one is noted (`received`) and raised as Interrupted if
    the run is in its body (`raising`); later ones are ignored, so the stop's own cleanup
    (rollback, the final record, the lock) always completes."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal, once one arrived
        self.raising = False  # True while a signal may unwind the run (not in its bookkeeping)

    def install(self) -> dict[int, Any]:
        """Handle STOP_SIGNALS (only the main thread can); returns the handlers replaced."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def _stop(signum: int, _frame: Any) -> None:
            if self.received is not None:  # already stopping
                return
            # Recorded first: an exception raised inside a weakref callback or __del__ is
            # swallowed by Python, so the loop also checks the flag at every boundary.
            self.received = signum
            if self.raising:
                raise Interrupted(signum)

        return {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}

    @staticmethod
    def restore(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def check(self) -> None:
        """Raise Interrupted if a stop signal arrived (even if its exception was swallowed)."""
        if self.received is not None:
            raise Interrupted(self.received)

    def raise_if_stopping(self, exc: Exception) -> None:
        """In an `except Exception`: a signal that landed inside a driver call (e.g. during a COPY)
        can surface as the driver's error. The stop wins: nothing is recorded as failed for it."""
        if self.received is not None:
            raise Interrupted(self.received) from exc
