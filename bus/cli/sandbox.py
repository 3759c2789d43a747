"""`civicbus sandbox`: run the sandbox city's simulated back-ends until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import typer

from bus.cli.common import service_logging
from civicbus.sandbox import runner


def register(app: typer.Typer) -> None:
    @app.command("sandbox")
    def sandbox(
        state_dir: Path = typer.Option(
            runner.DEFAULT_STATE_DIR, help="Where the simulators keep their state across restarts."
        ),
        only: list[str] = typer.Option(
            [], "--only", help="Start only this simulator (repeat for several)."
        ),
        host: str = typer.Option("127.0.0.1", help="Address the simulators listen on."),
        auto_progress: float | None = typer.Option(
            None, help="Move every open work item one status on every this many seconds."
        ),
        port: list[str] = typer.Option(
            [], "--port", help="NAME=PORT: another port for a simulator (0: any free port)."
        ),
        list_only: bool = typer.Option(False, "--list", help="List the simulators and exit."),
    ) -> None:
        """Start the simulated back-ends (simulations, not the real systems) on their ports."""
        if list_only:
            for sim in runner.SIMULATORS.values():
                # The mailbox's control endpoint has a port of its own; the others' share theirs.
                listens = ", ".join(str(number) for number in sim.ports)
                typer.echo(f"{sim.name:10} ports {listens:12} {sim.description}")
            return
        service_logging()
        ports = _ports(port)
        # Signals are ours from before the first simulator starts until the last has stopped:
        # Ctrl-C under `civicbus run` brings SIGINT to every process and then the supervisor's
        # SIGTERM, which must not kill us mid-stop.
        with _stop_signals() as stop:
            try:
                started = runner.start(
                    only or None,
                    state_dir=state_dir,
                    host=host,
                    auto_progress=auto_progress,
                    ports=ports,
                )
            except KeyError as exc:
                typer.echo(f"error: {exc.args[0]}", err=True)
                raise typer.Exit(2) from exc
            except OSError as exc:
                typer.echo(
                    f"error: a simulator cannot listen ({exc.strerror or exc}); is the "
                    f"sandbox already running? Use --only to start some of them.",
                    err=True,
                )
                raise typer.Exit(1) from exc
            for sim, running in started:
                typer.echo(
                    f"sandbox: {sim.name:8} {sim.description:28} {running.url}  "
                    f"(control: {running.control_url}/_sandbox/)"
                )
            typer.echo(f"sandbox: state in {state_dir}/ (Ctrl-C stops)")
            while not stop.wait(0.5):
                pass
            runner.stop(started)
        typer.echo("sandbox: stopped")


def _ports(pairs: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for pair in pairs:
        name, _, number = pair.partition("=")
        if not number.isdigit():
            typer.echo(f"error: --port takes NAME=PORT, not {pair!r}", err=True)
            raise typer.Exit(2)
        ports[name] = int(number)
    return ports


@contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT (Ctrl-C) or SIGTERM; the previous handlers come back on exit."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
