"""The `Store`: one per process, the entry to every read and unit of work."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from bus.store import (
    _audit,
    _audit_latest,
    _clients,
    _dead_letters,
    _declared,
    _engine,
    _idempotency,
    _liveness,
    _migrate,
    _outbox,
    _overview,
    _requests,
    _retention,
    _subscriptions,
    _takedown,
    _undelivered,
    _watermarks,
)
from bus.store._breaker import Breaker, BreakerState
from bus.store._checkpointer import Checkpointer
from bus.store._errors import translate_errors
from bus.store._kept_writer import KeptWriter
from bus.store._records import (
    AuditEntry,
    AuditStreak,
    AuditVerification,
    Client,
    DeadLetter,
    DeadLetterState,
    OutboxMessage,
    OutboxRow,
    RequestQuery,
    StoreOverview,
    Subscription,
    Undelivered,
    WorkerLiveness,
)
from bus.store._transaction import Transaction
from bus.store._url import shown_url
from schemas.model import ServiceRequest, StatusUpdate

T = TypeVar("T")


class Store:
    """The database behind civicbus: SQLite (WAL) embedded, or PostgreSQL."""

    def __init__(self, url: str) -> None:
        """Prepare the engine; nothing connects (and no schema is created) until first use."""
        self._engine = _engine.create_engine(url)
        self._writer = _engine.writer(self._engine)
        self._reader = _engine.reader(self._engine)
        self._database = shown_url(url)
        #: Every read and unit of work goes through it: refused at once while the database
        #: does not answer, which it pings meanwhile (SQLite never trips it, see _breaker).
        self._breaker = Breaker(self._database, self._ping)
        self._kept_writers: weakref.WeakSet[KeptWriter] = weakref.WeakSet()
        self._checkpointer = _checkpointer(self._engine)

    @classmethod
    def open(cls, url: str, *, existing: bool = False) -> Store:
        """Connect, creating or upgrading the schema (Alembic) on first use. `existing`: an
        SQLite file that is not there raises NoSuchStore instead of becoming a new store."""
        store = cls(url)
        try:
            if existing:
                _engine.require_sqlite_file(store._engine)
            with translate_errors(store._database):
                if not _migrate.is_current(store._engine):
                    _migrate.upgrade(store._writer)
        except BaseException:
            store.close()
            raise
        return store

    def upgrade(self) -> None:
        """Run the Alembic migrations up to head."""
        with translate_errors(self._database):
            _migrate.upgrade(self._writer)

    def close(self) -> None:
        """Stop the breaker's pings, if any, and close the pooled and kept connections."""
        self._breaker.stop()
        for writer in list(self._kept_writers):
            writer.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._engine.dispose()

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgresql"."""
        return self._engine.dialect.name

    def check_answering(self) -> None:
        """Raise StoreUnavailable at once if an operation started now would be refused without
        being tried: the database stopped answering, and no ping has had an answer since.
        Touches nothing; for a caller about to queue work behind others."""
        self._breaker.check()

    def breaker_state(self) -> BreakerState:
        """Whether operations are refused without being tried now, and how many were."""
        return self._breaker.state()

    @contextmanager
    def transaction(self, *, lock_timeout: float | None = None) -> Iterator[Transaction]:
        """A unit of work; raises StoreUnavailable when the database cannot be reached (at once,
        without trying, while it is known not to answer).

        Any exception inside the block rolls everything back (request, outbox, audit).
        `lock_timeout` (SQLite only): seconds to wait for the write lock instead of the usual
        ones, for a caller that would rather do something else than wait long.
        """
        with (
            self._breaker.guard(),
            translate_errors(self._database),
            self._writer.connect() as conn,
            _engine.lock_timeout(conn, lock_timeout),
            Transaction.begun(conn) as tx,
        ):
            yield tx

    def kept_writer(self, *, lock_timeout: float | None = None) -> KeptWriter:
        """Write transactions for one thread on a connection kept between them (for a caller
        committing many small ones; see bus.store._kept_writer); `lock_timeout` as for
        `transaction`. Closed with the store, or by its `close()`."""
        writer = KeptWriter(self._writer, self._breaker, self._database, lock_timeout)
        self._kept_writers.add(writer)
        return writer

    def _ping(self) -> None:
        """Ask the database for one `SELECT 1`, past the breaker (whose own pings these are)
        and bounded as every operation is; raises StoreUnavailable as they do."""
        with translate_errors(self._database), self._engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def _read(self, work: Callable[[Connection], T]) -> T:
        with (
            self._breaker.guard(),
            translate_errors(self._database),
            self._reader.connect() as conn,
        ):
            return work(conn)

    def _write(self, work: Callable[[Transaction], T]) -> T:
        with self.transaction() as tx:
            return work(tx)

    # --- reads ---------------------------------------------------------------------------
    def get_request(self, request_id: str) -> ServiceRequest | None:
        """The whole canonical request: reporter, back-end references and history included."""
        return self._read(lambda conn: _requests.get_request(conn, request_id))

    def request_by_id_or_token(self, given: str) -> ServiceRequest | None:
        """The whole request `given` names: its id, or the batch token a resident was given
        for it; None when it names neither."""
        request = self.get_request(given)
        if request is None and (request_id := self.resolve_token(given)) is not None:
            request = self.get_request(request_id)
        return request

    def get_requests(self, request_ids: Collection[str]) -> dict[str, ServiceRequest]:
        """Whole requests by id, read together (one snapshot); unknown ids are absent."""
        return self._read(lambda conn: _requests.get_requests(conn, request_ids))

    def request_holders(self, request_ids: Collection[str]) -> dict[str, set[str]]:
        """The adapter instances holding each request (its back-end references); a request
        none holds, or unknown, is absent."""
        return self._read(lambda conn: _requests.holders(conn, list(request_ids)))

    def find_requests(self, query: RequestQuery) -> list[ServiceRequest]:
        """Requests matching every filter, newest first: by requested time, then id, descending."""
        return self._read(lambda conn: _requests.find_requests(conn, query))

    def status_updates(
        self,
        start: datetime,
        end: datetime,
        *,
        jurisdiction: str | None = None,
        limit: int | None = None,
    ) -> list[StatusUpdate]:
        """Updates recorded in [start, end], of all requests or those of `jurisdiction`, oldest
        first, at most `limit` of them.

        Filters on the update's own time (its `updated_datetime`).
        """
        return self._read(
            lambda conn: _requests.status_updates(
                conn, start, end, jurisdiction=jurisdiction, limit=limit
            )
        )

    def resolve_token(self, token: str, jurisdiction: str | None = None) -> str | None:
        """The request id behind a batch token; None for an unknown token, or one whose
        request is not of `jurisdiction` when given."""
        return self._read(lambda conn: _requests.resolve_token(conn, token, jurisdiction))

    def holding_reference(self, reference: str, adapters: Collection[str]) -> list[tuple[str, str]]:
        """(request id, adapter) of the requests a back-end of `adapters` holds as `reference`."""
        return self._read(lambda conn: _requests.holding_reference(conn, reference, adapters))

    def idempotent_response(self, client_id: int, key: str) -> dict[str, Any] | None:
        """The answer first given to (client, Idempotency-Key), if any, for a repeated POST."""

        found = self._read(lambda conn: _idempotency.responses(conn, [(client_id, key)]))
        return found.get((client_id, key))

    def watermark(self, instance: str) -> str | None:
        return self._read(lambda conn: _watermarks.watermark(conn, instance))

    # --- API clients -----------------------------------------------------------------------
    def add_client(
        self, name: str, jurisdiction: str | None = None, *, may_post_updates: bool = False
    ) -> tuple[Client, str]:
        """Create a client (allowed to post status updates only if `may_post_updates`); returns
        it with its key, which is stored only hashed."""
        return self._write(
            lambda tx: _clients.add(
                tx._session, name, jurisdiction, may_post_updates=may_post_updates
            )
        )

    def authenticate(self, key: str) -> Client | None:
        """The active client holding this key, or None."""
        return self._read(lambda conn: _clients.authenticate(conn, key))

    def list_clients(self) -> list[Client]:
        return self._read(_clients.list_all)

    def revoke_client(self, name: str) -> bool:
        """Revoke the named client's key; False if no active client has that name."""
        return self._write(lambda tx: _clients.revoke(tx._session, name))

    def allow_client_updates(self, name: str, allowed: bool) -> bool:
        """Let the named client post status updates (or stop it), from its next update on;
        False if no active client has that name."""
        return self._write(lambda tx: _clients.allow_updates(tx._session, name, allowed))

    # --- outbox (the relay's side) ---------------------------------------------------------
    def pending_outbox(self, limit: int = 500) -> list[OutboxRow]:
        """Unsent rows, oldest first, each envelope parsed: what a test looks at (the relay
        reads pending_outbox_messages)."""
        return self._read(lambda conn: _outbox.pending(conn, limit))

    def pending_outbox_messages(self, limit: int = 500, *, after: int = 0) -> list[OutboxMessage]:
        """Unsent rows, oldest first, with each envelope's stored JSON as the message body;
        only those with an id above `after` (the rows already on their way to the broker)."""
        return self._read(lambda conn: _outbox.pending_messages(conn, limit, after))

    def mark_sent(self, ids: Sequence[int]) -> None:
        """Mark rows published (after the broker confirmed them)."""
        self._write(lambda tx: tx.mark_sent(ids))

    # --- retention (`civicbus store prune`, `civicbus privacy forget`) ------------------------
    def sent_outbox(self, *, sent_before: datetime, after: int = 0, limit: int) -> list[int]:
        """Ids above `after` of outbox rows published before `sent_before`, in id order; never
        a row still waiting. Remove them with `Transaction.delete_sent_outbox`."""
        return self._read(
            lambda conn: _retention.sent_outbox(
                conn, sent_before=sent_before, after=after, limit=limit
            )
        )

    def idempotency_keys_before(
        self,
        *,
        created_before: datetime,
        prefix: str,
        after: tuple[int, str] | None = None,
        limit: int,
    ) -> list[tuple[int, str]]:
        """(client id, key) above `after` of the idempotency keys starting with `prefix`
        stored before `created_before`, in key order. Remove them with
        `Transaction.delete_idempotency_keys`."""
        return self._read(
            lambda conn: _retention.idempotency_keys_before(
                conn, created_before=created_before, prefix=prefix, after=after, limit=limit
            )
        )

    def resolved_dead_letters(
        self, *, resolved_before: datetime, after: int = 0, limit: int
    ) -> list[int]:
        """Ids above `after` of dead letters replayed or dropped before `resolved_before`, in id
        order; never one still dead. Remove them with
        `Transaction.delete_resolved_dead_letters`."""
        return self._read(
            lambda conn: _retention.resolved_dead_letters(
                conn, resolved_before=resolved_before, after=after, limit=limit
            )
        )

    def closed_with_reporter(
        self, *, closed_before: datetime, after: str = "", limit: int
    ) -> list[str]:
        """Ids above `after` of requests with a closing status, last updated before
        `closed_before`, that still hold reporter contact data, in id order. Forget it with
        `Transaction.forget_reporters`."""
        return self._read(
            lambda conn: _retention.closed_with_reporter(
                conn, closed_before=closed_before, after=after, limit=limit
            )
        )

    def media_in_use(self, digests: Collection[str], *, besides: str) -> set[str]:
        """Those of the stored media files (by SHA-256) a request other than `besides` still
        shows (its media, or a status update's media_url): files that must stay. Scans every
        request: for an operator's command, not a hot path."""
        return self._read(lambda conn: _takedown.media_in_use(conn, digests, besides=besides))

    # --- audit -----------------------------------------------------------------------------
    def audit_trail(self, request_id: str) -> list[AuditEntry]:
        """The request's audit entries in the order its hops happened (their time, then their
        place in the chain)."""
        return self._read(lambda conn: _audit.trail(conn, request_id))

    def latest_audit(
        self, actors: Sequence[str], actions: Sequence[str], *, since: datetime
    ) -> dict[str, AuditEntry]:
        """Each actor's latest entry of one of these actions written since `since` (absent
        when none); its cost is that of the entries written since, however long the log."""
        return self._read(lambda conn: _audit_latest.latest(conn, actors, actions, since))

    def audit_streak(self, last: AuditEntry, *, broken_by: str, lookback: int) -> AuditStreak:
        """The unbroken run of its actor's `last.action` entries ending with `last` since its
        latest `broken_by` entry, looked for among the `lookback` entries before `last`."""
        return self._read(
            lambda conn: _audit_latest.streak(conn, last, broken_by=broken_by, lookback=lookback)
        )

    def overview(self) -> StoreOverview:
        """The outbox backlog, the leases and the waiting dead letters (`civicbus status`)."""
        return self._read(_overview.overview)

    def undelivered(self, *, accepted_before: datetime, limit: int = 50) -> list[Undelivered]:
        """Open requests accepted before the time that no back-end holds yet, oldest first,
        each with its audit trail and dead letters: where it is stuck."""
        return self._read(
            lambda conn: _undelivered.undelivered(
                conn, accepted_before=accepted_before, limit=limit
            )
        )

    def declared_instances(self) -> list[str]:
        """Every adapter instance whose queues the relay has declared, by name, configured
        now or not."""
        return self._read(_declared.declared)

    def path_of(self, request_id: str) -> Undelivered | None:
        """One request's audit trail and dead letters (delivered or not), as `undelivered`
        gives them; None for an unknown id."""
        return self._read(lambda conn: _undelivered.path_of(conn, request_id))

    def workers(self) -> list[WorkerLiveness]:
        """The running workers' latest heartbeats (and those of workers that died without
        stopping cleanly, until pruned), by recipient then host."""
        return self._read(_liveness.workers)

    def verify_audit(self, expect_head: str | None = None) -> AuditVerification:
        """Walk the whole chain; report the first edited, deleted or inserted entry, or an
        `expect_head` (a head hash recorded earlier) that is no longer on the chain."""
        return self._read(lambda conn: _audit.verify(conn, expect_head))

    # --- leases ----------------------------------------------------------------------------
    def try_lease(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take or renew the named lease (e.g. "relay") for `holder` for `ttl_seconds`.

        False while another holder's lease has not expired. Renew well within the TTL.
        """
        return self._write(lambda tx: tx.try_lease(name, holder, ttl_seconds))

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up (on clean shutdown); False if `holder` did not hold it."""
        return self._write(lambda tx: tx.release_lease(name, holder))

    def note_broker_blocked(
        self, publisher: str, holder: str, since: datetime, reason: str
    ) -> None:
        """RabbitMQ blocks `publisher`'s connection (held by `holder`) since then for the
        broker's `reason` (say it again while it lasts: `civicbus status` trusts a recent word)."""
        self._write(lambda tx: tx.broker_blocked(publisher, holder, since, reason))

    def note_broker_unblocked(self, publisher: str, holder: str) -> None:
        """The broker takes `holder`'s publishes again, or `holder` stopped publishing."""
        self._write(lambda tx: tx.broker_unblocked(publisher, holder))

    # --- webhook subscriptions -------------------------------------------------------------
    def add_subscription(
        self, url: str, events: Sequence[str], secret_env: str | None = None
    ) -> Subscription:
        """Subscribe a webhook URL to events matching the patterns (e.g. "request.*")."""
        return self._write(lambda tx: tx.add_subscription(url, events, secret_env))

    def list_subscriptions(self, *, include_removed: bool = False) -> list[Subscription]:
        """Subscriptions in creation order; active ones only unless asked otherwise."""
        return self._read(lambda conn: _subscriptions.list_all(conn, include_removed))

    def get_subscription(self, subscription_id: int) -> Subscription | None:
        return self._read(lambda conn: _subscriptions.get(conn, subscription_id))

    def remove_subscription(self, subscription_id: int) -> bool:
        """Deactivate a subscription; False if there was no active one with that id."""
        return self._write(lambda tx: tx.remove_subscription(subscription_id))

    # --- dead letters ----------------------------------------------------------------------
    def dead_letters(
        self, instance: str, state: DeadLetterState = DeadLetterState.DEAD
    ) -> list[DeadLetter]:
        """The instance's dead letters in that state, oldest first."""
        return self._read(lambda conn: _dead_letters.list_for(conn, instance, state))

    def dead_letter_instances(self) -> list[str]:
        """Every instance (or subscription route) with dead letters in any state, by name."""
        return self._read(_dead_letters.instances)

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        return self._read(lambda conn: _dead_letters.get(conn, dead_letter_id))


def _checkpointer(engine: Engine) -> Checkpointer | None:
    """The checkpointer of a SQLite database file, counting the engine's commits; None for
    PostgreSQL and an in-memory database (no write-ahead log)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return None
    checkpointer = Checkpointer(database)
    event.listen(engine, "commit", checkpointer.committed)
    return checkpointer
