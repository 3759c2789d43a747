"""Intake: accept one new service request, durably, whatever channel it came in on.

The API and the CLI both call `accept_request`. It writes the request, its outbox event
`civicbus.request.created` and its audit entry in one store transaction, so a request answered
is a request that will be delivered (transactional outbox). A repeated Idempotency-Key, or a
repeated `external_id` attribute where the service defines one, gets the first answer (C-15).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from bus.broker.topology import EVENTS_EXCHANGE, event_routing_key
from bus.store import AlreadyExists, Client, Store, Transaction
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


@dataclass(frozen=True)
class Prepared:
    """A new request ready to be written: the request, its event, its answer and its key."""

    request: ServiceRequest
    token: str | None
    answer: list[dict[str, Any]]
    envelope: Envelope
    actor: str
    client: Client | None
    key: str | None


def replay(
    store: Store, draft: RequestDraft, client: Client | None, header: str | None
) -> Accepted | None:
    """The first answer when this create repeats an earlier one's idempotency key (C-15)."""
    key = idempotency_key(draft, header) if client is not None else None
    if client is None or key is None:
        return None
    earlier = store.idempotent_response(client.id, key)
    if earlier is None:
        return None
    log.info("intake.replayed", client=client.name, service_code=draft.service.code)
    return Accepted(answer=earlier["answer"], request=None, token=None, replayed=True)


def prepare(
    draft: RequestDraft,
    *,
    client: Client | None,
    actor: str,
    idempotency_header: str | None = None,
    channel: Channel = Channel.WEB,
    media: tuple[Media, ...] = (),
    correlation_id: str | None = None,
    now: datetime | None = None,
) -> Prepared:
    """Give a valid draft its id, token, answer and `created` event; writes nothing."""
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
    key = idempotency_key(draft, idempotency_header) if client is not None else None
    return Prepared(request, token, answer, envelope, actor, client, key)


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
    earlier = replay(store, draft, client, idempotency_header)
    if earlier is not None:
        return earlier
    prepared = prepare(
        draft,
        client=client,
        actor=actor,
        idempotency_header=idempotency_header,
        channel=channel,
        media=media,
        correlation_id=correlation_id,
        now=now,
    )
    outcome = write_batch(store, [prepared])[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def write_batch(store: Store, batch: Sequence[Prepared]) -> list[Accepted | Exception]:
    """Write several prepared requests in one transaction (group commit), each all or nothing.

    If the shared transaction fails on a conflict (two creates with one idempotency key), each
    is written on its own, so one request's problem never loses another's.
    """
    try:
        with store.transaction() as tx:
            for prepared in batch:
                _write(tx, prepared)
    except AlreadyExists:
        if len(batch) == 1:
            return [_after_conflict(store, batch[0])]
        return [_write_alone(store, prepared) for prepared in batch]
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
        return [_write_alone(store, prepared) for prepared in batch]
    return [_accepted(prepared) for prepared in batch]


def _write_alone(store: Store, prepared: Prepared) -> Accepted | Exception:
    try:
        with store.transaction() as tx:
            _write(tx, prepared)
    except AlreadyExists:
        return _after_conflict(store, prepared)
    except Exception as exc:
        return exc
    return _accepted(prepared)


def _after_conflict(store: Store, prepared: Prepared) -> Accepted | Exception:
    # Two creates with one idempotency key raced: the other committed first; answer as it did.
    client, key = prepared.client, prepared.key
    earlier = store.idempotent_response(client.id, key) if client and key else None
    if earlier is None:
        return AlreadyExists(f"request {prepared.request.id} conflicts with stored data")
    return Accepted(answer=earlier["answer"], request=None, token=None, replayed=True)


def _accepted(prepared: Prepared) -> Accepted:
    request = prepared.request
    log.info(
        "intake.accepted",
        request_id=request.id,
        service_code=request.service_code,
        jurisdiction=request.jurisdiction,
        message_id=prepared.envelope.id,
    )
    return Accepted(answer=prepared.answer, request=request, token=prepared.token)


def _write(tx: Transaction, prepared: Prepared) -> None:
    """The request, its outbox event, its audit entry and its idempotency record."""
    request, envelope = prepared.request, prepared.envelope
    tx.add_request(request, token=prepared.token)
    tx.add_outbox(
        envelope,
        exchange=EVENTS_EXCHANGE,
        routing_key=event_routing_key(EventType.CREATED, request.service_code),
    )
    tx.audit(
        actor=prepared.actor,
        action="accepted",
        request_id=request.id,
        message_id=envelope.id,
        details={
            "service_code": request.service_code,
            "jurisdiction": request.jurisdiction,
            "channel": request.channel.value,
            "batch": prepared.token is not None,
        },
    )
    if prepared.client is not None and prepared.key is not None:
        tx.save_idempotent_response(prepared.client.id, prepared.key, {"answer": prepared.answer})
