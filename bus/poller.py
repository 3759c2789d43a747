"""The status poller: for back-ends that cannot push, ask each polling adapter instance for
status changes since its watermark and record them (bus.status), so events and Open311 reads
show them.

Many copies may run: a lease per instance in the store lets exactly one of them poll it. The
watermark is saved only after the page's updates are recorded, so a crash in between re-reads
the page, and the repeated `update_id`s are harmless no-ops.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field

import structlog

from adapters import Adapter
from bus.status import record_status_update
from bus.store import Store, StoreUnavailable

log = structlog.get_logger(__name__)

#: Pages read per instance in one round at most, so one busy back-end cannot starve the others.
MAX_PAGES_PER_ROUND = 50


def lease_name(instance: str) -> str:
    return f"poller:{instance}"


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Poller:
    """Polls `adapters` (instance name → adapter with `polls=True`) every `intervals[name]` s."""

    store: Store
    adapters: Mapping[str, Adapter]
    intervals: Mapping[str, float]
    stop: threading.Event = field(default_factory=threading.Event)
    holder: str = field(default_factory=_holder)

    def poll_once(self, instance: str) -> int | None:
        """One round for one instance: the number of updates recorded, or None when another
        copy holds the instance's lease."""
        adapter = self.adapters[instance]
        ttl = max(3 * self.intervals[instance], 10.0)
        if not self.store.try_lease(lease_name(instance), self.holder, ttl):
            return None
        actor = f"poller:{instance}"
        recorded = 0
        for _ in range(MAX_PAGES_PER_ROUND):
            since = self.store.watermark(instance)
            page = adapter.updates(since)
            for update in page.updates:
                try:
                    if record_status_update(self.store, update, actor=actor) is not None:
                        recorded += 1
                except KeyError:
                    # Work the back-end holds that civicbus never sent: not ours to track.
                    log.warning(
                        "poller.unknown_request", instance=instance, request_id=update.request_id
                    )
            if page.watermark == since:
                break
            with self.store.transaction() as tx:
                tx.set_watermark(instance, page.watermark)
            if not page.updates:
                break
        if recorded:
            log.info("poller.recorded", instance=instance, updates=recorded)
        return recorded

    def run(self) -> None:
        """Poll every instance when it is due until `stop` is set; then release the leases."""
        due = dict.fromkeys(self.adapters, 0.0)
        log.info("poller.started", instances=sorted(self.adapters), holder=self.holder)
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                for instance in sorted(due):
                    if due[instance] <= now and not self.stop.is_set():
                        self._round(instance)
                        due[instance] = time.monotonic() + self.intervals[instance]
                wait = min(due.values(), default=now + 1.0) - time.monotonic()
                self.stop.wait(min(max(wait, 0.05), 1.0))
        finally:
            for instance in self.adapters:
                with suppress(StoreUnavailable):  # if not, the lease expires on its own
                    self.store.release_lease(lease_name(instance), self.holder)
            log.info("poller.stopped", holder=self.holder)

    def _round(self, instance: str) -> None:
        try:
            self.poll_once(instance)
        except Exception as exc:
            # A back-end or store outage: try again next round; the watermark has not moved.
            log.warning(
                "poller.round_failed", instance=instance, error=f"{type(exc).__name__}: {exc}"
            )
