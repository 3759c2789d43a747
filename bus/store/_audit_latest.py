"""An actor's latest audit entries, found at a bounded cost however long the log.

The log has no index on the actor: each lookup here reads a range of the primary key (ids are
in the order entries were chained, which is their time order within seconds), bounded either by
time (the entries of the last minutes) or by a number of entries. An index on
(actor, action, id) would make each one a few index probes, and the look-back of `streak`
needless; these queries would use it as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.store._audit import from_row
from bus.store._records import AuditEntry, AuditStreak
from bus.store._tables import audit_log as log


def latest(
    conn: Connection, actors: Sequence[str], actions: Sequence[str], since: datetime
) -> dict[str, AuditEntry]:
    """Each actor's latest entry of one of these actions written since `since`; actors with
    none are absent. Its cost is that of reading the entries written since then."""
    if not actors or not actions:
        return {}
    # Walking back from the newest entry to the first one older than `since` reads only the
    # entries since (a stamp a little out of order among them stops it a little early).
    before = conn.execute(
        sa.select(log.c.id).where(log.c.at < since).order_by(log.c.id.desc()).limit(1)
    ).scalar()
    newest = (
        sa.select(sa.func.max(log.c.id))
        .where(
            log.c.id > (before or 0),
            log.c.actor.in_(actors),
            log.c.action.in_(actions),
        )
        .group_by(log.c.actor)
    )
    rows = conn.execute(sa.select(log).where(log.c.id.in_(newest.scalar_subquery())))
    return {row.actor: from_row(row) for row in rows}


def streak(conn: Connection, last: AuditEntry, *, broken_by: str, lookback: int) -> AuditStreak:
    """The actor's unbroken run of `last.action` entries that ends with `last`: from its first
    such entry since its latest `broken_by` entry, looked for among the `lookback` entries
    before `last` (a longer run is cut there, and said to be)."""
    floor = max(last.id - lookback, 1)
    same_actor = log.c.actor == last.actor
    broken_at = conn.execute(
        sa.select(log.c.id)
        .where(same_actor, log.c.action == broken_by, log.c.id < last.id, log.c.id >= floor)
        .order_by(log.c.id.desc())
        .limit(1)
    ).scalar()
    start = broken_at if broken_at is not None else floor - 1
    first = conn.execute(
        sa.select(log)
        .where(same_actor, log.c.action == last.action, log.c.id > start, log.c.id <= last.id)
        .order_by(log.c.id)
        .limit(1)
    ).one()
    return AuditStreak(from_row(first), last, complete=broken_at is not None or floor == 1)
