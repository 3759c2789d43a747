"""The outbox relay against a real RabbitMQ vhost and a real SQLite store."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from bus import deadletters
from bus.broker import topology as t
from bus.broker.connection import BrokerUnavailable
from bus.broker.publisher import Unroutable
from bus.config import Config
from bus.relay import Relay, RelaySettings
from bus.store import Store
from schemas.events import Envelope, EventType
from tests.asyncapi_support import assert_documented


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    store = Store.open(sqlite_url)
    yield store
    store.close()


def accept(store: Store, service_code: str, event: EventType = EventType.CREATED) -> Envelope:
    """Write an event to the outbox as the API would (the request itself is not needed here)."""
    request_id = uuid.uuid4().hex
    jurisdiction = "shelbyville.example" if service_code == "NOISE" else "springfield.example"
    envelope = Envelope(
        type=event,
        subject=request_id,
        data={"id": request_id, "service_code": service_code, "jurisdiction": jurisdiction},
        correlationid=f"corr-{request_id}",
    )
    qualifier = service_code if event is EventType.CREATED else "fixed"
    with store.transaction() as tx:
        tx.add_outbox(
            envelope,
            exchange=t.EVENTS_EXCHANGE,
            routing_key=t.event_routing_key(event, qualifier),
        )
    return envelope


def drain(
    channel: Any, queue: str, expected: int, timeout: float = 5.0, *, routed: bool = False
) -> list[tuple[Any, bytes]]:
    """Up to `expected` messages from `queue`; `civicbus.request.routed` events are passed
    over unless `routed` (most tests here are about the outbox rows themselves)."""
    messages: list[tuple[Any, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(messages) < expected and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.02)
        elif routed or properties.type != EventType.ROUTED:
            messages.append((properties, body))
    return messages


def test_rows_are_published_in_order_as_persistent_cloudevents(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    sent = [accept(store, "POTHOLE"), accept(store, "NOISE", EventType.STATUS_CHANGED)]
    sent += [accept(store, "GRAFFITI") for _ in range(3)]

    assert Relay(store, config, amqp_url).relay_pending() == 5

    # Each created event is followed by the routed event of its command.
    got = drain(channel, "test.events", 9, routed=True)
    events = [p.message_id for p, _ in got if p.type != EventType.ROUTED]
    assert events == [e.id for e in sent]
    expected = []
    for e in sent:
        expected.append((e.type.value, e.subject))
        if e.type is EventType.CREATED:
            expected.append((EventType.ROUTED.value, e.subject))
    assert [(p.type, json.loads(b)["subject"]) for p, b in got] == expected
    first, body = got[0]
    # CloudEvents AMQP binding, structured mode: what CloudEvents SDKs recognise.
    assert first.content_type == "application/cloudevents+json; charset=utf-8"
    assert first.delivery_mode == 2
    assert first.headers["correlationid"] == sent[0].correlationid
    assert first.headers["traceparent"] == sent[0].traceparent
    assert first.headers["type"] == "civicbus.request.created"
    assert Envelope.model_validate(json.loads(body)) == sent[0]
    assert store.pending_outbox() == []


def test_a_cycle_relays_batch_after_batch_in_order_each_marked_after_its_confirms(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    sent = [accept(store, "NOISE", EventType.STATUS_CHANGED) for _ in range(7)]
    relay = Relay(store, config, amqp_url, settings=RelaySettings(batch_size=2))

    with capture_logs() as logs:
        assert relay.relay_pending() == 7  # four batches, the last one short

    assert [p.message_id for p, _ in drain(channel, "test.events", 8)] == [e.id for e in sent]
    batches = [line["rows"] for line in logs if line["event"] == "relay.batch_sent"]
    assert batches == [2, 2, 2, 1]
    assert store.pending_outbox() == []
    for envelope in sent:
        assert [e.action for e in store.audit_trail(envelope.subject)] == ["relayed"]
    assert relay.relay_pending() == 0
    relay._disconnect()


def test_the_relays_entries_carry_the_time_it_published_not_the_time_it_committed(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    envelope = accept(store, "POTHOLE")
    relay = Relay(store, config, amqp_url, settings=RelaySettings(batch_size=10))
    published: list[datetime] = []
    send = relay._send

    def send_and_note(rows: Any) -> Any:
        published.append(datetime.now(UTC))
        return send(rows)

    relay._send = send_and_note  # type: ignore[method-assign]
    settle = relay._settle

    def settle_later(batch: Any) -> int:
        time.sleep(0.2)  # the confirms take their time: the entries keep the publish time
        return settle(batch)

    relay._settle = settle_later  # type: ignore[method-assign]
    assert relay.relay_pending() == 1
    relay._disconnect()

    hops = [e for e in store.audit_trail(envelope.subject) if e.action in ("relayed", "routed")]
    assert [e.action for e in hops] == ["relayed", "routed"]
    for entry in hops:
        assert published[0] <= entry.at < published[0] + timedelta(seconds=0.2), entry.at


def test_a_cycle_ends_early_when_the_relay_is_stopping_and_leaves_the_rest_pending(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    sent = [accept(store, "NOISE", EventType.STATUS_CHANGED) for _ in range(6)]
    stop = threading.Event()
    relay = Relay(store, config, amqp_url, settings=RelaySettings(batch_size=2), stop=stop)
    relay._ensure_connected()
    stop.set()

    # The first batch goes (a stopping relay still relays what it has read), then no more.
    assert relay.relay_pending() == 2
    assert [r.envelope.id for r in store.pending_outbox()] == [e.id for e in sent[2:]]
    assert [p.message_id for p, _ in drain(channel, "test.events", 2)] == [e.id for e in sent[:2]]
    relay._disconnect()


def test_a_created_request_becomes_a_command_for_the_routed_instance_with_audit(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    pothole = accept(store, "POTHOLE")
    graffiti = accept(store, "GRAFFITI")  # no rule: the default instance, never dropped

    Relay(store, config, amqp_url).relay_pending()

    [(command, body)] = drain(channel, t.work_queue("sap-roads"), 1)
    assert command.message_id == pothole.id
    assert command.headers["rule"] == "roads-to-sap"
    assert Envelope.model_validate(json.loads(body)) == pothole
    [(default, _)] = drain(channel, t.work_queue("email-311"), 1)
    assert default.message_id == graffiti.id and default.headers["rule"] == "default"

    trail = [(e.action, e.message_id, e.details) for e in store.audit_trail(pothole.subject)]
    assert trail == [
        (
            "relayed",
            pothole.id,
            {"exchange": "civicbus.events", "routing_key": "request.created.POTHOLE"},
        ),
        ("routed", pothole.id, {"instance": "sap-roads", "rule": "roads-to-sap"}),
    ]
    routed = [e for e in store.audit_trail(graffiti.subject) if e.action == "routed"]
    assert routed[0].details == {"instance": "email-311", "rule": "default"}


def test_the_store_remembers_the_instances_whose_queues_the_relay_declared(
    store: Store, config: Config, amqp_url: str
) -> None:
    relay = Relay(store, config, amqp_url)
    assert relay.relay_pending() == 0 and store.declared_instances() == []
    accept(store, "POTHOLE")

    relay.relay_pending()

    # All of them, not only the one routed to: the relay declared every configured queue.
    assert store.declared_instances() == sorted(config.instances)


def test_a_service_missing_from_the_relays_catalogue_is_warned_about_once(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    # A service added to the config after the relay started: it still routes with the config it
    # loaded, so the request goes to the default; the operator is told to restart it.
    relay = Relay(store, config, amqp_url)
    with capture_logs() as logs:
        accept(store, "DOG_FOULING")
        accept(store, "DOG_FOULING")
        accept(store, "POTHOLE")
        relay.relay_pending()
        accept(store, "DOG_FOULING")
        relay.relay_pending()

    warnings = [e for e in logs if e["event"] == "relay.service_not_in_catalogue"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["service_code"] == "DOG_FOULING"
    assert warnings[0]["jurisdiction"] == "springfield.example"
    assert warnings[0]["instance"] == "email-311"
    assert "restart the relay after changing the config" in warnings[0]["hint"]
    assert len(drain(channel, t.work_queue("email-311"), 3)) == 3


def test_a_routed_event_announces_each_command_and_repeats_its_id_when_published_again(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    pothole = accept(store, "POTHOLE")
    relay = Relay(store, config, amqp_url)
    relay.relay_pending()
    [_, (properties, body)] = drain(channel, "test.events", 2, routed=True)

    routed = Envelope.model_validate(json.loads(body))
    assert routed.type is EventType.ROUTED and properties.message_id == routed.id
    assert (routed.subject, routed.correlationid) == (pothole.subject, pothole.correlationid)
    assert routed.traceparent == pothole.traceparent
    assert routed.data == {"instance": "sap-roads", "rule": "roads-to-sap"}
    assert_documented(routed)

    # The relay publishing the row again (e.g. after a crash before marking it) repeats the id.
    with store.transaction() as tx:
        tx.add_outbox(pothole, exchange=t.EVENTS_EXCHANGE, routing_key="request.created.POTHOLE")
    relay.relay_pending()
    [_, (again, _)] = drain(channel, "test.events", 2, routed=True)
    assert again.message_id == routed.id


def test_only_created_events_become_commands(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    update = accept(store, "POTHOLE", EventType.STATUS_CHANGED)
    Relay(store, config, amqp_url).relay_pending()
    assert [e.action for e in store.audit_trail(update.subject)] == ["relayed"]
    assert channel.queue_declare(t.work_queue("sap-roads"), passive=True).method.message_count == 0


def test_a_replayed_command_goes_to_its_instance_once_and_is_not_routed_again(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    pothole = accept(store, "POTHOLE")
    relay = Relay(store, config, amqp_url)
    relay.relay_pending()
    drain(channel, t.work_queue("sap-roads"), 1)
    with store.transaction() as tx:  # as `civicbus dead replay` does
        tx.add_outbox(
            pothole, exchange=t.COMMANDS_EXCHANGE, routing_key=t.command_routing_key("sap-roads")
        )

    relay.relay_pending()

    assert len(drain(channel, t.work_queue("sap-roads"), 2, timeout=1.0)) == 1
    assert [e.action for e in store.audit_trail(pothole.subject)] == [
        "relayed",
        "routed",
        "relayed",
    ]


def test_an_unroutable_command_leaves_the_whole_batch_unsent(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    relay = Relay(store, config, amqp_url)
    accept(store, "GRAFFITI")
    relay.relay_pending()  # connected, topology declared
    channel.queue_delete(t.work_queue("sap-roads"))  # an operator deleted a work queue
    pothole = accept(store, "POTHOLE")

    with pytest.raises(Unroutable, match=r"civicbus topology declare"):
        relay.relay_pending()

    assert [row.envelope.id for row in store.pending_outbox()] == [pothole.id]
    assert store.audit_trail(pothole.subject) == []


def replay_to_a_gone_subscription(store: Store) -> Envelope:
    """A webhook subscription's dead letter replayed by an operator (`civicbus dead replay
    sub.99 --all`) while no queue civicbus.sub.99 exists (the subscription removed, its queue
    deleted)."""
    created = accept(store, "POTHOLE")
    with store.transaction() as tx:
        tx.record_dead_letter(
            instance="sub.99",
            message_id=created.id,
            request_id=created.subject,
            reason="PermanentError: 410 Gone",
            envelope=created.model_dump(mode="json"),
        )
    store.mark_sent([r.id for r in store.pending_outbox()])
    deadletters.replay(store, "sub.99")
    return created


def test_a_replay_no_queue_takes_waits_again_as_a_dead_letter_and_holds_up_nothing(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    """Published without `mandatory`, the broker dropped such a replay, and the relay audited
    it `relayed`: the message was lost behind a trail saying it was delivered."""
    created = replay_to_a_gone_subscription(store)
    later = accept(store, "GRAFFITI", EventType.STATUS_CHANGED)
    relay = Relay(store, config, amqp_url)
    try:
        assert relay.relay_pending() == 2
        assert relay.relay_pending() == 0  # nothing left to retry in a loop
    finally:
        relay._disconnect()

    assert [e.action for e in store.audit_trail(created.subject)] == [
        "replayed",
        "replay_returned",
    ]
    [returned] = [e for e in store.audit_trail(created.subject) if e.action == "replay_returned"]
    assert returned.outcome == "error" and returned.details["instance"] == "sub.99"
    assert [letter.message_id for letter in deadletters.list_dead_letters(store, "sub.99")] == [
        created.id
    ]
    # The row behind it went out as usual.
    assert [p.message_id for p, _ in drain(channel, "test.events", 1)] == [later.id]
    assert [e.action for e in store.audit_trail(later.subject)] == ["relayed"]


def test_a_replay_to_an_instance_whose_queue_was_deleted_goes_again_once_it_is_declared(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    """A configured instance's queue is the relay's to declare: as for an unroutable command,
    nothing is marked, and the batch goes again after reconnecting (which declares it)."""
    relay = Relay(store, config, amqp_url)
    accept(store, "GRAFFITI")
    relay.relay_pending()  # connected, topology declared
    channel.queue_delete(t.work_queue("sap-roads"))  # an operator deleted a work queue
    pothole = accept(store, "POTHOLE", EventType.STATUS_CHANGED)
    store.mark_sent([r.id for r in store.pending_outbox()])
    with store.transaction() as tx:  # as `civicbus dead replay sap-roads` does
        tx.add_outbox(
            pothole, exchange=t.COMMANDS_EXCHANGE, routing_key=t.command_routing_key("sap-roads")
        )

    with pytest.raises(Unroutable, match=r"civicbus topology declare"):
        relay.relay_pending()
    assert [row.envelope.id for row in store.pending_outbox()] == [pothole.id]

    relay._disconnect()  # as the relay loop does after Unroutable
    assert relay.relay_pending() == 1
    assert len(drain(channel, t.work_queue("sap-roads"), 1)) == 1
    assert [e.action for e in store.audit_trail(pothole.subject)] == ["relayed"]


def test_rows_stay_pending_when_the_broker_is_unreachable(store: Store, config: Config) -> None:
    accept(store, "POTHOLE")
    stopped = threading.Event()
    stopped.set()  # one connection attempt, no backoff
    relay = Relay(store, config, "amqp://guest:guest@127.0.0.1:1/%2F", stop=stopped)

    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1"):
        relay.relay_pending()
    assert len(store.pending_outbox()) == 1


def _run(relay: Relay) -> threading.Thread:
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    return thread


def _wait_until_sent(store: Store, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not store.pending_outbox():
            return True
        time.sleep(0.05)
    return False


def test_the_relay_loop_runs_until_stopped_and_lets_go_of_its_lease(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    relay = Relay(store, config, amqp_url, settings=RelaySettings(poll_interval=0.05))
    thread = _run(relay)
    sent = [accept(store, "POTHOLE") for _ in range(20)]
    assert _wait_until_sent(store)

    relay.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert [p.message_id for p, _ in drain(channel, "test.events", 20)] == [e.id for e in sent]
    assert store.try_lease("relay", "someone-else", 10)  # released on the way out


def test_a_standby_relay_waits_while_another_holds_the_lease(
    store: Store, config: Config, amqp_url: str, channel: Any
) -> None:
    assert store.try_lease("relay", "the-active-one", 60)
    standby = Relay(
        store, config, amqp_url, settings=RelaySettings(poll_interval=0.05, lease_ttl=1.5)
    )
    thread = _run(standby)
    try:
        accept(store, "POTHOLE")
        time.sleep(0.8)
        assert len(store.pending_outbox()) == 1  # the standby published nothing

        store.release_lease("relay", "the-active-one")  # the active relay went away
        assert _wait_until_sent(store)
    finally:
        standby.stop.set()
        thread.join(timeout=10)
