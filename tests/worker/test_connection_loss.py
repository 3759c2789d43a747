"""A lost broker connection never gives a queue two handler threads: a handler still busy in a
back-end call when the connection goes keeps its queue until it ends, while the consumer's
other queues resume on the new connection at once. Otherwise the redelivery of the message in
hand could be handled beside it, and both could create the work."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest
from structlog.testing import capture_logs
from worker_support import (
    FAST,
    INSTANCE,
    MemoryBackend,
    actions,
    channel_on,
    new_request,
    publish,
    queue_depth,
    running,
    wait_until,
)

from adapters import Receipt
from bus.broker.connection import connect
from bus.broker.topology import work_queue
from bus.overview import take_overview
from bus.store import Store
from bus.worker import Consumer, Delivery, command_consumer
from schemas.model import ServiceRequest

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]


class BrokerLink:
    """A TCP relay on loopback between the consumer and the broker, whose links the test can
    cut: to the consumer and to the broker alike, the connection is simply gone."""

    def __init__(self, broker_port: int) -> None:
        self._broker_port = broker_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._links: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, amqp_url: str) -> str:
        """`amqp_url` through this relay."""
        parts = urlsplit(amqp_url)
        credentials = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{self.port}"))

    def cut(self) -> None:
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)
            link.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            broker = socket.create_connection(("127.0.0.1", self._broker_port))
            with self._lock:
                self._links += [client, broker]
            for source, sink in ((client, broker), (broker, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for end in (source, sink):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def link(amqp_url: str) -> Iterator[BrokerLink]:
    relay = BrokerLink(urlsplit(amqp_url).port or 5672)
    yield relay
    relay.close()


class HeldBackend(MemoryBackend):
    """A back-end whose first submit waits until released; counts the submits begun and the
    most ever under way at once."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.begun = 0
        self.under_way = 0
        self.most_at_once = 0
        self._count = threading.Lock()

    def submit(self, request: ServiceRequest) -> Receipt:
        with self._count:
            self.begun += 1
            self.under_way += 1
            self.most_at_once = max(self.most_at_once, self.under_way)
        try:
            self.entered.set()
            self.release.wait(timeout=30)
            return super().submit(request)
        finally:
            with self._count:
                self.under_way -= 1


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def test_the_redelivery_of_a_message_in_hand_waits_for_its_handler(
    store: Store, topology: str, link: BrokerLink
) -> None:
    backend = HeldBackend()
    envelope = new_request(store)
    publish(topology, envelope)
    consumer = command_consumer(
        link.url(topology), store, INSTANCE, FAST, backend, heartbeat_interval=0.1
    )

    with capture_logs() as logs, running(consumer):
        assert backend.entered.wait(timeout=15), "the back-end was never called"
        link.cut()
        # The new connection holds the queue back while the first handler is still busy.
        waiting = wait_until(
            lambda: events(logs, "worker.queue_waits_for_handler"),
            what="the queue to wait for the busy handler",
        )
        consumers_meanwhile = _consumers(topology, work_queue(INSTANCE))
        wait_until(lambda: store.workers()[0].working_since, what="the held message reported")
        problems = take_overview(store, {INSTANCE: FAST}, lambda: connect(topology)).problems
        backend.release.set()
        wait_until(
            lambda: events(logs, "worker.queue_resumed"), what="the queue to resume after it"
        )
        # The redelivery finds the work the first handler created and creates nothing more.
        wait_until(
            lambda: ("attempt", "duplicate") in actions(store, envelope.subject),
            what="the redelivery to be handled",
        )

    assert (waiting[0]["queue"], waiting[0]["message_id"], waiting[0]["request_id"]) == (
        work_queue(INSTANCE),
        envelope.id,
        envelope.subject,
    )
    # Held back means not consumed: the redelivery waited in the queue for whoever was free.
    assert consumers_meanwhile == 0
    # `status` says why no one consumes the queue, and which message the worker still holds.
    [problem] = problems
    assert problem.startswith(
        f"{INSTANCE}: no consumer on {work_queue(INSTANCE)}, 1 waiting, though its worker(s) "
    )
    assert f"on request {envelope.subject} (message {envelope.id})" in problem
    assert "worker.queue_waits_for_handler" in problem
    assert queue_depth(topology, work_queue(INSTANCE)) == 0  # the redelivery was acked
    assert backend.begun == 1 and backend.most_at_once == 1
    assert list(backend.created) == [envelope.subject]
    assert actions(store, envelope.subject).count(("submitted", "ok")) == 1


def test_the_other_queues_resume_at_once_and_the_held_one_after_its_handler(
    amqp_url: str, link: BrokerLink
) -> None:
    with channel_on(amqp_url) as ch:
        for name in ("loss.held", "loss.quick"):
            ch.queue_declare(name, durable=True)
        ch.basic_publish("", "loss.held", b"held", pika.BasicProperties(message_id="held"))
    release = threading.Event()
    entered = threading.Event()
    held_runs: list[str] = []
    quick: list[str] = []

    def held(delivery: object, broker: object) -> None:
        held_runs.append("begun")
        entered.set()
        release.wait(timeout=30)
        held_runs.append("ended")

    consumer = Consumer(link.url(amqp_url), prefetch=2, name="two", reconnect_delay=0.1)
    consumer.consume("loss.held", held)
    consumer.consume("loss.quick", lambda delivery, broker: quick.append(delivery.key))
    with running(consumer):
        assert entered.wait(timeout=15)
        link.cut()
        with channel_on(amqp_url) as ch:
            ch.basic_publish("", "loss.quick", b"q", pika.BasicProperties(message_id="after"))
        # Well before the held handler ends: its queue's neighbour does not wait for it.
        wait_until(lambda: quick == ["after"], timeout=10, what="the quick queue to resume")
        runs_while_held = list(held_runs)
        release.set()
        # The held message, redelivered, runs again once the first run has ended.
        wait_until(lambda: len(held_runs) == 4, what="the held message's redelivery")

    assert runs_while_held == ["begun"]
    assert held_runs == ["begun", "ended", "begun", "ended"]


def _consumers(amqp_url: str, queue: str) -> int:
    with channel_on(amqp_url) as ch:
        return int(ch.queue_declare(queue=queue, passive=True).method.consumer_count)


def test_a_connection_ended_by_an_os_error_holds_no_queue_back(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not every way a connection ends is an AMQPError: a socket error may come through as it
    # is. Its idle handler threads must end too, or the next connection would wait for them.
    with channel_on(amqp_url) as ch:
        ch.queue_declare("loss.os-error", durable=True)
    fail_next = threading.Event()
    real = pika.BlockingConnection

    class Breaking(real):  # type: ignore[misc,valid-type]
        def process_data_events(self, time_limit: float | None = 0) -> None:
            if fail_next.is_set():
                fail_next.clear()
                raise OSError("connection reset by peer")
            super().process_data_events(time_limit=time_limit)

    monkeypatch.setattr(pika, "BlockingConnection", Breaking)
    handled: list[str] = []
    consumer = Consumer(amqp_url, prefetch=1, name="os-error", reconnect_delay=0.1)
    consumer.consume("loss.os-error", lambda delivery, broker: handled.append(delivery.key))
    with capture_logs() as logs, running(consumer):
        wait_until(lambda: events(logs, "worker.consuming"), what="the first connection")
        fail_next.set()
        wait_until(lambda: len(events(logs, "worker.consuming")) == 2, what="a new connection")
        with channel_on(amqp_url) as ch:
            for n in range(4):  # the old connection, left open, would take some of them
                ch.basic_publish("", "loss.os-error", b"x", pika.BasicProperties(message_id=f"{n}"))
            consumers = ch.queue_declare("loss.os-error", passive=True).method.consumer_count
        wait_until(lambda: len(handled) == 4, timeout=10, what="the queue consumed again")

    assert handled == ["0", "1", "2", "3"] and consumers == 1
    assert [e["error"] for e in events(logs, "worker.connection_lost")] == [
        "OSError('connection reset by peer')"
    ]


def test_a_channel_the_broker_closes_is_taken_as_a_lost_connection(amqp_url: str) -> None:
    # RabbitMQ closes a consumer's channel, not its connection, when a message is held past its
    # consumer_timeout (30 min by default): here, as quickly, by acking a tag it never gave.
    channels: list[Any] = []

    def declare(channel: Any) -> None:
        channel.queue_declare("loss.channel", durable=True)
        channels.append(channel)

    handled: list[str] = []
    consumer = Consumer(amqp_url, prefetch=1, name="closed", declare=declare, reconnect_delay=0.1)

    def handle(delivery: Delivery, broker: Any) -> None:
        handled.append(delivery.key)
        if handled == ["first"]:  # once: it comes back, unacked, on the next connection
            channel = channels[-1]
            consumer._on_connection(lambda: channel.basic_ack(999_999))  # 406 from the broker

    consumer.consume("loss.channel", handle)
    with capture_logs() as logs, running(consumer):
        wait_until(lambda: events(logs, "worker.consuming"), what="the first connection")
        with channel_on(amqp_url) as ch:
            ch.basic_publish("", "loss.channel", b"x", pika.BasicProperties(message_id="first"))
        wait_until(lambda: len(events(logs, "worker.consuming")) == 2, what="a new connection")
        with channel_on(amqp_url) as ch:
            ch.basic_publish("", "loss.channel", b"x", pika.BasicProperties(message_id="after"))
        wait_until(lambda: "after" in handled, timeout=10, what="the queue consumed again")

    assert handled == ["first", "first", "after"]
    [lost] = events(logs, "worker.connection_lost")
    assert "the broker closed the consumer's channel" in lost["error"]


def test_a_queue_deleted_under_the_consumer_is_declared_and_consumed_again(
    amqp_url: str,
) -> None:
    # Deleting a queue makes the broker cancel its consumers (Basic.Cancel), the connection
    # staying open: taken as a lost connection, or the queue would never be consumed again.
    def declare(channel: Any) -> None:
        channel.queue_declare("loss.deleted", durable=True)

    handled: list[str] = []
    consumer = Consumer(
        amqp_url, prefetch=1, name="cancelled", declare=declare, reconnect_delay=0.1
    )
    consumer.consume("loss.deleted", lambda delivery, broker: handled.append(delivery.key))
    with capture_logs() as logs, running(consumer):
        wait_until(lambda: events(logs, "worker.consuming"), what="the first connection")
        with channel_on(amqp_url) as ch:
            ch.queue_delete("loss.deleted")
        wait_until(lambda: len(events(logs, "worker.consuming")) == 2, what="a new connection")
        with channel_on(amqp_url) as ch:
            ch.basic_publish("", "loss.deleted", b"x", pika.BasicProperties(message_id="after"))
        wait_until(lambda: handled == ["after"], timeout=10, what="the queue consumed again")

    [cancelled] = events(logs, "worker.consumer_cancelled")
    assert (cancelled["worker"], cancelled["queue"]) == ("cancelled", "loss.deleted")
