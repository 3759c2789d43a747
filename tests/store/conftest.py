"""The store tests run twice: on the embedded SQLite store and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.store import Store


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty database of each kind."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An opened (migrated) store on a fresh database."""
    opened = Store.open(store_url)
    yield opened
    opened.close()
