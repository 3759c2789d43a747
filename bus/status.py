"""Recording a status change: history, canonical status, events and audit in one transaction.

The same function serves back-ends that push (POST /servicerequestupdates, C-22) and the worker's
status poller; a repeated `update_id` is a harmless no-op, so either may deliver twice. Only the
API refuses an update_id repeated with other content: its client hears the refusal, while a
poller re-reading a page must not stall on a back-end that rewrote an old update.
"""

from __future__ import annotations

import structlog

from bus.broker.topology import EVENTS_EXCHANGE, event_routing_key
from bus.store import Store
from schemas.events import Envelope, EventType
from schemas.model import ServiceRequest, StatusUpdate

log = structlog.get_logger(__name__)


def record_status_update(
    store: Store,
    update: StatusUpdate,
    *,
    actor: str,
    correlation_id: str | None = None,
    refuse_conflicts: bool = False,
) -> ServiceRequest | None:
    """Apply `update`; return the updated request, or None when the update_id was already seen
    or the update repeats the current status without a note or media (nothing is recorded).

    Emits `civicbus.request.status_changed` and, when the new status is a closed one,
    `civicbus.request.closed` (both carrying the request without personal data). Raises KeyError
    for an unknown request, StoreUnavailable when the store cannot be reached and, with
    `refuse_conflicts`, UpdateConflict when the update_id was recorded with other content.
    """
    with store.transaction() as tx:
        updated = tx.apply_status_update(update, refuse_conflicts=refuse_conflicts)
        if updated is None:
            log.info(
                "status.nothing_new",
                request_id=update.request_id,
                correlation_id=correlation_id or update.request_id,
                update_id=update.update_id,
                source=update.source,
            )
            return None
        data = updated.without_personal_data().model_dump(mode="json")
        kinds = [EventType.STATUS_CHANGED]
        if update.status.is_closed:
            kinds.append(EventType.CLOSED)
        message_ids = []
        for kind in kinds:
            envelope = Envelope(
                type=kind,
                subject=updated.id,
                data=data,
                correlationid=correlation_id or updated.id,
            )
            tx.add_outbox(
                envelope,
                exchange=EVENTS_EXCHANGE,
                routing_key=event_routing_key(kind, update.status.value),
            )
            message_ids.append(envelope.id)
        tx.audit(
            actor=actor,
            action="status_changed",
            request_id=updated.id,
            message_id=message_ids[0],
            details={
                "status": update.status.value,
                "update_id": update.update_id,
                "source": update.source,
                "external_status_code": update.external_status_code,
            },
        )
    log.info(
        "status.changed",
        request_id=updated.id,
        correlation_id=correlation_id or updated.id,
        status=update.status.value,
        update_id=update.update_id,
        source=update.source,
    )
    return updated
