"""The relay the broker fault tests run against the private RabbitMQ node, and how they feed
it and read what it published.

    declare_with_tap(url, config)
    with running_relay(store, config, url, settings) as relay:
        accepted = [accept(store) for _ in range(30)]
        wait_until_relayed(store)
    assert read_all(url, TAP) == [e.id for e in accepted]
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pika

from bus.broker import topology as t
from bus.config import Config
from bus.relay import Relay, RelaySettings
from bus.store import Store
from schemas.events import Envelope, EventType

TAP = "test.tap"  # a durable queue taking the outbox's events, read after the fault


def declare_with_tap(url: str, config: Config) -> None:
    """The topology of `config`, and TAP bound to the events the outbox carries."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    t.declare_topology(channel, config.instances)
    channel.queue_declare(TAP, durable=True, arguments={"x-queue-type": "quorum"})
    for pattern in ("request.created.*", "request.status_changed.*"):  # the outbox's events
        channel.queue_bind(TAP, t.EVENTS_EXCHANGE, pattern)
    connection.close()


@contextmanager
def running_relay(
    store: Store, config: Config, url: str, settings: RelaySettings
) -> Iterator[Relay]:
    """The relay running in a thread; stopped afterwards, failing if it does not stop."""
    relay = Relay(store, config, url, settings=settings)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        relay.stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive(), "the relay did not stop"


def accept(store: Store, event: EventType = EventType.CREATED, subject: str = "") -> Envelope:
    """Write an event to the outbox, as the API does when it accepts a request."""
    subject = subject or uuid.uuid4().hex
    envelope = Envelope(
        type=event,
        subject=subject,
        data={"id": subject, "service_code": "POTHOLE", "jurisdiction": "springfield.example"},
        correlationid=f"corr-{subject}",
    )
    qualifier = "POTHOLE" if event is EventType.CREATED else "in_progress"
    with store.transaction() as tx:
        tx.add_outbox(
            envelope, exchange=t.EVENTS_EXCHANGE, routing_key=t.event_routing_key(event, qualifier)
        )
    return envelope


def wait_until_relayed(store: Store, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while store.pending_outbox(limit=1):
        assert time.monotonic() < deadline, "the relay did not catch up"
        time.sleep(0.05)


def read_all(url: str, queue: str) -> list[str]:
    """Every message id on the queue, in queue order (the messages are consumed)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    ids: list[str] = []
    while True:
        method, properties, _ = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        ids.append(properties.message_id)
    connection.close()
    return ids
