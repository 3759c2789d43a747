"""How long a worker may hold one message before `civicbus status` calls it hung: twice its
instance's time budget (timeouts of each call, in-process tries), never under the floor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bus.config import InstanceConfig, RetryPolicy
from bus.liveness import HUNG_FLOOR, SILENT_AFTER, call_timeout, hung_after, is_silent
from bus.store import WorkerLiveness


def test_an_instance_without_timeouts_gets_the_default_call_bound() -> None:
    # Three tries of find + submit at 30 s each, two pauses of up to 2 s: 184 s, doubled.
    assert hung_after("roads", {"roads": InstanceConfig(kind="sap")}) == timedelta(seconds=368)


def test_the_timeouts_of_a_call_add_up() -> None:
    oracle = {"pool_timeout": 10, "connect_timeout": 10, "call_timeout": 30, "pool_size": 5}
    assert call_timeout(oracle) == 50
    assert call_timeout({"timeout": 10, "verify": True}) == 10
    one_try = InstanceConfig(
        kind="oracle", settings=oracle, retry=RetryPolicy(immediate_attempts=1)
    )
    assert hung_after("wo", {"wo": one_try}) == timedelta(seconds=200)


def test_a_quick_instance_is_held_to_the_floor() -> None:
    quick = InstanceConfig(kind="parks", settings={"timeout": 1})
    assert hung_after("parks", {"parks": quick}) == HUNG_FLOOR


def test_a_webhook_round_includes_its_wait_before_the_next() -> None:
    # Three POSTs of 10 s, two pauses of up to 2 s, then up to 240 s before the next round.
    assert hung_after("sub.7", {}) == timedelta(seconds=2 * (30 + 4 + 240))


def test_a_worker_is_silent_once_its_report_is_older_than_the_threshold() -> None:
    now = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
    worker = WorkerLiveness("w", "roads", "host", 1, now, now - SILENT_AFTER)
    assert not is_silent(worker, now)
    assert is_silent(worker, now + timedelta(seconds=1))
