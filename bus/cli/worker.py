"""`civicbus worker INSTANCE` and `civicbus worker --subscriptions`: run until SIGTERM/Ctrl-C (a
second one stops at once); exit 1 when the stop had to leave a message in hand to the broker."""

from __future__ import annotations

import threading

import typer

from adapters.mapping import MappingFileError
from adapters.registry import RegistryError
from bus.adapters_glue import build_adapter
from bus.cli.common import runtime, service_logging
from bus.heap import freeze_startup_objects
from bus.worker import STOP_GRACE, StopSignals, command_consumer, run_subscriptions

#: The exit status of a worker whose stop left messages in hand to the broker (a handler was
#: still busy when the stop grace ran out, or a second signal cut it short): a supervisor or
#: systemd shows an unclean stop.
LEFT_MESSAGES = 1


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        instance: str | None = typer.Argument(
            None, help="The adapter instance whose queue to consume (from the config)."
        ),
        subscriptions: bool = typer.Option(
            False, "--subscriptions", help="Deliver events to the webhook subscriptions instead."
        ),
        stop_grace: float = typer.Option(
            STOP_GRACE,
            "--stop-grace",
            min=0,
            help="Seconds SIGTERM waits for the messages in hand before leaving them to the "
            "broker (which redelivers them) and exiting 1. A second SIGTERM (or Ctrl-C "
            "twice) does so at once.",
        ),
    ) -> None:
        """Consume an adapter instance's commands (or the webhook subscriptions' events).

        SIGTERM (or Ctrl-C) finishes the messages in hand, acknowledges them and exits; a
        message still in hand after the stop grace is left unacknowledged, for the broker to
        redeliver, and the worker exits 1. A second SIGTERM (or a second Ctrl-C) does that at
        once, without waiting out the grace.
        """
        service_logging()
        if (instance is None) == (not subscriptions):
            typer.echo("error: name an adapter INSTANCE, or --subscriptions (not both)", err=True)
            raise typer.Exit(2)
        with runtime() as rt:
            if subscriptions:
                stop, stop_now = threading.Event(), threading.Event()

                def _stop_now() -> None:
                    stop_now.set()
                    stop.set()

                StopSignals(stop.set, _stop_now).install()
                if not run_subscriptions(
                    rt.env.amqp_url, rt.store, stop=stop, stop_now=stop_now, stop_grace=stop_grace
                ):
                    raise typer.Exit(LEFT_MESSAGES)
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
            left = False
            try:
                consumer = command_consumer(
                    rt.env.amqp_url, rt.store, instance, config, adapter, stop_grace=stop_grace
                )
                freeze_startup_objects()
                left = not consumer.run(install_signal_handlers=True)
            finally:
                # A thread left in a call to the back-end still uses the adapter, and closing
                # it under that call could hang too; the process's exit closes its sockets.
                if not left:
                    adapter.close()
            if left:
                raise typer.Exit(LEFT_MESSAGES)
