"""`civicbus api`: serve the Open311 API with uvicorn."""

from __future__ import annotations

import typer

from bus.cli.common import runtime, service_logging
from bus.heap import freeze_startup_objects


def register(app: typer.Typer) -> None:
    @app.command("api")
    def serve(
        host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(8311, help="Port to listen on."),
        intake_process: bool | None = typer.Option(
            None,
            help="Write creates in a process of their own (SQLite only). Default: on when the "
            "store is SQLite and this process may use more than one CPU core.",
        ),
    ) -> None:
        """Serve the Open311 GeoReport v2 API (creates or upgrades the store on first use)."""
        import uvicorn

        from bus.api import create_app
        from bus.api.intake_process import worth_a_process

        service_logging()
        with runtime() as rt:
            sqlite = rt.store.dialect == "sqlite"
            if intake_process and not sqlite:
                typer.echo("error: --intake-process is for a SQLite store only", err=True)
                raise typer.Exit(2)
            if intake_process is None:
                intake_process = sqlite and worth_a_process()
            application = create_app(rt, intake_process=intake_process)
            rt.store.upgrade()  # create or migrate the store now, not during the first request
            freeze_startup_objects()
            uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)
