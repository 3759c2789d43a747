"""How a webhook subscription is named: its queue on the broker, and its route (`sub.<id>`), the
name its audit entries and dead letters are filed under.

Apart from bus.subscriptions so that the dead letter channel (bus.deadletters), which a
subscription's removal uses, can name subscriptions without importing it.
"""

from __future__ import annotations

#: Route (dead-letter "instance") names of subscriptions: `sub.<id>`.
ROUTE_PREFIX = "sub."

_QUEUE_PREFIX = "civicbus.sub."


def queue_name(subscription_id: int) -> str:
    """The durable queue holding a subscription's undelivered events."""
    return f"{_QUEUE_PREFIX}{subscription_id}"


def route_name(subscription_id: int) -> str:
    """The subscription's name in audit entries and dead letters."""
    return f"{ROUTE_PREFIX}{subscription_id}"


def queue_of_route(route: str) -> str | None:
    """The queue of a `sub.<id>` route name; None for an adapter instance."""
    if not route.startswith(ROUTE_PREFIX):
        return None
    return _QUEUE_PREFIX + route.removeprefix(ROUTE_PREFIX)


def route_of_queue(queue: str) -> str | None:
    """The `sub.<id>` route name of a subscription's queue; None for any other queue."""
    if not queue.startswith(_QUEUE_PREFIX):
        return None
    return ROUTE_PREFIX + queue.removeprefix(_QUEUE_PREFIX)
