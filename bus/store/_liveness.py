"""Worker liveness: each running worker's latest heartbeat and the message it holds, one row
per worker process and queue, rewritten by the worker's heartbeat and removed on a clean stop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._records import WorkerLiveness
from bus.store._sql import upsert
from bus.store._tables import worker_liveness as table


def report(conn: Connection, beats: Sequence[WorkerLiveness]) -> None:
    for beat in beats:
        upsert(conn, table, asdict(beat), keys=("worker_id", "recipient"))


def forget(conn: Connection, worker_id: str) -> None:
    conn.execute(table.delete().where(table.c.worker_id == worker_id))


def prune(conn: Connection, silent_since: datetime) -> int:
    result = conn.execute(table.delete().where(table.c.heartbeat_at < silent_since))
    return int(result.rowcount)


def workers(conn: Connection) -> list[WorkerLiveness]:
    rows = conn.execute(
        sa.select(table).order_by(table.c.recipient, table.c.host, table.c.pid, table.c.worker_id)
    )
    return [WorkerLiveness(**row._mapping) for row in rows]
