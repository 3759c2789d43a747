"""Fixtures of the worker tests: a real SQLite store and the real broker (a fresh vhost)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

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


@pytest.fixture
def use_config(
    tmp_path: Path, sqlite_url: str, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], dict[str, str]]:
    """Point the CLI's environment at a config with this YAML text, the test's SQLite store and
    its broker vhost, as an operator's shell would; returns the variables set."""

    def use(config_text: str) -> dict[str, str]:
        config = tmp_path / "civicbus.yaml"
        config.write_text(config_text)
        values = {
            "CIVICBUS_CONFIG": str(config),
            "CIVICBUS_DATABASE_URL": sqlite_url,
            "CIVICBUS_AMQP_URL": amqp_url,
        }
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        return values

    return use
