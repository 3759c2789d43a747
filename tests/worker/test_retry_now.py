"""`civicbus adapters retry-now`: after an outage, commands waiting in the retry tiers reach the
worker at once instead of after their delay (real broker, real store, a real worker)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from pika import BasicProperties
from typer.testing import CliRunner
from worker_support import (
    INSTANCE,
    MemoryBackend,
    actions,
    channel_on,
    new_request,
    publish,
    queue_depth,
    running,
    wait_until,
)

from bus.broker.topology import declare_topology, retry_queue, work_queue
from bus.cli import app
from bus.config import InstanceConfig, RetryPolicy
from bus.retry_now import retry_now
from bus.store import AuditEntry, Store, StoreUnavailable, Undelivered
from bus.whereabouts import whereabouts
from bus.worker import command_consumer

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]

#: One try per round, then a minute's wait: longer than any wait_until here.
PATIENT = InstanceConfig(
    kind="memory", retry=RetryPolicy(immediate_attempts=1, tiers=[60], max_attempts=5)
)
CONFIG = f"""
jurisdictions: [{{id: springfield.example, name: Springfield}}]
routing: {{default: {INSTANCE}}}
instances:
  {INSTANCE}:
    kind: memory
    retry: {{immediate_attempts: 1, tiers: [60], max_attempts: 5}}
"""


@pytest.fixture
def cli_env(use_config: Callable[[str], dict[str, str]]) -> None:
    use_config(CONFIG)


def test_waiting_commands_reach_the_worker_at_once_with_their_attempt_count(
    cli_env: None, store: Store, amqp_url: str
) -> None:
    backend = MemoryBackend(transient_failures=1)  # down for the first attempt only
    with channel_on(amqp_url) as ch:
        declare_topology(ch, {INSTANCE: PATIENT})
    envelope = new_request(store)
    publish(amqp_url, envelope)

    with running(command_consumer(amqp_url, store, INSTANCE, PATIENT, backend)):
        tier = retry_queue(INSTANCE, 60)
        wait_until(lambda: queue_depth(amqp_url, tier) == 1, what="the command in the 60 s tier")
        # In a process of its own, as an operator runs it (and so that the command's logging
        # set-up does not redirect this process's worker threads).
        moved = subprocess.run(
            [sys.executable, "-m", "civicbus", "adapters", "retry-now", INSTANCE],
            capture_output=True, text=True, timeout=30, env=dict(os.environ),
        )  # fmt: skip
        wait_until(
            lambda: ("submitted", "ok") in actions(store, envelope.subject),
            what="delivery well before the tier's minute",
        )

    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"{tier}: 1 moved" in moved.stdout
    assert backend.calls == 2 and list(backend.created) == [envelope.subject]
    assert queue_depth(amqp_url, tier) == 0
    trail = store.audit_trail(envelope.subject)
    [retried] = [e for e in trail if e.action == "retried_now"]
    assert retried.details == {"instance": INSTANCE, "from": tier}
    assert retried.actor == "cli:adapters" and retried.message_id == envelope.id
    attempts = [e.details["attempt"] for e in trail if e.action in ("attempt", "submitted")]
    assert attempts == [1, 2]  # the moved command kept its attempt count


def test_a_store_failing_during_retry_now_leaves_no_move_unaudited(
    store: Store, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = retry_queue(INSTANCE, 60)
    with channel_on(amqp_url) as ch:
        declare_topology(ch, {INSTANCE: PATIENT})
        ch.confirm_delivery()
        for n in (1, 2):
            ch.basic_publish("", tier, b'{"subject": "req-%d"}' % n, BasicProperties())

    def store_down() -> None:
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(store, "transaction", store_down)
    with pytest.raises(StoreUnavailable):
        retry_now(amqp_url, store, INSTANCE, PATIENT, actor="cli:adapters")
    monkeypatch.undo()

    # Nothing moved without its retried_now entry: both still wait in the tier.
    assert queue_depth(amqp_url, work_queue(INSTANCE)) == 0
    wait_until(lambda: queue_depth(amqp_url, tier) == 2, what="the unacked one back")
    assert retry_now(amqp_url, store, INSTANCE, PATIENT, actor="cli:adapters").total == 2
    audited = [e.request_id for n in (1, 2) for e in store.audit_trail(f"req-{n}")]
    assert audited == ["req-1", "req-2"]
    assert queue_depth(amqp_url, work_queue(INSTANCE)) == 2


def test_nothing_waiting_moves_nothing(cli_env: None, amqp_url: str) -> None:
    moved = CliRunner().invoke(app, ["adapters", "retry-now", INSTANCE])

    assert moved.exit_code == 0, moved.output
    assert f"0 command(s) sent back to {INSTANCE}'s work queue" in moved.output


def test_an_unknown_instance_is_refused(cli_env: None) -> None:
    refused = CliRunner().invoke(app, ["adapters", "retry-now", "roadz"])

    assert refused.exit_code == 2
    assert f"no adapter instance 'roadz' (configured: {INSTANCE})" in refused.output


def _entry(action: str, at: datetime, actor: str, **details: object) -> AuditEntry:
    return AuditEntry(0, at, actor, action, "req-1", "m-1", "ok", dict(details), "", "")


def test_requests_stuck_shows_a_command_retried_now_as_queued_again() -> None:
    at = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
    trail = [
        _entry("retry_scheduled", at, f"worker:{INSTANCE}", attempt=1, delay_seconds=60),
        _entry("retried_now", at, "cli:adapters", instance=INSTANCE, **{"from": "tier"}),
    ]
    item = Undelivered("req-1", "springfield.example", "POTHOLE", at, trail, [])

    where = whereabouts(item)

    assert (where.stage, where.instance) == ("queued", INSTANCE)
    assert "retried now by an operator" in where.detail
