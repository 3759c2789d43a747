"""Publishers RabbitMQ blocks for a resource alarm, as they report it: one row per publisher
while its connection is blocked, for `civicbus status` and /metrics (the broker tells only the
publishing connection, never the read-only one `status` opens).

A publisher killed while blocked never deletes its row; the workers' heartbeats prune rows not
said again for longer than a report is believed (`bus.liveness.BLOCK_REPORT_STALE`)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._records import BrokerBlock
from bus.store._sql import upsert, utcnow
from bus.store._tables import broker_blocks as table

#: A broker's reason is a few words ("low on disk"); cut anything longer.
REASON_LIMIT = 200


def blocked(conn: Connection, publisher: str, holder: str, since: datetime, reason: str) -> None:
    values = {
        "publisher": publisher,
        "holder": holder,
        "blocked_since": since,
        "reason": reason[:REASON_LIMIT].replace("\0", "\\0"),
        "seen_at": utcnow(),
    }
    upsert(conn, table, values, keys=("publisher",))


def unblocked(conn: Connection, publisher: str, holder: str) -> None:
    # Only the holder's own row: another process may have taken over and be blocked in turn.
    conn.execute(table.delete().where(table.c.publisher == publisher, table.c.holder == holder))


def prune(conn: Connection, seen_before: datetime) -> int:
    result = conn.execute(table.delete().where(table.c.seen_at < seen_before))
    return int(result.rowcount)


def blocks(conn: Connection) -> dict[str, BrokerBlock]:
    rows = conn.execute(sa.select(table).order_by(table.c.publisher))
    return {row.publisher: BrokerBlock(**row._mapping) for row in rows}
