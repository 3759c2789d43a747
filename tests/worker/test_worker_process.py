"""The worker as a process: killed with kill -9 mid-message, and stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from worker_support import INSTANCE, actions, new_request, publish, queue_depth, wait_until

from bus.broker.topology import work_queue
from bus.store import Store

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]

SCRIPT = Path(__file__).with_name("worker_process.py")


def start_worker(
    amqp_url: str, store_url: str, tmp_path: Path, mode: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            amqp_url,
            store_url,
            str(tmp_path / "backend.db"),
            str(tmp_path / f"marker-{mode}"),
            mode,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def backend_rows(tmp_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(tmp_path / "backend.db") as db:
        return list(db.execute("SELECT request_id, ref FROM work"))


def test_a_worker_killed_mid_message_is_redelivered_without_a_duplicate(
    store: Store, topology: str, sqlite_url: str, tmp_path: Path
) -> None:
    envelope = new_request(store)
    publish(topology, envelope)

    doomed = start_worker(topology, sqlite_url, tmp_path, "hang")
    try:
        wait_until(lambda: (tmp_path / "marker-hang").exists(), timeout=30, what="the submit")
    finally:
        doomed.kill()  # SIGKILL: no ack, no cleanup; the back-end already holds the work item
        doomed.wait(timeout=10)
    assert backend_rows(tmp_path) == [(envelope.subject, "WO-1")]

    survivor = start_worker(topology, sqlite_url, tmp_path, "normal")
    try:
        wait_until(lambda: ("submitted", "found") in actions(store, envelope.subject), timeout=30)
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(timeout=20)

    assert backend_rows(tmp_path) == [(envelope.subject, "WO-1")]
    request = store.get_request(envelope.subject)
    assert request is not None and [r.reference for r in request.backend_refs] == ["WO-1"]
    assert queue_depth(topology, work_queue(INSTANCE)) == 0


def test_sigterm_finishes_the_message_in_hand_acks_and_exits_cleanly(
    store: Store, topology: str, sqlite_url: str, tmp_path: Path
) -> None:
    envelope = new_request(store)
    publish(topology, envelope)

    worker = start_worker(topology, sqlite_url, tmp_path, "slow")
    wait_until(lambda: (tmp_path / "marker-slow").exists(), timeout=30, what="the submit")
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=30)

    assert worker.returncode == 0, stderr.decode()
    assert store.workers() == []  # a clean stop takes its liveness report away
    assert ("submitted", "ok") in actions(store, envelope.subject)
    assert queue_depth(topology, work_queue(INSTANCE)) == 0
    assert backend_rows(tmp_path) == [(envelope.subject, "WO-1")]
