"""`civicbus schemas export`: JSON Schema files of the canonical model, and the AsyncAPI
document of its events."""

from __future__ import annotations

from pathlib import Path

import typer

from bus.cli import command_group
from schemas.asyncapi import ASYNCAPI_FILE, render_asyncapi
from schemas.export import SCHEMA_DIR, export_schemas


def register(app: typer.Typer) -> None:
    group = command_group(
        help="Machine-readable schemas of the canonical model.", no_args_is_help=True
    )
    app.add_typer(group, name="schemas")

    @group.command("export")
    def export(
        directory: Path = typer.Option(
            SCHEMA_DIR, "--dir", help="Where to write the JSON Schema files."
        ),
        asyncapi: Path = typer.Option(
            ASYNCAPI_FILE, "--asyncapi", help="Where to write the AsyncAPI document."
        ),
    ) -> None:
        """Write the JSON Schema of each canonical model (schemas/json/ by default) and the
        AsyncAPI document of the events (schemas/asyncapi.yaml): tests fail while one is stale."""
        for path in export_schemas(directory):
            typer.echo(f"wrote {path}")
        asyncapi.write_text(render_asyncapi())
        typer.echo(f"wrote {asyncapi}")
