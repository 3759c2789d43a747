"""The transactional outbox: events written with the data they describe, published later."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from bus.store._records import OutboxEvent, OutboxMessage, OutboxRow
from bus.store._sql import JsonText, insert_rows, run, utcnow
from bus.store._tables import outbox
from schemas.events import Envelope

log = structlog.get_logger(__name__)


def without_reporter(data: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    """The event data with any reporter contact emptied: personal data never leaves the store
    through an event, whatever the caller passed."""
    reporter = data.get("reporter")
    if isinstance(reporter, dict) and any(value is not None for value in reporter.values()):
        log.warning("store.outbox.reporter_removed", request_id=request_id)
        return {**data, "reporter": dict.fromkeys(reporter)}
    return data


#: What `Envelope.model_dump_json()` calls, called directly: the method's dozen keyword arguments
#: cost a third of serialising an envelope (every event written goes through here).
_ENVELOPE_JSON = Envelope.__pydantic_serializer__


def add(conn: Connection, events: Sequence[OutboxEvent]) -> None:
    """Queue the events in their order (one multi-row insert), reporter contact emptied."""
    now = utcnow()
    rows = []
    for envelope, exchange, routing_key in events:
        data = without_reporter(envelope.data, envelope.subject)
        if data is not envelope.data:
            envelope = envelope.model_copy(update={"data": data})
        rows.append(
            {
                "message_id": envelope.id,
                "envelope": JsonText(_ENVELOPE_JSON.to_json(envelope).decode()),
                "exchange": exchange,
                "routing_key": routing_key,
                "created_at": now,
            }
        )
    insert_rows(conn, outbox, rows)


def pending(conn: Connection, limit: int) -> list[OutboxRow]:
    rows = conn.execute(
        sa.select(outbox).where(outbox.c.sent_at.is_(None)).order_by(outbox.c.id).limit(limit)
    )
    return [
        OutboxRow(
            id=row.id,
            envelope=Envelope.model_validate(row.envelope),
            exchange=row.exchange,
            routing_key=row.routing_key,
            created_at=row.created_at,
        )
        for row in rows
    ]


# The envelope as the text it holds (a json column keeps its text on PostgreSQL), unparsed.
_PENDING_MESSAGES = (
    sa.select(
        outbox.c.id,
        sa.cast(outbox.c.envelope, sa.Text()).label("body"),
        outbox.c.exchange,
        outbox.c.routing_key,
    )
    .where(outbox.c.sent_at.is_(None), outbox.c.id > sa.bindparam("after"))
    .order_by(outbox.c.id)
    .limit(sa.bindparam("limit"))
)


def pending_messages(conn: Connection, limit: int, after: int = 0) -> list[OutboxMessage]:
    """Unsent rows above id `after` in id order, each envelope parsed once from its stored
    JSON text (on the driver's cursor: the relay's every batch starts here)."""
    return [
        OutboxMessage(
            id=row_id,
            envelope=Envelope.model_validate_json(body),
            body=body.encode(),
            exchange=exchange,
            routing_key=routing_key,
        )
        for row_id, body, exchange, routing_key in run(
            conn, _PENDING_MESSAGES, {"limit": limit, "after": after}
        )
    ]


def mark_sent(conn: Connection, ids: Sequence[int]) -> None:
    if not ids:
        return
    conn.execute(
        outbox.update()
        .where(outbox.c.id.in_(list(ids)), outbox.c.sent_at.is_(None))
        .values(sent_at=utcnow())
    )
