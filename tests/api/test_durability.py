"""An answered request survives `kill -9` of the server right after the answer (issue 2, Speed).

Runs the real `civicbus api` command as a subprocess on a SQLite store in a temporary folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from bus.store import Store
from tests.api.conftest import SANDBOX, SPRINGFIELD, free_socket


@contextmanager
def civicbus_api(
    env: dict[str, str], cwd: Path, options: Sequence[str] = ()
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # the subprocess binds it next; a tiny window another test could take it in
    command = [sys.executable, "-m", "bus", "api", "--host", "127.0.0.1", "--port", str(port)]
    command += options
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"civicbus api did not start: {process.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def api_environment(tmp_path: Path) -> tuple[dict[str, str], str]:
    """The environment of a `civicbus api` on the sandbox city and a new SQLite store in
    `tmp_path` (JSON log lines), and the key of a client of that store."""
    database_url = f"sqlite:///{tmp_path}/civicbus.db"
    store = Store.open(database_url)
    _, key = store.add_client("app")
    store.close()
    env = {
        **os.environ,
        "CIVICBUS_CONFIG": str(Path(SANDBOX).resolve()),
        "CIVICBUS_DATABASE_URL": database_url,
        "CIVICBUS_MEDIA_DIR": str(tmp_path / "media"),
        "CIVICBUS_LOG_FORMAT": "json",
        "PYTHONPATH": str(Path.cwd()),
    }
    return env, key


def test_accepted_request_survives_kill_9_right_after_the_answer(tmp_path: Path) -> None:
    env, key = api_environment(tmp_path)
    database_url = env["CIVICBUS_DATABASE_URL"]
    form = {
        "api_key": key,
        "jurisdiction_id": SPRINGFIELD,
        "service_code": "POTHOLE",
        "lat": "37.76",
        "long": "-122.41",
        "attribute[LANE]": "shoulder",
    }
    with civicbus_api(env, tmp_path) as (process, url):
        answer = httpx.post(f"{url}/open311/v2/requests.json", data=form, timeout=10)
        os.kill(process.pid, signal.SIGKILL)  # no shutdown, no flush: only what is committed
        assert answer.status_code == 200, answer.text
        request_id = answer.json()[0]["service_request_id"]
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL

    with civicbus_api(env, tmp_path) as (_, url):
        found = httpx.get(
            f"{url}/open311/v2/requests/{request_id}.json",
            params={"jurisdiction_id": SPRINGFIELD},
            timeout=10,
        )
        assert found.status_code == 200
        assert found.json()[0]["service_request_id"] == request_id

    store = Store.open(database_url)
    try:
        events = [r for r in store.pending_outbox() if r.envelope.subject == request_id]
        assert [e.envelope.type.value for e in events] == ["civicbus.request.created"]
    finally:
        store.close()
