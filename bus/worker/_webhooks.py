"""The webhook worker: delivers every active subscription's events, and follows the list of
subscriptions as it changes (a new subscription is picked up within `refresh` seconds). While
the store cannot be reached, it goes on with the list it knows."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog

from bus.config import RetryPolicy
from bus.liveness import HEARTBEAT_INTERVAL
from bus.store import Store, StoreUnavailable, Subscription
from bus.subscriptions import (
    SUBSCRIPTION_RETRY,
    SubscriptionError,
    declare,
    queue_name,
    route_name,
    webhook_for,
)
from bus.worker._consumer import STOP_GRACE, Consumer
from bus.worker._events import SubscriptionWorker
from bus.worker._failures import Route
from bus.worker._heartbeat import Heartbeat

log = structlog.get_logger(__name__)


def subscription_consumer(
    amqp_url: str,
    store: Store,
    subscriptions: list[Subscription],
    env: Mapping[str, str] | None = None,
    *,
    policy: RetryPolicy = SUBSCRIPTION_RETRY,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    stop_grace: float = STOP_GRACE,
) -> Consumer:
    """A consumer of these subscriptions' queues, one event at a time per subscription,
    reporting its liveness to the store every `heartbeat_interval` seconds; a stop waits
    `stop_grace` seconds at most for the events in hand."""

    def declare_all(channel: Any) -> None:
        # On every connection, a new one after a lost connection too: a subscription removed
        # meanwhile (its removal deleted its queue, so the broker cancelled our consumer of it)
        # must not get its queue back, to collect events for no one. Start over with the new
        # list instead.
        latest = _look(store)
        active = {s.id for s in latest} if latest is not None else None
        for subscription in subscriptions:
            if active is None or subscription.id in active:
                declare(channel, subscription)
        if active is not None and not active.issuperset(s.id for s in subscriptions):
            log.info("webhook.subscriptions_changed", subscriptions=len(active))
            consumer.stop()

    heartbeat = Heartbeat(store, interval=heartbeat_interval)
    consumer = Consumer(
        amqp_url,
        prefetch=1,
        name="subscriptions",
        declare=declare_all,
        heartbeat=heartbeat,
        stop_grace=stop_grace,
    )
    for subscription in subscriptions:
        try:
            adapter = webhook_for(subscription, env)
        except SubscriptionError as exc:
            # Its events wait in its queue until the secret is set and the worker restarted.
            log.error("webhook.not_configured", subscription=subscription.id, error=str(exc))
            continue
        route = Route(route_name(subscription.id), store, policy, announce_failures=False)
        slot = heartbeat.slot(route.name)
        worker = SubscriptionWorker(route, adapter, consumer.stop_event, slot)
        consumer.consume(queue_name(subscription.id), worker, slot=slot)
    return consumer


def run_subscriptions(
    amqp_url: str,
    store: Store,
    *,
    stop: threading.Event,
    stop_now: threading.Event | None = None,
    env: Mapping[str, str] | None = None,
    refresh: float = 5.0,
    policy: RetryPolicy = SUBSCRIPTION_RETRY,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    stop_grace: float = STOP_GRACE,
) -> bool:
    """Deliver subscriptions' events until `stop` is set; restart when the set changes.

    Returns False when the last stop's grace (`stop_grace` seconds) ran out, or `stop_now` was
    set meanwhile, with a delivery still under way: its event was left to the broker, to be
    delivered again.
    """
    clean = True
    while not stop.is_set():
        clean = True  # a consumer stopped by a change of the list says nothing of the last stop
        subscriptions = _look(store)
        if subscriptions is None:
            stop.wait(refresh)
            continue
        current = _identities(subscriptions)
        consumer = subscription_consumer(
            amqp_url,
            store,
            subscriptions,
            env,
            policy=policy,
            heartbeat_interval=heartbeat_interval,
            stop_grace=stop_grace,
        )
        if not consumer.queues:
            # None to deliver (or none with its secret set): wait for the list to change,
            # without connecting, and without repeating what subscription_consumer logged.
            while not stop.wait(refresh) and not _changed(store, current):
                pass
            continue
        clean = _consume_until_changed(
            consumer, store, current, stop=stop, stop_now=stop_now, refresh=refresh
        )
    return clean


def _consume_until_changed(
    consumer: Consumer,
    store: Store,
    current: list[tuple[int, str, tuple[str, ...]]],
    *,
    stop: threading.Event,
    stop_now: threading.Event | None,
    refresh: float,
) -> bool:
    """Run the consumer in a thread of its own until `stop` is set or the list changes; what
    `Consumer.run` returned.

    This thread watches both and stops the consumer itself: a watcher thread that died would
    leave nothing to pass `stop` (SIGTERM) on. It watches `stop_now` while the consumer stops.
    """
    crashed: list[BaseException] = []
    clean: list[bool] = []

    def consume() -> None:
        try:
            clean.append(consumer.run())
        except BaseException as exc:  # raised again in the caller's thread, below
            crashed.append(exc)

    thread = threading.Thread(target=consume, name="subscriptions", daemon=True)
    thread.start()
    try:
        next_look = time.monotonic() + refresh
        while thread.is_alive() and not stop.wait(0.2):
            if time.monotonic() >= next_look:
                if _changed(store, current):
                    break
                next_look = time.monotonic() + refresh
    finally:
        consumer.stop()
        while thread.is_alive():
            if stop_now is not None and stop_now.is_set():
                consumer.stop_now()
            thread.join(timeout=0.1)
    if crashed:
        raise crashed[0]
    return clean == [True]


def _look(store: Store) -> list[Subscription] | None:
    """The active subscriptions; None while the store cannot be reached (logged)."""
    try:
        return store.list_subscriptions()
    except StoreUnavailable as exc:
        # A database restart: keep delivering to the subscriptions known, look again later.
        log.warning("webhook.subscriptions_unavailable", error=str(exc))
        return None


def _changed(store: Store, current: list[tuple[int, str, tuple[str, ...]]]) -> bool:
    """Whether the list of subscriptions differs from `current` (not known: no)."""
    latest = _look(store)
    if latest is None or _identities(latest) == current:
        return False
    log.info("webhook.subscriptions_changed", subscriptions=len(latest))
    return True


def _identities(subscriptions: list[Subscription]) -> list[tuple[int, str, tuple[str, ...]]]:
    """What, when it changes, makes the worker start over with the new list."""
    return [(s.id, s.url, tuple(s.events)) for s in subscriptions]
