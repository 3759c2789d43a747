"""The consuming loop: manual acks, bounded prefetch, broker I/O on pika's connection thread.

The main thread owns the pika connection and only pumps its events (so heartbeats keep
flowing); each consumed queue has one handler thread, which processes its messages in order and
asks the connection thread to ack through `add_callback_threadsafe`. A batch handler
gets every message already delivered (up to its batch size) at once, and the whole batch is
acked in one call to the connection thread after the handler returned. A stop request (SIGTERM)
cancels the consumers, lets the messages in hand finish and be acked, and returns; messages
prefetched but not started go back to the queue when the channel closes. Each handler thread
notes the message it holds in its slot, which the heartbeat (if any) reports from a thread of
its own.

A stop waits for the messages in hand for the stop grace at most. A handler still busy then
(a back-end that never answers, a deadlock) is left behind: the worker logs which messages it
holds, closes the connection without acking them, so that the broker redelivers them (the
idempotent consumer finds what already reached the back-end), and returns False; the handler
threads are daemon threads and end with the process.

A second stop request (`stop_now`: a second SIGTERM, or Ctrl-C twice) does the same without
waiting out the grace: what a handler holds then is left to the broker at once.

The broker cancelling a consumer itself (Basic.Cancel: its queue was deleted, or its node
went away) counts as a lost connection too: the connection is closed, and a new one declares and
consumes every queue again, each once its previous handler thread has ended. The consumer's own
cancels, of a stop, are not the broker's.

A queue never has two handler threads at once. After a lost connection, the broker gives the
messages in hand to the next consumer, possibly this one; a handler still busy with one of them
(a slow back-end call) would otherwise run beside a new thread handling its redelivery, and
both could create the work. So a new connection consumes each queue only once that queue's
previous thread has ended; the other queues resume at once.

A handler's publishes (a retry tier, a dead letter) go out on a connection of their own
(bus.worker._publisher), so that a RabbitMQ resource alarm, which blocks connections that
publish, holds the handler that publishes and never the acks of the others or a stop; the
worker logs the block once per episode (`worker.broker_blocked`, `worker.broker_unblocked`).
A publish that fails sends the handler's messages back to the queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pika
import structlog
from pika.exceptions import AMQPError, ChannelWrongStateError, ConsumerCancelled

from bus.broker.connection import (
    BROKER_ERRORS,
    BlockedEpisodes,
    close_quietly,
    connection_parameters,
)
from bus.worker._delivery import KEPT_PROPERTIES, Delivery
from bus.worker._heartbeat import Heartbeat, Slot
from bus.worker._publisher import Publisher, PublishFailed
from bus.worker._signals import StopSignals

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Pause before a message whose handling crashed (e.g. the store is down) is requeued.
_REQUEUE_PAUSE = 1.0

#: Seconds a stopping consumer waits for the messages in hand before it leaves them to the
#: broker. Below `civicbus run`'s wait before SIGKILL (bus.supervisor.GRACE_SECONDS, 15 s) and
#: systemd's TimeoutStopSec (60 s), with room left to close and remove the liveness reports.
STOP_GRACE = 8.0

#: Seconds between reminders that a queue waits for a handler thread of a lost connection.
_HELD_BACK_LOG_EVERY = 30.0


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
        """Publish persistently and wait for the broker's confirm; raises PublishFailed.
        `properties`: the original message's (Delivery.properties), for a copy of it (a retry
        tier, the dead-letter queue)."""


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
    """Consume one or more queues with manual acks until `stop()` is called; a stop waits
    `stop_grace` seconds at most for the messages in hand, `stop_now()` not at all."""

    def __init__(
        self,
        amqp_url: str,
        *,
        prefetch: int,
        name: str,
        declare: Declare | None = None,
        reconnect_delay: float = 2.0,
        heartbeat: Heartbeat | None = None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self._params = connection_parameters(amqp_url)
        self._prefetch = prefetch
        self._name = name
        self._declare = declare
        self._reconnect_delay = reconnect_delay
        self._heartbeat = heartbeat
        self._stop_grace = stop_grace
        self._subscriptions: list[_Subscription] = []
        self._stopping = threading.Event()
        self._stopping_now = threading.Event()
        # Set when a stop left a handler busy with messages the broker is to redeliver.
        self._abandoned = False
        self._connection: Any = None
        self._pending: set[Future[Any]] = set()
        self._lock = threading.Lock()
        # Each queue's latest handler thread, kept across connections (see the module's text).
        self._threads: dict[str, threading.Thread] = {}
        # When the stop began, as its first check saw it (the grace counts from there).
        self._stop_began: float | None = None
        # Touched on the publishing thread only; the heartbeat only reads the episode going
        # on, to report it.
        blocks = BlockedEpisodes("worker", worker=name)
        self._publisher = Publisher(self._params, blocks, name, declare)
        if heartbeat is not None:
            heartbeat.watch_blocks(lambda: blocks.current)

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
        """Ask the consumer to finish the messages in hand, within the stop grace, and return
        (thread- and signal-safe)."""
        self._stopping.set()

    def stop_now(self) -> None:
        """Stop without waiting for the messages in hand: they are left unacknowledged, for
        the broker to redeliver, and `run` returns False (thread- and signal-safe)."""
        self._stopping_now.set()
        self._stopping.set()

    @property
    def stop_event(self) -> threading.Event:
        """Set once the consumer is stopping; handlers that wait should wait on it."""
        return self._stopping

    def run(self, *, install_signal_handlers: bool = False) -> bool:
        """Consume until stopped; reconnect after a lost connection. Returns False when the
        stop grace ran out, or `stop_now` cut it short, with a handler still busy (its messages
        left unacked, for the broker to redeliver), True when every handler was done.

        `install_signal_handlers`: SIGTERM or SIGINT stops, a second one of the same kind stops
        now (see StopSignals)."""
        if install_signal_handlers:
            StopSignals(self.stop, self.stop_now).install()
        if not self._subscriptions:
            # Connecting would consume nothing and return at once, over and over.
            log.warning("worker.nothing_to_consume", worker=self._name)
            self._stopping.wait()
            return True
        if self._heartbeat is not None:
            self._heartbeat.start()
        crashed = True
        try:
            self._run_until_stopped()
            crashed = False
        finally:
            self._publisher.close()
            if self._heartbeat is not None:
                # After a crash the reports are left to go stale, for `civicbus status`. A stop
                # that left a message behind removes them as a clean one does: the message is
                # back in the queue, not held by a worker that went silent.
                self._heartbeat.stop(clean=not crashed)
        return not self._abandoned

    def _run_until_stopped(self) -> None:
        while not self._stopping.is_set():
            try:
                self._run_connection()
            except BROKER_ERRORS as exc:
                if self._stopping.is_set():
                    break
                log.warning("worker.connection_lost", worker=self._name, error=repr(exc))
                self._stopping.wait(self._reconnect_delay)
        # Stopped while disconnected: handlers of the lost connection may still be busy.
        while self._busy() and not self._abandoned:
            if leaving := self._leave_now():
                self._abandon(leaving)
                break
            time.sleep(0.05)

    # --- the connection thread ----------------------------------------------------------
    def _run_connection(self) -> None:
        connection = pika.BlockingConnection(self._params)
        self._connection = connection
        lost = threading.Event()
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self._prefetch)
            if self._declare is not None:
                self._declare(channel)
            # Delivery tags handed to a handler and not yet acked or nacked (touched on this
            # thread only): a batch is acked with one `multiple` ack when none is left below it.
            unsettled: set[int] = set()
            tags: list[str] = []
            started: list[threading.Thread] = []
            # The queue of each consumer tag, and those of the consumers the broker cancelled
            # (pika calls back on this thread, within process_data_events).
            queues: dict[str, str] = {}
            cancelled: list[str] = []
            channel.add_on_cancel_callback(
                lambda frame: cancelled.append(queues.get(frame.method.consumer_tag, "?"))
            )

            def start(sub: _Subscription) -> None:
                # SimpleQueue: put and get in C, for a message each on both threads (a Queue
                # takes a Python-level lock and condition for each, under the one GIL).
                inbox: queue.SimpleQueue[tuple[int, Delivery]] = queue.SimpleQueue()
                # This queue's share of `unsettled`, reported by the heartbeat: the broker's
                # passive declare counts ready messages only, not those a consumer holds.
                unacked: set[int] = set()
                sub.slot.unacked = unacked
                tag = channel.basic_consume(sub.queue, _enqueue(inbox, unsettled, unacked))
                tags.append(tag)
                queues[tag] = sub.queue
                thread = threading.Thread(
                    target=self._work,
                    args=(sub, inbox, _Settler(self, channel, unsettled, unacked), lost),
                    name=f"{self._name}:{sub.queue}",
                    daemon=True,
                )
                self._threads[sub.queue] = thread
                started.append(thread)
                thread.start()

            held_back = [sub for sub in self._subscriptions if self._held(sub)]
            # Not once stopping (`declare` may stop the consumer: the webhook worker's does when
            # its list of subscriptions changed): the loop below then ends at once.
            if not self._stopping.is_set():
                for sub in self._subscriptions:
                    if sub not in held_back:
                        start(sub)
                log.info("worker.consuming", worker=self._name, queues=self.queues)
            remind_at = time.monotonic()
            while True:
                connection.process_data_events(time_limit=0.1)
                if channel.is_closed:
                    # The broker closed the channel and left the connection open (a message
                    # held past its consumer_timeout, 30 min by default, say): no delivery or
                    # ack passes any more, and pika raises nothing here. A lost connection too.
                    raise ChannelWrongStateError("the broker closed the consumer's channel")
                if cancelled and not self._stopping.is_set():
                    for name in cancelled:
                        log.warning("worker.consumer_cancelled", worker=self._name, queue=name)
                    # Handled below as any lost connection: the handler threads stop taking
                    # its messages, and the next connection declares and consumes again.
                    raise ConsumerCancelled(", ".join(cancelled))
                if self._stopping.is_set():
                    if tags:
                        for tag in tags:
                            channel.basic_cancel(tag)
                        tags.clear()
                    if not self._busy():
                        break
                    if leaving := self._leave_now():
                        # Not acked: closing the connection below gives them back to the broker.
                        self._abandon(leaving)
                        break
                    continue
                for sub in [sub for sub in held_back if not self._held(sub)]:
                    held_back.remove(sub)
                    start(sub)
                    log.info("worker.queue_resumed", worker=self._name, queue=sub.queue)
                if held_back and time.monotonic() >= remind_at:
                    self._log_held_back(held_back)
                    remind_at = time.monotonic() + _HELD_BACK_LOG_EVERY
                if not held_back and not any(thread.is_alive() for thread in started):
                    break  # every handler gave up on this connection: open a new one
        except BROKER_ERRORS:
            # A channel-level error (or a socket error pika did not wrap) may leave the
            # connection open: the next attempt makes a new one, and this one would stay on the
            # broker, its consumers taking messages no one reads, until its heartbeats ran out.
            close_quietly(connection)
            raise
        finally:
            # However this connection ended: its handler threads stop taking its messages, or
            # they would hold their queues back from the next connection; and the broker takes
            # back what it had delivered on it.
            lost.set()
            for sub in self._subscriptions:
                sub.slot.unacked = ()
            self._disconnect()
        if connection.is_open:
            connection.close()
        log.info("worker.stopped", worker=self._name)

    def _held(self, sub: _Subscription) -> bool:
        """Whether `sub`'s queue still has a handler thread at work (of a lost connection)."""
        thread = self._threads.get(sub.queue)
        return thread is not None and thread.is_alive()

    def _busy(self) -> bool:
        return any(thread.is_alive() for thread in self._threads.values())

    def _leave_now(self) -> str | None:
        """Once stopping: the log event under which to leave the messages in hand to the
        broker now (the grace, counted from the first call, ran out; or `stop_now` cut it
        short while a handler holds a message), None to wait on."""
        now = time.monotonic()
        if self._stop_began is None:
            self._stop_began = now
        if self._stopping_now.is_set() and self._holding():
            return "worker.stop_cut_short"
        if now - self._stop_began >= self._stop_grace:
            return "worker.stop_grace_expired"
        return None

    def _holding(self) -> bool:
        """Whether a handler thread still at work holds a message (one holding nothing ends
        within its 0.1 s inbox wait)."""
        return any(self._held(sub) and sub.slot.work is not None for sub in self._subscriptions)

    def _log_held_back(self, held_back: list[_Subscription]) -> None:
        now = time.time()
        for sub in held_back:
            work = sub.slot.work  # read once: the thread may end it meanwhile
            log.warning(
                "worker.queue_waits_for_handler",
                worker=self._name,
                queue=sub.queue,
                message_id=work.message_id if work else None,
                request_id=work.request_id if work else None,
                held_s=round(now - work.since, 1) if work else None,
            )

    def _abandon(self, event: str) -> None:
        """Say which messages the handler threads still busy hold, and leave them behind;
        `event`: why (see `_leave_now`)."""
        now = time.time()
        held = []
        busy = [sub for sub in self._subscriptions if self._held(sub)]
        for sub in busy:
            work = sub.slot.work  # read once: the thread may end it meanwhile
            if work is not None:
                held.append(
                    {
                        "queue": sub.queue,
                        "message_id": work.message_id,
                        "request_id": work.request_id,
                        "held_s": round(now - work.since, 1),
                    }
                )
        waited = time.monotonic() - (self._stop_began or time.monotonic())
        log.warning(
            event,
            worker=self._name,
            grace_s=self._stop_grace,
            waited_s=round(waited, 1),
            queues=[sub.queue for sub in busy],
            held=held,
        )
        self._abandoned = True

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

        with self._lock:
            # Checked under the lock: once `_disconnect` ran, no call waits on this connection.
            connection = self._connection
            if connection is None:
                raise ConnectionLost("no broker connection")
            self._pending.add(future)
        try:
            connection.add_callback_threadsafe(call)
            return future.result()
        except AMQPError as exc:
            raise ConnectionLost(str(exc)) from exc
        finally:
            with self._lock:
                self._pending.discard(future)

    def _disconnect(self) -> None:
        """No more calls to the connection thread: those waiting, and any to come, raise
        ConnectionLost (a call not run yet is skipped, not run late)."""
        with self._lock:
            self._connection = None
            for future in self._pending:
                if not future.done():
                    future.set_exception(ConnectionLost("broker connection lost"))

    # --- the handler threads ------------------------------------------------------------
    def _work(
        self,
        sub: _Subscription,
        inbox: queue.SimpleQueue[tuple[int, Delivery]],
        settler: _Settler,
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
                requeue = set(sub.handler([delivery for _, delivery in batch], self._publisher))
            except ConnectionLost:
                sub.slot.end()
                return  # unacked: the broker redelivers them to whoever consumes next
            except PublishFailed as exc:
                # A retry or dead letter could not be handed on (a batch handler that knows
                # which messages it handed on returns the others instead): all back to the
                # queue, as after a lost connection; a repeat is found when it comes back.
                log.warning(
                    "worker.publish_failed",
                    worker=self._name,
                    message_id=batch[0][1].key,
                    messages=len(batch),
                    error=str(exc),
                )
                requeue = set(range(len(batch)))
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

    def __init__(
        self, consumer: Consumer, channel: Any, unsettled: set[int], unacked: set[int]
    ) -> None:
        self._consumer = consumer
        self._channel = channel
        # The channel's unsettled tags, and those of the handler's own queue.
        self._unsettled = unsettled
        self._unacked = unacked

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
        self._unacked.difference_update(tags)
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


def _enqueue(
    inbox: queue.SimpleQueue[tuple[int, Delivery]], unsettled: set[int], unacked: set[int]
) -> Callable[..., None]:
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
        unacked.add(method.delivery_tag)
        inbox.put((method.delivery_tag, delivery))

    return on_message


__all__ = ["STOP_GRACE", "BatchHandler", "Broker", "ConnectionLost", "Consumer", "Handler"]
