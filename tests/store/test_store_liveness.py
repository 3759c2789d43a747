"""Workers' heartbeats in the store: reported, replaced, forgotten on a clean stop, pruned once
long silent, read back as `civicbus status` reads them."""

from __future__ import annotations

from dataclasses import replace

from store_factories import T0, minutes

from bus.store import Store, WorkerLiveness

ROADS = WorkerLiveness("w-1", "roads", "host-a", 4242, T0, T0)


def test_a_heartbeat_is_reported_and_replaced_by_the_next(store: Store) -> None:
    busy = replace(
        ROADS,
        heartbeat_at=T0 + minutes(1),
        message_id="m-1",
        request_id="req-1",
        working_since=T0 + minutes(0.5),
    )
    other_queue = replace(ROADS, recipient="sub.3")
    with store.transaction() as tx:
        tx.report_workers([ROADS, other_queue])
    with store.transaction() as tx:
        tx.report_workers([busy])

    assert store.workers() == [busy, other_queue]
    assert store.overview().workers == [busy, other_queue]
    assert busy.name == "host-a:4242"

    idle = replace(ROADS, heartbeat_at=T0 + minutes(2))  # the message done, none in hand
    with store.transaction() as tx:
        tx.report_workers([idle])
    assert store.workers() == [idle, other_queue]


def test_a_worker_stopping_cleanly_forgets_its_heartbeats_only(store: Store) -> None:
    another = replace(ROADS, worker_id="w-2", pid=4343)
    with store.transaction() as tx:
        tx.report_workers([ROADS, replace(ROADS, recipient="sub.3"), another])
    with store.transaction() as tx:
        tx.forget_worker("w-1")

    assert store.workers() == [another]


def test_heartbeats_silent_since_before_the_time_are_pruned(store: Store) -> None:
    recent = replace(ROADS, worker_id="w-2", heartbeat_at=T0 + minutes(90))
    with store.transaction() as tx:
        tx.report_workers([ROADS, recent])
    with store.transaction() as tx:
        pruned = tx.prune_workers(T0 + minutes(60))

    assert pruned == 1
    assert store.workers() == [recent]
