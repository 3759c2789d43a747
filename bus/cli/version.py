"""`civicbus version`."""

from __future__ import annotations

from importlib.metadata import version

import typer


def register(app: typer.Typer) -> None:
    @app.command("version")
    def show_version() -> None:
        """Print the installed civicbus version."""
        typer.echo(version("civicbus"))
