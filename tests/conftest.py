"""Fixtures that give tests real services: a fresh PostgreSQL database and a fresh RabbitMQ vhost.

Each is created for the test session (or test) and removed afterwards (vhosts in the background,
once the session is over), so tests never see each other's data and the machine's services are
left as they were. `.ci/run` and `make test` make sure the services are running; a test that
cannot reach them fails rather than skips.

The browser tests (`-m browser`) drive a headless Debian Chromium, which `make test` installs
(`make browser`); without it they are skipped on a developer's machine and fail under CI.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

import pytest
import structlog
from playwright.sync_api import Browser, Page, Request, sync_playwright

from bus.store import Store
from tests.rabbitmqctl import LOCK as CTL_LOCK
from tests.rabbitmqctl import orphaned_vhosts, rabbitmqctl

PG_ADMIN_DSN = os.environ.get("CIVICBUS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_HOST = os.environ.get("CIVICBUS_TEST_AMQP_HOST", "127.0.0.1:5672")
#: Debian's Chromium: Playwright's own browser builds are downloaded from a host that a city's
#: intranet or CI may not reach, and never are here.
CHROMIUM = os.environ.get("CIVICBUS_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo any logging set-up a test made (a CLI command configures logging onto a stream
    that is closed once the command returns)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def postgres_database_factory() -> Iterator[Callable[[], str]]:
    """Make fresh PostgreSQL databases (SQLAlchemy URLs); all are dropped at session end."""
    import psycopg

    created: list[str] = []

    def make() -> str:
        name = f"civicbus_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    yield make
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_database_factory: Callable[[], str]) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres_database_factory()


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """A fresh embedded SQLite store file for one test."""
    return f"sqlite:///{os.fspath(tmp_path)}/civicbus.db"


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """An opened store on a fresh database of each kind: for what must hold on both."""
    opened = Store.open(request.getfixturevalue(f"{request.param}_url"))
    yield opened
    opened.close()


#: The vhosts this session created and has not deleted yet.
_CREATED: list[str] = []
#: A test vhost is named after the session's process: `civicbus-test-<pid>-<random>`.
VHOST_PREFIX = "civicbus-test-"


@pytest.fixture(scope="session")
def amqp_vhost_factory() -> Iterator[Callable[[], str]]:
    """Make fresh RabbitMQ vhosts (AMQP URLs) on the machine's broker; deleted at session end.

    The vhosts left by sessions that were killed (their process is gone) are deleted first, in
    the background: their queues would keep the broker busy for every later run."""
    created = _CREATED
    _delete_vhosts_in_background(orphaned_vhosts(VHOST_PREFIX))

    def make() -> str:
        vhost = f"{VHOST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        created.append(vhost)
        return f"amqp://guest:guest@{AMQP_HOST}/{quote(vhost, safe='')}"

    yield make
    _delete_vhosts_in_background(created)


def _delete_vhosts_in_background(vhosts: list[str]) -> None:
    """Delete the session's vhosts after pytest is done, without making it wait.

    RabbitMQ 3.10 now and then takes its full 10-minute shutdown timeout to stop a deleted
    vhost's message store; that must neither fail nor stall the test run, so the deletions run
    one after another in a detached process.
    """
    if not vhosts:
        return
    # Under the same lock as creations: a deletion running beside a creation can wedge 3.10.
    script = "; ".join(
        f"flock {CTL_LOCK} timeout 660 rabbitmqctl -q delete_vhost '{v}'" for v in vhosts
    )
    subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture
def amqp_url(amqp_vhost_factory: Callable[[], str]) -> Iterator[str]:
    """An AMQP URL to an empty vhost of its own, for one test; deleted right after it.

    Deleted at once rather than at the end of the session: the machine's broker runs with 1,024
    file handles, and a few hundred live quorum queues exhaust them, after which RabbitMQ 3.10
    hangs on the next vhost it is asked to create.
    """
    url = amqp_vhost_factory()
    yield url
    vhost = unquote(url.rsplit("/", 1)[1])
    try:
        rabbitmqctl("delete_vhost", vhost, attempts=2)
    except RuntimeError:
        return  # left for the session's background clean-up
    _CREATED.remove(vhost)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Headless Chromium for one test module (started in well under a second).

    Missing, its tests are skipped on a developer's machine, with the command that installs it,
    and fail under CI (CI=true): a CI run must never pass for having skipped them."""
    if not os.access(CHROMIUM, os.X_OK):
        missing = f"no browser at {CHROMIUM}: `make browser` installs Debian's chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@dataclass
class BrowserPage:
    page: Page
    #: The URLs the page asked for beyond loopback, each refused: what a city's intranet, or
    #: a machine without internet, would not have answered.
    offsite: list[str] = field(default_factory=list)


#: The hosts of this machine's own servers, as a URL's hostname names them.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@pytest.fixture
def browser_page(chromium: Browser) -> Iterator[BrowserPage]:
    """A fresh page (its own context: no cache or cookies from another test) that can load
    nothing from beyond loopback, and lists what it tried to."""
    # Everything beyond loopback goes to a proxy that refuses connections: a bound port that
    # never listens. Not Playwright's `route`: while it intercepts, Playwright answers every
    # CORS preflight itself, allowing any origin, method and header.
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    proxy = {
        "server": f"http://127.0.0.1:{refusing.getsockname()[1]}",
        "bypass": "127.0.0.1,localhost,[::1]",
    }
    context = chromium.new_context(proxy=proxy)
    context.set_default_timeout(10_000)
    opened = BrowserPage(context.new_page())

    def note(request: Request) -> None:
        url = urlsplit(request.url)
        if url.scheme not in ("data", "blob") and url.hostname not in LOOPBACK:
            opened.offsite.append(request.url)

    context.on("request", note)
    yield opened
    context.close()
    refusing.close()
