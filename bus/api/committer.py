"""Group commit: concurrent creates are written together, one store transaction per batch.

Each create still gets its own answer only after the transaction holding it committed, so an
answered request is durable; what is shared is the cost of a commit (and, on SQLite, the
single writer). A batch takes whatever is waiting, up to MAX_BATCH, without waiting for more.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field

import structlog

from bus.intake import Accepted, Prepared, write_batch
from bus.store import Store

log = structlog.get_logger(__name__)

MAX_BATCH = 64


@dataclass
class _Item:
    prepared: Prepared
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Accepted]


@dataclass
class GroupCommitter:
    """One writer thread taking prepared requests from a queue and committing them in batches."""

    store: Store
    _queue: queue.SimpleQueue[_Item] = field(default_factory=queue.SimpleQueue)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def submit(self, prepared: Prepared) -> Accepted:
        """Write `prepared` with whatever else is waiting; raises what its write raised."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted] = loop.create_future()
        self._queue.put(_Item(prepared, loop, future))
        return await future

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="civicbus-group-commit", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                outcomes = write_batch(self.store, [item.prepared for item in batch])
            except Exception as exc:  # write_batch reports per item; this is a last guard
                log.exception("intake.batch_failed", size=len(batch))
                outcomes = [exc] * len(batch)
            for item, outcome in zip(batch, outcomes, strict=True):
                item.loop.call_soon_threadsafe(_settle, item.future, outcome)


def _settle(future: asyncio.Future[Accepted], outcome: Accepted | Exception) -> None:
    if future.cancelled():
        return  # the client went away; the request is stored all the same
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
