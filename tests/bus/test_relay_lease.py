"""The relay lease: a relay publishes only while it holds the lease, and one that loses it in
the middle of a cycle sends no further batch, leaving what it has not seen confirmed to the
relay that holds it now (which publishes it again: at least once)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from bus.config import Config
from bus.relay import LeaseLost, Relay, RelaySettings
from bus.store import Store
from tests.bus.test_relay_store_failure import accept as accept_envelopes

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]

TTL = 0.6
STANDBY = "the-standby"


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    store = Store.open(sqlite_url)
    yield store
    store.close()


def accept(store: Store, count: int) -> list[str]:
    """`count` status events in the outbox (one message a row); their ids."""
    return [envelope.id for envelope in accept_envelopes(store, count)]


def received(channel: Any) -> list[str]:
    """Every message id on the tap, once the broker has had a moment to route what came."""
    time.sleep(0.3)
    ids: list[str] = []
    while True:
        method, properties, _ = channel.basic_get("test.events", auto_ack=True)
        if method is None:
            return ids
        ids.append(properties.message_id)


def stall_before_first_settle(relay: Relay, store: Store) -> None:
    """The relay stalls after sending its first two batches (pipelined), for longer than its
    lease lasts; meanwhile the standby takes the lease, as it may once it ran out."""
    settle = relay._settle
    stalled: list[bool] = []

    def settle_after_a_stall(batch: Any) -> int:
        if not stalled:
            stalled.append(True)
            time.sleep(TTL * 1.3)
            assert store.try_lease("relay", STANDBY, 60)
        return settle(batch)

    relay._settle = settle_after_a_stall  # type: ignore[method-assign]


def test_a_relay_whose_lease_ran_out_between_batches_sends_no_further_batch(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    ids = accept(store, 20)
    relay = Relay(store, config, amqp_url, settings=RelaySettings(batch_size=5, lease_ttl=TTL))
    stall_before_first_settle(relay, store)

    with capture_logs() as logs, pytest.raises(LeaseLost):
        relay.relay_pending()

    # Rows 1-10 went out while the relay held the lease; after the stall, nothing more did.
    assert received(channel) == ids[:10]
    # The first batch was confirmed and marked; the second is the holder's to publish now.
    assert [r.envelope.id for r in store.pending_outbox()] == ids[5:]
    assert [e["holder"] for e in logs if e["event"] == "relay.lease_lost"] == [
        relay.settings.holder
    ]
    with pytest.raises(LeaseLost):
        relay.relay_pending()  # the standby holds the lease now: the relay stands by
    assert received(channel) == []
    relay._disconnect()


def confirms_come_late(relay: Relay) -> None:
    """The broker's confirms of a batch come only once the relay waits for them, as from a busy
    broker: the relay's quick look at its connection right after sending a batch finds none."""
    relay._ensure_connected()
    connection = relay._connection
    look = connection.process_data_events

    def look_only_when_waiting(time_limit: float = 0) -> None:
        if time_limit:
            look(time_limit=time_limit)

    connection.process_data_events = look_only_when_waiting


def test_a_relay_that_loses_its_lease_while_its_last_batch_awaits_its_confirms_ends_the_cycle(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    # Two full batches, pipelined: the lease runs out while the first awaits its confirms and
    # the second is on its way; no third follows. Both were published while the lease was
    # held, so their confirms still count.
    batch = 50
    ids = accept(store, 2 * batch)
    relay = Relay(store, config, amqp_url, settings=RelaySettings(batch_size=batch, lease_ttl=TTL))
    confirms_come_late(relay)
    stall_before_first_settle(relay, store)

    with capture_logs() as logs:
        relay._cycle()  # one turn of the relay loop: it neither raises nor stops the loop

    assert store.pending_outbox() == []
    assert received(channel) == ids
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["relay.lease_lost"]

    accept(store, 3)
    relay._cycle()  # the standby holds the lease: this relay stands by
    assert len(store.pending_outbox()) == 3
    assert received(channel) == []
    relay._disconnect()
