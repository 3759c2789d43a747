"""The running bus the store fault tests take the store away from, and the residents posting
to it meanwhile.

Real processes (`civicbus api`, `relay`, `worker parks`, `poller parks`, and the parks simulator
of `civicbus sandbox`) on a database of the private PostgreSQL cluster of tests/faults/conftest.py
and a fresh vhost of the machine's RabbitMQ:

    with running_bus(tmp_path, amqp_url=..., database_url=pg_cluster_url) as bus:
        response = post(bus, api_key, 1)
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.e2e.city import (
    Process,
    answers,
    city_files,
    post_report,
    queue_consumers,
    stop_all,
    wait_until,
)

#: The instance PARKS_SERVICE is routed to.
INSTANCE = "parks"
STARTUP_TIMEOUT = 60.0


@dataclass
class Bus:
    """The parts of civicbus on the private cluster, and where they listen."""

    workdir: Path
    env: dict[str, str]
    api_url: str
    parks_url: str
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def open311(self) -> str:
        return f"{self.api_url}/open311/v2"

    def diagnose(self) -> str:
        return "\n".join(p.tail(30) for p in self.processes.values())

    def wait_until(self, check: Callable[[], object], *, timeout: float, what: str) -> object:
        return wait_until(check, timeout=timeout, what=what, explain=self.diagnose)

    def count(self, part: str, event: str) -> int:
        """How many times a part has logged `event`."""
        return sum(e.get("event") == event for e in self.processes[part].events())


@contextmanager
def running_bus(workdir: Path, *, amqp_url: str, database_url: str) -> Iterator[Bus]:
    """Start the sandbox's parks back-end, the API, the relay, the worker and the poller of
    INSTANCE; stop them all afterwards, and fail if one of them did not stop cleanly."""
    logs = workdir / "logs"
    logs.mkdir()
    files = city_files(workdir, database_url=database_url, amqp_url=amqp_url)
    env, ports, api_port, state_dir = files.env, files.ports, files.api_port, files.state_dir
    bus = Bus(
        workdir=workdir,
        env=env,
        api_url=f"http://127.0.0.1:{api_port}",
        parks_url=f"http://127.0.0.1:{ports['parks']}",
    )
    commands = {
        "sandbox": [
            *("sandbox", "--only", "parks", "--state-dir", str(state_dir)),
            *("--port", f"parks={ports['parks']}"),
            # Work moves on by itself: the poller has status changes to record.
            *("--auto-progress", "1"),
        ],
        "api": ["api", "--port", str(api_port)],
        "relay": ["relay", "--poll-interval", "0.05"],
        "worker": ["worker", INSTANCE],
        "poller": ["poller", INSTANCE],
    }
    try:
        # The API creates the schema; the others start on it.
        for name in ("sandbox", "api"):
            bus.processes[name] = Process.start(
                name, commands[name], env=env, cwd=workdir, logs=logs
            )
        for probe in (f"{bus.api_url}/healthz", f"{bus.parks_url}/_sandbox/"):
            bus.wait_until(functools.partial(answers, probe), timeout=STARTUP_TIMEOUT, what=probe)
        for name in ("relay", "worker", "poller"):
            bus.processes[name] = Process.start(
                name, commands[name], env=env, cwd=workdir, logs=logs
            )
        work_queue = f"civicbus.work.{INSTANCE}"
        bus.wait_until(
            lambda: queue_consumers(env["CIVICBUS_AMQP_URL"], [work_queue])[work_queue] == 1,
            timeout=STARTUP_TIMEOUT,
            what=f"the worker consuming {work_queue}",
        )
    except BaseException:
        stop_all(bus.processes)
        raise
    try:
        yield bus
    finally:
        problems = stop_all(bus.processes)
    assert not problems, "; ".join(problems) + "\n" + bus.diagnose()


def post(bus: Bus, key: str, n: int, idempotency_key: str | None = None) -> httpx.Response:
    """POST report number `n` with the API key `key`."""
    return post_report(bus.open311, key, n, idempotency_key)


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    """The answer and how many seconds it took."""
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response, what: str) -> None:
    """503, a Retry-After to honour, and the Open311 error list."""
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
    assert int(response.headers["retry-after"]) > 0, what
    errors = response.json()
    assert isinstance(errors, list) and errors, what
    assert errors[0]["code"] == 503 and errors[0]["description"], what


@dataclass
class Residents:
    """Residents posting one report after another, each with an Idempotency-Key, across the
    outages: some of their creates are in flight as the store goes or comes back."""

    bus: Bus
    api_key: str
    #: (Idempotency-Key, HTTP status, request id or None, seconds the answer took)
    answers: list[tuple[str, int, str | None, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key = f"resident-{n}"
            try:
                response, took = timed(functools.partial(post, self.bus, self.api_key, n, key))
            except httpx.HTTPError as exc:  # a hang or a dropped connection: recorded as 0
                self.answers.append((key, 0, repr(exc), 0.0))
            else:
                created = response.status_code == 200
                request_id = response.json()[0]["service_request_id"] if created else None
                self.answers.append((key, response.status_code, request_id, took))
            n += 1
            self.stop.wait(0.1)

    @contextmanager
    def posting(self) -> Iterator[None]:
        """Post on a thread of their own inside the block."""
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self.stop.set()
            thread.join(timeout=60)
