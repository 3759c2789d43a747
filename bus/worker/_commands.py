"""The path of commands through an adapter worker, as a short sequence of named steps:

decode → load requests → already recorded? → find or submit (idempotent consumer, quick
retries) → record receipts → ack (by returning). Any failure goes to the redelivery policy.

Deliveries are only ever taken in batches (those the broker has already handed over, up to half
the prefetch; a lone message is a batch of one): each goes through the adapter in order, then the
receipts of the whole batch are recorded in one store transaction (group commit), together with
the statuses the back-end gave with them, and only then acknowledged. A crash before that commit
leaves every message of the batch unacknowledged: redelivered, found in the back-end, recorded
once. A store outage is waited out with the messages in hand (requeued, each would count toward
the work queue's delivery limit); only a worker stopping meanwhile requeues them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple, TypeVar

import structlog
from pydantic import TypeAdapter

from adapters import Adapter, PermanentError, Receipt
from bus.broker.topology import EVENTS_EXCHANGE, event_routing_key
from bus.logging import request_context
from bus.redaction import masking
from bus.status import log_status_update, record_status_update_in
from bus.store import OutboxEvent, RecordedUpdate, StoreUnavailable, Transaction
from bus.worker._consumer import Broker, ConnectionLost
from bus.worker._delivery import ENVELOPE_VALIDATOR, Delivery, MalformedMessage, decode
from bus.worker._failures import Route, describe, schedule_retry_or_dead_letter
from bus.worker._heartbeat import Slot
from bus.worker._publisher import PublishFailed
from bus.worker._retry import call_with_retries, until_store_answers
from schemas.events import Envelope, EventType
from schemas.model import AwareDatetime, Reporter, ServiceRequest, StatusUpdate

log = structlog.get_logger(__name__)

T = TypeVar("T")


# NamedTuples rather than frozen dataclasses: one of each a message, built at about a quarter of
# the cost (a frozen dataclass sets each field through object.__setattr__).
class _Command(NamedTuple):
    """One decoded command of a batch and where it is in the batch."""

    position: int
    delivery: Delivery
    envelope: Envelope


class _Taken(NamedTuple):
    """A command the back-end holds, waiting for the batch's group commit."""

    command: _Command
    request: ServiceRequest
    receipt: Receipt
    submitted: Envelope
    #: When the back-end answered, on our clock: the audit entries' time, not the batch's commit.
    answered_at: datetime


@dataclass(frozen=True)
class CommandWorker:
    """Runs `civicbus.request.created` commands through one adapter instance."""

    route: Route
    adapter: Adapter
    #: Set when the worker is stopping (the consumer's `stop_event`): a wait for the store ends.
    stopping: threading.Event = field(default_factory=threading.Event)
    #: Where the heartbeat sees the command in hand: a hung back-end call shows with its request.
    slot: Slot = field(default_factory=Slot)

    def handle_batch(self, deliveries: Sequence[Delivery], broker: Broker) -> Collection[int]:
        """Process the deliveries in order; returns the positions of those to requeue.

        Failed commands go to a retry tier or the dead letter channel one by one; the receipts
        of the others are recorded together. While the store does not answer, this waits;
        stopping meanwhile, a retry or dead letter that cannot be published, or any other
        failure requeues every message not yet handed to a tier or dead-lettered.
        """
        handed_on: set[int] = set()  # positions now in a retry tier or the dead letter channel
        try:
            return self.process(deliveries, broker, handed_on)
        except (StoreUnavailable, PublishFailed) as exc:
            # StoreUnavailable: raised only once the worker is stopping during a store outage.
            # PublishFailed: a retry or dead letter could not be handed on. Either way the rest
            # goes back to the queue, and what reached the back-end is found there next time;
            # what is already in a tier or dead-lettered stays so (requeued, it would be
            # handled twice).
            requeue = set(range(len(deliveries))) - handed_on
            log.warning(
                "worker.stopped_during_store_outage"
                if isinstance(exc, StoreUnavailable)
                else "worker.publish_failed",
                route=self.route.name,
                requeued=len(requeue),
                message_ids=[deliveries[position].key for position in sorted(requeue)],
                error=describe(exc),
            )
            return requeue
        except ConnectionLost:
            raise  # the consumer's: nothing acked, the broker redelivers
        except Exception as exc:
            # Anything else (a dead letter the store refuses, a bug): what is already in a
            # tier or dead-lettered must not come back as well.
            requeue = set(range(len(deliveries))) - handed_on
            log.exception(
                "worker.batch_failed",
                route=self.route.name,
                requeued=len(requeue),
                message_ids=[deliveries[position].key for position in sorted(requeue)],
                error=describe(exc),
            )
            return requeue

    def process(
        self, deliveries: Sequence[Delivery], broker: Broker, handed_on: set[int]
    ) -> Collection[int]:
        """The batch's steps; adds to `handed_on` the positions sent to a tier or dead letter."""
        commands, malformed = self.decode_all(deliveries)
        requests = self.patiently(
            lambda: self.route.store.get_requests({c.envelope.subject for c in commands})
        )
        for position, exc in malformed:
            self.hand_on(deliveries[position], broker, exc, None)
            handed_on.add(position)
        taken: list[_Taken] = []
        duplicates: list[_Command] = []
        for command in commands:
            envelope = command.envelope
            self.slot.begin(command.delivery.key, envelope.subject)
            # Every line logged for this command (the adapter's and its HTTP or SOAP client's
            # included) carries the request's and the message's ids; it, and the reason of a
            # failure, has the reporter's own values masked (a back-end's error may quote their
            # name).
            reporter = _contact(requests.get(envelope.subject))
            ids = (envelope.subject, envelope.correlationid, command.delivery.key)
            with request_context(*ids), masking(reporter):
                try:
                    request = self.load_request(envelope, requests)
                    if self.already_recorded(request):
                        duplicates.append(command)
                        continue
                    receipt = self.deliver(command, request)
                except StoreUnavailable:
                    raise  # auditing a failed try, while stopping: not the back-end's failure
                except Exception as exc:
                    self.hand_on(command.delivery, broker, exc, envelope)
                    handed_on.add(command.position)
                    continue
            taken.append(self.taken(command, request, receipt))
        try:
            self.patiently(lambda: self.record_receipts(taken, duplicates))
        except StoreUnavailable:
            raise
        except Exception as exc:  # not an outage (e.g. a value the database refuses)
            log.warning(
                "worker.receipts_not_recorded",
                route=self.route.name,
                messages=len(taken) + len(duplicates),
                error=describe(exc),
            )
            self.record_one_by_one(taken, duplicates, broker, handed_on)
        return ()

    def record_one_by_one(
        self,
        taken: list[_Taken],
        duplicates: list[_Command],
        broker: Broker,
        handed_on: set[int],
    ) -> None:
        """After the batch's group commit was refused: each receipt in a transaction of its
        own, so that one value the store refuses holds back only its own message, which is
        dead-lettered with the store's reason (requeued, it would be refused again until the
        broker's delivery limit took it, and the whole batch with it)."""
        alone: list[tuple[_Command, list[_Taken], list[_Command]]] = [
            *((t.command, [t], []) for t in taken),
            *((c, [], [c]) for c in duplicates),
        ]
        for command, receipts, repeats in alone:
            envelope = command.envelope
            with request_context(envelope.subject, envelope.correlationid, command.delivery.key):
                try:
                    self.patiently(partial(self.record_receipts, receipts, repeats))
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    refused = PermanentError(f"the store refused the receipt: {describe(exc)}")
                    self.hand_on(command.delivery, broker, refused, command.envelope)
                    handed_on.add(command.position)

    def patiently(self, step: Callable[[], T]) -> T:
        """A store step, tried until the store answers or the worker stops."""
        return until_store_answers(step, stop=self.stopping, route=self.route.name)

    def hand_on(
        self, delivery: Delivery, broker: Broker, exc: BaseException, envelope: Envelope | None
    ) -> None:
        """A failed delivery to a retry tier or the dead letter channel (it writes the store
        before it publishes, so trying again after a store failure publishes one copy)."""
        self.patiently(
            lambda: schedule_retry_or_dead_letter(self.route, delivery, broker, exc, envelope)
        )

    # --- the steps ------------------------------------------------------------------------
    def decode_all(
        self, deliveries: Sequence[Delivery]
    ) -> tuple[list[_Command], list[tuple[int, MalformedMessage]]]:
        """The commands that are envelopes, and the positions of the deliveries that are not
        (dead letters)."""
        commands: list[_Command] = []
        malformed: list[tuple[int, MalformedMessage]] = []
        for position, delivery in enumerate(deliveries):
            try:
                commands.append(_Command(position, delivery, decode(delivery)))
            except MalformedMessage as exc:
                malformed.append((position, exc))
        return commands, malformed

    def load_request(
        self, envelope: Envelope, requests: dict[str, ServiceRequest]
    ) -> ServiceRequest:
        """The full request (with the reporter, which some back-ends need), as loaded."""
        if envelope.type is not EventType.CREATED:
            raise MalformedMessage(f"message {envelope.id}: a command must be {EventType.CREATED}")
        request = requests.get(envelope.subject)
        if request is None:
            raise MalformedMessage(
                f"message {envelope.id}: unknown request {envelope.subject} (not in this "
                "worker's store: does another civicbus installation use the same broker vhost?)"
            )
        return request

    def already_recorded(self, request: ServiceRequest) -> bool:
        """A redelivery after the receipt was recorded: nothing left to do but audit and ack."""
        return any(ref.adapter == self.route.name for ref in request.backend_refs)

    def deliver(self, command: _Command, request: ServiceRequest) -> Receipt:
        """Find or submit, with quick in-process retries, each failed try audited."""
        return call_with_retries(
            lambda: self.find_or_submit(request),
            attempts=self.route.policy.immediate_attempts,
            on_error=lambda n, exc: self.audit_failed_try(
                command.delivery, command.envelope, n, exc
            ),
        )

    def find_or_submit(self, request: ServiceRequest) -> Receipt:
        """Idempotent consumer: ask the back-end first, create only when it lacks the request."""
        found = self.adapter.find(request.id)
        if found is not None:
            return replace(found, created=False)
        return self.adapter.submit(request)

    def audit_failed_try(
        self, delivery: Delivery, envelope: Envelope | None, try_number: int, exc: BaseException
    ) -> None:
        log.info(
            "worker.attempt_failed",
            route=self.route.name,
            request_id=envelope.subject if envelope else None,
            attempt=delivery.attempt,
            try_number=try_number,
            error=describe(exc),
        )
        self.patiently(lambda: self.audit(delivery, envelope, try_number, exc))

    def audit(
        self, delivery: Delivery, envelope: Envelope | None, try_number: int, exc: BaseException
    ) -> None:
        with self.route.store.transaction() as tx:
            tx.audit(
                actor=self.route.actor,
                action="attempt",
                request_id=envelope.subject if envelope else None,
                message_id=delivery.key,
                outcome="error",
                details={"attempt": delivery.attempt, "try": try_number, "error": describe(exc)},
            )

    def taken(
        self,
        command: _Command,
        request: ServiceRequest,
        receipt: Receipt,
        answered_at: datetime | None = None,
    ) -> _Taken:
        """The receipt with the `submitted` event it announces (built when the back-end
        answered, and again inside the commit for a request changed meanwhile)."""
        at = receipt.at
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
            receipt = replace(receipt, at=at)
        data = _public(request, self.route.name, receipt.reference, at)
        data["instance"] = self.route.name
        data["reference"] = receipt.reference
        submitted: Envelope = ENVELOPE_VALIDATOR.validate_python(
            {
                "type": EventType.SUBMITTED,
                "subject": request.id,
                "data": data,
                "correlationid": command.envelope.correlationid,
                "traceparent": command.envelope.traceparent,
            }
        )
        return _Taken(command, request, receipt, submitted, answered_at or datetime.now(UTC))

    def record_receipts(self, taken: list[_Taken], duplicates: list[_Command]) -> None:
        """Cross-references, `submitted` events, the statuses the back-end gave with its
        receipts, and audit entries of a batch, in one transaction (a request whose reference
        was already known, from a redelivery or another worker, is audited as a duplicate, no
        new event). Nothing is recorded when it raises: safe to call again."""
        if not taken and not duplicates:
            return
        recorded: list[_Taken] = []
        repeated = list(duplicates)
        statuses: list[tuple[StatusUpdate, RecordedUpdate | None, str]] = []
        with self.route.store.transaction() as tx:
            # The rows locked first, as status updates lock them: an update that came in since
            # the batch was read is in the `submitted` event, one still to come waits for this
            # commit, so the outbox never announces an older status after a newer one.
            now = tx.changed_requests({t.request.id: t.request for t in taken})
            # The hand-over is a change to each request, as its `submitted` event says.
            handed_over = datetime.now(UTC)
            new = tx.add_backend_refs(
                self.route.name,
                [(t.request.id, t.receipt.reference, t.receipt.at) for t in taken],
                changed_at=handed_over,
            )
            changed_at = _JSON_TIME.serializer.to_python(handed_over, mode="json")
            for item in taken:
                if item.request.id not in new:
                    repeated.append(item.command)
                    continue
                new.discard(item.request.id)  # a second copy in this batch is a duplicate
                if item.request.id in now:
                    item = self.taken(
                        item.command, now[item.request.id], item.receipt, item.answered_at
                    )
                item.submitted.data["changed_at"] = changed_at  # its own dict (public_data)
                recorded.append(item)
                self.audit_receipt(tx, item)
            for command in repeated:
                self.audit_duplicate(tx, command)
            routing_key = event_routing_key(EventType.SUBMITTED, self.route.name)
            tx.add_outbox_events(
                [OutboxEvent(t.submitted, EVENTS_EXCHANGE, routing_key) for t in recorded]
            )
            for item in recorded:
                # In this transaction: committed with the reference, or retried with it.
                update = self.backend_status(item.request, item.receipt)
                if update is not None:
                    correlation_id = item.command.envelope.correlationid
                    done = record_status_update_in(
                        tx, update, actor=self.route.actor, correlation_id=correlation_id
                    )
                    statuses.append((update, done, correlation_id))
        # One line per message, from a logger bound once per batch: a third cheaper than
        # looking the configured logger up again for every line.
        batch_log = log.bind(route=self.route.name)
        for item in recorded:
            batch_log.info(
                "request.submitted",
                request_id=item.request.id,
                correlation_id=item.command.envelope.correlationid,
                message_id=item.command.delivery.key,
                reference=item.receipt.reference,
                created=item.receipt.created,
                attempt=item.command.delivery.attempt,
            )
        for update, done, correlation_id in statuses:
            log_status_update(update, done, correlation_id)

    def audit_receipt(self, tx: Transaction, item: _Taken) -> None:
        """One entry for the attempt that reached the back-end: `submitted`, with the attempt's
        number beside the reference (the failed ones before it have an `attempt` entry each)."""
        tx.audit(
            actor=self.route.actor,
            action="submitted",
            request_id=item.request.id,
            message_id=item.command.envelope.id,
            outcome="ok" if item.receipt.created else "found",
            details={
                "attempt": item.command.delivery.attempt,
                "reference": item.receipt.reference,
                "created": item.receipt.created,
            },
            at=item.answered_at,
        )

    def audit_duplicate(self, tx: Transaction, command: _Command) -> None:
        tx.audit(
            actor=self.route.actor,
            action="attempt",
            request_id=command.envelope.subject,
            message_id=command.envelope.id,
            outcome="duplicate",
            details={"note": "receipt already recorded; redelivery acknowledged"},
        )

    def backend_status(self, request: ServiceRequest, receipt: Receipt) -> StatusUpdate | None:
        """The status a back-end answered with for the new work (e.g. `for_triage`), as an
        update recorded like any status change; None when it gave none or the request has it."""
        if receipt.status is None or receipt.status is request.status:
            return None
        return StatusUpdate(
            request_id=request.id,
            status=receipt.status,
            at=receipt.at if receipt.at.tzinfo else receipt.at.replace(tzinfo=UTC),
            update_id=f"{self.route.name}:receipt",
            source=self.route.name,
        )


#: Every field of a reporter is contact data (a field added later too).
_REPORTER_FIELDS = tuple(Reporter.model_fields)


def _contact(request: ServiceRequest | None) -> tuple[str | None, ...]:
    """The reporter's values of `request` (none for an unknown request)."""
    if request is None:
        return ()
    return tuple(getattr(request.reporter, name) for name in _REPORTER_FIELDS)


#: A cross-reference's time in the JSON form BackendRef's dump gives it (`...Z` in UTC).
_JSON_TIME: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def _public(request: ServiceRequest, adapter: str, reference: str, at: datetime) -> dict[str, Any]:
    """The request as events carry it (`public_data`), holding the new cross-reference of
    `adapter`, written into the dump as `BackendRef.model_dump(mode="json")` would give it
    (neither a copy of the model nor a BackendRef built and dumped: ~5 us a message)."""
    data = request.public_data()
    data["backend_refs"] = [
        *(r for r in data["backend_refs"] if r["adapter"] != adapter),
        {
            "adapter": adapter,
            "reference": reference,
            "submitted_at": _JSON_TIME.serializer.to_python(at, mode="json"),
        },
    ]
    return data
