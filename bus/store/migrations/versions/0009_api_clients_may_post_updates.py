"""API clients' may_post_updates: whether a key may post status updates (POST
/servicerequestupdates), which until this revision any key could, for any request of its
jurisdiction. New clients may not unless created with `civicbus clients add --updates`. Clients
made before this revision keep being allowed, so that a back office or partner posting updates
does not start failing on the upgrade; an operator reviews them with `civicbus clients list`
and takes it away with `civicbus clients deny-updates NAME`.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Added with the default new clients get (not allowed), then every existing client allowed:
    # the default stays closed for a row inserted without it, and changing a column's default
    # afterwards would make SQLite rebuild the table, whose drop would cascade to the clients'
    # Idempotency-Keys (foreign keys are on).
    op.add_column(
        "api_clients",
        sa.Column("may_post_updates", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    api_clients = sa.table("api_clients", sa.column("may_post_updates", sa.Boolean()))
    op.execute(api_clients.update().values(may_post_updates=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not batch mode: its table rebuild would delete
    # the clients' Idempotency-Keys, as above.
    op.drop_column("api_clients", "may_post_updates")
