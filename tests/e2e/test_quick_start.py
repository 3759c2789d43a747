"""The README's quick start is true: `civicbus run` on the default sandbox config starts every part
(simulators included) on the documented ports, serves the README's example, and stops cleanly on
SIGTERM.

It needs the documented ports (8311, 8321-8326), so it is skipped when any is taken (a developer
running the sandbox, or another copy of this test). It runs in a scratch directory that holds the
repository's deploy/ and mappings/, so the default relative paths (config, store, sandbox state,
media) resolve as they do in a checkout, without writing into the checkout; only the broker is
a fresh vhost instead of the default one.
"""

from __future__ import annotations

import functools
import smtplib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.city import (
    REPO,
    SANDBOX_CONFIG,
    Process,
    base_env,
    port_is_free,
    queue_consumers,
    run_cli,
    wait_until,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(180)]

API_PORT = 8311
SIMULATOR_PORTS = {"sap": 8321, "permits": 8322, "parks": 8323, "mailbox": 8325}
DOCUMENTED_PORTS = (API_PORT, *range(8321, 8327))
STARTUP_TIMEOUT = 120.0


def _ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def _smtp_greets(port: int) -> bool:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        return smtp.noop()[0] == 250


def test_civicbus_run_on_the_sandbox_config_starts_every_part_and_stops_on_sigterm(
    tmp_path: Path, amqp_vhost_factory: Callable[[], str]
) -> None:
    busy = [p for p in DOCUMENTED_PORTS if not port_is_free(p)]
    if busy:
        pytest.skip(f"the quick start's ports are in use here: {busy} (is a sandbox running?)")
    for folder in ("deploy", "mappings"):
        (tmp_path / folder).symlink_to(REPO / folder)
    logs = tmp_path / "logs"
    logs.mkdir()
    amqp_url = amqp_vhost_factory()
    # No CIVICBUS_CONFIG, CIVICBUS_DATABASE_URL or CIVICBUS_MEDIA_DIR: the defaults.
    env = {**base_env(), "CIVICBUS_AMQP_URL": amqp_url, "CIVICBUS_LOG_FORMAT": "json"}
    run = Process.start("run", ["run"], env=env, cwd=tmp_path, logs=logs)
    stopped = False
    try:
        explain = run.tail

        def wait(check: Callable[[], object], what: str) -> None:
            wait_until(check, timeout=STARTUP_TIMEOUT, what=what, explain=explain)

        wait(functools.partial(_ok, f"http://127.0.0.1:{API_PORT}/healthz"), "the API")
        for name, port in SIMULATOR_PORTS.items():
            control = port + 1 if name == "mailbox" else port
            wait(
                functools.partial(_ok, f"http://127.0.0.1:{control}/_sandbox/"),
                f"the {name} simulator's control endpoint on {control}",
            )
        wait(functools.partial(_smtp_greets, SIMULATOR_PORTS["mailbox"]), "the mailbox's SMTP")
        instances = sorted(yaml.safe_load(SANDBOX_CONFIG.read_text())["instances"])
        queues = [f"civicbus.work.{name}" for name in instances]
        wait(
            lambda: all(n >= 1 for n in queue_consumers(amqp_url, queues).values()),
            "a worker consuming each instance's queue",
        )

        events = run.events()
        started = {e["part"] for e in events if e.get("event") == "supervisor.part_started"}
        expected = {
            "sandbox",
            "api",
            "relay",
            "poller",
            "webhooks",
            "dead-letters",
            *(f"worker:{name}" for name in instances),
        }
        assert started == expected, run.tail()
        assert not run.supervisor_problems(), run.tail()

        _readme_example(env, tmp_path, explain)

        problem = run.stop()
        stopped = True
        assert problem is None, f"{problem}\n{run.tail()}"
        assert not run.supervisor_problems(), run.tail()
        stopped_parts = {
            e["part"] for e in run.events() if e.get("event") == "supervisor.part_stopped"
        }
        assert stopped_parts == expected, run.tail()
        assert any(e.get("event") == "supervisor.stopped" for e in run.events()), run.tail()
        assert all(port_is_free(p) for p in DOCUMENTED_PORTS), run.tail()
    finally:
        if not stopped:
            run.stop()


def _readme_example(env: dict[str, str], cwd: Path, explain: Callable[[], str]) -> None:
    """The README's "post a request and read it back" and "watch a request travel"."""
    done = run_cli(
        ["clients", "add", "my-app", "--jurisdiction", "springfield.example"], env=env, cwd=cwd
    )
    key = done.stdout.strip().splitlines()[-1]
    base = f"http://127.0.0.1:{API_PORT}/open311/v2"
    created = httpx.post(
        f"{base}/requests.json",
        timeout=10,
        data={
            "api_key": key,
            "jurisdiction_id": "springfield.example",
            "service_code": "POTHOLE",
            "lat": "39.7817",
            "long": "-89.6501",
            "attribute[LANE]": "carriageway",
            "description": "Deep hole by the bus stop",
        },
    )
    assert created.status_code == 200, created.text
    request_id = created.json()[0]["service_request_id"]
    params = {"jurisdiction_id": "springfield.example"}
    read = httpx.get(f"{base}/requests/{request_id}.json", params=params, timeout=10)
    assert read.status_code == 200 and read.json()[0]["service_code"] == "POTHOLE", read.text
    services = httpx.get(f"{base}/services.xml", params=params, timeout=10)
    assert "<service_code>POTHOLE</service_code>" in services.text, services.text

    def submitted() -> bool:
        lines = run_cli(["audit", "trail", request_id], env=env, cwd=cwd).stdout
        return "submitted" in lines

    wait_until(
        submitted, timeout=STARTUP_TIMEOUT, what=f"{request_id} to reach sap-roads", explain=explain
    )

    # "reports a status with POST /servicerequestupdates": with the desk's key, not the app's.
    update = {
        "service_request_id": request_id,
        "update_id": "desk-42",
        "status": "closed",
        "updated_datetime": datetime.now(UTC).isoformat(),
        "description": "Filled this morning",
    }
    refused = httpx.post(
        f"{base}/servicerequestupdates.json", data={**update, "api_key": key}, timeout=10
    )
    assert refused.status_code == 403, refused.text
    assert "civicbus clients allow-updates my-app" in refused.text
    done = run_cli(
        ["clients", "add", "roads-desk", "--jurisdiction", "springfield.example", "--updates"],
        env=env,
        cwd=cwd,
    )
    desk_key = done.stdout.strip().splitlines()[-1]
    closed = httpx.post(
        f"{base}/servicerequestupdates.json", data={**update, "api_key": desk_key}, timeout=10
    )
    assert closed.status_code == 200, closed.text
    read = httpx.get(f"{base}/requests/{request_id}.json", params=params, timeout=10)
    assert read.json()[0]["status"] == "closed", read.text
