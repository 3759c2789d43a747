"""SQLAlchemy Core definitions of the work-order tables, mirroring deploy/sandbox/oracle/schema.sql.

Lower-case names are case-insensitive to SQLAlchemy, so on Oracle they are rendered unquoted and
match the upper-case objects the DDL creates. Times are TIMESTAMP without a zone, in the
database's local time (the adapter's `timezone` setting, UTC by default).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import oracle

metadata = sa.MetaData()

#: SQLite has no sequences: there, ids come from its integer primary key.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: On Oracle, DateTime would be DATE (whole seconds): the change-time watermark needs TIMESTAMP.
_Time = sa.DateTime().with_variant(oracle.TIMESTAMP(), "oracle")

work_order_seq = sa.Sequence("work_order_seq", metadata=metadata)
work_order_history_seq = sa.Sequence("work_order_history_seq", metadata=metadata)

work_orders = sa.Table(
    "work_orders",
    metadata,
    sa.Column("id", _Id, work_order_seq, primary_key=True),
    sa.Column("external_ref", sa.String(64), nullable=False),
    sa.Column("work_type", sa.String(20), nullable=False),
    sa.Column("priority", sa.Integer()),
    sa.Column("description", sa.String(2000)),
    sa.Column("address", sa.String(200)),
    sa.Column("x", sa.Numeric(12, 3, asdecimal=False)),
    sa.Column("y", sa.Numeric(12, 3, asdecimal=False)),
    sa.Column("status", sa.String(20), nullable=False, server_default="NEW"),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("updated_at", _Time, nullable=False),
    sa.UniqueConstraint("external_ref", name="uq_work_orders_external_ref"),
    sa.Index("ix_work_orders_updated_at", "updated_at"),
)

work_order_history = sa.Table(
    "work_order_history",
    metadata,
    sa.Column("id", _Id, work_order_history_seq, primary_key=True),
    sa.Column("work_order_id", _Id, sa.ForeignKey("work_orders.id"), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("note", sa.String(400)),
    sa.Column("changed_at", _Time, nullable=False),
    sa.Index("ix_work_order_history_order", "work_order_id"),
)

#: The work-order fields a mapping may fill (external_ref is always the civicbus request id).
MAPPED_FIELDS = ("work_type", "priority", "description", "address", "x", "y")


def create_schema(engine: sa.Engine) -> None:
    """Create the tables (and sequences where the database has them): for tests and the sandbox.

    On Oracle the DBA runs deploy/sandbox/oracle/schema.sql instead.
    """
    metadata.create_all(engine)
