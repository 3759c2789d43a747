"""The store freezes under a running bus: every process of its PostgreSQL server is stopped
(SIGSTOP, as a paused VM) for a few seconds while requests are on their way to the back-end and
residents keep posting, then goes on (SIGCONT).

Unlike a stopped server, a frozen one keeps its connections open and its kernel acknowledges
what is sent to it: only the store's own bound on each round trip (`?query_timeout=`, short
here) notices. What must hold: meanwhile the API answers 503 with Retry-After, never a 500 and
never after a hang; the relay, the worker and the poller meet the freeze and go on by
themselves after it, without a restart; each accepted request reaches the back-end exactly
once; the audit chain is whole.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.city import PARKS_SERVICE, answers, created_id, held_references, run_cli, set_fault
from tests.faults.pg_cluster import PostgresCluster
from tests.faults.store_bus import (
    Bus,
    Residents,
    assert_unavailable,
    post,
    running_bus,
    timed,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.timeout(180)]

#: The store's bound on one round trip, in seconds (15 s by default).
QUERY_TIMEOUT = 2
#: The longest an answer during the freeze may take: a pooled connection's ping and a new
#: connection's attempt both time out, perhaps behind another create's; well above that.
PROMPT = 12.0
BEFORE_FREEZE = 10
DURING_FREEZE = 2
DELIVERY_TIMEOUT = 60.0


@pytest.fixture
def bus(
    tmp_path: Path, amqp_vhost_factory: Callable[[], str], pg_cluster_url: str
) -> Iterator[Bus]:
    database_url = f"{pg_cluster_url}?query_timeout={QUERY_TIMEOUT}"
    with running_bus(tmp_path, amqp_url=amqp_vhost_factory(), database_url=database_url) as bus:
        yield bus


def test_a_store_frozen_under_the_running_bus_answers_503_and_the_bus_carries_on(
    bus: Bus, pg_cluster: PostgresCluster
) -> None:
    done = run_cli(["clients", "add", "freeze-app"], env=bus.env, cwd=bus.workdir)
    api_key = done.stdout.strip().splitlines()[-1]
    pids = {name: p.popen.pid for name, p in bus.processes.items()}
    _, jurisdiction = PARKS_SERVICE
    # A slow back-end: the worker has receipts to record when the store freezes.
    set_fault(bus.parks_url, {"mode": "slow", "delay": 0.2})
    accepted = [created_id(post(bus, api_key, n)) for n in range(BEFORE_FREEZE)]
    bus.wait_until(
        lambda: set(accepted) & set(held_references(bus.parks_url)),
        timeout=DELIVERY_TIMEOUT,
        what="work under way",
    )
    met = {
        "relay": "relay.store_failed",
        "worker": "worker.store_unavailable",
        "poller": "poller.round_failed",
    }
    before = {part: bus.count(part, event) for part, event in met.items()}
    residents = Residents(bus, api_key)
    keys = [f"frozen-{n}" for n in range(DURING_FREEZE)]
    slowest = 0.0
    with residents.posting():
        pg_cluster.freeze()
        try:
            for n, key in enumerate(keys):
                response, took = timed(functools.partial(post, bus, api_key, 100 + n, key))
                assert_unavailable(response, "POST during the freeze")
                slowest = max(slowest, took)
            url = f"{bus.open311}/requests/{accepted[0]}.json?jurisdiction_id={jurisdiction}"
            response, took = timed(functools.partial(httpx.get, url, timeout=30))
            assert_unavailable(response, "GET during the freeze")
            slowest = max(slowest, took)
            for part, event in met.items():
                bus.wait_until(
                    lambda part=part, event=event: bus.count(part, event) > before[part],
                    timeout=PROMPT + 5,
                    what=f"the {part} to meet the freeze",
                )
        finally:
            pg_cluster.thaw()
        thawed_at = time.monotonic()
        set_fault(bus.parks_url, {"mode": "none"})
        bus.wait_until(
            functools.partial(answers, f"{bus.api_url}/healthz"),
            timeout=10,
            what="the API to answer again",
        )
    back_after = time.monotonic() - thawed_at

    # Each resident's create was taken or refused in time, never failed otherwise.
    for key, status, request_id, took in residents.answers:
        assert status in (201, 503), (key, status, request_id)
        if status == 201:
            assert request_id is not None
            accepted.append(request_id)
        else:
            slowest = max(slowest, took)
            keys.append(key)
    print(
        f"{len(residents.answers)} residents' creates, {len(keys) - DURING_FREEZE} refused; "
        f"slowest 503: {slowest:.1f}s; API back {back_after:.1f}s after the thaw"
    )
    assert slowest < PROMPT, f"an answer during the freeze took {slowest:.1f}s"
    # A refused create sent again with its key is created once. A 200 is an honest answer too:
    # a create whose COMMIT reached the server just before it froze is committed as it thaws.
    for key in keys:
        n = int(key.rsplit("-", 1)[1]) + (100 if key.startswith("frozen") else 0)
        again = post(bus, api_key, n, key)
        assert again.status_code in (200, 201), again.text
        accepted.append(again.json()[0]["service_request_id"])

    assert len(set(accepted)) == len(accepted)
    bus.wait_until(
        lambda: set(held_references(bus.parks_url)) >= set(accepted),
        timeout=DELIVERY_TIMEOUT,
        what="every request in the back-end",
    )
    assert sorted(held_references(bus.parks_url)) == sorted(accepted), "each one once"
    engine = sa.create_engine(bus.env["CIVICBUS_DATABASE_URL"].split("?")[0])
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT id FROM requests")).scalars())
        assert stored == set(accepted), "nothing but the accepted requests is stored"
    finally:
        engine.dispose()
    run_cli(["audit", "verify"], env=bus.env, cwd=bus.workdir)
    # Nobody restarted anything: the same processes carried on.
    for name, process in bus.processes.items():
        assert process.popen.poll() is None, f"{name} exited\n{bus.diagnose()}"
        assert process.popen.pid == pids[name]
