"""Recording a status change: history, canonical status, events and audit in one transaction.

The same function serves back-ends that push (POST /servicerequestupdates) and the worker's
status poller; a repeated `update_id` is a harmless no-op, so either may deliver twice. Only the
API refuses an update_id repeated with other content: its client hears the refusal, while a
poller re-reading a page must not stall on a back-end that rewrote an old update.

Updates may arrive out of order (a page polled late, pushes racing): one dated before the
request's current status is kept in the history (GET /servicerequestupdates lists updates in
their own time order) and changes nothing else. Subscribers hear `status_changed` (and `closed`)
only when the status changes, `noted` for an update recorded without changing it.
"""

from __future__ import annotations

import structlog

from bus.broker.topology import EVENTS_EXCHANGE, event_routing_key
from bus.store import RecordedUpdate, Store, Transaction, UpdatesNotAllowed
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
    client_id: int | None = None,
) -> ServiceRequest | None:
    """Record `update`; return the request as it now is, or None when the update_id was
    already seen or the update repeats the current status without a note, media or back-end
    status code (nothing is recorded).

    A change of the canonical status emits `civicbus.request.status_changed` and, for a
    closed status, `civicbus.request.closed`; the same status with a note (media, back-end
    code), or an update older than the request's current status (history only), emits
    `civicbus.request.noted` (each carrying the request without personal data). Raises
    KeyError for an unknown request, StoreUnavailable when the store cannot be reached and,
    with `refuse_conflicts`, UpdateConflict when the update_id was recorded with other content;
    with `client_id` (an API client's), UpdatesNotAllowed when that client may not post status
    updates as the writing transaction sees it.
    """
    with store.transaction() as tx:
        if client_id is not None and not tx.client_may_post_updates(client_id):
            # Checked again where the update is written: a deny committed since the caller
            # read the client would otherwise let this one through.
            raise UpdatesNotAllowed(client_id)
        recorded = record_status_update_in(
            tx,
            update,
            actor=actor,
            correlation_id=correlation_id,
            refuse_conflicts=refuse_conflicts,
        )
    log_status_update(update, recorded, correlation_id)
    return recorded.request if recorded is not None else None


def record_status_update_in(
    tx: Transaction,
    update: StatusUpdate,
    *,
    actor: str,
    correlation_id: str | None = None,
    refuse_conflicts: bool = False,
) -> RecordedUpdate | None:
    """What `record_status_update` does, inside the caller's transaction (committed with
    whatever else it holds); returns what was recorded, None when nothing was. Log it with
    `log_status_update` once committed."""
    recorded = tx.apply_status_update(update, refuse_conflicts=refuse_conflicts)
    if recorded is None:
        return None
    request = recorded.request
    message_ids = _queue_events(tx, recorded, correlation_id)
    details: dict[str, object] = {
        "status": update.status.value,
        "update_id": update.update_id,
        "source": update.source,
        "external_status_code": update.external_status_code,
    }
    if recorded.history_only:
        action = "status_history"
        details["recorded_as"] = "history only: older than the current status"
        details["current_status"] = request.status.value
        details["current_since"] = request.updated_at.isoformat()
    else:
        action = "status_changed" if recorded.status_changed else "status_noted"
    tx.audit(
        actor=actor,
        action=action,
        request_id=request.id,
        message_id=message_ids[0],  # status_changed or noted: there is always one
        details=details,
    )
    return recorded


def log_status_update(
    update: StatusUpdate, recorded: RecordedUpdate | None, correlation_id: str | None = None
) -> None:
    """One line saying what became of a committed status update."""
    context = {
        "request_id": update.request_id,
        "correlation_id": correlation_id or update.request_id,
        "update_id": update.update_id,
        "source": update.source,
        "status": update.status.value,
    }
    if recorded is None:
        log.info("status.nothing_new", **context)
    elif recorded.history_only:
        log.info("status.history_only", current_status=recorded.request.status.value, **context)
    elif recorded.status_changed:
        log.info("status.changed", **context)
    else:
        log.info("status.noted", **context)


def _queue_events(
    tx: Transaction, recorded: RecordedUpdate, correlation_id: str | None
) -> list[str]:
    """Queue status_changed, and closed for a closed status, when the update changed the
    request's canonical status; else noted (a note, media or back-end code with the status the
    request has, or a late update kept in its history): subscribers' copies of its notes and
    history follow. The ids of the queued events."""
    request = recorded.request
    data = request.public_data()
    kinds = [EventType.STATUS_CHANGED] if recorded.status_changed else [EventType.NOTED]
    if recorded.status_changed and request.status.is_closed:
        kinds.append(EventType.CLOSED)
    message_ids = []
    for kind in kinds:
        envelope = Envelope(
            type=kind, subject=request.id, data=data, correlationid=correlation_id or request.id
        )
        tx.add_outbox(
            envelope,
            exchange=EVENTS_EXCHANGE,
            routing_key=event_routing_key(kind, request.status.value),
        )
        message_ids.append(envelope.id)
    return message_ids
