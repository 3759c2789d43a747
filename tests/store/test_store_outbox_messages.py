"""The relay's read of the outbox, on both stores: rows in id order, each with its envelope
parsed and its stored JSON as the message body, sent rows left out."""

from __future__ import annotations

from bus.store import Store
from schemas.events import Envelope, EventType


def test_pending_messages_come_in_order_with_the_stored_json_as_body(store: Store) -> None:
    envelopes = [
        Envelope(type=EventType.CREATED, subject=f"r-{n}", data={"note": "ü ✓"}, correlationid="c")
        for n in range(3)
    ]
    with store.transaction() as tx:
        for n, envelope in enumerate(envelopes):
            tx.add_outbox(envelope, exchange="civicbus.events", routing_key=f"key.{n}")

    messages = store.pending_outbox_messages(limit=10)

    assert [m.envelope for m in messages] == envelopes
    assert [Envelope.model_validate_json(m.body) for m in messages] == envelopes
    assert [(m.exchange, m.routing_key) for m in messages] == [
        ("civicbus.events", f"key.{n}") for n in range(3)
    ]
    assert [m.id for m in messages] == sorted(m.id for m in messages)
    store.mark_sent([messages[0].id])
    assert [m.envelope.subject for m in store.pending_outbox_messages(limit=1)] == ["r-1"]


def test_an_event_is_stored_as_the_text_its_model_dumps(store: Store) -> None:
    envelope = Envelope(
        type=EventType.SUBMITTED,
        subject="r-1",
        data={"text": 'a "quoted" ü ✓\n', "refs": [{"at": "2026-12-07T01:02:03Z"}], "n": 1.5},
        correlationid="c",
    )
    with store.transaction() as tx:
        tx.add_outbox(envelope, exchange="civicbus.events", routing_key="key")

    [message] = store.pending_outbox_messages(limit=10)

    assert message.body.decode() == envelope.model_dump_json()
