"""`civicbus topology`: declare the RabbitMQ topology, or export it as a definitions file."""

from __future__ import annotations

from pathlib import Path

import typer

from bus.broker.connection import (
    BrokerUnavailable,
    close_quietly,
    connect,
    connection_parameters,
)
from bus.broker.topology import TopologyMismatch, declare_topology, definitions_json, topology
from bus.cli import command_group
from bus.cli.common import runtime

DEFAULT_DEFINITIONS = Path("deploy/rabbitmq/definitions.json")


def register(app: typer.Typer) -> None:
    group = command_group(
        help="The RabbitMQ topology: exchanges, queues and bindings of the adapter instances.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="topology")

    @group.command("export")
    def export(
        output: Path = typer.Option(
            DEFAULT_DEFINITIONS, "--output", "-o", help="Where to write; '-' for stdout."
        ),
        vhost: str | None = typer.Option(
            None, help="The vhost the definitions are for (default: CIVICBUS_AMQP_URL's)."
        ),
    ) -> None:
        """Write the topology of the configured instances as a RabbitMQ definitions file."""
        with runtime() as rt:
            if vhost is None:
                vhost = connection_parameters(rt.env.amqp_url).virtual_host
            text = definitions_json(rt.config.instances, vhost=vhost)
        if str(output) == "-":
            typer.echo(text, nl=False)
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}")

    @group.command("declare")
    def declare() -> None:
        """Declare the topology on the broker named by CIVICBUS_AMQP_URL (safe to repeat)."""
        with runtime() as rt:
            instances = rt.config.instances
            try:
                connection = connect(rt.env.amqp_url)
            except BrokerUnavailable as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from exc
            try:
                declare_topology(connection.channel(), instances)
            except TopologyMismatch as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from exc
            finally:
                close_quietly(connection)
        wanted = topology(instances)
        typer.echo(
            f"declared {len(wanted.exchanges)} exchanges, {len(wanted.queues)} queues, "
            f"{len(wanted.bindings)} bindings for {len(instances)} adapter instances"
        )
