"""The broker's dead-letter queues, drained into the store (`civicbus dead keep`).

A worker that gives up on a message records it in the store, then publishes it to its route's
dead-letter queue with the reason in `x-civicbus-reason`. The broker also dead-letters on its
own: a message delivered more often than the work queue's delivery limit (a worker that keeps
dying on it) arrives there with no reason of ours, and is in no store table. Nothing else reads
these queues, so without a keeper they only grow, and the second kind never shows in
`civicbus dead list`.

The keeper consumes them. A message with our reason header is already in the store: it is
acked. Any other is recorded as a dead letter (the reason from the broker's `x-death` header),
audited, and acked only after that transaction committed; a crash in between redelivers it,
and the store, holding it as a waiting dead letter already, takes it as a repeat.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

import pika
import structlog

from bus.broker.connection import BROKER_ERRORS, close_quietly, connect_with_retry
from bus.broker.topology import dead_queue
from bus.store import Store, StoreUnavailable
from bus.worker import REASON_HEADER

log = structlog.get_logger(__name__)

ACTOR = "dead-letter-keeper"
#: Messages taken from the broker at once.
PREFETCH = 50
#: Seconds between looks for dead-letter queues that appeared since (new subscriptions).
RESCAN_S = 30.0
#: Seconds to wait before trying again when the store cannot take a dead letter.
STORE_RETRY_S = 5.0


def broker_reason(headers: dict[str, Any]) -> str:
    """Why the broker dead-lettered a message, in words, from its `x-death` header."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return "dead-lettered by the broker (no x-death header)"
    death = deaths[0]
    reason = _text(death.get("reason")) or "unknown"
    queue = _text(death.get("queue")) or "?"
    if reason == "delivery_limit":
        return (
            f"the broker dead-lettered it after too many deliveries from {queue} "
            "(a worker kept failing without settling it, e.g. crashing)"
        )
    return f"the broker dead-lettered it from {queue}: {reason}"


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _stored_form(body: bytes) -> dict[str, Any] | str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
    return data if isinstance(data, dict) else body.decode("utf-8", "replace")


class DeadQueueKeeper:
    """Drains the dead-letter queues of `routes()` (adapter instances, subscriptions)."""

    def __init__(
        self,
        amqp_url: str | None,
        store: Store,
        routes: Callable[[], Collection[str]],
        *,
        stop: threading.Event | None = None,
    ) -> None:
        self.amqp_url = amqp_url
        self.store = store
        self.routes = routes
        self.stop = stop or threading.Event()
        self._consuming: set[str] = set()

    def run(self) -> None:
        """Keep draining until `stop` is set, reconnecting when the broker goes away."""
        log.info("dead_queues.started")
        while not self.stop.is_set():
            connection = connect_with_retry(self.amqp_url, stop=self.stop)
            try:
                self._drain(connection)
            except BROKER_ERRORS as exc:
                log.warning("dead_queues.connection_lost", error=str(exc))
            except StoreUnavailable as exc:
                # The message in hand was not acked: it comes back after the store does.
                log.warning("dead_queues.store_unavailable", error=str(exc))
                self.stop.wait(STORE_RETRY_S)
            finally:
                self._consuming.clear()
                close_quietly(connection)
        log.info("dead_queues.stopped")

    def _drain(self, connection: Any) -> None:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=PREFETCH)
        next_scan = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_scan:
                self._consume_new_queues(connection, channel)
                next_scan = time.monotonic() + RESCAN_S
            connection.process_data_events(time_limit=0.5)

    def _consume_new_queues(self, connection: Any, channel: Any) -> None:
        for route in sorted(set(self.routes()) - self._consuming):
            queue = dead_queue(route)
            if not _exists(connection, queue):
                continue  # not declared yet (its worker has not started): looked for again later
            channel.basic_consume(queue, self._on_message_for(route))
            self._consuming.add(route)
            log.info("dead_queues.draining", route=route, queue=queue)

    def _on_message_for(self, route: str) -> Callable[..., None]:
        def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            self.keep(route, properties, body)
            channel.basic_ack(method.delivery_tag)

        return on_message

    def keep(self, route: str, properties: pika.BasicProperties, body: bytes) -> bool:
        """Record one message of `route`'s dead-letter queue unless the store has it already;
        True when it was recorded here."""
        headers = dict(properties.headers or {})
        if REASON_HEADER in headers:
            return False  # the worker recorded it before publishing it here
        message_id = properties.message_id or f"sha256:{sha256(body).hexdigest()[:32]}"
        envelope = _stored_form(body)
        request_id = envelope.get("subject") if isinstance(envelope, dict) else None
        reason = broker_reason(headers)
        attempts = headers.get("x-delivery-count")
        with self.store.transaction() as tx:
            letter = tx.record_dead_letter(
                instance=route,
                message_id=message_id,
                request_id=request_id if isinstance(request_id, str) else None,
                reason=reason,
                envelope=envelope,
                attempts=attempts if isinstance(attempts, int) and attempts > 0 else 1,
                at=datetime.now(UTC),
            )
            if letter is None:
                return False  # a redelivery after our ack was cut: recorded and audited then
            tx.audit(
                actor=ACTOR,
                action="dead_lettered",
                request_id=request_id if isinstance(request_id, str) else None,
                message_id=message_id,
                outcome="error",
                details={"route": route, "reason": reason},
            )
        log.warning(
            "dead_queues.broker_dead_letter",
            route=route,
            message_id=message_id,
            request_id=request_id,
            correlation_id=envelope.get("correlationid") if isinstance(envelope, dict) else None,
            reason=reason,
        )
        return True


def _exists(connection: Any, queue: str) -> bool:
    # A passive declare of a missing queue closes its channel: use a throwaway one.
    probe = connection.channel()
    try:
        probe.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    close_quietly(probe)
    return True
