"""The parts run alone, several copies each, against one PostgreSQL and one RabbitMQ (issue 3,
"All in one"): two APIs, two relays and two workers of one adapter instance, started at once on
an empty database. Requests posted to both APIs while the active relay and one worker are
killed (`kill -9`) each reach the back-end exactly once: the standby relay takes the lease over,
the surviving worker takes the killed one's unacknowledged messages, and the worker's `find`
keeps a redelivered message from creating the work twice.

Real processes on loopback, the parks back-end simulated by `civicbus sandbox`.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from bus.store import Store
from tests.e2e.city import (
    Process,
    answers,
    city_files,
    created_id,
    free_port,
    held_references,
    post_report,
    queue_consumers,
    run_cli,
    set_fault,
    stop_all,
    wait_until,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.timeout(240)]

#: The instance PARKS_SERVICE is routed to.
INSTANCE = "parks"
REQUESTS = 40
#: Short, so that the standby relay takes over within the test's waits.
LEASE_TTL = 2.0
STARTUP_TIMEOUT = 120.0
DELIVERY_TIMEOUT = 90.0


@dataclass
class ScaledCity:
    workdir: Path
    env: dict[str, str]
    api_urls: list[str]
    parks_url: str
    processes: dict[str, Process]

    def diagnose(self) -> str:
        return "\n".join(p.tail(30) for p in self.processes.values())

    def wait_until(self, check: Callable[[], object], *, timeout: float, what: str) -> object:
        return wait_until(check, timeout=timeout, what=what, explain=self.diagnose)


@pytest.fixture(scope="module")
def scaled(
    tmp_path_factory: pytest.TempPathFactory,
    amqp_vhost_factory: Callable[[], str],
    postgres_database_factory: Callable[[], str],
) -> Iterator[ScaledCity]:
    workdir = tmp_path_factory.mktemp("scaled-city")
    logs = workdir / "logs"
    logs.mkdir()
    files = city_files(
        workdir, database_url=postgres_database_factory(), amqp_url=amqp_vhost_factory()
    )
    env, api_ports = files.env, [files.api_port, free_port()]
    sandbox_args = files.sandbox_args()
    # Every part at once on an empty database: they race to create the schema, as the copies
    # of a deployment started together do.
    commands = {
        "sandbox": sandbox_args,
        "api-a": ["api", "--port", str(api_ports[0])],
        "api-b": ["api", "--port", str(api_ports[1])],
        "relay-a": ["relay", "--lease-ttl", str(LEASE_TTL)],
        "relay-b": ["relay", "--lease-ttl", str(LEASE_TTL)],
        "worker-a": ["worker", INSTANCE],
        "worker-b": ["worker", INSTANCE],
    }
    city = ScaledCity(
        workdir=workdir,
        env=env,
        api_urls=[f"http://127.0.0.1:{port}" for port in api_ports],
        parks_url=f"http://127.0.0.1:{files.ports['parks']}",
        processes={},
    )
    try:
        for name, args in commands.items():
            city.processes[name] = Process.start(name, args, env=env, cwd=workdir, logs=logs)
        for url in [*city.api_urls, city.parks_url]:
            probe = f"{url}/healthz" if url in city.api_urls else f"{url}/_sandbox/"
            city.wait_until(functools.partial(answers, probe), timeout=STARTUP_TIMEOUT, what=probe)
        work_queue = f"civicbus.work.{INSTANCE}"
        city.wait_until(
            lambda: queue_consumers(env["CIVICBUS_AMQP_URL"], [work_queue])[work_queue] == 2,
            timeout=STARTUP_TIMEOUT,
            what=f"both workers consuming {work_queue}",
        )
    except BaseException:
        stop_all(city.processes)
        raise
    yield city
    problems = stop_all(city.processes)
    assert not problems, "; ".join(problems) + "\n" + city.diagnose()


def _relay_lease_holder(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        holder = conn.execute(sa.text("SELECT holder FROM leases WHERE name = 'relay'")).scalar()
    return str(holder) if holder is not None else None


def _kill(process: Process) -> None:
    os.kill(process.popen.pid, signal.SIGKILL)
    process.popen.wait(timeout=10)


def _post(city: ScaledCity, key: str, n: int) -> str:
    """Report `n`, to the two APIs in turn."""
    return created_id(post_report(f"{city.api_urls[n % 2]}/open311/v2", key, n))


def test_copies_of_every_part_deliver_each_request_once_while_a_relay_and_a_worker_die(
    scaled: ScaledCity,
) -> None:
    key = run_cli(["clients", "add", "scaled-app"], env=scaled.env, cwd=scaled.workdir)
    api_key = key.stdout.strip().splitlines()[-1]
    store = Store.open(scaled.env["CIVICBUS_DATABASE_URL"])
    engine = sa.create_engine(scaled.env["CIVICBUS_DATABASE_URL"])
    try:
        holder = scaled.wait_until(
            lambda: _relay_lease_holder(engine), timeout=STARTUP_TIMEOUT, what="a relay's lease"
        )
        relays = {p.popen.pid: name for name, p in scaled.processes.items() if "relay" in name}
        active = relays[int(str(holder).split(":")[1])]
        standby = next(name for name in relays.values() if name != active)

        # A slow back-end, so that the workers are inside a call when one of them dies.
        set_fault(scaled.parks_url, {"mode": "slow", "delay": 0.5})
        with ThreadPoolExecutor(max_workers=4) as pool:
            first = list(pool.map(functools.partial(_post, scaled, api_key), range(REQUESTS // 2)))
            scaled.wait_until(
                lambda: len(held_references(scaled.parks_url)) >= 2,
                timeout=DELIVERY_TIMEOUT,
                what="work under way",
            )
            # Mid-stream: the active relay and one worker die without a chance to clean up.
            _kill(scaled.processes[active])
            _kill(scaled.processes["worker-a"])
            set_fault(scaled.parks_url, {"mode": "none"})
            rest = range(REQUESTS // 2, REQUESTS)
            second = list(pool.map(functools.partial(_post, scaled, api_key), rest))
        posted = first + second
        assert len(set(posted)) == REQUESTS

        def delivered() -> bool:
            return all(
                any(e.action == "submitted" for e in store.audit_trail(request_id))
                for request_id in posted
            )

        scaled.wait_until(
            delivered, timeout=DELIVERY_TIMEOUT, what=f"all {REQUESTS} requests submitted"
        )
        references = held_references(scaled.parks_url)
        assert sorted(references) == sorted(posted), "the parks back-end holds each request once"
        for request_id in posted:
            submitted = [
                e.outcome for e in store.audit_trail(request_id) if e.action == "submitted"
            ]
            # "found": the killed worker had created it; the redelivery found it there.
            assert submitted in (["ok"], ["found"]), (request_id, submitted)
        assert not store.pending_outbox(), "every outbox row was relayed"
        new_holder = _relay_lease_holder(engine)
        assert new_holder is not None
        assert relays[int(new_holder.split(":")[1])] == standby
    finally:
        store.close()
        engine.dispose()
