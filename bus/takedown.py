"""Taking a report down: what a resident wrote or photographed, when it must not stay public.

A resident's erasure request covering their photo (a face, a number plate, their house), or
moderation (an offensive or personal text). The request stays, with its status, history,
back-end references and audit trail; its description and its written answers (see
`written_answers`) read as fixed markers and its media are gone, from the request and from
every copy the store keeps (outbox events, published or not, and dead letters). A stored
photo's file is deleted unless another request shows the same content (files are stored once
per content, bus.api.media). Audited in the request's trail without the content removed.

What was published before stays with whoever received it: a back-office system that stored the
`created` event keeps showing the old description, answers and photo URL. So a take-down that
changes the request queues `civicbus.request.taken_down` in the same transaction (the request
as it now reads, and what was removed), which the relay publishes to `civicbus.events` like
every other event: consumers and webhook subscriptions overwrite their copy. Open311 clients
polling with `updated_after` are told: the take-down's time is the request's `taken_down_at`
and its `changed_at` (its `updated_datetime`); its `updated_at` stays the time of its latest
status, which the late-update rule (bus.store._requests._is_late) and the retention of a closed
request's contact data go by.

Status notes are not taken down: they are what the back-end or a partner said about the work,
not the resident's report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from bus.broker.topology import EVENTS_EXCHANGE, event_routing_key
from bus.intake import EXTERNAL_ID_ATTRIBUTE
from bus.store import Store, Transaction
from schemas.events import Envelope, EventType, TakeDown, TakenDownRequest
from schemas.model import Attribute, AttributeAnswer, Datatype, Service, ServiceRequest
from schemas.open311 import InvalidValue, parse_datetime, parse_float

log = structlog.get_logger(__name__)

#: What the Open311 reads show as the description of a request taken down (a request without
#: a description keeps none: Open311's description is optional).
TAKEN_DOWN = "[description removed]"
#: What a written answer reads once taken down (a list answer: a list of this one value).
ANSWER_TAKEN_DOWN = "[answer removed]"
ACTOR = "cli:requests-take-down"
TAKEN_DOWN_ACTION = "report_taken_down"


class TakeDownError(Exception):
    """A take-down cannot be done; the message says why and what to do."""


class MediaFiles(Protocol):
    """Where uploaded media are kept (bus.api.media.MediaStore)."""

    @property
    def directory(self) -> Path:
        """The directory the files are in."""
        ...

    def remove(self, sha256: str) -> bool:
        """Delete the file of that content; False when there is none."""
        ...


@dataclass(frozen=True)
class TakenDown:
    """The outcome of taking one request down."""

    request_id: str
    #: Whether the description was replaced now (False: none, or taken down before).
    description: bool
    #: The codes of the attributes whose written answers were replaced now.
    answers: tuple[str, ...]
    #: Media removed from the request now.
    media: int
    #: Their stored files: deleted, kept as another request shows the same content, or not
    #: found (deleted before); media given as an outside URL have no file here.
    files_deleted: int
    files_shared: int
    files_missing: int
    #: Stored copies rewritten: outbox events still waiting for the relay, outbox events
    #: already published (consumers received the old content), dead letters.
    events_waiting: int
    events_published: int
    dead_letters: int
    #: The adapter instances the request was delivered to (they keep what they were sent).
    delivered_to: tuple[str, ...]
    #: The id of the `civicbus.request.taken_down` event queued for subscribers; None when the
    #: request itself did not change (nothing to tell them).
    event_id: str | None = None

    @property
    def changed(self) -> bool:
        """Whether anything was taken down by this call (False: nothing left to take down)."""
        return bool(
            self.description
            or self.answers
            or self.media
            or self.files_deleted
            or self.events_waiting
            or self.events_published
            or self.dead_letters
        )


def take_down(
    store: Store,
    files: MediaFiles,
    request_id: str,
    *,
    services: Iterable[Service],
    description: bool = True,
    media: bool = True,
    actor: str = ACTOR,
) -> TakenDown:
    """Replace what the resident wrote in one request (its id, or the batch token the resident
    was given), its description by TAKEN_DOWN and its written answers by ANSWER_TAKEN_DOWN,
    and remove its media, or only one of the two; audited. `services` is the catalogue the
    attributes are defined in (the config's).

    The files go first, then the store in one transaction: if that fails, running it again
    finishes the work. TakeDownError for an unknown request.
    """
    if not (description or media):
        raise ValueError("nothing to take down: name the description, the media or both")
    request = store.request_by_id_or_token(request_id)
    if request is None:
        raise TakeDownError(f"there is no request (nor batch token) {request_id}")
    # Answers never change after the request was made: read here, they hold in the transaction.
    answers = written_answers(request, _service_of(request, services)) if description else ()
    delivered_to = tuple(ref.adapter for ref in request.backend_refs)
    stored = {m.sha256 for m in request.media if m.sha256 is not None} if media else set()
    shared = store.media_in_use(stored, besides=request.id)
    if stored - shared and not files.directory.is_dir():
        raise TakeDownError(
            f"the media directory {files.directory} does not exist here: run this where the API "
            "keeps its media (CIVICBUS_MEDIA_DIR), or its photos stay served; nothing was changed"
        )
    deleted = missing = 0
    for digest in sorted(stored - shared):
        if files.remove(digest):
            deleted += 1
        else:
            missing += 1
    with store.transaction() as tx:
        record = tx.take_down(
            request.id,
            marker=TAKEN_DOWN if description else None,
            media=media,
            answers=answers,
            answer_marker=ANSWER_TAKEN_DOWN,
        )
        if record is None:  # requests are never deleted
            raise TakeDownError(f"request {request.id} disappeared meanwhile")
        event_id = None
        if record.description or record.answers or record.media:
            removed = TakeDown(
                description=record.description,
                attributes=record.answers,
                media=len(record.media),
            )
            event_id = _announce(tx, request.id, removed)
        done = TakenDown(
            request_id=request.id,
            description=record.description,
            answers=record.answers,
            media=len(record.media),
            files_deleted=deleted,
            files_shared=len(shared),
            files_missing=missing,
            events_waiting=record.events_waiting,
            events_published=record.events_published,
            dead_letters=record.dead_letters,
            delivered_to=delivered_to,
            event_id=event_id,
        )
        if done.changed:
            tx.audit(
                actor=actor,
                action=TAKEN_DOWN_ACTION,
                request_id=request.id,
                details={
                    "description": done.description,
                    # The codes only: never what the answers said.
                    "attributes": list(done.answers),
                    "media": done.media,
                    "files_deleted": done.files_deleted,
                    "events_waiting": done.events_waiting,
                    "events_published": done.events_published,
                    "dead_letters": done.dead_letters,
                    "delivered": bool(delivered_to),
                },
            )
    log.info(
        "request.taken_down",
        request_id=request.id,
        changed=done.changed,
        description=done.description,
        attributes=done.answers,
        media=done.media,
        files_deleted=done.files_deleted,
        message_id=event_id,
    )
    return done


# Which answers are the resident's own words. A string or text answer is ("describe where the
# dog bit you", a licence plate). A number, a datetime or keys of a list are not prose: a
# quantity or a time the service asked for, or the city's own vocabulary; they stay, so the
# report still reads as the back-office knows it. (A number field could hold a phone number's
# digits: that is not told from a quantity, and a take-down is about words.) But an answer stays
# only where the catalogue as configured now shows it to be one of those: an answer to an
# attribute or a service no longer defined, to an attribute that takes none, or one that no
# longer reads as its attribute's datatype (a text question turned into a list since) cannot be
# shown not to be prose, so it goes: one answer too many hides a detail, one too few keeps
# what had to go. A partner's `external_id` stays: it is the partner's reference for its
# report, not the resident's words.
def written_answers(request: ServiceRequest, service: Service | None) -> tuple[str, ...]:
    """The codes of the request's answers that are what the resident wrote, sorted: those a
    take-down of the description takes down with it (`service`: its definition now, if any)."""
    defined = {a.code: a for a in service.attributes} if service is not None else {}
    return tuple(
        sorted(
            code
            for code, answer in request.attributes.items()
            if code != EXTERNAL_ID_ATTRIBUTE and not _kept(defined.get(code), answer)
        )
    )


def _kept(attribute: Attribute | None, answer: AttributeAnswer) -> bool:
    """Whether `answer` reads, by its attribute's definition (None: none), as a number, a
    datetime or keys of the attribute's list."""
    if attribute is None or not attribute.variable:
        return False
    values = (answer,) if isinstance(answer, str) else answer
    if attribute.datatype.is_list:
        keys = {v.key for v in attribute.values}
        return bool(values) and all(value in keys for value in values)
    if len(values) != 1:
        return False
    try:
        if attribute.datatype is Datatype.NUMBER:
            parse_float(attribute.code, values[0], low=-math.inf, high=math.inf)
            return True
        if attribute.datatype is Datatype.DATETIME:
            parse_datetime(attribute.code, values[0])
            return True
    except InvalidValue:
        return False
    return False  # string, text: what the resident wrote


def _service_of(request: ServiceRequest, services: Iterable[Service]) -> Service | None:
    """The request's service in the catalogue; None when it is no longer defined."""
    return next(
        (
            s
            for s in services
            if s.code == request.service_code and s.jurisdiction == request.jurisdiction
        ),
        None,
    )


def _announce(tx: Transaction, request_id: str, removed: TakeDown) -> str:
    """Queue `civicbus.request.taken_down`: the request as it now reads (after the take-down,
    in this transaction), as every event carries it (without personal data, its latest status
    updates), and what was removed; its message id."""
    request = tx.get_request(request_id)
    if request is None:  # the caller holds the row locked: it cannot go meanwhile
        raise TakeDownError(f"request {request_id} disappeared meanwhile")
    data = TakenDownRequest.model_validate({**request.public_data(), "taken_down": removed})
    envelope = Envelope(
        type=EventType.TAKEN_DOWN,
        subject=request.id,
        data=data.model_dump(mode="json"),
        correlationid=request.id,
    )
    tx.add_outbox(
        envelope,
        exchange=EVENTS_EXCHANGE,
        routing_key=event_routing_key(EventType.TAKEN_DOWN, request.service_code),
    )
    return envelope.id
