"""PostgreSQL connections on which no round trip waits longer than a deadline.

A server that stops answering but keeps its connections open (its processes stopped, its VM
paused, a network partition) leaves a query waiting for ever: libpq's `connect_timeout` only
covers connecting, a server-side `statement_timeout` cannot fire on a server that does not run,
and TCP keepalives or `tcp_user_timeout` never fire while the server's kernel still acknowledges
every packet (a stopped server on a live machine). So the client bounds each wait itself.

psycopg runs every exchange with the server (a statement and its rows, a commit or rollback,
SQLAlchemy's pre-ping) through `Connection.wait`, whose `timeout` (psycopg 3.3.6) it uses itself
to give up on a server that ignores a cancel. Here that timeout applies to every wait; when it
expires the connection is closed, as psycopg does in that case: what the server has half-done
cannot be known, so the connection is never used again. SQLAlchemy sees a closed connection and
invalidates it, the pool opens a new one next time. A cancel request would be no use: the
server that ignores the query ignores the cancel too.

Both this deadline and libpq's `connect_timeout` raise `NoAnswer`, which the store reports as
NotAnswering: the one failure that opens its circuit breaker (_breaker).

Chosen over a watchdog thread that shuts the socket down from outside: the deadline is checked
by the thread that waits, on its own connection, with nothing to race against.
"""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg import errors, pq
from psycopg.abc import PQGen

from bus.store._errors import DriverSilence

RV = TypeVar("RV")

#: psycopg's own interval between checks for Ctrl-C while it waits.
_WAIT_INTERVAL = 0.1


class NoAnswer(psycopg.OperationalError, DriverSilence):
    """The server did not answer within the deadline, or connecting took longer than
    `connect_timeout`; the connection is closed."""


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection that closes itself when the server takes longer than
    `round_trip_timeout` seconds to answer, raising NoAnswer."""

    #: Seconds one wait for the server may last; None: no limit.
    round_trip_timeout: float | None = None

    def wait(
        self, gen: PQGen[RV], interval: float = _WAIT_INTERVAL, timeout: float | None = None
    ) -> RV:
        bound = self.round_trip_timeout
        ours = bound is not None and (timeout is None or timeout > bound)
        try:
            return super().wait(gen, interval, bound if ours else timeout)
        except errors._WaitTimeout:
            if not ours:
                raise  # a caller's own, shorter timeout
            # Mid-protocol: the server may still run the statement, or commit, when it wakes.
            self.pgconn.finish()
            raise NoAnswer(
                f"no answer from the server within {bound:g} s: connection closed"
            ) from None
        except psycopg.OperationalError:
            # The socket failed mid-exchange (the server was stopped or reset it). psycopg may
            # then leave the connection looking busy (transaction status ACTIVE) instead of
            # broken, and its next use fails with a ProgrammingError ("can't change
            # 'autocommit' now"), which is no sign of an outage: close it, as it is.
            if self.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                self.pgconn.finish()
            raise
