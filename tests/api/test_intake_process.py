"""The intake writer process (bus/api/intake_process.py): creates written on a second core are
as durable and as checked as those written on the event loop, and the process lives and dies
with the API.

Real processes throughout: the writer is the real child, the API the real app under uvicorn
(or the real `civicbus api` command), the store SQLite in a temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bus.api import committer as committer_module
from bus.api import create_app
from bus.api.committer import GroupCommitter
from bus.api.intake_process import PROCESS_NAME, RESTART_DELAY_S, _portable
from bus.bootstrap import Runtime
from bus.cli import app as cli
from bus.intake import Accepted, IdempotencyConflict
from bus.store import StoreUnavailable
from tests.api.conftest import SANDBOX, LiveServer, pothole_form, prepared_pothole
from tests.api.test_durability import api_environment, civicbus_api
from tests.processes import children, exited
from tests.sqlite_lock import hold_write_lock
from tests.waiting import wait_until


def writer_children(parent: int) -> list[int]:
    """The pids of `parent`'s intake writer processes."""
    found = []
    for pid in children(parent):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        if PROCESS_NAME.encode() in command:
            found.append(pid)
    return found


def test_concurrent_creates_are_written_by_the_child_which_stops_with_the_server(
    rt: Runtime,
) -> None:
    _, key = rt.store.add_client("app")
    with LiveServer(create_app(rt, intake_process=True), lifespan=True) as live:
        (child,) = writer_children(os.getpid())  # started with the app, before any create
        with (
            httpx.Client(base_url=f"{live.url}/open311/v2", timeout=10) as http,
            ThreadPoolExecutor(8) as pool,
        ):
            forms = [pothole_form(key, description=f"hole {i}") for i in range(40)]
            answers = list(pool.map(lambda form: http.post("/requests.json", data=form), forms))
        assert [a.status_code for a in answers] == [200] * 40, [a.text for a in answers]
        assert writer_children(os.getpid()) == [child]
    wait_until(lambda: exited(child), timeout=10, what="the writer process to end with the server")
    ids = {a.json()[0]["service_request_id"] for a in answers}
    assert len(ids) == 40
    assert all(rt.store.get_request(i) is not None for i in ids)
    created = {r.envelope.subject for r in rt.store.pending_outbox(limit=1000)}
    assert ids <= created
    assert rt.store.verify_audit().ok


def test_checks_made_in_the_writing_transaction_are_answered_through_the_child(
    rt: Runtime,
) -> None:
    client, key = rt.store.add_client("app")
    with (
        LiveServer(create_app(rt, intake_process=True), lifespan=True) as live,
        httpx.Client(base_url=f"{live.url}/open311/v2", timeout=10) as http,
    ):
        first = http.post(
            "/requests.json", data=pothole_form(key), headers={"Idempotency-Key": "k-1"}
        )
        again = http.post(
            "/requests.json", data=pothole_form(key), headers={"Idempotency-Key": "k-1"}
        )
        other = http.post(
            "/requests.json",
            data=pothole_form(key, description="another hole"),
            headers={"Idempotency-Key": "k-1"},
        )
        assert first.status_code == 200, first.text
        assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
        # IdempotencyConflict, raised in the child, crossed with its key.
        assert other.status_code == 409 and "'k-1'" in other.text, other.text
        # The key is remembered by the API now; the revocation is found by the child's
        # transaction (ClientRevoked crossing back).
        assert rt.store.revoke_client(client.name)
        revoked = http.post("/requests.json", data=pothole_form(key))
        assert revoked.status_code == 403, revoked.text


def test_creates_held_by_a_child_that_dies_fail_503_and_a_new_child_takes_the_next(
    rt: Runtime,
) -> None:
    client, _ = rt.store.add_client("app")
    committer = GroupCommitter(rt.store, process_url=rt.env.database_url)

    async def scenario() -> None:
        committer.start()
        (child,) = writer_children(os.getpid())
        os.kill(child, signal.SIGSTOP)  # holds the batch it is sent, unwritten
        held = [
            asyncio.ensure_future(committer.submit(prepared_pothole(rt, client))) for _ in range(3)
        ]
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in held)
        os.kill(child, signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), timeout=10)
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        await asyncio.sleep(RESTART_DELAY_S)
        accepted = await asyncio.wait_for(
            committer.submit(prepared_pothole(rt, client)), timeout=20
        )
        assert isinstance(accepted, Accepted) and accepted.request is not None
        assert rt.store.get_request(accepted.request.id) is not None
        assert writer_children(os.getpid()) not in ([], [child])

    try:
        asyncio.run(scenario())
    finally:
        committer.close()
    with sqlite3.connect(rt.env.database_url.removeprefix("sqlite:///")) as db:
        (stored,) = db.execute("SELECT count(*) FROM requests").fetchone()
    assert stored == 1  # the three held creates were never written


def test_a_child_that_stops_answering_is_killed_and_replaced(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_module, "ANSWER_WAIT_S", 0.5)
    client, _ = rt.store.add_client("app")
    committer = GroupCommitter(rt.store, process_url=rt.env.database_url)

    async def scenario() -> None:
        committer.start()
        (child,) = writer_children(os.getpid())
        os.kill(child, signal.SIGSTOP)  # hung: alive, answering nothing
        held = [
            asyncio.ensure_future(committer.submit(prepared_pothole(rt, client))) for _ in range(2)
        ]
        outcomes = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), timeout=10)
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        assert exited(child)
        # The new child's first answer waits for its imports: longer than this test's wait.
        monkeypatch.setattr(committer_module, "ANSWER_WAIT_S", 60.0)
        await asyncio.sleep(RESTART_DELAY_S)
        accepted = await asyncio.wait_for(
            committer.submit(prepared_pothole(rt, client)), timeout=20
        )
        assert isinstance(accepted, Accepted)

    try:
        asyncio.run(scenario())
    finally:
        committer.close()


def test_a_child_waiting_out_another_writers_lock_never_stops_the_event_loop(
    rt: Runtime,
) -> None:
    """Creates piled up while the child cannot read (it waits for SQLite's write lock, held by
    another process's writer) are held back, not written to a full socket, which would block
    the API's event loop until the child reads again."""
    client, _ = rt.store.add_client("app")
    # ~600 KB of pickled creates: several times what the socket takes. Prepared before the
    # lock is taken (adding the client writes).
    many = [
        prepared_pothole(rt, client, description=f"{i} " + "deep hole " * 200) for i in range(300)
    ]
    committer = GroupCommitter(rt.store, process_url=rt.env.database_url)
    released = threading.Event()

    async def scenario() -> float:
        committer.start()
        # Held for 2 s, under the store's 5 s busy timeout: the child waits, then writes.
        hold_write_lock(rt.env.database_url, released)
        release = threading.Timer(2.0, released.set)
        release.start()
        longest, ticking = 0.0, True

        async def tick() -> None:
            nonlocal longest
            last = time.monotonic()
            while ticking:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                longest, last = max(longest, now - last), now

        ticker = asyncio.ensure_future(tick())
        creates = [asyncio.ensure_future(committer.submit(prepared)) for prepared in many]
        outcomes = await asyncio.wait_for(asyncio.gather(*creates), timeout=30)
        ticking = False
        await ticker
        release.join()
        assert all(isinstance(o, Accepted) for o in outcomes), outcomes
        return longest

    try:
        longest = asyncio.run(scenario())
    finally:
        released.set()
        committer.close()
    assert longest < 1.0, f"the event loop stood still for {longest:.1f} s"
    with sqlite3.connect(rt.env.database_url.removeprefix("sqlite:///")) as db:
        (stored,) = db.execute("SELECT count(*) FROM requests").fetchone()
    assert stored == len(many)


def test_the_child_logs_what_it_wrote_ignores_sigterm_and_exits_when_the_api_is_killed(
    tmp_path: Path,
) -> None:
    env, key = api_environment(tmp_path)
    form = pothole_form(key, email="resident@example.org")
    with civicbus_api(env, tmp_path, ["--intake-process"]) as (process, url):
        (child,) = writer_children(process.pid)
        # A SIGTERM sent to the whole group (systemd, a supervisor) must not cut the API's
        # in-flight creates short: the child stops when the API closes the socket.
        os.kill(child, signal.SIGTERM)
        answer = httpx.post(f"{url}/open311/v2/requests.json", data=form, timeout=10)
        assert answer.status_code == 200, answer.text
        assert writer_children(process.pid) == [child]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        wait_until(
            lambda: exited(child), timeout=10, what="the writer process to end after the API"
        )
        assert process.stderr is not None
        log = process.stderr.read().decode()  # the API's and the child's: one stream
    # The accepted line is the child's (it wrote the request), in the API's log stream.
    request_id = answer.json()[0]["service_request_id"]
    (accepted,) = [json.loads(line) for line in log.splitlines() if '"intake.accepted"' in line]
    assert accepted["request_id"] == request_id and accepted["service_code"] == "POTHOLE"
    assert "resident@example.org" not in log


def test_an_exception_crosses_from_the_child_as_itself_or_as_a_runtime_error() -> None:
    conflict = pickle.loads(pickle.dumps(_portable(IdempotencyConflict("order-7"))))
    assert isinstance(conflict, IdempotencyConflict) and conflict.header_key == "order-7"

    class Local(Exception):  # not importable by name: cannot be pickled
        pass

    crossed = pickle.loads(pickle.dumps(_portable(Local("driver said no"))))
    assert isinstance(crossed, RuntimeError) and str(crossed) == "Local: driver said no"


def test_the_intake_process_option_is_for_sqlite_only(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVICBUS_CONFIG", SANDBOX)
    monkeypatch.setenv("CIVICBUS_DATABASE_URL", postgres_url)
    result = CliRunner().invoke(cli, ["api", "--intake-process"])
    assert result.exit_code == 2
    assert "--intake-process is for a SQLite store only" in result.stderr
