"""A confirmed batch the store cannot mark is published again, in order, with nothing lost and
no row marked sent without having been confirmed."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from structlog.testing import capture_logs

from bus.broker import topology as t
from bus.config import Config
from bus.relay import Relay, RelaySettings
from bus.store import Store, StoreUnavailable
from schemas.events import Envelope, EventType
from tests.sqlite_lock import hold_write_lock

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]


def accept(store: Store, count: int) -> list[Envelope]:
    """`count` status events in the outbox (not routed: one message per row)."""
    envelopes = [
        Envelope(
            type=EventType.STATUS_CHANGED,
            subject=uuid.uuid4().hex,
            data={"status": "closed"},
            correlationid=f"corr-{i}",
        )
        for i in range(count)
    ]
    with store.transaction() as tx:
        for envelope in envelopes:
            tx.add_outbox(envelope, exchange=t.EVENTS_EXCHANGE, routing_key="request.fixed")
    return envelopes


def received(channel: Any, expected: int, timeout: float = 10.0) -> list[str]:
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    while len(ids) < expected and time.monotonic() < deadline:
        method, properties, _ = channel.basic_get("test.events", auto_ack=True)
        if method is None:
            time.sleep(0.02)
        else:
            ids.append(properties.message_id)
    return ids


def test_a_batch_that_cannot_be_marked_goes_out_again_in_order(
    sqlite_url: str, amqp_url: str, config: Config, channel: Any
) -> None:
    store = Store.open(sqlite_url + "?timeout=3")  # the marking gives up after 3 s
    release = threading.Event()
    try:
        relay = Relay(store, config, amqp_url, settings=RelaySettings(batch_size=2))
        assert relay.relay_pending() == 0  # the relay holds the lease before the store locks up
        envelopes = accept(store, 4)
        ids = [e.id for e in envelopes]
        holder = hold_write_lock(sqlite_url, until=release)
        with pytest.raises(StoreUnavailable):
            # Rows 1-2 published, then 3-4 while 1-2 are confirmed; marking 1-2 waits, then fails.
            relay.relay_pending()
        release.set()
        holder.join()
        assert [r.envelope.id for r in store.pending_outbox()] == ids

        while relay.relay_pending():
            pass

        assert store.pending_outbox() == []
        # Never lost, never reordered: the unmarked batches go out again from the first row on
        # (the one behind the failed one was on its way already, so it comes twice as well).
        assert received(channel, 8) == ids + ids
        for envelope in envelopes:
            assert [e.action for e in store.audit_trail(envelope.subject)] == ["relayed"]
        relay._disconnect()
    finally:
        release.set()
        store.close()


class _StoreDown:
    """A store that cannot be reached (every call raises StoreUnavailable)."""

    def __getattr__(self, name: str) -> Any:
        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("the store cannot be reached")

        return unavailable


def test_the_relay_asks_a_failing_store_again_every_2_s_at_most_however_long_it_failed(
    config: Config,
) -> None:
    # The broker's 15 s backoff cap would leave a long store outage followed by up to 15 s of
    # idling once the store is back; asking the store again costs one query.
    relay = Relay(_StoreDown(), config, "amqp://unused")  # type: ignore[arg-type]
    relay.stop.set()  # the waits return at once; the waits asked for are logged
    with capture_logs() as logs:
        for _ in range(12):
            relay._cycle()

    waits = [entry["wait_s"] for entry in logs if entry["event"] == "relay.store_failed"]
    assert len(waits) == 12
    assert waits[:3] == [0.2, 0.4, 0.8] and max(waits) == RelaySettings().store_max_backoff == 2.0
