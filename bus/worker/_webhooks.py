"""The webhook worker: delivers every active subscription's events, and follows the list of
subscriptions as it changes (a new subscription is picked up within `refresh` seconds)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog

from bus.config import RetryPolicy
from bus.store import Store, Subscription
from bus.subscriptions import (
    SUBSCRIPTION_RETRY,
    SubscriptionError,
    declare,
    queue_name,
    route_name,
    webhook_for,
)
from bus.worker._consumer import Consumer
from bus.worker._events import SubscriptionWorker
from bus.worker._failures import Route

log = structlog.get_logger(__name__)


def subscription_consumer(
    amqp_url: str,
    store: Store,
    subscriptions: list[Subscription],
    env: Mapping[str, str] | None = None,
    *,
    policy: RetryPolicy = SUBSCRIPTION_RETRY,
) -> Consumer:
    """A consumer of these subscriptions' queues, one event at a time per subscription."""

    def declare_all(channel: Any) -> None:
        for subscription in subscriptions:
            declare(channel, subscription)

    consumer = Consumer(amqp_url, prefetch=1, name="subscriptions", declare=declare_all)
    for subscription in subscriptions:
        try:
            adapter = webhook_for(subscription, env)
        except SubscriptionError as exc:
            # Its events wait in its queue until the secret is set and the worker restarted.
            log.error("webhook.not_configured", subscription=subscription.id, error=str(exc))
            continue
        route = Route(route_name(subscription.id), store, policy, announce_failures=False)
        worker = SubscriptionWorker(route, adapter, consumer.stop_event)
        consumer.consume(queue_name(subscription.id), worker)
    return consumer


def run_subscriptions(
    amqp_url: str,
    store: Store,
    *,
    stop: threading.Event,
    env: Mapping[str, str] | None = None,
    refresh: float = 5.0,
    policy: RetryPolicy = SUBSCRIPTION_RETRY,
) -> None:
    """Deliver subscriptions' events until `stop` is set; restart when the set changes."""
    while not stop.is_set():
        subscriptions = store.list_subscriptions()
        current = _identities(subscriptions)
        consumer = subscription_consumer(amqp_url, store, subscriptions, env, policy=policy)
        if not consumer.queues:
            # None to deliver (or none with its secret set): wait for the list to change,
            # without connecting, and without repeating what subscription_consumer logged.
            while not stop.wait(refresh) and _identities(store.list_subscriptions()) == current:
                pass
            continue

        def watch(consumer: Consumer = consumer, current: object = current) -> None:
            next_look = time.monotonic() + refresh
            while not consumer.stop_event.is_set():
                if stop.wait(0.2):
                    break
                if time.monotonic() >= next_look:
                    latest = _identities(store.list_subscriptions())
                    if latest != current:
                        log.info("webhook.subscriptions_changed", subscriptions=len(latest))
                        break
                    next_look = time.monotonic() + refresh
            consumer.stop()

        watcher = threading.Thread(target=watch, name="subscription-watch", daemon=True)
        watcher.start()
        consumer.run()
        watcher.join(timeout=refresh + 1)


def _identities(subscriptions: list[Subscription]) -> list[tuple[int, str, tuple[str, ...]]]:
    """What, when it changes, makes the worker start over with the new list."""
    return [(s.id, s.url, tuple(s.events)) for s in subscriptions]
