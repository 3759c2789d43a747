"""`civicbus requests stuck`: the requests no back-end has taken yet, and where each one is;
`civicbus requests show ID`: one request as an operator needs to see it, found by its id, its
batch token or a back-end's reference for it;
`civicbus requests take-down ID`: a report's description, written answers and photos no longer
public."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import typer

from bus import takedown
from bus.bootstrap import Runtime
from bus.broker.connection import (
    BrokerUnavailable,
    broker_errors,
    close_quietly,
    connect,
)
from bus.broker.queues import queue_states
from bus.broker.topology import work_queue
from bus.cli import command_group
from bus.cli.common import UNIT_SECONDS, parse_duration, runtime
from bus.liveness import is_silent
from bus.store import Undelivered, WorkerLiveness
from bus.whereabouts import Whereabouts, whereabouts
from schemas.model import ServiceRequest


def register(app: typer.Typer) -> None:
    group = command_group(help="Citizen-service requests, as an operator looks at them.")
    app.add_typer(group, name="requests", no_args_is_help=True)

    @group.command("stuck")
    def stuck(
        older_than: str = typer.Option(
            "10m",
            "--older-than",
            help="Only requests accepted longer ago than this: 90s, 10m, 2h, 1d.",
        ),
        limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="At most this many."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    ) -> None:
        """Open requests no back-end has taken yet, oldest first, with where each is stuck
        (outbox, queue, retries, dead letters) and what to try. Exit code 1 when there are any
        but those whose dead letter an operator dropped (listed still: a decision, not a
        fault, which a monitoring check must not report for ever)."""
        age = parse_duration(older_than, "--older-than")
        now = datetime.now(UTC)
        with runtime(existing_store=True) as rt:
            items = rt.store.undelivered(accepted_before=now - age, limit=limit)
            holders = _holders(rt.store.workers(), now) if items else {}
            unconsumed = _unconsumed(items, rt.env.amqp_url)
            configured = set(rt.config.instances)
        if not items:
            if not as_json:
                typer.echo(f"no open request accepted over {older_than} ago lacks a back-end")
            return
        if not as_json:
            typer.echo(
                f"{'REQUEST':<26} {'SERVICE':<12} {'AGE':>6}  {'STAGE':<13} {'INSTANCE':<18} WHAT"
            )
        stuck = False
        for item in items:
            held_by = holders.get(item.request_id)
            where = whereabouts(
                item,
                now=now,
                unconsumed=unconsumed,
                held_by=held_by,
                configured=configured,
            )
            stuck = stuck or where.stage != "dropped"
            typer.echo(_as_json(item, where) if as_json else _as_lines(item, where, now))
        if stuck:
            # Non-zero so that a cron job or a monitoring check can alert on it.
            raise typer.Exit(1)

    @group.command("show")
    def show(
        request_id: str = typer.Argument(
            ...,
            metavar="ID",
            help="A request id, a batch token, or a back-end's reference for it (e.g. a work "
            "order number).",
        ),
        as_json: bool = typer.Option(False, "--json", help="One JSON object."),
    ) -> None:
        """One request as an operator needs it: status, history and the back-end holding it,
        or where it is stuck and what to try; its dead letters. No personal data."""
        now = datetime.now(UTC)
        with runtime(existing_store=True) as rt:
            shown = _show(rt, request_id, now)
        typer.echo(_shown_json(shown) if as_json else _shown_lines(shown))

    @group.command("take-down")
    def take_down(
        request_id: str = typer.Argument(..., metavar="ID", help="A request id or batch token."),
        description: bool = typer.Option(
            False,
            "--description",
            help="Take down what the resident wrote: the description and the answers to string "
            "and text attributes (alone, unless --media is named too).",
        ),
        media: bool = typer.Option(
            False,
            "--media",
            help="Take down the photos and documents (alone, unless --description is named too).",
        ),
    ) -> None:
        """Take down what a resident wrote or photographed, when it must not stay public
        (an erasure request covering a photo, moderation).

        The description then reads "\\[description removed]", each answer the resident wrote
        (string and text attributes, and any answer the service no longer defines) reads
        "\\[answer removed]", and the media are gone, from the Open311 reads and from every
        copy the store keeps (outbox events, dead letters); a photo's file is deleted unless
        another request shows the same file. Naming neither --description nor --media takes
        down both. The request, its status, history and back-end references stay; audited.
        Running it again is harmless. Subscribers are told by a civicbus.request.taken_down
        event, Open311 clients by its updated_datetime; what a back-end was sent stays there:
        the answer names the back-ends."""
        # Here, not at the top: importing bus.api loads FastAPI, which no other command needs.
        from bus.api.media import MediaStore

        both = not (description or media)
        with runtime(existing_store=True) as rt:
            files = MediaStore(Path(rt.env.media_dir), rt.config.api.base_url)
            try:
                done = takedown.take_down(
                    rt.store,
                    files,
                    request_id,
                    services=rt.config.service_catalogue(),
                    description=description or both,
                    media=media or both,
                )
            except takedown.TakeDownError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from exc
        out, notes = _taken_down_lines(done)
        for line in out:
            typer.echo(line)
        for line in notes:
            typer.echo(f"note: {line}", err=True)


def _taken_down_lines(done: takedown.TakenDown) -> tuple[list[str], list[str]]:
    """What `requests take-down` says: its answer, and the notes on copies it cannot reach."""
    if not done.changed:
        out = [
            f"request {done.request_id}: nothing left to take down (taken down before, or "
            "reported without it): nothing changed"
        ]
    else:
        out = [f"request {done.request_id} taken down"]
        if done.description:
            out.append(f"  description  now reads {takedown.TAKEN_DOWN!r}")
        if done.answers:
            reads = "reads" if len(done.answers) == 1 else "read"
            out.append(
                f"  attributes   {', '.join(done.answers)} now {reads} "
                f"{takedown.ANSWER_TAKEN_DOWN!r}"
            )
        if done.media:
            files = [f"{done.files_deleted} file(s) deleted"]
            if done.files_shared:
                files.append(f"{done.files_shared} kept: another request shows the same file")
            if done.files_missing:
                files.append(f"{done.files_missing} already gone")
            out.append(f"  media        {done.media} removed ({'; '.join(files)})")
        elif done.files_deleted:
            out.append(f"  media        {done.files_deleted} file(s) deleted")
        copies = done.events_waiting + done.events_published + done.dead_letters
        if copies:
            out.append(
                f"  copies       {done.events_waiting} outbox event(s) waiting, "
                f"{done.events_published} published, {done.dead_letters} dead letter(s) "
                "rewritten"
            )
        if done.event_id:
            out.append(
                f"  event        civicbus.request.taken_down {done.event_id} queued: "
                "subscribers (queues, webhooks) are told to overwrite their copy"
            )
    notes = []
    if done.delivered_to:
        notes.append(
            f"delivered to {', '.join(done.delivered_to)}: the description, answers and media "
            "that system was sent stay there; take them down there too"
        )
    if done.events_published:
        notes.append(
            f"{done.events_published} event(s) with the old content had been published: "
            "subscribers (queues, webhooks) received it"
            + (", and get the taken_down event next" if done.event_id else "")
        )
    return out, notes


def _show(rt: Runtime, given: str, now: datetime) -> _Shown:
    """The request `given` names (an id, a batch token or a back-end's reference) with its
    path, and where it is when no back-end holds it yet; typer.Exit(1) for an unknown one."""
    request = rt.store.request_by_id_or_token(given) or _by_reference(rt, given)
    path = rt.store.path_of(request.id) if request else None
    if request is None or path is None:
        typer.echo(
            f"error: no request, batch token or back-end reference {given!r} in this store",
            err=True,
        )
        raise typer.Exit(1)
    where = None
    if not request.backend_refs and not request.status.is_closed:
        held_by = _holders(rt.store.workers(), now).get(request.id)
        where = whereabouts(
            path,
            now=now,
            unconsumed=_unconsumed([path], rt.env.amqp_url),
            held_by=held_by,
            configured=set(rt.config.instances),
        )
    return _Shown(request, path, where)


def _by_reference(rt: Runtime, reference: str) -> ServiceRequest | None:
    """The request a back-end (of the config, or one since removed) holds as `reference`;
    typer.Exit(1) when back-ends hold several under it (their numbers are their own)."""
    adapters = {*rt.config.instances, *rt.store.declared_instances()}
    holding = rt.store.holding_reference(reference, adapters)
    if len(holding) > 1:
        typer.echo(
            f"error: {len(holding)} requests have the back-end reference {reference!r}; "
            "show one by its id:",
            err=True,
        )
        for request_id, adapter in holding:
            typer.echo(f"  {request_id}  ({adapter})", err=True)
        raise typer.Exit(1)
    return rt.store.get_request(holding[0][0]) if holding else None


@dataclass(frozen=True)
class _Shown:
    request: ServiceRequest
    path: Undelivered
    #: Where it is stuck; None once a back-end holds it (or it was closed before one did).
    where: Whereabouts | None


def _shown_lines(shown: _Shown) -> str:
    r, where = shown.request, shown.where
    lines = [
        f"request   {r.id}  {r.service_code} ({r.service_name}), {r.jurisdiction}, "
        f"{r.channel.value}, accepted {_iso(r.requested_at)}",
        f"status    {r.status.value}, updated {_iso(r.updated_at)}",
    ]
    if r.taken_down_at is not None:
        lines.append(
            f"taken down {_iso(r.taken_down_at)}: parts of the report are no longer public "
            "(which: the trail's report_taken_down entries)"
        )
    for ref in r.backend_refs:
        lines.append(
            f"back-end  {ref.adapter}: {ref.reference} (submitted {_iso(ref.submitted_at)})"
        )
    if where is not None:
        lines.append(
            f"where     {where.stage} at {where.instance or '-'} since {_iso(where.since)}"
        )
        lines.append(f"          {where.detail}")
        lines.append(f"          try: {where.hint}")
    elif not r.backend_refs:
        lines.append("where     closed before any back-end took it")
    for note in r.history:
        said = f": {note.note}" if note.note else ""
        lines.append(f"history   {_iso(note.at)}  {note.status.value:<14} {note.source}{said}")
    for letter in shown.path.dead_letters:
        lines.append(
            f"dead      #{letter.id} {letter.instance} {letter.state.value}, "
            f"{letter.attempts} attempt(s), last {_iso(letter.last_failed_at)}: {letter.reason}"
        )
    lines.append(f"trail     {len(shown.path.trail)} audit entries: `civicbus audit trail {r.id}`")
    return "\n".join(lines)


def _shown_json(shown: _Shown) -> str:
    r, where = shown.request, shown.where
    return json.dumps(
        {
            "request_id": r.id,
            "jurisdiction": r.jurisdiction,
            "service_code": r.service_code,
            "channel": r.channel.value,
            "status": r.status.value,
            "accepted_at": _iso(r.requested_at),
            "updated_at": _iso(r.updated_at),
            "taken_down_at": None if r.taken_down_at is None else _iso(r.taken_down_at),
            "backend_refs": [ref.model_dump(mode="json") for ref in r.backend_refs],
            "where": None
            if where is None
            else {
                "stage": where.stage,
                "instance": where.instance,
                "since": _iso(where.since),
                "detail": where.detail,
                "hint": where.hint,
            },
            "history": [
                note.model_dump(mode="json", include={"status", "at", "note", "source"})
                for note in r.history
            ],
            "dead_letters": [
                {
                    "id": letter.id,
                    "instance": letter.instance,
                    "state": letter.state.value,
                    "attempts": letter.attempts,
                    "reason": letter.reason,
                    "last_failed_at": _iso(letter.last_failed_at),
                }
                for letter in shown.path.dead_letters
            ],
            "audit_entries": len(shown.path.trail),
        },
        sort_keys=True,
    )


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds")


def _holders(workers: list[WorkerLiveness], now: datetime) -> dict[str, WorkerLiveness]:
    """The live workers holding a request now, by request id (a silent worker's message went
    back to its queue when its connection dropped)."""
    return {
        w.request_id: w
        for w in workers
        if w.request_id is not None and w.working_since is not None and not is_silent(w, now)
    }


def _unconsumed(items: list[Undelivered], amqp_url: str) -> set[str]:
    """The instances these requests went to whose work queue has no consumer (as `civicbus
    status` tells it); none known when the broker cannot be reached, which is then said."""
    instances = {where.instance for where in map(whereabouts, items) if where.instance}
    if not instances:
        return set()
    queues = {work_queue(instance): instance for instance in instances}
    try:
        connection = connect(amqp_url)
        try:
            with broker_errors("asking for the work queues' consumers"):
                states = queue_states(connection, queues)
        finally:
            close_quietly(connection)
    except BrokerUnavailable as exc:
        typer.echo(f"(the broker could not say which workers run: {exc})", err=True)
        return set()
    return {queues[q] for q, state in states.items() if state is not None and not state.consumers}


def _age(since: datetime, now: datetime) -> str:
    seconds = max(0, int((now - since).total_seconds()))
    for unit in "dhm":
        if seconds >= UNIT_SECONDS[unit]:
            return f"{seconds // UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def _as_lines(item: Undelivered, where: Whereabouts, now: datetime) -> str:
    return (
        f"{item.request_id:<26} {item.service_code:<12} {_age(item.accepted_at, now):>6}  "
        f"{where.stage:<13} {where.instance or '-':<18} {where.detail}\n"
        f"{'':<26} {'':<12} {'':>6}  {'':<13} {'':<18} try: {where.hint}"
    )


def _as_json(item: Undelivered, where: Whereabouts) -> str:
    return json.dumps(
        {
            "request_id": item.request_id,
            "jurisdiction": item.jurisdiction,
            "service_code": item.service_code,
            "accepted_at": item.accepted_at.isoformat(),
            "stage": where.stage,
            "instance": where.instance,
            "since": where.since.isoformat(),
            "detail": where.detail,
            "hint": where.hint,
        },
        sort_keys=True,
    )
