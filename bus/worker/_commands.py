"""The path of one command through an adapter worker, as a short sequence of named steps:

decode → load request → already recorded? → find or submit (idempotent consumer, quick
retries) → record receipt → ack (by returning). Any failure goes to the redelivery policy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC

import structlog

from adapters import Adapter, Receipt
from bus.broker.topology import EVENTS_EXCHANGE, event_routing_key
from bus.status import record_status_update
from bus.worker._consumer import Broker
from bus.worker._delivery import Delivery, MalformedMessage, decode
from bus.worker._failures import Route, describe, schedule_retry_or_dead_letter
from bus.worker._retry import call_with_retries
from schemas.events import Envelope, EventType
from schemas.model import BackendRef, ServiceRequest, StatusUpdate

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CommandWorker:
    """Runs `civicbus.request.created` commands through one adapter instance."""

    route: Route
    adapter: Adapter

    def __call__(self, delivery: Delivery, broker: Broker) -> None:
        envelope: Envelope | None = None
        try:
            envelope = decode(delivery)
            request = self.load_request(envelope)
            if self.already_recorded(request, envelope):
                return
            receipt = call_with_retries(
                lambda: self.find_or_submit(request),
                attempts=self.route.policy.immediate_attempts,
                on_error=lambda n, exc: self.audit_failed_try(delivery, envelope, n, exc),
            )
        except Exception as exc:
            schedule_retry_or_dead_letter(self.route, delivery, broker, exc, envelope)
            return
        self.record_receipt(delivery, envelope, request, receipt)
        self.record_backend_status(request, receipt)

    # --- the steps ------------------------------------------------------------------------
    def load_request(self, envelope: Envelope) -> ServiceRequest:
        """The full request (with the reporter, which some back-ends need) from the store."""
        if envelope.type is not EventType.CREATED:
            raise MalformedMessage(f"message {envelope.id}: a command must be {EventType.CREATED}")
        request = self.route.store.get_request(envelope.subject)
        if request is None:
            raise MalformedMessage(f"message {envelope.id}: unknown request {envelope.subject}")
        return request

    def already_recorded(self, request: ServiceRequest, envelope: Envelope) -> bool:
        """A redelivery after the receipt was recorded: nothing left to do but ack."""
        if not any(ref.adapter == self.route.name for ref in request.backend_refs):
            return False
        with self.route.store.transaction() as tx:
            tx.audit(
                actor=self.route.actor,
                action="attempt",
                request_id=request.id,
                message_id=envelope.id,
                outcome="duplicate",
                details={"note": "receipt already recorded; redelivery acknowledged"},
            )
        return True

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

    def record_receipt(
        self, delivery: Delivery, envelope: Envelope, request: ServiceRequest, receipt: Receipt
    ) -> None:
        """Cross-reference, `submitted` event and audit entries, in one transaction."""
        at = receipt.at if receipt.at.tzinfo else receipt.at.replace(tzinfo=UTC)
        ref = BackendRef(adapter=self.route.name, reference=receipt.reference, submitted_at=at)
        submitted = Envelope(
            type=EventType.SUBMITTED,
            subject=request.id,
            data={
                **_public(request, ref),
                "instance": self.route.name,
                "reference": receipt.reference,
            },
            correlationid=envelope.correlationid,
            traceparent=envelope.traceparent,
        )
        outcome = "ok" if receipt.created else "found"
        with self.route.store.transaction() as tx:
            tx.add_backend_ref(request.id, self.route.name, receipt.reference, at)
            tx.audit(
                actor=self.route.actor,
                action="attempt",
                request_id=request.id,
                message_id=envelope.id,
                outcome=outcome,
                details={"attempt": delivery.attempt},
            )
            tx.audit(
                actor=self.route.actor,
                action="submitted",
                request_id=request.id,
                message_id=envelope.id,
                outcome=outcome,
                details={"reference": receipt.reference, "created": receipt.created},
            )
            tx.add_outbox(
                submitted,
                exchange=EVENTS_EXCHANGE,
                routing_key=event_routing_key(EventType.SUBMITTED, self.route.name),
            )
        log.info(
            "request.submitted",
            route=self.route.name,
            request_id=request.id,
            reference=receipt.reference,
            created=receipt.created,
            attempt=delivery.attempt,
        )

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
    """The request as events carry it: with the new cross-reference, without personal data."""
    refs = (*(r for r in request.backend_refs if r.adapter != ref.adapter), ref)
    updated = request.model_copy(update={"backend_refs": refs})
    return updated.without_personal_data().model_dump(mode="json")
