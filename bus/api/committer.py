"""Group commit: concurrent creates are written together, one store transaction per batch.

Each create still gets its own answer only after the transaction holding it committed, so an
answered request is durable; what is shared is the cost of a transaction and its commit.

On SQLite a batch is written on the event loop itself, as soon as the loop has nothing else
ready: the creates parsed meanwhile form the batch. A SQLite transaction of a few rows takes
well under a millisecond (WAL, no fsync per commit), and handing it to a thread costs more in
GIL switches than it saves (measured: about a third more throughput this way, see
tests/bench/bench_intake.py). The loop never waits long for SQLite's write lock: if another
writer (the relay, a CLI command) holds it past INLINE_LOCK_WAIT_S, the batch moves to the
writer thread, which waits the store's usual timeout. The event loop's batches go through one
connection kept open between them (Store.kept_writer), with that short wait set once: checking
a pooled connection out and in for each batch cost about as much as a small batch's inserts.

Given a `process_url` (what `civicbus api` does on SQLite when it has a second core), batches go
to the intake writer process instead (bus/api/intake_process.py), each as soon as the loop has
nothing else ready; the process writes those that came while it committed the last together.

On PostgreSQL (network round trips) every batch goes through the writer thread, unless the
store is refusing at once (its circuit breaker is open): then the create is refused before it
queues.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from bus.api.intake_process import MAX_BYTES_IN_FLIGHT, IntakeProcess
from bus.intake import Accepted, Outcome, Prepared, answers, write_batch
from bus.store import KeptWriter, Store, StoreUnavailable

log = structlog.get_logger(__name__)

MAX_BATCH = 64
#: Seconds the intake writer process may take to answer a batch before it is taken for hung and
#: killed (its creates answered 503, the next ones written by a new process): far above a write
#: that waits out another writer's lock (the store's busy timeout, 5 s unless set longer).
ANSWER_WAIT_S = 60.0
#: Seconds the event loop may wait for SQLite's write lock before handing the batch over.
INLINE_LOCK_WAIT_S = 0.02


@dataclass
class _Item:
    prepared: Prepared
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Accepted]


@dataclass
class GroupCommitter:
    """Commits prepared requests in batches: on the event loop or in the intake writer process
    (SQLite), or on one writer thread."""

    store: Store
    #: SQLite: the store's URL, for the intake writer process to write the batches (None: they
    #: are written on the event loop).
    process_url: str | None = None
    _pending: list[_Item] = field(default_factory=list)
    _queue: queue.SimpleQueue[list[_Item]] = field(default_factory=queue.SimpleQueue)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: The event loop's connection (SQLite), opened on the first batch written there.
    _inline: KeptWriter | None = None
    _process: IntakeProcess | None = None
    #: The batches sent to the intake writer process and not answered yet, oldest first, with
    #: their size in bytes (and the sum of those) and when they were sent.
    _in_flight: deque[tuple[list[_Item], int, float]] = field(default_factory=deque)
    _bytes_in_flight: int = 0
    #: The timer that checks the oldest batch in flight gets answered (one at a time).
    _watch: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start the intake writer process now, if batches go there (on the event loop)."""
        if self.process_url is not None and self.store.dialect == "sqlite":
            self._writer_process(self.process_url).start()

    def close(self) -> None:
        """Stop the intake writer process, if any, once it wrote the batch in hand."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._process is not None:
            self._process.close()

    async def submit(self, prepared: Prepared) -> Accepted:
        """Write `prepared` with whatever else is waiting; raises what its write raised, or
        StoreUnavailable before queueing while the store refuses at once."""
        if self.store.dialect != "sqlite":
            # While the database does not answer, refused now rather than queued behind a
            # batch that waits out its timeout on the writer thread (see bus.store).
            self.store.check_answering()
        loop = asyncio.get_running_loop()
        item = _Item(prepared, loop, loop.create_future())
        if self.store.dialect != "sqlite":
            self._to_thread([item])
        else:
            self._pending.append(item)
            if len(self._pending) == 1:
                # After the callbacks already ready: creates parsed meanwhile join the batch.
                # (Held back by the intake writer process, they go when it answers.)
                loop.call_soon(self._flush if self.process_url is None else self._send)
        return await item.future

    def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if self._inline is None:
                self._inline = self.store.kept_writer(lock_timeout=INLINE_LOCK_WAIT_S)
            outcomes = _write(self.store, batch, self._inline)
            if all(isinstance(outcome, StoreUnavailable) for outcome in outcomes):
                # Most likely another writer holds the lock: wait for it off the event loop.
                log.info("intake.batch_to_writer_thread", size=len(batch))
                self._to_thread(batch)
                continue
            for item, outcome in zip(batch, outcomes, strict=True):
                _settle(item.future, outcome)

    def _writer_process(self, url: str) -> IntakeProcess:
        if self._process is None:
            self._process = IntakeProcess(url, self._written, self._lost)
        return self._process

    def _send(self) -> None:
        """Hand the pending creates to the intake writer process (which writes the batches
        waiting for it together), unless it has MAX_BYTES_IN_FLIGHT to answer already: they
        go when it answers (`_written`)."""
        assert self.process_url is not None
        while self._pending and (
            not self._in_flight or self._bytes_in_flight < MAX_BYTES_IN_FLIGHT
        ):
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                size = self._writer_process(self.process_url).send(
                    [item.prepared for item in batch]
                )
            except Exception as exc:  # StoreUnavailable; anything else is a bug, logged
                if not isinstance(exc, StoreUnavailable):
                    log.exception("intake.batch_not_sent", size=len(batch))
                for item in batch:
                    _settle(item.future, exc)
                continue
            self._in_flight.append((batch, size, time.monotonic()))
            self._bytes_in_flight += size
            if self._watch is None:
                self._watch = asyncio.get_running_loop().call_later(
                    ANSWER_WAIT_S, self._check_answered
                )

    def _check_answered(self) -> None:
        """Kill an intake writer process that has not answered a batch for ANSWER_WAIT_S (a
        hung process would hold every create from now on); else watch the oldest batch."""
        self._watch = None
        if not self._in_flight or self._process is None:
            return
        waited = time.monotonic() - self._in_flight[0][2]
        if waited >= ANSWER_WAIT_S:
            self._process.kill(f"no answer for {waited:.0f} s")
            return  # its end fails what it held (`_lost`)
        self._watch = asyncio.get_running_loop().call_later(
            ANSWER_WAIT_S - waited, self._check_answered
        )

    def _written(self, outcomes: list[Outcome]) -> None:
        # The outcomes of the oldest batches in flight (the process wrote them together).
        batch: list[_Item] = []
        while len(batch) < len(outcomes):
            sent, size, _ = self._in_flight.popleft()
            batch += sent
            self._bytes_in_flight -= size
        answered = answers([item.prepared for item in batch], outcomes)
        for item, answer in zip(batch, answered, strict=True):
            _settle(item.future, answer)
        self._send()  # those held back

    def _lost(self, exc: StoreUnavailable) -> None:
        # Each batch committed whole or not at all; which, the process did not live to say.
        while self._in_flight:
            sent, _, _ = self._in_flight.popleft()
            for item in sent:
                _settle(item.future, exc)
        self._bytes_in_flight = 0
        # Those held back go to a new process (not from here: this may run inside `_send`).
        asyncio.get_running_loop().call_soon(self._send)

    def _to_thread(self, batch: list[_Item]) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="civicbus-group-commit", daemon=True
                    )
                    self._thread.start()
        self._queue.put(batch)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            while len(batch) < MAX_BATCH:
                try:
                    batch += self._queue.get_nowait()
                except queue.Empty:
                    break
            outcomes = _write(self.store, batch)
            for item, outcome in zip(batch, outcomes, strict=True):
                item.loop.call_soon_threadsafe(_settle, item.future, outcome)


def _write(
    store: Store, batch: Sequence[_Item], writer: KeptWriter | None = None
) -> list[Accepted | Exception]:
    try:
        return write_batch(store, [item.prepared for item in batch], writer=writer)
    except Exception as exc:  # write_batch reports per item; this is a last guard
        log.exception("intake.batch_failed", size=len(batch))
        return [exc] * len(batch)


def _settle(future: asyncio.Future[Accepted], outcome: Accepted | Exception) -> None:
    if future.cancelled():
        return  # the client went away; the request is stored all the same
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
