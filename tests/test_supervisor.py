"""`civicbus run`'s supervisor restarts parts that die and stops all of them on SIGTERM; its parts
die with it, show up in `pgrep -af civicbus`, and a taken port stops it rather than looping."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.processes import exited
from tests.waiting import wait_until

# The kernel's parent-death signal, which stops parts whose supervisor was killed, is Linux's.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

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


def _started_pids(stderr: Path) -> dict[str, int]:
    starts = _events(stderr.read_text())
    return {
        str(e["part"]): int(str(e["pid"]))
        for e in starts
        if e.get("event") == "supervisor.part_started"
    }


# Each part says it is ready once it handles SIGTERM, and writes which signal stopped it.
STOPPABLE_SCRIPT = """
import sys
from bus.logging import configure_logging
from bus.supervisor import Part, Supervisor
configure_logging("json")
program = (
    "import pathlib, signal, sys, time\\n"
    "def stop(signum, frame):\\n"
    "    pathlib.Path(sys.argv[1] + '.stopped').write_text(signal.Signals(signum).name)\\n"
    "    sys.exit(0)\\n"
    "signal.signal(signal.SIGTERM, stop)\\n"
    "pathlib.Path(sys.argv[1] + '.ready').touch()\\n"
    "time.sleep(600)\\n"
)
parts = [Part(name, (f"{sys.argv[1]}/{name}",)) for name in ("one", "two")]
raise SystemExit(Supervisor(parts, command=(sys.executable, "-c", program)).run())
"""


# A part that winds down for 3 s after a SIGTERM, and stops at once on a second one; it writes
# the signals it got.
WINDING_DOWN_SCRIPT = """
import sys
from bus.logging import configure_logging
from bus.supervisor import Part, Supervisor
configure_logging("json")
program = (
    "import pathlib, signal, sys, time\\n"
    "got = pathlib.Path(sys.argv[1] + '.signals')\\n"
    "stop_by = []\\n"
    "def on_term(signum, frame):\\n"
    "    with got.open('a') as f: f.write('TERM\\\\n')\\n"
    "    if stop_by: sys.exit(1)\\n"
    "    stop_by.append(time.monotonic() + 3)\\n"
    "signal.signal(signal.SIGTERM, on_term)\\n"
    "pathlib.Path(sys.argv[1] + '.ready').touch()\\n"
    "while not stop_by or time.monotonic() < stop_by[0]:\\n"
    "    time.sleep(0.05)\\n"
)
parts = [Part("winding", (f"{sys.argv[1]}/winding",))]
raise SystemExit(Supervisor(parts, command=(sys.executable, "-c", program)).run())
"""


def _stop_supervisor(tmp_path: Path, gaps: list[float]) -> tuple[float, str, list[str]]:
    """Start WINDING_DOWN_SCRIPT's supervisor, send it SIGTERM once and once more after each of
    `gaps`; how long it took to exit, what it logged, and the signals its part got."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WINDING_DOWN_SCRIPT, str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "winding.ready").exists():
            assert time.monotonic() < deadline, "the part never became ready"
            time.sleep(0.05)
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for gap in gaps:
            time.sleep(gap)
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    took = time.monotonic() - stopping
    return took, stderr, (tmp_path / "winding.signals").read_text().split()


def test_one_stop_request_reaches_each_part_as_one_sigterm(tmp_path: Path) -> None:
    took, stderr, signals = _stop_supervisor(tmp_path, [])
    assert signals == ["TERM"]
    assert took >= 3  # the part wound down in its own time
    assert "supervisor.stopping_now" not in stderr


def test_a_second_stop_request_is_passed_on_to_the_parts_still_stopping(tmp_path: Path) -> None:
    took, stderr, signals = _stop_supervisor(tmp_path, [0.5])
    assert signals == ["TERM", "TERM"]
    assert took < 2.5, stderr  # not the part's 3 s wind-down
    events = _events(stderr)
    assert [e["parts"] for e in events if e.get("event") == "supervisor.stopping_now"] == [1]
    [stopped] = [e for e in events if e.get("event") == "supervisor.part_stopped"]
    assert stopped["code"] == 1


@linux_only
def test_when_the_supervisor_is_killed_its_parts_get_sigterm_and_stop(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", STOPPABLE_SCRIPT, str(tmp_path)], stderr=err)
    pids: dict[str, int] = {}
    try:
        ready = [tmp_path / f"{name}.ready" for name in ("one", "two")]
        wait_until(
            lambda: all(p.exists() for p in ready),
            timeout=30,
            what="both parts",
            explain=stderr.read_text,
        )
        pids = _started_pids(stderr)
        proc.kill()
        proc.wait(timeout=10)
        for name, pid in pids.items():
            wait_until(
                functools.partial(exited, pid),
                timeout=30,
                what=f"part {name} to exit",
                explain=stderr.read_text,
            )
            assert (tmp_path / f"{name}.stopped").read_text() == "SIGTERM"
    finally:
        _kill_leftovers(proc, pids.values())


SANDBOX_PART_SCRIPT = """
import sys
from bus.logging import configure_logging
from bus.supervisor import Part, Supervisor
configure_logging("json")
args = ("sandbox", "--only", "parks", "--port", "parks=0", "--state-dir", sys.argv[1])
raise SystemExit(Supervisor([Part("sandbox", args)]).run())
"""


@linux_only
def test_a_civicbus_part_is_listed_by_pgrep_and_stops_cleanly_when_the_supervisor_dies(
    tmp_path: Path,
) -> None:
    if shutil.which("pgrep") is None:
        pytest.skip("no pgrep here")
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SANDBOX_PART_SCRIPT, str(tmp_path)], stdout=out, stderr=err
        )
    pids: dict[str, int] = {}

    def explain() -> str:
        return f"stdout:\n{stdout.read_text()}\nstderr:\n{stderr.read_text()}"

    try:
        wait_until(
            lambda: "Ctrl-C stops" in stdout.read_text(),
            timeout=30,
            what="the sandbox part",
            explain=explain,
        )
        pids = _started_pids(stderr)
        listed = subprocess.run(
            ["pgrep", "-af", "civicbus"], capture_output=True, text=True, check=True
        ).stdout
        lines = {int(line.split()[0]): line for line in listed.splitlines()}
        assert pids["sandbox"] in lines, listed
        assert "civicbus sandbox --only parks" in lines[pids["sandbox"]]
        proc.kill()
        proc.wait(timeout=10)
        wait_until(
            lambda: exited(pids["sandbox"]), timeout=30, what="the part to exit", explain=explain
        )
        assert stdout.read_text().splitlines()[-1] == "sandbox: stopped", explain()
    finally:
        _kill_leftovers(proc, pids.values())


def _kill_leftovers(proc: subprocess.Popen[bytes], pids: Iterable[int]) -> None:
    """SIGKILL the supervisor and parts a failed test left running."""
    for pid in [proc.pid, *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)


# A part that listens on the port given, or exits at once if it cannot.
LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "time.sleep(600)\n"
)

TAKEN_SCRIPT = """
import sys
from bus.logging import configure_logging
from bus.supervisor import Part, Supervisor
configure_logging("json")
port = int(sys.argv[1])
listener = (sys.executable, "-c", sys.argv[2])
parts = [
    # Holds the port without saying so, as an old civicbus or another program would.
    Part("squatter", (str(port),), ready_ports=(port,)),
    Part("server", (str(port),), listens_on=(("127.0.0.1", port),)),
]
parts = parts[1:] if sys.argv[3] == "alone" else parts
raise SystemExit(Supervisor(parts, command=listener).run())
"""


def test_the_supervisor_refuses_to_start_when_a_parts_address_is_taken() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", TAKEN_SCRIPT, str(port), LISTENER, "alone"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    events = _events(done.stderr)
    assert done.returncode == 1, done.stderr
    refused = [e for e in events if e.get("event") == "supervisor.address_in_use"]
    assert [(e["part"], e["address"]) for e in refused] == [("server", f"127.0.0.1:{port}")]
    assert "pgrep -af civicbus" in str(refused[0]["hint"])
    assert not [e for e in events if e.get("event") == "supervisor.part_started"], done.stderr


def test_a_part_that_keeps_exiting_because_its_address_is_taken_makes_the_supervisor_give_up() -> (
    None
):
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-c", TAKEN_SCRIPT, str(port), LISTENER, "both"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    events = _events(done.stderr)
    assert done.returncode == 1, done.stderr
    exits = [e for e in events if e.get("event") == "supervisor.part_exited"]
    assert exits and all(e["part"] == "server" for e in exits), done.stderr
    assert all(e["address_in_use"] == [f"127.0.0.1:{port}"] for e in exits), done.stderr
    gave_up = [e for e in events if e.get("event") == "supervisor.giving_up"]
    assert [e["part"] for e in gave_up] == ["server"], done.stderr
    stopped = [e for e in events if e.get("event") == "supervisor.part_stopped"]
    assert [e["part"] for e in stopped] == ["squatter"], done.stderr


CONFIG = """
jurisdictions: [{id: springfield.example, name: Springfield}]
routing: {default: desk}
instances:
  desk: {kind: memory}
"""


def civicbus_run(tmp_path: Path, port: int, **env: str) -> tuple[int, str, str, Path]:
    """Run `civicbus run --no-sandbox --port PORT` on a small config and a new SQLite store
    in `tmp_path`, with `env` added; (exit code, stdout, stderr, the store's path)."""
    config = tmp_path / "civicbus.yaml"
    config.write_text(CONFIG)
    store = tmp_path / "civicbus.db"
    run = subprocess.Popen(
        [sys.executable, "-m", "civicbus", "run", "--no-sandbox", "--port", str(port)],
        env={
            **os.environ,
            "CIVICBUS_CONFIG": str(config),
            "CIVICBUS_DATABASE_URL": f"sqlite:///{store}",
            "CIVICBUS_LOG_FORMAT": "json",
            **env,
        },
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = run.communicate(timeout=30)
    finally:
        # Had it not refused it would run on: stop it and whatever it started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
    return run.returncode, stdout, stderr, store


def test_civicbus_run_refuses_at_once_when_its_api_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, stdout, stderr, store = civicbus_run(tmp_path, port)
    assert code == 1, stdout + stderr
    assert f"127.0.0.1:{port} (api) is in use" in stderr, stderr
    assert "is civicbus already running? `pgrep -af civicbus`" in stderr, stderr
    assert "Open311 API at" not in stdout, stdout
    assert not store.exists(), "the store was touched before the check"


def test_civicbus_run_refuses_a_malformed_broker_url_before_starting_anything(
    tmp_path: Path,
) -> None:
    code, stdout, stderr, store = civicbus_run(
        tmp_path, 0, CIVICBUS_AMQP_URL="guest:s3cret@127.0.0.1"
    )
    assert code == 2, stdout + stderr
    assert "CIVICBUS_AMQP_URL is not a RabbitMQ URL" in stderr and "s3cret" not in stderr
    assert "starting" not in stdout and not store.exists()
