"""`civicbus audit verify` and `civicbus audit trail REQUEST_ID`."""

from __future__ import annotations

import json
import re

import typer

from bus.cli import command_group
from bus.cli.common import runtime
from bus.store import AuditEntry

_HASH = re.compile(r"[0-9a-f]{64}")


def register(app: typer.Typer) -> None:
    group = command_group(help="The hash-chained audit log.", no_args_is_help=True)
    app.add_typer(group, name="audit")

    @group.command("verify")
    def verify(
        expect_head: str | None = typer.Option(
            None,
            "--expect-head",
            help="A head hash printed by an earlier verify: it must still be on the chain.",
        ),
    ) -> None:
        """Check the hash chain: an edited, deleted or inserted entry is reported. Entries cut
        from the end along with a rewritten head are found only against a head recorded
        elsewhere earlier (--expect-head)."""
        if expect_head is not None and not _HASH.fullmatch(expect_head.lower()):
            raise typer.BadParameter(
                f"{expect_head!r} is not a head hash: 64 hexadecimal digits, as "
                "`civicbus audit verify` prints it",
                param_hint="--expect-head",
            )
        with runtime(existing_store=True) as rt:
            result = rt.store.verify_audit(expect_head and expect_head.lower())
        if result.ok:
            typer.echo(f"audit log intact: {result.entries} entries, chain verified")
            # The head row sits next to the chain: only a copy kept elsewhere shows a cut end.
            typer.echo(
                f"head {result.head} (entry {result.entries}): keep it outside the store and "
                "check later with --expect-head"
            )
            return
        if result.broken_at is None:  # an intact chain without the expected head
            typer.echo(f"audit log: {result.reason}", err=True)
        else:
            typer.echo(
                f"audit log BROKEN at entry {result.broken_at}: {result.reason} "
                f"({result.entries} entries read)",
                err=True,
            )
        raise typer.Exit(1)

    @group.command("trail")
    def trail(
        request_id: str = typer.Argument(
            ..., help="A request id, or the batch token a resident was given instead."
        ),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    ) -> None:
        """Show every hop of one request, oldest first."""
        with runtime(existing_store=True) as rt:
            entries = rt.store.audit_trail(request_id)
            # A resident of a batch service only has a token: it names its request.
            resolved = None if entries else rt.store.resolve_token(request_id)
            if resolved is not None:
                entries = rt.store.audit_trail(resolved)
        if resolved is not None:
            typer.echo(f"token {request_id} is request {resolved}", err=True)
        if not entries:
            known = f"request {resolved}" if resolved else f"request {request_id}"
            token = "" if resolved else " (nor is it a batch token)"
            typer.echo(f"error: no audit entries for {known}{token}", err=True)
            raise typer.Exit(1)
        for entry in entries:
            typer.echo(_as_json(entry) if as_json else _as_line(entry))


def _as_line(entry: AuditEntry) -> str:
    details = " ".join(f"{k}={v}" for k, v in sorted(entry.details.items()))
    message = f" msg={entry.message_id}" if entry.message_id else ""
    return (
        f"{entry.at.isoformat(timespec='milliseconds')}  {entry.action:<16} {entry.outcome:<9} "
        f"{entry.actor}{message}  {details}".rstrip()
    )


def _as_json(entry: AuditEntry) -> str:
    return json.dumps(
        {
            "id": entry.id,
            "at": entry.at.isoformat(),
            "actor": entry.actor,
            "action": entry.action,
            "request_id": entry.request_id,
            "message_id": entry.message_id,
            "outcome": entry.outcome,
            "details": entry.details,
            "hash": entry.hash,
        },
        sort_keys=True,
    )
