"""The local record of what was sent: SMTP cannot be asked what it delivered, so we remember.

One SQLite file in the adapter's state dir. `find` answers from it; it is what makes `submit`
idempotent for a redelivered message on this machine (or any machine sharing the state dir).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Sent:
    """One message sent for a request."""

    request_id: str
    message_id: str
    sent_at: datetime


class SentLog:
    """Which request got which message, and when; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS sent (request_id TEXT PRIMARY KEY, "
                "message_id TEXT NOT NULL, sent_at TEXT NOT NULL)"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = sqlite3.connect(self.path, timeout=10)
            try:
                with db:
                    yield db
            finally:
                db.close()

    def get(self, request_id: str) -> Sent | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT message_id, sent_at FROM sent WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is None:
            return None
        return Sent(request_id, row[0], datetime.fromisoformat(row[1]))

    def record(self, sent: Sent) -> None:
        """Remember a sent message; a second record for the request keeps the first."""
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO sent VALUES (?, ?, ?)",
                (sent.request_id, sent.message_id, sent.sent_at.isoformat()),
            )
