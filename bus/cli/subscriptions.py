"""`civicbus subscriptions add|list|remove`: webhook subscriptions of back-office systems."""

from __future__ import annotations

import typer

from bus import subscriptions as subs
from bus.broker.connection import (
    BrokerUnavailable,
    broker_errors,
    close_quietly,
    connect,
    connection_parameters,
)
from bus.cli import command_group
from bus.cli.common import runtime
from bus.subscriptions import SubscriptionError


def register(app: typer.Typer) -> None:
    group = command_group(help="Webhooks that receive civicbus events.", no_args_is_help=True)
    app.add_typer(group, name="subscriptions")

    @group.command("add")
    def add(
        url: str,
        events: list[str] = typer.Option(
            ..., "--events", help="Event patterns, e.g. 'request.*' or 'request.closed'."
        ),
        secret_env: str | None = typer.Option(
            None, "--secret-env", help="Environment variable holding the HMAC signing secret."
        ),
    ) -> None:
        """Subscribe URL to events; its queue starts collecting them at once."""
        with runtime() as rt:
            connection_parameters(rt.env.amqp_url)  # a malformed URL stops us before storing
            qualifiers = subs.Qualifiers.of(rt.config)
            try:
                # Before connecting, so that a mistake is said even with the broker down.
                subs.check_subscription(url, events, secret_env=secret_env, qualifiers=qualifiers)
            except SubscriptionError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from exc
            try:
                connection = connect(rt.env.amqp_url)
                try:
                    # Stored with its own fresh queue or not at all: without one it would miss
                    # events, or later adopt a leftover queue of the same name.
                    with broker_errors("declaring the subscription's queue"):
                        subscription = subs.add_subscription(
                            rt.store,
                            url,
                            events,
                            channel=connection.channel(),
                            secret_env=secret_env,
                            qualifiers=qualifiers,
                        )
                finally:
                    close_quietly(connection)
            except BrokerUnavailable as exc:
                typer.echo(
                    f"error: the broker cannot be reached ({exc}); nothing was subscribed, "
                    "try again once it is back",
                    err=True,
                )
                raise typer.Exit(1) from exc
        typer.echo(f"subscription {subscription.id}: {url} <- {', '.join(events)}")
        if secret_env is None:
            typer.echo(
                "warning: no --secret-env: its events go out unsigned, and the receiver cannot "
                "tell them from anyone else's POSTs (remove it and add it again with a secret)",
                err=True,
            )

    @group.command("list")
    def list_() -> None:
        """The active subscriptions."""
        with runtime() as rt:
            found = rt.store.list_subscriptions()
            qualifiers = subs.Qualifiers.of(rt.config)
        if not found:
            typer.echo("no subscriptions")
        for s in found:
            secret = f" (signed with ${s.secret_env})" if s.secret_env else " (unsigned)"
            events = ", ".join(
                p if _matches(p, qualifiers) else f"{p} (matches no event)" for p in s.events
            )
            typer.echo(f"{s.id:>4}  {s.url}  {events}{secret}")

    @group.command("remove")
    def remove(subscription_id: int = typer.Argument(..., metavar="ID")) -> None:
        """Stop delivering to a subscription, delete its queues (undelivered events and its
        dead-letter queue) and drop its dead letters (kept in the store, marked dropped: no
        replay could reach it)."""
        with runtime() as rt:
            connection_parameters(rt.env.amqp_url)  # a malformed URL stops us before removing

            def discard(sid: int) -> int:
                connection = connect(rt.env.amqp_url)
                try:
                    with broker_errors("deleting the subscription's queues"):
                        return subs.delete_queue(connection.channel(), sid)
                finally:
                    close_quietly(connection)

            removal = subs.remove_subscription(rt.store, subscription_id, discard=discard)
            if removal is None:
                typer.echo(f"error: no active subscription {subscription_id}", err=True)
                raise typer.Exit(1)
        dropped = f"{removal.dropped_dead_letters} dead letter(s) dropped"
        if removal.queue_left_on_broker is not None:
            typer.echo(f"subscription {subscription_id} removed; {dropped}")
            typer.echo(
                f"warning: its queue, with any undelivered events, is left on the broker "
                f"({removal.queue_left_on_broker})",
                err=True,
            )
            return
        typer.echo(
            f"subscription {subscription_id} removed; {removal.discarded_events} undelivered "
            f"event(s) discarded with its queue, {dropped}"
        )


def _matches(pattern: str, qualifiers: subs.Qualifiers) -> bool:
    """Whether a stored pattern can match an event (one stored before patterns were checked,
    or naming an instance or service since removed from the config, may not)."""
    try:
        subs.check_pattern(pattern, qualifiers)
    except SubscriptionError:
        return False
    return True
