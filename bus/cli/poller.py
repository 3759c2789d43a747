"""`civicbus poller [INSTANCE...]`: read status changes from back-ends that must be polled."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import typer

from adapters import Adapter
from adapters.mapping import MappingFileError
from adapters.registry import RegistryError, load_kind
from bus.adapters_glue import build_adapter
from bus.cli.common import runtime, service_logging
from bus.poller import Poller


def register(app: typer.Typer) -> None:
    @app.command("poller")
    def poller(
        instances: list[str] = typer.Argument(
            None, help="Instances to poll (default: every configured one whose kind polls)."
        ),
    ) -> None:
        """Poll back-ends for status changes; one copy polls each instance at a time."""
        service_logging()
        stop = threading.Event()

        def _stop(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        with runtime() as rt:
            configured = rt.config.instances
            unknown = [name for name in instances or [] if name not in configured]
            if unknown:
                typer.echo(f"error: unknown adapter instance(s): {', '.join(unknown)}", err=True)
                raise typer.Exit(2)
            adapters: dict[str, Adapter] = {}
            try:
                for name in instances or sorted(configured):
                    cfg = configured[name]
                    if not (load_kind(cfg.kind).polls and cfg.poll_interval > 0):
                        if instances:
                            typer.echo(f"error: {name} ({cfg.kind}) is not polled", err=True)
                            raise typer.Exit(2)
                        continue
                    adapters[name] = build_adapter(name, cfg, rt.config_dir)
            except (RegistryError, MappingFileError) as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from exc
            intervals = {name: configured[name].poll_interval for name in adapters}
            if not adapters:
                typer.echo("poller: no configured instance polls; idle until stopped", err=True)
            try:
                Poller(rt.store, adapters, intervals, stop=stop).run()
            finally:
                for adapter in adapters.values():
                    adapter.close()
