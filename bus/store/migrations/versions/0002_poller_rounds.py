"""Poller rounds: when an instance's poller last completed a round, since when its rounds fail,
how many failed and the latest error, for `civicbus status` and /metrics.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 08:55:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The column types as they were at this revision (migrations do not follow later code).
UTC_DATETIME = sa.DateTime(timezone=True)

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Added columns need no table rebuild on SQLite: batch mode is not needed.
    op.add_column("adapter_watermarks", sa.Column("polled_at", UTC_DATETIME, nullable=True))
    op.add_column("adapter_watermarks", sa.Column("failing_since", UTC_DATETIME, nullable=True))
    op.add_column(
        "adapter_watermarks",
        sa.Column("failed_rounds", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("adapter_watermarks", sa.Column("last_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adapter_watermarks") as batch:
        batch.drop_column("last_error")
        batch.drop_column("failed_rounds")
        batch.drop_column("failing_since")
        batch.drop_column("polled_at")
