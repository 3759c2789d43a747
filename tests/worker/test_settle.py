"""How a handled batch is acknowledged on the channel (a fake channel records the frames)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus.worker._consumer import _Settler


class Channel:
    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.frames.append(("ack", tag, multiple))

    def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.frames.append(("nack", tag, requeue))


class OnThisThread:
    """Stands in for the consumer: runs the connection-thread call at once."""

    def _on_connection(self, fn: Callable[[], Any]) -> Any:
        return fn()


def settler(delivered: set[int], unacked: set[int] | None = None) -> tuple[_Settler, Channel]:
    """A settler of a channel with `delivered` unsettled, `unacked` of them its own queue's."""
    channel = Channel()
    mine = set(delivered) if unacked is None else unacked
    return _Settler(OnThisThread(), channel, delivered, mine), channel  # type: ignore[arg-type]


def test_a_batch_is_acked_with_one_multiple_ack() -> None:
    s, channel = settler({1, 2, 3, 4, 5})
    s.settle([1, 2, 3], requeue=())
    assert channel.frames == [("ack", 3, True)]


def test_requeued_messages_are_nacked_and_the_rest_acked() -> None:
    delivered = {1, 2, 3, 4}
    s, channel = settler(delivered)
    s.settle([1, 2, 3, 4], requeue={1})
    assert channel.frames == [("nack", 2, True), ("ack", 4, True)]
    assert delivered == set()


def test_a_message_another_handler_still_holds_is_never_acked_with_the_batch() -> None:
    # Tags 1 and 3 went to one handler, 2 to another queue's handler still working on it.
    delivered = {1, 2, 3}
    s, channel = settler(delivered)
    s.settle([1, 3], requeue=())
    assert channel.frames == [("ack", 1, False), ("ack", 3, False)]
    assert delivered == {2}


def test_a_batch_wholly_requeued_sends_no_ack() -> None:
    s, channel = settler({7, 8})
    s.settle([7, 8], requeue={0, 1})
    assert channel.frames == [("nack", 7, True), ("nack", 8, True)]


def test_settled_messages_leave_what_the_queue_s_worker_reports_it_holds() -> None:
    # Tags 1, 3 and 4 went to this handler's queue, 2 to another queue's handler.
    unacked = {1, 3, 4}
    s, _channel = settler({1, 2, 3, 4}, unacked)
    s.settle([1, 3], requeue={1})
    assert unacked == {4}
