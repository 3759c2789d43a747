"""A RabbitMQ resource alarm blocks the relay's publishing: the relay says why, `civicbus status`
names it with what to do, nothing accepted is lost, and the backlog drains once it clears.

Uses the private RabbitMQ node of tests/faults/conftest.py: its memory watermark is set so low
that the node raises its memory alarm at once, then put back. The machine's broker is never
touched.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pika
import pytest
from structlog.testing import capture_logs

from bus.broker.connection import connect
from bus.broker.topology import declare_topology
from bus.config import Config
from bus.overview import Overview, take_overview
from bus.relay import RelaySettings
from bus.store import Store
from bus.worker import Broker, Consumer, Delivery, command_consumer
from tests.faults.relay_support import (
    TAP,
    accept,
    declare_with_tap,
    read_all,
    running_relay,
    wait_until_relayed,
)
from tests.waiting import wait_until
from tests.worker.worker_support import (
    FAST,
    INSTANCE,
    MemoryBackend,
    channel_on,
    new_request,
    publish,
    running,
)

if TYPE_CHECKING:
    from tests.faults.conftest import RabbitNode

pytestmark = pytest.mark.timeout(90)

#: Shorter than the block lasts below: the relay must wait for the alarm, not give its batch up.
CONFIRM_TIMEOUT = 2.0


@contextmanager
def memory_alarm(node: RabbitNode) -> Iterator[Callable[[], None]]:
    """Raise the node's memory alarm (a watermark of one byte); the callable, or the end of
    the block, puts the node's watermark back."""
    before = node.ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    cleared = False

    def clear() -> None:
        nonlocal cleared
        if not cleared:
            node.ctl("set_vm_memory_high_watermark", *_watermark_args(before))
            cleared = True

    node.ctl("set_vm_memory_high_watermark", "absolute", "1")
    try:
        yield clear
    finally:
        clear()


def _watermark_args(printed: str) -> list[str]:
    # `0.4` (relative), or `{absolute,N}`; anything else: RabbitMQ's default.
    if printed.startswith("{absolute,"):
        return ["absolute", printed.removeprefix("{absolute,").rstrip("}")]
    try:
        float(printed)
    except ValueError:
        return ["0.4"]
    return [printed]


def queued(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        count: int = connection.channel().queue_declare(queue, passive=True).method.message_count
        return count
    finally:
        connection.close()


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def test_a_memory_alarm_blocks_the_relay_status_says_why_and_the_backlog_drains_once_it_clears(
    rabbit_node: RabbitNode, rabbit_node_url: str, store: Store, config: Config
) -> None:
    declare_with_tap(rabbit_node_url, config)
    settings = RelaySettings(
        batch_size=20, poll_interval=0.02, max_backoff=0.5, confirm_timeout=CONFIRM_TIMEOUT
    )

    def look() -> Overview:
        return take_overview(store, config.instances, lambda: connect(rabbit_node_url))

    with capture_logs() as logs, running_relay(store, config, rabbit_node_url, settings):
        accepted = [accept(store) for _ in range(10)]
        wait_until_relayed(store)

        with memory_alarm(rabbit_node) as clear:
            accepted += [accept(store) for _ in range(30)]  # the API keeps accepting
            blocked = wait_until(
                lambda: (seen := look()).broker_blocked and seen, what="status to see the block"
            )
            time.sleep(2 * CONFIRM_TIMEOUT)  # longer than a batch may wait for its confirms
            still = look()
            tapped = queued(rabbit_node_url, TAP)
            clear()
            wait_until_relayed(store)

        drained = wait_until(
            lambda: not (seen := look()).broker_blocked and seen, what="the block to clear"
        )

    # Blocked: named, with the broker's reason and what to do; nothing marked sent meanwhile.
    [problem] = [p for p in blocked.problems if p.startswith("broker:")]
    assert "RabbitMQ blocks publishing since" in problem and "(low on memory)" in problem
    assert "free memory on the broker host" in problem
    assert "`rabbitmq-diagnostics alarms`" in problem
    assert still.broker_blocked is not None  # still so after the confirm timeout: one episode
    assert still.broker_blocked.blocked_since == blocked.broker_blocked.blocked_since
    assert still.store.outbox_waiting == 30
    assert tapped == 10, "a message got past the alarm"

    # Logged once for the episode, with the broker's reason; the relay waited, never gave up.
    [block] = events(logs, "relay.broker_blocked")
    assert block["log_level"] == "warning" and block["reason"] == "low on memory"
    assert len(events(logs, "relay.broker_unblocked")) == 1
    assert events(logs, "relay.broker_failed") == []

    # Cleared: every event published once, in order; status no longer names the broker.
    assert read_all(rabbit_node_url, TAP) == [e.id for e in accepted]
    assert drained.broker_blocked is None
    assert not [p for p in drained.problems if p.startswith("broker:")]


def test_a_worker_the_alarm_blocks_while_the_relay_is_idle_is_named_by_status(
    rabbit_node: RabbitNode, rabbit_node_url: str, store: Store
) -> None:
    # No relay publishes, so none is told of the alarm: the worker whose retry (a publish to
    # its retry tier) the broker holds is the one to say why its queue stands still.
    instances = {INSTANCE: FAST}
    with channel_on(rabbit_node_url) as channel:
        declare_topology(channel, instances)
    envelope = new_request(store)
    publish(rabbit_node_url, envelope)  # before the alarm: it would hold this publish too
    busy = MemoryBackend(transient_failures=1000)  # every attempt fails: off to a retry tier
    consumer = command_consumer(
        rabbit_node_url, store, INSTANCE, FAST, busy, heartbeat_interval=0.1
    )

    def look() -> Overview:
        return take_overview(store, instances, lambda: connect(rabbit_node_url))

    # The alarm goes up before the worker starts, so that its first retry meets it.
    with capture_logs() as logs, memory_alarm(rabbit_node) as clear, running(consumer):
        try:
            blocked = wait_until(
                lambda: (seen := look()).broker_blocked and seen, what="status to see the block"
            )
        finally:
            clear()  # before the worker stops, which would leave the held retry behind
        wait_until(lambda: events(logs, "worker.broker_unblocked"), what="the retry to go out")
        drained = wait_until(
            lambda: not (seen := look()).broker_blocked and seen, what="the block to clear"
        )

    assert blocked.broker_blocked is not None
    assert blocked.broker_blocked.publisher == f"worker:{socket.gethostname()}:{os.getpid()}"
    [problem] = [p for p in blocked.problems if p.startswith("broker:")]
    assert "RabbitMQ blocks publishing since" in problem and "(low on memory)" in problem
    [block] = events(logs, "worker.broker_blocked")
    assert block["log_level"] == "warning" and block["reason"] == "low on memory"
    assert drained.broker_blocked is None
    assert not [p for p in drained.problems if p.startswith("broker:")]


def _depths(node: RabbitNode, url: str, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of `queue` on the node, as the broker counts them."""
    vhost = unquote(url.rsplit("/", 1)[1])
    for line in node.ctl(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged"
    ).splitlines():
        name, ready, unacked = line.split("\t")
        if name == queue:
            return int(ready), int(unacked)
    raise AssertionError(f"no queue {queue} on the node")


def test_a_publish_the_alarm_holds_holds_its_handler_only_not_the_other_acks_or_the_stop(
    rabbit_node: RabbitNode, rabbit_node_url: str
) -> None:
    # One worker, two queues: the handler of "held" publishes (as a retry would), the handler
    # of "free" only acks. A publish on the consuming connection used to block that connection
    # for the whole alarm: the other queue's acks and the worker's stop waited for it to clear.
    held, free, target = "alarm.held", "alarm.free", "alarm.target"
    with channel_on(rabbit_node_url) as channel:
        for name in (held, free, target):
            channel.queue_declare(name, durable=True)
        for name in (held, free, free, free):
            channel.basic_publish("", name, b"{}")  # before the alarm: it would hold these too
    publishing = threading.Event()
    release_free = threading.Event()
    freed: list[bytes] = []

    def publish_on(delivery: Delivery, broker: Broker) -> None:
        publishing.set()
        broker.publish("", target, delivery.body)

    def ack_when_released(delivery: Delivery, _broker: Broker) -> None:
        release_free.wait(30)
        freed.append(delivery.body)

    consumer = Consumer(rabbit_node_url, prefetch=4, name="alarm-test", stop_grace=1.0)
    consumer.consume(held, publish_on)
    consumer.consume(free, ack_when_released)
    thread = threading.Thread(target=consumer.run, daemon=True)
    with capture_logs() as logs, memory_alarm(rabbit_node) as clear:
        try:
            thread.start()
            wait_until(publishing.is_set, what="the held queue's handler to publish")
            wait_until(lambda: events(logs, "worker.broker_blocked"), what="the publish to be held")
            release_free.set()  # only now: its acks go out while the publish is held
            wait_until(lambda: len(freed) == 3, what="the free queue's handler")
            acked = wait_until(
                lambda: _depths(rabbit_node, rabbit_node_url, free) == (0, 0) or None,
                what="the free queue's acks",
            )
            consumer.stop()
            thread.join(timeout=10)
            stopped = not thread.is_alive()
            left = _depths(rabbit_node, rabbit_node_url, held)
        finally:
            release_free.set()
            clear()  # lets a thread the old code held end
            thread.join(timeout=20)

    assert acked
    assert stopped, "the stop waited for the alarm"
    assert left == (1, 0), "the held message was not left to the broker"
    [cut] = events(logs, "worker.stop_grace_expired")
    assert cut["queues"] == [held]
