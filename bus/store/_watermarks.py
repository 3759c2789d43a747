"""Adapter watermarks: how far a poller has read a back-end's status changes, and how its
rounds have gone (the last that completed, the failures since)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._records import PollerRounds
from bus.store._sql import insert_ignoring_duplicates, upsert, utcnow
from bus.store._tables import adapter_watermarks as marks

#: An error longer than this is cut: enough for an operator, not a back-end's whole page.
ERROR_LIMIT = 500


def set_watermark(conn: Connection, instance: str, watermark: str | None) -> None:
    upsert(
        conn,
        marks,
        {"instance": instance, "watermark": watermark, "updated_at": utcnow()},
        keys=("instance",),
    )


def watermark(conn: Connection, instance: str) -> str | None:
    found: str | None = conn.execute(
        sa.select(marks.c.watermark).where(marks.c.instance == instance)
    ).scalar()
    return found


def round_completed(conn: Connection, instance: str) -> None:
    now = utcnow()
    _ensure_row(conn, instance)
    conn.execute(
        sa.update(marks)
        .where(marks.c.instance == instance)
        .values(polled_at=now, failing_since=None, updated_at=now)
    )


def round_failed(conn: Connection, instance: str, error: str) -> None:
    now = utcnow()
    _ensure_row(conn, instance)
    conn.execute(
        sa.update(marks)
        .where(marks.c.instance == instance)
        .values(
            failing_since=sa.func.coalesce(
                marks.c.failing_since, sa.literal(now, marks.c.failing_since.type)
            ),
            failed_rounds=marks.c.failed_rounds + 1,
            # PostgreSQL refuses a NUL in text; a back-end's error may carry one.
            last_error=error[:ERROR_LIMIT].replace("\0", "\\0"),
            updated_at=now,
        )
    )


def _ensure_row(conn: Connection, instance: str) -> None:
    """An instance's row before its first watermark: nothing read yet."""
    values = {"instance": instance, "watermark": None, "updated_at": utcnow()}
    insert_ignoring_duplicates(conn, marks, values, keys=("instance",))


def pollers(conn: Connection) -> dict[str, PollerRounds]:
    rows = conn.execute(sa.select(marks).order_by(marks.c.instance))
    return {
        row.instance: PollerRounds(
            row.instance, row.polled_at, row.failing_since, row.failed_rounds, row.last_error
        )
        for row in rows
    }
