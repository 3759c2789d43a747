"""Private services that fault tests may stop and start at will: a second RabbitMQ node and a
PostgreSQL cluster of their own. The machine's broker and database are never touched.

The private RabbitMQ node has its own node name, free AMQP and distribution ports, its own
config, data, logs, plugins file (none enabled) and Erlang cookie, all in a temporary directory.
It is started once per test session (about 10 s) and each test gets a fresh vhost on it, with
the node's app running.

The private PostgreSQL cluster (tests/faults/pg_cluster.py) is made with `initdb` once per test
session (a few seconds) and each test gets a fresh database on it, with the server running.

Usage in a fault test:

    def test_something(rabbit_node: RabbitNode, rabbit_node_url: str) -> None:
        ...  # connect to rabbit_node_url
        rabbit_node.stop_app()   # the broker goes away: connections are closed, port refuses
        rabbit_node.start_app()  # back, with durable queues and persistent messages intact

    def test_other(pg_cluster: PostgresCluster, pg_cluster_url: str) -> None:
        ...  # CIVICBUS_DATABASE_URL=pg_cluster_url
        pg_cluster.stop("fast")  # the store goes away: sessions ended, port refuses
        pg_cluster.start()       # back on the same port, committed data intact
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from bus.config import Config, load_config
from bus.store import Store
from tests.faults.pg_cluster import PostgresCluster, make_cluster
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]

_RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _tool(name: str) -> str:
    # The packaged wrappers in /usr/sbin switch to the rabbitmq user and read /etc/rabbitmq;
    # the scripts behind them run as the current user with the environment we give them.
    direct = _RABBIT_BIN / name
    if direct.exists():
        return str(direct)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: the fault tests need a RabbitMQ server")
    return found


@dataclass
class RabbitNode:
    """A RabbitMQ node of our own, controlled with rabbitmqctl -n."""

    base: Path
    name: str = field(default_factory=lambda: f"civicbus-fault-{uuid.uuid4().hex[:8]}@localhost")
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    #: rabbitmqctl's own distribution ports: by default every rabbitmqctl on the machine shares
    #: 35672-35682, and concurrent test runs exhaust them.
    ctl_dist_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        base = self.base
        return {
            **os.environ,
            "HOME": str(base),  # where the node and rabbitmqctl find the shared Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_dist_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_dist_port + 10),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        }

    def url(self, vhost: str = "/") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run `rabbitmqctl -n NODE ARGS...` and return its output; raise RuntimeError on error."""
        for _ in range(5):
            result = subprocess.run(
                [_tool("rabbitmqctl"), "-n", self.name, "-q", *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            # The CLI could not open its distribution port (all taken for a moment): again.
            if "nodistribution" not in result.stderr:
                break
            time.sleep(0.5)
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def start(self, timeout: float = 90) -> None:
        """Start the node (Erlang VM and RabbitMQ) and wait until it accepts connections."""
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's NODENAME
        cookie = self.base / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(uuid.uuid4().hex.upper())
            cookie.chmod(0o600)
        self.process = subprocess.Popen(
            [_tool("rabbitmq-server")],
            env=self.env,
            stdout=(self.base / "server.out").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl-C on pytest does not hit it
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ctl("await_startup", "--timeout", "30", timeout=40)
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    out = (self.base / "server.out").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"the private RabbitMQ node did not start:\n{out}") from None
                time.sleep(0.5)

    def stop_app(self) -> None:
        """Stop RabbitMQ on the node (the Erlang VM stays): clients are cut off, port refused."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """Start RabbitMQ again and wait until it serves AMQP."""
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", "60", timeout=70)

    def add_vhost(self) -> str:
        """A fresh vhost on the node (guest has all permissions); returns its AMQP URL."""
        vhost = f"fault-{uuid.uuid4().hex[:10]}"
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return self.url(vhost)

    def stop(self) -> None:
        """Stop the whole node; kill it if it does not go within 30 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.ctl("stop", timeout=40)
                self.process.wait(timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A private RabbitMQ node for this test session; stopped and removed at the end."""
    node = RabbitNode(base=tmp_path_factory.mktemp("rabbit-node"))
    node.start()
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.base, ignore_errors=True)


@pytest.fixture
def rabbit_node_url(rabbit_node: RabbitNode) -> str:
    """A fresh vhost on the private node, its app running (an earlier test may have stopped it)."""
    try:
        rabbit_node.ctl("await_startup", "--timeout", "1", timeout=20)
    except RuntimeError:
        rabbit_node.start_app()
    return rabbit_node.add_vhost()


@pytest.fixture
def config() -> Config:
    """The sandbox city's config."""
    return load_config(REPO / "deploy/sandbox/civicbus.yaml")


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    """A real SQLite store for one test."""
    store = Store.open(sqlite_url)
    yield store
    store.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for this test session; stopped and removed at the end."""
    cluster = make_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_cluster_url(pg_cluster: PostgresCluster) -> str:
    """A fresh database on the private cluster, the server running (an earlier test may have
    stopped or frozen it)."""
    pg_cluster.thaw()
    if not pg_cluster.is_running():
        pg_cluster.start()
    return pg_cluster.create_database(f"civicbus_{uuid.uuid4().hex[:12]}")
