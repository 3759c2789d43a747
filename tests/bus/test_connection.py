"""A broker that accepts TCP connections but never answers is 'unavailable', not a crash; a
malformed URL is a configuration error."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from bus.broker.connection import BrokerUnavailable, connect, connection_parameters
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
