"""Where a failed message goes next: a retry tier, or the dead letter channel.

The workers call these inside the message's `request_context`: the lines logged here carry the
request and correlation ids from it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from adapters import PermanentError
from bus.broker.topology import (
    DEAD_EXCHANGE,
    EVENTS_EXCHANGE,
    RETRY_EXCHANGE,
    event_routing_key,
    retry_routing_key,
)
from bus.config import RetryPolicy
from bus.redaction import redact_text
from bus.store import DeadLetter, Store
from bus.worker._consumer import Broker
from bus.worker._delivery import (
    ATTEMPT_HEADER,
    FIRST_FAILURE_HEADER,
    REASON_HEADER,
    Delivery,
    MalformedMessage,
)
from bus.worker._retry import next_tier, retry_after
from schemas.events import DeliveryFailure, Envelope, EventType

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Route:
    """Who consumes a queue, for audit entries and dead letters: an adapter instance or a
    webhook subscription (`sub.<id>`), with its redelivery policy."""

    name: str
    store: Store
    policy: RetryPolicy
    #: Emit `civicbus.request.delivery_failed` on a dead letter. Off for webhook subscriptions:
    #: a subscriber that is down must not feed events about itself back to itself.
    announce_failures: bool = True

    @property
    def actor(self) -> str:
        return f"worker:{self.name}"


def describe(exc: BaseException) -> str:
    """A one-line reason for operators: the error class and its message. Adapters keep
    personal data out of their messages, but a back-end's own error text may quote the
    request's contact details: e-mail addresses and phone numbers in it are masked, as in the
    logs and the audit, for the reason is stored with dead letters and sent in events."""
    # NUL spelled out: PostgreSQL stores no NUL in text, and a reason is stored with its letter.
    text = redact_text(str(exc).strip().replace("\x00", "\\x00")) or "(no message)"
    return f"{type(exc).__name__}: {text}"[:1000]


def schedule_retry_or_dead_letter(
    route: Route,
    delivery: Delivery,
    broker: Broker,
    exc: BaseException,
    envelope: Envelope | None,
) -> None:
    """After a delivery round failed: a retry tier for a transient error with attempts left,
    otherwise the dead letter channel. The store is written before the broker: on
    StoreUnavailable nothing was published."""
    now = datetime.now(UTC)
    if isinstance(exc, PermanentError | MalformedMessage):
        dead_letter(route, delivery, broker, reason=describe(exc), envelope=envelope, failed_at=now)
        return
    delay = next_tier(route.policy, delivery.attempt, retry_after(exc))
    if delay is None:
        reason = f"gave up after {delivery.attempt} attempts; last error {describe(exc)}"
        dead_letter(route, delivery, broker, reason=reason, envelope=envelope, failed_at=now)
        return
    # The store first, as for a dead letter: a store failure then leaves nothing published,
    # and the caller may try again without putting a second copy in a tier.
    with route.store.transaction() as tx:
        tx.audit(
            actor=route.actor,
            action="retry_scheduled",
            request_id=envelope.subject if envelope else None,
            message_id=delivery.key,
            outcome="error",
            details={"attempt": delivery.attempt, "delay_seconds": delay, "error": describe(exc)},
        )
    broker.publish(
        RETRY_EXCHANGE,
        retry_routing_key(route.name, delay),
        delivery.body,
        headers=delivery.failure_headers(now),
        message_id=delivery.message_id,
        properties=delivery.properties,
    )
    # A warning, with the error: a back-end failing for half an hour must show in a log kept at
    # warning level, where each quick try's `worker.attempt_failed` (info) does not.
    log.warning(
        "worker.retry_scheduled",
        route=route.name,
        message_id=delivery.key,
        attempt=delivery.attempt,
        delay=delay,
        error=describe(exc),
    )


def dead_letter(
    route: Route,
    delivery: Delivery,
    broker: Broker,
    *,
    reason: str,
    envelope: Envelope | None,
    failed_at: datetime,
    attempts: int | None = None,
    first_failed_at: datetime | None = None,
) -> None:
    """Dead letter channel: keep the message in the store (for `civicbus dead`), put it on the
    dead-letter queue with its reason, audit it, and announce `delivery_failed`.

    `attempts` and `first_failed_at`: the rounds tried and when the first failed, from a route
    that retries in place (a webhook subscription); by default, the delivery's headers say.
    The store commits before the publish: a message redelivered because the publish or the ack
    was cut is already a waiting dead letter, and is audited as a duplicate, neither counted
    nor announced again."""
    request_id = envelope.subject if envelope else None
    attempts = attempts or delivery.attempt
    first_failure = first_failed_at or delivery.first_failure or failed_at
    with route.store.transaction() as tx:
        letter = tx.record_dead_letter(
            instance=route.name,
            message_id=delivery.key,
            request_id=request_id,
            reason=reason,
            attempts=attempts,
            at=failed_at,
            first_failed_at=first_failure,
            envelope=_stored_form(delivery, envelope),
        )
        details: dict[str, Any] = {
            "reason": reason,
            "attempts": attempts,
            "first_failure": first_failure.isoformat(),
        }
        if letter is None:
            details["note"] = "already a dead letter: not counted or announced again"
        tx.audit(
            actor=route.actor,
            action="dead_lettered",
            request_id=request_id,
            message_id=delivery.key,
            outcome="error" if letter is not None else "duplicate",
            details=details,
        )
        if letter is not None and envelope is not None and route.announce_failures:
            tx.add_outbox(
                _delivery_failed(route.name, envelope, reason, attempts, letter),
                exchange=EVENTS_EXCHANGE,
                routing_key=event_routing_key(EventType.DELIVERY_FAILED, route.name),
            )
    headers = {
        **delivery.headers,
        REASON_HEADER: reason,
        ATTEMPT_HEADER: attempts,
        FIRST_FAILURE_HEADER: first_failure.astimezone(UTC).isoformat(),
    }
    broker.publish(
        DEAD_EXCHANGE,
        route.name,
        delivery.body,
        headers=headers,
        message_id=delivery.key,
        properties=delivery.properties,
    )
    log.warning(
        "worker.dead_lettered",
        route=route.name,
        message_id=delivery.key,
        request_id=request_id,
        attempts=attempts,
        reason=reason,
        duplicate=letter is None,
    )


def _stored_form(delivery: Delivery, envelope: Envelope | None) -> dict[str, Any] | str:
    if envelope is not None:
        return envelope.model_dump(mode="json")
    try:
        data = json.loads(delivery.body)
    except ValueError:
        return delivery.body.decode("utf-8", "replace")
    return data if isinstance(data, dict) else delivery.body.decode("utf-8", "replace")


#: Namespace of `delivery_failed` events' ids: derived from the dead letter (route, message id,
#: attempts so far), so that each dead-lettering of a message has one id however often it is
#: written, and a replayed message failing again gets a new one.
_FAILED_IDS = uuid.UUID("8d2e4b7a-61c3-4f05-a9d8-3e7c1b5f2a90")


def _delivery_failed(
    route: str, cause: Envelope, reason: str, attempts: int, letter: DeadLetter
) -> Envelope:
    return Envelope(
        id=str(uuid.uuid5(_FAILED_IDS, f"{route}\n{letter.message_id}\n{letter.attempts}")),
        type=EventType.DELIVERY_FAILED,
        subject=cause.subject,
        data=DeliveryFailure(
            instance=route, reason=reason, attempts=attempts, message_id=cause.id
        ).model_dump(mode="json"),
        correlationid=cause.correlationid,
        traceparent=cause.traceparent,
    )
