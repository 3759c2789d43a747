"""The RabbitMQ topology, declared on a real broker (a fresh vhost per test)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pika
import pika.exceptions
import pytest
from typer.testing import CliRunner

from bus.broker import topology as t
from bus.cli import app
from bus.config import InstanceConfig, RetryPolicy, load_config
from schemas.events import EventType
from tests.rabbitmqctl import rabbitmqctl

REPO = Path(__file__).resolve().parents[2]
INSTANCES = {
    "roads": InstanceConfig(kind="sap", retry=RetryPolicy(tiers=[0.2, 30])),
    "mail": InstanceConfig(kind="email", retry=RetryPolicy(tiers=[5])),
}


@pytest.fixture
def channel(amqp_url: str) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield connection.channel()
    connection.close()


def _get(channel: Any, queue: str, timeout: float = 3.0) -> tuple[Any, Any, bytes] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, properties, body
        time.sleep(0.02)
    return None


def test_declaring_creates_every_exchange_and_queue_and_is_idempotent(channel: Any) -> None:
    t.declare_topology(channel, INSTANCES)
    t.declare_topology(channel, INSTANCES)  # a second start-up changes nothing

    for name in ("civicbus.events", "civicbus.commands", "civicbus.retry", "civicbus.dead"):
        channel.exchange_declare(name, passive=True)
    for name in (
        "civicbus.work.roads",
        "civicbus.retry.roads.0.2s",
        "civicbus.retry.roads.30s",
        "civicbus.dead.roads",
        "civicbus.work.mail",
        "civicbus.retry.mail.5s",
        "civicbus.dead.mail",
    ):
        channel.queue_declare(name, passive=True)


def test_queues_carry_the_specified_arguments() -> None:
    queues = {q.name: q.arguments for q in t.topology(INSTANCES).queues}
    assert queues["civicbus.work.roads"] == {
        "x-queue-type": "quorum",
        "x-delivery-limit": t.DELIVERY_LIMIT,
        "x-dead-letter-exchange": "civicbus.dead",
        "x-dead-letter-routing-key": "roads",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert queues["civicbus.retry.roads.0.2s"]["x-message-ttl"] == 200
    assert queues["civicbus.retry.roads.0.2s"]["x-dead-letter-exchange"] == "civicbus.commands"
    assert queues["civicbus.retry.roads.0.2s"]["x-dead-letter-routing-key"] == "roads"
    assert queues["civicbus.dead.roads"] == {"x-queue-type": "quorum"}


def test_a_command_lands_in_the_work_queue_of_its_instance_only(channel: Any) -> None:
    t.declare_topology(channel, INSTANCES)
    channel.basic_publish(t.COMMANDS_EXCHANGE, t.command_routing_key("roads"), b"fill it")

    got = _get(channel, t.work_queue("roads"))
    assert got is not None and got[2] == b"fill it"
    assert channel.basic_get(t.work_queue("mail"), auto_ack=True)[0] is None


def test_a_message_in_a_retry_tier_returns_to_the_work_queue_after_its_ttl(channel: Any) -> None:
    t.declare_topology(channel, INSTANCES)
    channel.basic_publish(t.RETRY_EXCHANGE, t.retry_routing_key("roads", 0.2), b"again")

    got = _get(channel, t.work_queue("roads"))
    assert got is not None and got[2] == b"again"
    death = got[1].headers["x-death"][0]
    assert death["queue"] == "civicbus.retry.roads.0.2s" and death["reason"] == "expired"


def test_a_rejected_work_message_is_dead_lettered_to_its_instance(channel: Any) -> None:
    t.declare_topology(channel, INSTANCES)
    channel.basic_publish(t.COMMANDS_EXCHANGE, "mail", b"poison")
    got = None
    deadline = time.monotonic() + 3
    while got is None and time.monotonic() < deadline:
        got = channel.basic_get(t.work_queue("mail"))[0]
    assert got is not None
    channel.basic_reject(got.delivery_tag, requeue=False)

    dead = _get(channel, t.dead_queue("mail"))
    assert dead is not None and dead[2] == b"poison"


def test_changed_arguments_are_reported_with_what_differs(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        t.declare_topology(connection.channel(), INSTANCES)
        monkeypatch.setattr(t, "DELIVERY_LIMIT", 3)  # as if a new release changed it
        with pytest.raises(t.TopologyMismatch) as caught:
            t.declare_topology(connection.channel(), INSTANCES)
    finally:
        connection.close()
    message = str(caught.value)
    assert "queue civicbus.work.mail" in message
    assert "x-delivery-limit" in message and "received '3' but current is '10'" in message
    assert "delete_queue civicbus.work.mail" in message


def test_event_routing_keys_are_three_words() -> None:
    assert t.event_routing_key(EventType.CREATED, "POTHOLE") == "request.created.POTHOLE"
    assert t.event_routing_key(EventType.STATUS_CHANGED, "fixed") == "request.status_changed.fixed"
    assert t.event_routing_key(EventType.CREATED, "ROAD.SIGN") == "request.created.ROAD_SIGN"
    with pytest.raises(ValueError):
        t.event_routing_key(EventType.CREATED, "")


def test_committed_definitions_file_is_current() -> None:
    config = load_config(REPO / "deploy/sandbox/civicbus.yaml")
    committed = (REPO / "deploy/rabbitmq/definitions.json").read_text()
    assert committed == t.definitions_json(config.instances), (
        "run `civicbus topology export` and commit deploy/rabbitmq/definitions.json"
    )


def test_imported_definitions_equal_what_the_code_declares(amqp_url: str) -> None:
    vhost = unquote(urlparse(amqp_url).path.lstrip("/"))
    # World-readable: rabbitmqctl runs as the rabbitmq user and cannot read pytest's tmp dirs.
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)
        path = Path(directory) / "definitions.json"
        path.write_text(json.dumps(t.definitions(INSTANCES, vhost=vhost)))
        path.chmod(0o644)
        imported = subprocess.run(
            ["rabbitmqctl", "-q", "import_definitions", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert imported.returncode == 0, imported.stderr + imported.stdout
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = _wait_for_queue(connection, t.dead_queue("roads"))  # the import is asynchronous
        # Declaring over the imported objects finds nothing to disagree with.
        t.declare_topology(channel, INSTANCES)
        channel.basic_publish(t.COMMANDS_EXCHANGE, "roads", b"x")
        assert _get(channel, t.work_queue("roads")) is not None
    finally:
        connection.close()


def _wait_for_queue(connection: Any, queue: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        channel = connection.channel()
        try:
            channel.queue_declare(queue, passive=True)
            return channel
        except pika.exceptions.ChannelClosedByBroker:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_cli_export_writes_the_definitions(tmp_path: Path) -> None:
    output = tmp_path / "defs.json"
    result = CliRunner().invoke(app, ["topology", "export", "--output", str(output)])
    assert result.exit_code == 0, result.output
    config = load_config(REPO / "deploy/sandbox/civicbus.yaml")
    assert output.read_text() == t.definitions_json(config.instances)


def test_cli_export_is_for_the_vhost_of_the_amqp_url_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVICBUS_AMQP_URL", "amqp://civicbus:secret@127.0.0.1:5672/civicbus")
    output = tmp_path / "defs.json"

    def vhosts(*options: str) -> set[str]:
        args = ["topology", "export", "--output", str(output), *options]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        definitions = json.loads(output.read_text())
        return {item["vhost"] for item in definitions["queues"] + definitions["exchanges"]}

    assert vhosts() == {"civicbus"}
    assert vhosts("--vhost", "/") == {"/"}


def test_a_back_office_user_with_the_readme_permissions_binds_its_queue_to_the_events(
    amqp_url: str,
) -> None:
    """The README's set_permissions line, run as written on a vhost of its own: the user
    declares, binds and consumes its own queue and may touch no queue of civicbus."""
    [line] = [
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("rabbitmqctl set_permissions")
    ]
    vhost = unquote(urlparse(amqp_url).path.lstrip("/"))
    _, command, _, documented_vhost, user, *patterns = shlex.split(line)
    assert (command, documented_vhost, user) == ("set_permissions", "civicbus", "parks-office")
    setup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    t.declare_topology(setup.channel(), INSTANCES)
    user = f"parks-office-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_user", user, "s3cret")
    try:
        own = [pattern.replace("parks-office", user) for pattern in patterns]
        rabbitmqctl("set_permissions", "-p", vhost, user, *own)
        params = pika.URLParameters(amqp_url)
        params.credentials = pika.PlainCredentials(user, "s3cret")
        office = pika.BlockingConnection(params)
        try:
            channel = office.channel()
            channel.queue_declare(f"{user}.events", durable=True)
            channel.queue_bind(f"{user}.events", t.EVENTS_EXCHANGE, "request.#")
            setup.channel().basic_publish(t.EVENTS_EXCHANGE, "request.created.POTHOLE", b"{}")
            assert _get(channel, f"{user}.events") is not None
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
                office.channel().queue_declare(t.work_queue("roads"), durable=True)
        finally:
            office.close()
    finally:
        setup.close()
        rabbitmqctl("delete_user", user)


def test_cli_declare_declares_on_the_configured_broker(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVICBUS_AMQP_URL", amqp_url)
    result = CliRunner().invoke(app, ["topology", "declare"])
    assert result.exit_code == 0, result.output
    assert "for 5 adapter instances" in result.output
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().queue_declare("civicbus.work.sap-roads", passive=True)
    finally:
        connection.close()
