"""Runs civicbus's parts as supervised child processes on one machine (`civicbus run`).

Each part is the same command an operator would run alone (`civicbus api`, `civicbus relay`,
`civicbus worker INSTANCE`, ...), so one machine and many machines run identical code. A child
that dies is restarted with a growing delay; Ctrl-C or SIGTERM stops every child cleanly
(SIGTERM first, so workers finish and ack their in-flight message, then SIGKILL after a grace
period; a worker gives up on a message sooner, leaving it to the broker, and exits 1, which is
logged as an unclean stop). Asked again while the parts stop (Ctrl-C twice), it sends the parts
still running SIGTERM again, and a worker then leaves its messages to the broker at once.

A Ctrl-C in the terminal also reaches every part directly, as SIGINT to the whole process group,
before the supervisor's SIGTERM: a part sees one Ctrl-C as two signals of different kinds, and
must take them as one stop (a worker cuts its stop short only on a second signal of the same
kind, bus.worker.StopSignals). A part others depend on (the sandbox's simulated back-ends) names
the loopback ports it listens on; the parts after it start once those accept connections, so
that the first poll of a back-end does not fail on a simulator still starting.

Children die with the supervisor: on Linux each gets SIGTERM from the kernel when the supervisor
dies, even by SIGKILL, and stops as cleanly as when asked. Parts name the addresses they listen
on; the supervisor refuses to start when one is taken (an old civicbus still running, most
likely), and gives up, stopping everything, when a part keeps exiting while another process
holds its address, rather than restarting it for ever.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

GRACE_SECONDS = 15.0
MAX_RESTART_DELAY = 30.0
#: Seconds the parts after a part with `ready_ports` wait for them, at most, at start-up.
READY_TIMEOUT = 30.0
#: Exits in a row, each with one of its addresses held by another process, before giving up.
MAX_ADDRESS_IN_USE_EXITS = 3
#: What an operator should try when an address is taken.
IN_USE_HINT = "is civicbus already running? `pgrep -af civicbus` lists its processes"

#: A (host, port) a part listens on.
Address = tuple[str, int]


@dataclass(frozen=True)
class Part:
    """One supervised part: a name for the logs and the civicbus sub-command that runs it."""

    name: str
    args: tuple[str, ...]
    #: Loopback ports the part listens on once ready; the parts after it wait for them.
    ready_ports: tuple[int, ...] = ()
    #: Addresses the part listens on: checked free before start-up, and checked again when
    #: the part exits, to tell a taken address from a crash.
    listens_on: tuple[Address, ...] = ()


@dataclass(frozen=True)
class AddressInUse:
    """An address a part is to listen on, which another socket holds."""

    part: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class _Child:
    part: Part
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    #: Exits in a row with one of the part's addresses held by another process.
    in_use_exits: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)


class Supervisor:
    """Start parts, restart the ones that die, stop them all on request."""

    def __init__(
        self,
        parts: Sequence[Part],
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = (sys.executable, "-m", "civicbus"),
    ) -> None:
        self._children = [_Child(part) for part in parts]
        self._env = dict(os.environ if env is None else env)
        #: What a part's args are appended to: the civicbus command of this interpreter.
        self._command = tuple(command)
        self._stopping = False
        #: SIGINTs and SIGTERMs received; one received while the parts stop is passed on.
        self._stop_requests = 0
        self._exit_code = 0

    def run(self) -> int:
        """Run until SIGINT/SIGTERM; returns the exit code for the `civicbus run` process:
        0, or 1 when a part's address is taken (at start-up, or by a part that keeps exiting)."""
        taken = addresses_in_use(child.part for child in self._children)
        if taken:
            for address in taken:
                log.error(
                    "supervisor.address_in_use",
                    part=address.part,
                    address=str(address),
                    hint=IN_USE_HINT,
                )
            return 1
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        try:
            self._start_in_order()
            while not self._stopping:
                self._tend()
                time.sleep(0.2)
        finally:
            self._stop_all()
        return self._exit_code

    def _request_stop(self, signum: int, _frame: object) -> None:
        log.info("supervisor.stopping", signal=signal.Signals(signum).name)
        self._stop_requests += 1
        self._stopping = True

    def _start_in_order(self) -> None:
        """Start every part in turn; after one with `ready_ports`, wait until they answer."""
        for child in self._children:
            if self._stopping:
                return
            self._start(child, time.monotonic())
            if child.part.ready_ports:
                self._wait_ready(child)

    def _wait_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = list(child.part.ready_ports)
        while waiting and not self._stopping:
            waiting = [port for port in waiting if not _accepts(port)]
            if not waiting:
                log.info("supervisor.part_ready", part=child.part.name)
                return
            if child.process is None or child.process.poll() is not None:
                return  # it died: _tend reports and restarts it
            if time.monotonic() > deadline:
                log.warning(
                    "supervisor.part_not_ready",
                    part=child.part.name,
                    ports=waiting,
                    waited_s=READY_TIMEOUT,
                )
                return
            time.sleep(0.1)

    def _tend(self) -> None:
        now = time.monotonic()
        for child in self._children:
            proc = child.process
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:
                self._note_exit(child, proc.returncode, now)
                if self._stopping:
                    return
            if now >= child.next_start:
                self._start(child, now)

    def _note_exit(self, child: _Child, code: int, now: float) -> None:
        # A part that ran for a while before dying gets a fresh restart budget.
        if now - child.started_at > 60:
            child.restarts = 0
        delay = min(MAX_RESTART_DELAY, 0.5 * 2**child.restarts)
        child.restarts += 1
        child.next_start = now + delay
        child.process = None
        taken = addresses_in_use([child.part])
        child.in_use_exits = child.in_use_exits + 1 if taken else 0
        if not taken:
            log.warning("supervisor.part_exited", part=child.part.name, code=code, restart_in=delay)
            return
        # Restarting cannot help while another process holds the address: say so each time,
        # and give up after a few tries rather than restart for ever behind a foreign server.
        addresses = [str(address) for address in taken]
        if child.in_use_exits < MAX_ADDRESS_IN_USE_EXITS:
            log.error(
                "supervisor.part_exited",
                part=child.part.name,
                code=code,
                restart_in=delay,
                address_in_use=addresses,
                hint=IN_USE_HINT,
            )
            return
        log.error(
            "supervisor.giving_up",
            part=child.part.name,
            code=code,
            exits=child.in_use_exits,
            address_in_use=addresses,
            hint=IN_USE_HINT,
        )
        self._exit_code = 1
        self._stopping = True

    def _start(self, child: _Child, now: float) -> None:
        argv = [*self._command, *child.part.args]
        child.process = subprocess.Popen(argv, env=self._env, preexec_fn=_die_with_parent())
        child.started_at = now
        log.info("supervisor.part_started", part=child.part.name, pid=child.process.pid)

    def _stop_all(self) -> None:
        running = [c.process for c in self._children if c.process and c.process.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        # The request that began the stop, if a signal did (not a part's giving up): any
        # further one is passed on. Two already (Ctrl-C twice within a tick) pass on at once.
        passed_on = min(self._stop_requests, 1)
        deadline = time.monotonic() + GRACE_SECONDS
        waiting = list(running)
        while waiting and time.monotonic() < deadline:
            # Also lets a part take in one SIGTERM before a second: two sent together can
            # reach it as one.
            time.sleep(0.05)
            waiting = [proc for proc in waiting if proc.poll() is None]
            if self._stop_requests > passed_on and waiting:
                passed_on = self._stop_requests
                log.info("supervisor.stopping_now", parts=len(waiting))
                for proc in waiting:
                    proc.send_signal(signal.SIGTERM)
        for child in self._children:
            if child.process is None or child.process not in running:
                continue
            proc = child.process
            if proc.poll() is None:
                log.warning("supervisor.kill", part=child.part.name, pid=proc.pid)
                proc.kill()
            code = proc.wait()
            # Exit 0, or death by the SIGTERM re-raised after a graceful stop (uvicorn does
            # that), is a clean stop; anything else is worth an operator's look.
            clean = code in (0, -signal.SIGTERM)
            (log.info if clean else log.warning)(
                "supervisor.part_stopped", part=child.part.name, pid=proc.pid, code=code
            )
        log.info("supervisor.stopped")


def addresses_in_use(parts: Iterable[Part]) -> list[AddressInUse]:
    """The addresses the parts listen on that another socket holds now, and any that two of
    the parts both name (the second could never listen)."""
    taken: list[AddressInUse] = []
    seen: set[Address] = set()
    for part in parts:
        for address in part.listens_on:
            if address in seen or _in_use(address):
                taken.append(AddressInUse(part.name, *address))
            seen.add(address)
    return taken


def _in_use(address: Address) -> bool:
    """Whether binding a server socket to the address fails because another socket holds it."""
    host, port = address
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror:
        return False  # the part itself reports an address it cannot resolve
    with socket.socket(family, kind, proto) as probe:
        # As the servers do, so that a port left in TIME_WAIT by a stopped part counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send the child SIGTERM when this process dies, even by
    SIGKILL; None where there is no prctl (there, a killed supervisor leaves its children)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def in_child() -> None:
        # Runs between fork and exec. The signal comes when the thread that forked dies: the
        # supervisor starts every child from its main thread, which lives as long as it does.
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the supervisor died before prctl took effect: no signal will come

    return in_child


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
