"""Taking a report down: what a resident wrote or photographed, when it must not stay public.

A resident's erasure request covering their photo (a face, a number plate, their house), or
moderation (an offensive or personal text). The request stays, with its status, history,
back-end references and audit trail; its description reads as a fixed marker and its media are
gone, from the request and from every copy the store keeps (outbox events, published or not,
and dead letters). A stored photo's file is deleted unless another request shows the same
content (files are stored once per content, bus.api.media). Audited in the request's trail
without the content removed.

What was published before stays with whoever received it: a back-office system that stored the
`created` event keeps showing the old description and photo URL. So a take-down that changes the
request queues `civicbus.request.taken_down` in the same transaction (the request as it now
reads, and what was removed), which the relay publishes to `civicbus.events` like every other
event: consumers and webhook subscriptions overwrite their copy. Open311 clients polling with
`updated_after` are told by the request's `taken_down_at`, which its `updated_datetime` then
shows; its `updated_at` stays the time of its latest status, which the late-update rule
(bus.store._requests._is_late) and the retention of a closed request's contact data go by.

Status notes are not taken down: they are what the back-end or a partner said about the work
(C-21, C-22), not the resident's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from bus.broker.topology import EVENTS_EXCHANGE, event_routing_key
from bus.store import Store, Transaction
from schemas.events import Envelope, EventType, TakeDown, TakenDownRequest

log = structlog.get_logger(__name__)

#: What the Open311 reads show as the description of a request taken down (a request without
#: a description keeps none: Open311's description is optional).
TAKEN_DOWN = "[description removed]"
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
    description: bool = True,
    media: bool = True,
    actor: str = ACTOR,
) -> TakenDown:
    """Replace the description of one request (its id, or the batch token the resident was
    given) by TAKEN_DOWN and remove its media, or only one of the two; audited.

    The files go first, then the store in one transaction: if that fails, running it again
    finishes the work. TakeDownError for an unknown request.
    """
    if not (description or media):
        raise ValueError("nothing to take down: name the description, the media or both")
    request = store.request_by_id_or_token(request_id)
    if request is None:
        raise TakeDownError(f"there is no request (nor batch token) {request_id}")
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
        record = tx.take_down(request.id, marker=TAKEN_DOWN if description else None, media=media)
        if record is None:  # requests are never deleted
            raise TakeDownError(f"request {request.id} disappeared meanwhile")
        event_id = None
        if record.description or record.media:
            event_id = _announce(
                tx, request.id, TakeDown(description=record.description, media=len(record.media))
            )
        done = TakenDown(
            request_id=request.id,
            description=record.description,
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
        media=done.media,
        files_deleted=done.files_deleted,
        message_id=event_id,
    )
    return done


def _announce(tx: Transaction, request_id: str, removed: TakeDown) -> str:
    """Queue `civicbus.request.taken_down`: the request as it now reads (after the take-down,
    in this transaction), without personal data, and what was removed; its message id."""
    request = tx.get_request(request_id)
    if request is None:  # the caller holds the row locked: it cannot go meanwhile
        raise TakeDownError(f"request {request_id} disappeared meanwhile")
    public = request.without_personal_data()
    data = TakenDownRequest(**public.model_dump(), taken_down=removed)
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
