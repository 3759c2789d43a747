"""`civicbus worker`, `civicbus subscriptions` and `civicbus poller` as an operator runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import pika
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner
from worker_support import (
    actions,
    channel_on,
    new_request,
    published_if_routable,
    queue_depth,
    wait_until,
)

from bus.broker.topology import EVENTS_EXCHANGE, declare_topology
from bus.cli import app
from bus.store import DeadLetterState, Store, Subscription
from bus.subscriptions import route_name

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]

CONFIG = """
jurisdictions: [{id: springfield.example, name: Springfield}]
routing: {default: desk}
instances:
  desk:
    kind: memory
    retry: {immediate_attempts: 1, tiers: [0.2], max_attempts: 2}
"""


@pytest.fixture
def env(use_config: Callable[[str], dict[str, str]]) -> dict[str, str]:
    return use_config(CONFIG)


def queue_exists(amqp_url: str, queue: str) -> bool:
    try:
        with channel_on(amqp_url) as ch:
            ch.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    return True


def test_civicbus_worker_delivers_and_stops_on_sigterm(
    env: dict[str, str], store: Store, amqp_url: str
) -> None:
    envelope = new_request(store)
    worker = subprocess.Popen(
        [sys.executable, "-m", "bus", "worker", "desk"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Until the worker has declared and bound its queue, nothing is enqueued: try again.
        wait_until(
            lambda: published_if_routable(amqp_url, envelope, routing_key="desk"),
            timeout=30,
            what="a routable work queue",
        )
        wait_until(lambda: ("submitted", "ok") in actions(store, envelope.subject), timeout=20)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    assert worker.returncode == 0, stderr.decode()


def test_civicbus_worker_refuses_unclear_arguments(env: dict[str, str]) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["worker"]).exit_code == 2
    assert runner.invoke(app, ["worker", "desk", "--subscriptions"]).exit_code == 2
    unknown = runner.invoke(app, ["worker", "nowhere"])
    assert unknown.exit_code == 2 and "configured: desk" in unknown.output


def test_civicbus_poller_refuses_unknown_or_unpolled_instances(env: dict[str, str]) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["poller", "nowhere"]).exit_code == 2


def test_subscriptions_add_list_remove(env: dict[str, str], store: Store, amqp_url: str) -> None:
    runner = CliRunner()
    added = runner.invoke(
        app,
        [
            "subscriptions", "add", "http://127.0.0.1:9/hook",
            "--events", "request.*", "--events", "request.closed",
            "--secret-env", "HOOK_SECRET",
        ],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "unsigned" not in added.output
    (subscription,) = store.list_subscriptions()
    assert subscription.events == ("request.*", "request.closed")
    assert queue_exists(amqp_url, f"civicbus.sub.{subscription.id}")

    listed = runner.invoke(app, ["subscriptions", "list"])
    assert "http://127.0.0.1:9/hook" in listed.output and "$HOOK_SECRET" in listed.output
    assert "matches no event" not in listed.output

    bad = runner.invoke(app, ["subscriptions", "add", "ftp://x", "--events", "request.*"])
    assert bad.exit_code == 2 and "not an http(s) URL" in bad.output

    removed = runner.invoke(app, ["subscriptions", "remove", str(subscription.id)])
    assert removed.exit_code == 0, removed.output
    assert store.list_subscriptions() == []
    assert not queue_exists(amqp_url, f"civicbus.sub.{subscription.id}")
    assert not queue_exists(amqp_url, f"civicbus.dead.sub.{subscription.id}")
    assert runner.invoke(app, ["subscriptions", "remove", str(subscription.id)]).exit_code == 1


def subscribe_by_cli(runner: CliRunner, store: Store) -> Subscription:
    """`civicbus subscriptions add` of a hook nobody answers; the subscription it made."""
    added = runner.invoke(
        app, ["subscriptions", "add", "http://127.0.0.1:9/hook", "--events", "request.*"]
    )
    assert added.exit_code == 0, added.output
    assert "warning: no --secret-env: its events go out unsigned" in added.output
    (subscription,) = store.list_subscriptions()
    return subscription


def test_subscriptions_remove_says_how_many_undelivered_events_it_discarded(
    env: dict[str, str], store: Store, amqp_url: str
) -> None:
    runner = CliRunner()
    subscription = subscribe_by_cli(runner, store)
    with channel_on(amqp_url) as ch:
        ch.confirm_delivery()
        for _ in range(3):
            ch.basic_publish(EVENTS_EXCHANGE, "request.created.POTHOLE", b"{}")
    wait_until(lambda: queue_depth(amqp_url, f"civicbus.sub.{subscription.id}") == 3)

    removed = runner.invoke(app, ["subscriptions", "remove", str(subscription.id)])

    assert removed.exit_code == 0, removed.output
    assert "3 undelivered event(s) discarded with its queue" in removed.output
    with sa.create_engine(store._engine.url).connect() as conn:
        table = sa.Table("audit_log", sa.MetaData(), autoload_with=conn)
        details = conn.execute(
            sa.select(table.c.details).where(table.c.action == "subscription_removed")
        ).scalar_one()
    assert json.loads(details) == {
        "subscription": subscription.id,
        "discarded_events": 3,
        "dropped_dead_letters": 0,
    }


def subscription_removed_details(store: Store) -> dict[str, object]:
    with sa.create_engine(store._engine.url).connect() as conn:
        table = sa.Table("audit_log", sa.MetaData(), autoload_with=conn)
        details = conn.execute(
            sa.select(table.c.details).where(table.c.action == "subscription_removed")
        ).scalar_one()
    found: dict[str, object] = json.loads(details)
    return found


def dead_letter_for(store: Store, route: str, message_id: str) -> None:
    with store.transaction() as tx:
        tx.record_dead_letter(
            instance=route,
            message_id=message_id,
            request_id="req-1",
            reason="HTTPStatusError: 410 Gone",
            envelope=None,
        )


def test_subscriptions_remove_drops_its_dead_letters_audited_and_says_how_many(
    env: dict[str, str], store: Store, amqp_url: str
) -> None:
    runner = CliRunner()
    subscription = subscribe_by_cli(runner, store)
    route = route_name(subscription.id)
    for message_id in ("m-1", "m-2"):
        dead_letter_for(store, route, message_id)
    dead_letter_for(store, "desk", "m-3")  # an adapter instance's: not the subscription's

    removed = runner.invoke(app, ["subscriptions", "remove", str(subscription.id)])

    assert removed.exit_code == 0, removed.output
    assert removed.output.strip() == (
        f"subscription {subscription.id} removed; 0 undelivered event(s) discarded with its "
        "queue, 2 dead letter(s) dropped"
    )
    assert store.dead_letters(route) == []
    dropped = store.dead_letters(route, DeadLetterState.DROPPED)
    assert [letter.message_id for letter in dropped] == ["m-1", "m-2"]
    assert [letter.message_id for letter in store.dead_letters("desk")] == ["m-3"]
    assert route not in store.overview().dead_letters  # `status` and /metrics count none
    audited = [
        (entry.actor, entry.details)
        for entry in store.audit_trail("req-1")
        if entry.action == "dropped"
    ]
    assert audited == [
        ("cli:subscriptions", {"dead_letter": letter.id, "instance": route}) for letter in dropped
    ]
    assert subscription_removed_details(store)["dropped_dead_letters"] == 2
    assert store.verify_audit().ok


def test_subscriptions_remove_drops_the_dead_letters_even_with_the_broker_out_of_reach(
    env: dict[str, str], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscription = store.add_subscription("http://127.0.0.1:9/hook", ["request.*"])
    dead_letter_for(store, route_name(subscription.id), "m-1")
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CIVICBUS_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{port}/%2F")

    removed = CliRunner().invoke(app, ["subscriptions", "remove", str(subscription.id)])

    assert removed.exit_code == 0, removed.output
    assert f"subscription {subscription.id} removed; 1 dead letter(s) dropped" in removed.output
    assert "warning: its queue, with any undelivered events, is left on the broker" in (
        removed.output
    )
    assert store.dead_letters(route_name(subscription.id)) == []
    details = subscription_removed_details(store)
    assert details["queue_left_on_broker"] is True and details["dropped_dead_letters"] == 1


def test_subscriptions_add_refuses_events_that_do_not_exist(
    env: dict[str, str], store: Store
) -> None:
    refused = CliRunner().invoke(
        app, ["subscriptions", "add", "http://127.0.0.1:9/hook", "--events", "request.closd"]
    )
    assert refused.exit_code == 2
    assert "'request.closd' matches no event" in refused.output
    assert "request.closed" in refused.output and "request.status_changed" in refused.output
    assert store.list_subscriptions() == []


@pytest.mark.parametrize(
    ("pattern", "said"),
    [
        ("request.status_changed.bogus", "'bogus' is not a status; statuses: action_scheduled"),
        ("request.created.NOSUCH", "'NOSUCH' is not a service code"),
        ("request.routed.nowhere", "'nowhere' is not an adapter instance; adapter instances: desk"),
    ],
)
def test_subscriptions_add_refuses_a_qualifier_no_event_carries(
    pattern: str, said: str, env: dict[str, str], store: Store
) -> None:
    refused = CliRunner().invoke(
        app, ["subscriptions", "add", "http://127.0.0.1:9/hook", "--events", pattern]
    )

    assert refused.exit_code == 2
    assert f"{pattern!r} matches no event" in refused.output and said in refused.output
    assert store.list_subscriptions() == []


@pytest.mark.parametrize(
    "command",
    [["status"], ["subscriptions", "add", "http://127.0.0.1:9/h", "--events", "request.*"]],
)
def test_a_malformed_amqp_url_is_one_clear_line_without_the_password(
    command: list[str], env: dict[str, str], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVICBUS_AMQP_URL", "amqp://civicbus:s3cret/prod")  # no @: s3cret is "port"

    result = CliRunner().invoke(app, command)

    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    [error] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "CIVICBUS_AMQP_URL" in error and "amqp://user:pass@host:5672/vhost" in error
    assert "s3cret" not in result.output
    assert store.list_subscriptions() == []  # refused before anything was stored


def test_subscriptions_list_marks_a_stored_pattern_that_matches_no_event(
    env: dict[str, str], store: Store
) -> None:
    store.add_subscription("http://127.0.0.1:9/old", ["request.closd", "request.closed"], None)

    listed = CliRunner().invoke(app, ["subscriptions", "list"])

    assert listed.exit_code == 0, listed.output
    assert "request.closd (matches no event), request.closed (unsigned)" in listed.output


def test_subscriptions_add_replaces_a_leftover_queue_of_the_same_name(
    env: dict[str, str], store: Store, amqp_url: str
) -> None:
    # What a store since replaced (ids start again at 1) left on the broker: a queue with old
    # events and bindings the new subscription never asked for.
    with channel_on(amqp_url) as ch:
        declare_topology(ch, {})
        ch.queue_declare("civicbus.sub.1", durable=True, arguments={"x-queue-type": "classic"})
        ch.queue_bind("civicbus.sub.1", EVENTS_EXCHANGE, "request.#")
        ch.basic_publish("", "civicbus.sub.1", b'{"old": "event"}')

    added = CliRunner().invoke(
        app, ["subscriptions", "add", "http://127.0.0.1:9/hook", "--events", "request.closed"]
    )

    assert added.exit_code == 0, added.output
    assert [s.id for s in store.list_subscriptions()] == [1]
    assert queue_depth(amqp_url, "civicbus.sub.1") == 0
    with channel_on(amqp_url) as ch:
        ch.confirm_delivery()
        for key in ("request.created.POTHOLE", "request.closed.fixed"):
            ch.basic_publish(EVENTS_EXCHANGE, key, key.encode())
    got = wait_until(lambda: queue_depth(amqp_url, "civicbus.sub.1") or None, what="an event")
    with channel_on(amqp_url) as ch:
        _, _, body = ch.basic_get("civicbus.sub.1", auto_ack=True)
    assert (got, body) == (1, b"request.closed.fixed")


def test_subscriptions_add_stores_nothing_when_the_broker_is_down(
    env: dict[str, str], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CIVICBUS_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{port}/%2F")

    added = CliRunner().invoke(
        app, ["subscriptions", "add", "http://127.0.0.1:9/hook", "--events", "request.*"]
    )

    assert added.exit_code == 1
    assert "nothing was subscribed" in added.output
    assert store.list_subscriptions() == []
