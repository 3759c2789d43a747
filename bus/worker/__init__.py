"""Adapter workers: consume an instance's commands (or subscribers' events) and deliver them,
with an idempotent consumer, quick retries, retry tiers and a dead letter channel.

`command_consumer` and `subscription_consumer` build a ready `Consumer`; `run()` it, `stop()`
it (SIGTERM does, when `run(install_signal_handlers=True)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters import Adapter
from adapters.webhook import WebhookAdapter
from bus.broker.topology import declare_topology, work_queue
from bus.config import InstanceConfig, RetryPolicy
from bus.store import Store
from bus.worker._commands import CommandWorker
from bus.worker._consumer import Broker, Consumer, Handler
from bus.worker._delivery import ATTEMPT_HEADER, FIRST_FAILURE_HEADER, REASON_HEADER, Delivery
from bus.worker._events import SubscriptionWorker
from bus.worker._failures import Route

__all__ = [
    "ATTEMPT_HEADER",
    "FIRST_FAILURE_HEADER",
    "REASON_HEADER",
    "Broker",
    "CommandWorker",
    "Consumer",
    "Delivery",
    "Handler",
    "Route",
    "SubscriptionWorker",
    "command_consumer",
    "subscription_consumer",
]


def command_consumer(
    amqp_url: str, store: Store, instance: str, config: InstanceConfig, adapter: Adapter
) -> Consumer:
    """A consumer of `civicbus.work.<instance>` running commands through `adapter`."""

    def declare(channel: Any) -> None:
        declare_topology(channel, {instance: config})

    consumer = Consumer(amqp_url, prefetch=config.prefetch, name=instance, declare=declare)
    route = Route(instance, store, config.retry)
    consumer.consume(work_queue(instance), CommandWorker(route, adapter))
    return consumer


def subscription_consumer(
    amqp_url: str,
    store: Store,
    subscriptions: Sequence[tuple[str, str, WebhookAdapter]],
    *,
    policy: RetryPolicy,
    declare: Any = None,
) -> Consumer:
    """A consumer of webhook subscriptions' queues, one event at a time per subscription.

    `subscriptions` holds (route name, queue, webhook adapter) per subscription.
    """
    consumer = Consumer(amqp_url, prefetch=1, name="subscriptions", declare=declare)
    for name, queue_name, adapter in subscriptions:
        route = Route(name, store, policy, announce_failures=False)
        consumer.consume(queue_name, SubscriptionWorker(route, adapter, consumer.stop_event))
    return consumer
