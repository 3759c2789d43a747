"""Worker liveness: how many messages each worker holds unacknowledged (in hand and prefetched),
which the broker's passive declare does not tell `civicbus status`: it counts ready messages only,
so a worker holding its whole prefetch behind one slow call looked like an empty queue.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: the reports of workers started before the upgrade do not say.
    op.add_column("worker_liveness", sa.Column("held", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("worker_liveness", "held")
