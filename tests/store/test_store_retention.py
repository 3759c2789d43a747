"""Retention in the store: sent outbox rows, idempotency keys and reporter contact data go,
found a batch at a time and removed only while they still qualify."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from store_factories import T0, make_request, minutes

from bus.store import Store
from bus.store._tables import idempotency_keys, outbox
from schemas.events import Envelope, EventType
from schemas.model import BackendRef, Reporter, ServiceRequest, Status, StatusNote, StatusUpdate

CONTACT = {"email": "ann@example.org", "phone": "555 123 4567", "account_id": "acct-9"}


def now() -> datetime:
    return datetime.now(UTC)


def queue_events(store: Store, count: int) -> list[int]:
    with store.transaction() as tx:
        for i in range(count):
            event = Envelope(type=EventType.CREATED, subject=f"r{i}", data={}, correlationid="c")
            tx.add_outbox(event, exchange="civicbus.events", routing_key="request.created")
    return [row.id for row in store.pending_outbox()]


def backdate(
    store: Store, column: sa.Column[datetime], days: int, where: sa.ColumnElement[bool]
) -> None:
    """Set `column` to `days` ago on the rows `where` selects (the store stamps them now)."""
    with store._engine.begin() as conn:
        conn.execute(
            column.table.update().where(where).values({column.name: now() - timedelta(days=days)})
        )


def test_sent_outbox_rows_published_before_the_cutoff_go_and_waiting_ones_never(
    store: Store,
) -> None:
    ids = queue_events(store, 5)
    store.mark_sent(ids[:3])
    backdate(store, outbox.c.sent_at, 8, outbox.c.id.in_(ids[:2]))
    # A row stuck for ten days, never published: the relay still owes it to the broker.
    backdate(store, outbox.c.created_at, 10, outbox.c.id == ids[4])

    week_ago = now() - timedelta(days=7)
    found = store.sent_outbox(sent_before=week_ago, limit=100)
    with store.transaction() as tx:
        deleted = tx.delete_sent_outbox(found, sent_before=week_ago)
        # Named by id, a row published since the cutoff or not at all stays.
        kept = tx.delete_sent_outbox(ids[2:], sent_before=week_ago)

    assert found == ids[:2] and deleted == 2 and kept == 0
    assert [row.id for row in store.pending_outbox()] == ids[3:]
    assert store.sent_outbox(sent_before=now(), limit=100) == [ids[2]]


def test_sent_outbox_rows_are_found_a_page_at_a_time_in_id_order(store: Store) -> None:
    ids = queue_events(store, 5)
    store.mark_sent(ids)
    later = now()

    first = store.sent_outbox(sent_before=later, limit=2)
    second = store.sent_outbox(sent_before=later, after=first[-1], limit=2)
    last = store.sent_outbox(sent_before=later, after=second[-1], limit=2)

    assert (first, second, last) == (ids[:2], ids[2:4], ids[4:])


def test_idempotency_keys_of_a_prefix_stored_before_the_cutoff_go(store: Store) -> None:
    one, _ = store.add_client("one")
    two, _ = store.add_client("two")
    with store.transaction() as tx:
        for client in (one, two):
            for key in ("header:a", "header:b", "header:new", "external_id:x", "headerless"):
                tx.save_idempotent_response(client.id, key, {"answer": [{"key": key}]})
    backdate(store, idempotency_keys.c.created_at, 31, idempotency_keys.c.key != "header:new")
    cutoff = now() - timedelta(days=30)

    first = store.idempotency_keys_before(created_before=cutoff, prefix="header:", limit=3)
    rest = store.idempotency_keys_before(
        created_before=cutoff, prefix="header:", after=first[-1], limit=3
    )
    with store.transaction() as tx:
        deleted = tx.delete_idempotency_keys([*first, *rest], created_before=cutoff)
        kept = tx.delete_idempotency_keys([(one.id, "header:new")], created_before=cutoff)

    old = [(c.id, k) for c in (one, two) for k in ("header:a", "header:b")]
    assert first + rest == sorted(old) and len(first) == 3
    assert deleted == 4 and kept == 0
    assert store.idempotent_response(one.id, "header:a") is None
    for client in (one, two):
        for key in ("header:new", "external_id:x", "headerless"):
            assert store.idempotent_response(client.id, key) == {"answer": [{"key": key}]}


def test_a_prefix_with_like_wildcards_matches_only_itself(store: Store) -> None:
    client, _ = store.add_client("one")
    with store.transaction() as tx:
        tx.save_idempotent_response(client.id, "a_b:1", {})
        tx.save_idempotent_response(client.id, "axb:1", {})
    later = now()

    assert store.idempotency_keys_before(created_before=later, prefix="a_b:", limit=9) == [
        (client.id, "a_b:1")
    ]


def closed(
    request_id: str, *, days_ago: float, status: Status = Status.CLOSED, **fields: object
) -> ServiceRequest:
    at = T0 - timedelta(days=days_ago)
    return make_request(
        request_id, status=status, requested_at=at - minutes(60), updated_at=at, **fields
    )


def seed_requests(store: Store) -> None:
    history = (StatusNote(status=Status.OPEN, at=T0 - timedelta(days=200), source="api"),)
    ref = BackendRef(adapter="sap-roads", reference="N-1", submitted_at=T0 - timedelta(days=199))
    with store.transaction() as tx:
        tx.add_requests(
            [
                closed(
                    "old-closed",
                    days_ago=120,
                    reporter=CONTACT,
                    history=history,
                    backend_refs=(ref,),
                ),
                closed("old-fixed", days_ago=100, status=Status.FIXED, reporter=CONTACT),
                closed("old-anonymous", days_ago=120),
                closed("old-open", days_ago=120, status=Status.IN_PROGRESS, reporter=CONTACT),
                closed("recent-closed", days_ago=10, reporter=CONTACT),
            ]
        )
        tx.audit(actor="api:app", action="accepted", request_id="old-closed")


def test_closed_requests_last_updated_before_the_cutoff_lose_their_reporter_only(
    store: Store,
) -> None:
    seed_requests(store)
    cutoff = T0 - timedelta(days=90)
    before = store.get_request("old-closed")

    found = store.closed_with_reporter(closed_before=cutoff, limit=1)
    found += store.closed_with_reporter(closed_before=cutoff, after=found[-1], limit=9)
    with store.transaction() as tx:
        forgotten = tx.forget_reporters(found, closed_before=cutoff)
        tx.audit(actor="cli:test", action="reporter_forgotten", request_id="old-closed")

    assert found == forgotten == ["old-closed", "old-fixed"]
    after = store.get_request("old-closed")
    assert before is not None and after is not None
    assert after.reporter == Reporter()
    assert after == before.model_copy(update={"reporter": Reporter()})
    assert store.get_requests(["old-fixed"])["old-fixed"].reporter == Reporter()
    for kept in ("old-open", "recent-closed"):
        request = store.get_request(kept)
        assert request is not None and request.reporter == Reporter.model_validate(CONTACT)
    assert store.closed_with_reporter(closed_before=cutoff, limit=9) == []
    verified = store.verify_audit()
    assert verified.ok and verified.entries == 2


def test_a_request_reopened_after_it_was_found_keeps_its_reporter(store: Store) -> None:
    seed_requests(store)
    cutoff = T0 - timedelta(days=90)
    found = store.closed_with_reporter(closed_before=cutoff, limit=9)
    reopen = StatusUpdate(
        request_id="old-closed", status=Status.REOPEN, at=T0, update_id="u-reopen", source="api"
    )
    with store.transaction() as tx:
        tx.apply_status_update(reopen)

    with store.transaction() as tx:
        forgotten = tx.forget_reporters(found, closed_before=cutoff)

    assert forgotten == ["old-fixed"]
    request = store.get_request("old-closed")
    assert request is not None and request.reporter.email == CONTACT["email"]


def test_a_reporter_is_forgotten_on_request_whatever_the_status(store: Store) -> None:
    seed_requests(store)

    with store.transaction() as tx:
        forgotten = tx.forget_reporters(["old-open", "old-anonymous", "unknown"])

    assert forgotten == ["old-open"]
    request = store.get_request("old-open")
    assert request is not None and request.reporter == Reporter()
    assert request.status is Status.IN_PROGRESS
