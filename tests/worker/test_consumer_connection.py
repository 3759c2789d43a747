"""The consumer's connection handling: given no queue, it waits for its stop instead of
connecting again and again; after a channel error, it closes the connection it leaves."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker
from structlog.testing import capture_logs

from bus.worker import Consumer


def test_a_consumer_with_no_queue_waits_for_stop_without_connecting() -> None:
    with socket.socket() as probe:  # a port nobody listens on: any connection attempt fails
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    consumer = Consumer(f"amqp://guest:guest@127.0.0.1:{port}/%2F", prefetch=1, name="idle")

    with capture_logs() as logs:
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive()  # waiting, not returned
        consumer.stop()
        thread.join(timeout=5)

    assert not thread.is_alive()
    assert [entry["event"] for entry in logs] == ["worker.nothing_to_consume"]


@pytest.mark.rabbitmq
def test_a_channel_error_closes_its_connection_before_the_next_one_opens(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A channel-level error (here in the set-up, as a 404 for a missing exchange would be)
    # leaves the connection itself open; the consumer connects again, and must not leave the
    # first one behind on the broker.
    opened: list[pika.BlockingConnection] = []
    real = pika.BlockingConnection

    def recording(*args: Any, **kwargs: Any) -> pika.BlockingConnection:
        connection = real(*args, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(pika, "BlockingConnection", recording)
    failures = [ChannelClosedByBroker(404, "NOT_FOUND - no exchange 'gone'")]

    def declare(channel: Any) -> None:
        channel.queue_declare("civicbus.test.channel-error", durable=True)
        if failures:
            raise failures.pop()

    consumer = Consumer(amqp_url, prefetch=1, name="flaky", declare=declare, reconnect_delay=0.1)
    consumer.consume("civicbus.test.channel-error", lambda delivery, broker: None)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(opened) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(opened) == 2, "the consumer connected again"
        assert not opened[0].is_open
    finally:
        consumer.stop()
        thread.join(timeout=15)
    assert not thread.is_alive()
