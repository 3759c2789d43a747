"""Alembic environment: always run programmatically by `bus.store`, on the connection it passes."""

from __future__ import annotations

from alembic import context

from bus.store._tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `civicbus db upgrade` (bus.store.Store.upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
