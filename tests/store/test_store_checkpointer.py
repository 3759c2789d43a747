"""SQLite's WAL checkpoints run on the store's own thread every so many commits, not inside a
commit; the connections checkpoint themselves only past a fallback length of the log."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from bus.store import Store
from bus.store._checkpointer import COMMITS_PER_CHECKPOINT, FALLBACK_PAGES, Checkpointer
from tests.store.store_factories import make_request


def _rows_in_database_file(path: Path, table: str) -> int:
    """Rows of `table` copied into the database file itself: read as immutable, SQLite ignores
    the write-ahead log (0 while not even the table is there)."""
    connection = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        count: int = connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return count
    except sqlite3.DatabaseError:
        # No table yet (OperationalError), or pages read while a checkpoint was copying them
        # ("malformed": an immutable read takes no lock, so it can see the copy half done).
        return 0
    finally:
        connection.close()


def _eventually(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "civicbus-wal-checkpoint"]


def test_a_checkpoint_runs_on_its_thread_after_every_n_commits(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")  # only the checkpointer copies the log
    writer.execute("CREATE TABLE t (x)")
    writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
    checkpointer = Checkpointer(str(path), every=3)
    try:
        for x in (1, 2):
            writer.execute("INSERT INTO t VALUES (?)", (x,))
            checkpointer.committed()
        assert _rows_in_database_file(path, "t") == 0  # two commits: still in the log only

        writer.execute("INSERT INTO t VALUES (3)")
        checkpointer.committed()

        assert _eventually(lambda: _rows_in_database_file(path, "t") == 3)
    finally:
        checkpointer.close()
        writer.close()
    assert checkpointer._thread is not None and not checkpointer._thread.is_alive()


def test_the_store_leaves_checkpoints_to_its_thread_and_stops_it_on_close(
    tmp_path: Path,
) -> None:
    path = tmp_path / "civicbus.db"
    earlier = set(_checkpoint_threads())  # other tests' stores may still have theirs
    store = Store.open(f"sqlite:///{path}")
    try:
        with store.transaction() as tx:
            connection = tx._session.connection.driver_connection
            fallback = connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert fallback == FALLBACK_PAGES
        for n in range(COMMITS_PER_CHECKPOINT + 1):  # whatever the migrations committed before
            with store.transaction() as tx:
                tx.add_request(make_request(f"req-{n}"))
        threads = [t for t in _checkpoint_threads() if t not in earlier]
        assert len(threads) == 1
        assert _eventually(lambda: _rows_in_database_file(path, "requests") > 0)
    finally:
        store.close()
    assert not any(t.is_alive() for t in threads)


def test_a_store_without_a_database_file_has_no_checkpointer() -> None:
    store = Store.open("sqlite://")
    try:
        with store.transaction() as tx:
            tx.add_request(make_request("req-1"))
        assert store._checkpointer is None
    finally:
        store.close()
