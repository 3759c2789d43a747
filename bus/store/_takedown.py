"""Taking down what a resident wrote or photographed: from the request and every stored copy.

A request's description, answers and media live in its document, and in copies of it the store
keeps: outbox events (waiting for the relay, or published and kept for a while) and dead
letters (the message each held, for replay). A take-down rewrites all of them, so that neither
a read, nor an event the relay still publishes, nor a replay carries the old content again.
Which answers are the resident's own words is the caller's to say (bus.takedown): the store
does not know the service catalogue.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._records import TakenDownRecord
from bus.store._sql import utcnow
from bus.store._tables import dead_letters, outbox, requests, status_history
from schemas.model import Media


@dataclass(frozen=True)
class _Removal:
    """What one take-down replaces: the description by `marker` (None: left alone), the
    answers of the attribute codes `answers` by `answer_marker`, and with `media` the media."""

    marker: str | None
    media: bool
    answers: frozenset[str]
    answer_marker: str


def scrubbed(data: dict[str, Any], removal: _Removal) -> dict[str, Any]:
    """A request document (or event data holding one) with what `removal` names replaced (an
    absent description or answer stays absent); `data` itself when nothing changes."""
    changes: dict[str, Any] = {}
    description = data.get("description")
    if isinstance(description, str) and removal.marker not in (None, description):
        changes["description"] = removal.marker
    attributes = data.get("attributes")
    if removal.answers and isinstance(attributes, dict):
        answers: dict[str, Any] = {}
        for code in removal.answers & attributes.keys():
            # A multivaluelist's answer is a list in JSON: it stays one.
            value = attributes[code]
            replacement = (
                [removal.answer_marker] if isinstance(value, list) else removal.answer_marker
            )
            if value != replacement:
                answers[code] = replacement
        if answers:
            changes["attributes"] = {**attributes, **answers}
    if removal.media and data.get("media"):
        changes["media"] = []
    return {**data, **changes} if changes else data


def _scrubbed_envelope(
    envelope: Any, removal: _Removal, taken_down_at: str | None
) -> dict[str, Any] | None:
    """The envelope with its data scrubbed and dated taken down at `taken_down_at` (the
    request's), or None when it needs no change (or is no envelope: a dead letter can hold a
    body that was not one). Its `changed_at` stays: the copy is of the request as it was then,
    older than the `taken_down` event, which a consumer keeping the latest copy keeps."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("data"), dict):
        return None
    data = scrubbed(envelope["data"], removal)
    if data is envelope["data"]:
        return None
    return {**envelope, "data": {**data, "taken_down_at": taken_down_at}}


def take_down(
    conn: Connection,
    request_id: str,
    *,
    marker: str | None,
    media: bool,
    answers: Collection[str] = (),
    answer_marker: str | None = None,
    at: datetime | None = None,
) -> TakenDownRecord | None:
    """Replace the request's description by `marker`, the answers of the attributes `answers`
    by `answer_marker`, and/or remove its media, in its document and in every outbox event and
    dead letter about it; None for an unknown request. A request that changes gets `at`
    (default now) as its taken_down_at and changed_at; its updated_at stays.

    The request row is locked first, as status updates and a worker's receipts lock it, so a
    worker recording a receipt meanwhile sees the change (bus.store._requests.changed_requests)
    and announces the request as it is now.
    """
    if answers and answer_marker is None:
        raise ValueError("answers to take down need the answer_marker they are to read")
    removal = _Removal(marker, media, frozenset(answers), answer_marker or "")
    row = conn.execute(
        sa.select(requests.c.document).where(requests.c.id == request_id).with_for_update()
    ).first()
    if row is None:
        return None
    document = dict(row.document)
    removed = tuple(Media.model_validate(m) for m in document.get("media") or ()) if media else ()
    new = scrubbed(document, removal)
    # The time of this take-down, or of the one before when the request has nothing left to
    # take down (a copy recorded since then still may).
    stamp = document.get("taken_down_at")
    if new is not document:
        at = (at or utcnow()).astimezone(UTC)
        stamp = at.isoformat().replace("+00:00", "Z")
        conn.execute(
            requests.update()
            .where(requests.c.id == request_id)
            .values(document={**new, "taken_down_at": stamp}, taken_down_at=at, changed_at=at)
        )
    waiting = published = 0
    about = outbox.c.envelope["subject"].as_string() == request_id
    events = sa.select(outbox.c.id, outbox.c.envelope, outbox.c.sent_at).where(about)
    for event in conn.execute(events):
        envelope = _scrubbed_envelope(event.envelope, removal, stamp)
        if envelope is None:
            continue
        conn.execute(outbox.update().where(outbox.c.id == event.id).values(envelope=envelope))
        if event.sent_at is None:
            waiting += 1
        else:
            published += 1
    letters = 0
    d = dead_letters.c
    of_request = sa.or_(d.request_id == request_id, d.envelope["subject"].as_string() == request_id)
    for letter in conn.execute(sa.select(d.id, d.envelope).where(of_request)):
        envelope = _scrubbed_envelope(letter.envelope, removal, stamp)
        if envelope is not None:
            conn.execute(dead_letters.update().where(d.id == letter.id).values(envelope=envelope))
            letters += 1
    before, after = document.get("attributes") or {}, new.get("attributes") or {}
    return TakenDownRecord(
        description=new.get("description") != document.get("description"),
        answers=tuple(sorted(code for code in before if after.get(code) != before[code])),
        media=removed,
        events_waiting=waiting,
        events_published=published,
        dead_letters=letters,
    )


def as_it_reads(conn: Connection, envelope: Any, request_id: str | None) -> Any:
    """`envelope`, about to be stored again (kept as a dead letter, queued by a replay), with
    its copy of the request as the request's take-downs left it; `envelope` itself when there
    is nothing to change.

    A message that was on the broker when its request was taken down (in a retry tier, in a
    subscriber's queue) still holds what was removed, and dies afterwards: kept as it came, a
    replay would publish that again. What a resident wrote changes only by a take-down, so the
    copy's description, answers and media are put as the request reads them now. The request row
    is read under a share lock: a take-down in progress (which holds it for update) is waited
    for, and one that comes after waits for this dead letter and rewrites it.
    """
    if not isinstance(envelope, dict) or not isinstance(envelope.get("data"), dict):
        return envelope
    request_id = request_id or envelope.get("subject")
    if not isinstance(request_id, str):
        return envelope
    row = conn.execute(
        sa.select(requests.c.document, requests.c.taken_down_at)
        .where(requests.c.id == request_id)
        .with_for_update(read=True)
    ).first()
    if row is None or row.taken_down_at is None:
        return envelope
    data = _reads_as(envelope["data"], row.document)
    if data is envelope["data"]:
        return envelope
    return {**envelope, "data": {**data, "taken_down_at": row.document.get("taken_down_at")}}


def _reads_as(data: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a request (event data) with the description, answers and media its request's
    `document` has instead of the copy's (only those the copy holds); `data` itself when they
    agree."""
    changes: dict[str, Any] = {}
    description = data.get("description")
    if isinstance(description, str) and description != document.get("description"):
        changes["description"] = document.get("description")
    attributes, now = data.get("attributes"), document.get("attributes") or {}
    if isinstance(attributes, dict):
        answers = {c: now[c] for c in attributes.keys() & now.keys() if attributes[c] != now[c]}
        if answers:
            changes["attributes"] = {**attributes, **answers}
    if data.get("media") and not document.get("media"):  # media go by a take-down, all at once
        changes["media"] = []
    return {**data, **changes} if changes else data


def media_in_use(conn: Connection, digests: Collection[str], *, besides: str) -> set[str]:
    """Those of the media files (by SHA-256) another request than `besides` still shows, in its
    media or a status update's media_url.

    A plain text search of the stored documents: it scans them all (fine for an operator's
    command), and a digest found anywhere else in a document (written into a description) keeps
    the file too, which errs on the safe side.
    """
    used: set[str] = set()
    for digest in digests:
        in_request = (
            sa.select(requests.c.id)
            .where(
                requests.c.id != besides,
                sa.cast(requests.c.document, sa.Text()).contains(digest, autoescape=True),
            )
            .exists()
        )
        in_update = (
            sa.select(status_history.c.id)
            .where(
                status_history.c.request_id != besides,
                status_history.c.media_url.contains(digest, autoescape=True),
            )
            .exists()
        )
        if conn.execute(sa.select(sa.or_(in_request, in_update))).scalar():
            used.add(digest)
    return used
