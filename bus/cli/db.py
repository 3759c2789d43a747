"""`civicbus db upgrade`: create or migrate the store's schema."""

from __future__ import annotations

import typer

from bus.cli import command_group
from bus.cli.common import runtime
from bus.store import shown_url


def register(app: typer.Typer) -> None:
    group = command_group(help="The store (SQLite or PostgreSQL).", no_args_is_help=True)
    app.add_typer(group, name="db")

    @group.command("upgrade")
    def upgrade() -> None:
        """Create the schema, or migrate it to the newest version (safe to repeat)."""
        with runtime() as rt:
            rt.store.upgrade()
            typer.echo(f"store is up to date: {shown_url(rt.env.database_url)}")
