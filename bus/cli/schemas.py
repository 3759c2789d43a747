"""`civicbus schemas export`: JSON Schema files of the canonical model."""

from __future__ import annotations

from pathlib import Path

import typer

from bus.cli import command_group
from schemas.export import SCHEMA_DIR, export_schemas


def register(app: typer.Typer) -> None:
    group = command_group(
        help="Machine-readable schemas of the canonical model.", no_args_is_help=True
    )
    app.add_typer(group, name="schemas")

    @group.command("export")
    def export(
        directory: Path = typer.Option(SCHEMA_DIR, "--dir", help="Where to write the files."),
    ) -> None:
        """Write the JSON Schema of each canonical model (schemas/json/ by default)."""
        for path in export_schemas(directory):
            typer.echo(f"wrote {path}")
