"""A stopping worker waits for the messages in hand for its stop grace at most: a handler
still busy then (a back-end that never answers) is left behind, its message goes back to the
queue unacknowledged, the worker says which message it left and `civicbus worker` exits 1. A
second signal of the same kind (SIGTERM again, Ctrl-C twice) does that at once; one Ctrl-C under
`civicbus run` (the terminal's SIGINT, then the supervisor's SIGTERM) is an ordinary stop."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
from structlog.testing import capture_logs
from test_webhooks import SECRET, publish_event, status_event, subscribe
from worker_support import (
    FAST,
    INSTANCE,
    MemoryBackend,
    actions,
    channel_on,
    new_request,
    publish,
    queue_depth,
    wait_until,
)

from adapters import Receipt
from bus import supervisor
from bus.broker.topology import work_queue
from bus.store import Store
from bus.worker import STOP_GRACE, Consumer, StopSignals, command_consumer, run_subscriptions
from bus.worker._heartbeat import _LAST_WRITE_WAIT
from schemas.events import Envelope
from schemas.model import ServiceRequest, Status

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]

REPO = Path(__file__).parents[2]
BEAT = 0.1  # seconds between liveness reports in these tests


class StuckBackend(MemoryBackend):
    """A back-end whose submit waits until released (never, in the test that stops it)."""

    def __init__(self, takes: float | None = None) -> None:
        super().__init__()
        self.takes = takes
        self.entered = threading.Event()
        self.release = threading.Event()

    def submit(self, request: ServiceRequest) -> Receipt:
        self.entered.set()
        self.release.wait(timeout=self.takes if self.takes is not None else 60)
        return super().submit(request)


class SilentServer:
    """A TCP server on loopback that takes connections, reads what comes and never answers:
    a back-end or a subscriber hung past every timeout but the client's."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.connected = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            self._held.append(conn)
            self.connected.set()

    def close(self) -> None:
        # shutdown() wakes the accept() under way; close() alone would leave it listening.
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def run_in_thread(target: Callable[[], bool]) -> tuple[threading.Thread, list[bool]]:
    returned: list[bool] = []
    thread = threading.Thread(target=lambda: returned.append(target()), daemon=True)
    thread.start()
    return thread, returned


def get_back(amqp_url: str, queue: str) -> tuple[Any, Any]:
    """The queue's first message, once there, taken and put back (not acked): its method and
    properties."""

    def take() -> tuple[Any, Any] | None:
        with channel_on(amqp_url) as ch:
            method, properties, _body = ch.basic_get(queue)
            if method is None:
                return None
            ch.basic_nack(method.delivery_tag, requeue=True)
            return method, properties

    got: tuple[Any, Any] = wait_until(take, timeout=5, what=f"a message back in {queue}")
    return got


def handler_threads_end(name_prefix: str) -> None:
    """Wait for the handler threads a stop left behind, once released, to end."""
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith(name_prefix)],
        what="the handler threads left behind to end",
    )


@dataclass
class Hung:
    """A worker whose handler hangs in the back-end with the one command published to it."""

    consumer: Consumer
    thread: threading.Thread
    returned: list[bool]
    envelope: Envelope


@contextlib.contextmanager
def hung_in_the_back_end(store: Store, topology: str, *, stop_grace: float) -> Iterator[Hung]:
    """Run the worker until its handler hangs in the back-end and it reported its liveness;
    afterwards release the back-end and wait for the handler thread left behind to end."""
    backend = StuckBackend()
    envelope = new_request(store)
    publish(topology, envelope)
    consumer = command_consumer(
        topology, store, INSTANCE, FAST, backend, heartbeat_interval=BEAT, stop_grace=stop_grace
    )
    thread, returned = run_in_thread(consumer.run)
    try:
        assert backend.entered.wait(timeout=15), "the back-end was never called"
        wait_until(lambda: store.workers(), what="a liveness report")
        yield Hung(consumer, thread, returned, envelope)
    finally:
        backend.release.set()
    handler_threads_end(f"{INSTANCE}:")


def test_a_stop_leaves_a_message_hung_past_the_grace_to_the_broker_and_says_which(
    store: Store, topology: str
) -> None:
    with capture_logs() as logs, hung_in_the_back_end(store, topology, stop_grace=1) as hung:
        envelope, thread, returned = hung.envelope, hung.thread, hung.returned
        stopping = time.monotonic()
        hung.consumer.stop()
        thread.join(timeout=10)
        took = time.monotonic() - stopping
        assert not thread.is_alive(), "the stop waited for the hung handler"
        method, properties = get_back(topology, work_queue(INSTANCE))
        trail = actions(store, envelope.subject)
        workers_after = store.workers()

    # Bounded well below the 60 s the back-end would hold it (room for a loaded CI machine).
    assert returned == [False] and 1 <= took < 10
    assert (properties.message_id, method.redelivered) == (envelope.id, True)
    assert ("submitted", "ok") not in trail
    # Released at last, the thread left behind cannot ack it any more.
    assert queue_depth(topology, work_queue(INSTANCE)) == 1
    assert workers_after == []  # the message is back in the queue, held by no one
    [left] = [entry for entry in logs if entry["event"] == "worker.stop_grace_expired"]
    assert left["log_level"] == "warning"
    assert (left["worker"], left["queues"], left["grace_s"]) == (
        INSTANCE,
        [work_queue(INSTANCE)],
        1,
    )
    [held] = left["held"]
    assert (held["queue"], held["message_id"], held["request_id"]) == (
        work_queue(INSTANCE),
        envelope.id,
        envelope.subject,
    )
    assert held["held_s"] >= 1
    assert "Ada" not in repr(left) and "resident@" not in repr(left)


def test_stop_now_leaves_a_hung_message_to_the_broker_without_waiting_out_the_grace(
    store: Store, topology: str
) -> None:
    with capture_logs() as logs, hung_in_the_back_end(store, topology, stop_grace=30) as hung:
        envelope, thread, returned = hung.envelope, hung.thread, hung.returned
        hung.consumer.stop()
        time.sleep(0.5)
        assert thread.is_alive(), "the first stop did not wait for the message in hand"
        stopping = time.monotonic()
        hung.consumer.stop_now()
        thread.join(timeout=10)
        took = time.monotonic() - stopping
        assert not thread.is_alive(), "stop_now waited for the hung handler"
        method, properties = get_back(topology, work_queue(INSTANCE))
        workers_after = store.workers()

    assert returned == [False] and took < 5  # not the 30 s grace
    assert (properties.message_id, method.redelivered) == (envelope.id, True)
    assert queue_depth(topology, work_queue(INSTANCE)) == 1
    assert workers_after == []
    [left] = [entry for entry in logs if entry["event"] == "worker.stop_cut_short"]
    assert not [entry for entry in logs if entry["event"] == "worker.stop_grace_expired"]
    assert left["log_level"] == "warning"
    assert (left["worker"], left["grace_s"]) == (INSTANCE, 30)
    assert 0.4 <= left["waited_s"] < 5
    assert [h["message_id"] for h in left["held"]] == [envelope.id]


def test_stop_now_with_nothing_in_hand_is_a_clean_stop(topology: str) -> None:
    with channel_on(topology) as ch:
        ch.queue_declare("stop.idle", durable=True)
    consumer = Consumer(topology, prefetch=1, name="idle", stop_grace=30)
    consumer.consume("stop.idle", lambda delivery, broker: None)
    with capture_logs() as logs:
        thread, returned = run_in_thread(consumer.run)
        wait_until(lambda: any(e["event"] == "worker.consuming" for e in logs), what="consuming")
        consumer.stop()
        consumer.stop_now()
        thread.join(timeout=10)

    assert not thread.is_alive() and returned == [True]
    assert not [
        e for e in logs if e["event"] in ("worker.stop_cut_short", "worker.stop_grace_expired")
    ]


def test_only_a_second_signal_of_the_same_kind_asks_for_a_stop_now() -> None:
    calls: list[str] = []
    signals = StopSignals(lambda: calls.append("stop"), lambda: calls.append("now"))
    # One Ctrl-C under `civicbus run`: the terminal's SIGINT, then the supervisor's SIGTERM.
    signals.received(signal.SIGINT)
    signals.received(signal.SIGTERM)
    assert calls == ["stop", "stop"]
    # Ctrl-C again: the terminal's SIGINT (the supervisor's SIGTERM follows).
    signals.received(signal.SIGINT)
    signals.received(signal.SIGTERM)
    assert calls == ["stop", "stop", "now", "now"]

    calls.clear()
    twice = StopSignals(lambda: calls.append("stop"), lambda: calls.append("now"))
    twice.received(signal.SIGTERM)  # systemd, a supervisor, `kill`
    twice.received(signal.SIGTERM)
    assert calls == ["stop", "now"]


def test_a_message_finished_within_the_grace_is_acked_and_the_stop_is_clean(
    store: Store, topology: str
) -> None:
    backend = StuckBackend(takes=1.0)  # a slow back-end, well within the grace
    envelope = new_request(store)
    publish(topology, envelope)
    consumer = command_consumer(
        topology, store, INSTANCE, FAST, backend, heartbeat_interval=BEAT, stop_grace=5
    )
    thread, returned = run_in_thread(consumer.run)
    assert backend.entered.wait(timeout=15), "the back-end was never called"
    consumer.stop()
    thread.join(timeout=10)

    assert not thread.is_alive() and returned == [True]
    assert ("submitted", "ok") in actions(store, envelope.subject)
    assert queue_depth(topology, work_queue(INSTANCE)) == 0
    assert store.workers() == []


def test_a_consumer_with_two_queues_leaves_only_the_hung_ones_message(topology: str) -> None:
    with channel_on(topology) as ch:
        for name in ("stop.hung", "stop.quick"):
            ch.queue_declare(name, durable=True)
            ch.basic_publish("", name, name.encode(), pika.BasicProperties(message_id=name))
    never = threading.Event()
    handled: list[str] = []
    consumer = Consumer(topology, prefetch=2, name="two", stop_grace=1)
    consumer.consume("stop.hung", lambda delivery, broker: never.wait(60) and None)
    consumer.consume("stop.quick", lambda delivery, broker: handled.append(delivery.key))
    thread, returned = run_in_thread(consumer.run)
    try:
        wait_until(lambda: handled, what="the quick message")
        consumer.stop()
        thread.join(timeout=10)
        assert not thread.is_alive()
        method, _ = get_back(topology, "stop.hung")
        quick_left = queue_depth(topology, "stop.quick")
    finally:
        never.set()

    assert returned == [False] and method.redelivered
    assert quick_left == 0  # handled within the grace: acked


def test_a_webhook_delivery_hung_past_the_grace_goes_back_to_its_queue(
    store: Store, amqp_url: str, silent: SilentServer
) -> None:
    sub_id = subscribe(store, amqp_url, f"http://127.0.0.1:{silent.port}/hook", ["request.*"])
    envelope = status_event(new_request(store).subject, Status.FIXED)
    publish_event(amqp_url, envelope, Status.FIXED.value)
    stop = threading.Event()

    def deliver() -> bool:
        return run_subscriptions(
            amqp_url,
            store,
            stop=stop,
            env={"TEST_WEBHOOK_SECRET": SECRET},
            heartbeat_interval=BEAT,
            stop_grace=1,
        )

    with capture_logs() as logs:
        thread, returned = run_in_thread(deliver)
        assert silent.connected.wait(timeout=15), "the subscriber was never called"
        stopping = time.monotonic()
        stop.set()
        thread.join(timeout=10)  # the subscriber's timeout (10 s) is not waited out
        took = time.monotonic() - stopping

    assert not thread.is_alive() and returned == [False] and took < 9
    method, properties = get_back(amqp_url, f"civicbus.sub.{sub_id}")
    assert (properties.message_id, method.redelivered) == (envelope.id, True)
    assert store.workers() == []
    silent.close()  # the delivery left behind fails at once, and its thread ends
    handler_threads_end("subscriptions:")
    [left] = [entry for entry in logs if entry["event"] == "worker.stop_grace_expired"]
    assert [h["message_id"] for h in left["held"]] == [envelope.id]


def test_the_stop_grace_ends_before_the_supervisor_or_systemd_kills_the_worker() -> None:
    # The grace, then the last liveness write, must fit in what `civicbus run` waits.
    assert STOP_GRACE + _LAST_WRITE_WAIT < supervisor.GRACE_SECONDS
    for unit in ("civicbus-worker@.service", "civicbus-webhooks.service"):
        text = (REPO / "deploy" / "systemd" / unit).read_text()
        [timeout] = re.findall(r"^TimeoutStopSec=(\d+)$", text, re.M)
        assert int(timeout) > STOP_GRACE + _LAST_WRITE_WAIT


# --- `civicbus worker` as an operator runs it ------------------------------------------------

PARKS_CONFIG = """
jurisdictions: [{{id: springfield.example, name: Springfield}}]
routing: {{default: parks}}
instances:
  parks:
    kind: parks
    mapping: {mapping}
    settings: {{base_url: "http://127.0.0.1:{port}", client_id: civicbus,
               client_secret: not-a-secret, timeout: 30}}
    retry: {{immediate_attempts: 1, tiers: [0.2], max_attempts: 2}}
"""


def start_cli_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bus", "worker", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def sigterm(worker: subprocess.Popen[bytes]) -> tuple[float, str]:
    """SIGTERM the worker and wait for it (briefly); how long it took and what it logged."""
    stopping = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        _, stderr = worker.communicate(timeout=20)
    finally:
        worker.kill()
    return time.monotonic() - stopping, stderr.decode()


def signal_twice(
    worker: subprocess.Popen[bytes], first: signal.Signals, second: signal.Signals, gap: float
) -> tuple[float, str]:
    """Send `first`, then `second` `gap` seconds later, and wait for the worker (briefly); how
    long it took from the second signal and what it logged."""
    worker.send_signal(first)
    time.sleep(gap)
    assert worker.poll() is None, "the worker did not wait for the message in hand"
    stopping = time.monotonic()
    worker.send_signal(second)
    try:
        _, stderr = worker.communicate(timeout=20)
    finally:
        worker.kill()
    return time.monotonic() - stopping, stderr.decode()


def routed(amqp_url: str, envelope: Envelope, routing_key: str) -> bool:
    try:
        publish(amqp_url, envelope, routing_key=routing_key)
    except (pika.exceptions.UnroutableError, pika.exceptions.ChannelClosedByBroker):
        return False  # the worker has not declared its exchange or bound its queue yet
    return True


def test_civicbus_worker_stopped_with_a_back_end_that_never_answers_exits_1(
    use_config: Callable[[str], dict[str, str]],
    store: Store,
    amqp_url: str,
    silent: SilentServer,
) -> None:
    worker, envelope = start_parks_worker(use_config, store, amqp_url, silent, "1")
    took, stderr = sigterm(worker)

    assert worker.returncode == 1, stderr
    assert took < 15  # not the back-end's 30 s timeout
    assert "worker.stop_grace_expired" in stderr and envelope.id in stderr
    method, properties = get_back(amqp_url, work_queue("parks"))
    assert (properties.message_id, method.redelivered) == (envelope.id, True)
    assert store.workers() == []


def test_civicbus_worker_subscriptions_stopped_with_a_silent_subscriber_exits_1(
    use_config: Callable[[str], dict[str, str]],
    store: Store,
    amqp_url: str,
    silent: SilentServer,
) -> None:
    worker, envelope, sub_id = start_subscriptions_worker(use_config, store, amqp_url, silent, "1")
    took, stderr = sigterm(worker)

    assert worker.returncode == 1, stderr
    assert took < 9  # not the webhook's 10 s timeout (1 s grace, the last liveness write)
    assert "worker.stop_grace_expired" in stderr and envelope.id in stderr
    method, properties = get_back(amqp_url, f"civicbus.sub.{sub_id}")
    assert (properties.message_id, method.redelivered) == (envelope.id, True)


def start_parks_worker(
    use_config: Callable[[str], dict[str, str]],
    store: Store,
    amqp_url: str,
    silent: SilentServer,
    grace: str,
) -> tuple[subprocess.Popen[bytes], Envelope]:
    """`civicbus worker parks` in hand with a request its back-end never answers."""
    mapping = REPO / "mappings" / "parks.yaml"
    env = use_config(PARKS_CONFIG.format(mapping=mapping, port=silent.port))
    envelope = new_request(store)
    worker = start_cli_worker(env, "parks", "--stop-grace", grace)
    try:
        wait_until(lambda: routed(amqp_url, envelope, "parks"), timeout=20, what="the queue")
        assert silent.connected.wait(timeout=15), "the back-end was never called"
    except BaseException:
        worker.kill()
        raise
    return worker, envelope


def start_subscriptions_worker(
    use_config: Callable[[str], dict[str, str]],
    store: Store,
    amqp_url: str,
    silent: SilentServer,
    grace: str,
) -> tuple[subprocess.Popen[bytes], Envelope, int]:
    """`civicbus worker --subscriptions` in hand with an event its subscriber never answers;
    the worker, the event and the subscription's id."""
    env = use_config("jurisdictions: [{id: springfield.example, name: Springfield}]\n")
    sub_id = subscribe(store, amqp_url, f"http://127.0.0.1:{silent.port}/hook", ["request.*"])
    envelope = status_event(new_request(store).subject, Status.FIXED)
    publish_event(amqp_url, envelope, Status.FIXED.value)
    worker = start_cli_worker(
        {**env, "TEST_WEBHOOK_SECRET": SECRET}, "--subscriptions", "--stop-grace", grace
    )
    try:
        assert silent.connected.wait(timeout=20), "the subscriber was never called"
    except BaseException:
        worker.kill()
        raise
    return worker, envelope, sub_id


def test_civicbus_worker_given_a_second_sigterm_leaves_its_message_at_once_and_exits_1(
    use_config: Callable[[str], dict[str, str]],
    store: Store,
    amqp_url: str,
    silent: SilentServer,
) -> None:
    worker, envelope = start_parks_worker(use_config, store, amqp_url, silent, "30")
    took, stderr = signal_twice(worker, signal.SIGTERM, signal.SIGTERM, gap=1)

    assert worker.returncode == 1, stderr
    assert took < 5  # not the 30 s grace, nor the back-end's 30 s timeout
    assert "worker.stop_cut_short" in stderr and envelope.id in stderr
    assert "worker.stop_grace_expired" not in stderr
    method, properties = get_back(amqp_url, work_queue("parks"))
    assert (properties.message_id, method.redelivered) == (envelope.id, True)
    assert store.workers() == []


def test_civicbus_worker_given_ctrl_c_twice_leaves_its_message_at_once_and_exits_1(
    use_config: Callable[[str], dict[str, str]],
    store: Store,
    amqp_url: str,
    silent: SilentServer,
) -> None:
    worker, envelope = start_parks_worker(use_config, store, amqp_url, silent, "30")
    took, stderr = signal_twice(worker, signal.SIGINT, signal.SIGINT, gap=0.5)

    assert worker.returncode == 1, stderr
    assert took < 5
    assert "worker.stop_cut_short" in stderr and envelope.id in stderr
    method, properties = get_back(amqp_url, work_queue("parks"))
    assert (properties.message_id, method.redelivered) == (envelope.id, True)
    assert store.workers() == []


def test_one_ctrl_c_under_civicbus_run_is_an_ordinary_stop_of_a_worker(
    use_config: Callable[[str], dict[str, str]],
    store: Store,
    amqp_url: str,
    silent: SilentServer,
) -> None:
    # The terminal's SIGINT reaches the whole process group, the supervisor's SIGTERM follows
    # within its 0.2 s tick: the worker waits out its grace as for one signal.
    worker, envelope = start_parks_worker(use_config, store, amqp_url, silent, "3")
    stopping = time.monotonic()
    took, stderr = signal_twice(worker, signal.SIGINT, signal.SIGTERM, gap=0.2)
    took_all = time.monotonic() - stopping

    assert worker.returncode == 1, stderr
    assert took_all >= 3, "the supervisor's SIGTERM cut the grace short"
    assert took < 15
    assert "worker.stop_grace_expired" in stderr and "worker.stop_cut_short" not in stderr
    method, properties = get_back(amqp_url, work_queue("parks"))
    assert (properties.message_id, method.redelivered) == (envelope.id, True)


def test_civicbus_worker_subscriptions_given_a_second_sigterm_exits_1_at_once(
    use_config: Callable[[str], dict[str, str]],
    store: Store,
    amqp_url: str,
    silent: SilentServer,
) -> None:
    worker, envelope, sub_id = start_subscriptions_worker(use_config, store, amqp_url, silent, "30")
    took, stderr = signal_twice(worker, signal.SIGTERM, signal.SIGTERM, gap=1)

    assert worker.returncode == 1, stderr
    assert took < 5  # not the 30 s grace, nor the webhook's 10 s timeout
    assert "worker.stop_cut_short" in stderr and envelope.id in stderr
    method, properties = get_back(amqp_url, f"civicbus.sub.{sub_id}")
    assert (properties.message_id, method.redelivered) == (envelope.id, True)
    assert store.workers() == []
