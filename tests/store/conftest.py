"""The store tests run twice: on the embedded SQLite store and on PostgreSQL.

SQLite gets a fresh file per test. PostgreSQL gets a fresh database per test module, emptied
before each test: creating and dropping a database costs about a second each, the emptying a
few milliseconds. Tests that need a never-migrated database take `store_url`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from bus.store import Store
from bus.store._tables import GENESIS_HASH, audit_head, metadata


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty database of each kind."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(scope="module")
def postgres_module_store(postgres_database_factory: Callable[[], str]) -> Iterator[Store]:
    opened = Store.open(postgres_database_factory())
    yield opened
    opened.close()


def empty(store: Store) -> None:
    """Remove every row, leaving the schema and a fresh audit chain head."""
    names = ", ".join(table.name for table in metadata.sorted_tables)
    with store._engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        conn.execute(audit_head.insert().values(id=1, last_id=0, last_hash=GENESIS_HASH))


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """An opened (migrated), empty store of each kind."""
    if request.param == "postgres":
        shared: Store = request.getfixturevalue("postgres_module_store")
        empty(shared)
        yield shared
        return
    opened = Store.open(request.getfixturevalue("sqlite_url"))
    yield opened
    opened.close()
