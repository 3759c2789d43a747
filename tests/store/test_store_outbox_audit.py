"""The outbox and the audit chain, and the all-or-nothing unit of work that writes them."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from store_factories import make_request

from bus.store import Store, _audit
from schemas.events import Envelope, EventType


def envelope(request_id: str, kind: EventType = EventType.CREATED) -> Envelope:
    request = make_request(request_id)
    return Envelope(
        type=kind,
        subject=request_id,
        data=request.model_dump(mode="json"),
        correlationid=f"corr-{request_id}",
    )


def accept(store: Store, request_id: str) -> Envelope:
    event = envelope(request_id)
    with store.transaction() as tx:
        tx.add_request(make_request(request_id))
        tx.add_outbox(event, exchange="civicbus.events", routing_key="request.created.pothole")
        tx.audit(actor="api:app", action="accepted", request_id=request_id, message_id=event.id)
    return event


def test_outbox_rows_come_back_in_insertion_order_until_marked_sent(store: Store) -> None:
    events = [accept(store, f"r{i}") for i in range(5)]

    pending = store.pending_outbox()
    assert [row.envelope for row in pending] == events
    assert [row.id for row in pending] == sorted(row.id for row in pending)
    assert pending[0].exchange == "civicbus.events"
    assert store.pending_outbox(limit=2) == pending[:2]

    store.mark_sent([pending[0].id, pending[1].id])
    with store.transaction() as tx:
        tx.mark_sent([pending[2].id])
        tx.audit(actor="relay", action="relayed", request_id="r2")
    assert [row.id for row in store.pending_outbox()] == [r.id for r in pending[3:]]


def test_outbox_never_keeps_reporter_contact_data(store: Store) -> None:
    request = make_request("r", reporter={"email": "ann@example.org", "phone": "555 123 4567"})
    event = Envelope(
        type=EventType.CREATED, subject="r", data=request.model_dump(mode="json"), correlationid="c"
    )
    with store.transaction() as tx:
        tx.add_outbox(event, exchange="civicbus.events", routing_key="request.created")
    (row,) = store.pending_outbox()
    assert set(row.envelope.data["reporter"].values()) == {None}
    assert "ann@example.org" not in row.envelope.model_dump_json()


def test_a_transaction_that_raises_leaves_nothing_behind(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.add_request(make_request("r"), token="t")
        tx.add_outbox(envelope("r"), exchange="e", routing_key="k")
        tx.audit(actor="api:app", action="accepted", request_id="r")
        raise RuntimeError("boom")

    assert store.get_request("r") is None
    assert store.resolve_token("t") is None
    assert store.pending_outbox() == []
    assert store.audit_trail("r") == []
    assert store.verify_audit().entries == 0


def test_audit_trail_is_oldest_first_and_redacted(store: Store) -> None:
    accept(store, "r")
    with store.transaction() as tx:
        tx.audit(
            actor="worker:sap",
            action="submitted",
            request_id="r",
            outcome="ok",
            details={
                "reporter": {"email": "a@b.org"},
                "note": "mail ann@example.org",
                "attempt": 2,
            },
        )
        tx.audit(actor="relay", action="relayed", request_id="other")

    trail = store.audit_trail("r")
    assert [e.action for e in trail] == ["accepted", "submitted"]
    assert trail[1].details == {
        "reporter": "[redacted]",
        "note": "mail [redacted-email]",
        "attempt": 2,
    }
    assert trail[1].prev_hash != trail[0].prev_hash
    assert trail[0].at <= trail[1].at


def test_a_trail_is_in_the_order_the_hops_happened_not_the_order_they_were_committed(
    store: Store,
) -> None:
    # A worker may commit its `submitted` entry before the relay commits the `routed` hop that
    # preceded it (the relay waits for the broker's confirms first); each says when it happened.
    published = datetime(2026, 12, 7, 6, 0, 0, 100, tzinfo=UTC)
    answered = datetime(2026, 12, 7, 6, 0, 0, 900, tzinfo=UTC)
    with store.transaction() as tx:
        tx.audit(actor="worker:sap", action="submitted", request_id="r", at=answered)
    with store.transaction() as tx:
        tx.audit(actor="relay", action="routed", request_id="r", at=published)

    trail = store.audit_trail("r")
    assert [e.action for e in trail] == ["routed", "submitted"]
    assert [e.id for e in trail] == [2, 1]  # the chain itself keeps the commit order
    assert store.verify_audit().ok


def _chain(store: Store, n: int = 5) -> None:
    for i in range(n):
        with store.transaction() as tx:
            tx.audit(actor="test", action="step", request_id="r", details={"i": i})


def _execute(store: Store, sql: str) -> None:
    engine = sa.create_engine(store._engine.url)
    with engine.begin() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def test_an_intact_chain_verifies(store: Store) -> None:
    _chain(store)
    last_hash = store.audit_trail("r")[-1].hash
    assert store.verify_audit() == store.verify_audit().__class__(
        ok=True, entries=5, head=last_hash
    )


def test_a_deleted_head_row_is_reported_not_raised(store: Store) -> None:
    _chain(store)
    _execute(store, "DELETE FROM audit_log WHERE id = 5")
    _execute(store, "DELETE FROM audit_head")

    result = store.verify_audit()

    assert (result.ok, result.entries, result.broken_at) == (False, 4, 5)
    assert "head row is missing" in result.reason


def test_an_end_cut_with_its_head_rewritten_is_found_only_against_a_recorded_head(
    store: Store,
) -> None:
    _chain(store)
    recorded = store.verify_audit().head
    _execute(store, "DELETE FROM audit_log WHERE id = 5")
    _execute(
        store,
        "UPDATE audit_head SET last_id = 4, last_hash = (SELECT hash FROM audit_log WHERE id = 4)",
    )

    assert store.verify_audit().ok  # the chain alone cannot tell
    cut = store.verify_audit(expect_head=recorded)
    # No entry of what is left is broken: the recorded head is what is missing.
    assert (cut.ok, cut.entries, cut.broken_at) == (False, 4, None)
    assert recorded in cut.reason and "cut from the end" in cut.reason
    earlier = store.audit_trail("r")[1].hash
    assert store.verify_audit(expect_head=earlier).ok


@pytest.mark.parametrize(
    ("tamper", "broken_at"),
    [
        ("UPDATE audit_log SET details = '{\"i\": 42}' WHERE id = 3", 3),
        ("UPDATE audit_log SET outcome = 'error' WHERE id = 2", 2),
        ("UPDATE audit_log SET hash = '" + "f" * 64 + "' WHERE id = 3", 3),
        ("DELETE FROM audit_log WHERE id = 2", 3),
        ("DELETE FROM audit_log WHERE id = 5", 5),
        ("UPDATE audit_log SET id = id + 100 WHERE id = 5", 105),
        (
            "INSERT INTO audit_log (id, at, actor, action, outcome, details, prev_hash, hash) "
            "SELECT 6, at, actor, action, outcome, details, hash, hash FROM audit_log WHERE id = 5",
            6,
        ),
    ],
    ids=[
        "edit-details",
        "edit-outcome",
        "tampered-hash",
        "delete-middle",
        "delete-last",
        "renumber",
        "insert-at-end",
    ],
)
def test_verify_finds_the_first_broken_entry(store: Store, tamper: str, broken_at: int) -> None:
    _chain(store)
    _execute(store, tamper)

    result = store.verify_audit()

    assert not result.ok
    assert result.broken_at == broken_at
    assert result.reason


def test_concurrent_writers_keep_one_chain(store: Store) -> None:
    threads, per_thread = 6, 8
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(per_thread):
                with store.transaction() as tx:
                    tx.audit(
                        actor=f"worker:{worker}",
                        action="attempt",
                        request_id=f"r{worker}",
                        details={"i": i},
                    )
                    tx.audit(actor=f"worker:{worker}", action="submitted", request_id=f"r{worker}")
        except BaseException as error:  # reported below
            errors.append(error)

    pool = [threading.Thread(target=write, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    assert errors == []
    result = store.verify_audit()
    assert result.ok, result
    assert result.entries == threads * per_thread * 2


_texts = st.text(max_size=12)
_details = st.dictionaries(
    st.text(max_size=6),
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _texts,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    id=st.integers(min_value=1, max_value=2**62),
    at=st.datetimes(timezones=st.timezones()),
    actor=_texts,
    action=_texts,
    request_id=st.none() | _texts,
    message_id=st.none() | _texts,
    outcome=_texts,
    details=_details,
    prev_hash=_texts,
)
def test_an_entry_hash_is_the_sha256_of_the_canonical_json_of_its_fields(
    id: int,
    at: datetime,
    actor: str,
    action: str,
    request_id: str | None,
    message_id: str | None,
    outcome: str,
    details: dict[str, object],
    prev_hash: str,
) -> None:
    # The definition chains already written were hashed with; the fast form must not drift.
    entry = _audit.pending_entry(
        at=at,
        actor=actor,
        action=action,
        request_id=request_id,
        message_id=message_id,
        outcome=outcome,
        details=details,
    )
    fields = {
        "id": id,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "request_id": request_id,
        "message_id": message_id,
        "outcome": outcome,
        "details": json.loads(entry.details),
        "prev_hash": prev_hash,
    }
    by_definition = hashlib.sha256(_audit.canonical_json(fields).encode()).hexdigest()

    assert _audit.entry_hash(**{**fields, "at": at, "details": entry.details}) == by_definition


def test_reformatting_stored_details_breaks_the_chain(store: Store) -> None:
    _chain(store)
    _execute(store, "UPDATE audit_log SET details = ' ' || details WHERE id = 2")

    result = store.verify_audit()

    assert (result.ok, result.broken_at) == (False, 2)
