"""The `submitted` event's data, built by the worker from the request as read and the
back-end's receipt, called directly on a real SQLite store (no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from worker_support import INSTANCE, MemoryBackend, new_request

from adapters import Receipt
from bus.config import RetryPolicy
from bus.store import Store
from bus.worker import CommandWorker, Delivery, Route
from schemas.events import EventType
from schemas.model import BackendRef, ServiceRequest


class _DatingBackend(MemoryBackend):
    """Dates its receipts `at` (a back-end on another continent: in its own zone)."""

    def __init__(self, at: datetime) -> None:
        super().__init__()
        self.at = at

    def submit(self, request: ServiceRequest) -> Receipt:
        receipt = super().submit(request)
        return Receipt(request_id=receipt.request_id, reference=receipt.reference, at=self.at)


class _NoBroker:
    def publish(self, *_: Any, **__: Any) -> None:
        raise AssertionError("nothing to publish on the happy path")


@pytest.mark.parametrize(
    ("zone", "shown"),
    [
        (UTC, "2026-12-07T01:02:03.456789Z"),
        (timezone(timedelta(hours=-5)), "2026-12-07T01:02:03.456789-05:00"),
    ],
    ids=["utc", "another-zone"],
)
def test_the_submitted_event_is_the_public_request_with_the_new_reference_as_its_model_dumps_it(
    store: Store, zone: timezone, shown: str
) -> None:
    envelope = new_request(store)
    known_at = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    with store.transaction() as tx:
        tx.add_backend_ref(envelope.subject, "parks", "PK-7", known_at)
    before = store.get_request(envelope.subject)
    assert before is not None
    at = datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=zone)
    worker = CommandWorker(Route(INSTANCE, store, RetryPolicy()), _DatingBackend(at))
    delivery = Delivery(envelope.model_dump_json().encode(), message_id=envelope.id)

    assert not worker.handle_batch([delivery], _NoBroker())

    [event] = [
        row.envelope
        for row in store.pending_outbox()
        if row.envelope.type is EventType.SUBMITTED and row.envelope.subject == envelope.subject
    ]
    expected = before.public_data()
    expected["backend_refs"] = [
        BackendRef(adapter="parks", reference="PK-7", submitted_at=known_at).model_dump(
            mode="json"
        ),
        BackendRef(adapter=INSTANCE, reference="WO-00001", submitted_at=at).model_dump(mode="json"),
    ]
    expected["instance"], expected["reference"] = INSTANCE, "WO-00001"
    # The hand-over is a change: the request's changed_at as the store now has it.
    after = store.get_request(envelope.subject)
    assert after is not None and after.changed_at is not None
    assert before.changed_at is not None and after.changed_at > before.changed_at
    expected["changed_at"] = after.public_data()["changed_at"]
    assert event.data == expected
    assert event.data["backend_refs"][-1]["submitted_at"] == shown
    assert event.data["reporter"] == dict.fromkeys(event.data["reporter"])  # no contact data
    assert event.correlationid == envelope.correlationid
    assert event.traceparent == envelope.traceparent
