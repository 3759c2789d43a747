"""A worker process for the kill -9 and SIGTERM tests: the real consumer, with a back-end kept
in a SQLite file so that it outlives the worker.

    python worker_process.py AMQP_URL STORE_URL BACKEND_FILE MARKER_FILE MODE

MODE `hang`: after writing the work item, touch MARKER_FILE and hang (to be killed).
MODE `slow`: after writing, touch MARKER_FILE and take two more seconds (to get a SIGTERM).
MODE `normal`: just work.

$WORKER_HEARTBEAT: seconds between the worker's liveness reports (default: the usual).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

from adapters import Adapter, Health, Receipt
from bus.config import InstanceConfig, RetryPolicy
from bus.store import Store
from bus.worker import HEARTBEAT_INTERVAL, command_consumer
from schemas.model import ServiceRequest

INSTANCE = "roads"
CONFIG = InstanceConfig(
    kind="sqlite-file", retry=RetryPolicy(immediate_attempts=1, tiers=[0.2], max_attempts=3)
)


class SqliteFileBackend(Adapter):
    kind = "sqlite-file"

    def __init__(self, path: str, marker: str, mode: str) -> None:
        super().__init__(INSTANCE, {})
        self.path, self.marker, self.mode = path, Path(marker), mode
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS work (request_id TEXT PRIMARY KEY, ref TEXT)")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def submit(self, request: ServiceRequest) -> Receipt:
        with self._db() as db:
            count = db.execute("SELECT count(*) FROM work").fetchone()[0]
            ref = f"WO-{count + 1}"
            db.execute("INSERT INTO work VALUES (?, ?)", (request.id, ref))
        if self.mode in ("hang", "slow"):
            self.marker.touch()
            time.sleep(3600 if self.mode == "hang" else 2)
        return Receipt(request_id=request.id, reference=ref)

    def find(self, request_id: str) -> Receipt | None:
        with self._db() as db:
            row = db.execute("SELECT ref FROM work WHERE request_id = ?", (request_id,)).fetchone()
        return Receipt(request_id=request_id, reference=row[0], created=False) if row else None

    def check(self) -> Health:
        return Health(ok=True)


def main() -> None:
    amqp_url, store_url, backend_file, marker, mode = sys.argv[1:6]
    store = Store.open(store_url)
    backend = SqliteFileBackend(backend_file, marker, mode)
    heartbeat = float(os.environ.get("WORKER_HEARTBEAT", HEARTBEAT_INTERVAL))
    consumer = command_consumer(
        amqp_url, store, INSTANCE, CONFIG, backend, heartbeat_interval=heartbeat
    )
    consumer.run(install_signal_handlers=True)
    store.close()


if __name__ == "__main__":
    main()
