"""The adapter instances whose queues the relay has declared on the broker, ever: an instance
removed from the config keeps its queues (nothing deletes them), and this is how `civicbus
status` and `civicbus dead keep` still know their names."""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._sql import insert_ignoring_duplicates, utcnow
from bus.store._tables import declared_instances as table


def remember(conn: Connection, names: Collection[str]) -> None:
    at = utcnow()
    for name in sorted(names):
        insert_ignoring_duplicates(
            conn, table, {"name": name, "first_declared_at": at}, keys=("name",)
        )


def declared(conn: Connection) -> list[str]:
    return list(conn.execute(sa.select(table.c.name).order_by(table.c.name)).scalars())
