"""Persistent publishing with windowed publisher confirms: send batches, wait for their confirms.

pika's BlockingChannel waits for the confirm of each message before sending the next (one round
trip per message). Here a batch is written to the channel underneath it in one go and the
connection's I/O loop runs until the broker has confirmed all of it, which is several times
faster and still tells us exactly when a whole batch is safe on the broker. A caller may send
the next batch before waiting for the last one (`send`, then `wait`): the broker routes and
stores one batch while the caller prepares the next, instead of each side idling in turn.

While the broker blocks the connection for a resource alarm, the confirm timeout does not run:
the broker holds the batch until the alarm clears, which is no broker failing to answer, and
giving the batch up would only publish it twice. pika gives such a connection up after
BLOCKED_CONNECTION_TIMEOUT (its close frame would not be read before the alarm clears).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


class Outgoing(NamedTuple):
    """One message to publish: where to, what, and whether it must reach a queue."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    #: True for commands: a message no queue takes is returned and raises Unroutable.
    mandatory: bool = False


_PERSISTENT = pika.DeliveryMode.Persistent.value


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
    # The relay makes three of these a request: each attribute is read once.
    kind = envelope.type.value
    correlation_id = envelope.correlationid
    table = {"correlationid": correlation_id, "traceparent": envelope.traceparent, "type": kind}
    if headers:
        table.update(headers)
    properties = pika.BasicProperties(
        message_id=envelope.id,
        content_type=STRUCTURED_CONTENT_TYPE,
        delivery_mode=_PERSISTENT,
        type=kind,
        timestamp=int(envelope.time.timestamp()),
        app_id="civicbus",
        correlation_id=correlation_id,
        headers=table,
    )
    if body is None:
        body = envelope.model_dump_json().encode()
    return Outgoing(exchange, routing_key, body, properties, mandatory)


# Compared by identity: two batches of one size both confirmed would otherwise be equal, and
# `wait` would forget the other one (and compare whole tag sets to find it).
@dataclass(eq=False)
class Sent:
    """A batch on its way: what the broker has yet to confirm of it, and what went wrong."""

    size: int
    unconfirmed: set[int] = field(default_factory=set)
    #: The message ids of its mandatory messages: a message the broker returns is one of them.
    mandatory: set[str] = field(default_factory=set)
    nacked: int = 0
    returned: list[tuple[str, str, str]] = field(default_factory=list)
    #: The delivery tag of its first message; the others follow it one by one.
    first_tag: int = 1
    #: Every tag of it below this one is settled (a `multiple` ack or nack covered it).
    floor: int = field(init=False)

    def __post_init__(self) -> None:
        self.floor = self.first_tag

    def settle(self, tag: int, *, multiple: bool) -> int:
        """Take the broker's ack or nack of `tag` (`multiple`: of every tag up to it too);
        returns how many of this batch's messages it settled."""
        if not multiple:
            if tag not in self.unconfirmed:
                return 0
            self.unconfirmed.remove(tag)
            return 1
        # The broker acks a batch in many `multiple` frames: scanning the batch's every tag for
        # each frame cost the relay a tenth of its time. From the floor up, each tag is looked
        # at once.
        top = min(tag, self.first_tag + self.size - 1)
        if top < self.floor:
            return 0
        before = len(self.unconfirmed)
        for settled in range(self.floor, top + 1):
            self.unconfirmed.discard(settled)
        self.floor = top + 1
        return before - len(self.unconfirmed)


def _nothing() -> None:
    pass


#: Bytes per socket write when a batch goes out. pika buffers each frame on its own (three a
#: message) and sends each with its own send(): joined into pieces this size, the relay's CPU
#: a row fell by a sixth (mostly kernel time). Pieces, not one write of the whole batch: a
#: partial send makes pika copy the rest of its piece.
WRITE_PIECE = 64 * 1024


def _join_frames(connection: Any) -> None:
    """Join the frames pika holds for the connection's socket into pieces of about WRITE_PIECE
    bytes, in order. A connection without pika's usual transport buffer is left as it is."""
    transport = getattr(getattr(connection, "_impl", None), "_transport", None)
    buffered = getattr(transport, "_tx_buffers", None)
    if not isinstance(buffered, deque) or len(buffered) < 2:
        return
    pieces: list[bytes] = []
    piece: list[bytes] = []
    size = 0
    for frame in buffered:
        piece.append(frame)
        size += len(frame)
        if size >= WRITE_PIECE:
            pieces.append(b"".join(piece))
            piece, size = [], 0
    if piece:
        pieces.append(b"".join(piece))
    # The same deque, the same bytes in the same order: pika's count of them still holds.
    buffered.clear()
    buffered.extend(pieces)


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
        #: The batches sent and not yet waited for, oldest first.
        self._in_flight: list[Sent] = []
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

    def send(self, messages: Sequence[Outgoing]) -> Sent:
        """Publish every message and hand them to the broker, without waiting for confirms:
        `wait` for them. Raises BrokerUnavailable if the connection fails meanwhile."""
        sent = Sent(len(messages), first_tag=self._next_tag)
        with broker_errors(f"publishing a batch of {len(messages)}"):
            for message in messages:
                self._channel.basic_publish(
                    message.exchange,
                    message.routing_key,
                    message.body,
                    message.properties,
                    mandatory=message.mandatory,
                )
                sent.unconfirmed.add(self._next_tag)
                self._next_tag += 1
                if message.mandatory:
                    sent.mandatory.add(str(message.properties.message_id))
            self._in_flight.append(sent)
            _join_frames(self._connection)
            # Out to the broker now (this returns once the socket took it all), so that it
            # routes and stores the batch while the caller goes on.
            self._connection.process_data_events(time_limit=0)
        return sent

    def wait(self, sent: Sent) -> None:
        """Wait until the broker confirmed every message of `sent`.

        Raises BrokerUnavailable if the connection fails, the broker nacks a message, or the
        confirms do not arrive within the timeout; Unroutable if a mandatory message was
        returned. Either way, none of the batch may be taken as delivered.
        """
        if sent.unconfirmed and sent not in self._in_flight:
            # Abandoned, or sent on a connection since replaced: no confirm of it can come here
            # (this channel's tags are others), so it would only wait out the timeout.
            raise BrokerUnavailable(
                f"a batch of {sent.size} was given up or sent on another connection: not confirmed"
            )
        with broker_errors(f"waiting for the confirms of a batch of {sent.size}"):
            deadline = time.monotonic() + self._confirm_timeout
            while sent.unconfirmed:
                if self._blocked:
                    deadline = time.monotonic() + self._confirm_timeout
                self._process_until(deadline, f"waiting for {sent.size} confirms")
                self._while_waiting()
        if sent in self._in_flight:
            self._in_flight.remove(sent)
        if sent.nacked:
            raise BrokerUnavailable(
                f"the broker refused {sent.nacked} of {sent.size} messages (nack)"
            )
        if sent.returned:
            raise Unroutable(sent.returned)

    def abandon(self) -> None:
        """Forget the batches sent and not waited for (their caller gave them up and will send
        them again): confirms that still come for them change nothing."""
        self._in_flight.clear()

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
        nack = isinstance(method, pika.spec.Basic.Nack)
        finished = False
        for sent in self._in_flight:
            done = sent.settle(tag, multiple=method.multiple)
            if not done:
                continue
            if nack:
                sent.nacked += done
            finished = finished or not sent.unconfirmed
        if finished:
            self._wake()

    def _wake(self) -> None:
        # Callbacks on the channel beneath the blocking wrapper do not end pika's
        # process_data_events() wait; a (same-thread) threadsafe callback does, at once.
        self._connection.add_callback_threadsafe(_nothing)

    def _on_return(
        self, _channel: Any, method: Any, properties: pika.BasicProperties, _body: bytes
    ) -> None:
        message_id = str(properties.message_id)
        # The oldest batch holding it: a batch sent again after a failure is newer.
        for sent in self._in_flight:
            if message_id in sent.mandatory:
                sent.returned.append((message_id, method.exchange, method.routing_key))
                break
        log.error(
            "broker.message_returned",
            message_id=properties.message_id,
            exchange=method.exchange,
            routing_key=method.routing_key,
            reply=method.reply_text,
        )
