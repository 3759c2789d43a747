"""Requests' taken_down_at: when what the resident wrote or photographed was last taken down,
so that Open311 reads (`updated_datetime`, `updated_after`) show the change while updated_at
stays the time of the latest status. Requests taken down before this revision (a
`report_taken_down` entry in their trail) get the time of the upgrade: the store never put it
on the request, Open311 clients polling with `updated_after` were never told, and the time of
the upgrade is what brings them to those clients' next poll.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 08:00:00.000000
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

# The column types as they were at this revision (migrations do not follow later code).
UTC_DATETIME = sa.DateTime(timezone=True)

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An added column needs no table rebuild on SQLite: batch mode is not needed.
    op.add_column("requests", sa.Column("taken_down_at", UTC_DATETIME, nullable=True))
    op.create_index(op.f("ix_requests_taken_down_at"), "requests", ["taken_down_at"])
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # SQLite keeps UTC naive (bus.store._tables.UTCDateTime)
    requests = sa.table(
        "requests", sa.column("id", sa.Text()), sa.column("taken_down_at", UTC_DATETIME)
    )
    audit_log = sa.table(
        "audit_log", sa.column("request_id", sa.Text()), sa.column("action", sa.Text())
    )
    taken_down = sa.select(audit_log.c.request_id).where(audit_log.c.action == "report_taken_down")
    op.execute(requests.update().where(requests.c.id.in_(taken_down)).values(taken_down_at=now))


def downgrade() -> None:
    op.drop_index(op.f("ix_requests_taken_down_at"), table_name="requests")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("taken_down_at")
