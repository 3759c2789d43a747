"""`civicbus relay` as an operator runs it: a process that relays until SIGTERM, then exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika

from bus.broker import topology as t
from bus.store import Store
from schemas.events import Envelope, EventType

REPO = Path(__file__).resolve().parents[2]


def test_relay_command_relays_and_exits_cleanly_on_sigterm(sqlite_url: str, amqp_url: str) -> None:
    store = Store.open(sqlite_url)
    request_id = uuid.uuid4().hex
    envelope = Envelope(
        type=EventType.CREATED,
        subject=request_id,
        data={"id": request_id, "service_code": "POTHOLE", "jurisdiction": "springfield.example"},
        correlationid="corr-cli",
    )
    with store.transaction() as tx:
        tx.add_outbox(envelope, exchange=t.EVENTS_EXCHANGE, routing_key="request.created.POTHOLE")
    env = {
        **os.environ,
        "CIVICBUS_CONFIG": str(REPO / "deploy/sandbox/civicbus.yaml"),
        "CIVICBUS_DATABASE_URL": sqlite_url,
        "CIVICBUS_AMQP_URL": amqp_url,
        "CIVICBUS_LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "civicbus"), "relay", "--poll-interval", "0.05"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while store.pending_outbox() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.pending_outbox() == [], "the relay did not publish within 20 s"
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        method, properties, _ = connection.channel().basic_get(t.work_queue("sap-roads"))
        connection.close()
        assert method is not None and properties.message_id == envelope.id

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        store.close()
    assert process.returncode == 0, output
    assert "relay.stopped" in output
