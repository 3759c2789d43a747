"""Two relays share a store; the broker goes away for longer than their lease lasts, so the lease
changes hands while they wait for it. Whoever holds the lease when the broker is back relays,
the other stands by: every row reaches the queue once, none twice, in order.

Uses the private RabbitMQ node of tests/faults/conftest.py and a real SQLite store.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs

from bus.broker import topology as t
from bus.config import Config
from bus.relay import RelaySettings
from bus.store import Store
from schemas.events import Envelope, EventType
from tests.faults.relay_support import (
    TAP,
    declare_with_tap,
    read_all,
    running_relay,
    wait_until_relayed,
)

if TYPE_CHECKING:
    from tests.faults.conftest import RabbitNode

pytestmark = pytest.mark.timeout(90)

TTL = 1.0


def settings(holder: str) -> RelaySettings:
    return RelaySettings(
        batch_size=250, poll_interval=0.02, lease_ttl=TTL, max_backoff=0.2, holder=holder
    )


def accept(store: Store, count: int) -> list[str]:
    """`count` status events written to the outbox in one go (as many requests' updates)."""
    envelopes = []
    with store.transaction() as tx:
        for _ in range(count):
            subject = uuid.uuid4().hex
            envelope = Envelope(
                type=EventType.STATUS_CHANGED,
                subject=subject,
                data={"id": subject},
                correlationid=f"corr-{subject}",
            )
            tx.add_outbox(
                envelope,
                exchange=t.EVENTS_EXCHANGE,
                routing_key=t.event_routing_key(EventType.STATUS_CHANGED, "in_progress"),
            )
            envelopes.append(envelope.id)
    return envelopes


def test_the_lease_changes_hands_during_a_broker_outage_and_each_row_is_published_once(
    rabbit_node: RabbitNode, rabbit_node_url: str, store: Store, config: Config
) -> None:
    declare_with_tap(rabbit_node_url, config)
    url = rabbit_node_url
    with capture_logs() as logs, running_relay(store, config, url, settings("relay-a")):
        accepted = accept(store, 100)
        wait_until_relayed(store)  # relay-a is active, and idle
        with running_relay(store, config, url, settings("relay-b")):
            rabbit_node.stop_app()
            accepted += accept(store, 3000)  # the API keeps accepting
            time.sleep(3 * TTL)  # longer than the lease lasts: it changes hands
            rabbit_node.start_app()
            accepted += accept(store, 100)
            wait_until_relayed(store)
            time.sleep(0.5)  # a relay publishing what the other did would be at it now

    events = read_all(url, TAP)
    repeated = {message_id: n for message_id, n in Counter(events).items() if n > 1}
    assert len(repeated) == 0, f"{len(repeated)} messages published twice or more"
    assert events == accepted  # every one, once, in order
    active = [e["holder"] for e in logs if e["event"] == "relay.active"]
    assert active[0] == "relay-a" and "relay-b" in active  # the lease changed hands
