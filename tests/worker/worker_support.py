"""Helpers of the worker tests: a small in-memory back-end adapter, publishing as the relay
does, running a consumer on a thread, waiting for a condition."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pika

from adapters import Adapter, Health, PermanentError, Receipt, TransientError
from bus.broker.topology import COMMANDS_EXCHANGE, work_queue
from bus.config import InstanceConfig, RetryPolicy
from bus.store import Store
from bus.worker import Consumer
from schemas.events import Envelope, EventType
from schemas.model import Location, Reporter, ServiceRequest
from tests.waiting import wait_until

INSTANCE = "roads"

#: Tiny tiers so retries happen within a test.
FAST = InstanceConfig(
    kind="memory",
    retry=RetryPolicy(immediate_attempts=2, tiers=[0.2, 0.4], max_attempts=4),
    prefetch=4,
)


class MemoryBackend(Adapter):
    """A back-end in memory: fails transiently `transient_failures` times, rejects requests
    whose description contains "REJECT" (until `accept_all`), and records what it created."""

    kind = "test-memory"

    def __init__(self, transient_failures: int = 0) -> None:
        super().__init__(INSTANCE, {})
        self.transient_failures = transient_failures
        self.accept_all = False
        self.created: dict[str, str] = {}
        self.calls = 0
        self.lock = threading.Lock()

    def submit(self, request: ServiceRequest) -> Receipt:
        with self.lock:
            self.calls += 1
            if self.transient_failures > 0:
                self.transient_failures -= 1
                raise TransientError(f"work-order service busy (request {request.id})")
            if "REJECT" in (request.description or "") and not self.accept_all:
                raise PermanentError(f"request {request.id}: field LANE is not a known lane code")
            reference = f"WO-{len(self.created) + 1:05d}"
            self.created[request.id] = reference
            return Receipt(request_id=request.id, reference=reference)

    def find(self, request_id: str) -> Receipt | None:
        with self.lock:
            ref = self.created.get(request_id)
        return Receipt(request_id=request_id, reference=ref, created=False) if ref else None

    def check(self) -> Health:
        return Health(ok=True)


@contextmanager
def channel_on(amqp_url: str) -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        yield conn.channel()
    finally:
        conn.close()


def new_request(store: Store, *, description: str = "Deep pothole by the school") -> Envelope:
    """Store a request (with a reporter) and return its `request.created` envelope."""
    now = datetime.now(UTC)
    request = ServiceRequest(
        id=f"req-{uuid.uuid4().hex[:10]}",
        jurisdiction="springfield.example",
        service_code="POTHOLE",
        service_name="Pothole",
        description=description,
        location=Location(lat=52.1, long=4.3),
        reporter=Reporter(email="resident@example.org", first_name="Ada"),
        requested_at=now,
        updated_at=now,
    )
    with store.transaction() as tx:
        tx.add_request(request)
    return Envelope(
        type=EventType.CREATED,
        subject=request.id,
        data=request.without_personal_data().model_dump(mode="json"),
        correlationid=request.id,
    )


def publish(
    amqp_url: str,
    body: bytes | Envelope,
    *,
    routing_key: str = INSTANCE,
    content_type: str | None = None,
) -> None:
    """Publish a command as the relay does: persistent, confirmed."""
    if isinstance(body, Envelope):
        message_id: str | None = body.id
        body = body.model_dump_json().encode()
    else:
        message_id = None
    with channel_on(amqp_url) as ch:
        ch.confirm_delivery()
        ch.basic_publish(
            COMMANDS_EXCHANGE,
            routing_key,
            body,
            properties=pika.BasicProperties(
                delivery_mode=2, message_id=message_id, content_type=content_type
            ),
            mandatory=True,
        )


def queue_depth(amqp_url: str, queue: str) -> int:
    with channel_on(amqp_url) as ch:
        return int(ch.queue_declare(queue=queue, passive=True).method.message_count)


def relay_outbox(store: Store, amqp_url: str) -> int:
    """Publish pending outbox rows and mark them sent: the relay's job in miniature, so the
    worker tests do not depend on the relay's routing."""
    rows = store.pending_outbox()
    with channel_on(amqp_url) as ch:
        ch.confirm_delivery()
        for row in rows:
            ch.basic_publish(
                row.exchange,
                row.routing_key,
                row.envelope.model_dump_json().encode(),
                properties=pika.BasicProperties(delivery_mode=2, message_id=row.envelope.id),
            )
    store.mark_sent([row.id for row in rows])
    return len(rows)


@contextmanager
def running(consumer: Consumer) -> Iterator[Consumer]:
    """Run a consumer on a thread for the duration of the block, then stop it cleanly."""
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        thread.join(timeout=20)
        assert not thread.is_alive(), "the consumer did not stop"


def published_if_routable(
    amqp_url: str, envelope: Envelope, *, routing_key: str = INSTANCE
) -> bool:
    """Publish the command; False when nothing was enqueued: no commands exchange yet (404), or
    no queue bound to it yet (returned unroutable). A worker declares its queue a moment before
    binding it: wait on this rather than on the queue."""
    try:
        publish(amqp_url, envelope, routing_key=routing_key)
    except pika.exceptions.UnroutableError:
        return False
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        return False
    return True


def actions(store: Store, request_id: str) -> list[tuple[str, str]]:
    """The request's audit trail as (action, outcome) pairs."""
    return [(e.action, e.outcome) for e in store.audit_trail(request_id)]


__all__ = [
    "FAST",
    "INSTANCE",
    "MemoryBackend",
    "actions",
    "channel_on",
    "new_request",
    "publish",
    "queue_depth",
    "relay_outbox",
    "running",
    "wait_until",
    "work_queue",
]
