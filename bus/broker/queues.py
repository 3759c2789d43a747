"""How full the bus's queues are and who consumes them, as the broker reports it (a passive
declare: nothing is created or changed)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pika.exceptions

from bus.broker.connection import close_quietly


@dataclass(frozen=True)
class QueueState:
    messages: int  # ready to deliver (not those a consumer holds unacked)
    consumers: int


def queue_states(connection: Any, names: Iterable[str]) -> dict[str, QueueState | None]:
    """Each named queue's state; None for a queue the broker does not have."""
    states: dict[str, QueueState | None] = {}
    channel = connection.channel()
    try:
        for name in names:
            try:
                frame = channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                # A missing queue closes the channel it was asked on.
                states[name] = None
                channel = connection.channel()
                continue
            states[name] = QueueState(frame.method.message_count, frame.method.consumer_count)
    finally:
        close_quietly(channel)
    return states
