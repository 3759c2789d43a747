"""`civicbus clients add|list|revoke|allow-updates|deny-updates`: the API clients (apps and
partners), their keys, and whether each may post status updates."""

from __future__ import annotations

import typer

from bus.cli import command_group
from bus.cli.common import runtime
from bus.store import AlreadyExists


def register(app: typer.Typer) -> None:
    clients = command_group(help="API clients and their keys.", no_args_is_help=True)
    app.add_typer(clients, name="clients")

    @clients.command("add")
    def add(
        name: str = typer.Argument(..., help="A name for the app or partner."),
        jurisdictions: list[str] = typer.Option(
            [],
            "--jurisdiction",
            help="Only allow posting to this jurisdiction (one; leave it out to allow all).",
        ),
        updates: bool = typer.Option(
            False,
            "--updates",
            help="May also post status updates (POST /servicerequestupdates), for a back-office "
            "desk or partner system; without it the key may create and read requests only.",
        ),
    ) -> None:
        """Create a client and print its key once."""
        if len(jurisdictions) > 1:
            # Read as a list so that a second one is refused: a plain option keeps the last
            # given without a word, and the key would answer 403 for the first.
            typer.echo(
                "error: a client may post to one jurisdiction, or to all when --jurisdiction "
                "is left out; add a client per jurisdiction instead",
                err=True,
            )
            raise typer.Exit(2)
        jurisdiction = jurisdictions[0] if jurisdictions else None
        with runtime() as rt:
            known = [j.id for j in rt.config.jurisdictions]
            if jurisdiction is not None and jurisdiction not in known:
                typer.echo(
                    f"error: unknown jurisdiction {jurisdiction!r} (one of {', '.join(known)})",
                    err=True,
                )
                raise typer.Exit(2)
            try:
                client, key = rt.store.add_client(name, jurisdiction, may_post_updates=updates)
            except AlreadyExists:
                typer.echo(f"error: a client named {name!r} already exists", err=True)
                raise typer.Exit(1) from None
            typer.echo(key)
            may = (
                "may create and read requests and post status updates"
                if client.may_post_updates
                else "may create and read requests, not post status updates (--updates)"
            )
            typer.echo(
                f"client {client.name!r} created; it {may}. The key above is shown only now: "
                "civicbus stores only its hash. Keep it secret.",
                err=True,
            )

    @clients.command("list")
    def list_clients() -> None:
        """List clients: name, jurisdiction, created, revoked, may post status updates."""
        with runtime() as rt:
            # UPDATES last: scripts reading the earlier columns by position keep working.
            typer.echo("NAME\tJURISDICTION\tCREATED\tSTATE\tUPDATES")
            for client in rt.store.list_clients():
                revoked = (
                    f"revoked {client.revoked_at.isoformat()}" if client.revoked_at else "active"
                )
                typer.echo(
                    f"{client.name}\t{client.jurisdiction or '*'}\t"
                    f"{client.created_at.isoformat()}\t{revoked}\t"
                    f"{'yes' if client.may_post_updates else 'no'}"
                )

    @clients.command("revoke")
    def revoke(name: str = typer.Argument(..., help="The client's name.")) -> None:
        """Revoke a client's key at once."""
        with runtime() as rt:
            if not rt.store.revoke_client(name):
                typer.echo(f"error: no active client named {name!r}", err=True)
                raise typer.Exit(1)
            typer.echo(f"client {name!r} revoked")

    @clients.command("allow-updates")
    def allow_updates(name: str = typer.Argument(..., help="The client's name.")) -> None:
        """Let a client post status updates (a back-office desk or partner system), from its
        next update on."""
        _set_updates(name, allowed=True)

    @clients.command("deny-updates")
    def deny_updates(name: str = typer.Argument(..., help="The client's name.")) -> None:
        """Stop a client posting status updates, from its next update on; it may still create
        and read requests."""
        _set_updates(name, allowed=False)


def _set_updates(name: str, *, allowed: bool) -> None:
    with runtime() as rt:
        if not rt.store.allow_client_updates(name, allowed):
            typer.echo(f"error: no active client named {name!r}", err=True)
            raise typer.Exit(1)
    if allowed:
        typer.echo(f"client {name!r} may post status updates")
    else:
        typer.echo(f"client {name!r} may no longer post status updates")
