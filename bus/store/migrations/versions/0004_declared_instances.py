"""Declared instances: the adapter instances whose queues the relay has declared on the broker,
so that `civicbus status` can look at the queues of one since removed from the config.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 00:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The column types as they were at this revision (migrations do not follow later code).
UTC_DATETIME = sa.DateTime(timezone=True)

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "declared_instances",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("first_declared_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_declared_instances")),
    )


def downgrade() -> None:
    op.drop_table("declared_instances")
