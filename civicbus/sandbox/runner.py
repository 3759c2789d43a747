"""The registry of simulated back-ends, and starting them on their ports.

Each simulator module has a `serve(options) -> Running` function. Adding a simulator is one
line in `SIMULATORS` below; the module is imported only when that simulator starts, so a missing
optional dependency of one simulator does not stop the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

DEFAULT_STATE_DIR = Path("var/sandbox")


@dataclass(frozen=True)
class ServeOptions:
    """Where and how to run one simulator."""

    state_dir: Path = DEFAULT_STATE_DIR
    host: str = "127.0.0.1"
    #: 0 picks a free port (what tests use).
    port: int = 0
    #: Seconds between automatic status steps of every open item; None turns it off.
    auto_progress: float | None = None
    #: Simulator-specific extras (e.g. the parks client credentials).
    extra: dict[str, str] = field(default_factory=dict)


class Running(Protocol):
    """A started simulator: where it listens, and how to stop it."""

    url: str
    #: Base URL of the simulator's `/_sandbox/` control endpoint.
    control_url: str

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Simulator:
    """A registered simulator: its name, default port, and `module:function` that serves it."""

    name: str
    port: int
    target: str
    description: str
    #: Ports it also listens on by default (the mailbox's control endpoint, on port + 1).
    more_ports: tuple[int, ...] = ()

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port it listens on by default."""
        return (self.port, *self.more_ports)

    def serve(self, options: ServeOptions) -> Running:
        """Start this simulator (in background threads) and return it running."""
        module_name, _, function = self.target.partition(":")
        serve: Callable[[ServeOptions], Running] = getattr(
            importlib.import_module(module_name), function
        )
        return serve(options)


SIMULATORS: dict[str, Simulator] = {
    sim.name: sim
    for sim in (
        Simulator("sap", 8321, "civicbus.sandbox.sap:serve", "SAP PM, OData + BAPIs (simulation)"),
        Simulator("permits", 8322, "civicbus.sandbox.permits:serve", "permit system (SOAP)"),
        Simulator("parks", 8323, "civicbus.sandbox.parks:serve", "parks work requests (REST)"),
        Simulator(
            "mailbox",
            8325,
            "civicbus.sandbox.mailbox:serve",
            "department mailbox (SMTP)",
            more_ports=(8326,),
        ),
    )
}


def start(
    names: Iterable[str] | None = None,
    *,
    state_dir: Path = DEFAULT_STATE_DIR,
    host: str = "127.0.0.1",
    auto_progress: float | None = None,
    extra: dict[str, str] | None = None,
    ports: dict[str, int] | None = None,
) -> list[tuple[Simulator, Running]]:
    """Start the named simulators (all when None) on their default ports, or on `ports[name]`
    (0: a free one); if one cannot start, stop those already started and raise."""
    chosen = list(SIMULATORS) if names is None else list(names)
    unknown = [n for n in chosen if n not in SIMULATORS]
    if unknown:
        raise KeyError(f"unknown simulator(s) {', '.join(unknown)}; known: {', '.join(SIMULATORS)}")
    started: list[tuple[Simulator, Running]] = []
    try:
        for name in chosen:
            sim = SIMULATORS[name]
            port = (ports or {}).get(name, sim.port)
            options = ServeOptions(
                state_dir=state_dir,
                host=host,
                port=port,
                auto_progress=auto_progress,
                extra=dict(extra or {}),
            )
            started.append((sim, sim.serve(options)))
    except BaseException:
        stop(started)
        raise
    return started


def stop(started: Iterable[tuple[Simulator, Running]]) -> None:
    """Stop started simulators, last started first."""
    for _, running in reversed(list(started)):
        running.stop()
