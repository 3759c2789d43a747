"""Webhook subscriptions of back-office systems."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from bus.store._records import Subscription
from bus.store._sql import utcnow
from bus.store._tables import webhook_subscriptions as subs


def _subscription(row: Row[Any]) -> Subscription:
    return Subscription(
        id=row.id,
        url=row.url,
        events=tuple(row.events),
        secret_env=row.secret_env,
        created_at=row.created_at,
        active=row.active,
    )


def add(conn: Connection, url: str, events: Sequence[str], secret_env: str | None) -> Subscription:
    if not events:
        raise ValueError("a subscription needs at least one event pattern")
    row = conn.execute(
        subs.insert()
        .values(
            url=url, events=list(events), secret_env=secret_env, created_at=utcnow(), active=True
        )
        .returning(*subs.c)
    ).one()
    return _subscription(row)


def list_all(conn: Connection, include_removed: bool) -> list[Subscription]:
    statement = sa.select(subs).order_by(subs.c.id)
    if not include_removed:
        statement = statement.where(subs.c.active.is_(True))
    return [_subscription(row) for row in conn.execute(statement)]


def get(conn: Connection, subscription_id: int) -> Subscription | None:
    row = conn.execute(sa.select(subs).where(subs.c.id == subscription_id)).first()
    return _subscription(row) if row else None


def remove(conn: Connection, subscription_id: int) -> bool:
    """Deactivate the subscription (kept for the audit trail); False if none was active."""
    result = conn.execute(
        subs.update()
        .where(subs.c.id == subscription_id, subs.c.active.is_(True))
        .values(active=False)
    )
    return bool(result.rowcount)
