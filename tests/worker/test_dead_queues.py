"""The dead-letter keeper against the real broker: what the broker dead-lettered by itself
becomes a dead letter in the store; what a worker put there (already stored) is only drained."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pika
import pytest
from worker_support import INSTANCE, channel_on, new_request, wait_until

from bus.broker.topology import (
    COMMANDS_EXCHANGE,
    DEAD_EXCHANGE,
    DELIVERY_LIMIT,
    command_routing_key,
    dead_queue,
    work_queue,
)
from bus.dead_queues import DeadQueueKeeper
from bus.store import DeadLetterState, Store
from bus.worker import REASON_HEADER

pytestmark = pytest.mark.timeout(60)


def queue_depth(amqp_url: str, queue: str) -> int:
    with channel_on(amqp_url) as ch:
        return int(ch.queue_declare(queue, passive=True).method.message_count)


@pytest.fixture
def keeper(topology: str, store: Store) -> Iterator[DeadQueueKeeper]:
    # "sub.404" has no dead-letter queue: the keeper must skip it and keep going.
    running = DeadQueueKeeper(topology, store, lambda: [INSTANCE, "sub.404"])
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    running.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_message_the_broker_dead_lettered_becomes_a_listed_dead_letter(
    topology: str, store: Store, keeper: DeadQueueKeeper
) -> None:
    envelope = new_request(store)
    with channel_on(topology) as ch:
        ch.confirm_delivery()
        ch.basic_publish(
            COMMANDS_EXCHANGE,
            command_routing_key(INSTANCE),
            envelope.model_dump_json().encode(),
            pika.BasicProperties(message_id=envelope.id, delivery_mode=2),
        )
        # A consumer that never settles it (as a worker crashing on it would): the broker
        # dead-letters it itself once its delivery limit is passed.
        for _ in range(DELIVERY_LIMIT + 5):
            method, _props, _body = ch.basic_get(work_queue(INSTANCE))
            if method is None:
                break
            ch.basic_nack(method.delivery_tag, requeue=True)

    wait_until(lambda: store.dead_letters(INSTANCE, DeadLetterState.DEAD), timeout=20)
    (letter,) = store.dead_letters(INSTANCE, DeadLetterState.DEAD)
    assert (letter.message_id, letter.request_id) == (envelope.id, envelope.subject)
    assert "too many deliveries" in letter.reason and work_queue(INSTANCE) in letter.reason
    assert isinstance(letter.envelope, dict) and letter.envelope["id"] == envelope.id
    trail = store.audit_trail(envelope.subject)
    assert [(e.actor, e.action) for e in trail][-1] == ("dead-letter-keeper", "dead_lettered")
    wait_until(lambda: queue_depth(topology, dead_queue(INSTANCE)) == 0, timeout=10)


def test_a_dead_letter_a_worker_stored_is_drained_without_a_second_record(
    topology: str, store: Store, keeper: DeadQueueKeeper
) -> None:
    with channel_on(topology) as ch:
        ch.confirm_delivery()
        for message_id, headers in (("m-1", {REASON_HEADER: "rejected"}), ("m-2", {})):
            ch.basic_publish(
                DEAD_EXCHANGE,
                INSTANCE,
                b'{"id": "%s"}' % message_id.encode(),
                pika.BasicProperties(message_id=message_id, headers=headers),
            )
    # One consumer takes them in order: once m-2 is stored, m-1 was handled before it.
    wait_until(lambda: store.dead_letters(INSTANCE, DeadLetterState.DEAD), timeout=20)
    letters = store.dead_letters(INSTANCE, DeadLetterState.DEAD)
    assert [(d.message_id, d.reason) for d in letters] == [
        ("m-2", "dead-lettered by the broker (no x-death header)")
    ]


def test_a_message_redelivered_to_the_keeper_after_its_ack_was_cut_is_kept_once(
    store: Store,
) -> None:
    keeper = DeadQueueKeeper(None, store, lambda: [INSTANCE])
    envelope = new_request(store)
    properties = pika.BasicProperties(message_id=envelope.id, headers={"x-delivery-count": 20})
    body = envelope.model_dump_json().encode()

    assert keeper.keep(INSTANCE, properties, body)
    assert not keeper.keep(INSTANCE, properties, body)  # the same message, redelivered

    assert [d.attempts for d in store.dead_letters(INSTANCE)] == [20]
    trail = [e.action for e in store.audit_trail(envelope.subject)]
    assert trail.count("dead_lettered") == 1
