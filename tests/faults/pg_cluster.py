"""A private PostgreSQL cluster that fault tests may stop and start at will.

The machine's PostgreSQL (127.0.0.1:5432) is never touched: the private cluster is made with
`initdb` from the installed server (/usr/lib/postgresql/<version>/bin, Debian's layout) in a
temporary directory, listens on a free port on 127.0.0.1 and keeps its unix socket in that
directory, with trust authentication. PostgreSQL refuses to run as root, so when the tests run
as root (CI does) `initdb` and `pg_ctl` run as the `postgres` system user, who owns the
directory.

    cluster.stop("fast")       # sessions are ended, the port refuses connections
    cluster.stop("immediate")  # as if the server crashed: crash recovery on the next start
    cluster.start()            # back on the same port, committed data intact
    cluster.freeze()           # every process of it stopped (SIGSTOP): nothing answers
    cluster.thaw()             # SIGCONT: it goes on where it was
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.e2e.city import free_port
from tests.processes import children

#: Where Debian installs each PostgreSQL server version's programs.
_PG_LIB = Path("/usr/lib/postgresql")
#: The system user PostgreSQL runs as when we are root.
_PG_USER = "postgres"


def server_bin() -> Path:
    """The bin directory of the newest installed PostgreSQL server (the one with initdb)."""
    found = sorted(
        (path.parent for path in _PG_LIB.glob("*/bin/initdb")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not found:
        pytest.fail(
            f"no PostgreSQL server in {_PG_LIB}/*/bin: the fault tests need initdb and pg_ctl "
            "(`deploy/local/ensure-services.sh postgresql` installs them)"
        )
    return found[-1]


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster of our own, controlled with pg_ctl."""

    base: Path
    bin: Path = field(default_factory=server_bin)
    port: int = field(default_factory=free_port)
    #: The processes `freeze` stopped, postmaster first.
    frozen: list[int] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of a database in the cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str, timeout: float = 60) -> str:
        """Run one of the server's programs, as `postgres` when we are root."""
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", _PG_USER, "--", *command]
        result = subprocess.run(
            command,
            cwd=self.base,  # a directory the postgres user may enter
            env={**os.environ, "LC_ALL": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr or result.stdout}\n{self.log_tail()}"
            )
        return result.stdout

    def init(self) -> None:
        """Create the cluster: trust authentication, loopback only, socket in `base`."""
        if os.geteuid() == 0:
            user = pwd.getpwnam(_PG_USER)
            os.chown(self.base, user.pw_uid, user.pw_gid)
        self.base.chmod(0o700)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C.UTF-8",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            # Durable against a crash of the server (what `stop("immediate")` plays), not of
            # the machine: commits still reach the OS before they are acknowledged.
            "fsync": "off",
            "max_connections": "50",
            "shared_buffers": "16MB",
        }
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# civicbus fault tests\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            "pg_ctl", "start", "--pgdata", str(self.data), "--log", str(self.log), "--wait",
            "--timeout", "60", timeout=90,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends every session and shuts down cleanly, `immediate`
        kills it as a crash would."""
        self._run("pg_ctl", "stop", "--pgdata", str(self.data), "--mode", mode, "--wait")

    def freeze(self) -> None:
        """Stop every process of the cluster with SIGSTOP, as a paused VM: connections stay
        open and the kernel still acknowledges what clients send, but nothing answers, and new
        connections wait in the listen backlog."""
        postmaster = self._postmaster_pid()
        if postmaster is None:
            raise RuntimeError("the cluster is not running: nothing to freeze")
        os.kill(postmaster, signal.SIGSTOP)  # first: it starts no new backend meanwhile
        self.frozen = [postmaster]
        for child in children(postmaster):
            os.kill(child, signal.SIGSTOP)
            self.frozen.append(child)

    def thaw(self) -> None:
        """Let the processes `freeze` stopped go on (SIGCONT); nothing if none are."""
        for pid in reversed(self.frozen):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def is_running(self) -> bool:
        return self._postmaster_pid() is not None

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def create_database(self, name: str) -> str:
        """Create a database; returns its SQLAlchemy URL."""
        dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server however it can be stopped, and remove its directory."""
        self.thaw()
        if self.is_running():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pid = self._postmaster_pid()
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)  # its backends exit when it is gone
                    time.sleep(1)
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(["--- PostgreSQL log:", *text.splitlines()[-lines:]])


def make_cluster() -> PostgresCluster:
    """A new, started cluster in a fresh directory under the system's temp dir (pytest's own
    temp dirs are private to root, out of reach of the postgres user)."""
    cluster = PostgresCluster(base=Path(tempfile.mkdtemp(prefix="civicbus-pg-")))
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
