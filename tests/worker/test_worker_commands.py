"""The adapter worker against the real broker and a real SQLite store: the happy path, the
idempotent consumer, transient failures through the retry tiers, the dead letter channel, and
store outages."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from worker_support import (
    FAST,
    INSTANCE,
    MemoryBackend,
    actions,
    channel_on,
    new_request,
    publish,
    published_if_routable,
    queue_depth,
    running,
    wait_until,
)

from adapters import Receipt
from bus.broker.publisher import envelope_message
from bus.broker.topology import COMMANDS_EXCHANGE, DEAD_EXCHANGE, dead_queue, work_queue
from bus.config import InstanceConfig, RetryPolicy
from bus.status import record_status_update
from bus.store import Store, StoreUnavailable, Transaction
from bus.worker import _consumer, _publisher, command_consumer
from bus.worker._delivery import ATTEMPT_HEADER, KEPT_PROPERTIES
from schemas.events import STRUCTURED_CONTENT_TYPE, EventType
from schemas.model import ServiceRequest, Status, StatusUpdate
from tests.asyncapi_support import assert_documented

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]


def submitted_events(store: Store, request_id: str) -> list[str]:
    return [
        row.routing_key
        for row in store.pending_outbox()
        if row.envelope.subject == request_id and row.envelope.type is EventType.SUBMITTED
    ]


def test_a_command_is_submitted_and_its_receipt_recorded(store: Store, topology: str) -> None:
    backend = MemoryBackend()
    envelope = new_request(store)
    publish(topology, envelope)

    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        wait_until(lambda: submitted_events(store, envelope.subject), what="the receipt")

    request = store.get_request(envelope.subject)
    assert request is not None
    assert [(r.adapter, r.reference) for r in request.backend_refs] == [(INSTANCE, "WO-00001")]
    assert backend.created == {envelope.subject: "WO-00001"}
    assert submitted_events(store, envelope.subject) == [f"request.submitted.{INSTANCE}"]
    # The attempt that reached the back-end is audited once, as `submitted`, with its number.
    trail = store.audit_trail(envelope.subject)
    assert [(e.action, e.outcome) for e in trail if e.actor == f"worker:{INSTANCE}"] == [
        ("submitted", "ok")
    ]
    (submitted,) = [e for e in trail if e.action == "submitted"]
    assert submitted.details == {"attempt": 1, "reference": "WO-00001", "created": True}
    assert queue_depth(topology, work_queue(INSTANCE)) == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/cloudevents+json; charset=utf-8", "application/json"],
    ids=["structured", "queued-before-the-cloudevents-content-type"],
)
def test_a_command_is_submitted_whatever_its_content_type(
    store: Store, topology: str, content_type: str
) -> None:
    envelope = new_request(store)
    publish(topology, envelope, content_type=content_type)
    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        wait_until(lambda: submitted_events(store, envelope.subject), what="the receipt")


def test_the_submitted_event_carries_no_personal_data(store: Store, topology: str) -> None:
    envelope = new_request(store)
    publish(topology, envelope)
    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        wait_until(lambda: submitted_events(store, envelope.subject), what="the event")
    row = next(r for r in store.pending_outbox() if r.envelope.type is EventType.SUBMITTED)
    assert "resident@example.org" not in row.envelope.model_dump_json()
    assert row.envelope.data["reference"] == "WO-00001"
    assert row.envelope.correlationid == envelope.correlationid
    assert_documented(row.envelope)


def test_the_hand_over_to_a_back_end_is_a_change_its_event_and_open311_readers_see(
    store: Store, topology: str
) -> None:
    # A consumer keeps the copy with the latest changed_at: a `created` event replayed after
    # the `submitted` one must not win a tie and take the back-end reference away; and an Open311
    # client polling updated_after (extensions show the reference) must be told of it.
    envelope = new_request(store)
    created = store.get_request(envelope.subject)
    assert created is not None and created.changed_at is not None
    publish(topology, envelope)
    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        wait_until(lambda: submitted_events(store, envelope.subject), what="the event")

    handed_over = store.get_request(envelope.subject)
    assert handed_over is not None and handed_over.changed_at is not None
    assert handed_over.changed_at > created.changed_at
    row = next(r for r in store.pending_outbox() if r.envelope.type is EventType.SUBMITTED)
    assert datetime.fromisoformat(row.envelope.data["changed_at"]) == handed_over.changed_at
    assert_documented(row.envelope)


def test_a_request_the_backend_already_holds_is_not_created_again(
    store: Store, topology: str
) -> None:
    backend = MemoryBackend()
    envelope = new_request(store)
    backend.created[envelope.subject] = "WO-EXISTING"
    publish(topology, envelope)

    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        wait_until(lambda: submitted_events(store, envelope.subject), what="the receipt")

    assert backend.calls == 0
    request = store.get_request(envelope.subject)
    assert request is not None and request.backend_refs[0].reference == "WO-EXISTING"
    assert ("submitted", "found") in actions(store, envelope.subject)


def test_a_redelivered_command_after_the_receipt_is_just_acknowledged(
    store: Store, topology: str
) -> None:
    backend = MemoryBackend()
    envelope = new_request(store)
    publish(topology, envelope)
    publish(topology, envelope)  # the relay may publish twice (at least once)

    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        wait_until(lambda: ("attempt", "duplicate") in actions(store, envelope.subject))

    assert len(backend.created) == 1
    assert len(submitted_events(store, envelope.subject)) == 1
    assert queue_depth(topology, work_queue(INSTANCE)) == 0


def test_a_backend_failing_transiently_is_delivered_after_retries(
    store: Store, topology: str
) -> None:
    # 2 quick tries per round: rounds 1 and 2 fail entirely, round 3 fails once then succeeds.
    backend = MemoryBackend(transient_failures=5)
    envelope = new_request(store)
    publish(topology, envelope)

    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        wait_until(lambda: submitted_events(store, envelope.subject), what="the receipt")

    assert backend.created == {envelope.subject: "WO-00001"}
    trail = store.audit_trail(envelope.subject)
    failed = [e for e in trail if e.action == "attempt" and e.outcome == "error"]
    assert [(e.details["attempt"], e.details["try"]) for e in failed] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
        (3, 1),
    ]
    assert "busy" in failed[0].details["error"]
    scheduled = [e for e in trail if e.action == "retry_scheduled"]
    assert [e.details["delay_seconds"] for e in scheduled] == [0.2, 0.4]
    assert trail[-1].action == "submitted" and trail[-1].details["attempt"] == 3
    assert store.dead_letters(INSTANCE) == []


def test_a_backend_down_for_longer_than_all_attempts_dead_letters_the_command(
    store: Store, topology: str
) -> None:
    backend = MemoryBackend(transient_failures=1000)
    envelope = new_request(store)
    publish(topology, envelope)

    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        letters = wait_until(lambda: store.dead_letters(INSTANCE), what="the dead letter")

    (letter,) = letters
    assert letter.request_id == envelope.subject
    assert letter.attempts == FAST.retry.max_attempts
    assert letter.reason.startswith("gave up after 4 attempts; last error TransientError")
    assert backend.calls == FAST.retry.max_attempts * FAST.retry.immediate_attempts
    assert queue_depth(topology, dead_queue(INSTANCE)) == 1
    # When the first round failed (tiers of 0.2, 0.4 and 0.4 s waited since), not the last.
    [first_round] = [
        e for e in store.audit_trail(envelope.subject) if e.action == "retry_scheduled"
    ][:1]
    assert abs((letter.first_failed_at - first_round.at).total_seconds()) < 0.2
    assert (letter.last_failed_at - letter.first_failed_at).total_seconds() >= 0.9


def test_copies_in_the_retry_tiers_and_the_dead_letter_queue_keep_the_original_properties(
    store: Store, topology: str
) -> None:
    # Published as the relay publishes a command, then through every tier to the dead-letter
    # queue: each copy is published from the last one.
    envelope = new_request(store)
    sent = envelope_message(envelope, exchange=COMMANDS_EXCHANGE, routing_key=INSTANCE)
    with channel_on(topology) as ch:
        ch.confirm_delivery()
        ch.basic_publish(sent.exchange, sent.routing_key, sent.body, properties=sent.properties)
    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend(1000))):
        wait_until(lambda: queue_depth(topology, dead_queue(INSTANCE)) == 1, what="the DLQ")
    with channel_on(topology) as ch:
        method, properties, body = ch.basic_get(dead_queue(INSTANCE), auto_ack=True)
    assert method is not None and json.loads(body)["id"] == envelope.id
    assert properties.content_type == STRUCTURED_CONTENT_TYPE
    for name in KEPT_PROPERTIES:
        assert getattr(properties, name) == getattr(sent.properties, name), name
    assert properties.headers[ATTEMPT_HEADER] == FAST.retry.max_attempts


def test_a_rejected_request_is_dead_lettered_at_once_with_the_reason(
    store: Store, topology: str
) -> None:
    backend = MemoryBackend()
    envelope = new_request(store, description="REJECT me")
    publish(topology, envelope)

    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        letters = wait_until(lambda: store.dead_letters(INSTANCE), what="the dead letter")

    (letter,) = letters
    assert backend.calls == 1
    assert letter.attempts == 1
    assert "PermanentError" in letter.reason and "LANE" in letter.reason
    assert isinstance(letter.envelope, dict) and letter.envelope["id"] == envelope.id
    trail = actions(store, envelope.subject)
    assert ("dead_lettered", "error") in trail and ("retry_scheduled", "error") not in trail
    failed = [r for r in store.pending_outbox() if r.envelope.type is EventType.DELIVERY_FAILED]
    assert [r.routing_key for r in failed] == [f"request.delivery_failed.{INSTANCE}"]
    assert failed[0].envelope.data["message_id"] == envelope.id
    assert_documented(failed[0].envelope)
    assert queue_depth(topology, dead_queue(INSTANCE)) == 1
    assert queue_depth(topology, work_queue(INSTANCE)) == 0


def test_a_dead_letter_whose_publish_is_cut_is_counted_and_announced_once(
    store: Store, topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store records the dead letter before it goes to the dead-letter queue; the message,
    redelivered after a connection cut there, is a repeat: audited as a duplicate, its attempts
    not added again, no second `delivery_failed` event."""
    real_publish = _publisher.Publisher.publish
    cut: list[str] = []

    def publish_cut_once(self, exchange, routing_key, body, **kw):  # type: ignore[no-untyped-def]
        if exchange == DEAD_EXCHANGE and not cut:
            cut.append(routing_key)
            raise _publisher.PublishFailed("connection reset by peer")
        return real_publish(self, exchange, routing_key, body, **kw)

    monkeypatch.setattr(_publisher.Publisher, "publish", publish_cut_once)
    envelope = new_request(store, description="REJECT me")
    publish(topology, envelope)
    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        wait_until(lambda: queue_depth(topology, dead_queue(INSTANCE)) == 1, what="the DLQ")
        wait_until(
            lambda: [a for a, _ in actions(store, envelope.subject)].count("dead_lettered") == 2,
            what="the redelivery's dead-lettering",
        )

    assert cut == [INSTANCE]
    trail = actions(store, envelope.subject)
    assert [o for a, o in trail if a == "dead_lettered"] == ["error", "duplicate"]
    failed = [r for r in store.pending_outbox() if r.envelope.type is EventType.DELIVERY_FAILED]
    assert [r.envelope.subject for r in failed] == [envelope.subject]
    assert [d.attempts for d in store.dead_letters(INSTANCE)] == [1]


@pytest.mark.parametrize(
    "body",
    [
        b"\xff not even text",
        b'{"hello": "world"}',
        b"[1, 2, 3]",
    ],
    ids=["not-json", "not-an-envelope", "json-array"],
)
def test_a_malformed_message_is_dead_lettered_never_looping(
    store: Store, topology: str, body: bytes
) -> None:
    backend = MemoryBackend()
    publish(topology, body)

    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        letters = wait_until(lambda: store.dead_letters(INSTANCE), what="the dead letter")
        wait_until(lambda: queue_depth(topology, dead_queue(INSTANCE)) == 1)

    (letter,) = letters
    assert letter.request_id is None and letter.attempts == 1
    assert "MalformedMessage" in letter.reason
    assert backend.calls == 0
    assert queue_depth(topology, work_queue(INSTANCE)) == 0


def test_a_command_for_an_unknown_request_is_dead_lettered(store: Store, topology: str) -> None:
    envelope = new_request(store).model_copy(update={"subject": "req-does-not-exist"})
    publish(topology, envelope)

    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        letters = wait_until(lambda: store.dead_letters(INSTANCE), what="the dead letter")

    assert "unknown request req-does-not-exist" in letters[0].reason
    assert json.dumps(letters[0].envelope).count("req-does-not-exist") >= 1


def test_the_worker_declares_its_own_queues_on_an_empty_vhost(store: Store, amqp_url: str) -> None:
    config = InstanceConfig(kind="memory", retry=RetryPolicy(tiers=[0.2], max_attempts=2))
    envelope = new_request(store)
    with running(command_consumer(amqp_url, store, INSTANCE, config, MemoryBackend())):
        # Published once the worker has declared its queue and bound it to the commands
        # exchange (the queue alone, without the binding, would return the message).
        wait_until(
            lambda: published_if_routable(amqp_url, envelope), what="the work queue's binding"
        )
        wait_until(lambda: submitted_events(store, envelope.subject), what="the receipt")


def test_a_status_the_backend_gives_with_its_receipt_is_recorded(
    store: Store, topology: str
) -> None:
    class TriagingBackend(MemoryBackend):
        def submit(self, request: ServiceRequest) -> Receipt:
            receipt = super().submit(request)
            return replace(receipt, status=Status.FOR_TRIAGE)

    envelope = new_request(store)
    publish(topology, envelope)
    with running(command_consumer(topology, store, INSTANCE, FAST, TriagingBackend())):
        wait_until(lambda: ("status_changed", "ok") in actions(store, envelope.subject))

    request = store.get_request(envelope.subject)
    assert request is not None and request.status is Status.FOR_TRIAGE


def test_the_status_given_with_a_receipt_survives_a_failed_write(
    store: Store, topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The status is written with the reference: a redelivery, taken as a duplicate once the
    # reference is known, would never write it again.
    real = Transaction.apply_status_update
    calls = {"n": 0}

    def fails_once(self: Transaction, update: StatusUpdate, **kwargs: bool) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreUnavailable("database is restarting")
        return real(self, update, **kwargs)

    class TriagingBackend(MemoryBackend):
        def submit(self, request: ServiceRequest) -> Receipt:
            return replace(super().submit(request), status=Status.FOR_TRIAGE)

    monkeypatch.setattr(Transaction, "apply_status_update", fails_once)
    envelope = new_request(store)
    publish(topology, envelope)
    with running(command_consumer(topology, store, INSTANCE, FAST, TriagingBackend())):
        wait_until(lambda: calls["n"] >= 1, what="the first status write")
        wait_until(
            lambda: ("status_changed", "ok") in actions(store, envelope.subject),
            timeout=8,
            what="the receipt's status",
        )

    request = store.get_request(envelope.subject)
    assert request is not None and request.status is Status.FOR_TRIAGE
    assert actions(store, envelope.subject).count(("submitted", "ok")) == 1


def test_the_submitted_event_never_carries_a_status_older_than_one_already_queued(
    store: Store, topology: str
) -> None:
    # A back-end that pushes a status change (POST /servicerequestupdates) as soon as it holds
    # the work: `status_changed: in_progress` is queued while the worker waits for its receipt.
    class PushingBackend(MemoryBackend):
        def submit(self, request: ServiceRequest) -> Receipt:
            receipt = super().submit(request)
            push = StatusUpdate(
                request_id=request.id,
                status=Status.IN_PROGRESS,
                at=datetime.now(UTC),
                update_id="push-1",
                source=INSTANCE,
            )
            record_status_update(store, push, actor="api")
            return receipt

    envelope = new_request(store)
    publish(topology, envelope)
    with running(command_consumer(topology, store, INSTANCE, FAST, PushingBackend())):
        wait_until(lambda: submitted_events(store, envelope.subject), what="the submitted event")

    events = [
        (row.envelope.type, row.envelope.data["status"])
        for row in store.pending_outbox()
        if row.envelope.subject == envelope.subject
    ]
    assert events == [
        (EventType.STATUS_CHANGED, "in_progress"),
        (EventType.SUBMITTED, "in_progress"),
    ]


@contextmanager
def store_outage(store: Store, monkeypatch: pytest.MonkeyPatch, *steps: str) -> Iterator[Any]:
    """The store's `steps` (methods) raise StoreUnavailable until the block ends; yields a
    counter of the failed calls."""
    failed = {"n": 0}
    down = threading.Event()
    down.set()
    for name in steps:
        real = getattr(store, name)

        def failing(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            if down.is_set():
                failed["n"] += 1
                raise StoreUnavailable("database is restarting")
            return _real(*args, **kwargs)

        monkeypatch.setattr(store, name, failing)
    try:
        yield failed
    finally:
        down.clear()


def test_a_store_outage_longer_than_the_delivery_limit_lasts_dead_letters_nothing(
    store: Store, topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Requeued at this pace, a command would spend the work queue's delivery limit (10) in
    # about a second: the outage below would dead-letter it without reaching the back-end.
    monkeypatch.setattr(_consumer, "_REQUEUE_PAUSE", 0.1)
    envelope = new_request(store)
    publish(topology, envelope)
    backend = MemoryBackend()
    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        with store_outage(store, monkeypatch, "get_requests") as failed:
            wait_until(lambda: failed["n"] >= 1, what="the store failing")
            time.sleep(3)  # e.g. a PostgreSQL fail-over
        wait_until(lambda: submitted_events(store, envelope.subject), timeout=8, what="receipt")

    assert list(backend.created) == [envelope.subject]
    assert store.dead_letters(INSTANCE) == []
    assert queue_depth(topology, dead_queue(INSTANCE)) == 0


def test_a_store_outage_while_a_failed_try_is_audited_leaves_one_copy_of_the_command(
    store: Store, topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The back-end fails both quick tries: the command goes to a retry tier once, whatever
    # the store did meanwhile, and never also back to the work queue.
    envelope = new_request(store)
    publish(topology, envelope)
    backend = MemoryBackend(transient_failures=2)
    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        with store_outage(store, monkeypatch, "transaction") as failed:
            wait_until(lambda: failed["n"] >= 1, what="the audit of a failed try failing")
            time.sleep(1)
        wait_until(lambda: submitted_events(store, envelope.subject), what="the receipt")
        time.sleep(1.5)  # a second copy, if any, has come back from its tier or the queue

    trail = actions(store, envelope.subject)
    assert trail.count(("retry_scheduled", "error")) == 1
    assert trail.count(("submitted", "ok")) == 1
    assert ("attempt", "duplicate") not in trail
    assert backend.calls == 3
