"""Engines for the two supported databases: embedded SQLite (WAL) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import tenacity
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

from bus.store._checkpointer import FALLBACK_PAGES
from bus.store._errors import BadDatabaseUrl, NoSuchStore
from bus.store._sql import driver_execute, serialize_json

#: Seconds a writer waits for SQLite's write lock before the store reports itself unavailable;
#: a `?timeout=SECONDS` on the URL overrides it.
SQLITE_BUSY_TIMEOUT_S = 5.0
#: SQLite connections kept open for reuse (more are opened when needed, closed after use).
SQLITE_POOL_SIZE = 10
#: Seconds to wait for a PostgreSQL connection before the store reports itself unavailable
#: (less when the round-trip timeout is shorter).
PG_CONNECT_TIMEOUT_S = 5
#: Seconds PostgreSQL may take to answer one round trip (a statement and its rows, a commit)
#: before the connection is closed and the store reports itself unavailable: a server that
#: stops answering without closing the connection must not hang the API or the bus. Long
#: enough for the longest legitimate statement (a `store prune` batch, a page of `audit
#: verify`; migrations are not bounded). A `?query_timeout=SECONDS` on the URL overrides it,
#: 0 turns it off.
PG_QUERY_TIMEOUT_S = 15.0
#: TCP keepalives on PostgreSQL connections, to notice a server that went away behind a
#: network partition even while idle (libpq parameters; the URL's own values win).
PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

#: Execution option marking a connection that will write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "civicbus_write"


def normalise_url(url: str) -> URL:
    """The URL with the psycopg 3 driver for plain `postgresql://` URLs; BadDatabaseUrl for
    text that is no URL."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):  # ValueError: a bad port, several hosts
        raise BadDatabaseUrl(
            "not a database URL: give sqlite:///PATH or postgresql://USER@HOST/DATABASE"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def require_sqlite_file(engine: Engine) -> None:
    """NoSuchStore when the engine's database is an SQLite file that is not there."""
    database = engine.url.database
    if engine.url.get_backend_name() == "sqlite" and database not in (None, "", ":memory:"):
        path = Path(database)
        if not path.exists():
            raise NoSuchStore(path.resolve(), database)


def create_engine(url: str) -> Engine:
    """An engine configured for the store; nothing connects until first use."""
    parsed = normalise_url(url)
    # hide_parameters: SQLAlchemy's error texts must never quote row values (personal data).
    if parsed.get_backend_name() == "sqlite":
        timeout = _seconds(parsed, "timeout", SQLITE_BUSY_TIMEOUT_S)
        pool: dict[str, Any] = {}
        if parsed.database not in (None, "", ":memory:"):
            # Never wait for a pooled connection: a SQLite connection is a file handle, and
            # the API commits on its event loop, which must not block behind busy readers.
            pool = {"pool_size": SQLITE_POOL_SIZE, "max_overflow": -1}
        engine = sa.create_engine(
            parsed.difference_update_query(["timeout"]),
            hide_parameters=True,
            json_serializer=serialize_json,
            connect_args={"timeout": timeout},
            **pool,
        )
        _configure_sqlite(engine, busy_timeout_ms=int(timeout * 1000))
        return engine
    if parsed.get_backend_name() == "postgresql":
        query_timeout = _query_timeout(parsed)
        engine = sa.create_engine(
            parsed.difference_update_query(["query_timeout"]),
            hide_parameters=True,
            json_serializer=serialize_json,
            pool_pre_ping=True,
            connect_args=_pg_connect_args(parsed, query_timeout),
        )
        _bound_round_trips(engine, query_timeout)
        return engine
    raise BadDatabaseUrl(
        f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
    )


def _query_timeout(url: URL) -> float | None:
    return _seconds(url, "query_timeout", PG_QUERY_TIMEOUT_S) or None


def _seconds(url: URL, name: str, default: float) -> float:
    """The URL's query parameter `name`, in seconds (0 or more)."""
    text = str(url.query.get(name, default))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < math.inf:  # NaN too
        raise BadDatabaseUrl(f"{name}={text!r} in the database URL: give seconds, 0 or more")
    return seconds


def _pg_connect_args(url: URL, query_timeout: float | None) -> dict[str, Any]:
    """libpq parameters the URL does not set itself."""
    connect_timeout = PG_CONNECT_TIMEOUT_S
    defaults: dict[str, Any] = dict(PG_KEEPALIVES)
    if query_timeout is not None:
        connect_timeout = min(connect_timeout, math.ceil(query_timeout))
        # Data sent but not acknowledged for that long (a partition mid-statement): give up.
        defaults["tcp_user_timeout"] = math.ceil(query_timeout * 1000)
    defaults["connect_timeout"] = connect_timeout
    return {name: value for name, value in defaults.items() if name not in url.query}


def _bound_round_trips(engine: Engine, query_timeout: float | None) -> None:
    # psycopg: only for PostgreSQL
    from psycopg.errors import ConnectionTimeout

    from bus.store._pg_deadline import DeadlineConnection, NoAnswer

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> DeadlineConnection:
        try:
            connection = DeadlineConnection.connect(*cargs, **cparams)
        except ConnectionTimeout as error:  # a server that takes connections but says nothing
            raise NoAnswer(f"no answer from the server while connecting: {error}") from None
        connection.round_trip_timeout = query_timeout
        return connection


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        record.info[_BUSY_TIMEOUT_MS] = busy_timeout_ms
        # Take transaction control from the driver so that we emit BEGIN ourselves below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        _turn_on_wal(cursor, busy_timeout_ms)
        # In WAL mode a commit is durable against a crash of the process (kill -9): the WAL
        # file is written before COMMIT returns and the OS keeps it. synchronous=NORMAL only
        # skips the fsync per commit, so a power cut may lose the last commits, never corrupt.
        cursor.execute("PRAGMA synchronous = NORMAL")
        # The store's checkpointer thread copies the log back (bus.store._checkpointer); a
        # commit does it itself only past this many pages.
        cursor.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_PAGES}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Writers take the write lock up front: two deferred transactions that both upgrade
        # from read to write would deadlock ("database is locked" without waiting).
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        driver_execute(connection, "BEGIN IMMEDIATE" if write else "BEGIN")


def _turn_on_wal(cursor: Any, busy_timeout_ms: int) -> None:
    # Turning a new database file to WAL takes an exclusive lock, and SQLite does not always
    # wait for it through the busy handler: when several processes create the store at once,
    # one may get "database is locked" at once. Try again, within the usual busy timeout.
    for attempt in tenacity.Retrying(
        retry=tenacity.retry_if_exception(
            lambda error: isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
        ),
        stop=tenacity.stop_after_delay(busy_timeout_ms / 1000),
        wait=tenacity.wait_random(0.005, 0.05),
        reraise=True,
    ):
        with attempt:
            cursor.execute("PRAGMA journal_mode = WAL")


_BUSY_TIMEOUT_MS = "civicbus_busy_timeout_ms"


@contextmanager
def lock_timeout(conn: Connection, seconds: float | None) -> Iterator[None]:
    """Wait at most `seconds` for SQLite's write lock inside the block (before its BEGIN);
    the connection's usual wait is restored afterwards. Nothing on PostgreSQL."""
    usual = conn.connection.info.get(_BUSY_TIMEOUT_MS)
    if seconds is None or usual is None:
        yield
        return
    # On the driver's connection: through SQLAlchemy, the PRAGMA would itself begin a
    # transaction (BEGIN IMMEDIATE, which waits for the lock with the usual timeout).
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA busy_timeout = {usual}")


@contextmanager
def without_query_timeout(conn: Connection) -> Iterator[None]:
    """Let PostgreSQL take as long as it needs inside the block (migrations: an index built on
    a large table); the connection's usual limit is restored afterwards. Nothing on SQLite."""
    raw = conn.connection.driver_connection
    if raw is None or getattr(raw, "round_trip_timeout", None) is None:
        yield
        return
    usual, raw.round_trip_timeout = raw.round_trip_timeout, None
    try:
        yield
    finally:
        raw.round_trip_timeout = usual


def writer(engine: Engine) -> Engine:
    """The same engine, for write transactions."""
    return engine.execution_options(**{WRITE_OPTION: True})


def reader(engine: Engine) -> Engine:
    """The same engine, for reads that must see one consistent snapshot across statements
    (a request and its history; the whole audit chain while writers append)."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ")
    return engine  # SQLite: a read transaction in WAL mode is already a snapshot
