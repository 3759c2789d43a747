"""A worker's publishes go out on a connection of their own (bus.worker._publisher); a failed
one raises PublishFailed, and the next one starts afresh on a new connection."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from bus.broker.connection import BlockedEpisodes, connection_parameters
from bus.worker._publisher import Publisher, PublishFailed
from tests.worker.worker_support import channel_on


@pytest.fixture
def target(amqp_url: str) -> Iterator[str]:
    name = f"test.publisher.{uuid.uuid4().hex[:8]}"
    yield name
    with channel_on(amqp_url) as channel:
        channel.queue_delete(name)


def test_a_publish_the_broker_cannot_route_fails_and_the_next_declares_again(
    amqp_url: str, target: str
) -> None:
    declared: list[int] = []

    def declare(channel: Any) -> None:
        channel.queue_declare(target, durable=True)
        declared.append(1)

    publisher = Publisher(
        connection_parameters(amqp_url), BlockedEpisodes("worker"), "test", declare
    )
    try:
        publisher.publish("", target, b"first")
        with channel_on(amqp_url) as channel:
            channel.queue_delete(target)  # as an operator might, by hand
        with pytest.raises(PublishFailed, match="Unroutable"):
            publisher.publish("", target, b"lost")
        publisher.publish("", target, b"third", headers={"x-attempt": 2}, message_id="m-3")
    finally:
        publisher.close()

    assert len(declared) == 2  # once a connection
    with channel_on(amqp_url) as channel:
        method, properties, body = channel.basic_get(target, auto_ack=True)
        assert method is not None and body == b"third"
        assert properties.delivery_mode == pika.DeliveryMode.Persistent.value
        assert properties.headers == {"x-attempt": 2} and properties.message_id == "m-3"
        assert channel.basic_get(target)[0] is None


def test_a_closed_publisher_refuses_at_once(amqp_url: str) -> None:
    publisher = Publisher(connection_parameters(amqp_url), BlockedEpisodes("worker"), "test")
    publisher.close()
    with pytest.raises(PublishFailed, match="stopping"):
        publisher.publish("", "anything", b"{}")
