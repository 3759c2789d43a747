"""Webhook subscriptions: back-office systems that want civicbus events pushed to a URL.

Each subscription gets its own durable queue `civicbus.sub.<id>` bound to `civicbus.events`
with its patterns, so events wait for a subscriber that is down and reach it in order. Patterns
are written on the event type (`request.*`, `request.status_changed`) and translated here into
AMQP topic patterns over the routing keys (`request.#`, `request.status_changed.*`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog

from adapters.webhook import WebhookAdapter
from bus import deadletters
from bus.broker.connection import BROKER_ERRORS, BrokerUnavailable
from bus.broker.topology import DEAD_EXCHANGE, EVENTS_EXCHANGE, dead_queue, declare_topology
from bus.config import Config, RetryPolicy
from bus.store import Store, Subscription

# Re-exported: the workers, the API and the overview name subscriptions through this module.
from bus.subscription_names import queue_name as queue_name
from bus.subscription_names import route_name as route_name
from schemas.events import EventType
from schemas.model import Status

log = structlog.get_logger(__name__)

#: RabbitMQ's default `consumer_timeout`: a message held unacknowledged longer than this closes
#: the channel and goes back to the queue, where its retries would start again from the first.
BROKER_CONSUMER_TIMEOUT_S = 30 * 60

#: Subscribers are retried in place, holding the event unacknowledged (to keep events in
#: order): about 12 minutes for a subscriber that refuses connections, at most about 28 when
#: every POST times out and the subscriber asks for long waits, so always within
#: BROKER_CONSUMER_TIMEOUT_S; then the event is dead-lettered. (Ten rounds up to 300 s apart, as
#: before 2026-12-05, could take 34 minutes: the broker took the event back first, and it was
#: never dead-lettered.)
SUBSCRIPTION_RETRY = RetryPolicy(immediate_attempts=3, tiers=[5, 30, 60, 120, 240], max_attempts=7)

_WORD = re.compile(r"^(\*|#|[A-Za-z0-9_-]+)$")


class SubscriptionError(Exception):
    """A subscription cannot be made as asked; the message says what to change."""


def binding_key(pattern: str) -> str:
    """The AMQP topic pattern for an event-type pattern: `request.*` → `request.#`,
    `request.closed` → `request.closed.*`; three-word patterns are taken as they are.

    Only the syntax is checked here, so that a subscription stored before `check_pattern`
    existed still gets its queue; new patterns go through `check_pattern`.
    """
    words = pattern.split(".")
    if not pattern or not all(_WORD.match(w) for w in words):
        raise SubscriptionError(
            f"event pattern {pattern!r}: use dot-separated words or '*', e.g. 'request.*' "
            f"or 'request.status_changed'"
        )
    if len(words) >= 3 or words[-1] == "#":
        return pattern
    if words[-1] == "*":
        return ".".join([*words[:-1], "#"])
    return pattern + ".*"


@dataclass(frozen=True)
class Qualifiers:
    """The words the third segment of a routing key can hold, from the city's config: the
    adapter instances (routed, submitted, delivery_failed) and the catalogue's service codes
    (created, taken_down). Statuses come from the canonical model."""

    instances: frozenset[str]
    service_codes: frozenset[str]

    @classmethod
    def of(cls, config: Config) -> Qualifiers:
        # A dot in a qualifier becomes `_` in the key (event_routing_key).
        codes = frozenset(s.code.replace(".", "_") for s in config.services)
        return cls(frozenset(i.replace(".", "_") for i in config.instances), codes)


#: What the qualifier of each event type's routing key is, in error messages: one, and all.
_QUALIFIER_NAMES = {
    EventType.CREATED: ("a service code", "service codes in the catalogue"),
    EventType.ROUTED: ("an adapter instance", "adapter instances"),
    EventType.SUBMITTED: ("an adapter instance", "adapter instances"),
    EventType.STATUS_CHANGED: ("a status", "statuses"),
    EventType.CLOSED: ("a closing status", "closing statuses"),
    EventType.NOTED: ("a status", "statuses"),
    EventType.DELIVERY_FAILED: ("an adapter instance", "adapter instances"),
    EventType.TAKEN_DOWN: ("a service code", "service codes in the catalogue"),
}


def _valid_qualifiers(
    event_type: EventType, qualifiers: Qualifiers | None
) -> frozenset[str] | None:
    """The words that can follow `request.<type>.` in a routing key; None when not known."""
    if event_type in (EventType.STATUS_CHANGED, EventType.NOTED):
        return frozenset(Status)
    if event_type is EventType.CLOSED:
        return frozenset(s for s in Status if s.is_closed)
    if qualifiers is None:
        return None
    if event_type in (EventType.CREATED, EventType.TAKEN_DOWN):
        return qualifiers.service_codes
    return qualifiers.instances


def check_pattern(pattern: str, qualifiers: Qualifiers | None = None) -> str:
    """The binding key of an event pattern that can match events; SubscriptionError for one
    that never can, e.g. `request.bogus` or `request.closed.in_progress` (a typo would make a
    subscription that stays silent).

    Routing keys are `request.<event type's word>.<qualifier>`: a status, or with `qualifiers`
    (the city's config) an adapter instance or a catalogue service code. Words of the binding
    key before a `#` are matched against them from the start, words after one from the end.
    """
    key = binding_key(pattern).split(".")
    kinds = {t.short.removeprefix("request."): t for t in EventType}
    if "#" in key:
        head = key[: key.index("#")]
        tail = key[len(key) - key[::-1].index("#") :]
    else:
        head, tail = key, []
    # Which word of the three-word routing key each word of the binding key stands for.
    placed = {**dict(enumerate(head)), **{2 - i: w for i, w in enumerate(reversed(tail))}}
    fits = len(head) + len(tail) <= 3 if "#" in key else len(key) == 3
    kind = placed.get(1, "*")
    if not fits or placed.get(0, "*") not in ("*", "request") or kind not in ("*", *kinds):
        raise SubscriptionError(
            f"event pattern {pattern!r} matches no event: name an event type or '*' "
            f"('request.*', 'request.closed'), optionally with a qualifier "
            f"('request.status_changed.fixed'); event types: "
            f"{', '.join(sorted(t.short for t in EventType))}"
        )
    qualifier = placed.get(2, "*")
    if qualifier in ("*", "#"):
        return ".".join(key)
    types = list(EventType) if kind == "*" else [kinds[kind]]
    valid = {t: _valid_qualifiers(t, qualifiers) for t in types}
    if any(v is None or qualifier in v for v in valid.values()):
        return ".".join(key)
    named = {_QUALIFIER_NAMES[t]: v or frozenset() for t, v in valid.items()}
    if _QUALIFIER_NAMES[EventType.STATUS_CHANGED] in named:  # closing statuses are among them
        named.pop(_QUALIFIER_NAMES[EventType.CLOSED], None)
    expected = " or ".join(one for one, _ in named)
    choices = "; ".join(
        f"{all_}: {', '.join(sorted(v)) or '(none)'}" for (_, all_), v in named.items()
    )
    catalogue = (
        " (add a new service to the config's catalogue first, then subscribe to it)"
        if EventType.CREATED in types or EventType.TAKEN_DOWN in types
        else ""
    )
    raise SubscriptionError(
        f"event pattern {pattern!r} matches no event: {qualifier!r} is not {expected}"
        f"{catalogue}; {choices}"
    )


def check_subscription(
    url: str,
    events: Sequence[str],
    *,
    secret_env: str | None = None,
    qualifiers: Qualifiers | None = None,
) -> None:
    """SubscriptionError for a subscription that cannot be made as asked; with `qualifiers`
    (the city's config), for patterns naming an adapter instance or service code that does not
    exist too."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SubscriptionError(f"{url!r} is not an http(s) URL")
    if not events:
        raise SubscriptionError("name at least one event pattern, e.g. --events 'request.*'")
    for pattern in events:
        check_pattern(pattern, qualifiers)
    if secret_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", secret_env):
        raise SubscriptionError(f"{secret_env!r} is not an environment variable name")


def add_subscription(
    store: Store,
    url: str,
    events: Sequence[str],
    *,
    channel: Any = None,
    secret_env: str | None = None,
    qualifiers: Qualifiers | None = None,
    actor: str = "cli:subscriptions",
) -> Subscription:
    """Validate (`check_subscription`), store and audit a subscription; with `channel`, its
    queues are declared from scratch (`declare_new`) before it is active.

    Declared inside the transaction that stores it: a webhook worker sees the subscription only
    once its fresh queue is there, so no one deletes a queue a worker already consumes (whose
    consumer the broker would cancel), and a broker that fails it leaves nothing stored.
    Without `channel` the caller declares the queue next (`declare`)."""
    check_subscription(url, events, secret_env=secret_env, qualifiers=qualifiers)
    declared: Subscription | None = None
    try:
        with store.transaction() as tx:
            subscription = tx.add_subscription(url, list(events), secret_env)
            if channel is not None:
                declare_new(channel, subscription)
                declared = subscription
            tx.audit(
                actor=actor,
                action="subscription_added",
                details={"subscription": subscription.id, "url": url, "events": list(events)},
            )
    except BaseException:
        if declared is not None:
            # Not stored after all: its queue would collect events for no one.
            with suppress(*BROKER_ERRORS):
                delete_queue(channel, declared.id)
        raise
    log.info("subscription.added", subscription=subscription.id, events=list(events))
    return subscription


@dataclass(frozen=True)
class Removal:
    """A subscription removed: how many undelivered events went with its queue (None when its
    queue was not deleted) or why the queue is left on the broker, and how many of its dead
    letters were dropped with it."""

    discarded_events: int | None
    dropped_dead_letters: int
    queue_left_on_broker: str | None = None


def remove_subscription(
    store: Store,
    subscription_id: int,
    *,
    discard: Callable[[int], int] | None = None,
    actor: str = "cli:subscriptions",
) -> Removal | None:
    """Deactivate a subscription (audited); None if there was no active one with that id.

    `discard` then deletes its queues and says how many undelivered events went with them:
    only once the subscription is inactive, so that no webhook worker declares them again.
    Its dead letters waiting are dropped (each audited, as `civicbus dead drop` does): with its
    queue gone no replay could reach it. The audit entry of the removal records both numbers,
    or that the queue was left (a broker out of reach is said in the Removal, anything else
    `discard` raises is raised once that is recorded)."""
    if not store.remove_subscription(subscription_id):
        return None
    details: dict[str, Any] = {"subscription": subscription_id}
    queue_left = None
    try:
        if discard is not None:
            details["discarded_events"] = discard(subscription_id)
    except BrokerUnavailable as exc:
        details["queue_left_on_broker"] = True
        queue_left = str(exc)
    except Exception:
        details["queue_left_on_broker"] = True
        raise
    finally:
        with store.transaction() as tx:
            # Last, so that a dead letter its worker recorded until the queue went goes too.
            dropped = deadletters.drop_waiting(tx, route_name(subscription_id), actor=actor)
            details["dropped_dead_letters"] = len(dropped)
            tx.audit(actor=actor, action="subscription_removed", details=details)
    log.info("subscription.removed", **details)
    return Removal(details.get("discarded_events"), len(dropped), queue_left)


def declare(channel: Any, subscription: Subscription) -> None:
    """Declare the subscription's queue, its bindings and its dead-letter queue (idempotent).

    Classic queues, deliberately: a message returned unacknowledged (a worker killed mid-POST)
    goes back to its place at the head, where RabbitMQ 3.10's quorum queues would put it last
    and so reorder a request's events.
    """
    declare_topology(channel, {})
    name = queue_name(subscription.id)
    channel.queue_declare(queue=name, durable=True, arguments={"x-queue-type": "classic"})
    for pattern in subscription.events:
        channel.queue_bind(queue=name, exchange=EVENTS_EXCHANGE, routing_key=binding_key(pattern))
    dead = f"civicbus.dead.{route_name(subscription.id)}"
    channel.queue_declare(queue=dead, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(queue=dead, exchange=DEAD_EXCHANGE, routing_key=route_name(subscription.id))


def declare_new(channel: Any, subscription: Subscription) -> None:
    """Declare a just-added subscription's queues from scratch.

    Queue names come from the store's ids, which start again at 1 in a new store: a queue of
    that name already on the broker is a leftover (of a store since replaced, or of another
    store on the same vhost), with its old events and bindings. It is deleted first, so the
    new subscription gets only the events it asked for, from now on.
    """
    channel.queue_delete(queue=queue_name(subscription.id))
    channel.queue_delete(queue=f"civicbus.dead.{route_name(subscription.id)}")
    declare(channel, subscription)


def delete_queue(channel: Any, subscription_id: int) -> int:
    """Remove a removed subscription's queue and its dead-letter queue; how many undelivered
    events went with the first. (What the dead-letter queue holds, the store holds too: the
    webhook worker records a dead letter before publishing it there.)"""
    deleted = channel.queue_delete(queue=queue_name(subscription_id))
    channel.queue_delete(queue=dead_queue(route_name(subscription_id)))
    return int(deleted.method.message_count)


def webhook_for(subscription: Subscription, env: Mapping[str, str] | None = None) -> WebhookAdapter:
    """The webhook adapter that delivers this subscription's events, with its signing secret."""
    env = os.environ if env is None else env
    settings: dict[str, Any] = {"url": subscription.url}
    if subscription.secret_env is not None:
        # Set but empty is not set: the events would go out unsigned, with a secret asked for.
        if not env.get(subscription.secret_env):
            said = "is empty" if subscription.secret_env in env else "is not set"
            raise SubscriptionError(
                f"subscription {subscription.id}: the environment variable "
                f"{subscription.secret_env} {said}; set it to its signing secret"
            )
        settings["secret"] = env[subscription.secret_env]
    return WebhookAdapter(route_name(subscription.id), settings)
