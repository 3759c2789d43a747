"""A consumer given no queue waits for its stop instead of connecting again and again."""

from __future__ import annotations

import socket
import threading

from structlog.testing import capture_logs

from bus.worker import Consumer


def test_a_consumer_with_no_queue_waits_for_stop_without_connecting() -> None:
    with socket.socket() as probe:  # a port nobody listens on: any connection attempt fails
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    consumer = Consumer(f"amqp://guest:guest@127.0.0.1:{port}/%2F", prefetch=1, name="idle")

    with capture_logs() as logs:
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive()  # waiting, not returned
        consumer.stop()
        thread.join(timeout=5)

    assert not thread.is_alive()
    assert [entry["event"] for entry in logs] == ["worker.nothing_to_consume"]
