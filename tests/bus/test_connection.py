"""A broker that accepts TCP connections but never answers is 'unavailable', not a crash; a
malformed URL is a configuration error."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pika
import pytest
from structlog.testing import capture_logs

from bus.broker.connection import (
    BlockedEpisodes,
    BrokerUnavailable,
    connect,
    connection_parameters,
)
from bus.config import ConfigError


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_a_broker_that_never_answers_the_handshake_is_unavailable(silent_port: int) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{silent_port}/%2F?socket_timeout=1&stack_timeout=2"
    with pytest.raises(BrokerUnavailable, match=r"connecting to RabbitMQ at 127\.0\.0\.1"):
        connect(url)


def test_a_closed_port_is_unavailable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(BrokerUnavailable):
        connect(f"amqp://guest:guest@127.0.0.1:{port}/%2F?socket_timeout=1")


@pytest.mark.parametrize("refused", ["password", "vhost"])
def test_a_login_or_vhost_the_broker_refuses_says_to_fix_the_url_not_to_wait(
    amqp_url: str, refused: str
) -> None:
    if refused == "password":  # RabbitMQ: 403 ACCESS_REFUSED
        url = amqp_url.replace("guest:guest@", "guest:not-the-password@")
    else:  # RabbitMQ: 530 NOT_ALLOWED
        url = amqp_url.rsplit("/", 1)[0] + "/no-such-vhost"
    with pytest.raises(BrokerUnavailable) as caught:
        connect(url + "?socket_timeout=2")
    assert str(caught.value).endswith(
        "(the broker refused the login or the vhost: check the user, password and vhost in "
        "CIVICBUS_AMQP_URL)"
    )
    assert "not-the-password" not in str(caught.value)


def test_a_broker_away_is_not_said_to_refuse(silent_port: int) -> None:
    with pytest.raises(BrokerUnavailable) as away:
        connect(f"amqp://guest:guest@127.0.0.1:{silent_port}/%2F?socket_timeout=1&stack_timeout=2")
    assert "refused the login" not in str(away.value)


@pytest.mark.parametrize(
    "url",
    [
        "garbage",  # pika: IndexError
        "http://s3cret@rabbit.example/",
        "amqp://civicbus:s3cret/prod",  # no @: pika takes s3cret for the port and quotes it
        "amqp://civicbus:s3cret@rabbit.example:5672/prod?bogus=1",
        "amqp://civicbus:s3cret@[::1/prod",
    ],
)
def test_a_malformed_url_is_a_config_error_that_never_shows_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        connection_parameters(url)
    assert "CIVICBUS_AMQP_URL" in str(refused.value)
    assert "amqp://user:pass@host:5672/vhost" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    # Nor in a traceback, should one ever be logged.
    assert refused.value.__cause__ is None and refused.value.__context__ is None


class _Connection:
    """Takes the callbacks the way pika's BlockingConnection does."""

    def __init__(self) -> None:
        self.on_blocked: list[Callable[[object, object], None]] = []
        self.on_unblocked: list[Callable[[object, object], None]] = []

    def add_on_connection_blocked_callback(
        self, callback: Callable[[object, object], None]
    ) -> None:
        self.on_blocked.append(callback)

    def add_on_connection_unblocked_callback(
        self, callback: Callable[[object, object], None]
    ) -> None:
        self.on_unblocked.append(callback)

    def blocked(self, reason: str) -> None:
        frame = pika.frame.Method(0, pika.spec.Connection.Blocked(reason=reason))
        for callback in self.on_blocked:
            callback(self, frame)

    def unblocked(self) -> None:
        frame = pika.frame.Method(0, pika.spec.Connection.Unblocked())
        for callback in self.on_unblocked:
            callback(self, frame)


def test_a_block_is_logged_once_per_episode_across_reconnections() -> None:
    episodes = BlockedEpisodes("relay", holder="host-a:1")
    first, second = _Connection(), _Connection()
    with capture_logs() as logs:
        episodes.watch(first)
        first.blocked("low on disk")
        episodes.watch(second)  # pika gave the first up; the new one is told again
        second.blocked("low on disk")
        assert episodes.current is not None and episodes.current.reason == "low on disk"
        episodes.cleared()  # a batch was confirmed
        second.unblocked()  # and the broker says so too
        second.blocked("low on memory")  # a new alarm: a new episode

    assert [(e["event"], e["log_level"], e.get("reason")) for e in logs] == [
        ("relay.broker_blocked", "warning", "low on disk"),
        ("relay.broker_unblocked", "info", "low on disk"),
        ("relay.broker_blocked", "warning", "low on memory"),
    ]
    assert logs[0]["holder"] == "host-a:1" and "rabbitmq-diagnostics alarms" in logs[0]["todo"]
