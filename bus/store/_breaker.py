"""A circuit breaker on the store: fail at once while the database does not answer.

A server that stops answering (frozen, paused, behind a partition) makes each store operation
wait out the round-trip bound, and the reconnect after it the connect timeout (about 20 s with
the defaults, see _engine), before it raises StoreUnavailable. In the API every resident's
request would wait that long, its threads and its one writer thread tied up meanwhile, creates
queued behind earlier ones' timeouts. So once one operation has waited in vain, the others are
refused at once (the breaker is *open*) until the database answers again (*closed*).

No caller's operation is let through to find out whether it does: that one caller would wait
out the whole timeout again, one resident a second. A thread of the breaker's own asks instead:
every PROBE_INTERVAL_S it pings the database (`Store._ping`: `SELECT 1`, bounded as every
operation is), and the first answer closes the breaker. The thread starts as the breaker opens
and ends as it closes, or as the store is closed (`stop`).

Only `NotAnswering` opens it: a failure that came after a wait. A failure that comes at once (a
refused connection, a connection reset, a read-only server) costs nothing to repeat and may be
one connection's alone, so it refuses no one else; SQLite's lock waits are one writer being
long, not a database gone, and never open it either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import structlog

from bus.store._errors import NotAnswering, StoreUnavailable, WriteConflict

log = structlog.get_logger(__name__)

#: Seconds between two pings of a database that stopped answering. Short: the trip may have
#: been one long statement on a healthy server, which must not refuse everyone for long; a
#: ping costs no caller anything, only the pinging thread waits.
PROBE_INTERVAL_S = 1.0
#: Seconds `stop` waits for a ping under way. A ping of a frozen server may wait out the
#: engine's timeouts; the store's owner closing it (a process on its way out) should not.
STOP_WAIT_S = 2.0
#: The pinging thread's name, as thread dumps (py-spy) show it.
PINGER_NAME = "civicbus-store-ping"
#: What an operator reading `store.breaker_opened` can do about it.
OUTAGE_ADVICE = (
    "the database stopped answering: is its server up, and reachable from this host? "
    "Meanwhile the API answers 503 with Retry-After and workers hold their messages; nothing "
    "accepted is lost, and store.breaker_closed follows once it answers"
)


@dataclass(frozen=True)
class BreakerState:
    """What the breaker did so far, for metrics."""

    #: True while operations are refused without being tried.
    open: bool
    #: Operations refused without being tried, since the process started.
    refused: int
    #: Times it opened, since the process started.
    openings: int


@dataclass(frozen=True)
class _Pinger:
    thread: threading.Thread
    stop: threading.Event


class Breaker:
    """Refuses store operations with StoreUnavailable while the database does not answer,
    pinging it (`ping()`, which raises as a store operation does) from a thread of its own
    every `probe_interval` seconds until it answers. Thread-safe."""

    def __init__(
        self,
        database: str,
        ping: Callable[[], None],
        *,
        probe_interval: float = PROBE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._ping = ping
        self._probe_interval = probe_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._open = False
        #: Changes at each opening and closing: an operation admitted before one of them, or
        #: a ping started before it, reports old news, which changes nothing.
        self._generation = 0
        self._opened_at = 0.0
        self._pinger: _Pinger | None = None  # while open
        self._reason = ""
        self._refused = 0
        self._refused_open = 0
        self._openings = 0

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run one store operation inside the block, or raise StoreUnavailable at once."""
        generation = self._admit()
        try:
            yield
        except NotAnswering as error:
            self._silent(generation, self._reason_of(error))
            raise

    def check(self) -> None:
        """Raise StoreUnavailable if an operation started now would be refused: for a caller
        about to queue work behind others."""
        self._admit()

    def state(self) -> BreakerState:
        with self._lock:
            return BreakerState(self._open, self._refused, self._openings)

    def stop(self) -> None:
        """End the pinging (waiting STOP_WAIT_S at most for a ping under way, which then pings
        no more) and forget the outage: a store closed and used again tries the database
        anew, as its engine opens new connections."""
        with self._lock:
            pinger, self._pinger = self._pinger, None
            if self._open:
                self._open = False
                self._generation += 1
        if pinger is not None:
            pinger.stop.set()
            pinger.thread.join(timeout=STOP_WAIT_S)

    def _admit(self) -> int:
        with self._lock:
            if not self._open:
                return self._generation
            self._refused += 1
            self._refused_open += 1
            silent_for = self._clock() - self._opened_at
            refusal = StoreUnavailable(
                f"{self._database}: not tried: the database has not answered for "
                f"{silent_for:.0f} s ({self._reason}); pinged every {self._probe_interval:g} s"
            )
        raise refusal

    def _reason_of(self, error: NotAnswering) -> str:
        # translate_errors kept the driver's first line only: no row values in it.
        return str(error).removeprefix(f"{self._database}: ")

    def _silent(self, generation: int, reason: str) -> None:
        """An operation admitted in `generation` waited in vain: open, unless it is old news."""
        with self._lock:
            if self._open or generation != self._generation:
                return
            self._open = True
            self._generation += 1
            self._openings += 1
            self._opened_at = self._clock()
            self._refused_open = 0
            self._reason = reason
            stop = threading.Event()
            thread = threading.Thread(
                target=self._ping_until_answered,
                args=(self._generation, stop),
                name=PINGER_NAME,
                daemon=True,  # a ping of a frozen server must not hold the process's exit
            )
            self._pinger = _Pinger(thread, stop)
            # Under the lock: `stop` never finds a thread it cannot join yet.
            thread.start()
        log.warning(
            "store.breaker_opened",
            reason=reason,
            probe_interval_s=self._probe_interval,
            todo=OUTAGE_ADVICE,
        )

    def _ping_until_answered(self, generation: int, stop: threading.Event) -> None:
        while not stop.wait(self._probe_interval):
            answered, reason = self._ping_once()
            with self._lock:
                if stop.is_set() or generation != self._generation:
                    return  # stopped meanwhile: what this ping found is old news
                if not answered:
                    self._reason = reason or self._reason
                    continue
                self._open, self._pinger = False, None
                self._generation += 1
                silent = round(self._clock() - self._opened_at, 1)
                refused = self._refused_open
            log.info("store.breaker_closed", silent_s=silent, refused=refused)
            return

    def _ping_once(self) -> tuple[bool, str]:
        """Whether the database answered the ping; if not, why, when it waited in vain."""
        try:
            self._ping()
        except NotAnswering as error:
            return False, self._reason_of(error)
        except WriteConflict:
            return True, ""  # the server settled a conflict: it runs
        except StoreUnavailable:
            return False, ""  # refused at once (a server stopped or restarting): not back yet
        except Exception as error:
            # Not the store's outage: an answer of some kind. Callers try for themselves then,
            # as they would without a breaker, and meet whatever it is.
            log.warning("store.ping_unexpected", error=type(error).__name__)
            return True, ""
        return True, ""
