"""Every SQL statement the Oracle adapter issues, built in one place.

Keeping them here lets a test compile each one for the Oracle dialect and check it (bind
parameters only, sequence NEXTVAL, no LIMIT), so Oracle-only mistakes show up without Oracle.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from adapters.oracle._tables import work_order_history, work_orders

NEW = "NEW"


def insert_work_order(
    external_ref: str, fields: dict[str, Any], status: str, now: datetime
) -> sa.Insert:
    return sa.insert(work_orders).values(
        external_ref=external_ref, status=status, created_at=now, updated_at=now, **fields
    )


def insert_history(work_order_id: int, status: str, note: str | None, at: datetime) -> sa.Insert:
    return sa.insert(work_order_history).values(
        work_order_id=work_order_id, status=status, note=note, changed_at=at
    )


def select_by_reference(external_ref: str) -> sa.Select[Any]:
    return sa.select(work_orders.c.id, work_orders.c.status).where(
        work_orders.c.external_ref == external_ref
    )


def select_changed_since(start: datetime | None) -> sa.Select[Any]:
    """Work orders changed at or after `start` (all when None), oldest change first."""
    query = sa.select(
        work_orders.c.id, work_orders.c.external_ref, work_orders.c.status, work_orders.c.updated_at
    )
    if start is not None:
        query = query.where(work_orders.c.updated_at >= start)
    return query.order_by(work_orders.c.updated_at, work_orders.c.id)


def probe() -> sa.Select[Any]:
    """A query that touches the table without reading rows: does it exist, may we read it."""
    return sa.select(work_orders.c.id).where(work_orders.c.id == -1)


def update_status(work_order_id: int, status: str, at: datetime) -> sa.Update:
    """A status change as the back office makes it (used by the sandbox control helper)."""
    return (
        sa.update(work_orders)
        .where(work_orders.c.id == work_order_id)
        .values(status=status, updated_at=at)
    )
