"""Adapter watermarks: how far a poller has read a back-end's status changes."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._sql import upsert, utcnow
from bus.store._tables import adapter_watermarks as marks


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
