"""The unit of work: everything done through one `Transaction` commits together or not at all."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from bus.store import (
    _audit,
    _broker_blocks,
    _clients,
    _dead_letters,
    _declared,
    _idempotency,
    _leases,
    _liveness,
    _outbox,
    _requests,
    _retention,
    _subscriptions,
    _takedown,
    _watermarks,
)
from bus.store._records import (
    DeadLetter,
    DeadLetterState,
    OutboxEvent,
    RecordedUpdate,
    Subscription,
    TakenDownRecord,
    WorkerLiveness,
)
from bus.store._sql import utcnow
from schemas.events import Envelope
from schemas.model import ServiceRequest, StatusUpdate


@dataclass
class Transaction:
    """A unit of work: everything done through it commits together or not at all."""

    #: The SQLAlchemy Connection of the open database transaction.
    _session: Any = field(repr=False)
    _audit_entries: list[_audit.PendingEntry] = field(default_factory=list, repr=False)

    @classmethod
    @contextmanager
    def begun(cls, conn: Connection) -> Iterator[Transaction]:
        """A unit of work on `conn`: begun here, committed when the block ends (its audit
        entries chained onto the log first), rolled back when the block raises."""
        with conn.begin():
            tx = cls(conn)
            yield tx
            tx._before_commit()

    # --- requests --------------------------------------------------------------------------
    def add_request(self, request: ServiceRequest, *, token: str | None = None) -> None:
        """Insert a new request (and its batch token, if any); AlreadyExists for a known id."""
        self.add_requests([request], tokens={request.id: token} if token else None)

    def add_requests(
        self, requests: Sequence[ServiceRequest], *, tokens: Mapping[str, str] | None = None
    ) -> None:
        """Insert several new requests at once (`tokens`: batch token by request id).

        AlreadyExists, at once or at commit, when any id is known.
        """
        _requests.insert_requests(self._session, requests, tokens or {})

    def get_request(self, request_id: str) -> ServiceRequest | None:
        """The whole request as this transaction sees it (reporter included)."""
        return _requests.get_request(self._session, request_id)

    def save_idempotent_response(self, client_id: int, key: str, response: dict[str, Any]) -> None:
        """Remember the answer given to (client, Idempotency-Key), for a repeated POST.

        A concurrent request with the same key makes this raise AlreadyExists at once or at
        commit, so the loser's whole transaction (its request included) is rolled back.
        """
        _idempotency.save(self._session, [(client_id, key, response)])

    def save_idempotent_responses(self, answers: Sequence[tuple[int, str, dict[str, Any]]]) -> None:
        """Remember several (client id, key, answer) at once; as save_idempotent_response."""
        _idempotency.save(self._session, answers)

    def idempotent_responses(
        self, wanted: Collection[tuple[int, str]]
    ) -> dict[tuple[int, str], dict[str, Any]]:
        """The answers already stored for these (client id, key) pairs, as this transaction
        sees them; pairs never answered are absent."""
        return _idempotency.responses(self._session, wanted)

    def inactive_clients(self, client_ids: Collection[int]) -> set[int]:
        """The ids among `client_ids` whose client is revoked or gone, as this transaction
        sees them. The active ones stay locked until it ends (PostgreSQL: FOR SHARE; SQLite:
        the write lock), so a revocation waits for this writer's commit: a writer that
        checks here cannot race one."""
        return _clients.inactive(self._session, client_ids)

    def client_may_post_updates(self, client_id: int) -> bool:
        """Whether the client is active and may post status updates, as this transaction sees
        it; locked as `inactive_clients` locks, so a revocation or deny-updates waits for this
        writer's commit."""
        return _clients.may_post_updates(self._session, client_id)

    def apply_status_update(
        self, update: StatusUpdate, *, refuse_conflicts: bool = False
    ) -> RecordedUpdate | None:
        """Add the update to the request's history and, unless it is older than the request's
        current status (then it is history only), set its status and updated time.

        Returns what was recorded, or None when `update.update_id` was already recorded for
        that request (a pusher's harmless repeat) or the update says nothing new (the status the
        request already has, without note, media or back-end status code). Raises KeyError for
        an unknown request, and with `refuse_conflicts` UpdateConflict when the update_id was
        recorded with other content (see StatusUpdate.says_the_same_as). A note on an applied
        update also becomes the request's `status_notes`.
        """
        return _requests.apply_status_update(
            self._session, update, refuse_conflicts=refuse_conflicts
        )

    def add_backend_ref(self, request_id: str, adapter: str, reference: str, at: datetime) -> None:
        """Record the back-end's reference for the request (idempotent per adapter); a new one
        is a change to the request, now."""
        _requests.add_backend_ref(self._session, request_id, adapter, reference, at)

    def add_backend_refs(
        self,
        adapter: str,
        refs: Sequence[tuple[str, str, datetime]],
        *,
        changed_at: datetime | None = None,
    ) -> set[str]:
        """Record several (request id, reference, time) for one adapter at once, as
        add_backend_ref does; returns the request ids whose reference was not known before,
        each changed at `changed_at` (default now: a hand-over is a change to the request)."""
        return _requests.add_backend_refs(self._session, adapter, refs, changed_at=changed_at)

    def get_requests(self, request_ids: Collection[str]) -> dict[str, ServiceRequest]:
        """Whole requests by id as this transaction sees them; unknown ids are absent."""
        return _requests.get_requests(self._session, request_ids)

    def changed_requests(self, known: Mapping[str, ServiceRequest]) -> dict[str, ServiceRequest]:
        """Lock the rows of the `known` requests until commit, as status updates do (these
        then wait for this transaction), and return those changed since `known` was read,
        whole as this transaction sees them; the unchanged ones are absent."""
        return _requests.changed_requests(self._session, known)

    # --- outbox ----------------------------------------------------------------------------
    def add_outbox(self, envelope: Envelope, *, exchange: str, routing_key: str) -> None:
        """Queue an event for the relay; it is published only if this transaction commits.

        Reporter contact data in the envelope's `data` is emptied before it is stored.
        """
        _outbox.add(self._session, [OutboxEvent(envelope, exchange, routing_key)])

    def as_it_reads(self, envelope: Envelope) -> Envelope:
        """`envelope` with its copy of the request as the request's take-downs left it (the
        request row share-locked until this transaction ends, so none is half-seen): for a
        copy read before this transaction, such as a dead letter being replayed."""
        body = {"subject": envelope.subject, "data": envelope.data}
        now = _takedown.as_it_reads(self._session, body, envelope.subject)
        return envelope if now is body else envelope.model_copy(update={"data": now["data"]})

    def add_outbox_events(self, events: Sequence[OutboxEvent]) -> None:
        """Queue several events at once, published in this order; as add_outbox."""
        _outbox.add(self._session, events)

    def mark_sent(self, ids: Sequence[int]) -> None:
        """Mark outbox rows published, together with whatever else this transaction does."""
        _outbox.mark_sent(self._session, ids)

    # --- retention -------------------------------------------------------------------------
    def delete_sent_outbox(self, ids: Sequence[int], *, sent_before: datetime) -> int:
        """Delete those of the outbox rows published before `sent_before` (a row waiting to
        be published never is); how many went."""
        return _retention.delete_sent_outbox(self._session, ids, sent_before=sent_before)

    def delete_idempotency_keys(
        self, keys: Sequence[tuple[int, str]], *, created_before: datetime
    ) -> int:
        """Delete those of the (client id, key) pairs stored before `created_before`; how
        many went. A repeat with a deleted key is then a new request."""
        return _retention.delete_idempotency_keys(
            self._session, keys, created_before=created_before
        )

    def delete_resolved_dead_letters(self, ids: Sequence[int], *, resolved_before: datetime) -> int:
        """Delete those of the dead letters still replayed or dropped before `resolved_before`
        (never one dead); how many went. `civicbus dead show` then finds no such letter."""
        return _retention.delete_resolved_dead_letters(
            self._session, ids, resolved_before=resolved_before
        )

    def forget_reporters(
        self, request_ids: Sequence[str], *, closed_before: datetime | None = None
    ) -> list[str]:
        """Delete the reporter contact data of the requests (with `closed_before`, only of
        those still closed and last updated before it); the ids whose data went, sorted. The
        requests read as if reported without contact data afterwards."""
        return _retention.forget_reporters(self._session, request_ids, closed_before=closed_before)

    def take_down(
        self,
        request_id: str,
        *,
        marker: str | None,
        media: bool,
        answers: Collection[str] = (),
        answer_marker: str | None = None,
        at: datetime | None = None,
    ) -> TakenDownRecord | None:
        """Replace the request's description by `marker` (None: keep it), the answers of the
        attribute codes `answers` by `answer_marker` and, with `media`, remove its media, in
        the request and in every outbox event and dead letter about it (published or not);
        None for an unknown request. Idempotent: a second call rewrites nothing. A request
        that changes gets `at` (default now) as its taken_down_at and changed_at, its
        updated_at (the time of its latest status) stays. The files behind the media are not
        touched (see `Store.media_in_use`)."""
        return _takedown.take_down(
            self._session,
            request_id,
            marker=marker,
            media=media,
            answers=answers,
            answer_marker=answer_marker,
            at=at,
        )

    # --- audit -----------------------------------------------------------------------------
    def audit(
        self,
        *,
        actor: str,
        action: str,
        request_id: str | None = None,
        message_id: str | None = None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """Append an entry to the hash chain (details are redacted of personal data).

        Entries are chained when the transaction commits, in the order they were added. `at`
        is when the hop happened, if earlier than now (a worker's batch commits after its
        back-end calls).
        """
        self._audit_entries.append(
            _audit.pending_entry(
                at=at or utcnow(),
                actor=actor,
                action=action,
                request_id=request_id,
                message_id=message_id,
                outcome=outcome,
                details=details,
            )
        )

    def _before_commit(self) -> None:
        entries, self._audit_entries = self._audit_entries, []
        _audit.append(self._session, entries)

    # --- adapters, leases, subscriptions, dead letters --------------------------------------
    def set_watermark(self, instance: str, watermark: str | None) -> None:
        """Remember how far the instance's poller has read its back-end's updates."""
        _watermarks.set_watermark(self._session, instance, watermark)

    def poll_round_completed(self, instance: str) -> None:
        """The instance's poller completed a round now: it is no longer failing."""
        _watermarks.round_completed(self._session, instance)

    def poll_round_failed(self, instance: str, error: str) -> None:
        """The instance's poller failed a round with `error` (no personal data in it)."""
        _watermarks.round_failed(self._session, instance, error)

    def try_lease(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take or renew the named lease for `holder`; False while someone else holds it."""
        return _leases.try_lease(self._session, name, holder, ttl_seconds)

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up; False if `holder` did not hold it."""
        return _leases.release(self._session, name, holder)

    def broker_blocked(self, publisher: str, holder: str, since: datetime, reason: str) -> None:
        """RabbitMQ blocks `publisher`'s connection (held by `holder`) since then, for the
        broker's `reason`; written again while it lasts, to say it still does."""
        _broker_blocks.blocked(self._session, publisher, holder, since, reason)

    def broker_unblocked(self, publisher: str, holder: str) -> None:
        """The broker takes `holder`'s publishes again (or `holder` stopped publishing)."""
        _broker_blocks.unblocked(self._session, publisher, holder)

    def prune_broker_blocks(self, older_than: datetime) -> int:
        """Remove the blocks last said before `older_than`: left by publishers that died
        blocked (killed, crashed), which never say the block ended; how many went."""
        return _broker_blocks.prune(self._session, older_than)

    def remember_declared_instances(self, names: Collection[str]) -> None:
        """Note that these adapter instances' queues exist on the broker (the first time only)."""
        _declared.remember(self._session, names)

    def report_workers(self, beats: Sequence[WorkerLiveness]) -> None:
        """Record these heartbeats (a worker's, one per queue), replacing its earlier ones."""
        _liveness.report(self._session, beats)

    def forget_worker(self, worker_id: str) -> None:
        """Remove a worker's heartbeats: it stopped cleanly."""
        _liveness.forget(self._session, worker_id)

    def prune_workers(self, silent_since: datetime) -> int:
        """Remove the heartbeats of workers silent since before then (died long ago)."""
        return _liveness.prune(self._session, silent_since)

    def add_subscription(
        self, url: str, events: Sequence[str], secret_env: str | None = None
    ) -> Subscription:
        """Subscribe a webhook URL to events matching the patterns (e.g. "request.*")."""
        return _subscriptions.add(self._session, url, events, secret_env)

    def remove_subscription(self, subscription_id: int) -> bool:
        """Deactivate a subscription; False if there was no active one with that id."""
        return _subscriptions.remove(self._session, subscription_id)

    def record_dead_letter(
        self,
        *,
        instance: str,
        message_id: str,
        reason: str,
        envelope: dict[str, Any] | str | None,
        request_id: str | None = None,
        attempts: int = 1,
        at: datetime | None = None,
        first_failed_at: datetime | None = None,
    ) -> DeadLetter | None:
        """Keep a message the instance gave up on (its first failed round at
        `first_failed_at`, its last at `at`); a known (instance, message_id) that was replayed
        or dropped gets its attempts increased by `attempts`, its last failure and reason
        updated, state `dead`. None when that message is a dead letter waiting already: a
        repeat, which changes nothing (idempotent consumer)."""
        return _dead_letters.record(
            self._session,
            instance=instance,
            message_id=message_id,
            request_id=request_id,
            reason=reason,
            envelope=envelope,
            attempts=attempts,
            at=at,
            first_failed_at=first_failed_at,
        )

    def set_dead_letter_state(
        self,
        dead_letter_id: int,
        state: DeadLetterState,
        *,
        expected: DeadLetterState | None = None,
    ) -> bool:
        """Mark a dead letter replayed or dropped (or dead again); with `expected`, only while
        it is in that state (of two operators resolving one letter, only the first does).
        False when nothing changed: an unknown id, or a letter no longer in `expected`."""
        return _dead_letters.set_state(self._session, dead_letter_id, state, expected=expected)

    def drop_waiting_dead_letters(self, instance: str) -> list[DeadLetter]:
        """Mark every dead letter of the instance still waiting `dropped`; those, oldest first."""
        return _dead_letters.drop_waiting(self._session, instance)
