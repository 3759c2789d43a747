"""Retention works a bounded batch per transaction: SQLite's one write lock is held briefly, so
the API keeps accepting while a big backlog goes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bus import retention
from bus.store import DeadLetterState, Store
from schemas.events import Envelope, EventType
from schemas.model import Status
from tests.store.store_factories import make_request


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    opened = Store.open(sqlite_url)
    yield opened
    opened.close()


@pytest.fixture
def deletes(store: Store) -> Iterator[list[str]]:
    """The DELETE statements the store runs, as they run."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            seen.append(statement.split(" WHERE ")[0])

    sa.event.listen(store._engine, "before_cursor_execute", note)
    yield seen
    sa.event.remove(store._engine, "before_cursor_execute", note)


def test_a_prune_deletes_a_batch_a_transaction_and_counts_them_all(
    store: Store, deletes: list[str]
) -> None:
    with store.transaction() as tx:
        for i in range(5):
            event = Envelope(type=EventType.CREATED, subject=f"r{i}", data={}, correlationid="c")
            tx.add_outbox(event, exchange="civicbus.events", routing_key="request.created")
    store.mark_sent([row.id for row in store.pending_outbox()])

    later = datetime.now(UTC)
    pruned = retention.prune(store, now=later, keep_sent=timedelta(0), batch_size=2)

    assert (pruned.outbox_events, pruned.idempotency_keys) == (5, 0)
    assert deletes == ["DELETE FROM outbox"] * 3
    assert store.sent_outbox(sent_before=later, limit=9) == []


def test_a_prune_deletes_resolved_dead_letters_a_batch_a_transaction(
    store: Store, deletes: list[str]
) -> None:
    with store.transaction() as tx:
        for i in range(6):
            tx.record_dead_letter(
                instance="roads", message_id=f"m{i}", reason="rejected", envelope=None
            )
        tx.drop_waiting_dead_letters("roads")

    pruned = retention.prune(
        store,
        now=datetime.now(UTC) + timedelta(days=2),
        keep_dead_letters=timedelta(days=1),
        batch_size=2,
    )

    assert pruned.dead_letters == 5  # the newest stays: SQLite would reuse its id
    assert deletes == ["DELETE FROM dead_letters"] * 3
    assert [
        letter.message_id for letter in store.dead_letters("roads", DeadLetterState.DROPPED)
    ] == ["m5"]


def test_forgetting_closed_requests_goes_a_batch_a_transaction_each_request_audited(
    store: Store, deletes: list[str]
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=100)
    with store.transaction() as tx:
        tx.add_requests(
            [
                make_request(
                    f"r{i}",
                    status=Status.CLOSED,
                    requested_at=long_ago,
                    updated_at=long_ago,
                    reporter={"email": f"resident{i}@example.org"},
                )
                for i in range(5)
            ]
        )

    count = retention.forget_closed(
        store, closed_before=long_ago + timedelta(days=10), batch_size=2
    )

    assert count == 5
    assert deletes == ["DELETE FROM reporters"] * 3
    for i in range(5):
        [entry] = store.audit_trail(f"r{i}")
        assert entry.action == "reporter_forgotten"
    assert store.verify_audit().entries == 5


def test_a_prune_stopped_midway_audits_what_it_deleted_before_it_stopped(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.transaction() as tx:
        for i in range(5):
            event = Envelope(type=EventType.CREATED, subject=f"r{i}", data={}, correlationid="c")
            tx.add_outbox(event, exchange="civicbus.events", routing_key="request.created")
    store.mark_sent([row.id for row in store.pending_outbox()])
    started = datetime.now(UTC)
    find = store.sent_outbox
    calls = 0

    def interrupted_at_the_third_batch(**kwargs: Any) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # the operator's Ctrl-C
        return find(**kwargs)

    monkeypatch.setattr(store, "sent_outbox", interrupted_at_the_third_batch)

    with pytest.raises(KeyboardInterrupt):
        retention.prune(store, now=datetime.now(UTC), keep_sent=timedelta(0), batch_size=2)

    assert len(find(sent_before=datetime.now(UTC), limit=9)) == 1  # four went
    entry = store.latest_audit([retention.PRUNE_ACTOR], ["pruned"], since=started)
    assert retention.PRUNE_ACTOR in entry, "rows were deleted without an audit entry"
    pruned = entry[retention.PRUNE_ACTOR]
    assert pruned.outcome == "error"
    assert pruned.details["outbox_events"] == 4
    assert pruned.details["stopped_by"] == "KeyboardInterrupt"
