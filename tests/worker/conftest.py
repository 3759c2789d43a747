"""Fixtures of the worker tests: a real SQLite store and the real broker (a fresh vhost)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from worker_support import FAST, INSTANCE, channel_on

from bus.broker.topology import declare_topology
from bus.store import Store


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    s = Store.open(sqlite_url)
    yield s
    s.close()


@pytest.fixture
def topology(amqp_url: str) -> str:
    """The vhost with the test instance's exchanges and queues declared."""
    with channel_on(amqp_url) as ch:
        declare_topology(ch, {INSTANCE: FAST})
    return amqp_url
