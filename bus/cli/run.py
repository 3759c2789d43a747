"""`civicbus run`: the whole of civicbus on one machine, as supervised processes."""

from __future__ import annotations

import os

import typer

from bus.broker.connection import connection_parameters
from bus.cli.common import runtime, service_logging
from bus.config import DEFAULT_CONFIG
from bus.supervisor import IN_USE_HINT, Part, Supervisor, addresses_in_use
from civicbus.sandbox.runner import SIMULATORS


def parts_for(instances: list[str], host: str, port: int, sandbox: bool) -> list[Part]:
    """The processes of a single-machine civicbus: API, relay, poller, webhook deliveries, the
    dead-letter keeper and one worker per adapter instance."""
    parts = [
        Part("api", ("api", "--host", host, "--port", str(port)), listens_on=((host, port),)),
        Part("relay", ("relay",)),
        Part("poller", ("poller",)),
        Part("webhooks", ("worker", "--subscriptions")),
        Part("dead-letters", ("dead", "keep")),
    ]
    parts += [Part(f"worker:{name}", ("worker", name)) for name in instances]
    if sandbox:
        # Started first, and waited for: the poller and the workers talk to it at once.
        ports = tuple(port for sim in SIMULATORS.values() for port in sim.ports)
        listens_on = tuple(("127.0.0.1", port) for port in ports)
        parts.insert(0, Part("sandbox", ("sandbox",), ready_ports=ports, listens_on=listens_on))
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
        service_logging()
        with runtime() as rt:
            # A malformed broker URL (a ConfigError, reported by runtime()) would otherwise
            # make every part but the API exit at start, over and over.
            connection_parameters(rt.env.amqp_url)
            with_sandbox = rt.env.config_path == DEFAULT_CONFIG if sandbox is None else sandbox
            parts = parts_for(list(rt.config.instances), host, port, with_sandbox)
            # Before anything starts: a taken port would have its part restart in vain, while
            # whatever holds it (an old civicbus, most likely) answered in its place.
            taken = addresses_in_use(parts)
            if taken:
                for address in taken:
                    typer.echo(
                        f"civicbus: cannot start: {address} ({address.part}) is in use", err=True
                    )
                typer.echo(f"civicbus: {IN_USE_HINT}", err=True)
                raise typer.Exit(1)
            # Create or upgrade the store once, before the parts race to do it.
            rt.store.upgrade()
        env = dict(os.environ)
        typer.echo(f"civicbus: starting {', '.join(p.name for p in parts)}")
        typer.echo(f"civicbus: Open311 API at http://{host}:{port}/open311/v2 (Ctrl-C stops)")
        raise typer.Exit(Supervisor(parts, env).run())
