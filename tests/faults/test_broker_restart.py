"""The broker goes away while residents keep reporting: nothing accepted is lost or reordered.

Uses the private RabbitMQ node of tests/faults/conftest.py, so that stopping it leaves the
machine's broker alone, and a real SQLite store.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from bus.broker import topology as t
from bus.config import Config
from bus.relay import Relay, RelaySettings
from bus.store import Store
from schemas.events import Envelope, EventType
from tests.faults.relay_support import (
    TAP,
    accept,
    declare_with_tap,
    read_all,
    running_relay,
    wait_until_relayed,
)

if TYPE_CHECKING:
    from tests.faults.conftest import RabbitNode


@pytest.fixture
def relay(store: Store, config: Config, rabbit_node_url: str) -> Iterator[Relay]:
    """The relay running in a thread against the private node, the topology and a tap declared."""
    declare_with_tap(rabbit_node_url, config)
    settings = RelaySettings(batch_size=20, poll_interval=0.02, max_backoff=0.5)
    with running_relay(store, config, rabbit_node_url, settings) as relay:
        yield relay


def test_requests_accepted_while_the_broker_is_down_are_delivered_once_in_order(
    rabbit_node: RabbitNode, rabbit_node_url: str, store: Store, relay: Relay
) -> None:
    accepted = [accept(store) for _ in range(30)]
    wait_until_relayed(store)

    rabbit_node.stop_app()
    accepted += [accept(store) for _ in range(30)]  # the API keeps accepting
    time.sleep(0.5)  # the relay meets the dead broker and keeps trying
    assert len(store.pending_outbox()) == 30
    rabbit_node.start_app()
    accepted += [accept(store) for _ in range(30)]
    wait_until_relayed(store)

    events = read_all(rabbit_node_url, TAP)
    commands = read_all(rabbit_node_url, t.work_queue("sap-roads"))
    expected = [e.id for e in accepted]
    assert events == expected  # every one, none twice, in order
    assert commands == expected
    trail = store.audit_trail(accepted[45].subject)
    assert [e.action for e in trail] == ["relayed", "routed"]


def test_a_broker_restart_mid_stream_loses_nothing_and_keeps_each_requests_order(
    rabbit_node: RabbitNode, rabbit_node_url: str, store: Store, relay: Relay
) -> None:
    """Requests keep arriving while the broker stops and starts under the relay's feet.

    A batch in flight when the broker went away may have reached the queue without its confirm
    reaching the relay; it is published again (at-least-once; the worker's idempotent consumer
    absorbs the repeat). What must hold: nothing lost, and per request `created` before
    `status_changed`, since rows go out strictly in id order.
    """
    accepted: list[Envelope] = []
    stop = threading.Event()

    def residents() -> None:
        while not stop.is_set():
            created = accept(store)
            accepted.append(created)
            accepted.append(accept(store, EventType.STATUS_CHANGED, subject=created.subject))
            time.sleep(0.03)

    producer = threading.Thread(target=residents, daemon=True)
    producer.start()
    try:
        time.sleep(0.5)
        rabbit_node.stop_app()
        time.sleep(0.5)
        rabbit_node.start_app()
        time.sleep(0.5)
    finally:
        stop.set()
        producer.join(timeout=10)
    wait_until_relayed(store)

    events = read_all(rabbit_node_url, TAP)
    counts = Counter(events)
    assert set(counts) == {e.id for e in accepted}, "an accepted event was lost"
    first_seen = list(dict.fromkeys(events))
    assert first_seen == [e.id for e in accepted], "events overtook each other"
    assert max(counts.values()) <= 2  # a repeat is the one batch in flight, never a loop
    assert len(events) - len(counts) <= relay.settings.batch_size
