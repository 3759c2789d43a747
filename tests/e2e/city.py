"""The sandbox city as the end-to-end tests run it: real processes on free loopback ports.

`civicbus sandbox` (the simulated back-ends) and `civicbus run --no-sandbox` (API, relay, poller,
workers) run as subprocesses in their own process groups, on a config generated from
deploy/sandbox/civicbus.yaml with every instance pointed at this city's ports and state, and
with short poll intervals and retry tiers. Their stderr goes to files, so that a failure can
show what the processes said (`SandboxCity.diagnose`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pika
import yaml

from tests import waiting
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
SANDBOX_CONFIG = REPO / "deploy" / "sandbox" / "civicbus.yaml"
#: The simulators `civicbus sandbox` starts, and which of them each instance kind talks to.
SIMULATORS = ("sap", "permits", "parks", "mailbox")

T = TypeVar("T")


def civicbus_command() -> list[str]:
    """The `civicbus` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("civicbus")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bus"]


def base_env() -> dict[str, str]:
    """The parts of this environment a civicbus process needs; no CIVICBUS_* leaks in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if k in keep}


def run_cli(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one `civicbus` command to completion; fail with its output if it fails."""
    done = subprocess.run(
        [*civicbus_command(), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"civicbus {' '.join(args)} exited {done.returncode}\n"
        f"stdout: {done.stdout}\nstderr: {done.stderr}"
    )
    return done


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free port P whose neighbour P+1 is free too (the mailbox's control endpoint)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise RuntimeError("no two adjacent free ports found on 127.0.0.1")


#: What a check of a part still starting raises: "not yet" rather than a failure.
NOT_UP_YET = (httpx.HTTPError, OSError, ValueError, KeyError)


def wait_until(
    check: Callable[[], T | None], *, timeout: float, what: str, explain: Callable[[], str]
) -> T:
    """Poll `check` every 0.2 s until it returns something truthy (errors of a part still
    starting mean "not yet"); on timeout fail with `explain()`."""
    return waiting.wait_until(
        check, timeout=timeout, what=what, explain=explain, interval=0.2, tolerate=NOT_UP_YET
    )


@dataclass
class Process:
    """One civicbus command running in its own process group, its output in files."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @classmethod
    def start(
        cls, name: str, args: Sequence[str], *, env: Mapping[str, str], cwd: Path, logs: Path
    ) -> Process:
        out, err = logs / f"{name}.stdout", logs / f"{name}.stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                [*civicbus_command(), *args],
                env=dict(env),
                cwd=cwd,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        return cls(name, popen, out, err)

    def stop(self, timeout: float = 40) -> str | None:
        """SIGTERM the command (not its children: it must stop them itself) and wait.

        Returns a description of what went wrong (exit code, processes left behind), or None.
        """
        problems = []
        if self.popen.poll() is not None:
            problems.append(f"{self.name} had already exited with {self.popen.returncode}")
        else:
            self.popen.send_signal(signal.SIGTERM)
            try:
                code = self.popen.wait(timeout=timeout)
                if code != 0:
                    problems.append(f"{self.name} exited with {code} after SIGTERM")
            except subprocess.TimeoutExpired:
                problems.append(f"{self.name} did not exit within {timeout:g}s of SIGTERM")
        # Anything left in its process group was orphaned: a child the command did not stop.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
            problems.append(f"{self.name} left processes behind in its group (killed now)")
        except ProcessLookupError:
            pass
        if self.popen.poll() is None:
            self.popen.wait(timeout=10)
        return "; ".join(problems) or None

    def log_lines(self) -> list[str]:
        return self.stderr.read_text(errors="replace").splitlines()

    def events(self) -> list[dict[str, Any]]:
        """The structured (JSON) log events the command and its children wrote."""
        found = []
        for line in self.log_lines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found

    def ended_gracefully(self) -> bool:
        """Whether an API process ended by the SIGTERM uvicorn re-raises once it has shut down
        gracefully (its exit code is then -SIGTERM, not 0)."""
        return self.popen.returncode == -signal.SIGTERM and any(
            e.get("event", "").startswith("Finished server process") for e in self.events()
        )

    def supervisor_problems(self) -> list[str]:
        """What `civicbus run`'s supervisor saw go wrong: parts that died while running, were
        killed after the grace period, or exited non-zero on SIGTERM."""
        problems = []
        for event in self.events():
            name = event.get("event")
            if name == "supervisor.part_exited":
                problems.append(f"{event['part']} died (exit {event['code']}) and was restarted")
            elif name == "supervisor.kill":
                problems.append(f"{event.get('part', event['pid'])} ignored SIGTERM and was killed")
            elif name == "supervisor.part_stopped" and event["code"] != 0:
                # uvicorn re-raises the SIGTERM once it has shut down gracefully.
                graceful_api = (
                    event["part"] == "api"
                    and event["code"] == -signal.SIGTERM
                    and any(
                        e.get("event", "").startswith("Finished server process")
                        for e in self.events()
                    )
                )
                if not graceful_api:
                    problems.append(f"{event['part']} exited {event['code']} on SIGTERM")
        return problems

    def tail(self, lines: int = 60) -> str:
        """The last lines of stdout and stderr, without the poller's routine HTTP request lines."""
        out = self.stdout.read_text(errors="replace").splitlines()[-10:]
        err = [ln for ln in self.log_lines() if '"logger": "httpx"' not in ln][-lines:]
        return "\n".join(
            [
                f"--- {self.name} (pid {self.popen.pid}, exit {self.popen.poll()}) stdout:",
                *out,
                "--- stderr:",
                *err,
            ]
        )


@dataclass
class SandboxCity:
    """A running sandbox city: where everything listens, and how to talk to it."""

    workdir: Path
    env: dict[str, str]
    config: dict[str, Any]
    api_url: str
    control_urls: dict[str, str]
    state_dir: Path
    workorders_url: str
    processes: list[Process] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<SandboxCity {self.api_url} in {self.workdir}>"

    @property
    def open311(self) -> str:
        return f"{self.api_url}/open311/v2"

    @property
    def mailbox_dir(self) -> Path:
        return self.state_dir / "mailbox"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one `civicbus` command against this city; fail with its output if it fails."""
        return run_cli(args, env=self.env, cwd=self.workdir)

    def diagnose(self) -> str:
        """What every process of the city last said: the text a failure message carries."""
        return "\n".join(p.tail() for p in self.processes)

    def wait_until(self, check: Callable[[], T | None], *, timeout: float, what: str) -> T:
        return wait_until(check, timeout=timeout, what=what, explain=self.diagnose)

    def instance_for(self, service_code: str, jurisdiction: str) -> str:
        """The adapter instance the config's routing rules name (first match, else default)."""
        routing = self.config["routing"]
        for rule in routing.get("rules", []):
            services = rule.get("services", ["*"])
            jurisdictions = rule.get("jurisdictions", ["*"])
            if ("*" in services or service_code in services) and (
                "*" in jurisdictions or jurisdiction in jurisdictions
            ):
                return str(rule["instance"])
        return str(routing["default"])

    def mapping(self, instance: str) -> dict[str, Any]:
        """The parsed mapping file of an instance (the config's absolute path)."""
        path = Path(self.config["instances"][instance]["mapping"])
        data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["_path"] = str(path)
        return data


def city_config(
    source: Path,
    *,
    api_port: int,
    ports: Mapping[str, int],
    state_dir: Path,
    workorders_url: str,
    sent_dir: Path,
) -> dict[str, Any]:
    """The sandbox config, rewritten for one test city: its ports, its state, absolute mapping
    paths, fast polling and short retry tiers; everything else (catalogue, routing) as is."""
    config: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    config["api"]["base_url"] = f"http://127.0.0.1:{api_port}"
    for instance in config["instances"].values():
        mapping = Path(instance["mapping"])
        if not mapping.is_absolute():
            # Relative mapping paths start at the config file's folder; this copy lives elsewhere.
            instance["mapping"] = str((source.parent / mapping).resolve())
        instance["poll_interval"] = 0.5
        instance["retry"] = {"immediate_attempts": 2, "tiers": [0.5, 1.0], "max_attempts": 10}
        settings = instance.setdefault("settings", {})
        kind = instance["kind"]
        if kind == "sap":
            settings["base_url"] = f"http://127.0.0.1:{ports['sap']}"
        elif kind == "oracle":
            settings["url"] = workorders_url
        elif kind == "permits":
            settings["wsdl"] = f"http://127.0.0.1:{ports['permits']}/permits?wsdl"
        elif kind == "parks":
            settings["base_url"] = f"http://127.0.0.1:{ports['parks']}"
        elif kind == "email":
            settings["smtp_port"] = ports["mailbox"]
            settings["state_dir"] = str(sent_dir)
    return config


def queue_consumers(amqp_url: str, queues: Sequence[str]) -> dict[str, int]:
    """How many consumers each queue has (0 for a queue that does not exist yet)."""
    counts: dict[str, int] = {}
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                counts[queue] = channel.queue_declare(queue, passive=True).method.consumer_count
            except pika.exceptions.ChannelClosedByBroker:
                counts[queue] = 0
                channel = connection.channel()
    finally:
        connection.close()
    return counts


@dataclass(frozen=True)
class CityFiles:
    """A sandbox city's config and environment in `workdir`, on free loopback ports: what the
    tests that run civicbus as processes start it with."""

    config: dict[str, Any]
    env: dict[str, str]
    #: The simulators' ports, by name (the mailbox's control endpoint is the next port).
    ports: dict[str, int]
    api_port: int
    state_dir: Path
    workorders_url: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def sandbox_args(self, *only: str) -> list[str]:
        """`civicbus sandbox` on this city's ports and state (every simulator, or `only`)."""
        args = ["sandbox", "--state-dir", str(self.state_dir)]
        for name in only:
            args += ["--only", name]
        for name, port in self.ports.items():
            if not only or name in only:
                args += ["--port", f"{name}={port}"]
        return args


def city_files(workdir: Path, *, database_url: str, amqp_url: str) -> CityFiles:
    """Write the sandbox config for a city in `workdir` (see `city_config`) and give the
    environment its civicbus processes run with: that config, this store and broker vhost,
    JSON logs."""
    state_dir = workdir / "sandbox-state"
    ports = {
        "sap": free_port(),
        "permits": free_port(),
        "parks": free_port(),
        "mailbox": free_port_pair(),
    }
    api_port = free_port()
    workorders_url = f"sqlite:///{state_dir}/workorders.db"
    config = city_config(
        SANDBOX_CONFIG,
        api_port=api_port,
        ports=ports,
        state_dir=state_dir,
        workorders_url=workorders_url,
        sent_dir=workdir / "email-sent",
    )
    config_path = workdir / "civicbus.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = {
        **base_env(),
        "CIVICBUS_CONFIG": str(config_path),
        "CIVICBUS_DATABASE_URL": database_url,
        "CIVICBUS_AMQP_URL": amqp_url,
        "CIVICBUS_MEDIA_DIR": str(workdir / "media"),
        "CIVICBUS_LOG_FORMAT": "json",
    }
    return CityFiles(config, env, ports, api_port, state_dir, workorders_url)


# --- what the process tests ask of a running city ----------------------------------------------

#: A parks service of the sandbox city with no attributes to answer (routed to `parks`).
PARKS_SERVICE = ("PLAYGROUND", "shelbyville.example")


def answers(url: str) -> bool:
    """Whether `url` answers 200 now (a simulator's control endpoint, the API's /healthz)."""
    return httpx.get(url, timeout=2).status_code == 200


def post_report(
    open311: str, api_key: str, n: int, idempotency_key: str | None = None
) -> httpx.Response:
    """POST report number `n` for PARKS_SERVICE to the Open311 API at `open311`."""
    code, jurisdiction = PARKS_SERVICE
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return httpx.post(
        f"{open311}/requests.json",
        data={
            "api_key": api_key,
            "jurisdiction_id": jurisdiction,
            "service_code": code,
            "lat": "39.80",
            "long": "-89.64",
            "description": f"Broken swing number {n}",
        },
        headers=headers,
        timeout=30,
    )


def created_id(response: httpx.Response) -> str:
    """The request id a 200 answer to a create gives (and fail on any other answer)."""
    assert response.status_code == 200, response.text
    return str(response.json()[0]["service_request_id"])


def set_fault(control_url: str, mode: Mapping[str, object]) -> None:
    """Put a simulator in a fault mode (`{"mode": "slow", "delay": 0.5}`, `{"mode": "none"}`)."""
    response = httpx.put(f"{control_url}/_sandbox/fault", json=dict(mode), timeout=10)
    assert response.status_code == 200, response.text


def held_references(control_url: str) -> list[str]:
    """The external references (civicbus request ids) of the work a simulator holds."""
    response = httpx.get(f"{control_url}/_sandbox/items", timeout=10)
    assert response.status_code == 200, response.text
    return [str(item["external_reference"]) for item in response.json()]


def stop_all(processes: Mapping[str, Process]) -> list[str]:
    """Stop every process still running, last started first; what went wrong with those the
    test did not kill itself (an API's graceful end by SIGTERM is no problem)."""
    problems = []
    for name, process in reversed(processes.items()):
        killed = process.popen.returncode == -signal.SIGKILL
        problem = process.stop()
        if problem and not killed and not (name.startswith("api") and process.ended_gracefully()):
            problems.append(problem)
    return problems
