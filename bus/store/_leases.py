"""Named leases: at most one holder at a time (the single active relay or poller)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._sql import insert_ignoring_duplicates, utcnow
from bus.store._tables import leases


def try_lease(conn: Connection, name: str, holder: str, ttl_seconds: float) -> bool:
    """Take or renew the lease; False while another holder's lease has not expired.

    Expiry uses this process's clock: keep the machines' clocks in sync (NTP) and the TTL
    well above the clock skew.
    """
    now = utcnow()
    expires_at = now + timedelta(seconds=ttl_seconds)
    # One conditional UPDATE: PostgreSQL re-checks the condition after waiting for a
    # concurrent taker's row lock, so two takers can never both succeed.
    renewed = conn.execute(
        leases.update()
        .where(
            leases.c.name == name,
            sa.or_(leases.c.holder == holder, leases.c.expires_at < now),
        )
        .values(holder=holder, expires_at=expires_at)
    )
    if renewed.rowcount:
        return True
    return insert_ignoring_duplicates(
        conn, leases, {"name": name, "holder": holder, "expires_at": expires_at}, keys=("name",)
    )


def release(conn: Connection, name: str, holder: str) -> bool:
    result = conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))
    return bool(result.rowcount)
