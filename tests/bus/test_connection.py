"""A broker that accepts TCP connections but never answers is 'unavailable', not a crash."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from bus.broker.connection import BrokerUnavailable, connect


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
