"""A worker's liveness in the store, so that `civicbus status` can tell a hung worker (its
heartbeat goes on, one message has been in hand too long) and a dead one (its heartbeat stopped,
it never said it stopped) from a healthy one.

Handler threads only note in memory which message they hold (`Slot.begin`, `Slot.end`: one
attribute set per message, nothing written). A thread of its own writes every slot to the
store every few seconds: never the thread that owns the pika connection, so a slow or
unreachable store delays neither the messages nor the broker's heartbeats.

Each report also removes what dead processes left behind, which nobody else would: the reports
of workers silent for FORGET_AFTER, and the broker blocks no publisher has said again for
BLOCK_REPORT_STALE (a relay or worker killed while the broker blocked it).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from bus.broker.connection import Blocked
from bus.liveness import BLOCK_REPORT_STALE, FORGET_AFTER, HEARTBEAT_INTERVAL
from bus.store import Store, WorkerLiveness

log = structlog.get_logger(__name__)

#: How long a stopping worker waits for its last write (removing its reports) to go through.
_LAST_WRITE_WAIT = 5.0


@dataclass(frozen=True)
class _Work:
    message_id: str
    request_id: str | None
    since: float  # time.time()


class Slot:
    """What one handler thread holds now; a slot made outside a `Heartbeat` is never reported."""

    __slots__ = ("recipient", "unacked", "work")

    def __init__(self, recipient: str = "") -> None:
        self.recipient = recipient
        self.work: _Work | None = None
        #: The delivery tags the broker gave this queue's consumer and it has not settled yet:
        #: the messages in hand and those prefetched behind them, which the broker counts as
        #: neither ready nor gone (set by the connection thread, read by the heartbeat).
        self.unacked: Collection[int] = ()

    def begin(self, message_id: str, request_id: str | None = None) -> None:
        """The thread takes up this message now (or a new round of it)."""
        self.work = _Work(message_id, request_id, time.time())

    def end(self) -> None:
        """The message is settled: nothing in hand."""
        self.work = None


class Heartbeat:
    """Reports a worker process's slots to the store from its own thread, while it runs."""

    def __init__(self, store: Store, *, interval: float = HEARTBEAT_INTERVAL) -> None:
        self._store = store
        self._interval = interval
        self._slots: list[Slot] = []
        self._worker_id = uuid.uuid4().hex
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._started_at = datetime.now(UTC)
        self._stopping = threading.Event()
        self._clean = False
        self._thread: threading.Thread | None = None
        self._failing = False
        #: The broker's block of this worker's publishing (see `watch_blocks`), and whether
        #: the store has it from this worker.
        self._blocked: Callable[[], Blocked | None] = lambda: None
        self._block_reported = False

    @property
    def publisher(self) -> str:
        """How the store names this worker as a publisher the broker may block: `host:pid`,
        as `civicbus status` names workers."""
        return f"worker:{self._host}:{self._pid}"

    def watch_blocks(self, blocked: Callable[[], Blocked | None]) -> None:
        """Report, with each heartbeat, the broker's block of this worker's publishing
        (`blocked()`: the episode going on, None while the broker takes its publishes). Only
        a connection that publishes is told of a resource alarm: with no relay publishing,
        `civicbus status` would otherwise not know why this worker's retries stand still."""
        self._blocked = blocked

    def slot(self, recipient: str) -> Slot:
        """A slot for the thread handling `recipient`'s queue (before `start`)."""
        slot = Slot(recipient)
        self._slots.append(slot)
        return slot

    def start(self) -> None:
        """Report now (on the calling thread) and every interval until `stop`."""
        if self._thread is not None or not self._slots:
            return
        self._started_at = datetime.now(UTC)
        self._stopping.clear()
        # The first report before the worker consumes: `status` counts a queue's consumers
        # against the workers reporting for it, and must never see one not yet reported.
        self._write(self._report)
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self, *, clean: bool = True) -> None:
        """Stop reporting; a clean stop removes this worker's reports, any other leaves them
        to go stale, for `civicbus status` to name."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._clean = clean
        self._stopping.set()
        thread.join(timeout=_LAST_WRITE_WAIT)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._write(self._report)
        if self._clean:
            self._write(self._forget)

    def _report(self) -> None:
        now = datetime.now(UTC)
        beats = [self._beat(slot, now) for slot in self._slots]
        block = self._blocked()  # read once: the connection thread may end it meanwhile
        with self._store.transaction() as tx:
            tx.report_workers(beats)
            tx.prune_workers(now - FORGET_AFTER)
            tx.prune_broker_blocks(now - BLOCK_REPORT_STALE)
            if block is not None:
                tx.broker_blocked(self.publisher, self._worker_id, block.since, block.reason)
            elif self._block_reported:
                tx.broker_unblocked(self.publisher, self._worker_id)
        self._block_reported = block is not None

    def _beat(self, slot: Slot, now: datetime) -> WorkerLiveness:
        work = slot.work  # read once: its thread may replace it meanwhile
        return WorkerLiveness(
            worker_id=self._worker_id,
            recipient=slot.recipient,
            host=self._host,
            pid=self._pid,
            started_at=self._started_at,
            heartbeat_at=now,
            message_id=work.message_id if work else None,
            request_id=work.request_id if work else None,
            working_since=datetime.fromtimestamp(work.since, UTC) if work else None,
            held=len(slot.unacked),
        )

    def _forget(self) -> None:
        with self._store.transaction() as tx:
            tx.forget_worker(self._worker_id)
            if self._block_reported:
                tx.broker_unblocked(self.publisher, self._worker_id)

    def _write(self, step: Callable[[], None]) -> None:
        """Run a store step; a failure is logged once per outage, never raised: the worker
        goes on, and its reports go stale until the store answers again."""
        try:
            step()
        except Exception as exc:
            if not self._failing:
                log.warning("worker.heartbeat_failed", error=repr(exc))
            self._failing = True
            return
        if self._failing:
            log.info("worker.heartbeat_back")
        self._failing = False
