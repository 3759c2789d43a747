"""Fixtures of the relay tests: the sandbox config, and a channel that taps every event."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from bus.broker import topology as t
from bus.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "deploy/sandbox/civicbus.yaml")


@pytest.fixture
def channel(amqp_url: str, config: Config) -> Iterator[Any]:
    """A channel on the test vhost with the topology and a queue taking every event."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    t.declare_topology(channel, config.instances)
    channel.queue_declare("test.events", exclusive=True)
    channel.queue_bind("test.events", t.EVENTS_EXCHANGE, "request.#")
    yield channel
    connection.close()
