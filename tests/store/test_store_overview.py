"""The store's figures behind `civicbus status`: outbox backlog, leases, waiting dead letters."""

from __future__ import annotations

import pytest
from store_factories import T0, minutes

from bus.store import DeadLetterState, Store, _broker_blocks
from schemas.events import Envelope, EventType


def test_the_overview_counts_what_waits_and_names_the_lease_holders(store: Store) -> None:
    empty = store.overview()
    assert (empty.outbox_waiting, empty.oldest_waiting, empty.leases, empty.dead_letters) == (
        0,
        None,
        {},
        {},
    )
    with store.transaction() as tx:
        for n in range(3):
            envelope = Envelope(
                type=EventType.CREATED, subject=f"r-{n}", data={}, correlationid="c"
            )
            tx.add_outbox(envelope, exchange="civicbus.events", routing_key="request.created.X")
        for n, instance in enumerate(["sap-roads", "sap-roads", "permits", "permits"]):
            tx.record_dead_letter(
                instance=instance,
                message_id=f"m-{n}",
                request_id=f"r-{n}",
                reason="PermanentError: rejected",
                envelope=None,
                attempts=1,
                at=T0 + minutes(n),
            )
    first_sent = store.pending_outbox()[0]
    store.mark_sent([first_sent.id])
    permits_letter = store.dead_letters("permits")[0]
    with store.transaction() as tx:
        tx.set_dead_letter_state(permits_letter.id, DeadLetterState.DROPPED)
    assert store.try_lease("relay", "host-a:1", ttl_seconds=30)

    seen = store.overview()

    assert seen.outbox_waiting == 2
    assert seen.oldest_waiting is not None and seen.oldest_waiting >= first_sent.created_at
    assert list(seen.leases) == ["relay"] and seen.leases["relay"].holder == "host-a:1"
    assert seen.dead_letters == {"sap-roads": 2, "permits": 1}


def test_declared_instances_are_remembered_once_each_and_shown_in_the_overview(
    store: Store,
) -> None:
    assert store.declared_instances() == [] and store.overview().declared_instances == []
    with store.transaction() as tx:
        tx.remember_declared_instances(["sap-roads", "permits"])
    # A relay with a later config: one instance gone from it, one new; none is forgotten.
    with store.transaction() as tx:
        tx.remember_declared_instances(["permits", "parks"])

    assert store.declared_instances() == ["parks", "permits", "sap-roads"]
    assert store.overview().declared_instances == ["parks", "permits", "sap-roads"]


def test_a_blocked_publisher_is_in_the_overview_until_its_holder_says_it_publishes_again(
    store: Store,
) -> None:
    assert store.overview().broker_blocks == {}
    with store.transaction() as tx:
        tx.broker_blocked("relay", "host-a:1", T0, "low on disk")
    # Said again while it lasts: the same episode, seen later.
    with store.transaction() as tx:
        tx.broker_blocked("relay", "host-a:1", T0, "low on disk")

    [block] = store.overview().broker_blocks.values()
    assert (block.publisher, block.holder, block.blocked_since, block.reason) == (
        "relay",
        "host-a:1",
        T0,
        "low on disk",
    )
    assert block.seen_at > T0

    with store.transaction() as tx:  # another process's word does not clear it
        tx.broker_unblocked("relay", "host-b:2")
    assert list(store.overview().broker_blocks) == ["relay"]
    with store.transaction() as tx:
        tx.broker_unblocked("relay", "host-a:1")
    assert store.overview().broker_blocks == {}


def test_blocks_not_said_again_since_before_the_time_are_pruned(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def said_at(moment: object) -> None:
        monkeypatch.setattr(_broker_blocks, "utcnow", lambda: moment)

    said_at(T0)  # a worker killed while the broker blocked it: never said again
    with store.transaction() as tx:
        tx.broker_blocked("worker:host-a:4242", "w-1", T0, "low on disk")
    said_at(T0 + minutes(2))  # exactly at the bound: still believed
    with store.transaction() as tx:
        tx.broker_blocked("worker:host-b:4343", "w-2", T0, "low on disk")
    said_at(T0 + minutes(5))  # the relay, blocked too, says so again
    with store.transaction() as tx:
        tx.broker_blocked("relay", "host-a:1", T0, "low on disk")

    with store.transaction() as tx:
        pruned = tx.prune_broker_blocks(T0 + minutes(2))
    assert pruned == 1
    assert list(store.overview().broker_blocks) == ["relay", "worker:host-b:4343"]
    with store.transaction() as tx:
        assert tx.prune_broker_blocks(T0 + minutes(2)) == 0
