"""Small SQL helpers shared by the store's repositories."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def utcnow() -> datetime:
    return datetime.now(UTC)


class JsonText(str):
    """A value already serialised as JSON (e.g. by pydantic's `model_dump_json`), stored in a
    JSON column as it is: the hot write path then serialises each document once, in Rust."""


def serialize_json(value: Any) -> str:
    """The engines' JSON serialiser: `JsonText` as it is, anything else with `json.dumps`."""
    if isinstance(value, JsonText):
        return str.__str__(value)
    return json.dumps(value)


def insert_ignoring_duplicates(
    conn: Connection, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str]
) -> bool:
    """Insert a row unless one with the same unique `keys` exists; True if it was inserted."""
    statement: Any
    if conn.dialect.name == "postgresql":
        statement = postgresql.insert(table).values(**values)
    else:
        statement = sqlite.insert(table).values(**values)
    # RETURNING rather than rowcount: the driver's rowcount of an INSERT is not reliable.
    statement = statement.on_conflict_do_nothing(index_elements=list(keys))
    return conn.execute(statement.returning(table.c[keys[0]])).first() is not None


def upsert(
    conn: Connection,
    table: sa.Table,
    values: Mapping[str, Any],
    keys: Sequence[str],
) -> None:
    """Insert the row, or update its non-key columns when one with the same `keys` exists."""
    statement: Any
    if conn.dialect.name == "postgresql":
        statement = postgresql.insert(table).values(**values)
    else:
        statement = sqlite.insert(table).values(**values)
    updates = {name: statement.excluded[name] for name in values if name not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=updates))
