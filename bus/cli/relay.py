"""`civicbus relay`: move committed outbox rows to RabbitMQ until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import typer

from bus.cli.common import runtime, service_logging
from bus.heap import freeze_startup_objects
from bus.relay import Relay, RelaySettings


def register(app: typer.Typer) -> None:
    @app.command("relay")
    def relay(
        batch_size: int = typer.Option(500, min=1, help="Rows published per confirmed batch."),
        poll_interval: float = typer.Option(
            0.2, min=0.01, help="Seconds between looks at an empty outbox."
        ),
        lease_ttl: float = typer.Option(
            15.0, min=1.0, help="Seconds a standby relay waits before taking over a silent one."
        ),
    ) -> None:
        """Publish outbox rows to RabbitMQ in order, with confirms; one active copy at a time."""
        service_logging()
        stop = threading.Event()

        def _stop(signum: int, _frame: FrameType | None) -> None:
            # Finish the batch in hand (its confirms or its failure), then exit.
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        with runtime() as rt:
            settings = RelaySettings(
                batch_size=batch_size, poll_interval=poll_interval, lease_ttl=lease_ttl
            )
            relay = Relay(rt.store, rt.config, rt.env.amqp_url, settings=settings, stop=stop)
            freeze_startup_objects()
            relay.run()
