"""Requests no back-end has taken yet: what an operator looks for when a report seems stuck.

A request is delivered once an adapter instance recorded its back-end reference. One still
open without any reference, accepted a while ago, is stuck somewhere on the way: in the outbox,
on a queue, in the retry tiers, or in the dead letter channel. Its audit trail says where.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._audit import trails
from bus.store._dead_letters import from_row
from bus.store._records import DeadLetter, Undelivered
from bus.store._tables import backend_refs, requests
from bus.store._tables import dead_letters as dead
from schemas.model import Status

_CLOSED = [status.value for status in Status if status.is_closed]
_COLUMNS = (
    requests.c.id,
    requests.c.jurisdiction,
    requests.c.service_code,
    requests.c.requested_at,
)


def undelivered(conn: Connection, *, accepted_before: datetime, limit: int) -> list[Undelivered]:
    """Open requests accepted before the time and held by no back-end, oldest first."""
    return _with_paths(
        conn,
        sa.select(*_COLUMNS)
        .where(
            requests.c.requested_at < accepted_before,
            requests.c.status.not_in(_CLOSED),
            ~sa.exists().where(backend_refs.c.request_id == requests.c.id),
        )
        .order_by(requests.c.requested_at, requests.c.id)
        .limit(limit),
    )


def path_of(conn: Connection, request_id: str) -> Undelivered | None:
    """One request's audit trail and dead letters, in the shape of an undelivered one, whether
    a back-end holds it or not (`civicbus requests show`); None for an unknown id."""
    found = _with_paths(
        conn,
        sa.select(*_COLUMNS).where(requests.c.id == request_id),
    )
    return found[0] if found else None


def _with_paths(conn: Connection, query: sa.Select[Any]) -> list[Undelivered]:
    """The requests `query` selects (`_COLUMNS`), each with its audit trail and its dead
    letters."""
    candidates = conn.execute(query).all()
    ids = [row.id for row in candidates]
    trail_of = trails(conn, ids)
    dead_of: dict[str, list[DeadLetter]] = {}
    letters = conn.execute(sa.select(dead).where(dead.c.request_id.in_(ids)).order_by(dead.c.id))
    for letter in map(from_row, letters):
        dead_of.setdefault(str(letter.request_id), []).append(letter)
    return [
        Undelivered(
            request_id=row.id,
            jurisdiction=row.jurisdiction,
            service_code=row.service_code,
            accepted_at=row.requested_at,
            trail=trail_of.get(row.id, []),
            dead_letters=dead_of.get(row.id, []),
        )
        for row in candidates
    ]
