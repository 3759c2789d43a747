"""The path of one event to a webhook subscriber: decode → deliver (signed POST) → audit → ack.

Events must reach a subscriber in order per request, so a failing delivery is retried here,
holding the queue (one message at a time), instead of through the retry tiers, which would let
later events overtake it. Only a permanent refusal, or a subscriber down for longer than the
whole retry schedule, sends the event to the dead letter channel. A store that cannot take
the audit entry of an attempt is not a failed delivery: the entry is retried for a while, and
then the event goes back to the head of its queue (a classic queue, without a delivery limit)
to be tried again once the store answers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from adapters import PermanentError
from adapters.webhook import WebhookAdapter
from bus.logging import request_context
from bus.store import StoreUnavailable
from bus.worker._consumer import Broker, ConnectionLost
from bus.worker._delivery import Delivery, MalformedMessage, decode
from bus.worker._failures import Route, dead_letter, describe
from bus.worker._heartbeat import Slot
from bus.worker._retry import call_with_retries, next_tier, retry_after
from schemas.events import Envelope

log = structlog.get_logger(__name__)

#: Pauses between tries of an audit entry the store could not take (about a minute in all, so
#: that a database restart is ridden out while the event keeps its place and attempt count).
_AUDIT_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class StopRequested(ConnectionLost):
    """The worker is stopping while a delivery waits: leave the event unacked for next time."""


@dataclass
class Rounds:
    """The delivery rounds of one event so far: how many began, and when the first failed.
    (Retried in place, an event carries no count in its headers as a retry tier's does.)"""

    tried: int = 0
    first_failed_at: datetime | None = None


@dataclass(frozen=True)
class SubscriptionWorker:
    """Delivers the events of one subscription's queue to its webhook."""

    route: Route
    adapter: WebhookAdapter
    stopping: threading.Event = field(default_factory=threading.Event)
    #: Where the heartbeat sees the event in hand, since the start of its current round.
    slot: Slot = field(default_factory=Slot)

    def __call__(self, delivery: Delivery, broker: Broker) -> None:
        try:
            envelope = decode(delivery)
        except MalformedMessage as exc:
            self.give_up(delivery, broker, None, describe(exc))
            return
        # Every line logged for this event (the webhook client's included) carries its ids.
        rounds = Rounds()
        with request_context(envelope.subject, envelope.correlationid, delivery.key):
            try:
                self.deliver_in_order(delivery, envelope, rounds)
            except (StopRequested, StoreUnavailable):
                # Not a delivery failure: the consumer requeues the event, still first in line.
                raise
            except Exception as exc:
                reason = describe(exc)
                if not isinstance(exc, PermanentError):
                    reason = f"gave up after {rounds.tried} attempts; last error {reason}"
                self.give_up(delivery, broker, envelope, reason, rounds)
                return
            self.audit(envelope, delivery, "delivered", "ok", {"attempts": rounds.tried})

    def give_up(
        self,
        delivery: Delivery,
        broker: Broker,
        envelope: Envelope | None,
        reason: str,
        rounds: Rounds | None = None,
    ) -> None:
        """The dead letter channel for an event this subscriber will not get, after `rounds`
        (none for a message that is no event)."""
        dead_letter(
            self.route,
            delivery,
            broker,
            reason=reason,
            envelope=envelope,
            failed_at=datetime.now(UTC),
            attempts=rounds.tried if rounds else None,
            first_failed_at=rounds.first_failed_at if rounds else None,
        )

    def deliver_in_order(self, delivery: Delivery, envelope: Envelope, rounds: Rounds) -> None:
        """POST the event until it is accepted, counting the rounds in `rounds`."""
        policy = self.route.policy
        rounds.tried = 1
        while True:
            attempt = rounds.tried
            # Each round starts the clock anew: waiting between rounds is not hanging, and
            # the failing subscriber is reported as such.
            self.slot.begin(delivery.key, envelope.subject)
            try:
                call_with_retries(
                    lambda: self.adapter.deliver(
                        delivery.body, event_id=envelope.id, traceparent=envelope.traceparent
                    ),
                    attempts=policy.immediate_attempts,
                    on_error=lambda _n, _exc: None,
                )
                return
            except PermanentError:
                raise
            except Exception as exc:
                if rounds.first_failed_at is None:
                    rounds.first_failed_at = datetime.now(UTC)
                delay = next_tier(policy, attempt, retry_after(exc))
                self.audit(
                    envelope,
                    delivery,
                    "attempt",
                    "error",
                    {"attempt": attempt, "error": describe(exc), "next_delay_seconds": delay},
                )
                if delay is None:
                    raise
                log.info(
                    "webhook.waiting",
                    route=self.route.name,
                    event_id=envelope.id,
                    attempt=attempt,
                    delay=delay,
                )
                if self.stopping.wait(delay):
                    raise StopRequested(f"stopping while event {envelope.id} waits") from exc
                rounds.tried += 1

    def audit(
        self,
        envelope: Envelope,
        delivery: Delivery,
        action: str,
        outcome: str,
        details: dict[str, object],
    ) -> None:
        """Write an audit entry, waiting out a store blip; StoreUnavailable if it lasts."""
        for pause in (*_AUDIT_PAUSES, None):
            try:
                with self.route.store.transaction() as tx:
                    tx.audit(
                        actor=self.route.actor,
                        action=action,
                        request_id=envelope.subject,
                        message_id=delivery.key,
                        outcome=outcome,
                        details={
                            "subscription": self.route.name,
                            "type": envelope.type.value,
                            **details,
                        },
                    )
                return
            except StoreUnavailable as exc:
                if pause is None:
                    raise
                log.warning(
                    "webhook.audit_unavailable",
                    route=self.route.name,
                    event_id=envelope.id,
                    action=action,
                    error=str(exc),
                    retry_in=pause,
                )
                if self.stopping.wait(pause):
                    raise StopRequested(f"stopping while event {envelope.id} waits") from exc
