"""A circuit breaker on the store: fail at once while the database does not answer.

A server that stops answering (frozen, paused, behind a partition) makes each store operation
wait out the round-trip bound, and the reconnect after it the connect timeout (about 20 s with
the defaults, see _engine), before it raises StoreUnavailable. In the API every resident's
request would wait that long, its threads and its one writer thread tied up meanwhile, creates
queued behind earlier ones' timeouts. So once one operation has waited in vain, the others are
refused at once (the breaker is *open*); one operation at a time, every PROBE_INTERVAL_S, is let
through to try the database again (*half-open*), and when it gets an answer everything flows
again (*closed*).

Only `NotAnswering` opens it: a failure that came after a wait. A failure that comes at once (a
refused connection, a connection reset, a read-only server) costs nothing to repeat and may be
one connection's alone, so it refuses no one else; SQLite's lock waits are one writer being
long, not a database gone, and never open it either.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import structlog

from bus.store._errors import NotAnswering, StoreUnavailable, WriteConflict

log = structlog.get_logger(__name__)

#: Seconds between two tries of a database that stopped answering. Short: the trip may have been
#: one long statement on a healthy server, which must not refuse everyone for long; each try
#: that finds it still silent costs one caller the usual wait, one at a time.
PROBE_INTERVAL_S = 1.0


class _Outcome(enum.Enum):
    ANSWERED = "answered"  # the database answered (a refusal of a key or a value included)
    SILENT = "silent"  # it did not answer in time: NotAnswering
    FAILED = "failed"  # unavailable at once (refused, reset, locked): says nothing of waits
    UNKNOWN = "unknown"  # interrupted (BaseException) before it could tell


@dataclass(frozen=True)
class _Ticket:
    generation: int
    probe: bool


@dataclass(frozen=True)
class BreakerState:
    """What the breaker did so far, for metrics."""

    #: True while operations are refused without being tried.
    open: bool
    #: Operations refused without being tried, since the process started.
    refused: int
    #: Times it opened, since the process started.
    openings: int


class Breaker:
    """Refuses store operations with StoreUnavailable while the database does not answer,
    trying it again with one operation at a time every `probe_interval` seconds. Thread-safe."""

    def __init__(
        self,
        database: str,
        *,
        probe_interval: float = PROBE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._probe_interval = probe_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._open = False
        #: Changes at each opening and closing: an operation admitted before one of them
        #: reports old news, which changes nothing.
        self._generation = 0
        self._opened_at = 0.0
        self._next_probe_at = 0.0
        self._probing = False
        self._prober: int | None = None  # the probing thread's id
        self._reason = ""
        self._refused = 0
        self._refused_open = 0
        self._openings = 0

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run one store operation inside the block, or raise StoreUnavailable at once."""
        ticket = self._admit()
        outcome, reason = _Outcome.UNKNOWN, ""
        try:
            yield
        except NotAnswering as error:
            # translate_errors kept the driver's first line only: no row values in it.
            outcome, reason = _Outcome.SILENT, str(error).removeprefix(f"{self._database}: ")
            raise
        except WriteConflict:
            outcome = _Outcome.ANSWERED  # the server settled a conflict: it runs
            raise
        except StoreUnavailable:
            outcome = _Outcome.FAILED
            raise
        except Exception:
            # Raised inside the block, after a connection was checked out: that took an
            # answer from the server (a pre-ping, or connecting), so the database is there.
            outcome = _Outcome.ANSWERED
            raise
        else:
            outcome = _Outcome.ANSWERED
        finally:
            self._settle(ticket, outcome, reason)

    def check(self) -> None:
        """Raise StoreUnavailable if an operation started now would be refused (without
        taking the probe's turn): for a caller about to queue work behind others."""
        with self._lock:
            if not self._refuses(self._clock()):
                return
            refusal = self._refusal()
        raise refusal

    def state(self) -> BreakerState:
        with self._lock:
            return BreakerState(self._open, self._refused, self._openings)

    def _refuses(self, now: float) -> bool:
        return self._open and (self._probing or now < self._next_probe_at)

    def _admit(self) -> _Ticket:
        with self._lock:
            if not self._open or self._prober == threading.get_ident():
                # (The probe's thread: an operation nested in it is part of it.)
                return _Ticket(self._generation, probe=False)
            if not self._refuses(self._clock()):
                self._probing, self._prober = True, threading.get_ident()
                return _Ticket(self._generation, probe=True)
            refusal = self._refusal()
        raise refusal

    def _refusal(self) -> StoreUnavailable:
        self._refused += 1
        self._refused_open += 1
        silent_for = self._clock() - self._opened_at
        return StoreUnavailable(
            f"{self._database}: not tried: the database has not answered for {silent_for:.0f} s "
            f"({self._reason}); tried again every {self._probe_interval:g} s"
        )

    def _settle(self, ticket: _Ticket, outcome: _Outcome, reason: str) -> None:
        with self._lock:
            change = self._transition(ticket, outcome, reason, self._clock())
        # Logged once per opening and once per closing, outside the lock.
        if change is not None:
            event, fields = change
            (log.warning if event == "store.breaker_opened" else log.info)(event, **fields)

    def _transition(
        self, ticket: _Ticket, outcome: _Outcome, reason: str, now: float
    ) -> tuple[str, dict[str, object]] | None:
        if ticket.probe:
            self._probing, self._prober = False, None
            if outcome is _Outcome.ANSWERED:
                self._open = False
                self._generation += 1
                silent = round(now - self._opened_at, 1)
                return "store.breaker_closed", {"silent_s": silent, "refused": self._refused_open}
            if outcome is not _Outcome.UNKNOWN:  # still no good: the next try after a pause
                self._next_probe_at = now + self._probe_interval
                self._reason = reason or self._reason
            return None  # interrupted: the next operation probes at once
        if outcome is _Outcome.SILENT and not self._open and ticket.generation == self._generation:
            self._open = True
            self._generation += 1
            self._openings += 1
            self._opened_at = now
            self._next_probe_at = now + self._probe_interval
            self._refused_open = 0
            self._reason = reason
            return "store.breaker_opened", {
                "reason": reason,
                "probe_interval_s": self._probe_interval,
            }
        return None
