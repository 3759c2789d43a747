"""The status poller: for back-ends that cannot push, ask each polling adapter instance for
status changes since its watermark and record them (bus.status), so events and Open311 reads
show them.

Many copies may run: a lease per instance in the store lets exactly one of them poll it. The
watermark is saved only after the page's updates are recorded, so a crash in between re-reads
the page, and the repeated `update_id`s are harmless no-ops.

An update that cannot be recorded as it is (a control character the API would refuse, a value
the database refuses) is skipped, logged and audited `status_refused`, and the watermark moves
on: one bad update must not hold back every later status change of its back-end. A change the
adapter could not read as an update at all (a status code its mapping lacks, a field missing:
the page's `skipped`) is logged and audited `status_skipped`, with what to fix. A store
outage is different: the round stops, and the page is read again next round.

Each round's outcome is kept with the watermark (the last completed round; since when rounds
fail, how many and why), so `civicbus status` and the API's /metrics show a poller that keeps
failing: this process has no endpoint of its own. Why, there and in the log, is what
`_safe_reason` says: an exception's text may quote back-end data (a clerk's note quoting a
resident), so it is kept only for errors written to carry none.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import ValidationError

from adapters import Adapter, AdapterError, SkippedChange
from adapters._changes import refused_fields
from bus.status import record_status_update
from bus.store import Store, StoreUnavailable
from schemas.model import StatusUpdate
from schemas.open311 import has_control_characters

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
        recorded = 0
        for _ in range(MAX_PAGES_PER_ROUND):
            since = self.store.watermark(instance)
            page = adapter.updates(since)
            named = [u.request_id for u in page.updates]
            named += [s.request_id for s in page.skipped if s.request_id is not None]
            elsewhere = self._held_elsewhere(instance, named)
            for update in page.updates:
                if update.request_id in elsewhere:
                    # A back-end two instances share (two departments' accounts on one parks
                    # system): the other instance's poller records this change, by its mapping.
                    log.info(
                        "poller.held_elsewhere",
                        instance=instance,
                        request_id=update.request_id,
                        held_by=elsewhere[update.request_id],
                    )
                elif self._record(instance, update):
                    recorded += 1
            for skipped in page.skipped:
                if skipped.request_id not in elsewhere:  # the other instance's mapping says
                    self._skip(instance, skipped)
            if page.watermark == since:
                break
            with self.store.transaction() as tx:
                tx.set_watermark(instance, page.watermark)
            if not page.updates:
                break
        if recorded:
            log.info("poller.recorded", instance=instance, updates=recorded)
        return recorded

    def _held_elsewhere(self, instance: str, request_ids: Sequence[str]) -> dict[str, str]:
        """The requests of `request_ids` that civicbus sent to other instances and never to
        this one, with those instances: their changes are not this instance's to record (nor
        to skip, by this instance's mapping). A request without any back-end reference yet may
        be this instance's (its worker stores the reference after the back-end answered), so
        it is not among them."""
        if not request_ids:
            return {}
        # The references alone: a whole request (its history with it) is not needed here.
        held = self.store.request_holders(set(request_ids))
        return {
            request_id: ", ".join(sorted(instances))
            for request_id, instances in held.items()
            if instance not in instances
        }

    def _record(self, instance: str, update: StatusUpdate) -> bool:
        """Record one update; False when it changed nothing or was skipped. Raises only what
        should stop the round (StoreUnavailable, an adapter's error)."""
        actor = f"poller:{instance}"
        refused = _refused_text(update)
        if refused is None:
            try:
                return record_status_update(self.store, update, actor=actor) is not None
            except KeyError:
                # Work the back-end holds that civicbus never sent: not ours to track.
                log.warning(
                    "poller.unknown_request", instance=instance, request_id=update.request_id
                )
                return False
            except ValueError as exc:  # InvalidData, or a value the model refuses
                refused = _safe_reason(exc)
        self._refuse(instance, update, refused)
        return False

    def _skip(self, instance: str, skipped: SkippedChange) -> None:
        """A change the adapter could not read as an update (a status code its mapping lacks,
        a field missing): logged, and audited in its request's trail when the change names one,
        where an operator asking why a status never arrived looks."""
        request_id = _nameable(skipped.request_id)
        context = {"change": skipped.change, "problem": skipped.problem, "fix": skipped.fix}
        log.warning("poller.change_skipped", instance=instance, request_id=request_id, **context)
        self._audit(instance, "status_skipped", "skipped", request_id, context)

    def _refuse(self, instance: str, update: StatusUpdate, reason: str) -> None:
        """Skip an update that cannot be recorded: log and audit why (never its note, which
        may quote a resident), so an operator finds it in the request's audit trail."""
        request_id = _nameable(update.request_id)
        context = {
            "update_id": update.update_id,
            "source": update.source,
            "status": update.status.value,
            "reason": reason,
        }
        log.error("poller.update_refused", instance=instance, request_id=request_id, **context)
        self._audit(instance, "status_refused", "error", request_id, context)

    def _audit(
        self,
        instance: str,
        action: str,
        outcome: str,
        request_id: str | None,
        context: Mapping[str, str | None],
    ) -> None:
        """An audit entry of this poller about `request_id`; a value the store cannot hold is
        logged instead of stopping the round."""
        try:
            with self.store.transaction() as tx:
                tx.audit(
                    actor=f"poller:{instance}",
                    action=action,
                    request_id=request_id,
                    outcome=outcome,
                    details={**context, "instance": instance},
                )
        except ValueError as exc:
            log.error("poller.not_audited", instance=instance, action=action,
                      error=_safe_reason(exc))  # fmt: skip

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
            recorded = self.poll_once(instance)
        except Exception as exc:
            # A back-end or store outage: try again next round; the watermark has not moved.
            error = _safe_reason(exc)
            log.warning("poller.round_failed", instance=instance, error=error)
            # A store outage cannot be kept in the store; /metrics shows the store down then.
            with suppress(StoreUnavailable, ValueError), self.store.transaction() as tx:
                tx.poll_round_failed(instance, error)
            return
        if recorded is not None:  # None: another copy polls it, and reports its own rounds
            with suppress(StoreUnavailable, ValueError), self.store.transaction() as tx:
                tx.poll_round_completed(instance)


def _refused_text(update: StatusUpdate) -> str | None:
    """The API's rule for pushed updates, applied to polled ones: why `update` is
    refused, or None. PostgreSQL would refuse a NUL, SQLite keep it; both refuse it here."""
    for name in ("request_id", "update_id", "source", "note", "external_status_code", "media_url"):
        value = getattr(update, name)
        if value is not None and has_control_characters(value):
            return f"{name}: contains control characters"
    return None


def _nameable(request_id: str | None) -> str | None:
    """The request id a back-end gave, or None when the store could not hold it (control
    characters): then it cannot name a request either, and is neither logged nor audited."""
    if request_id is not None and has_control_characters(request_id):
        return None
    return request_id


def _safe_reason(exc: BaseException) -> str:
    """Why a round failed or an update was refused, for the log and the store, quoting no data.

    Adapter errors are written to carry none, store outages and OS errors name a connection;
    their text is kept. A validation error names its fields and what was wrong with them; any
    other exception (a KeyError of a change without a field, an error of a library) only its
    type and where it was raised: its text may quote what the back-end sent.
    """
    name = type(exc).__name__
    if isinstance(exc, AdapterError | StoreUnavailable | OSError):
        return f"{name}: {exc}"
    if isinstance(exc, ValidationError):
        return f"{name}: {exc.title} {refused_fields(exc)}"
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return name
    where = frames[-1]
    path = Path(where.filename)
    return f"{name} (raised in {path.parent.name}/{path.name}:{where.lineno}, {where.name})"
