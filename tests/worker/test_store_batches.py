"""The store's batch helpers the worker's group commit uses, on SQLite and PostgreSQL: requests
read together, locked with those changed since read, and cross-references recorded together
with which of them were new."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bus.store import InvalidData, Store
from schemas.events import Envelope, EventType
from schemas.model import Location, Reporter, ServiceRequest, Status, StatusUpdate

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def stored(store: Store, *ids: str) -> None:
    with store.transaction() as tx:
        tx.add_requests(
            [
                ServiceRequest(
                    id=request_id,
                    jurisdiction="springfield",
                    service_code="pothole",
                    service_name="Pothole",
                    location=Location(lat=52.5, long=13.4),
                    reporter=Reporter(email=f"{request_id}@example.org"),
                    requested_at=T0,
                    updated_at=T0,
                )
                for request_id in ids
            ]
        )


def test_requests_read_together_are_whole_and_unknown_ids_are_absent(store: Store) -> None:
    stored(store, "a", "b")
    with store.transaction() as tx:
        tx.add_backend_ref("a", "roads", "WO-1", T0)
    store_update = StatusUpdate(
        request_id="b", status=Status.IN_PROGRESS, at=T0, source="t", update_id="u-1"
    )
    with store.transaction() as tx:
        tx.apply_status_update(store_update)

    request_a = store.get_request("a")
    assert request_a is not None
    with store.transaction() as tx:  # no contact data at all: no reporter row
        tx.add_request(request_a.model_copy(update={"id": "anon", "reporter": Reporter()}))

    found = store.get_requests(["a", "b", "ghost", "a", "anon"])

    assert set(found) == {"a", "b", "anon"}
    assert found["a"] == store.get_request("a")
    assert found["b"] == store.get_request("b")
    assert found["anon"] == store.get_request("anon")
    assert found["anon"].reporter == Reporter()
    assert found["a"].reporter.email == "a@example.org"
    assert [r.reference for r in found["a"].backend_refs] == ["WO-1"]
    assert found["b"].status is Status.IN_PROGRESS
    assert store.get_requests([]) == {}


def update(request_id: str, status: Status, at: datetime, update_id: str) -> StatusUpdate:
    return StatusUpdate(
        request_id=request_id, status=status, at=at, source="roads", update_id=update_id
    )


def test_requests_locked_together_are_given_again_when_changed_since_read(store: Store) -> None:
    stored(store, "a", "b", "c", "d")
    with store.transaction() as tx:
        tx.apply_status_update(update("b", Status.IN_PROGRESS, T0 + timedelta(hours=2), "b-1"))
    read = store.get_requests(["a", "b", "c", "d"])
    with store.transaction() as tx:
        tx.apply_status_update(update("a", Status.IN_PROGRESS, T0 + timedelta(hours=1), "a-1"))
        # Older than b's status: its history only, the row itself unchanged.
        tx.apply_status_update(update("b", Status.FOR_TRIAGE, T0 + timedelta(hours=1), "b-2"))
        tx.add_backend_ref("c", "email", "MSG-1", T0)

    with store.transaction() as tx:
        changed = tx.changed_requests(read)

    assert changed == {i: store.get_request(i) for i in "abc"}
    with store.transaction() as tx:
        assert tx.changed_requests(store.get_requests(["a", "b", "c", "d"])) == {}
        assert tx.changed_requests({}) == {}


def test_a_status_update_waits_for_the_transaction_holding_the_requests(store: Store) -> None:
    stored(store, "a")
    updated = threading.Event()

    def push() -> None:
        with store.transaction() as tx:
            tx.apply_status_update(update("a", Status.IN_PROGRESS, T0, "a-1"))
        updated.set()

    with store.transaction() as tx:
        assert tx.changed_requests(store.get_requests(["a"])) == {}
        pusher = threading.Thread(target=push)
        pusher.start()
        assert not updated.wait(0.5)
    pusher.join(timeout=10)
    assert updated.is_set()
    assert store.get_request("a").status is Status.IN_PROGRESS  # type: ignore[union-attr]


def test_backend_refs_recorded_together_say_which_were_new(store: Store) -> None:
    stored(store, "a", "b", "c")
    with store.transaction() as tx:
        tx.add_backend_ref("b", "roads", "WO-OLD", T0)

    berlin = timezone(timedelta(hours=2))
    with store.transaction() as tx:
        new = tx.add_backend_refs(
            "roads",
            [
                ("a", "WO-1", T0),
                ("b", "WO-2", T0),  # known: the first reference is kept
                ("c", "WO-3", datetime(2026, 3, 1, 15, 0, tzinfo=berlin)),
                ("a", "WO-9", T0),  # a second copy in the same batch: the first one counts
            ],
        )

    assert new == {"a", "c"}
    refs = {i: store.get_request(i).backend_refs for i in "abc"}  # type: ignore[union-attr]
    assert [(r.adapter, r.reference) for r in refs["a"]] == [("roads", "WO-1")]
    assert [r.reference for r in refs["b"]] == ["WO-OLD"]
    assert refs["c"][0].submitted_at == datetime(2026, 3, 1, 13, 0, tzinfo=UTC)


def test_backend_refs_of_another_adapter_are_independent(store: Store) -> None:
    stored(store, "a")
    with store.transaction() as tx:
        assert tx.add_backend_refs("roads", [("a", "WO-1", T0)]) == {"a"}
    with store.transaction() as tx:
        assert tx.add_backend_refs("email", [("a", "MSG-1", T0)]) == {"a"}
        assert tx.add_backend_refs("roads", [("a", "WO-1", T0)]) == set()
        assert tx.add_backend_refs("roads", []) == set()
    request = store.get_request("a")
    assert request is not None
    assert sorted((r.adapter, r.reference) for r in request.backend_refs) == [
        ("email", "MSG-1"),
        ("roads", "WO-1"),
    ]


def test_a_new_backend_ref_is_a_change_to_its_request_and_a_known_one_is_not(
    store: Store,
) -> None:
    stored(store, "a", "b", "c")
    with store.transaction() as tx:
        tx.add_backend_refs("roads", [("b", "WO-OLD", T0)], changed_at=T0 + timedelta(hours=1))
    before = store.get_requests(["a", "b", "c"])
    handed_over = T0 + timedelta(hours=2)
    with store.transaction() as tx:
        new = tx.add_backend_refs(
            "roads", [("a", "WO-1", T0), ("b", "WO-2", T0)], changed_at=handed_over
        )

    after = store.get_requests(["a", "b", "c"])
    assert new == {"a"}
    assert after["a"].changed_at == handed_over  # Open311's updated_datetime moves with it
    assert after["b"].changed_at == before["b"].changed_at == T0 + timedelta(hours=1)
    assert after["c"].changed_at == before["c"].changed_at


def test_a_batch_of_refs_that_fails_writes_none(store: Store) -> None:
    stored(store, "a", "b")
    with pytest.raises(InvalidData), store.transaction() as tx:
        tx.add_backend_refs("roads", [("a", "WO-1", T0), ("b", "WO-2", datetime(2026, 3, 1))])
    assert store.get_requests(["a", "b"])["a"].backend_refs == ()


def test_pending_outbox_messages_carry_the_stored_json_as_their_body(store: Store) -> None:
    stored(store, "a")
    envelope = Envelope(
        type=EventType.CREATED,
        subject="a",
        data={"id": "a", "description": "Ünïcode pothole", "reporter": {"email": "x@example.org"}},
        correlationid="a",
    )
    with store.transaction() as tx:
        tx.add_outbox(envelope, exchange="civicbus.events", routing_key="request.created.pothole")
        tx.add_outbox(envelope, exchange="civicbus.commands", routing_key="roads")

    messages = store.pending_outbox_messages()
    rows = store.pending_outbox()

    assert [m.id for m in messages] == [r.id for r in rows]
    assert [m.envelope for m in messages] == [r.envelope for r in rows]
    assert [(m.exchange, m.routing_key) for m in messages] == [
        ("civicbus.events", "request.created.pothole"),
        ("civicbus.commands", "roads"),
    ]
    assert Envelope.model_validate_json(messages[0].body) == rows[0].envelope
    assert b"x@example.org" not in messages[0].body  # reporter contact emptied when stored
    store.mark_sent([messages[0].id])
    assert [m.id for m in store.pending_outbox_messages(limit=5)] == [messages[1].id]
