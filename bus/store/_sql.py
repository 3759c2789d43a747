"""Small SQL helpers shared by the store's repositories."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.compiler import SQLCompiler

from bus.store._errors import InvalidData


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


# --- the hot path: statements compiled once, run on the driver's cursor ---------------------
#
# SQLAlchemy's execution machinery (events, result objects, parameter processing) costs about
# 50-100 us a statement, several times what SQLite takes to run a small one. Intake, relay and
# worker transactions run a handful of fixed statements per batch; those are compiled by
# SQLAlchemy once per dialect and then run on the DBAPI cursor of the same connection, inside
# the same transaction. Driver errors are raised as SQLAlchemy's exception classes, so the
# store's error translation treats them as it treats any other.


def driver_execute(conn: Connection, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one SQL text (the dialect's paramstyle) on the connection's driver cursor; the rows
    it returns, if any. A list of parameter sets runs it once per set (executemany)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if isinstance(params, list):
            cursor.executemany(sql, params)
        elif params is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []
    except conn.dialect.loaded_dbapi.Error as error:  # looked up only when one is raised
        dbapi_error = conn.dialect.loaded_dbapi.Error
        raise sa_exc.DBAPIError.instance(
            sql, None, error, dbapi_error, hide_parameters=True, dialect=conn.dialect
        ) from error
    finally:
        cursor.close()


@dataclass(frozen=True)
class _StatementPlan:
    sql: str
    names: tuple[str, ...]  # bind order (positional paramstyles)
    defaults: Mapping[str, Any]  # values bound in the statement itself
    positional: bool
    statement: sa.ClauseElement  # kept alive, so that its id is never reused for another


_STATEMENTS: dict[tuple[str, int], _StatementPlan] = {}


def run(
    conn: Connection, statement: sa.ClauseElement, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run a module-level Core statement (built once) on the driver's cursor: compiled once
    per dialect, parameters passed as they are (no type processing: plain ints and text)."""
    key = (conn.dialect.name, id(statement))
    plan = _STATEMENTS.get(key)
    if plan is None:
        compiled = cast(SQLCompiler, statement.compile(dialect=conn.dialect))
        plan = _StatementPlan(
            sql=compiled.string,
            names=tuple(compiled.positiontup or ()),
            defaults=dict(compiled.params),
            positional=bool(compiled.positional),
            statement=statement,
        )
        _STATEMENTS[key] = plan
    values = {**plan.defaults, **(params or {})}
    bound = tuple(values[name] for name in plan.names) if plan.positional else values
    return driver_execute(conn, plan.sql, bound)


@dataclass(frozen=True)
class _ListPlan:
    sql: str
    positional: bool  # qmark (SQLite): the ids in order; else pyformat: ids_1, ids_2, ...
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column position, processing)
    statement: sa.Select[Any]  # kept alive, so that its id is never reused for another


_LIST_PLANS: dict[tuple[str, int, int], _ListPlan] = {}
#: Plans are kept for lists up to this long (a worker's batch is at most half its prefetch);
#: a longer list, rare, is compiled for the call, so the plans kept stay few.
_MOST_KEPT = 256


def select_for_ids(
    conn: Connection, statement: sa.Select[Any], ids: Sequence[str]
) -> list[tuple[Any, ...]]:
    """Run a module-level SELECT whose one parameter is the expanding list `ids` (`IN :ids`)
    on the driver's cursor: compiled once per dialect and length of the list, each column
    through its type's result processing as `conn.execute` would do, rows as plain tuples.
    The worker's batch reads run here: SQLAlchemy's execution and Row objects cost more than
    SQLite takes to answer them."""
    if not ids:
        return []
    key = (conn.dialect.name, id(statement), len(ids))
    plan = _LIST_PLANS.get(key)
    if plan is None:
        plan = _list_plan(conn, statement, len(ids))
        if len(ids) <= _MOST_KEPT:
            _LIST_PLANS[key] = plan
    bound: Any = (
        tuple(ids) if plan.positional else {f"ids_{i + 1}": value for i, value in enumerate(ids)}
    )
    rows = driver_execute(conn, plan.sql, bound)
    converted = []
    for row in rows:
        values = list(row)
        for position, process in plan.processors:
            if values[position] is not None:
                values[position] = process(values[position])
        converted.append(tuple(values))
    return converted


def _list_plan(conn: Connection, statement: sa.Select[Any], count: int) -> _ListPlan:
    compiled = statement.params(ids=[f"id{i}" for i in range(count)]).compile(
        dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
    )
    # The list rendered as ids_1, ids_2, ... (qmark: in that order); another parameter would
    # be left unbound: a misuse.
    if compiled.positional:
        sole = tuple(compiled.positiontup or ()) == tuple(f"ids_{i + 1}" for i in range(count))
    else:
        sole = set(compiled.binds) == {"ids"}
    if not sole:
        raise ValueError("select_for_ids: `ids` must be the statement's only parameter")
    return _ListPlan(
        sql=compiled.string,
        positional=bool(compiled.positional),
        processors=tuple(
            (position, process)
            for position, column in enumerate(statement.selected_columns)
            if (
                process := column.type.dialect_impl(conn.dialect).result_processor(
                    conn.dialect, None
                )
            )
        ),
        statement=statement,
    )


@dataclass(frozen=True)
class _InsertPlan:
    sql: str
    names: tuple[str, ...]  # bind order
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool


_PLANS: dict[tuple[str, str, tuple[str, ...]], _InsertPlan] = {}


def _plan(conn: Connection, table: sa.Table, columns: tuple[str, ...]) -> _InsertPlan:
    key = (conn.dialect.name, table.name, columns)
    plan = _PLANS.get(key)
    if plan is None:
        statement = table.insert().values({c: sa.bindparam(c) for c in columns})
        compiled = statement.compile(dialect=conn.dialect)
        positional = bool(compiled.positional)
        names = tuple(compiled.positiontup or ()) if positional else columns
        plan = _InsertPlan(
            sql=compiled.string,
            names=names,
            processors=tuple(
                table.c[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
                for name in names
            ),
            positional=positional,
        )
        _PLANS[key] = plan
    return plan


def insert_rows(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows (all with the same keys): one statement, compiled once, run for every row
    at once (the driver's executemany).

    The hot path of intake: values go through each column type's bind processing, as with
    `conn.execute(table.insert(), rows)`, then run on the driver's cursor. A value refused
    while binding raises InvalidData.
    """
    if not rows:
        return
    plan = _plan(conn, table, tuple(rows[0]))
    # Column by column: a value every row holds (the same object, e.g. a batch's `now`) goes
    # through its type's processing once, not once a row.
    columns: list[list[Any]] = []
    try:
        for name, process in zip(plan.names, plan.processors, strict=True):
            values = [row[name] for row in rows]
            if process is not None:
                first = values[0]
                if all(value is first for value in values):
                    values = [process(first)] * len(values)
                else:
                    values = [process(value) for value in values]
            columns.append(values)
    except (ValueError, OverflowError) as error:  # e.g. a datetime whose UTC form is out of range
        # The message may quote the value (personal data): name the table and the error type only.
        raise InvalidData(f"{table.name}: a value was refused ({type(error).__name__})") from None
    params: list[Any] = list(zip(*columns, strict=True))
    if not plan.positional:
        params = [dict(zip(plan.names, values, strict=True)) for values in params]
    driver_execute(conn, plan.sql, params if len(params) > 1 else params[0])
