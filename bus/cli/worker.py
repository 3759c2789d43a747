"""`civicbus worker INSTANCE` and `civicbus worker --subscriptions`: run until SIGTERM/Ctrl-C."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import typer

from adapters.mapping import MappingFileError
from adapters.registry import RegistryError
from bus.adapters_glue import build_adapter
from bus.cli.common import runtime, service_logging
from bus.worker import command_consumer, run_subscriptions


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        instance: str | None = typer.Argument(
            None, help="The adapter instance whose queue to consume (from the config)."
        ),
        subscriptions: bool = typer.Option(
            False, "--subscriptions", help="Deliver events to the webhook subscriptions instead."
        ),
    ) -> None:
        """Consume an adapter instance's commands (or the webhook subscriptions' events).

        SIGTERM finishes the message in hand, acknowledges it and exits.
        """
        service_logging()
        if (instance is None) == (not subscriptions):
            typer.echo("error: name an adapter INSTANCE, or --subscriptions (not both)", err=True)
            raise typer.Exit(2)
        with runtime() as rt:
            if subscriptions:
                stop = threading.Event()

                def _stop(_signum: int, _frame: FrameType | None) -> None:
                    stop.set()

                signal.signal(signal.SIGTERM, _stop)
                signal.signal(signal.SIGINT, _stop)
                run_subscriptions(rt.env.amqp_url, rt.store, stop=stop)
                return
            assert instance is not None
            config = rt.config.instances.get(instance)
            if config is None:
                known = ", ".join(sorted(rt.config.instances)) or "none"
                typer.echo(
                    f"error: no adapter instance {instance!r} (configured: {known})", err=True
                )
                raise typer.Exit(2)
            try:
                adapter = build_adapter(
                    instance, config, rt.config_dir, public_base_url=rt.config.api.base_url
                )
            except (RegistryError, MappingFileError) as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from exc
            try:
                consumer = command_consumer(rt.env.amqp_url, rt.store, instance, config, adapter)
                consumer.run(install_signal_handlers=True)
            finally:
                adapter.close()
