"""A worker's publishes (retry tiers, dead letters) on a broker connection of their own.

RabbitMQ's resource alarms block every connection that publishes: the broker stops reading from
it, acks included, until the alarm clears. Were a handler to publish on the consuming
connection, one retry during a memory or disk alarm would stall the acks of every queue the
worker consumes and its stop with them (the connection thread waits for the confirm); so the
consuming connection never publishes, and a connection of the worker's own, opened at its first
publish, takes them. Its thread waits for the confirms, and keeps the connection's heartbeats
going in between; a blocked publish holds the handler that asked for it and nothing else.

A publish that fails (the connection lost, a message the broker could not route) raises
PublishFailed: the handler's messages go back to their queue, as after a lost consuming
connection, and the next publish opens a new connection, declaring the topology again as the
consuming connection does.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import pika
import structlog

from bus.broker.connection import BROKER_ERRORS, BlockedEpisodes, close_quietly

log = structlog.get_logger(__name__)

#: Seconds between two looks at an idle connection: often enough for its heartbeats (20 s).
_IDLE_PUMP_S = 1.0


class PublishFailed(Exception):
    """A publish got no confirm: the broker may not have it."""


class Publisher:
    """Publishes persistently with confirms on a connection of its own, from any thread."""

    def __init__(
        self,
        params: pika.ConnectionParameters,
        blocks: BlockedEpisodes,
        name: str,
        declare: Callable[[Any], None] | None = None,
    ) -> None:
        self._params = params
        self._declare = declare
        self._blocks = blocks  # touched on the publishing thread only
        self._name = name
        self._jobs: queue.Queue[tuple[Callable[[Any], None], Future[None]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

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
        """Publish and wait for the broker's confirm (as long as a resource alarm lasts, or
        until pika gives up the blocked connection); raises PublishFailed."""
        amqp_properties = pika.BasicProperties(
            **(properties or {}),
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=headers or {},
            message_id=message_id,
        )

        def send(channel: Any) -> None:
            channel.basic_publish(
                exchange, routing_key, body, properties=amqp_properties, mandatory=True
            )

        done: Future[None] = Future()
        with self._lock:
            if self._closed:
                raise PublishFailed("the worker is stopping")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"{self._name}:publish", daemon=True
                )
                self._thread.start()
            self._jobs.put((send, done))
        done.result()

    def close(self) -> None:
        """No more publishes; the connection closes once the one under way (if any) ends (a
        publish the broker holds may never end: the thread is a daemon thread)."""
        with self._lock:
            self._closed = True
            if self._thread is not None:
                self._jobs.put(None)

    # --- the publishing thread -------------------------------------------------------------
    def _run(self) -> None:
        connection: Any = None
        channel: Any = None
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=_IDLE_PUMP_S)
                except queue.Empty:
                    connection = self._pump(connection)
                    continue
                if job is None:
                    return  # closed
                send, done = job
                try:
                    if connection is None:
                        connection = pika.BlockingConnection(self._params)
                        self._blocks.watch(connection)
                        channel = connection.channel()
                        if self._declare is not None:
                            self._declare(channel)
                        channel.confirm_delivery()
                    send(channel)
                except Exception as exc:  # a broker error, or the declare's: none may be lost
                    done.set_exception(PublishFailed(repr(exc)))
                    # The next publish opens a new connection, and declares again what an
                    # unroutable message may have missed (a retry queue deleted by hand).
                    close_quietly(connection)
                    connection = channel = None
                    continue
                self._blocks.cleared()
                done.set_result(None)
        finally:
            close_quietly(connection)

    def _pump(self, connection: Any) -> Any:
        """Let an idle connection answer heartbeats; None once it is gone."""
        if connection is None:
            return None
        try:
            connection.process_data_events(time_limit=0)
        except BROKER_ERRORS as exc:
            log.info("worker.publisher_connection_lost", worker=self._name, error=repr(exc))
            close_quietly(connection)
            return None
        return connection
