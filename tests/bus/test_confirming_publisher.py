"""The confirming publisher against a real RabbitMQ vhost: batches sent one behind the other."""

from __future__ import annotations

import uuid
from typing import Any

import pika
import pytest

from bus.broker import publisher as publisher_module
from bus.broker import topology as t
from bus.broker.connection import BrokerUnavailable
from bus.broker.publisher import (
    WRITE_PIECE,
    ConfirmingPublisher,
    Outgoing,
    Sent,
    Unroutable,
    _join_frames,
)

pytestmark = pytest.mark.rabbitmq


def command(instance: str, body: bytes = b"{}") -> Outgoing:
    """A mandatory command for `instance` (its queue is declared unless the name is made up)."""
    properties = pika.BasicProperties(message_id=str(uuid.uuid4()), delivery_mode=2)
    return Outgoing(
        t.COMMANDS_EXCHANGE, t.command_routing_key(instance), body, properties, mandatory=True
    )


@pytest.fixture
def publisher(amqp_url: str, channel: Any) -> Any:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield ConfirmingPublisher(connection, confirm_timeout=10)
    connection.close()


def test_a_batch_sent_behind_another_is_confirmed_on_its_own(publisher: Any, channel: Any) -> None:
    queue = t.work_queue("sap-roads")
    channel.queue_purge(queue)
    first = [command("sap-roads") for _ in range(3)]
    second = [command("sap-roads") for _ in range(2)]

    ahead = publisher.send(first)
    behind = publisher.send(second)
    publisher.wait(behind)  # the later one first: each batch is waited for by itself
    publisher.wait(ahead)

    assert not ahead.unconfirmed and not behind.unconfirmed
    got = []
    while (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
        got.append(message[1].message_id)
    assert got == [m.properties.message_id for m in first + second]  # in the order sent


def test_a_returned_message_fails_the_batch_it_was_sent_in_only(publisher: Any) -> None:
    lost = command("no-such-instance")
    ahead = publisher.send([command("sap-roads"), command("sap-roads")])
    behind = publisher.send([command("sap-roads"), lost])

    publisher.wait(ahead)
    with pytest.raises(Unroutable) as raised:
        publisher.wait(behind)

    assert [m for m, _, _ in raised.value.returned] == [lost.properties.message_id]


def test_an_abandoned_batch_changes_nothing_for_the_batches_sent_after_it(
    publisher: Any,
) -> None:
    given_up = publisher.send([command("no-such-instance"), command("sap-roads")])
    publisher.abandon()
    again = publisher.send([command("sap-roads")])

    publisher.wait(again)  # neither the given-up batch's return nor its confirms land here

    assert not again.unconfirmed and not again.returned
    assert given_up.returned == []


def test_waiting_for_an_abandoned_batch_fails_at_once_rather_than_wait_out_the_timeout(
    publisher: Any,
) -> None:
    given_up = publisher.send([command("sap-roads")])
    publisher.abandon()
    with pytest.raises(BrokerUnavailable, match="given up or sent on another connection"):
        publisher.wait(given_up)  # before: the whole timeout, then "no answer ... in time"


def test_waiting_for_one_of_two_alike_batches_forgets_that_one_only(publisher: Any) -> None:
    # Two confirmed batches of one event each: alike in every field.
    ahead = publisher.send([event()])
    behind = publisher.send([event()])

    publisher.wait(behind)

    assert [sent is ahead for sent in publisher._in_flight] == [True]
    publisher.wait(ahead)
    assert publisher._in_flight == []


def event() -> Outgoing:
    properties = pika.BasicProperties(message_id=str(uuid.uuid4()), delivery_mode=2)
    return Outgoing(t.EVENTS_EXCHANGE, "request.status_changed.open", b"{}", properties)


def test_a_batch_acked_in_pieces_and_beyond_settles_each_message_once() -> None:
    sent = Sent(5, unconfirmed={10, 11, 12, 13, 14}, first_tag=10)

    assert sent.settle(9, multiple=True) == 0  # an earlier batch's
    assert sent.settle(12, multiple=False) == 1
    assert sent.settle(11, multiple=True) == 2  # 10 and 11
    assert sent.settle(12, multiple=True) == 0  # settled already
    assert sent.settle(30, multiple=True) == 2  # 13, 14 and a later batch's tags
    assert sent.settle(14, multiple=False) == 0
    assert not sent.unconfirmed


def test_a_batch_larger_than_a_write_piece_goes_out_joined_and_arrives_whole_in_order(
    publisher: Any, channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = t.work_queue("sap-roads")
    channel.queue_purge(queue)
    # 200 messages of ~1 KB: three frames each, about three write pieces in all.
    batch = [command("sap-roads", body=f"{n:04d}".encode() * 250) for n in range(200)]
    pieces: list[list[int]] = []

    def joining(connection: Any) -> None:
        _join_frames(connection)  # on pika's own buffer of the real connection
        pieces.append([len(piece) for piece in connection._impl._transport._tx_buffers])

    monkeypatch.setattr(publisher_module, "_join_frames", joining)
    publisher.wait(publisher.send(batch))

    [sizes] = pieces
    assert len(sizes) > 1 and all(size >= WRITE_PIECE for size in sizes[:-1])
    got = []
    while (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
        got.append(message[2])
    assert got == [m.body for m in batch]  # every byte, in the order sent
