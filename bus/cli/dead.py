"""`civicbus dead list|show|replay|drop|keep`: the dead letter channel, for operators."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from bus import deadletters
from bus.bootstrap import Runtime
from bus.cli import command_group
from bus.cli.common import runtime, service_logging
from bus.deadletters import DeadLetterError
from bus.store import AuditEntry, DeadLetter, DeadLetterState


def register(app: typer.Typer) -> None:
    group = command_group(
        help="Messages an adapter instance gave up on: inspect, replay, drop.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="dead")

    @group.command("list")
    def list_(instance: str) -> None:
        """The instance's dead letters waiting for a decision, oldest first."""
        with runtime(existing_store=True) as rt:
            _known_route(rt, instance)
            letters = deadletters.list_dead_letters(rt.store, instance)
            removed = deadletters.is_removed_subscription(rt.store, instance)
            unconfigured = deadletters.is_unconfigured_instance(instance, rt.config.instances)
        if not letters:
            typer.echo(f"no dead letters for {instance}")
            return
        for line in _table(_HEADER, [_row(letter) for letter in letters]):
            typer.echo(line)
        if removed:
            typer.echo(
                f"note: {instance} is a removed webhook subscription, no replay can reach it: "
                f"`civicbus dead drop {instance} --all` gives up on these",
                err=True,
            )
        if unconfigured:
            typer.echo(
                f"note: {instance} is no adapter instance in the config (renamed or removed?): "
                "`civicbus dead replay` refuses it until the instance is back in the config; "
                f"`civicbus dead drop {instance} --all` gives up on these",
                err=True,
            )

    @group.command("show")
    def show(dead_letter_id: int = typer.Argument(..., metavar="ID")) -> None:
        """One dead letter in full: its reason, the stored message, and its history (when it
        was dead-lettered, replayed or dropped, from its request's audit trail)."""
        with runtime(existing_store=True) as rt, _operator_errors():
            letter = deadletters.get_dead_letter(rt.store, dead_letter_id)
            history = deadletters.history(rt.store, letter)
        typer.echo(json.dumps(_document(letter, history), indent=2, ensure_ascii=False))

    @group.command("replay")
    def replay(
        instance: str,
        ids: list[str] = typer.Argument(None, metavar="[ID]...", show_default=False),
        replay_all: bool = typer.Option(False, "--all", help="Replay every waiting dead letter."),
    ) -> None:
        """Send dead letters back to the instance's queue (through the outbox and the relay); the
        instance must be in the config."""
        if not ids and not replay_all:
            _usage("name dead letter IDs or --all")
        if ids and replay_all:
            _usage("name dead letter IDs or --all, not both")
        numbers = _ids(ids or [], "dead replay INSTANCE ID...")
        with runtime(existing_store=True) as rt, _operator_errors():
            _known_route(rt, instance)
            deadletters.check_replayable_route(rt.store, instance, rt.config.instances)
            letters = deadletters.replay(rt.store, instance, None if replay_all else numbers)
            others = _resolved_by_others(rt, numbers, letters)
        for letter in letters:
            typer.echo(f"replayed {letter.id} (request {letter.request_id or '-'})")
        typer.echo(f"{len(letters)} dead letter(s) replayed to {instance}")
        _report_others(others, "replayed")

    @group.command("drop")
    def drop(
        args: list[str] = typer.Argument(..., metavar="[INSTANCE] ID..."),
        drop_all: bool = typer.Option(
            False, "--all", help="Drop every waiting dead letter of INSTANCE."
        ),
    ) -> None:
        """Give up on dead letters for good (kept in the store, marked dropped).

        The instance may be named first, as for replay: then each ID must be one of its
        dead letters; or name only the instance, with --all.
        """
        instance = None if _is_id(args[0]) else args[0]
        numbers = _ids(args[1:] if instance else args, "dead drop [INSTANCE] ID...")
        if drop_all and (instance is None or numbers):
            _usage("with --all, name the instance only: dead drop INSTANCE --all")
        if not numbers and not drop_all:
            _usage(f"name the dead letter IDs of {instance} to drop, or --all")
        with runtime(existing_store=True) as rt, _operator_errors():
            if instance is not None:
                _known_route(rt, instance)
            letters = (
                deadletters.drop_all(rt.store, instance)
                if drop_all and instance is not None
                else deadletters.drop(rt.store, numbers, instance=instance)
            )
            others = _resolved_by_others(rt, numbers, letters)
        for letter in letters:
            typer.echo(f"dropped {letter.id} (request {letter.request_id or '-'})")
        if drop_all:
            typer.echo(f"{len(letters)} dead letter(s) of {instance} dropped")
        _report_others(others, "dropped")

    @group.command("keep")
    def keep() -> None:
        """Drain the broker's dead-letter queues into the store, until SIGTERM or Ctrl-C.

        Messages the broker dead-lettered itself (too many deliveries) become dead letters
        that `dead list` shows; those a worker put there are in the store already.
        """
        from bus.dead_queues import DeadQueueKeeper

        service_logging()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        with runtime() as rt:  # a service: it may be the first part to open a new store
            instances = list(rt.config.instances)
            store = rt.store

            def routes() -> list[str]:
                return deadletters.drained_routes(store, instances)

            DeadQueueKeeper(rt.env.amqp_url, store, routes, stop=stop).run()


def _usage(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _is_id(word: str) -> bool:
    return word.isascii() and word.isdigit()


def _ids(words: list[str], usage: str) -> list[int]:
    """Dead letter ids from the command line; exit 2 naming the first word that is none."""
    for word in words:
        if not _is_id(word):
            _usage(f"{word!r} is not a dead letter ID (a number, as `dead list` shows): {usage}")
    return [int(word) for word in words]


@contextmanager
def _operator_errors() -> Iterator[None]:
    """Turn a DeadLetterError into its message and exit code 1."""
    try:
        yield
    except DeadLetterError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _resolved_by_others(
    rt: Runtime, asked: list[int], done: list[DeadLetter]
) -> list[tuple[int, DeadLetter | None]]:
    """The letters asked for that were not acted on, as they are now: another operator
    replayed or dropped each between this command's check and its change."""
    acted = {letter.id for letter in done}
    return [(i, rt.store.get_dead_letter(i)) for i in dict.fromkeys(asked) if i not in acted]


def _report_others(others: list[tuple[int, DeadLetter | None]], verb: str) -> None:
    """Name each letter left to another operator; exit 1 then: not all that was asked was
    done by this command."""
    for dead_letter_id, now in others:
        if now is not None and now.state is not DeadLetterState.DEAD:
            how = f"someone else {now.state.value} it first"
        else:  # resolved and since dead-lettered again, or pruned
            how = f"someone else acted on it first (`civicbus dead show {dead_letter_id}`)"
        typer.echo(f"error: dead letter {dead_letter_id} was not {verb}: {how}", err=True)
    if others:
        raise typer.Exit(1)


def _known_route(rt: Runtime, instance: str) -> None:
    """Exit 2 when `instance` names nothing dead letters can be filed under: a typo must not
    read as "no dead letters"."""
    known = deadletters.known_routes(rt.store, rt.config.instances)
    if instance not in known:
        typer.echo(
            f"error: {instance!r} is no adapter instance, webhook subscription (sub.<id>) or "
            f"name with dead letters (known: {', '.join(known) or 'none'})",
            err=True,
        )
        raise typer.Exit(2)


_HEADER = ("ID", "REQUEST", "ATTEMPTS", "FIRST FAILURE", "LAST FAILURE", "REASON")
#: The columns of numbers, aligned to the right.
_NUMBERS = frozenset({0, 2})


def _row(letter: DeadLetter) -> tuple[str, ...]:
    return (
        str(letter.id),
        letter.request_id or "-",
        str(letter.attempts),
        letter.first_failed_at.isoformat(timespec="seconds"),
        letter.last_failed_at.isoformat(timespec="seconds"),
        letter.reason,
    )


def _table(
    header: tuple[str, ...], rows: list[tuple[str, ...]], right: frozenset[int] = _NUMBERS
) -> list[str]:
    """Lines with each column as wide as its widest cell (`right` ones aligned right); the
    last column, free text, is not padded."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for cells in (header, *rows):
        padded = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells[:-1], widths, strict=False))
        ]
        lines.append("  ".join([*padded, cells[-1]]))
    return lines


def _document(letter: DeadLetter, history: list[AuditEntry]) -> dict[str, object]:
    return {
        "id": letter.id,
        "instance": letter.instance,
        "state": letter.state.value,
        "request_id": letter.request_id,
        "message_id": letter.message_id,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "first_failed_at": letter.first_failed_at.isoformat(),
        "last_failed_at": letter.last_failed_at.isoformat(),
        # Replayed or dropped: when (`civicbus store prune` deletes it some time after).
        "resolved_at": letter.resolved_at.isoformat() if letter.resolved_at else None,
        "history": [
            {
                "at": entry.at.isoformat(),
                "action": entry.action,
                "actor": entry.actor,
                "outcome": entry.outcome,
                "details": entry.details,
            }
            for entry in history
        ],
        "envelope": letter.envelope,
    }
