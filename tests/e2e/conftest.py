"""Fixtures of the end-to-end tests: the sandbox city running as real processes, its API client,
and a back-office webhook subscriber."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from tests.e2e.city import Process, SandboxCity, answers, city_files, queue_consumers
from tests.e2e.webhook_receiver import WebhookReceiver

#: The environment variable the webhook subscription names for its signing secret.
WEBHOOK_SECRET_ENV = "E2E_WEBHOOK_SECRET"
STARTUP_TIMEOUT = 120.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failing end-to-end test shows what the city's processes last logged."""
    outcome = yield
    report = outcome.get_result()
    city = getattr(item, "funcargs", {}).get("city")
    if report.failed and isinstance(city, SandboxCity):
        report.sections.append(("sandbox city processes", city.diagnose()))


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def webhook_secret() -> str:
    return secrets.token_hex(16)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def city(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    amqp_vhost_factory: Callable[[], str],
    postgres_database_factory: Callable[[], str],
    webhook_secret: str,
) -> Iterator[SandboxCity]:
    """The sandbox city: simulators and `civicbus run --no-sandbox`, up and consuming; on the
    embedded SQLite store (one machine) and on PostgreSQL (the shared store)."""
    workdir = tmp_path_factory.mktemp("sandbox-city")
    logs = workdir / "logs"
    logs.mkdir()
    database_url = (
        postgres_database_factory()
        if request.param == "postgresql"
        else f"sqlite:///{workdir}/civicbus.db"
    )
    amqp_url = amqp_vhost_factory()
    files = city_files(workdir, database_url=database_url, amqp_url=amqp_url)
    env = {**files.env, WEBHOOK_SECRET_ENV: webhook_secret}
    ports = files.ports
    city = SandboxCity(
        workdir=workdir,
        env=env,
        config=files.config,
        api_url=files.api_url,
        control_urls={
            "sap": f"http://127.0.0.1:{ports['sap']}",
            "permits": f"http://127.0.0.1:{ports['permits']}",
            "parks": f"http://127.0.0.1:{ports['parks']}",
            "mailbox": f"http://127.0.0.1:{ports['mailbox'] + 1}",
        },
        state_dir=files.state_dir,
        workorders_url=files.workorders_url,
    )
    sandbox_args = files.sandbox_args()
    try:
        city.processes.append(
            Process.start("sandbox", sandbox_args, env=env, cwd=workdir, logs=logs)
        )
        city.processes.append(
            Process.start(
                "run",
                ["run", "--no-sandbox", "--port", str(files.api_port)],
                env=env,
                cwd=workdir,
                logs=logs,
            )
        )
        _wait_until_up(city, amqp_url)
    except BaseException:
        _stop(city, raising=False)
        raise
    yield city
    _stop(city, raising=True)


def _wait_until_up(city: SandboxCity, amqp_url: str) -> None:
    """Every simulator answers, /healthz says ok, and every instance's queue has a consumer."""
    for name, url in city.control_urls.items():
        city.wait_until(
            functools.partial(answers, f"{url}/_sandbox/"),
            timeout=STARTUP_TIMEOUT,
            what=f"the {name} simulator's control endpoint",
        )
    city.wait_until(
        functools.partial(answers, f"{city.api_url}/healthz"),
        timeout=STARTUP_TIMEOUT,
        what="the API's /healthz",
    )
    queues = [f"civicbus.work.{name}" for name in city.config["instances"]]
    city.wait_until(
        lambda: all(n >= 1 for n in queue_consumers(amqp_url, queues).values()),
        timeout=STARTUP_TIMEOUT,
        what=f"a consumer on each of {', '.join(queues)}",
    )


def _stop(city: SandboxCity, *, raising: bool) -> None:
    """Stop `run` first (its workers finish their messages), then the simulators."""
    before = city.diagnose()
    problems = [p for p in (proc.stop() for proc in reversed(city.processes)) if p]
    problems += [p for proc in city.processes for p in proc.supervisor_problems()]
    if problems and raising:
        pytest.fail(
            "the sandbox city did not stop cleanly: "
            + "; ".join(problems)
            + f"\n{city.diagnose() or before}",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def api_key(city: SandboxCity) -> str:
    """The key of an API client bound to no jurisdiction (it may post to both)."""
    done = city.cli("clients", "add", "e2e-app")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def desk_key(city: SandboxCity) -> str:
    """The key of a back-office desk bound to no jurisdiction, allowed to post status updates."""
    done = city.cli("clients", "add", "e2e-desk", "--updates")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def subscription(city: SandboxCity, webhook: WebhookReceiver) -> str:
    """A back-office system subscribed to every request event, before anything is posted."""
    done = city.cli(
        "subscriptions",
        "add",
        webhook.url,
        "--events",
        "request.*",
        "--secret-env",
        WEBHOOK_SECRET_ENV,
    )
    return done.stdout.strip()
