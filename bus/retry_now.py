"""Retry now: an instance's commands waiting in its retry tiers go back to its work queue at once
(`civicbus adapters retry-now INSTANCE`).

After a back-end outage its commands sit in the tiers until their delay runs out, up to the
longest tier (30 minutes by default). Once the back-end answers again (`civicbus adapters check`)
an operator need not wait: each waiting message is audited (retried_now), published to the work
queue with its properties and headers as they are (its attempt count included), confirmed, and
only then acked in its tier. A crash between publish and ack leaves it in both places: the
worker's idempotent consumer takes the copy it meets second as a duplicate. A store that cannot
take the audit entry stops the move there, the message still in its tier. Only the messages in
a tier when it is first looked at are moved, so a back-end still failing cannot keep them
circling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog

from bus.broker.connection import broker_errors, close_quietly, connect
from bus.broker.topology import (
    COMMANDS_EXCHANGE,
    command_routing_key,
    declare_topology,
    retry_delays,
    retry_queue,
)
from bus.config import InstanceConfig
from bus.store import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Moved:
    """What one retry-now moved: messages by tier queue."""

    instance: str
    by_tier: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_tier.values())


def retry_now(
    amqp_url: str, store: Store, instance: str, config: InstanceConfig, *, actor: str
) -> Moved:
    """Move the instance's waiting commands from its retry tiers to its work queue, audited
    per request; raises BrokerUnavailable when the broker cannot be reached or refuses."""
    connection = connect(amqp_url)
    by_tier: dict[str, int] = {}
    try:
        with broker_errors(f"moving {instance}'s retry tiers to its work queue"):
            channel = connection.channel()
            declare_topology(channel, {instance: config})  # a worker never started: empty tiers
            channel.confirm_delivery()
            for delay in retry_delays(config):
                queue = retry_queue(instance, delay)
                by_tier[queue] = _move(channel, store, instance, queue, actor)
    finally:
        close_quietly(connection)
    moved = Moved(instance, by_tier)
    log.info("retry_now.done", instance=instance, moved=moved.total)
    return moved


def _move(channel: Any, store: Store, instance: str, queue: str, actor: str) -> int:
    waiting = channel.queue_declare(queue, passive=True).method.message_count
    moved = 0
    while moved < waiting:
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break  # expired into the work queue meanwhile, or taken by another retry-now
        # Audited before it moves: a store failing here stops retry-now with the message still
        # in its tier (unacked), so no move goes unaudited; a broker failing after the entry
        # leaves one entry too many, the lesser harm.
        with store.transaction() as tx:
            tx.audit(
                actor=actor,
                action="retried_now",
                request_id=_request_id(body),
                message_id=properties.message_id,
                details={"instance": instance, "from": queue},
            )
        # Confirmed (and routed: mandatory) before the tier lets go of it.
        channel.basic_publish(
            COMMANDS_EXCHANGE, command_routing_key(instance), body, properties, mandatory=True
        )
        channel.basic_ack(method.delivery_tag)
        moved += 1
    return moved


def _request_id(body: bytes) -> str | None:
    """The request a command is about (its envelope's subject), if the body says."""
    try:
        subject = json.loads(body).get("subject")
    except (ValueError, AttributeError):
        return None
    return subject if isinstance(subject, str) else None
