"""Is a worker alive, and is it hung? Judged from the reports workers write to the store
(`bus.worker.Heartbeat`), for `civicbus status`, `civicbus requests stuck` and /metrics; and is
the relay's report that the broker blocks its publishing still its word.

The API imports it for /metrics, so it does not import the worker package (and with it the
broker client) at module level."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from adapters.webhook import DEFAULT_TIMEOUT as WEBHOOK_TIMEOUT
from bus.config import InstanceConfig, RetryPolicy
from bus.store import BrokerBlock, WorkerLiveness
from bus.subscription_names import ROUTE_PREFIX
from bus.subscriptions import SUBSCRIPTION_RETRY

#: Seconds between two reports of a worker: rare enough to cost nothing next to its messages.
HEARTBEAT_INTERVAL = 10.0
#: Reports silent this long are removed by the next report of any worker: a worker that died is
#: named by `civicbus status` for that long, then forgotten.
FORGET_AFTER = timedelta(hours=1)

#: A worker whose last report is older than this (six missed heartbeats) crashed, was killed or
#: is frozen: a store busy for a few seconds or a long pause of the process is not yet that.
SILENT_AFTER = max(timedelta(minutes=1), timedelta(seconds=6 * HEARTBEAT_INTERVAL))
#: One message in hand for less than this is never taken as hung, whatever the instance's
#: timeouts: a quick back-end's worker also waits on the store's locks and the group commit.
HUNG_FLOOR = timedelta(minutes=2)
#: A back-end call's bound when an instance's settings name no timeout: the built-in adapters'
#: defaults are 10 s per HTTP or SOAP call and 30 s per SQL statement.
DEFAULT_CALL_TIMEOUT = 30.0


#: A blocked relay says so again every third of its lease (5 s by default), and at most a
#: reconnect backoff (15 s) later after pika gave a blocked connection up (a blocked worker with
#: each heartbeat); a report older than this is from a publisher that died or stopped saying it:
#: it is not shown as the broker's state, and the next worker heartbeat removes it.
BLOCK_REPORT_STALE = timedelta(minutes=2)


def is_silent(worker: WorkerLiveness, now: datetime) -> bool:
    """Whether the worker stopped reporting without saying it stopped."""
    return now - worker.heartbeat_at > SILENT_AFTER


def is_current(block: BrokerBlock, now: datetime) -> bool:
    """Whether a publisher's report that the broker blocks it is recent enough to believe."""
    return now - block.seen_at <= BLOCK_REPORT_STALE


def hung_after(recipient: str, instances: Mapping[str, InstanceConfig]) -> timedelta:
    """How long a worker of this adapter instance (or subscription route) may hold one
    message before it is taken as hung.

    Twice what its timeouts and in-process retries allow: a timeout bounds each phase of a
    call (connecting, each read), not the whole call, so a slow but working back-end overruns
    it; never under HUNG_FLOOR.
    """
    if recipient.startswith(ROUTE_PREFIX):
        # One POST per try; the clock restarts each round, after a wait of up to the last tier.
        budget = _budget(SUBSCRIPTION_RETRY, WEBHOOK_TIMEOUT, calls_per_try=1)
        budget += max(SUBSCRIPTION_RETRY.tiers, default=0.0)
    else:
        config = instances.get(recipient)
        settings = config.settings if config else {}
        policy = config.retry if config else RetryPolicy()
        # The idempotent consumer asks the back-end (find) before it submits: two calls a try.
        budget = _budget(policy, call_timeout(settings), calls_per_try=2)
    return max(HUNG_FLOOR, timedelta(seconds=2 * budget))


def call_timeout(settings: Mapping[str, Any]) -> float:
    """The longest one back-end call may take by an instance's settings: its timeouts added up
    (an Oracle call may wait for a pooled connection, then to connect, then for the statement)."""
    timeouts = [
        float(value)
        for name, value in settings.items()
        if name.endswith("timeout")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and value > 0
    ]
    return sum(timeouts) if timeouts else DEFAULT_CALL_TIMEOUT


def _budget(policy: RetryPolicy, timeout: float, *, calls_per_try: int) -> float:
    """Seconds of one message's quick tries: each try's calls up to the timeout, and up to
    SMALL_RETRY_AFTER between tries."""
    from bus.worker import SMALL_RETRY_AFTER  # here: /metrics (the API) never needs it

    tries = policy.immediate_attempts
    return tries * calls_per_try * timeout + (tries - 1) * SMALL_RETRY_AFTER
