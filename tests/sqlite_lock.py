"""Another process's writer, in miniature, for tests of a store that cannot write for a while."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


def hold_write_lock(sqlite_url: str, until: threading.Event) -> threading.Thread:
    """SQLite's write lock on the store's file, held until `until` is set (at most 30 s)."""
    path = Path(sqlite_url.removeprefix("sqlite:///").split("?", 1)[0])
    locked = threading.Event()

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        locked.set()
        until.wait(30)
        db.execute("ROLLBACK")
        db.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(5)
    return thread
