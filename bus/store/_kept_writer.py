"""A connection kept open between one thread's write transactions, for a caller that commits
many small ones: the API's group commit on SQLite, a batch per turn of its event loop.

Each `Store.transaction` checks a pooled connection out, begins, commits, and checks it in
again (reset included); with a short wait for SQLite's write lock, two PRAGMAs set and restore
that wait around it. That costs ~70 us a transaction, as much as the inserts of a small batch.
A kept writer pays it once: the wait is set when it connects and restored when it closes.

Not thread-safe: one thread uses it (the event loop that commits). Whatever fails inside a
transaction (a lost connection, a constraint) closes the connection, and the next transaction
starts on a fresh one, so a connection in an unknown state is never used again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

from sqlalchemy.engine import Connection, Engine

from bus.store import _engine
from bus.store._breaker import Breaker
from bus.store._errors import translate_errors
from bus.store._transaction import Transaction


class KeptWriter:
    """Write transactions on one kept connection (see the module's text); `close()` it."""

    def __init__(
        self, writer: Engine, breaker: Breaker, database: str, lock_timeout: float | None
    ) -> None:
        self._writer = writer
        self._breaker = breaker
        self._database = database
        self._lock_timeout = lock_timeout
        self._connection: Connection | None = None
        self._held = ExitStack()  # the connection and its lock wait, released by `_release`

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A unit of work, as `Store.transaction(lock_timeout=...)` gives, on the kept
        connection; raises StoreUnavailable as that does."""
        with self._breaker.guard(), translate_errors(self._database):
            conn = self._connect() if self._connection is None else self._connection
            try:
                with Transaction.begun(conn) as tx:
                    yield tx
            except BaseException:
                self._release()
                raise

    def close(self) -> None:
        """Give the connection back (with the usual lock wait); a later transaction opens a new
        one."""
        self._release()

    def _connect(self) -> Connection:
        try:
            conn = self._held.enter_context(self._writer.connect())
            self._held.enter_context(_engine.lock_timeout(conn, self._lock_timeout))
        except BaseException:
            self._release()  # a connection opened before the failure is not left behind
            raise
        self._connection = conn
        return conn

    def _release(self) -> None:
        self._connection = None
        held, self._held = self._held, ExitStack()
        # Restoring the wait on a broken connection fails; closing it is all that matters then.
        with suppress(Exception):
            held.close()
