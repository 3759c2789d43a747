"""The path of commands through an adapter worker, as a short sequence of named steps:

decode → load requests → already recorded? → find or submit (idempotent consumer, quick
retries) → record receipts → ack (by returning). Any failure goes to the redelivery policy.

Deliveries are only ever taken in batches (those the broker has already handed over, up to half
the prefetch; a lone message is a batch of one): each goes through the adapter in order, then the
receipts of the whole batch are recorded in one store transaction (group commit) and only then
acknowledged. A crash before that commit leaves
every message of the batch unacknowledged: redelivered, found in the back-end, recorded once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC

import structlog

from adapters import Adapter, Receipt
from bus.broker.topology import EVENTS_EXCHANGE, event_routing_key
from bus.logging import request_context
from bus.status import record_status_update
from bus.store import OutboxEvent, Transaction
from bus.worker._consumer import Broker
from bus.worker._delivery import Delivery, MalformedMessage, decode
from bus.worker._failures import Route, describe, schedule_retry_or_dead_letter
from bus.worker._retry import call_with_retries
from schemas.events import Envelope, EventType
from schemas.model import BackendRef, ServiceRequest, StatusUpdate

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Command:
    """One decoded command of a batch and where it is in the batch."""

    position: int
    delivery: Delivery
    envelope: Envelope


@dataclass(frozen=True)
class _Taken:
    """A command the back-end holds, waiting for the batch's group commit."""

    command: _Command
    request: ServiceRequest
    receipt: Receipt
    submitted: Envelope


@dataclass(frozen=True)
class CommandWorker:
    """Runs `civicbus.request.created` commands through one adapter instance."""

    route: Route
    adapter: Adapter

    def handle_batch(self, deliveries: Sequence[Delivery], broker: Broker) -> Collection[int]:
        """Process the deliveries in order; returns the positions of those to requeue.

        Failed commands go to a retry tier or the dead letter channel one by one; the receipts
        of the others are recorded together. Raises (nothing done) when the store cannot even
        be read.
        """
        commands, malformed = self.decode_all(deliveries)
        requests = self.route.store.get_requests({c.envelope.subject for c in commands})
        for delivery, exc in malformed:
            schedule_retry_or_dead_letter(self.route, delivery, broker, exc, None)
        taken: list[_Taken] = []
        duplicates: list[_Command] = []
        for command in commands:
            envelope = command.envelope
            # Every line logged for this command (the adapter's and its HTTP or SOAP client's
            # included) carries the request's ids.
            with request_context(envelope.subject, envelope.correlationid):
                try:
                    request = self.load_request(envelope, requests)
                    if self.already_recorded(request):
                        duplicates.append(command)
                        continue
                    receipt = self.deliver(command, request)
                except Exception as exc:
                    schedule_retry_or_dead_letter(
                        self.route, command.delivery, broker, exc, envelope
                    )
                    continue
            taken.append(self.taken(command, request, receipt))
        try:
            recorded = self.record_receipts(taken, duplicates)
        except Exception as exc:
            log.warning(
                "worker.receipts_not_recorded",
                route=self.route.name,
                messages=len(taken) + len(duplicates),
                error=describe(exc),
            )
            return {t.command.position for t in taken} | {c.position for c in duplicates}
        return self.record_backend_statuses(recorded)

    # --- the steps ------------------------------------------------------------------------
    def decode_all(
        self, deliveries: Sequence[Delivery]
    ) -> tuple[list[_Command], list[tuple[Delivery, MalformedMessage]]]:
        """The commands that are envelopes, and the deliveries that are not (dead letters)."""
        commands: list[_Command] = []
        malformed: list[tuple[Delivery, MalformedMessage]] = []
        for position, delivery in enumerate(deliveries):
            try:
                commands.append(_Command(position, delivery, decode(delivery)))
            except MalformedMessage as exc:
                malformed.append((delivery, exc))
        return commands, malformed

    def load_request(
        self, envelope: Envelope, requests: dict[str, ServiceRequest]
    ) -> ServiceRequest:
        """The full request (with the reporter, which some back-ends need), as loaded."""
        if envelope.type is not EventType.CREATED:
            raise MalformedMessage(f"message {envelope.id}: a command must be {EventType.CREATED}")
        request = requests.get(envelope.subject)
        if request is None:
            raise MalformedMessage(f"message {envelope.id}: unknown request {envelope.subject}")
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
        with self.route.store.transaction() as tx:
            tx.audit(
                actor=self.route.actor,
                action="attempt",
                request_id=envelope.subject if envelope else None,
                message_id=delivery.key,
                outcome="error",
                details={"attempt": delivery.attempt, "try": try_number, "error": describe(exc)},
            )

    def taken(self, command: _Command, request: ServiceRequest, receipt: Receipt) -> _Taken:
        """The receipt with the `submitted` event it announces (built before the commit)."""
        at = receipt.at
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
            receipt = replace(receipt, at=at)
        ref = BackendRef(adapter=self.route.name, reference=receipt.reference, submitted_at=at)
        submitted = Envelope(
            type=EventType.SUBMITTED,
            subject=request.id,
            data={
                **_public(request, ref),
                "instance": self.route.name,
                "reference": receipt.reference,
            },
            correlationid=command.envelope.correlationid,
            traceparent=command.envelope.traceparent,
        )
        return _Taken(command, request, receipt, submitted)

    def record_receipts(self, taken: list[_Taken], duplicates: list[_Command]) -> list[_Taken]:
        """Cross-references, `submitted` events and audit entries of a batch, in one
        transaction; returns the receipts recorded now (a request whose reference was already
        known, from a redelivery or another worker, is audited as a duplicate, no new event)."""
        if not taken and not duplicates:
            return []
        recorded: list[_Taken] = []
        with self.route.store.transaction() as tx:
            new = tx.add_backend_refs(
                self.route.name,
                [(t.request.id, t.receipt.reference, t.receipt.at) for t in taken],
            )
            for item in taken:
                if item.request.id not in new:
                    duplicates.append(item.command)
                    continue
                new.discard(item.request.id)  # a second copy in this batch is a duplicate
                recorded.append(item)
                self.audit_receipt(tx, item)
            for command in duplicates:
                self.audit_duplicate(tx, command)
            tx.add_outbox_events(
                [
                    OutboxEvent(
                        t.submitted,
                        EVENTS_EXCHANGE,
                        event_routing_key(EventType.SUBMITTED, self.route.name),
                    )
                    for t in recorded
                ]
            )
        # One line per message, from a logger bound once per batch: a third cheaper than
        # looking the configured logger up again for every line.
        batch_log = log.bind(route=self.route.name)
        for item in recorded:
            batch_log.info(
                "request.submitted",
                request_id=item.request.id,
                correlation_id=item.command.envelope.correlationid,
                reference=item.receipt.reference,
                created=item.receipt.created,
                attempt=item.command.delivery.attempt,
            )
        return recorded

    def audit_receipt(self, tx: Transaction, item: _Taken) -> None:
        outcome = "ok" if item.receipt.created else "found"
        tx.audit(
            actor=self.route.actor,
            action="attempt",
            request_id=item.request.id,
            message_id=item.command.envelope.id,
            outcome=outcome,
            details={"attempt": item.command.delivery.attempt},
        )
        tx.audit(
            actor=self.route.actor,
            action="submitted",
            request_id=item.request.id,
            message_id=item.command.envelope.id,
            outcome=outcome,
            details={"reference": item.receipt.reference, "created": item.receipt.created},
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

    def record_backend_statuses(self, recorded: list[_Taken]) -> set[int]:
        """Statuses the back-end gave with its receipts; positions whose status could not be
        stored are requeued, as a crash there would leave them."""
        requeue: set[int] = set()
        for item in recorded:
            try:
                self.record_backend_status(item.request, item.receipt)
            except Exception as exc:
                log.warning(
                    "worker.receipt_status_not_recorded",
                    route=self.route.name,
                    request_id=item.request.id,
                    correlation_id=item.command.envelope.correlationid,
                    error=describe(exc),
                )
                requeue.add(item.command.position)
        return requeue

    def record_backend_status(self, request: ServiceRequest, receipt: Receipt) -> None:
        """A back-end that answers with its own status for the new work (e.g. `for_triage`)
        gets it recorded like any status change; repeated receipts repeat nothing."""
        if receipt.status is None or receipt.status is request.status:
            return
        update = StatusUpdate(
            request_id=request.id,
            status=receipt.status,
            at=receipt.at if receipt.at.tzinfo else receipt.at.replace(tzinfo=UTC),
            update_id=f"{self.route.name}:receipt",
            source=self.route.name,
        )
        record_status_update(self.route.store, update, actor=self.route.actor)


def _public(request: ServiceRequest, ref: BackendRef) -> dict[str, object]:
    """The request as events carry it: with the new cross-reference, without personal data
    (the same document as `without_personal_data().model_dump(mode="json")` of the request
    holding `ref`, dumped once instead of copying the model twice)."""
    data = request.model_dump(mode="json")
    data["reporter"] = dict.fromkeys(data["reporter"])
    data["backend_refs"] = [
        *(r for r in data["backend_refs"] if r["adapter"] != ref.adapter),
        ref.model_dump(mode="json"),
    ]
    return data
