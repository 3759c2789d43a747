"""Dead letters' resolved_at: when a dead letter was last replayed or dropped, so that
`civicbus store prune` deletes those resolved long ago. Letters replayed or dropped before this
revision get the time of the upgrade: the store never recorded when, and a prune must not delete
one sooner than its retention period after it was resolved.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 03:00:00.000000
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

# The column types as they were at this revision (migrations do not follow later code).
UTC_DATETIME = sa.DateTime(timezone=True)

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An added column needs no table rebuild on SQLite: batch mode is not needed.
    op.add_column("dead_letters", sa.Column("resolved_at", UTC_DATETIME, nullable=True))
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # SQLite keeps UTC naive (bus.store._tables.UTCDateTime)
    dead_letters = sa.table(
        "dead_letters", sa.column("state", sa.Text()), sa.column("resolved_at", UTC_DATETIME)
    )
    op.execute(
        dead_letters.update()
        .where(dead_letters.c.state.in_(["replayed", "dropped"]))
        .values(resolved_at=now)
    )


def downgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("resolved_at")
