"""Dead letters: messages an adapter instance gave up on, kept for inspection and replay."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from bus.store._outbox import without_reporter
from bus.store._records import DeadLetter, DeadLetterState
from bus.store._sql import utcnow
from bus.store._tables import dead_letters as dead
from bus.store._takedown import as_it_reads


def from_row(row: Row[Any]) -> DeadLetter:
    return DeadLetter(
        id=row.id,
        instance=row.instance,
        message_id=row.message_id,
        request_id=row.request_id,
        reason=row.reason,
        attempts=row.attempts,
        first_failed_at=row.first_failed_at,
        last_failed_at=row.last_failed_at,
        envelope=row.envelope,
        state=DeadLetterState(row.state),
        resolved_at=row.resolved_at,
    )


def record(
    conn: Connection,
    *,
    instance: str,
    message_id: str,
    request_id: str | None,
    reason: str,
    envelope: dict[str, Any] | str | None,
    attempts: int,
    at: datetime | None,
    first_failed_at: datetime | None = None,
) -> DeadLetter | None:
    """Insert the dead letter, or bump the attempts and last failure of a known one that was
    replayed or dropped; None, changing nothing, when it is still waiting as a dead letter.
    `first_failed_at`: when its first failed round was (default `at`), for a new one. Its
    envelope is kept as its request reads after any take-down (`as_it_reads`)."""
    at = at or utcnow()
    if isinstance(envelope, dict) and isinstance(envelope.get("data"), dict):
        envelope = {**envelope, "data": without_reporter(envelope["data"], request_id)}
    envelope = as_it_reads(conn, envelope, request_id)
    known = conn.execute(
        sa.select(dead.c.id, dead.c.state)
        .where(dead.c.instance == instance, dead.c.message_id == message_id)
        .with_for_update()
    ).first()
    if known is not None and known.state == DeadLetterState.DEAD.value:
        # The same message again (redelivered after its dead-lettering was cut short, or a
        # second copy): already recorded, its attempts must not be counted twice.
        return None
    if known is None:
        row = conn.execute(
            dead.insert()
            .values(
                instance=instance,
                message_id=message_id,
                request_id=request_id,
                reason=reason,
                attempts=attempts,
                first_failed_at=min(first_failed_at or at, at),
                last_failed_at=at,
                envelope=envelope,
                state=DeadLetterState.DEAD.value,
            )
            .returning(*dead.c)
        ).one()
    else:
        row = conn.execute(
            dead.update()
            .where(dead.c.id == known.id)
            .values(
                attempts=dead.c.attempts + attempts,
                last_failed_at=at,
                reason=reason,
                envelope=envelope,
                state=DeadLetterState.DEAD.value,
                resolved_at=None,
            )
            .returning(*dead.c)
        ).one()
    return from_row(row)


def list_for(conn: Connection, instance: str, state: DeadLetterState) -> list[DeadLetter]:
    rows = conn.execute(
        sa.select(dead)
        .where(dead.c.instance == instance, dead.c.state == state.value)
        .order_by(dead.c.id)
    )
    return [from_row(row) for row in rows]


def instances(conn: Connection) -> list[str]:
    rows = conn.execute(sa.select(dead.c.instance).distinct().order_by(dead.c.instance))
    return list(rows.scalars())


def get(conn: Connection, dead_letter_id: int) -> DeadLetter | None:
    row = conn.execute(sa.select(dead).where(dead.c.id == dead_letter_id)).first()
    return from_row(row) if row else None


def set_state(
    conn: Connection,
    dead_letter_id: int,
    state: DeadLetterState,
    *,
    expected: DeadLetterState | None = None,
) -> bool:
    """Replayed or dropped: resolved now; dead (a replay given back): unresolved again. With
    `expected`, only a letter in that state changes; whether it changed."""
    resolved_at = None if state is DeadLetterState.DEAD else utcnow()
    where = [dead.c.id == dead_letter_id]
    if expected is not None:
        # One statement, so two operators cannot both find a letter waiting: on PostgreSQL
        # the second waits for the first's row and then reads its committed state; SQLite
        # lets one writer at a time.
        where.append(dead.c.state == expected.value)
    result = conn.execute(
        dead.update().where(*where).values(state=state.value, resolved_at=resolved_at)
    )
    return bool(result.rowcount)


def drop_waiting(conn: Connection, instance: str) -> list[DeadLetter]:
    """Mark every dead letter of the instance still waiting `dropped`, in one statement (a
    letter recorded meanwhile is either among them or recorded after); the ones it marked."""
    rows = conn.execute(
        dead.update()
        .where(dead.c.instance == instance, dead.c.state == DeadLetterState.DEAD.value)
        .values(state=DeadLetterState.DROPPED.value, resolved_at=utcnow())
        .returning(*dead.c)
    )
    return sorted((from_row(row) for row in rows), key=lambda letter: letter.id)
