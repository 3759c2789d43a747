"""Schema migrations with Alembic, run from code: the scripts ship inside the package."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from bus.store._engine import without_query_timeout
from bus.store._errors import SchemaTooNew

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
#: PostgreSQL advisory lock key held while migrating ("civicbus" as digits of a 32-bit key).
_ADVISORY_LOCK_KEY = 0x63697669


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the packaged scripts, bound to `connection` when given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def is_current(engine: Engine) -> bool:
    """Whether the schema is at head, without taking any write lock."""
    with engine.connect() as conn:
        return current_revision(conn) == head_revision()


@contextmanager
def migrating(write_engine: Engine) -> Iterator[Connection]:
    """A connection in the write transaction that migrations run in, committed on leaving.

    PostgreSQL: the migration lock is taken. SQLite: foreign keys are off for the transaction.
    A migration that changes a column rebuilds the table (a copy, then DROP TABLE of the old
    one), and with foreign keys on, that DROP deletes every row referring to the table as a
    DELETE would: rebuilding `requests` emptied back-end references, histories and reporters.
    SQLite ignores the pragma inside a transaction, so it is set before, on the driver's
    connection; the references are checked before the commit, and foreign keys are on again
    before the connection goes back to the pool.
    """
    with write_engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            raw = conn.connection.driver_connection
            assert raw is not None  # a checked-out connection
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            with without_query_timeout(conn), conn.begin():
                if not sqlite:
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                    )
                yield conn
                if sqlite:
                    require_sqlite_references_intact(conn)
        finally:
            if sqlite:
                _foreign_keys_on_again(conn)


def require_sqlite_references_intact(conn: Connection) -> None:
    """Raise when a row refers to one that is not there (what foreign keys would refuse)."""
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        tables = sorted({f"{row[0]} -> {row[2]}" for row in broken})
        raise RuntimeError(
            f"the migration would leave {len(broken)} rows referring to rows that are not "
            f"there ({', '.join(tables)}); nothing was changed"
        )


def _foreign_keys_on_again(conn: Connection) -> None:
    raw = conn.connection.driver_connection
    try:
        assert raw is not None
        raw.execute("PRAGMA foreign_keys = ON")
        if raw.execute("PRAGMA foreign_keys").fetchone() != (1,):  # still in a transaction
            raise RuntimeError("foreign keys could not be turned on again")
    except BaseException:
        conn.invalidate()  # never pooled without them; the pool makes a new connection
        raise


def upgrade(write_engine: Engine) -> None:
    """Migrate to head; several processes starting at once migrate exactly once.

    PostgreSQL: an advisory lock held for the transaction; SQLite: the write transaction
    (BEGIN IMMEDIATE) itself. The second process then finds the schema at head. No limit on
    how long PostgreSQL may take: a migration may rebuild a large table.
    """
    with migrating(write_engine) as conn:
        before = current_revision(conn)
        try:
            command.upgrade(alembic_config(conn), "head")
        except CommandError as error:
            raise SchemaTooNew(
                f"the database schema is at revision {before!r}, which this civicbus does not "
                f"know (its newest is {head_revision()!r}): run a civicbus at least as new as "
                "the one that migrated this database"
            ) from error
        after = current_revision(conn)
    if before != after:
        log.info("store.migrated", from_revision=before, to_revision=after)
