"""The adapter worker taking several delivered commands at once (one group commit of their
receipts, then the acks), against the real broker and a real SQLite store."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs
from worker_support import (
    INSTANCE,
    MemoryBackend,
    actions,
    channel_on,
    new_request,
    publish,
    queue_depth,
    running,
    wait_until,
)

from adapters import PermanentError, Receipt
from bus.broker.topology import (
    DEAD_EXCHANGE,
    RETRY_EXCHANGE,
    dead_queue,
    declare_topology,
    retry_routing_key,
    work_queue,
)
from bus.config import InstanceConfig, RetryPolicy
from bus.store import Store
from bus.worker import CommandWorker, Delivery, Route, command_consumer
from bus.worker._publisher import PublishFailed
from schemas.events import Envelope, EventType
from schemas.model import ServiceRequest
from tests.sqlite_lock import hold_write_lock

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]

#: A prefetch large enough that commands published together are handled as one batch or few.
WIDE = InstanceConfig(
    kind="memory",
    retry=RetryPolicy(immediate_attempts=1, tiers=[0.2], max_attempts=2),
    prefetch=32,
)


@pytest.fixture
def wide_topology(amqp_url: str) -> str:
    with channel_on(amqp_url) as ch:
        declare_topology(ch, {INSTANCE: WIDE})
    return amqp_url


def submitted(store: Store) -> list[str]:
    return [
        r.envelope.subject for r in store.pending_outbox() if r.envelope.type is EventType.SUBMITTED
    ]


def test_commands_delivered_together_each_reach_the_backend_once(
    store: Store, wide_topology: str
) -> None:
    backend = MemoryBackend()
    envelopes = [new_request(store) for _ in range(12)]
    rejected = new_request(store, description="REJECT me")
    for envelope in envelopes[:6]:
        publish(wide_topology, envelope)
    publish(wide_topology, rejected)
    publish(wide_topology, b"not a command")
    for envelope in envelopes[6:]:
        publish(wide_topology, envelope)
    publish(wide_topology, envelopes[0])  # the relay may publish twice (at least once)
    publish(wide_topology, envelopes[7])

    with running(command_consumer(wide_topology, store, INSTANCE, WIDE, backend)):
        wait_until(lambda: len(submitted(store)) == 12, what="12 receipts")
        wait_until(lambda: len(store.dead_letters(INSTANCE)) == 2, what="2 dead letters")
        wait_until(lambda: queue_depth(wide_topology, work_queue(INSTANCE)) == 0)
        wait_until(lambda: actions(store, envelopes[7].subject).count(("attempt", "duplicate")))

    assert sorted(submitted(store)) == sorted(e.subject for e in envelopes)
    assert sorted(backend.created) == sorted(e.subject for e in envelopes)
    for envelope in envelopes:
        request = store.get_request(envelope.subject)
        assert request is not None
        assert [(r.adapter, r.reference) for r in request.backend_refs] == [
            (INSTANCE, backend.created[envelope.subject])
        ]
        trail = actions(store, envelope.subject)
        assert trail.count(("submitted", "ok")) == 1
    for twice in (envelopes[0], envelopes[7]):
        assert actions(store, twice.subject).count(("attempt", "duplicate")) == 1
    reasons = sorted(letter.reason for letter in store.dead_letters(INSTANCE))
    assert "MalformedMessage" in reasons[0] and "PermanentError" in reasons[1]
    assert queue_depth(wide_topology, dead_queue(INSTANCE)) == 2
    assert store.verify_audit().ok


def test_receipts_that_cannot_be_stored_wait_for_the_store_and_are_recorded_once(
    sqlite_url: str, wide_topology: str
) -> None:
    # Short lock wait: the group commit fails quickly while another writer holds SQLite.
    store = Store.open(sqlite_url + "?timeout=0.5")
    release = threading.Event()
    try:
        backend = MemoryBackend()
        envelopes = [new_request(store) for _ in range(3)]
        holder = hold_write_lock(sqlite_url, until=release)
        for envelope in envelopes:
            publish(wide_topology, envelope)

        with (
            capture_logs() as logs,
            running(command_consumer(wide_topology, store, INSTANCE, WIDE, backend)),
        ):
            # The first batch reached the back-end and waits to record its receipts (how many
            # commands it holds depends on how their deliveries arrived: one, or all three).
            wait_until(
                lambda: "worker.store_unavailable" in [entry["event"] for entry in logs],
                what="a failed group commit",
            )
            assert backend.created
            release.set()
            holder.join()
            wait_until(lambda: len(submitted(store)) == 3, timeout=30, what="the receipts")
            wait_until(lambda: queue_depth(wide_topology, work_queue(INSTANCE)) == 0)

        events = [entry["event"] for entry in logs]
        assert events.count("worker.store_unavailable") == 1  # once per outage, not per try
        assert backend.calls == 3  # each created once: held, never redelivered
        for envelope in envelopes:
            assert actions(store, envelope.subject).count(("submitted", "ok")) == 1
        assert sorted(submitted(store)) == sorted(e.subject for e in envelopes)
    finally:
        release.set()
        store.close()


def test_a_worker_stopped_during_a_store_outage_requeues_its_commands_at_once(
    sqlite_url: str, wide_topology: str
) -> None:
    store = Store.open(sqlite_url + "?timeout=0.5")
    release = threading.Event()
    try:
        backend = MemoryBackend()
        envelopes = [new_request(store) for _ in range(3)]
        holder = hold_write_lock(sqlite_url, until=release)
        for envelope in envelopes:
            publish(wide_topology, envelope)

        consumer = command_consumer(wide_topology, store, INSTANCE, WIDE, backend)
        with capture_logs() as logs, running(consumer):
            wait_until(
                lambda: "worker.store_unavailable" in [entry["event"] for entry in logs],
                what="a failed group commit",
            )
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 3  # SIGTERM does not wait for the store
        wait_until(lambda: queue_depth(wide_topology, work_queue(INSTANCE)) == 3)
        # The batch held when it stopped (one command or all three, as their deliveries came).
        reached = set(backend.created)
        assert reached
        release.set()
        holder.join()

        with running(command_consumer(wide_topology, store, INSTANCE, WIDE, backend)):
            wait_until(lambda: len(submitted(store)) == 3, what="the receipts")
        assert backend.calls == 3  # what reached the back-end was found, not created again
        for envelope in envelopes:
            outcome = "found" if envelope.subject in reached else "ok"
            trail = actions(store, envelope.subject)
            assert [a for a in trail if a[0] == "submitted"] == [("submitted", outcome)]
    finally:
        release.set()
        store.close()


class SlowBackend(MemoryBackend):
    """Takes `seconds` to create each work item, as a busy SAP system does."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def submit(self, request: ServiceRequest) -> Receipt:
        time.sleep(self.seconds)
        return super().submit(request)


def test_a_batchs_audit_entries_carry_when_each_backend_call_answered_not_the_commit(
    store: Store, wide_topology: str
) -> None:
    # An operator reading the trail of a slow back-end must see when each request reached it;
    # the batch's commit comes after the last call.
    backend = SlowBackend(0.4)
    first, second = new_request(store), new_request(store)
    publish(wide_topology, first)
    publish(wide_topology, second)

    with running(command_consumer(wide_topology, store, INSTANCE, WIDE, backend)):
        wait_until(lambda: len(submitted(store)) == 2, what="2 receipts")

    def submitted_at(envelope: Envelope) -> datetime:
        (entry,) = [e for e in store.audit_trail(envelope.subject) if e.action == "submitted"]
        return entry.at

    assert abs(submitted_at(second) - submitted_at(first)) >= timedelta(seconds=0.3)
    assert store.verify_audit().ok


class _DeadLettersCut:
    """A broker whose dead-letter publishes fail (as when the publishing connection drops)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    def publish(self, exchange: str, routing_key: str, body: bytes, **_: Any) -> None:
        if exchange == DEAD_EXCHANGE:
            raise PublishFailed("ConnectionResetError(104, 'Connection reset by peer')")
        self.published.append((exchange, routing_key))


def test_a_batch_whose_dead_letter_cannot_be_published_requeues_only_what_it_did_not_hand_on(
    store: Store,
) -> None:
    # Called directly with three deliveries, to have them in one batch for sure: the first
    # goes to a retry tier, the second's dead letter cannot be published, the third is not
    # reached. Requeued, the first would be handled twice (its tier copy comes back too).
    retried, rejected, later = (
        new_request(store),
        new_request(store, description="REJECT me"),
        new_request(store),
    )
    policy = RetryPolicy(immediate_attempts=1, tiers=[0.2], max_attempts=2)
    backend = MemoryBackend(transient_failures=1)
    worker = CommandWorker(Route(INSTANCE, store, policy), backend)
    broker = _DeadLettersCut()
    deliveries = [
        Delivery(e.model_dump_json().encode(), message_id=e.id, routing_key=INSTANCE)
        for e in (retried, rejected, later)
    ]

    with capture_logs() as logs:
        requeue = worker.handle_batch(deliveries, broker)

    assert set(requeue) == {1, 2}
    assert broker.published == [(RETRY_EXCHANGE, retry_routing_key(INSTANCE, 0.2))]
    assert backend.created == {}
    [failed] = [entry for entry in logs if entry["event"] == "worker.publish_failed"]
    assert failed["requeued"] == 2 and "Connection reset by peer" in failed["error"]
    assert failed["message_ids"] == [rejected.id, later.id]  # to find them in the log after
    # The store recorded the dead letter before the publish: the requeued copy is its repeat.
    assert [letter.request_id for letter in store.dead_letters(INSTANCE)] == [rejected.subject]


class _Recording:
    """A broker that takes every publish and notes where it went; with `failing_dead_letters`,
    a dead letter's publish fails as a bug would (not with PublishFailed)."""

    def __init__(self, *, failing_dead_letters: bool = False) -> None:
        self.failing_dead_letters = failing_dead_letters
        self.published: list[tuple[str, str]] = []

    def publish(self, exchange: str, routing_key: str, body: bytes, **_: Any) -> None:
        if exchange == DEAD_EXCHANGE and self.failing_dead_letters:
            raise RuntimeError("not a broker failure")
        self.published.append((exchange, routing_key))


def _deliveries(*envelopes: Envelope) -> list[Delivery]:
    return [
        Delivery(e.model_dump_json().encode(), message_id=e.id, routing_key=INSTANCE)
        for e in envelopes
    ]


def test_a_batch_that_fails_otherwise_requeues_only_what_it_did_not_hand_on(store: Store) -> None:
    # The first goes to a retry tier; the second's dead letter fails with an error that is no
    # outage and no failed publish. Requeued too, the first would be in the queue twice.
    retried, rejected = new_request(store), new_request(store, description="REJECT me")
    policy = RetryPolicy(immediate_attempts=1, tiers=[0.2], max_attempts=2)
    worker = CommandWorker(Route(INSTANCE, store, policy), MemoryBackend(transient_failures=1))
    broker = _Recording(failing_dead_letters=True)

    with capture_logs() as logs:
        requeue = worker.handle_batch(_deliveries(retried, rejected), broker)

    assert set(requeue) == {1}
    assert broker.published == [(RETRY_EXCHANGE, retry_routing_key(INSTANCE, 0.2))]
    [failed] = [entry for entry in logs if entry["event"] == "worker.batch_failed"]
    assert failed["requeued"] == 1 and "not a broker failure" in failed["error"]
    assert failed["message_ids"] == [rejected.id]


class _NulReference(MemoryBackend):
    """A back-end whose reference for requests described "NUL" holds a NUL character, which
    PostgreSQL stores in no text column."""

    def submit(self, request: ServiceRequest) -> Receipt:
        receipt = super().submit(request)
        if request.description == "NUL":
            self.created[request.id] = "WO\x00-2"
            return Receipt(request_id=request.id, reference="WO\x00-2")
        return receipt


def test_a_receipt_the_store_refuses_dead_letters_its_message_and_records_the_others(
    postgres_url: str,
) -> None:
    store = Store.open(postgres_url)
    try:
        kept, refused = new_request(store), new_request(store, description="NUL")
        worker = CommandWorker(Route(INSTANCE, store, RetryPolicy()), _NulReference())
        broker = _Recording()

        with capture_logs() as logs:
            requeue = worker.handle_batch(_deliveries(kept, refused), broker)

        assert list(requeue) == []  # both settled: one recorded, one dead-lettered
        request = store.get_request(kept.subject)
        assert request is not None and [r.reference for r in request.backend_refs] == ["WO-00001"]
        assert submitted(store) == [kept.subject]
        [letter] = store.dead_letters(INSTANCE)
        assert letter.request_id == refused.subject
        assert letter.reason.startswith("PermanentError: the store refused the receipt")
        assert "\x00" not in letter.reason
        assert broker.published == [(DEAD_EXCHANGE, INSTANCE)]
        assert [e["event"] for e in logs].count("worker.receipts_not_recorded") == 1
    finally:
        store.close()


class _Echoing(MemoryBackend):
    """A back-end whose refusal quotes the reporter's contact details, as some do (Ada: the
    reporter's first name, masked as a word in any case; Adams is another word)."""

    def submit(self, request: ServiceRequest) -> Receipt:
        raise PermanentError(
            "contact zed.privacy@example.org tel 555-0199 (reporter Ada, ADA rule, Adams St) "
            "rejected"
        )


def test_a_backends_error_text_is_kept_and_sent_without_contact_details(store: Store) -> None:
    refused = new_request(store)
    worker = CommandWorker(Route(INSTANCE, store, RetryPolicy()), _Echoing())

    with capture_logs() as logs:
        assert list(worker.handle_batch(_deliveries(refused), _Recording())) == []

    trail = store.audit_trail(refused.subject)
    assert "Ada " not in str(logs) and "Ada," not in str([a.details for a in trail])
    [letter] = store.dead_letters(INSTANCE)
    [failed] = [
        r.envelope for r in store.pending_outbox() if r.envelope.type is EventType.DELIVERY_FAILED
    ]
    for reason in (letter.reason, failed.data["reason"]):
        assert "zed.privacy" not in reason and "555-0199" not in reason
        assert reason == (
            "PermanentError: contact [redacted-email] tel [redacted-phone] (reporter [redacted], "
            "[redacted] rule, Adams St) rejected"
        )
