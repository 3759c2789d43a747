"""`civicbus store prune`: delete what the store no longer needs, a batch at a time."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from bus import retention
from bus.cli import command_group
from bus.cli.common import parse_duration, runtime
from bus.retention import RetentionError


def register(app: typer.Typer) -> None:
    group = command_group(help="The store's upkeep: what it keeps, and for how long.")
    app.add_typer(group, name="store", no_args_is_help=True)

    @group.command("prune")
    def prune(
        outbox_sent_before: str = typer.Option(
            f"{retention.OUTBOX_SENT_KEEP.days}d",
            "--outbox-sent-before",
            help="Delete outbox events the relay published longer ago than this (never one "
            "still waiting): 12h, 7d.",
        ),
        idempotency_before: str = typer.Option(
            f"{retention.IDEMPOTENCY_KEEP.days}d",
            "--idempotency-before",
            help="Delete Idempotency-Key records older than this (at least 1d): a create "
            "repeated with such a key after that is a new request.",
        ),
        dead_letters_resolved_before: str = typer.Option(
            f"{retention.DEAD_LETTERS_KEEP.days}d",
            "--dead-letters-resolved-before",
            help="Delete dead letters replayed or dropped longer ago than this (at least 1d; "
            "never one still waiting for a decision): 30d.",
        ),
        batch_size: int = typer.Option(
            retention.BATCH_SIZE, "--batch-size", min=1, max=10_000, help="Rows a transaction."
        ),
    ) -> None:
        """Delete published outbox events, expired Idempotency-Key records and dead letters
        replayed or dropped long ago, a batch per transaction so the API keeps accepting
        meanwhile; audited. An `external_id`'s record and batch tokens are kept: see the
        README's Retention."""
        keep_sent = parse_duration(outbox_sent_before, "--outbox-sent-before")
        keep_idempotency = parse_duration(idempotency_before, "--idempotency-before")
        keep_dead_letters = parse_duration(
            dead_letters_resolved_before, "--dead-letters-resolved-before"
        )
        with runtime() as rt:
            try:
                pruned = retention.prune(
                    rt.store,
                    now=datetime.now(UTC),
                    keep_sent=keep_sent,
                    keep_idempotency=keep_idempotency,
                    keep_dead_letters=keep_dead_letters,
                    batch_size=batch_size,
                )
            except RetentionError as exc:
                option = _OPTIONS.get(exc.setting or "")
                raise typer.BadParameter(str(exc), param_hint=option) from exc
        typer.echo(
            f"{pruned.outbox_events} outbox event(s) published before "
            f"{_when(pruned.outbox_sent_before)} deleted"
        )
        typer.echo(
            f"{pruned.idempotency_keys} Idempotency-Key record(s) stored before "
            f"{_when(pruned.idempotency_before)} deleted"
        )
        typer.echo(
            f"{pruned.dead_letters} dead letter(s) replayed or dropped before "
            f"{_when(pruned.dead_letters_resolved_before)} deleted"
        )


#: The option of each of `retention.prune`'s settings a RetentionError can name.
_OPTIONS = {
    "keep_idempotency": "--idempotency-before",
    "keep_dead_letters": "--dead-letters-resolved-before",
}


def _when(at: datetime) -> str:
    return at.isoformat(timespec="seconds")
