"""API clients: keys are random, shown once, and stored only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from bus.store._records import Client
from bus.store._sql import run, utcnow
from bus.store._tables import api_clients


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _client(row: Row[Any]) -> Client:
    return Client(
        id=row.id,
        name=row.name,
        jurisdiction=row.jurisdiction,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        may_post_updates=row.may_post_updates,
    )


def add(
    conn: Connection, name: str, jurisdiction: str | None, *, may_post_updates: bool = False
) -> tuple[Client, str]:
    key = secrets.token_urlsafe(32)
    row = conn.execute(
        api_clients.insert()
        .values(
            name=name,
            key_hash=key_hash(key),
            jurisdiction=jurisdiction,
            created_at=utcnow(),
            may_post_updates=may_post_updates,
        )
        .returning(*api_clients.c)
    ).one()
    return _client(row), key


def authenticate(conn: Connection, key: str) -> Client | None:
    row = conn.execute(
        sa.select(api_clients).where(
            api_clients.c.key_hash == key_hash(key), api_clients.c.revoked_at.is_(None)
        )
    ).first()
    return _client(row) if row else None


# FOR SHARE (PostgreSQL; SQLite has no row locks, and its write lock already serializes the
# writer with a revocation): under READ COMMITTED a plain SELECT would let a revocation commit
# between this check and the caller's commit. The share lock makes the revocation wait for the
# caller's commit, and a check made after the revocation committed sees it.
_IS_ACTIVE = (
    sa.select(api_clients.c.id)
    .where(api_clients.c.id == sa.bindparam("id"), api_clients.c.revoked_at.is_(None))
    .with_for_update(read=True)
)


_MAY_POST_UPDATES = (
    sa.select(api_clients.c.id)
    .where(
        api_clients.c.id == sa.bindparam("id"),
        api_clients.c.revoked_at.is_(None),
        api_clients.c.may_post_updates.is_(True),
    )
    .with_for_update(read=True)
)


def may_post_updates(conn: Connection, client_id: int) -> bool:
    """Whether the client is active and may post status updates; if so it stays locked against
    a revocation or a deny-updates until the transaction ends (see _IS_ACTIVE)."""
    return bool(run(conn, _MAY_POST_UPDATES, {"id": client_id}))


def inactive(conn: Connection, client_ids: Collection[int]) -> set[int]:
    """The ids among `client_ids` whose client is revoked (or gone); the active ones stay
    locked against revocation until the transaction ends.

    One lookup per client: a batch of creates nearly always comes from one or two clients.
    Locked in id order, as every caller does, so two batches cannot deadlock on them.
    """
    return {id for id in sorted(client_ids) if not run(conn, _IS_ACTIVE, {"id": id})}


def list_all(conn: Connection) -> list[Client]:
    return [_client(row) for row in conn.execute(sa.select(api_clients).order_by(api_clients.c.id))]


def revoke(conn: Connection, name: str) -> bool:
    result = conn.execute(
        api_clients.update()
        .where(api_clients.c.name == name, api_clients.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount)


def allow_updates(conn: Connection, name: str, allowed: bool) -> bool:
    """Let the named active client post status updates, or stop it; False if there is none."""
    result = conn.execute(
        api_clients.update()
        .where(api_clients.c.name == name, api_clients.c.revoked_at.is_(None))
        .values(may_post_updates=allowed)
    )
    return bool(result.rowcount)
