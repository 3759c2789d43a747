"""The RabbitMQ topology of civicbus: names, arguments, idempotent declaration, definitions export.

Everything that names an exchange, a queue or a routing key lives here, so the relay, the
workers, the definitions file and the AsyncAPI document cannot drift apart:

- `civicbus.events` (topic): canonical events, key `request.<what>.<qualifier>`;
- `civicbus.commands` (direct): commands to an adapter instance, key = instance name;
- `civicbus.work.<instance>` (quorum, delivery limit, dead-letters to `civicbus.dead`);
- `civicbus.retry.<instance>.<N>s` (quorum, message TTL, dead-letters back to the work queue),
  reached through the direct exchange `civicbus.retry` with key `<instance>.<N>s`;
- `civicbus.dead.<instance>` (quorum), bound to the direct exchange `civicbus.dead`, key = instance.

Retry tiers are quorum queues: RabbitMQ 3.10 supports `x-message-ttl` on quorum queues, and with
`x-dead-letter-strategy: at-least-once` an expired message is dead-lettered with an internal
publisher confirm, so a message waiting in a tier survives a node restart and is never lost on
its way back (a classic queue would dead-letter at-most-once). At-least-once dead-lettering
requires `x-overflow: reject-publish`; no queue sets a length limit, so overflow never applies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from bus.config import InstanceConfig
from schemas.events import EventType

log = structlog.get_logger(__name__)

EVENTS_EXCHANGE = "civicbus.events"
COMMANDS_EXCHANGE = "civicbus.commands"
RETRY_EXCHANGE = "civicbus.retry"
DEAD_EXCHANGE = "civicbus.dead"

#: Last-resort guard against poison loops: after this many deliveries of one message (acks
#: missing, consumers crashing) the broker dead-letters it itself. The worker's own attempt
#: count (retry tiers) normally dead-letters long before.
DELIVERY_LIMIT = 10

#: The queue arguments every civicbus queue shares (see the module docstring).
_QUORUM = {"x-queue-type": "quorum"}
_SAFE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def work_queue(instance: str) -> str:
    """The queue an adapter instance's worker consumes."""
    return f"civicbus.work.{instance}"


def dead_queue(instance: str) -> str:
    """The dead-letter queue of an adapter instance."""
    return f"civicbus.dead.{instance}"


def tier_label(delay: float) -> str:
    """A retry tier's name part: `5s`, `300s`, `0.2s`."""
    return f"{delay:g}s"


def retry_queue(instance: str, delay: float) -> str:
    """The TTL queue holding an instance's messages for `delay` seconds before the next attempt."""
    return f"civicbus.retry.{instance}.{tier_label(delay)}"


def retry_routing_key(instance: str, delay: float) -> str:
    """The key under which the worker publishes to `civicbus.retry` to reach a tier."""
    return f"{instance}.{tier_label(delay)}"


def command_routing_key(instance: str) -> str:
    """The key of a command for an adapter instance on `civicbus.commands`."""
    return instance


def event_routing_key(event_type: EventType, qualifier: str) -> str:
    """The key of an event on `civicbus.events`: e.g. `request.created.POTHOLE`.

    The qualifier is the service code (created, taken_down), the status (status_changed,
    closed) or the adapter instance (routed, submitted, delivery_failed); consumers bind with
    patterns such as
    `request.created.*` or `request.#`. A dot in the qualifier (service codes may hold one)
    becomes `_`, so the key keeps exactly three words.
    """
    if not qualifier:
        raise ValueError(f"an event routing key for {event_type.short} needs a qualifier")
    return f"{event_type.short}.{qualifier.replace('.', '_')}"


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    type: str  # "topic" or "direct"


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class BindingSpec:
    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True)
class Topology:
    """Every exchange, queue and binding civicbus needs for a set of adapter instances."""

    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...] = field(default=())
    bindings: tuple[BindingSpec, ...] = field(default=())


EXCHANGES = (
    ExchangeSpec(EVENTS_EXCHANGE, "topic"),
    ExchangeSpec(COMMANDS_EXCHANGE, "direct"),
    ExchangeSpec(RETRY_EXCHANGE, "direct"),
    ExchangeSpec(DEAD_EXCHANGE, "direct"),
)


def retry_delays(config: InstanceConfig) -> list[float]:
    """The instance's distinct retry tier delays, in the configured order."""
    return list(dict.fromkeys(config.retry.tiers))


def topology(instances: Mapping[str, InstanceConfig]) -> Topology:
    """The topology for these adapter instances, in declaration order (exchanges first)."""
    queues: list[QueueSpec] = []
    bindings: list[BindingSpec] = []
    for instance in sorted(instances):
        work = work_queue(instance)
        queues.append(
            QueueSpec(
                work,
                {
                    **_QUORUM,
                    "x-delivery-limit": DELIVERY_LIMIT,
                    "x-dead-letter-exchange": DEAD_EXCHANGE,
                    "x-dead-letter-routing-key": instance,
                    **_SAFE_DEAD_LETTERING,
                },
            )
        )
        bindings.append(BindingSpec(COMMANDS_EXCHANGE, work, command_routing_key(instance)))
        for delay in retry_delays(instances[instance]):
            tier = retry_queue(instance, delay)
            queues.append(
                QueueSpec(
                    tier,
                    {
                        **_QUORUM,
                        "x-message-ttl": max(1, round(delay * 1000)),
                        "x-dead-letter-exchange": COMMANDS_EXCHANGE,
                        "x-dead-letter-routing-key": command_routing_key(instance),
                        **_SAFE_DEAD_LETTERING,
                    },
                )
            )
            bindings.append(BindingSpec(RETRY_EXCHANGE, tier, retry_routing_key(instance, delay)))
        dead = dead_queue(instance)
        queues.append(QueueSpec(dead, dict(_QUORUM)))
        bindings.append(BindingSpec(DEAD_EXCHANGE, dead, instance))
    return Topology(EXCHANGES, tuple(queues), tuple(bindings))


class TopologyMismatch(Exception):
    """An exchange or queue exists on the broker with other settings than civicbus declares."""


def declare_topology(channel: Any, instances: Mapping[str, InstanceConfig]) -> Topology:
    """Declare every exchange, queue and binding on a pika BlockingChannel; safe to repeat.

    Raises TopologyMismatch (saying what differs and what to do) when an existing object has
    other arguments; the broker closes the channel in that case, so open a new one afterwards.
    """
    import pika.exceptions

    wanted = topology(instances)
    current = ""
    try:
        for ex in wanted.exchanges:
            current = f"exchange {ex.name}"
            channel.exchange_declare(exchange=ex.name, exchange_type=ex.type, durable=True)
        for q in wanted.queues:
            current = f"queue {q.name}"
            channel.queue_declare(queue=q.name, durable=True, arguments=q.arguments)
        for b in wanted.bindings:
            current = f"binding {b.exchange} -> {b.queue} ({b.routing_key})"
            channel.queue_bind(queue=b.queue, exchange=b.exchange, routing_key=b.routing_key)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:  # PRECONDITION_FAILED: exists with other settings
            raise
        raise TopologyMismatch(_mismatch_message(current, exc.reply_text)) from exc
    log.info(
        "topology.declared",
        exchanges=len(wanted.exchanges),
        queues=len(wanted.queues),
        bindings=len(wanted.bindings),
    )
    return wanted


def _mismatch_message(what: str, broker_says: str) -> str:
    kind, _, name = what.partition(" ")
    delete = "delete_queue" if kind == "queue" else "delete_exchange"
    return (
        f"{what} already exists with different settings than civicbus declares "
        f"(broker: {broker_says}). Arguments of an existing {kind} cannot be changed in place: "
        f"drain it, then remove it (rabbitmqctl -p <vhost> {delete} {name}) and start again so "
        f"civicbus re-declares it, or put the setting in a policy instead of a queue argument."
    )


def definitions(
    instances: Mapping[str, InstanceConfig], *, vhost: str = "/"
) -> dict[str, Sequence[dict[str, Any]]]:
    """The topology as a RabbitMQ definitions document (`rabbitmqctl import_definitions`)."""
    wanted = topology(instances)
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {
                "name": ex.name,
                "vhost": vhost,
                "type": ex.type,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for ex in wanted.exchanges
        ],
        "queues": [
            {
                "name": q.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": q.arguments,
            }
            for q in wanted.queues
        ],
        "bindings": [
            {
                "source": b.exchange,
                "vhost": vhost,
                "destination": b.queue,
                "destination_type": "queue",
                "routing_key": b.routing_key,
                "arguments": {},
            }
            for b in wanted.bindings
        ],
    }


def definitions_json(instances: Mapping[str, InstanceConfig], *, vhost: str = "/") -> str:
    """`definitions()` as the text committed in deploy/rabbitmq/definitions.json."""
    return json.dumps(definitions(instances, vhost=vhost), indent=2) + "\n"
