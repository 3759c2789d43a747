"""SIGTERM and SIGINT for a worker: the first asks for a stop within the stop grace, a second
of the same kind asks for it now.

Only a second signal of the same kind counts: one Ctrl-C in the terminal of `civicbus run`
reaches each part twice, once from the terminal (SIGINT, to the whole process group) and once
from the supervisor passing the stop on (SIGTERM), and that must stay an ordinary stop. Ctrl-C
pressed twice (SIGINT, SIGINT), or a supervisor or operator sending SIGTERM again, cuts it short.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from types import FrameType


class StopSignals:
    """Calls `stop` on the first SIGTERM or SIGINT, `stop_now` on a second of the same kind."""

    def __init__(self, stop: Callable[[], None], stop_now: Callable[[], None]) -> None:
        self._stop = stop
        self._stop_now = stop_now
        self._seen: Counter[int] = Counter()

    def install(self) -> None:
        """Handle SIGTERM and SIGINT from now on (from the main thread only, as Python wants)."""
        signal.signal(signal.SIGTERM, self.received)
        signal.signal(signal.SIGINT, self.received)

    def received(self, signum: int, _frame: FrameType | None = None) -> None:
        """Act on one signal (kept free of logging and locks: it runs in a signal handler)."""
        self._seen[signum] += 1
        if self._seen[signum] > 1:
            self._stop_now()
        else:
            self._stop()


__all__ = ["StopSignals"]
