"""Retention: removing what the store no longer needs, a bounded batch at a time.

Sent outbox rows (the relay published them and nothing reads them again), idempotency keys past
their window, dead letters replayed or dropped long ago, and the reporter contact data of
requests closed long ago. Each batch is found by
a read, which holds no lock, walking the table in key order from where the last batch ended
(one pass, however many batches), and removed by key in a short write transaction that checks
the condition again: a big backlog never holds SQLite's one write lock for long, and a row that
changed in between is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._records import DeadLetterState
from bus.store._tables import dead_letters, idempotency_keys, outbox, reporters, requests
from schemas.model import Status

_CLOSED = [status.value for status in Status if status.is_closed]
_RESOLVED = [DeadLetterState.REPLAYED.value, DeadLetterState.DROPPED.value]


def sent_outbox(conn: Connection, *, sent_before: datetime, after: int, limit: int) -> list[int]:
    """Ids above `after` of outbox rows published before `sent_before`, in id order (a row
    waiting to be published has no `sent_at`, so it is never among them)."""
    return list(
        conn.execute(
            sa.select(outbox.c.id)
            .where(outbox.c.id > after, outbox.c.sent_at < sent_before)
            .order_by(outbox.c.id)
            .limit(limit)
        ).scalars()
    )


def delete_sent_outbox(conn: Connection, ids: Sequence[int], *, sent_before: datetime) -> int:
    """Delete those of the rows that were published before `sent_before`; how many went."""
    if not ids:
        return 0
    result = conn.execute(
        outbox.delete().where(outbox.c.id.in_(list(ids)), outbox.c.sent_at < sent_before)
    )
    return int(result.rowcount)


def idempotency_keys_before(
    conn: Connection,
    *,
    created_before: datetime,
    prefix: str,
    after: tuple[int, str] | None,
    limit: int,
) -> list[tuple[int, str]]:
    """(client id, key) above `after` of the keys starting with `prefix` stored before
    `created_before`, in key order."""
    c = idempotency_keys.c
    query = (
        sa.select(c.client_id, c.key)
        .where(c.created_at < created_before, c.key.startswith(prefix, autoescape=True))
        .order_by(c.client_id, c.key)
        .limit(limit)
    )
    if after is not None:
        query = query.where(sa.tuple_(c.client_id, c.key) > sa.tuple_(*after))
    return [(client_id, key) for client_id, key in conn.execute(query)]


def delete_idempotency_keys(
    conn: Connection, keys: Sequence[tuple[int, str]], *, created_before: datetime
) -> int:
    """Delete those of the (client id, key) pairs stored before `created_before`; how many
    went."""
    if not keys:
        return 0
    c = idempotency_keys.c
    result = conn.execute(
        idempotency_keys.delete().where(
            sa.tuple_(c.client_id, c.key).in_(list(keys)), c.created_at < created_before
        )
    )
    return int(result.rowcount)


def _resolved_before(resolved_before: datetime) -> sa.ColumnElement[bool]:
    """Dead letters replayed or dropped before `resolved_before`, but not:

    - one whose replay still waits in the outbox: if no queue takes it, the relay gives it back
      to its dead letter (bus.relay), which must still be there;
    - the newest one: SQLite gives a new row the highest id plus one, so deleting the highest
      would give its id to the next dead letter, while audit entries and operators' notes still
      name the old one by it.
    """
    d = dead_letters.c
    replay_waiting = (
        sa.select(outbox.c.id)
        .where(outbox.c.sent_at.is_(None), outbox.c.message_id == d.message_id)
        .exists()
    )
    every = dead_letters.alias("every_dead_letter")
    newest = sa.select(sa.func.max(every.c.id)).scalar_subquery()
    return sa.and_(
        d.state.in_(_RESOLVED),
        d.resolved_at < resolved_before,
        d.id < newest,
        sa.not_(sa.and_(d.state == DeadLetterState.REPLAYED.value, replay_waiting)),
    )


def resolved_dead_letters(
    conn: Connection, *, resolved_before: datetime, after: int, limit: int
) -> list[int]:
    """Ids above `after` of the dead letters replayed or dropped before `resolved_before`, in id
    order (never one still dead; see `_resolved_before` for the few others kept)."""
    return list(
        conn.execute(
            sa.select(dead_letters.c.id)
            .where(dead_letters.c.id > after, _resolved_before(resolved_before))
            .order_by(dead_letters.c.id)
            .limit(limit)
        ).scalars()
    )


def delete_resolved_dead_letters(
    conn: Connection, ids: Sequence[int], *, resolved_before: datetime
) -> int:
    """Delete those of the dead letters that are still resolved before `resolved_before` (one
    that died again, or whose replay was given back, meanwhile stays); how many went."""
    if not ids:
        return 0
    result = conn.execute(
        dead_letters.delete().where(
            dead_letters.c.id.in_(list(ids)), _resolved_before(resolved_before)
        )
    )
    return int(result.rowcount)


def _closed_before(closed_before: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(requests.c.status.in_(_CLOSED), requests.c.updated_at < closed_before)


def closed_with_reporter(
    conn: Connection, *, closed_before: datetime, after: str, limit: int
) -> list[str]:
    """Ids above `after` of the requests with a closing status, last updated before
    `closed_before`, that still hold reporter contact data, in id order."""
    return list(
        conn.execute(
            sa.select(reporters.c.request_id)
            .join(requests, requests.c.id == reporters.c.request_id)
            .where(reporters.c.request_id > after, _closed_before(closed_before))
            .order_by(reporters.c.request_id)
            .limit(limit)
        ).scalars()
    )


def forget_reporters(
    conn: Connection, request_ids: Sequence[str], *, closed_before: datetime | None = None
) -> list[str]:
    """Delete the reporter contact data of the requests (with `closed_before`, only of those
    still closed and last updated before it); the ids whose data went, sorted."""
    if not request_ids:
        return []
    ids = list(request_ids)
    condition: sa.ColumnElement[bool] = reporters.c.request_id.in_(ids)
    if closed_before is not None:
        still_closed = sa.select(requests.c.id).where(
            requests.c.id.in_(ids), _closed_before(closed_before)
        )
        condition = sa.and_(condition, reporters.c.request_id.in_(still_closed))
    deleted = conn.execute(reporters.delete().where(condition).returning(reporters.c.request_id))
    return sorted(deleted.scalars())
