"""`civicbus db upgrade`: create or migrate the store's schema."""

from __future__ import annotations

import typer

from bus.cli import command_group
from bus.cli.common import runtime


def register(app: typer.Typer) -> None:
    group = command_group(help="The store (SQLite or PostgreSQL).", no_args_is_help=True)
    app.add_typer(group, name="db")

    @group.command("upgrade")
    def upgrade() -> None:
        """Create the schema, or migrate it to the newest version (safe to repeat)."""
        with runtime() as rt:
            rt.store.upgrade()
            typer.echo(f"store is up to date: {_safe_url(rt.env.database_url)}")


def _safe_url(url: str) -> str:
    """The database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
