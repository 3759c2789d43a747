"""Idempotency keys: the answer first given to (client, key), so that a repeat gets it again."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._sql import insert_rows, utcnow
from bus.store._tables import idempotency_keys

_KEYS: sa.BindParameter[list[str]] = sa.bindparam("keys", expanding=True)
_SELECT = sa.select(
    idempotency_keys.c.client_id, idempotency_keys.c.key, idempotency_keys.c.response
).where(idempotency_keys.c.key.in_(_KEYS))


def responses(
    conn: Connection, wanted: Collection[tuple[int, str]]
) -> dict[tuple[int, str], dict[str, Any]]:
    """The stored answers among `wanted` (client id, key) pairs."""
    if not wanted:
        return {}
    rows = conn.execute(_SELECT, {"keys": sorted({key for _, key in wanted})})
    found = {(row.client_id, row.key): row.response for row in rows}
    return {pair: found[pair] for pair in wanted if pair in found}


def save(conn: Connection, answers: Sequence[tuple[int, str, dict[str, Any]]]) -> None:
    """Remember each (client id, key, answer); AlreadyExists (at once or at commit) for a pair
    already stored, so the loser of a race is rolled back whole."""
    if answers:
        now = utcnow()
        # In key order: on PostgreSQL a row waits for a concurrent insert of the same key, so
        # two processes inserting [k1, k2] and [k2, k1] (a client retrying through a load
        # balancer) would each wait for the other, a deadlock.
        insert_rows(
            conn,
            idempotency_keys,
            [
                {"client_id": client_id, "key": key, "response": response, "created_at": now}
                for client_id, key, response in sorted(answers, key=lambda a: (a[0], a[1]))
            ],
        )
