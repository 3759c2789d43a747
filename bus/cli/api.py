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
    ) -> None:
        """Serve the Open311 GeoReport v2 API (creates or upgrades the store on first use)."""
        import uvicorn

        from bus.api import create_app

        service_logging()
        with runtime() as rt:
            application = create_app(rt)
            rt.store.upgrade()  # create or migrate the store now, not during the first request
            freeze_startup_objects()
            uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)
