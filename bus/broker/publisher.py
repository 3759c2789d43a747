"""Persistent publishing with windowed publisher confirms: send a batch, wait for every confirm.

pika's BlockingChannel waits for the confirm of each message before sending the next (one round
trip per message). Here the batch is written to the channel underneath it in one go and the
connection's I/O loop runs until the broker has confirmed all of it, which is several times
faster and still tells us exactly when a whole batch is safe on the broker.

While the broker blocks the connection for a resource alarm, the confirm timeout does not run:
the broker holds the batch until the alarm clears, which is no broker failing to answer, and
giving the batch up would only publish it twice. pika gives such a connection up after
BLOCKED_CONNECTION_TIMEOUT (its close frame would not be read before the alarm clears).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import structlog

from bus.broker.connection import BrokerUnavailable, broker_errors
from schemas.events import STRUCTURED_CONTENT_TYPE, Envelope

log = structlog.get_logger(__name__)

#: Seconds to wait for the confirms of one batch before the connection is given up.
CONFIRM_TIMEOUT = 30.0


class Unroutable(Exception):
    """The broker confirmed a mandatory message but no queue was bound for it (returned)."""

    def __init__(self, returned: Sequence[tuple[str, str, str]]) -> None:
        self.returned = list(returned)
        first = ", ".join(f"{m} to {e} with key {k!r}" for m, e, k in self.returned[:3])
        more = f" and {len(self.returned) - 3} more" if len(self.returned) > 3 else ""
        super().__init__(
            f"no queue is bound for message {first}{more}; "
            "declare the topology (civicbus topology declare) for this adapter instance"
        )


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: where to, what, and whether it must reach a queue."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    #: True for commands: a message no queue takes is returned and raises Unroutable.
    mandatory: bool = False


def envelope_message(
    envelope: Envelope,
    *,
    exchange: str,
    routing_key: str,
    mandatory: bool = False,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Outgoing:
    """A persistent message carrying a CloudEvents envelope in structured mode, its id as the
    message id.

    `body` is the envelope's JSON when the caller already has it (one envelope, two messages).
    """
    properties = pika.BasicProperties(
        message_id=envelope.id,
        content_type=STRUCTURED_CONTENT_TYPE,
        delivery_mode=pika.DeliveryMode.Persistent,
        type=str(envelope.type),
        timestamp=int(envelope.time.timestamp()),
        app_id="civicbus",
        correlation_id=envelope.correlationid,
        headers={
            "correlationid": envelope.correlationid,
            "traceparent": envelope.traceparent,
            "type": str(envelope.type),
            **(headers or {}),
        },
    )
    if body is None:
        body = envelope.model_dump_json().encode()
    return Outgoing(exchange, routing_key, body, properties, mandatory)


@dataclass
class _Window:
    """What the broker has yet to confirm in the current batch."""

    unconfirmed: set[int] = field(default_factory=set)
    nacked: int = 0
    returned: list[tuple[str, str, str]] = field(default_factory=list)


def _nothing() -> None:
    pass


class ConfirmingPublisher:
    """Publishes batches on one channel of a BlockingConnection, each batch confirmed as a whole.

    Not thread-safe: use it from the thread that owns the connection.
    """

    def __init__(
        self,
        connection: Any,
        *,
        confirm_timeout: float = CONFIRM_TIMEOUT,
        while_waiting: Callable[[], None] = _nothing,
    ) -> None:
        """`while_waiting` is called on each pass of a batch's wait for its confirms, at least
        once a second (e.g. to renew a lease): keep it cheap; it must not raise."""
        self._connection = connection
        self._confirm_timeout = confirm_timeout
        self._while_waiting = while_waiting
        self._window = _Window()
        self._next_tag = 1
        self._blocked = False
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        with broker_errors("opening a publishing channel"):
            # The asynchronous channel beneath pika's blocking wrapper: it lets a whole batch
            # be in flight at once, while the blocking connection still drives all I/O.
            self._channel = connection.channel()._impl
            ready: list[bool] = []

            def _on_select_ok(_frame: Any) -> None:
                ready.append(True)
                self._wake()

            self._channel.confirm_delivery(
                ack_nack_callback=self._on_confirm, callback=_on_select_ok
            )
            self._channel.add_on_return_callback(self._on_return)
            deadline = time.monotonic() + confirm_timeout
            while not ready:
                self._process_until(deadline, "turning on publisher confirms")

    def publish_batch(self, messages: Sequence[Outgoing]) -> None:
        """Publish every message, then wait until the broker confirmed all of them.

        Raises BrokerUnavailable if the connection fails, the broker nacks a message, or the
        confirms do not arrive within the timeout; Unroutable if a mandatory message was
        returned. Either way, none of the batch may be taken as delivered.
        """
        if not messages:
            return
        self._window = _Window()
        with broker_errors(f"publishing a batch of {len(messages)}"):
            for message in messages:
                self._channel.basic_publish(
                    message.exchange,
                    message.routing_key,
                    message.body,
                    message.properties,
                    mandatory=message.mandatory,
                )
                self._window.unconfirmed.add(self._next_tag)
                self._next_tag += 1
            deadline = time.monotonic() + self._confirm_timeout
            while self._window.unconfirmed:
                if self._blocked:
                    deadline = time.monotonic() + self._confirm_timeout
                self._process_until(deadline, f"waiting for {len(messages)} confirms")
                self._while_waiting()
        if self._window.nacked:
            raise BrokerUnavailable(
                f"the broker refused {self._window.nacked} of {len(messages)} messages (nack)"
            )
        if self._window.returned:
            raise Unroutable(self._window.returned)

    def _process_until(self, deadline: float, doing: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerUnavailable(f"{doing}: no answer from the broker in time")
        self._connection.process_data_events(time_limit=min(remaining, 1.0))
        if not self._channel.is_open:
            raise BrokerUnavailable(f"{doing}: the broker closed the channel")

    def _on_blocked(self, _connection: Any, _frame: Any) -> None:
        self._blocked = True

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        self._blocked = False

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag: int = method.delivery_tag
        done = {t for t in self._window.unconfirmed if t <= tag} if method.multiple else {tag}
        self._window.unconfirmed -= done
        if isinstance(method, pika.spec.Basic.Nack):
            self._window.nacked += len(done)
        if not self._window.unconfirmed:
            self._wake()

    def _wake(self) -> None:
        # Callbacks on the channel beneath the blocking wrapper do not end pika's
        # process_data_events() wait; a (same-thread) threadsafe callback does, at once.
        self._connection.add_callback_threadsafe(_nothing)

    def _on_return(
        self, _channel: Any, method: Any, properties: pika.BasicProperties, _body: bytes
    ) -> None:
        self._window.returned.append(
            (str(properties.message_id), method.exchange, method.routing_key)
        )
        log.error(
            "broker.message_returned",
            message_id=properties.message_id,
            exchange=method.exchange,
            routing_key=method.routing_key,
            reply=method.reply_text,
        )
