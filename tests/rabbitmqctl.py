"""rabbitmqctl calls for the tests and the benchmarks, made robust on a busy machine.

rabbitmqctl starts an Erlang node that needs one of a few CLI distribution ports, so calls are
serialised across processes (tests, benchmarks) with one file lock; a call that hangs is killed
with its whole process group (the `su` wrapper would leave its child holding a port), and a call
that failed, e.g. to start distribution, is retried.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

#: Held around every call; shell commands may take it too (`flock LOCK rabbitmqctl ...`).
LOCK = Path(tempfile.gettempdir()) / "civicbus-rabbitmqctl.lock"


def rabbitmqctl(*args: str, attempts: int = 4) -> str:
    """Run one rabbitmqctl command and return its output; RuntimeError after `attempts`."""
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for attempt in range(1, attempts + 1):
            proc = subprocess.Popen(
                ["rabbitmqctl", "-q", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                out, err = proc.communicate(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                err = err or b"timed out"
            if proc.returncode == 0:
                return out.decode().strip()
            if attempt == attempts:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {err.decode()[-500:]}")
            time.sleep(attempt)
    raise AssertionError("unreachable")


def orphaned_vhosts(prefix: str) -> list[str]:
    """The vhosts named `<prefix><pid>-<hex>` whose process is gone: a test session or a
    benchmark killed before it could delete them. Their quorum queues, often full, keep the
    broker busy and slow every later run on the machine; a vhost whose process is alive (a run
    going on beside this one) is not listed."""
    owned = re.compile(rf"{re.escape(prefix)}(\d+)-[0-9a-f]+")
    orphans = []
    for name in rabbitmqctl("list_vhosts", "name").split():
        owner = owned.fullmatch(name)
        if owner is None:
            continue
        try:
            os.kill(int(owner.group(1)), 0)
        except ProcessLookupError:
            orphans.append(name)
        except PermissionError:
            pass  # alive, another user's
    return orphans
