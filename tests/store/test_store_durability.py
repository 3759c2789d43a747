"""A commit on the embedded store survives `kill -9` of the process right after it returns."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from bus.store import Store

WRITER = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    from bus.store import Store
    from schemas.model import Location, ServiceRequest

    store = Store.open(sys.argv[1])
    now = datetime.now(UTC)
    for i in range(20):
        with store.transaction() as tx:
            tx.add_request(ServiceRequest(id=f"r{i}", jurisdiction="j", service_code="s",
                service_name="n", location=Location(), requested_at=now, updated_at=now))
            tx.audit(actor="test", action="accepted", request_id=f"r{i}")
        print(f"committed r{i}", flush=True)
    time.sleep(60)
    """
)


def test_committed_requests_survive_kill_minus_9(sqlite_url: str) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, sqlite_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        committed: list[str] = []
        while len(committed) < 20:  # then kill at once, right after the last commit
            line = writer.stdout.readline()
            assert line, "the writer died"
            if line.startswith("committed"):
                committed.append(line.strip())
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    assert committed[-1] == "committed r19"

    store = Store.open(sqlite_url)
    assert all(store.get_request(f"r{i}") is not None for i in range(20))
    assert store.verify_audit().entries == 20
    store.close()
