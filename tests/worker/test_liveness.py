"""Workers report their liveness to the store, and `civicbus status` and `civicbus requests
stuck` name a worker hung on a request, or one that went silent, against the real broker and a
real SQLite store. The thresholds are lowered in each test; no test waits them out."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_webhooks import QUICK, SECRET, Subscriber, publish_event, status_event, subscribe
from test_worker_process import start_worker
from typer.testing import CliRunner
from worker_support import (
    FAST,
    INSTANCE,
    MemoryBackend,
    actions,
    new_request,
    publish,
    running,
    wait_until,
)

from adapters import Receipt
from bus import liveness
from bus.broker.connection import connect
from bus.cli import app
from bus.config import InstanceConfig, RetryPolicy
from bus.overview import Overview, take_overview
from bus.store import Store, WorkerLiveness, _broker_blocks
from bus.subscriptions import route_name
from bus.worker import command_consumer, run_subscriptions
from schemas.model import ServiceRequest, Status

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]

#: One quick try of two calls (find, submit) bounded at 0.1 s each: a budget of 0.2 s.
TIMED = FAST.model_copy(
    update={
        "retry": RetryPolicy(immediate_attempts=1, tiers=[0.2], max_attempts=3),
        "settings": {"timeout": 0.1},
    }
)
BEAT = 0.1  # seconds between liveness reports in these tests


class HangingBackend(MemoryBackend):
    """A back-end whose submit does not return until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def submit(self, request: ServiceRequest) -> Receipt:
        self.release.wait(timeout=60)  # a bound, so that a failing test still ends
        return super().submit(request)


@pytest.fixture
def hanging() -> Iterator[HangingBackend]:
    backend = HangingBackend()
    yield backend
    backend.release.set()  # whatever the test did, the worker can finish and stop


def look(store: Store, url: str, config: InstanceConfig = TIMED) -> Overview:
    return take_overview(store, {INSTANCE: config}, lambda: connect(url))


def reports(store: Store, recipient: str = INSTANCE) -> list[WorkerLiveness]:
    return [w for w in store.workers() if w.recipient == recipient]


def hung(overview: Overview) -> list[str]:
    return [p for p in overview.problems if "looks hung" in p]


def silent(lines: list[str]) -> list[str]:
    return [line for line in lines if "never said it stopped" in line]


def test_a_worker_hung_on_a_back_end_call_is_named_with_its_request_until_released(
    store: Store,
    topology: str,
    hanging: HangingBackend,
    monkeypatch: pytest.MonkeyPatch,
    use_config: Callable[[str], dict[str, str]],
) -> None:
    use_config(
        "jurisdictions: [{id: springfield.example, name: Springfield}]\n"
        f"routing: {{default: {INSTANCE}}}\n"
        f"instances: {{{INSTANCE}: {{kind: memory, settings: {{timeout: 0.1}}, "
        "retry: {immediate_attempts: 1, tiers: [0.2]}}}\n"
    )
    envelope = new_request(store)
    consumer = command_consumer(topology, store, INSTANCE, TIMED, hanging, heartbeat_interval=BEAT)
    with running(consumer):
        publish(topology, envelope)
        [worker] = wait_until(
            lambda: [w for w in reports(store) if w.request_id == envelope.subject],
            what="the worker reporting the request in hand",
        )
        assert hung(look(store, topology)) == []  # judged with the usual floor first
        monkeypatch.setattr(liveness, "HUNG_FLOOR", timedelta(0))
        [problem] = wait_until(lambda: hung(look(store, topology)), what="a hung worker")
        status = CliRunner().invoke(app, ["status"])
        as_json = CliRunner().invoke(app, ["status", "--json"])
        stuck = CliRunner().invoke(app, ["requests", "stuck", "--older-than", "0s"])

        hanging.release.set()
        wait_until(
            lambda: [w.working_since for w in reports(store)] == [None],
            what="the worker reporting itself idle",
        )
        released = look(store, topology)

    assert problem.startswith(
        f"{INSTANCE}: worker {worker.name} has been on request {envelope.subject} "
        f"(message {envelope.id}) since 20"
    )
    assert f"`py-spy dump --pid {worker.pid}` on {worker.host}" in problem
    assert status.exit_code == 1 and problem.split(" since ")[0] in status.output
    assert f"worker   {INSTANCE}: {worker.name}, reporting, on {envelope.subject}" in status.output
    [reported] = json.loads(as_json.output)["workers"]
    assert (reported["request_id"], reported["pid"], reported["silent"]) == (
        envelope.subject,
        worker.pid,
        False,
    )
    [line, _hint] = [
        ln for ln in stuck.output.splitlines() if envelope.subject in ln or "try:" in ln
    ]
    assert line.split()[3:5] == ["in-worker", INSTANCE]
    assert f"worker {worker.name} has held it since 20" in line
    assert hung(released) == [] and released.notes == []
    assert "Ada" not in status.output + stuck.output  # the reporter's name: never shown


def test_messages_a_worker_holds_unacknowledged_show_though_the_broker_counts_none_queued(
    store: Store,
    topology: str,
    hanging: HangingBackend,
    use_config: Callable[[str], dict[str, str]],
) -> None:
    use_config(
        "jurisdictions: [{id: springfield.example, name: Springfield}]\n"
        f"routing: {{default: {INSTANCE}}}\n"
        f"instances: {{{INSTANCE}: {{kind: memory}}}}\n"
    )
    consumer = command_consumer(topology, store, INSTANCE, TIMED, hanging, heartbeat_interval=BEAT)
    with running(consumer):
        for _ in range(3):
            publish(topology, new_request(store))
        wait_until(lambda: [w.held for w in reports(store)] == [3], what="3 messages held")
        held = look(store, topology)
        status = CliRunner().invoke(app, ["status"])

        hanging.release.set()
        wait_until(lambda: [w.held for w in reports(store)] == [0], what="none held")
        settled = look(store, topology)

    [roads] = held.recipients
    assert (roads.queued, roads.held, roads.consumers) == (0, 3, 1)
    table = status.output.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("RECIPIENT"))
    assert table[header].split()[:4] == ["RECIPIENT", "QUEUED", "HELD", "CONSUMERS"]
    assert table[header + 1].split()[:4] == [INSTANCE, "0", "3", "1"]
    assert ", holds 3 unacknowledged" in status.output
    assert (settled.recipients[0].queued, settled.recipients[0].held) == (0, 0)


def test_a_silent_worker_s_line_says_what_it_held_when_it_last_reported(
    store: Store, topology: str, use_config: Callable[[str], dict[str, str]]
) -> None:
    use_config(
        "jurisdictions: [{id: springfield.example, name: Springfield}]\n"
        f"routing: {{default: {INSTANCE}}}\n"
        f"instances: {{{INSTANCE}: {{kind: memory}}}}\n"
    )
    long_ago = datetime.now(UTC) - 2 * liveness.SILENT_AFTER
    frozen = WorkerLiveness("w-1", INSTANCE, "vm", 4242, long_ago, long_ago, "m-1", None, long_ago)
    with store.transaction() as tx:
        tx.report_workers([replace(frozen, held=3)])

    status = CliRunner().invoke(app, ["status"])

    # Its messages went back to the queue when the broker gave up on it: not counted as HELD.
    assert ", held 3 unacknowledged when it last reported" in status.output
    table = status.output.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("RECIPIENT"))
    assert table[header + 1].split()[:3] == [INSTANCE, "0", "-"]


def test_a_worker_stopped_cleanly_leaves_no_report_and_no_problem(
    store: Store, topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(
        command_consumer(topology, store, INSTANCE, TIMED, MemoryBackend(), heartbeat_interval=BEAT)
    ):
        wait_until(lambda: reports(store), what="a liveness report")
        envelope = new_request(store)
        publish(topology, envelope)
        wait_until(lambda: ("submitted", "ok") in actions(store, envelope.subject))

    monkeypatch.setattr(liveness, "SILENT_AFTER", timedelta(0))
    monkeypatch.setattr(liveness, "HUNG_FLOOR", timedelta(0))
    after = look(store, topology)

    assert store.workers() == []
    assert silent(after.problems + after.notes) == [] and hung(after) == []


def test_a_worker_killed_with_sigkill_goes_silent_and_is_named(
    store: Store, topology: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(liveness, "SILENT_AFTER", timedelta(seconds=3))  # 15 missed reports
    worker = start_worker(topology, sqlite_url, tmp_path, "normal", {"WORKER_HEARTBEAT": "0.2"})
    try:
        wait_until(
            lambda: reports(store) and not silent((o := look(store, topology)).notes + o.problems),
            timeout=30,
            what="the worker reporting",
        )
    finally:
        worker.kill()  # SIGKILL: no clean stop, its report stays behind
        worker.wait(timeout=10)

    [note] = wait_until(lambda: silent(look(store, topology).notes), what="a silent worker")
    publish(topology, new_request(store))  # waits with no worker to take it
    [problem] = wait_until(
        lambda: silent(look(store, topology).problems), what="a silent worker holding things up"
    )

    name = f"{reports(store)[0].host}:{worker.pid}"
    assert note.startswith(f"{INSTANCE}: worker {name} (started 20")
    assert "it crashed, was killed or is frozen; nothing waits for it" in note
    assert problem.startswith(f"{INSTANCE}: worker {name} (started 20")
    assert problem.endswith(
        f"1 message(s) wait and no other worker of {INSTANCE} reports: start `civicbus worker "
        f"{INSTANCE}` (and end {name} on {reports(store)[0].host} if it is still there)"
    )


def test_a_worker_s_heartbeat_removes_the_block_report_of_a_publisher_killed_while_blocked(
    store: Store, topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    with monkeypatch.context() as patch:
        # Said last long ago by a worker the broker blocked, then killed: never said again.
        said_at = now - liveness.BLOCK_REPORT_STALE - timedelta(minutes=1)
        patch.setattr(_broker_blocks, "utcnow", lambda: said_at)
        store.note_broker_blocked("worker:gone:4242", "w-gone", said_at, "low on disk")
    store.note_broker_blocked("relay", "host-a:1", now, "low on disk")  # blocked, and says so
    assert list(store.overview().broker_blocks) == ["relay", "worker:gone:4242"]

    with running(
        command_consumer(topology, store, INSTANCE, TIMED, MemoryBackend(), heartbeat_interval=BEAT)
    ):
        wait_until(lambda: reports(store), what="a liveness report")
        # Pruned by the worker's first report, which came before it consumed.
        assert list(store.overview().broker_blocks) == ["relay"]


def test_a_webhook_worker_reports_the_event_it_retries_with_its_request(
    store: Store, amqp_url: str, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a free port, left closed: the subscriber starts down
        probe.bind(("127.0.0.1", 0))
        subscriber = Subscriber(probe.getsockname()[1])
    sub_id = subscribe(store, amqp_url, subscriber.url, ["request.*"])
    request_id = new_request(store).subject
    publish_event(amqp_url, status_event(request_id, Status.FIXED), Status.FIXED.value)

    stop = threading.Event()
    thread = threading.Thread(
        target=run_subscriptions,
        args=(amqp_url, store),
        kwargs={
            "stop": stop,
            "env": {"TEST_WEBHOOK_SECRET": SECRET},
            "policy": QUICK,
            "heartbeat_interval": BEAT,
        },
        daemon=True,
    )
    thread.start()
    try:
        # The subscriber is down: the worker holds the event and retries it in place.
        wait_until(
            lambda: [w.request_id for w in reports(store, route_name(sub_id))] == [request_id],
            what="the webhook worker reporting the event in hand",
        )
        subscriber.start()
        wait_until(
            lambda: [w.working_since for w in reports(store, route_name(sub_id))] == [None],
            what="the webhook worker reporting itself idle",
        )
    finally:
        stop.set()
        thread.join(timeout=15)
        subscriber.stop()
    assert not thread.is_alive()
    assert store.workers() == []  # stopped cleanly: no report left behind
