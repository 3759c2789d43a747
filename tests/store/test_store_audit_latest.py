"""An actor's latest audit entries and its unbroken runs of them, however many entries of
other actors came after: what `civicbus status` reads of the webhook workers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bus.store import AuditEntry, Store

#: More entries than `civicbus status` used to read back from the end of the log (10,000).
MANY = 12_000


def others(store: Store, count: int = MANY) -> None:
    """Entries of other actors, all in one transaction (chained at once: fast)."""
    with store.transaction() as tx:
        for i in range(count):
            tx.audit(actor="relay", action="relayed", message_id=f"m-{i}")


def entry(store: Store, actor: str, action: str, at: datetime | None = None) -> AuditEntry:
    with store.transaction() as tx:
        tx.audit(actor=actor, action=action, request_id="req-1", at=at)
    return store.audit_trail("req-1")[-1]


def test_each_actors_latest_entry_is_found_however_many_entries_came_after(
    store: Store,
) -> None:
    now = datetime.now(UTC)
    entry(store, "worker:sub.3", "delivered", at=now - timedelta(hours=1))  # too old: absent
    entry(store, "worker:sub.1", "delivered")
    failed = entry(store, "worker:sub.1", "attempt")
    entry(store, "worker:sub.1", "submitted")  # not an action asked for
    delivered = entry(store, "worker:sub.2", "delivered")
    others(store)

    latest = store.latest_audit(
        ["worker:sub.1", "worker:sub.2", "worker:sub.3", "worker:sub.4"],
        ["attempt", "delivered"],
        since=now - timedelta(minutes=10),
    )

    assert latest == {"worker:sub.1": failed, "worker:sub.2": delivered}
    assert store.latest_audit([], ["attempt"], since=now) == {}


def test_a_run_goes_back_to_the_entry_that_broke_it_however_far(store: Store) -> None:
    actor = "worker:sub.1"
    entry(store, actor, "attempt")
    entry(store, actor, "delivered")
    first = entry(store, actor, "attempt")
    others(store)
    entry(store, actor, "dead_lettered")  # breaks nothing: not the breaking action
    last = entry(store, actor, "attempt")

    run = store.audit_streak(last, broken_by="delivered", lookback=MANY * 2)
    cut = store.audit_streak(last, broken_by="delivered", lookback=MANY // 2)
    alone = store.audit_streak(first, broken_by="delivered", lookback=MANY * 2)

    assert (run.first, run.last, run.complete) == (first, last, True)
    assert (cut.first, cut.last, cut.complete) == (last, last, False)
    assert (alone.first, alone.complete) == (first, True)


def test_a_run_that_begins_with_the_log_is_whole(store: Store) -> None:
    first = entry(store, "worker:sub.1", "attempt")
    others(store, 10)
    last = entry(store, "worker:sub.1", "attempt")

    run = store.audit_streak(last, broken_by="delivered", lookback=MANY)

    assert (run.first, run.complete) == (first, True)
