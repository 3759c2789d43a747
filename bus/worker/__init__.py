"""Adapter workers: consume an instance's commands (or subscribers' events) and deliver them,
with an idempotent consumer, quick retries, retry tiers and a dead letter channel.

`command_consumer` and `subscription_consumer` build a ready `Consumer`; `run()` it, `stop()`
it (SIGTERM does, when `run(install_signal_handlers=True)`): it finishes the messages in hand, or
after `STOP_GRACE` seconds leaves them to the broker, and `run()` returns False. `stop_now()` (a
second SIGTERM, or Ctrl-C twice) leaves them to the broker at once.
"""

from __future__ import annotations

from typing import Any

from adapters import Adapter
from bus.broker.topology import declare_topology, work_queue
from bus.config import InstanceConfig
from bus.liveness import HEARTBEAT_INTERVAL
from bus.store import Store
from bus.worker._commands import CommandWorker
from bus.worker._consumer import STOP_GRACE, BatchHandler, Broker, Consumer, Handler
from bus.worker._delivery import ATTEMPT_HEADER, FIRST_FAILURE_HEADER, REASON_HEADER, Delivery
from bus.worker._events import SubscriptionWorker
from bus.worker._failures import Route
from bus.worker._heartbeat import Heartbeat, Slot
from bus.worker._retry import SMALL_RETRY_AFTER
from bus.worker._signals import StopSignals
from bus.worker._webhooks import run_subscriptions, subscription_consumer

__all__ = [
    "ATTEMPT_HEADER",
    "FIRST_FAILURE_HEADER",
    "HEARTBEAT_INTERVAL",
    "REASON_HEADER",
    "SMALL_RETRY_AFTER",
    "STOP_GRACE",
    "BatchHandler",
    "Broker",
    "CommandWorker",
    "Consumer",
    "Delivery",
    "Handler",
    "Heartbeat",
    "Route",
    "Slot",
    "StopSignals",
    "SubscriptionWorker",
    "command_consumer",
    "run_subscriptions",
    "subscription_consumer",
]


def command_consumer(
    amqp_url: str,
    store: Store,
    instance: str,
    config: InstanceConfig,
    adapter: Adapter,
    *,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    stop_grace: float = STOP_GRACE,
) -> Consumer:
    """A consumer of `civicbus.work.<instance>` running commands through `adapter`, reporting
    its liveness to the store every `heartbeat_interval` seconds; a stop waits `stop_grace`
    seconds at most for the messages in hand."""

    def declare(channel: Any) -> None:
        declare_topology(channel, {instance: config})

    heartbeat = Heartbeat(store, interval=heartbeat_interval)
    consumer = Consumer(
        amqp_url,
        prefetch=config.prefetch,
        name=instance,
        declare=declare,
        heartbeat=heartbeat,
        stop_grace=stop_grace,
    )
    route = Route(instance, store, config.retry)
    slot = heartbeat.slot(instance)
    # Receipts are recorded per batch of delivered messages (group commit), then acked.
    worker = CommandWorker(route, adapter, consumer.stop_event, slot)
    consumer.consume_batches(work_queue(instance), worker.handle_batch, slot=slot)
    return consumer
