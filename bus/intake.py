"""Intake: accept one new service request, durably, whatever channel it came in on.

`prepare` turns a parsed report into a request with its answer; `write_batch` writes prepared
requests (the API's group commit, bus/api/committer.py), each with its outbox event
`civicbus.request.created` and its audit entry in one store transaction, so a request answered
is a request that will be delivered (transactional outbox). A repeated Idempotency-Key, or a
repeated `external_id` attribute where the service defines one, gets the first answer;
an Idempotency-Key repeated with a different report is refused (IdempotencyConflict).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any

import structlog
from prometheus_client import Counter

from bus.broker.topology import EVENTS_EXCHANGE, event_routing_key
from bus.metrics import REQUESTS_ACCEPTED
from bus.store import (
    AlreadyExists,
    Client,
    KeptWriter,
    OutboxEvent,
    Store,
    StoreUnavailable,
    Transaction,
    WriteConflict,
)
from schemas import open311_render as render
from schemas.events import Envelope, EventType
from schemas.model import Channel, Media, ServiceRequest, ServiceType
from schemas.open311 import RequestDraft

log = structlog.get_logger(__name__)

#: The attribute a service may define so that a partner's own id makes a create idempotent.
EXTERNAL_ID_ATTRIBUTE = "external_id"
#: How a stored idempotency key taken from the Idempotency-Key header begins (an external id's
#: begins `external_id:`); `civicbus store prune` deletes these after their window.
HEADER_KEY_PREFIX = "header:"

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every pair of Crockford digits, by the 10 bits they stand for: a ULID is 13 lookups.
_DIGIT_PAIRS = tuple(high + low for high in _CROCKFORD for low in _CROCKFORD)
#: Where each pair's 10 bits start, from the top of the 130 bits 26 digits hold.
_PAIR_SHIFTS = tuple(range(120, -1, -10))


def new_ulid() -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 Crockford base-32 characters.

    Time-sortable (ids sort by creation time) and unguessable (80 bits from os.urandom).
    """
    return crockford_base32(
        (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    )


def crockford_base32(value: int) -> str:
    """A number below 2**130 as 26 Crockford base-32 digits, most significant first."""
    return "".join([_DIGIT_PAIRS[value >> shift & 0x3FF] for shift in _PAIR_SHIFTS])


def new_request_id() -> str:
    """A civicbus request id (a ULID)."""
    return new_ulid()


def new_token() -> str:
    """A batch token: a ULID with a `T` prefix, so it can never be mistaken for an id."""
    return "T" + new_ulid()


@dataclass(frozen=True)
class Accepted:
    """The outcome of an intake: the Open311 answer, and the request unless it was a replay."""

    answer: list[dict[str, Any]]
    request: ServiceRequest | None
    token: str | None
    replayed: bool = False


#: The parts of a request the client reported (uploads by their digest), as an
#: Idempotency-Key's fingerprint covers them: not the id, times or channel of each attempt.
_REPORTED = {
    "jurisdiction",
    "service_code",
    "description",
    "attributes",
    "location",
    "reporter",
    "media",
}


def fingerprint(request: ServiceRequest) -> str:
    """SHA-256 of what the client reported in `request`, so that a repeat of one report can be
    told from another report sent with the same key."""
    return hashlib.sha256(request.model_dump_json(include=_REPORTED).encode()).hexdigest()


def idempotency_key(draft: RequestDraft, header_key: str | None) -> str | None:
    """The key that makes a create idempotent: the header, else the service's external id."""
    if header_key:
        return f"{HEADER_KEY_PREFIX}{header_key}"
    if draft.service.attribute(EXTERNAL_ID_ATTRIBUTE) is not None:
        external = draft.attributes.get(EXTERNAL_ID_ATTRIBUTE)
        if isinstance(external, str):
            return f"external_id:{draft.service.jurisdiction}:{draft.service.code}:{external}"
    return None


#: What became of one member of a batch `store_batch` wrote: None (written), the first answer
#: replayed, or the exception that refused it.
Outcome = Accepted | Exception | None


@dataclass(frozen=True)
class Prepared:
    """A new request ready to be written: the request, its answer, its key and (for an
    Idempotency-Key) the fingerprint of what was reported with it; its event, once asked for."""

    request: ServiceRequest
    token: str | None
    answer: list[dict[str, Any]]
    actor: str
    client: Client | None
    key: str | None
    fingerprint: str | None = None
    #: The caller's X-Correlation-Id, else the request's id.
    correlation_id: str | None = None

    @cached_property
    def envelope(self) -> Envelope:
        """The `civicbus.request.created` event, made where the request is written (the
        intake writer process, when the API has one: bus/api/intake_process.py), and kept."""
        # Workers read the full request from the store: the event carries no personal data.
        return Envelope(
            type=EventType.CREATED,
            subject=self.request.id,
            data=self.request.public_data(),
            correlationid=self.correlation_id or self.request.id,
        )


class ClientRevoked(Exception):
    """The client's key was revoked (or the client removed) before its request could be written."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was first used for a different report; nothing was written."""

    def __init__(self, header_key: str) -> None:
        super().__init__(f"Idempotency-Key {header_key!r} was already used for another report")
        self.header_key = header_key

    def __reduce__(self) -> tuple[type[IdempotencyConflict], tuple[str]]:
        # Made again from the key, not the message (it crosses from the intake writer process).
        return (type(self), (self.header_key,))


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
    """Give a valid draft its id, token and answer; writes nothing."""
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
    key = idempotency_key(draft, idempotency_header) if client is not None else None
    # Only a header key: an external_id names the partner's report, whatever it now says.
    digest = fingerprint(request) if key is not None and idempotency_header else None
    return Prepared(request, token, answer, actor, client, key, digest, correlation_id)


def write_batch(
    store: Store, batch: Sequence[Prepared], *, writer: KeptWriter | None = None
) -> list[Accepted | Exception]:
    """Write several prepared requests in one transaction (group commit), each all or nothing,
    and answer them (`store_batch`, `log_accepted`, then `answers`)."""
    outcomes = store_batch(store, batch, writer=writer)
    log_accepted(batch, outcomes)
    return answers(batch, outcomes)


def store_batch(
    store: Store, batch: Sequence[Prepared], *, writer: KeptWriter | None = None
) -> list[Outcome]:
    """Write several prepared requests in one transaction (group commit), each all or nothing:
    per member None (written), the first answer replayed, or the exception that refused it.

    In that transaction each member's client is checked to be still active (ClientRevoked if
    not; the client stays locked against revocation until the commit) and its idempotency key
    still unanswered (else the first answer is replayed), so neither check can race a
    revocation or a concurrent create. If the shared transaction fails, each member is
    written in a transaction of its own, so one request's problem (or a deadlock with another
    process, WriteConflict) never loses another's; a store that is unavailable fails every
    member with StoreUnavailable (nothing written). `writer`: the transactions' kept connection
    (the group commit's on SQLite), else each takes one of the store's.

    The members written are then logged (`log_accepted`) where they were written, and counted
    and answered (`answers`) by the API: this may run in the intake writer process
    (bus/api/intake_process.py).
    """
    begin = store.transaction if writer is None else writer.transaction
    try:
        with begin() as tx:
            return _write_group(tx, batch)
    except WriteConflict as exc:
        # PostgreSQL ended the batch to settle a deadlock with another process's transaction
        # (e.g. both inserting the same idempotency keys): the other one goes on, and each
        # member alone takes fewer locks, so an unrelated create is not lost with the batch.
        if len(batch) == 1:
            return [exc]
        return [_write_alone(store, prepared, begin) for prepared in batch]
    except StoreUnavailable as exc:
        return [exc] * len(batch)
    except AlreadyExists:
        if len(batch) == 1:
            return [_after_conflict(store, batch[0])]
        return [_write_alone(store, prepared, begin) for prepared in batch]
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
        return [_write_alone(store, prepared, begin) for prepared in batch]


def log_accepted(batch: Sequence[Prepared], outcomes: Sequence[Outcome]) -> None:
    """The `intake.accepted` line of each member `store_batch` wrote (None)."""
    # A logger bound once per batch: looking the configured one up again costs as much per line
    # as a third of the line.
    batch_log = log.bind()
    for prepared, outcome in zip(batch, outcomes, strict=True):
        if outcome is None:
            _log_accepted(prepared, batch_log)


def answers(batch: Sequence[Prepared], outcomes: Sequence[Outcome]) -> list[Accepted | Exception]:
    """The members' answers once `store_batch` wrote them: each written one (None) is counted
    and answered with its prepared answer."""
    return [
        _accepted(prepared) if outcome is None else outcome
        for prepared, outcome in zip(batch, outcomes, strict=True)
    ]


def _write_alone(
    store: Store, prepared: Prepared, begin: Callable[[], AbstractContextManager[Transaction]]
) -> Outcome:
    try:
        with begin() as tx:
            (outcome,) = _write_group(tx, [prepared])
    except AlreadyExists:
        return _after_conflict(store, prepared)
    except Exception as exc:
        return exc
    return outcome


def _after_conflict(store: Store, prepared: Prepared) -> Accepted | Exception:
    # Two creates with one idempotency key raced (PostgreSQL, several API processes): the
    # other committed first; answer as it did.
    client, key = prepared.client, prepared.key
    earlier = store.idempotent_response(client.id, key) if client and key else None
    if earlier is None:
        return AlreadyExists(f"request {prepared.request.id} conflicts with stored data")
    return _replayed(prepared, earlier)


def _replayed(prepared: Prepared, earlier: dict[str, Any]) -> Accepted | IdempotencyConflict:
    """The first answer given to the member's key again, unless the key first came
    with a different report: replaying then would drop this one without a word."""
    first = earlier.get("fingerprint")
    # Keys stored before fingerprints were kept, and external ids, have none: replayed.
    if first is not None and first != prepared.fingerprint:
        log.info(
            "intake.idempotency_conflict",
            client=prepared.client and prepared.client.name,
            service_code=prepared.request.service_code,
        )
        return IdempotencyConflict(str(prepared.key).removeprefix(HEADER_KEY_PREFIX))
    log.info(
        "intake.replayed",
        client=prepared.client and prepared.client.name,
        service_code=prepared.request.service_code,
    )
    answer = _with_account_id(earlier["answer"], prepared.request.reporter.account_id)
    return Accepted(answer=answer, request=None, token=None, replayed=True)


def _remembered(prepared: Prepared) -> dict[str, Any]:
    """What is stored with an idempotency key: the answer, and the fingerprint if any.

    The answer's `account_id` is the reporter's (personal data, kept in the reporter's row
    only, so that forgetting the reporter forgets it); a replay echoes the repeat's instead.
    """
    answer = _with_account_id(prepared.answer, None)
    if prepared.fingerprint is None:
        return {"answer": answer}
    return {"answer": answer, "fingerprint": prepared.fingerprint}


def _with_account_id(answer: list[dict[str, Any]], account_id: str | None) -> list[dict[str, Any]]:
    """The create answer with this `account_id` where it has one."""
    return [{**item, "account_id": account_id} if "account_id" in item else item for item in answer]


def _log_accepted(prepared: Prepared, batch_log: structlog.typing.FilteringBoundLogger) -> None:
    request = prepared.request
    batch_log.info(
        "intake.accepted",
        request_id=request.id,
        correlation_id=prepared.envelope.correlationid,
        service_code=request.service_code,
        jurisdiction=request.jurisdiction,
        message_id=prepared.envelope.id,
    )


def _accepted(prepared: Prepared) -> Accepted:
    """A written member's answer, counted."""
    request = prepared.request
    _accepted_counter(request.jurisdiction, request.service_code, request.channel.value).inc()
    return Accepted(answer=prepared.answer, request=request, token=prepared.token)


@lru_cache(maxsize=1024)
def _accepted_counter(jurisdiction: str, service_code: str, channel: str) -> Counter:
    """The accepted-requests counter of these labels (`labels` takes a lock and checks its
    arguments each time; the labels are a catalogue's few services, kept a thousand at most)."""
    return REQUESTS_ACCEPTED.labels(jurisdiction, service_code, channel)


def _write_group(tx: Transaction, batch: Sequence[Prepared]) -> list[Outcome]:
    """Check and write the batch inside `tx`: per member, None (written), the first answer
    replayed (repeated key) or ClientRevoked. One statement per table."""
    inactive = tx.inactive_clients({p.client.id for p in batch if p.client is not None})
    keyed = {(p.client.id, p.key) for p in batch if p.client is not None and p.key is not None}
    earlier = tx.idempotent_responses(keyed)
    outcomes: list[Outcome] = []
    written: list[Prepared] = []
    for prepared in batch:
        client, key = prepared.client, prepared.key
        if client is not None and client.id in inactive:
            outcomes.append(ClientRevoked(f"client {client.name} is revoked"))
            continue
        if client is not None and key is not None:
            answer = earlier.get((client.id, key))
            if answer is not None:
                outcomes.append(_replayed(prepared, answer))
                continue
            # A later member of this batch with the same key is judged against this member.
            earlier[(client.id, key)] = _remembered(prepared)
        outcomes.append(None)
        written.append(prepared)
    if written:
        _write(tx, written)
    return outcomes


def _write(tx: Transaction, batch: Sequence[Prepared]) -> None:
    """The requests, their outbox events, audit entries and idempotency records."""
    tx.add_requests(
        [p.request for p in batch],
        tokens={p.request.id: p.token for p in batch if p.token is not None},
    )
    tx.add_outbox_events(
        [
            OutboxEvent(
                p.envelope,
                EVENTS_EXCHANGE,
                event_routing_key(EventType.CREATED, p.request.service_code),
            )
            for p in batch
        ]
    )
    for prepared in batch:
        request = prepared.request
        tx.audit(
            actor=prepared.actor,
            action="accepted",
            request_id=request.id,
            message_id=prepared.envelope.id,
            details={
                "service_code": request.service_code,
                "jurisdiction": request.jurisdiction,
                "channel": request.channel.value,
                "batch": prepared.token is not None,
            },
        )
    tx.save_idempotent_responses(
        [
            (p.client.id, p.key, _remembered(p))
            for p in batch
            if p.client is not None and p.key is not None
        ]
    )
