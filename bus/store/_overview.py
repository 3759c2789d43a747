"""The store's side of `civicbus status`: the outbox backlog, who holds the leases, the dead
letters waiting for an operator, how the pollers' rounds go, the workers' heartbeats, the
adapter instances ever declared and whether the broker blocks the relay's publishing. Each
figure is one indexed query (or a read of a table of a few rows), cheap enough to ask often."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._broker_blocks import blocks
from bus.store._declared import declared
from bus.store._liveness import workers
from bus.store._records import DeadLetterState, Lease, StoreOverview
from bus.store._tables import dead_letters, leases, outbox
from bus.store._watermarks import pollers


def overview(conn: Connection) -> StoreOverview:
    waiting, oldest = conn.execute(
        # The partial index ix_outbox_pending holds exactly these rows.
        sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(
            outbox.c.sent_at.is_(None)
        )
    ).one()
    held = conn.execute(sa.select(leases).order_by(leases.c.name))
    dead = conn.execute(
        sa.select(dead_letters.c.instance, sa.func.count())
        .where(dead_letters.c.state == DeadLetterState.DEAD.value)
        .group_by(dead_letters.c.instance)
    )
    return StoreOverview(
        outbox_waiting=int(waiting),
        oldest_waiting=oldest,
        leases={row.name: Lease(row.name, row.holder, row.expires_at) for row in held},
        dead_letters={instance: int(count) for instance, count in dead},
        pollers=pollers(conn),  # one row per polled instance
        workers=workers(conn),  # one row per running worker and queue
        declared_instances=declared(conn),  # one row per adapter instance ever declared
        broker_blocks=blocks(conn),  # one row per blocked publisher (the relay)
    )
