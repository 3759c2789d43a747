"""The intake writer process: the API's group commits to SQLite, written on a second core.

On SQLite a create's own work splits in two: reading, checking and preparing it (the event
loop's) and writing its batch — rows in five tables with their indexes, the audit chain, the
commit — about a third of its CPU. Written on the event loop, that third runs on the API's one
core while the machine's others idle, and the loop parses nothing while a batch commits. The
writer process takes the batches instead: the API sends each turn of its event loop's creates
as soon as they are parsed and goes on parsing; the process writes the batches that came while
it committed the last transaction together, in one transaction. A writer thread would not do:
both halves are Python code under one interpreter lock.

Nothing changes for durability: a create is still answered only after the transaction holding
it committed (the process says so after COMMIT returned). The process is the API's child and
lives as long as the socket between them: it ignores SIGINT and SIGTERM (so that uvicorn,
stopping, can still have its in-flight creates written), finishes the batch in hand and exits
when the API closes the socket or dies. If the process dies (or answers no batch for a minute:
the API then kills it, bus.api.committer.ANSWER_WAIT_S), the creates it held fail with
StoreUnavailable (503 with Retry-After; their transaction either committed or rolled back
whole, and a retry with the same Idempotency-Key is answered as the first), and the next batch
starts a new process.

The protocol: each batch a pickled list of `Prepared` one way; back, for each transaction, a
pickled list of the outcomes of the batches it wrote, oldest first, one per member (None:
written; the process logs it once it has answered, the API counts and answers it:
bus.intake.store_batch, log_accepted and answers). The `created` event is made in the process
too (Prepared.envelope). Both ends are this project's code on the same interpreter.

Run by the API (`IntakeProcess`); `main` is the child's side.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import structlog

from bus.intake import Outcome, Prepared
from bus.store import StoreUnavailable

log = structlog.get_logger(__name__)

#: Seconds after a start before a process that died is started again: a child that cannot
#: even start (a broken install) is not re-spawned for every create.
RESTART_DELAY_S = 1.0
#: Seconds a closing API waits for the process to finish its batch before killing it.
CLOSE_WAIT_S = 10.0

#: Most creates the process writes in one transaction (batches waiting are merged up to it).
MAX_MERGED = 64
#: Bytes of batches sent and not answered yet beyond which the API holds the next ones back:
#: well below what the socket takes before a send blocks (~100 KB in frames of a create or two,
#: with the kernel's default buffer).
MAX_BYTES_IN_FLIGHT = 48 * 1024

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_DATABASE_URL_ENV = "CIVICBUS_INTAKE_DATABASE_URL"
#: What `ps` and `pgrep -af civicbus` show of the child, beside its command.
PROCESS_NAME = "civicbus-intake-writer"
#: The child's command (`python -m` would import bus.api, the whole app, before this module).
_CHILD = f"import sys; from {__name__} import main; main(sys.argv)"


def worth_a_process() -> bool:
    """Whether this process may run on more than one core: else the writer process would only
    add its hand-offs to the creates' work."""
    return len(os.sched_getaffinity(0)) > 1


class IntakeProcess:
    """The API's side: starts the child, sends it batches, hands back what it answers.

    Used on the event loop only (the one that starts it). `on_outcomes` gets the outcomes of
    the oldest batches sent and not answered yet (one list for the batches written together);
    `on_lost`, when the process is gone: none of the batches sent will be answered.
    """

    def __init__(
        self,
        database_url: str,
        on_outcomes: Callable[[list[Outcome]], None],
        on_lost: Callable[[StoreUnavailable], None],
    ) -> None:
        self._database_url = database_url
        self._on_outcomes = on_outcomes
        self._on_lost = on_lost
        self._child: _Child | None = None
        self._connection: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started_at = float("-inf")

    def start(self) -> None:
        """Start the child now (at the API's start-up, so that the first create does not wait
        for its imports); `send` starts it too when needed."""
        if self._connection is not None:
            return
        if time.monotonic() - self._started_at < RESTART_DELAY_S:
            raise StoreUnavailable("the intake writer process stopped; starting it again")
        self._started_at = time.monotonic()
        try:
            ours, theirs = socket.socketpair()
            with ours, theirs:
                theirs.set_inheritable(True)
                # The URL in the environment, not on the command line that `ps` shows.
                self._child = _Child(
                    theirs.fileno(), {**os.environ, _DATABASE_URL_ENV: self._database_url}
                )
                self._connection = Connection(ours.detach())
        except OSError as exc:  # out of processes or memory
            log.error("intake.writer_process_not_started", error=str(exc))
            raise StoreUnavailable(f"cannot start the intake writer process: {exc}") from exc
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._connection.fileno(), self._answered)
        log.info("intake.writer_process_started", pid=self._child.pid)

    def send(self, batch: list[Prepared]) -> int:
        """Hand a batch over, and say how many bytes that took; its outcomes come to
        `on_outcomes` (or `on_lost`). Raises StoreUnavailable when the process cannot take it
        (nothing was sent).

        The socket is blocking: a caller keeps what it sent and has not had answered below
        MAX_BYTES_IN_FLIGHT, so that a send never waits for a child busy with a long write
        (the event loop would stop with it)."""
        self.start()
        assert self._connection is not None
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._connection.send_bytes(data)
        except OSError as exc:
            self._lose()
            raise StoreUnavailable(f"the intake writer process is gone: {exc}") from exc
        return len(data)

    def kill(self, why: str) -> None:
        """Kill a child that stopped answering; its end comes as any other (`on_lost`)."""
        if self._child is not None:
            log.error("intake.writer_process_unresponsive", pid=self._child.pid, why=why)
            os.kill(self._child.pid, signal.SIGKILL)

    def close(self) -> None:
        """Close the socket (the child finishes its batch and exits) and wait for the child."""
        child = self._child
        self._detach()
        if child is not None:
            child.wait_or_kill(CLOSE_WAIT_S)

    def _answered(self) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            data = connection.recv_bytes()
        except (EOFError, OSError):
            self._lose()
            return
        self._on_outcomes(pickle.loads(data))

    def _lose(self) -> None:
        """The child is gone (or its socket broke): reap it, and fail what it held."""
        child = self._child
        self._detach()
        code = None if child is None else child.wait_or_kill(1.0)
        log.error("intake.writer_process_lost", exit_code=code)
        self._on_lost(StoreUnavailable("the intake writer process stopped"))

    def _detach(self) -> None:
        connection, self._connection, self._child = self._connection, None, None
        if connection is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(connection.fileno())
            connection.close()


class _Child:
    """The started child: spawned with SIGINT and SIGTERM blocked, so that neither can end it
    before it ignores them (its imports take a moment); it unblocks them once they are ignored.
    (subprocess cannot start a child with signals blocked; a preexec_fn is unsafe in a process
    with threads.)"""

    def __init__(self, fd: int, env: dict[str, str]) -> None:
        argv = [sys.executable, "-c", _CHILD, PROCESS_NAME, str(fd)]
        self.pid = os.posix_spawn(sys.executable, argv, env, setsigmask=_STOP_SIGNALS)

    def wait_or_kill(self, seconds: float) -> int:
        """The exit status (as subprocess gives it: -N for signal N), once the child ended;
        killed if it has not within `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= deadline:
                os.kill(self.pid, signal.SIGKILL)
                return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            time.sleep(0.01)


# --- the child's side -----------------------------------------------------------------------


def _portable(outcome: Outcome) -> Outcome:
    """`outcome` as it can cross to the API: an exception that does not survive pickling (a
    driver's, say) is sent as a RuntimeError naming it, which the API answers with a 500."""
    if not isinstance(outcome, Exception):
        return outcome
    try:
        pickle.loads(pickle.dumps(outcome))
    except Exception:
        return RuntimeError(f"{type(outcome).__name__}: {outcome}")
    return outcome


def serve(connection: Connection, database_url: str) -> None:
    """Write each batch that comes and answer its outcomes, until the API closes the socket."""
    from bus.heap import freeze_startup_objects
    from bus.intake import log_accepted, store_batch
    from bus.store import Store

    # Not Store.open: the API migrated the store already, and a database that cannot be reached
    # is answered batch by batch (StoreUnavailable), not by a child that dies and is restarted.
    store = Store(database_url)
    # A kept connection, with the store's usual wait for the write lock: nothing waits on
    # this process but the creates of the batch in hand.
    writer = store.kept_writer()
    freeze_startup_objects()  # as every civicbus service, before its loop (bus.heap)
    try:
        while True:
            try:
                data = connection.recv_bytes()
            except EOFError:
                return
            # The batches sent meanwhile are written with it, in one transaction.
            merged: list[Prepared] = pickle.loads(data)
            while len(merged) < MAX_MERGED and connection.poll(0):
                try:
                    merged += pickle.loads(connection.recv_bytes())
                except EOFError:
                    break
            try:
                outcomes = store_batch(store, merged, writer=writer)
            except Exception as exc:  # store_batch answers per member; this is a last guard
                log.exception("intake.batch_failed", size=len(merged))
                outcomes = [exc] * len(merged)
            payload = [_portable(outcome) for outcome in outcomes]
            connection.send_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
            # After the answer: the clients need not wait for the log lines.
            log_accepted(merged, outcomes)
    finally:
        writer.close()
        store.close()


def main(argv: list[str]) -> None:
    # The API stops this process by closing the socket, once its in-flight creates are
    # written: a Ctrl-C or a SIGTERM sent to the whole group must not cut that short. They
    # were blocked since the spawn; one that came meanwhile is dropped when unblocked.
    for stop in _STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    from bus.cli.common import service_logging

    service_logging()
    connection = Connection(int(argv[-1]))
    try:
        serve(connection, os.environ[_DATABASE_URL_ENV])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the API went away while a batch was answered: it will not read the answer
    finally:
        connection.close()
