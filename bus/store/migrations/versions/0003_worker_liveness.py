"""Worker liveness: each running worker's heartbeat and the message it holds, for `civicbus
status` and `civicbus requests stuck`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 09:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The column types as they were at this revision (migrations do not follow later code).
UTC_DATETIME = sa.DateTime(timezone=True)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_liveness",
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("heartbeat_at", UTC_DATETIME, nullable=False),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("working_since", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("worker_id", "recipient", name=op.f("pk_worker_liveness")),
    )


def downgrade() -> None:
    op.drop_table("worker_liveness")
