"""`civicbus privacy forget`: delete residents' contact data no longer needed, or on request."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from bus import retention
from bus.cli import command_group
from bus.cli.common import parse_duration, runtime
from bus.retention import RetentionError


def register(app: typer.Typer) -> None:
    group = command_group(
        help="Residents' personal data: forgetting it once no longer needed, or when asked."
    )
    app.add_typer(group, name="privacy", no_args_is_help=True)

    @group.command("forget")
    def forget(
        closed_before: str | None = typer.Option(
            None,
            "--closed-before",
            help="Every request closed and last updated longer ago than this: 90d, 365d.",
        ),
        request: str | None = typer.Option(
            None,
            "--request",
            metavar="ID",
            help="One request, whatever its status (a resident's erasure request): its id, "
            "or the batch token the resident was given.",
        ),
        batch_size: int = typer.Option(
            retention.BATCH_SIZE, "--batch-size", min=1, max=10_000, help="Requests a transaction."
        ),
    ) -> None:
        """Delete the reporter's contact data (name, e-mail, phone, device and account id) of
        requests; the requests, their history, back-end references and audit trail stay. Each
        request forgotten is audited. Copies a back-end was sent stay there."""
        if (closed_before is None) == (request is None):
            raise typer.BadParameter(
                "name --closed-before DURATION or --request ID (one of them)",
                param_hint="--closed-before / --request",
            )
        if closed_before is not None:
            cutoff = datetime.now(UTC) - parse_duration(closed_before, "--closed-before")
            with runtime() as rt:
                count = retention.forget_closed(
                    rt.store, closed_before=cutoff, batch_size=batch_size
                )
            typer.echo(
                f"reporter contact data forgotten for {count} closed request(s) last updated "
                f"before {cutoff.isoformat(timespec='seconds')}"
            )
            return
        assert request is not None
        with runtime() as rt:
            try:
                done = retention.forget_request(rt.store, request)
            except RetentionError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from exc
        if not done.held_contact:
            typer.echo(
                f"request {done.request_id} holds no reporter contact data (reported without, "
                "or forgotten before): nothing to forget"
            )
        else:
            typer.echo(f"reporter contact data of request {done.request_id} forgotten")
        if done.delivered_to:
            typer.echo(
                f"note: delivered to {', '.join(done.delivered_to)}: contact data its mapping "
                "sent there (personal_data) stays in that system; erase it there",
                err=True,
            )
        elif done.held_contact:
            typer.echo(
                f"note: request {done.request_id} has reached no back-end yet: if it is on its "
                "way (civicbus requests stuck), it arrives without the reporter's contact data",
                err=True,
            )
