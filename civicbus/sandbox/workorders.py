"""The sandbox's work-order database (a stand-in for the city's Oracle system): set-up and control.

The sandbox runs the Oracle adapter's tables on SQLite (`var/sandbox/workorders.db`); demos and
tests move a work order through its statuses with `set_status`, as the back office would.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

import sqlalchemy as sa

from adapters.oracle import _statements as sql
from adapters.oracle._tables import create_schema

DEFAULT_URL = "sqlite:///var/sandbox/workorders.db"


def prepare(url: str = DEFAULT_URL) -> None:
    """Create the work-order tables if they are missing."""
    engine = sa.create_engine(url)
    try:
        create_schema(engine)
    finally:
        engine.dispose()


def set_status(
    url: str,
    external_ref: str,
    status: str,
    *,
    note: str | None = None,
    at: datetime | None = None,
    zone: tzinfo = UTC,
) -> int:
    """Move the work order for `external_ref` to `status` (with a history row); its id.

    `at` sets the change time, e.g. to play a transaction that commits late; it is stored as
    the local time in `zone` without the zone, as the adapter's `timezone` setting reads it.
    """
    moment = (at or datetime.now(UTC)).astimezone(zone).replace(tzinfo=None)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            row = conn.execute(sql.select_by_reference(external_ref)).first()
            if row is None:
                raise LookupError(f"no work order has external reference {external_ref!r}")
            conn.execute(sql.update_status(row.id, status, moment))
            conn.execute(sql.insert_history(row.id, status, note, moment))
    finally:
        engine.dispose()
    return int(row.id)
