"""Requests' changed_at: when civicbus last recorded a change to the request, on its own clock,
which Open311 reads give as `updated_datetime` and `updated_after`/`updated_before` filter by.
Until this revision both were the later of updated_at (the sender's time of the latest status)
and taken_down_at: a status dated by a back-end whose clock runs behind ours, or given late by
its feed, could fall before a time an Open311 client had already polled past, and the client
was never told. Existing requests get that later time, as they read before the upgrade.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 21:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The column types as they were at this revision (migrations do not follow later code).
UTC_DATETIME = sa.DateTime(timezone=True)

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Added as nullable, filled, then made NOT NULL: SQLite changes a column's constraint by
    # rebuilding the table, which batch mode does.
    op.add_column("requests", sa.Column("changed_at", UTC_DATETIME, nullable=True))
    requests = sa.table(
        "requests",
        sa.column("updated_at", UTC_DATETIME),
        sa.column("taken_down_at", UTC_DATETIME),
        sa.column("changed_at", UTC_DATETIME),
    )
    later = sa.case(
        (requests.c.taken_down_at > requests.c.updated_at, requests.c.taken_down_at),
        else_=requests.c.updated_at,
    )
    op.execute(requests.update().values(changed_at=later))
    with op.batch_alter_table("requests") as batch:
        batch.alter_column("changed_at", existing_type=UTC_DATETIME, nullable=False)
    op.create_index(op.f("ix_requests_changed_at"), "requests", ["changed_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_requests_changed_at"), table_name="requests")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("changed_at")
