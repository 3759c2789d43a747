"""Intake: accept one new service request, durably, whatever channel it came in on.

The API and the CLI both call `accept_request`. It writes the request, its outbox event
`civicbus.request.created` and its audit entry in one store transaction, so a request answered
is a request that will be delivered (transactional outbox). A repeated Idempotency-Key, or a
repeated `external_id` attribute where the service defines one, gets the first answer (C-15).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from bus.broker.topology import EVENTS_EXCHANGE, event_routing_key
from bus.store import AlreadyExists, Client, Store
from schemas import open311_render as render
from schemas.events import Envelope, EventType
from schemas.model import Channel, Media, ServiceRequest, ServiceType
from schemas.open311 import RequestDraft

log = structlog.get_logger(__name__)

#: The attribute a service may define so that a partner's own id makes a create idempotent.
EXTERNAL_ID_ATTRIBUTE = "external_id"

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid() -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 Crockford base-32 characters.

    Time-sortable (ids sort by creation time) and unguessable (80 bits from os.urandom).
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


def new_request_id() -> str:
    """A civicbus request id (a ULID)."""
    return new_ulid()


def new_token() -> str:
    """A batch token (C-16): a ULID with a `T` prefix, so it can never be mistaken for an id."""
    return "T" + new_ulid()


@dataclass(frozen=True)
class Accepted:
    """The outcome of an intake: the Open311 answer, and the request unless it was a replay."""

    answer: list[dict[str, Any]]
    request: ServiceRequest | None
    token: str | None
    replayed: bool = False


def idempotency_key(draft: RequestDraft, header_key: str | None) -> str | None:
    """The key that makes a create idempotent: the header, else the service's external id."""
    if header_key:
        return f"header:{header_key}"
    if draft.service.attribute(EXTERNAL_ID_ATTRIBUTE) is not None:
        external = draft.attributes.get(EXTERNAL_ID_ATTRIBUTE)
        if isinstance(external, str):
            return f"external_id:{draft.service.jurisdiction}:{draft.service.code}:{external}"
    return None


def accept_request(
    store: Store,
    draft: RequestDraft,
    *,
    client: Client | None,
    actor: str,
    idempotency_header: str | None = None,
    channel: Channel = Channel.WEB,
    media: tuple[Media, ...] = (),
    correlation_id: str | None = None,
    now: datetime | None = None,
) -> Accepted:
    """Store a new request with its `created` event and audit entry, all or nothing.

    Raises StoreUnavailable when the store cannot take it; nothing is then written.
    """
    key = idempotency_key(draft, idempotency_header) if client is not None else None
    if client is not None and key is not None:
        earlier = store.idempotent_response(client.id, key)
        if earlier is not None:
            log.info("intake.replayed", client=client.name, service_code=draft.service.code)
            return Accepted(answer=earlier["answer"], request=None, token=None, replayed=True)

    request = draft.to_request(
        request_id=new_request_id(),
        at=now or datetime.now(UTC),
        channel=channel,
        media=media,
    )
    token = new_token() if draft.service.type is ServiceType.BATCH else None
    answer = render.created(
        draft.service, request_id=request.id, token=token, account_id=request.reporter.account_id
    )
    # Workers read the full request from the store: the event carries no personal data.
    envelope = Envelope(
        type=EventType.CREATED,
        subject=request.id,
        data=request.without_personal_data().model_dump(mode="json"),
        correlationid=correlation_id or request.id,
    )
    try:
        _write(store, request, envelope, token, actor, client, key, answer)
    except AlreadyExists:
        # Two creates with one Idempotency-Key raced: the other committed first; answer as it did.
        earlier = store.idempotent_response(client.id, key) if client and key else None
        if earlier is None:
            raise
        return Accepted(answer=earlier["answer"], request=None, token=None, replayed=True)
    log.info(
        "intake.accepted",
        request_id=request.id,
        service_code=request.service_code,
        jurisdiction=request.jurisdiction,
        message_id=envelope.id,
    )
    return Accepted(answer=answer, request=request, token=token)


def _write(
    store: Store,
    request: ServiceRequest,
    envelope: Envelope,
    token: str | None,
    actor: str,
    client: Client | None,
    key: str | None,
    answer: list[dict[str, Any]],
) -> None:
    """The request, its outbox event, its audit entry and its idempotency record: one unit."""
    with store.transaction() as tx:
        tx.add_request(request, token=token)
        tx.add_outbox(
            envelope,
            exchange=EVENTS_EXCHANGE,
            routing_key=event_routing_key(EventType.CREATED, request.service_code),
        )
        tx.audit(
            actor=actor,
            action="accepted",
            request_id=request.id,
            message_id=envelope.id,
            details={
                "service_code": request.service_code,
                "jurisdiction": request.jurisdiction,
                "channel": request.channel.value,
                "batch": token is not None,
            },
        )
        if client is not None and key is not None:
            tx.save_idempotent_response(client.id, key, {"answer": answer})
