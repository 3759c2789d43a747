"""`civicbus run`: the whole of civicbus on one machine, as supervised processes."""

from __future__ import annotations

import os

import typer

from bus.cli.common import runtime
from bus.config import DEFAULT_CONFIG
from bus.supervisor import Part, Supervisor
from civicbus.sandbox.runner import SIMULATORS


def parts_for(instances: list[str], host: str, port: int, sandbox: bool) -> list[Part]:
    """The processes of a single-machine civicbus: API, relay, poller, webhook deliveries, the
    dead-letter keeper and one worker per adapter instance."""
    parts = [
        Part("api", ("api", "--host", host, "--port", str(port))),
        Part("relay", ("relay",)),
        Part("poller", ("poller",)),
        Part("webhooks", ("worker", "--subscriptions")),
        Part("dead-letters", ("dead", "keep")),
    ]
    parts += [Part(f"worker:{name}", ("worker", name)) for name in instances]
    if sandbox:
        # Started first, and waited for: the poller and the workers talk to it at once.
        ports = tuple(sim.port for sim in SIMULATORS.values())
        parts.insert(0, Part("sandbox", ("sandbox",), ready_ports=ports))
    return parts


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        host: str = typer.Option("127.0.0.1", help="Address the API listens on."),
        port: int = typer.Option(8311, help="Port the API listens on."),
        sandbox: bool | None = typer.Option(
            None,
            "--sandbox/--no-sandbox",
            help="Also start the sandbox city's simulated back-ends "
            "(default: on when running the sandbox config).",
        ),
    ) -> None:
        """Start the API, the relay, the status poller and a worker per adapter instance."""
        with runtime() as rt:
            instances = list(rt.config.instances)
            # Create or upgrade the store once, before the parts race to do it.
            rt.store.upgrade()
            is_sandbox_city = rt.env.config_path == DEFAULT_CONFIG
        with_sandbox = is_sandbox_city if sandbox is None else sandbox
        env = dict(os.environ)
        parts = parts_for(instances, host, port, with_sandbox)
        typer.echo(f"civicbus: starting {', '.join(p.name for p in parts)}")
        typer.echo(f"civicbus: Open311 API at http://{host}:{port}/open311/v2 (Ctrl-C stops)")
        raise typer.Exit(Supervisor(parts, env).run())
