"""SQLite's WAL checkpoints on a thread of their own, rather than inside a writer's commit.

In WAL mode, SQLite copies the log back into the database file (a checkpoint) in the commit
that finds the log past `wal_autocheckpoint` pages (1,000 by default); that commit then waits
for the copy and two fsyncs. For the API, whose group commit runs on its event loop, that was
a fifth of the time of writing a batch of creates (2026-12-07: 1,077 against 846 us a batch of
five). Here a thread of the store runs a PASSIVE checkpoint after every COMMITS_PER_CHECKPOINT
commits, on a connection of its own; SQLite lets go of the interpreter lock while it copies and
syncs, so the event loop goes on meanwhile.

The store's connections still checkpoint themselves past FALLBACK_PAGES: the log starts again
from its beginning only when a writer begins after a checkpoint copied all of it, a moment a
thread may keep missing under a steady stream of commits. The fallback bounds the log then,
and finds little left to copy. A PASSIVE checkpoint never blocks a writer or a reader.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: Commits between two checkpoints (a commit of the API's group commit writes ~16-34 pages).
COMMITS_PER_CHECKPOINT = 32
#: The log's length (pages) past which a committing connection checkpoints itself.
FALLBACK_PAGES = 4000


class Checkpointer:
    """Checkpoints the SQLite database at `path` every `every` commits, on its own thread
    (started by the first checkpoint due, stopped by `close`)."""

    def __init__(self, path: str, every: int = COMMITS_PER_CHECKPOINT) -> None:
        self._path = path
        self._every = every
        self._commits = 0
        self._due = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def committed(self, *_event_args: Any) -> None:
        """Count a commit (an engine `commit` event); every `every` commits, wake the thread.
        Commits on several threads may now and then be counted as one: that only delays a
        checkpoint by a commit."""
        self._commits += 1
        if self._commits >= self._every:
            self._commits = 0
            self._start()
            self._due.set()

    def close(self) -> None:
        """Stop the thread after the checkpoint in hand, if any."""
        with self._start_lock:
            self._stopping = True
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(
                    target=self._run, name="civicbus-wal-checkpoint", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        try:
            connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            # The connections' own checkpoints (FALLBACK_PAGES) still bound the log.
            log.warning("store.checkpointer_unavailable", error=str(error))
            return
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as error:  # e.g. the disk is full: tried again next time
                    log.warning("store.checkpoint_failed", error=str(error))
        finally:
            connection.close()
