"""The consuming loop: manual acks, bounded prefetch, broker I/O on pika's connection thread.

The main thread owns the pika connection and only pumps its events (so heartbeats keep
flowing); each consumed queue has one handler thread, which processes its messages in order and
asks the connection thread to publish and ack through `add_callback_threadsafe`. A batch handler
gets every message already delivered (up to its batch size) at once, and the whole batch is
acked in one call to the connection thread after the handler returned. A stop request (SIGTERM)
cancels the consumers, lets the messages in hand finish and be acked, and returns; messages
prefetched but not started go back to the queue when the channel closes. Each handler thread
notes the message it holds in its slot, which the heartbeat (if any) reports from a thread of
its own.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pika
import structlog
from pika.exceptions import AMQPError

from bus.broker.connection import BROKER_ERRORS, connection_parameters
from bus.worker._delivery import KEPT_PROPERTIES, Delivery
from bus.worker._heartbeat import Heartbeat, Slot

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Pause before a message whose handling crashed (e.g. the store is down) is requeued.
_REQUEUE_PAUSE = 1.0


class Broker(Protocol):
    """What a handler may ask of the broker while it holds a message."""

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish persistently and wait for the broker's confirm. `properties`: the original
        message's (Delivery.properties), for a copy of it (a retry tier, the dead-letter
        queue)."""


#: Processes one message; returning means "done, ack it". Raising means "could not even
#: decide" (e.g. the store is unavailable): the message is requeued after a pause.
Handler = Callable[[Delivery, Broker], None]

#: Processes several messages in order and returns the positions of those to requeue (they
#: could not be finished, e.g. their receipts could not be stored); every other one is acked.
#: Raising means none was finished: all are requeued after a pause.
BatchHandler = Callable[[Sequence[Delivery], Broker], Collection[int]]

#: Declares what the consumer needs (queues, exchanges) on a fresh channel.
Declare = Callable[[Any], None]


@dataclass(frozen=True)
class _Subscription:
    queue: str
    handler: BatchHandler
    batch_size: int
    slot: Slot


def _one_at_a_time(handler: Handler) -> BatchHandler:
    def handle(deliveries: Sequence[Delivery], broker: Broker) -> Collection[int]:
        (delivery,) = deliveries
        handler(delivery, broker)
        return ()

    return handle


class ConnectionLost(Exception):
    """The broker connection went away while a handler waited on it."""


class Consumer:
    """Consume one or more queues with manual acks until `stop()` is called."""

    def __init__(
        self,
        amqp_url: str,
        *,
        prefetch: int,
        name: str,
        declare: Declare | None = None,
        reconnect_delay: float = 2.0,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self._params = connection_parameters(amqp_url)
        self._prefetch = prefetch
        self._name = name
        self._declare = declare
        self._reconnect_delay = reconnect_delay
        self._heartbeat = heartbeat
        self._subscriptions: list[_Subscription] = []
        self._stopping = threading.Event()
        self._connection: Any = None
        self._pending: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def consume(self, queue_name: str, handler: Handler, *, slot: Slot | None = None) -> None:
        """Register a queue and its handler of one message at a time (before `run`); `slot`
        (from the heartbeat) shows the message in hand."""
        self._subscriptions.append(
            _Subscription(queue_name, _one_at_a_time(handler), 1, slot or Slot())
        )

    def consume_batches(
        self,
        queue_name: str,
        handler: BatchHandler,
        *,
        batch_size: int | None = None,
        slot: Slot | None = None,
    ) -> None:
        """Register a queue whose messages `handler` takes in batches of up to `batch_size`,
        formed from the messages already delivered, never waited for.

        The default, half the prefetch, lets the broker deliver the next batch while one is
        handled: with batches as large as the prefetch, the broker sends nothing until the
        batch is acked, and the handler then starts on the first message or two to arrive.
        """
        size = max(1, batch_size or self._prefetch // 2)
        self._subscriptions.append(_Subscription(queue_name, handler, size, slot or Slot()))

    @property
    def queues(self) -> list[str]:
        """The queues registered so far."""
        return [s.queue for s in self._subscriptions]

    def stop(self) -> None:
        """Ask the consumer to finish the messages in hand and return (thread- and signal-safe)."""
        self._stopping.set()

    @property
    def stop_event(self) -> threading.Event:
        """Set once the consumer is stopping; handlers that wait should wait on it."""
        return self._stopping

    def run(self, *, install_signal_handlers: bool = False) -> None:
        """Consume until stopped; reconnect after a lost connection."""
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        if not self._subscriptions:
            # Connecting would consume nothing and return at once, over and over.
            log.warning("worker.nothing_to_consume", worker=self._name)
            self._stopping.wait()
            return
        if self._heartbeat is not None:
            self._heartbeat.start()
        clean = False
        try:
            self._run_until_stopped()
            clean = True
        finally:
            if self._heartbeat is not None:
                # After a crash the reports are left to go stale, for `civicbus status`.
                self._heartbeat.stop(clean=clean)

    def _run_until_stopped(self) -> None:
        while not self._stopping.is_set():
            try:
                self._run_connection()
            except BROKER_ERRORS as exc:
                if self._stopping.is_set():
                    break
                log.warning("worker.connection_lost", worker=self._name, error=repr(exc))
                self._stopping.wait(self._reconnect_delay)

    # --- the connection thread ----------------------------------------------------------
    def _run_connection(self) -> None:
        connection = pika.BlockingConnection(self._params)
        self._connection = connection
        lost = threading.Event()
        threads: list[threading.Thread] = []
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=self._prefetch)
            if self._declare is not None:
                self._declare(channel)
            broker = _ChannelBroker(self, channel)
            # Delivery tags handed to a handler and not yet acked or nacked (touched on this
            # thread only): a batch is acked with one `multiple` ack when none is left below it.
            unsettled: set[int] = set()
            tags = []
            for sub in self._subscriptions:
                inbox: queue.Queue[tuple[int, Delivery]] = queue.Queue()
                tags.append(channel.basic_consume(sub.queue, _enqueue(inbox, unsettled)))
                thread = threading.Thread(
                    target=self._work,
                    args=(sub, inbox, _Settler(self, channel, unsettled), broker, lost),
                    name=f"{self._name}:{sub.queue}",
                    daemon=True,
                )
                thread.start()
                threads.append(thread)
            log.info("worker.consuming", worker=self._name, queues=self.queues)
            cancelled = False
            while any(t.is_alive() for t in threads):
                connection.process_data_events(time_limit=0.1)
                if self._stopping.is_set() and not cancelled:
                    for tag in tags:
                        channel.basic_cancel(tag)
                    cancelled = True
        except AMQPError:
            lost.set()
            self._fail_pending()
            for thread in threads:
                thread.join(timeout=30)
            raise
        finally:
            self._connection = None
        if connection.is_open:
            connection.close()
        log.info("worker.stopped", worker=self._name)

    def _on_connection(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the connection thread and wait for its result."""
        future: Future[T] = Future()

        def call() -> None:
            if future.done():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        connection = self._connection
        if connection is None:
            raise ConnectionLost("no broker connection")
        with self._lock:
            self._pending.add(future)
        try:
            connection.add_callback_threadsafe(call)
            return future.result()
        except AMQPError as exc:
            raise ConnectionLost(str(exc)) from exc
        finally:
            with self._lock:
                self._pending.discard(future)

    def _fail_pending(self) -> None:
        with self._lock:
            for future in self._pending:
                if not future.done():
                    future.set_exception(ConnectionLost("broker connection lost"))

    # --- the handler threads ------------------------------------------------------------
    def _work(
        self,
        sub: _Subscription,
        inbox: queue.Queue[tuple[int, Delivery]],
        settler: _Settler,
        broker: Broker,
        lost: threading.Event,
    ) -> None:
        while not (self._stopping.is_set() or lost.is_set()):
            try:
                batch = [inbox.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < sub.batch_size and not self._stopping.is_set():
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            tags = [tag for tag, _ in batch]
            sub.slot.begin(batch[0][1].key)  # the handler may say more: the request, per message
            try:
                requeue = set(sub.handler([delivery for _, delivery in batch], broker))
            except ConnectionLost:
                sub.slot.end()
                return  # unacked: the broker redelivers them to whoever consumes next
            except Exception as exc:
                log.exception(
                    "worker.handler_crashed",
                    worker=self._name,
                    message_id=batch[0][1].key,
                    messages=len(batch),
                    error=repr(exc),
                )
                requeue = set(range(len(batch)))
            if requeue:
                self._stopping.wait(_REQUEUE_PAUSE)  # a stop need not wait it out
            settler.settle(tags, requeue)
            sub.slot.end()


class _Settler:
    """Acks and nacks a handler's batches on the connection thread."""

    def __init__(self, consumer: Consumer, channel: Any, unsettled: set[int]) -> None:
        self._consumer = consumer
        self._channel = channel
        self._unsettled = unsettled

    def settle(self, tags: Sequence[int], requeue: Collection[int]) -> None:
        """Ack the batch's messages, nack (requeue) those at the `requeue` positions, in one
        call to the connection thread."""
        # If the channel is gone, the broker requeues the messages itself.
        with suppress(ConnectionLost, AMQPError):
            self._consumer._on_connection(lambda: self._settle(tags, requeue))

    def _settle(self, tags: Sequence[int], requeue: Collection[int]) -> None:
        channel, unsettled = self._channel, self._unsettled
        acks = [tag for position, tag in enumerate(tags) if position not in requeue]
        for position in requeue:
            channel.basic_nack(tags[position], requeue=True)
        unsettled.difference_update(tags)
        if not acks:
            return
        last = max(acks)
        if any(tag < last for tag in unsettled):
            # Another handler (a second queue on this channel) holds a message delivered in
            # between: a `multiple` ack would settle it too.
            for tag in acks:
                channel.basic_ack(tag)
        else:
            # One frame for the whole batch instead of one per message.
            channel.basic_ack(last, multiple=True)


class _ChannelBroker:
    """Publishes with confirms on the consumer's channel, from any thread."""

    def __init__(self, consumer: Consumer, channel: Any) -> None:
        self._consumer = consumer
        self._channel = channel

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        amqp_properties = pika.BasicProperties(
            **(properties or {}),
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=headers or {},
            message_id=message_id,
        )
        self._consumer._on_connection(
            lambda: self._channel.basic_publish(
                exchange, routing_key, body, properties=amqp_properties, mandatory=True
            )
        )


def _enqueue(inbox: queue.Queue[tuple[int, Delivery]], unsettled: set[int]) -> Callable[..., None]:
    def on_message(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
        delivery = Delivery(
            body=body,
            headers=dict(properties.headers or {}),
            message_id=properties.message_id,
            properties={
                name: value
                for name in KEPT_PROPERTIES
                if (value := getattr(properties, name)) is not None
            },
            routing_key=method.routing_key,
            redelivered=bool(method.redelivered),
        )
        unsettled.add(method.delivery_tag)
        inbox.put((method.delivery_tag, delivery))

    return on_message


__all__ = ["BatchHandler", "Broker", "ConnectionLost", "Consumer", "Handler"]
