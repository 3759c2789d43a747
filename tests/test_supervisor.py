"""`civicbus run`'s supervisor restarts parts that die and stops all of them on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

# Parts here are tiny Python programs that sleep for the number of seconds given as their args.
SCRIPT = """
import sys
from bus.logging import configure_logging
from bus.supervisor import Part, Supervisor
configure_logging("json")
sleeper = (sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))")
parts = [Part("short", ("0",)), Part("long", ("600",))]
raise SystemExit(Supervisor(parts, command=sleeper).run())
"""


def _events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_part_that_exits_is_restarted_and_sigterm_stops_everything() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # the short part exits at once: it must have been started more than once
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    events = _events(stderr)
    starts = [e for e in events if e.get("event") == "supervisor.part_started"]
    long_pid = next(int(str(e["pid"])) for e in starts if e["part"] == "long")
    assert proc.returncode == 0
    assert sum(1 for e in starts if e["part"] == "short") >= 2
    assert sum(1 for e in starts if e["part"] == "long") == 1
    assert any(e.get("event") == "supervisor.stopped" for e in events)
    assert not _alive(long_pid)


# The first part listens on a port after a second; the second part starts after it answers.
READY_SCRIPT = """
import sys
from bus.logging import configure_logging
from bus.supervisor import Part, Supervisor
configure_logging("json")
port = int(sys.argv[1])
program = (
    "import socket, sys, time\\n"
    "if sys.argv[1] == 'listen':\\n"
    "    time.sleep(1)\\n"
    "    s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[2]))); s.listen()\\n"
    "time.sleep(600)\\n"
)
parts = [
    Part("backend", ("listen", str(port)), ready_ports=(port,)),
    Part("client", ("sleep",)),
]
raise SystemExit(Supervisor(parts, command=(sys.executable, "-c", program)).run())
"""


def test_parts_after_one_with_ready_ports_start_once_its_ports_answer() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", READY_SCRIPT, str(port)], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    events = [e for e in _events(stderr) if str(e.get("event", "")).startswith("supervisor.part_")]
    order = [(e["event"], e.get("part")) for e in events][:3]
    assert order == [
        ("supervisor.part_started", "backend"),
        ("supervisor.part_ready", "backend"),
        ("supervisor.part_started", "client"),
    ], stderr
