"""`civicbus status`: is the bus moving? The outbox, the relay, every queue and its consumers,
the dead letters, and what to do about each problem."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from datetime import datetime

import typer

from bus.broker.connection import connect
from bus.cli.common import runtime
from bus.liveness import is_silent
from bus.overview import Overview, take_broker_overview, take_overview
from bus.store import (
    NotAnswering,
    StoreUnavailable,
    WorkerLiveness,
    not_answering_advice,
    shown_url,
)


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        as_json: bool = typer.Option(False, "--json", help="One JSON document."),
    ) -> None:
        """The bus at a glance: outbox, relay, workers, queues, consumers, dead letters; then
        the problems, each with what to try (exit code 1 when there is any), and notes."""
        with runtime(existing_store=True) as rt:
            ask_broker = functools.partial(connect, rt.env.amqp_url)
            try:
                overview = take_overview(rt.store, rt.config.instances, ask_broker)
            except StoreUnavailable as exc:
                # The broker can still say what waits where: an operator needs that most now.
                overview = take_broker_overview(
                    rt.config.instances, ask_broker, _store_error(exc, rt.env.database_url)
                )
            store_url = shown_url(rt.env.database_url)
        typer.echo(_as_json(overview) if as_json else _as_text(overview, store_url))
        if overview.problems:
            raise typer.Exit(1)


def _store_error(exc: StoreUnavailable, database_url: str) -> str:
    if isinstance(exc, NotAnswering):
        return f"{exc} ({not_answering_advice(database_url)})"
    return str(exc)


def _as_text(o: Overview, store_url: str) -> str:
    seen = o.store
    oldest = f", oldest since {_time(seen.oldest_waiting)}" if seen.oldest_waiting else ""
    lines = [f"civicbus status at {_time(o.at)}"]
    if o.store_error:
        lines.append(f"store    {store_url}, UNAVAILABLE")
        lines.append("outbox   unknown")
    else:
        lines.append(f"store    {store_url}")
        lines.append(f"outbox   {seen.outbox_waiting} event(s) waiting{oldest}")
    for lease in seen.leases.values():
        state = "active until" if lease.expires_at >= o.at else "expired at"
        lines.append(f"lease    {lease.name}: {lease.holder}, {state} {_time(lease.expires_at)}")
    lines.extend(f"worker   {_worker(w, o.at)}" for w in seen.workers)
    broker = "UNREACHABLE" if o.broker_error else "reachable"
    if block := o.broker_blocked:
        broker += f", BLOCKS PUBLISHING since {_time(block.blocked_since)} ({block.reason})"
    lines.append(f"broker   {broker}")
    lines.append("")
    lines.append(
        f"{'RECIPIENT':<24} {'QUEUED':>7} {'HELD':>5} {'CONSUMERS':>9} {'RETRYING':>8} "
        f"{'DEAD QUEUE':>10} {'DEAD LETTERS':>12}"
    )
    for c in o.recipients:
        lines.append(
            f"{c.name:<24} {_n(c.queued):>7} {_n(c.held):>5} {_n(c.consumers):>9} "
            f"{_n(c.retrying):>8} "
            f"{_n(c.dead_in_queue):>10} {_n(c.dead_letters):>12}"
        )
    lines.append("")
    if not o.problems:
        lines.append("problems: none")
    else:
        lines.append("problems:")
        lines.extend(f"  - {problem}" for problem in o.problems)
    if o.notes:
        lines.append("notes:")
        lines.extend(f"  - {note}" for note in o.notes)
    return "\n".join(lines)


def _worker(w: WorkerLiveness, at: datetime) -> str:
    silent = is_silent(w, at)
    heard = f"silent since {_time(w.heartbeat_at)}" if silent else "reporting"
    since = w.working_since
    doing = f"on {w.request_id or w.message_id} since {_time(since)}" if since else "idle"
    # A silent worker's messages went back to the queue once the broker gave up on it.
    holds = "held {} unacknowledged when it last reported" if silent else "holds {} unacknowledged"
    holding = ", " + holds.format(w.held) if w.held else ""
    return f"{w.recipient}: {w.name}, {heard}, {doing}{holding}"


def _as_json(o: Overview) -> str:
    oldest = o.store.oldest_waiting
    document = {
        "at": o.at.isoformat(),
        # Why the store could not be read; the store's parts below are then empty or null.
        "store_error": o.store_error,
        "outbox": {
            "waiting": None if o.store_error else o.store.outbox_waiting,
            "oldest_waiting": oldest.isoformat() if oldest else None,
        },
        "leases": {
            name: {"holder": lease.holder, "expires_at": lease.expires_at.isoformat()}
            for name, lease in o.store.leases.items()
        },
        "broker_error": o.broker_error,
        # The relay's report of a resource alarm holding its publishes (None: none current).
        "broker_blocked": asdict(o.broker_blocked) if o.broker_blocked else None,
        "workers": [{**asdict(w), "silent": is_silent(w, o.at)} for w in o.store.workers],
        "recipients": [asdict(c) for c in o.recipients],
        "unconfigured_routes": [asdict(r) for r in o.unconfigured],
        "removed_instances": [asdict(r) for r in o.removed],
        "problems": o.problems,
        "notes": o.notes,
    }
    # Times (a worker's, a failing subscriber's, a poller's) are written as ISO 8601.
    return json.dumps(document, sort_keys=True, default=_iso)


def _iso(value: object) -> str:
    if not isinstance(value, datetime):
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return value.isoformat()


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _time(value: datetime) -> str:
    return value.isoformat(timespec="seconds")
