"""Benchmark of the message bus. Prints figures and the machine; asserts nothing.

Run: `.venv/bin/python tests/bench/bench_bus.py [--rows 5000] [--batch 500] [--rounds 3]`.

Relay section: outbox rows -> confirmed publishes. The outbox of an embedded SQLite store (in a
temporary folder) is filled with `civicbus.request.created` rows; the relay publishes each as an
event plus a routed command (2 messages per row, both persistent, into quorum queues), waits for
the confirms of each batch, then marks the batch sent and writes 2 audit entries per row. Beside
it, in the same run and on the same topology, a bare pika loop publishes the same number of
messages with the same windowed confirms and nothing else. The ratio is relay / bare.

Each run uses a fresh vhost on the machine's broker (127.0.0.1:5672), deleted afterwards.
Worker section: consume -> find/submit through the in-memory adapter -> record receipt (cross-
reference, `submitted` event in the outbox, audit entries, one SQLite transaction) -> ack, for
commands whose requests are in an embedded SQLite store; beside it a bare pika consume-ack loop
over the same number of messages. The ratio is worker / bare.
(The end-to-end section is not written yet.)
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bus.broker import topology as t  # noqa: E402
from bus.config import load_config  # noqa: E402
from bus.relay import Relay, RelaySettings  # noqa: E402
from bus.store import Store  # noqa: E402
from schemas.events import Envelope, EventType  # noqa: E402

AMQP_HOST = os.environ.get("CIVICBUS_TEST_AMQP_HOST", "127.0.0.1:5672")
TAP = "bench.tap"


def _ctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return result.stdout.strip()


@contextmanager
def fresh_vhost() -> Iterator[str]:
    vhost = f"civicbus-bench-{uuid.uuid4().hex[:8]}"
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{AMQP_HOST}/{vhost}"
    finally:
        _ctl("delete_vhost", vhost)


def machine() -> str:
    try:
        rabbit = _ctl("version")
    except (OSError, subprocess.CalledProcessError):
        rabbit = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}, pika {pika.__version__}, RabbitMQ {rabbit}, "
        f"SQLite {sqlite3.sqlite_version}"
    )


def _envelope(index: int) -> Envelope:
    request_id = uuid.uuid4().hex
    return Envelope(
        type=EventType.CREATED,
        subject=request_id,
        data={
            "id": request_id,
            "jurisdiction": "springfield.example",
            "service_code": "POTHOLE",
            "service_name": "Pothole",
            "description": f"Deep pothole number {index} by the bus stop.",
            "location": {"lat": 37.76, "long": -122.41, "address": "1 Main St"},
            "attributes": {"LANE": "carriageway"},
            "status": "open",
        },
        correlationid=f"bench-{index}",
    )


def _prepare(url: str) -> Any:
    config = load_config(ROOT / "deploy/sandbox/civicbus.yaml")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    t.declare_topology(channel, config.instances)
    channel.queue_declare(TAP, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(TAP, t.EVENTS_EXCHANGE, "request.#")
    return connection


def _purge(connection: Any) -> None:
    channel = connection.channel()
    channel.queue_purge(TAP)
    channel.queue_purge(t.work_queue("sap-roads"))
    channel.close()


def relay_run(url: str, rows: int, batch: int) -> tuple[float, int]:
    """Seconds for the relay to move `rows` outbox rows, and the messages published."""
    config = load_config(ROOT / "deploy/sandbox/civicbus.yaml")
    with tempfile.TemporaryDirectory() as directory:
        store = Store.open(f"sqlite:///{directory}/bench.db")
        try:
            with store.transaction() as tx:
                for index in range(rows):
                    tx.add_outbox(
                        _envelope(index),
                        exchange=t.EVENTS_EXCHANGE,
                        routing_key="request.created.POTHOLE",
                    )
            relay = Relay(store, config, url, settings=RelaySettings(batch_size=batch))
            relay._ensure_connected()  # connection set-up is not what we measure
            start = time.perf_counter()
            sent = 0
            while sent < rows:
                sent += relay.relay_batch()
            elapsed = time.perf_counter() - start
            relay._disconnect()
        finally:
            store.close()
    return elapsed, rows * 2


def bare_run(url: str, rows: int, batch: int) -> tuple[float, int]:
    """Seconds for plain pika to publish the same messages with windowed confirms."""
    bodies = [_envelope(i).model_dump_json().encode() for i in range(rows)]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()._impl
    unconfirmed: set[int] = set()
    ready: list[bool] = []

    def wake() -> None:
        connection.add_callback_threadsafe(lambda: None)  # ends process_data_events' wait

    def on_confirm(frame: Any) -> None:
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        unconfirmed.difference_update([x for x in unconfirmed if x <= tag] if multiple else [tag])
        if not unconfirmed:
            wake()

    def on_select_ok(_frame: Any) -> None:
        ready.append(True)
        wake()

    channel.confirm_delivery(ack_nack_callback=on_confirm, callback=on_select_ok)
    while not ready:
        connection.process_data_events(time_limit=1)
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    next_tag = 1
    start = time.perf_counter()
    for first in range(0, rows, batch):
        for body in bodies[first : first + batch]:
            channel.basic_publish(t.EVENTS_EXCHANGE, "request.created.POTHOLE", body, properties)
            channel.basic_publish(t.COMMANDS_EXCHANGE, "sap-roads", body, properties)
            unconfirmed.update((next_tag, next_tag + 1))
            next_tag += 2
        while unconfirmed:
            connection.process_data_events(time_limit=1)
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed, rows * 2


def _best_of(rounds: int, run: Callable[[], tuple[float, int]], reset: Callable[[], None]) -> float:
    rates = []
    for _ in range(rounds):
        reset()
        elapsed, messages = run()
        rates.append(messages / elapsed)
    return statistics.median(rates)


def relay_section(rows: int, batch: int, rounds: int) -> None:
    with fresh_vhost() as url:
        connection = _prepare(url)
        reset = lambda: _purge(connection)  # noqa: E731
        bare = _best_of(rounds, lambda: bare_run(url, rows, batch), reset)
        relay = _best_of(rounds, lambda: relay_run(url, rows, batch), reset)
        connection.close()
    print(
        f"\nrelay: {rows} outbox rows -> {2 * rows} persistent messages (event + command), "
        f"batches of {batch}, median of {rounds}"
    )
    print(f"  {'bare pika, windowed confirms':34} {bare:10,.0f} msgs/s")
    print(
        f"  {'civicbus relay (SQLite outbox)':34} {relay:10,.0f} msgs/s ({relay / 2:,.0f} rows/s)"
    )
    print(f"  {'ratio relay / bare':34} {relay / bare:10.0%}   (target >= 50 %)")


WORKER_INSTANCE = "bench"


def _worker_config() -> Any:
    from bus.config import InstanceConfig

    return InstanceConfig(kind="memory", prefetch=64)


def _fill_work(url: str, envelopes: list[Envelope]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    t.declare_topology(channel, {WORKER_INSTANCE: _worker_config()})
    channel.queue_purge(t.work_queue(WORKER_INSTANCE))
    channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    for envelope in envelopes:
        channel.basic_publish(
            t.COMMANDS_EXCHANGE,
            WORKER_INSTANCE,
            envelope.model_dump_json().encode(),
            properties=properties,
        )
    connection.close()


def bare_consume_run(url: str, messages: int) -> tuple[float, int]:
    """Consume and ack `messages` with pika and nothing else (prefetch as the worker's)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=_worker_config().prefetch)
    seen = 0

    def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        nonlocal seen
        ch.basic_ack(method.delivery_tag)
        seen += 1
        if seen >= messages:
            ch.stop_consuming()

    channel.basic_consume(t.work_queue(WORKER_INSTANCE), on_message)
    start = time.perf_counter()
    channel.start_consuming()
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed, seen


def worker_run(url: str, store: Store, messages: int) -> tuple[float, int]:
    """The civicbus worker (consumer thread, handler thread, SQLite receipts) over `messages`."""
    import threading

    from adapters.memory import MemoryAdapter
    from bus.worker import CommandWorker, Consumer, Route

    config = _worker_config()
    adapter = MemoryAdapter(WORKER_INSTANCE, {"backend": f"bench-{uuid.uuid4().hex[:6]}"})
    worker = CommandWorker(Route(WORKER_INSTANCE, store, config.retry), adapter)
    consumer = Consumer(url, prefetch=config.prefetch, name=WORKER_INSTANCE)
    done = threading.Event()
    handled = 0

    def counting(delivery: Any, broker: Any) -> None:
        nonlocal handled
        worker(delivery, broker)
        handled += 1
        if handled >= messages:
            done.set()

    consumer.consume(t.work_queue(WORKER_INSTANCE), counting)
    thread = threading.Thread(target=consumer.run, daemon=True)
    start = time.perf_counter()
    thread.start()
    done.wait()
    elapsed = time.perf_counter() - start  # includes connecting: a small, honest overhead
    consumer.stop()
    thread.join(timeout=30)
    return elapsed, handled


def _stored_commands(store: Store, messages: int) -> list[Envelope]:
    from datetime import UTC, datetime

    from schemas.model import ServiceRequest

    envelopes = [_envelope(i) for i in range(messages)]
    now = datetime.now(UTC)
    with store.transaction() as tx:
        for envelope in envelopes:
            data = {**envelope.data, "requested_at": now, "updated_at": now}
            tx.add_request(ServiceRequest.model_validate(data))
    return envelopes


def worker_section(messages: int, rounds: int) -> None:
    bare_rates, worker_rates = [], []
    with fresh_vhost() as url, tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            store = Store.open(f"sqlite:///{folder}/worker-{round_}.db")
            envelopes = _stored_commands(store, messages)
            _fill_work(url, envelopes)
            elapsed, seen = bare_consume_run(url, messages)
            bare_rates.append(seen / elapsed)
            _fill_work(url, envelopes)
            elapsed, seen = worker_run(url, store, messages)
            worker_rates.append(seen / elapsed)
            store.close()
    bare, worker = statistics.median(bare_rates), statistics.median(worker_rates)
    print(
        f"\nworker: {messages} commands, in-memory adapter, SQLite store, prefetch "
        f"{_worker_config().prefetch}, median of {rounds}"
    )
    print(f"  {'bare pika consume + ack':34} {bare:10,.0f} msgs/s")
    print(f"  {'civicbus worker (receipt recorded)':34} {worker:10,.0f} msgs/s")
    print(f"  {'ratio worker / bare':34} {worker / bare:10.0%}   (target >= 50 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker-messages", type=int, default=2000)
    parser.add_argument(
        "--only", choices=["relay", "worker"], default=None, help="Run one section only."
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.only in (None, "relay"):
        relay_section(args.rows, args.batch, args.rounds)
    if args.only in (None, "worker"):
        worker_section(args.worker_messages, args.rounds)


if __name__ == "__main__":
    main()
