"""Parts of civicbus started while the store's PostgreSQL server is frozen (every process of it
stopped with SIGSTOP, as a paused VM: it takes connections and never answers) give up once
connecting has waited out its timeout: exit status 2, the error, and a line of advice naming the
database (never its password) and what to look at, without a traceback; the systemd units
restart them.

Real `civicbus` commands as processes, on a database of the private cluster of
tests/faults/conftest.py; the running bus meeting a freeze is tests/faults/test_store_freeze.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bus.store import shown_url
from tests.e2e.city import Process, city_files, free_port
from tests.faults.pg_cluster import PostgresCluster

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

#: Ignored by the cluster (trust authentication); must never be shown.
PASSWORD = "s3cret-freeze"
#: A bound on each command's life, never reached: connecting gives up after 5 s by default.
EXIT_TIMEOUT = 60.0
COMMANDS = {
    "db-upgrade": ["db", "upgrade"],
    "relay": ["relay"],
    "worker": ["worker", "--subscriptions"],
    "api": ["api", "--port", str(free_port())],
}


def test_parts_started_while_the_store_is_frozen_exit_2_with_advice(
    tmp_path: Path, pg_cluster: PostgresCluster, pg_cluster_url: str
) -> None:
    # The usual time limits (no query_timeout), a password and a query string.
    database_url = (
        make_url(pg_cluster_url).set(password=PASSWORD).render_as_string(hide_password=False)
        + "?application_name=civicbus-freeze-startup"
    )
    shown = shown_url(database_url)  # as every message names the database
    # Nothing listens there: a part that went for the broker first would not exit 2 with advice.
    files = city_files(
        tmp_path, database_url=database_url, amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    )
    logs = tmp_path / "logs"
    logs.mkdir()

    pg_cluster.freeze()
    try:
        # All at once: each waits out its own connect timeout.
        processes = {
            name: Process.start(name, args, env=files.env, cwd=tmp_path, logs=logs)
            for name, args in COMMANDS.items()
        }
        try:
            for name, process in processes.items():
                try:
                    process.popen.wait(timeout=EXIT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"{name} did not give up on the frozen store\n{process.tail()}")
        finally:
            for process in processes.values():
                if process.popen.poll() is None:
                    os.killpg(process.popen.pid, signal.SIGKILL)
                    process.popen.wait(timeout=10)
    finally:
        pg_cluster.thaw()

    for name, process in processes.items():
        err = process.stderr.read_text(errors="replace")
        out = process.stdout.read_text(errors="replace")
        assert process.popen.returncode == 2, f"{name}\n{process.tail()}"
        assert "Traceback" not in err + out, f"{name}\n{process.tail()}"
        assert PASSWORD not in err + out, name
        lines = err.splitlines()
        [error] = [line for line in lines if line.startswith("error: ")]
        assert error.startswith("error: the store is unavailable: "), error
        assert "no answer from the server while connecting" in error, error
        [advice] = [line for line in lines if line.startswith("advice: ")]
        assert advice.startswith(f"advice: {shown} did not answer in time: "), advice
        assert "reachable but not answering" in advice
        assert "paused, frozen, or behind a firewall that drops packets" in advice
        assert "CIVICBUS_DATABASE_URL" in advice
        assert "application_name" not in advice
        assert lines.index(advice) == lines.index(error) + 1, f"{name}: the line after the error"
    print(f"{error}\n{advice}")
