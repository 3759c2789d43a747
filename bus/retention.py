"""Retention: removing from the store what it no longer needs, each removal audited.

`prune` deletes outbox events the relay published a while ago (nothing reads them again: the
relay reads waiting rows only, a dead-letter replay its own stored copy), Idempotency-Key
records past their window, and dead letters an operator replayed or dropped a while ago (their
audit entries stay; a dead letter still waiting for a decision is never deleted).
`forget_closed` deletes the reporter contact data of requests closed long ago (data-protection
law's storage limitation), `forget_request` one request's on demand (a resident's erasure
request); the request, its history, back-end references and audit trail stay, and it reads
as if reported without contact data. Work goes a bounded batch per
transaction, so the API keeps writing meanwhile (SQLite has one writer).

Kept for good: Idempotency records of an `external_id` (a partner's own id names its report
for as long as the request exists, so sending it again must never make a second request), and
batch tokens (a resident of a batch service has nothing else to find the request by).
Neither holds contact data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import structlog

from bus.intake import HEADER_KEY_PREFIX
from bus.store import Store, Transaction

log = structlog.get_logger(__name__)

K = TypeVar("K")

#: How long published outbox events are kept by default: for an operator looking into the
#: database after an incident; nothing in civicbus reads them again.
OUTBOX_SENT_KEEP = timedelta(days=7)
#: How long an Idempotency-Key is kept by default: a client repeating a create with it within
#: this time gets the first answer, far longer than any client retries.
IDEMPOTENCY_KEEP = timedelta(days=30)
#: The shortest Idempotency-Key window a prune accepts: below a day, a client's retry of a
#: create in flight could make a second request.
IDEMPOTENCY_KEEP_AT_LEAST = timedelta(days=1)
#: How long a dead letter is kept by default once replayed or dropped: for `civicbus dead show`
#: and `civicbus requests show` after an incident, and so that a replay that dies again counts
#: its attempts with the earlier ones.
DEAD_LETTERS_KEEP = timedelta(days=30)
#: The shortest such time a prune accepts: an operator looks again at what was just replayed
#: or dropped (did the replay go through?), and a replay dead again within the day should be
#: recognised as the same dead letter.
DEAD_LETTERS_KEEP_AT_LEAST = timedelta(days=1)
#: Rows removed per transaction: a short hold of SQLite's write lock (about 20 ms for 1,000
#: published events of 2 kB each on a 2-core machine, while the API waits up to 5 s for it).
BATCH_SIZE = 1000

PRUNE_ACTOR = "cli:store-prune"
FORGET_ACTOR = "cli:privacy-forget"
FORGOTTEN = "reporter_forgotten"


class RetentionError(Exception):
    """A retention action cannot be done; the message says why and what to do, `setting` which
    of the function's arguments was wrong (if one was)."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True)
class Pruned:
    """What a prune deleted, and the cutoffs it deleted before."""

    outbox_events: int
    outbox_sent_before: datetime
    idempotency_keys: int
    idempotency_before: datetime
    dead_letters: int
    dead_letters_resolved_before: datetime


def prune(
    store: Store,
    *,
    now: datetime,
    keep_sent: timedelta = OUTBOX_SENT_KEEP,
    keep_idempotency: timedelta = IDEMPOTENCY_KEEP,
    keep_dead_letters: timedelta = DEAD_LETTERS_KEEP,
    batch_size: int = BATCH_SIZE,
    actor: str = PRUNE_ACTOR,
) -> Pruned:
    """Delete outbox events published longer than `keep_sent` before `now` (never one still
    waiting), Idempotency-Key records older than `keep_idempotency` and dead letters replayed or
    dropped longer than `keep_dead_letters` ago (never one still dead), then audit how many
    went, in one entry.

    RetentionError, before deleting anything, when `keep_idempotency` or `keep_dead_letters` is
    under a day. Batches deleted before a failure (or Ctrl-C) stay deleted: audited then as an
    `error` entry with their counts, if the store takes it.
    """
    if keep_idempotency < IDEMPOTENCY_KEEP_AT_LEAST:
        raise RetentionError(
            "Idempotency-Key records must be kept at least 1d: a client retrying a create "
            "with a newer key would make a second request",
            setting="keep_idempotency",
        )
    if keep_dead_letters < DEAD_LETTERS_KEEP_AT_LEAST:
        raise RetentionError(
            "replayed and dropped dead letters must be kept at least 1d: an operator checks "
            "what was just replayed or dropped, and a replay that dies again is the same letter",
            setting="keep_dead_letters",
        )
    sent_before, keys_before = now - keep_sent, now - keep_idempotency
    letters_before = now - keep_dead_letters
    kinds = {
        "outbox_events": _in_batches(
            store,
            lambda after: store.sent_outbox(
                sent_before=sent_before, after=after or 0, limit=batch_size
            ),
            lambda tx, ids: tx.delete_sent_outbox(ids, sent_before=sent_before),
            batch_size,
        ),
        "idempotency_keys": _in_batches(
            store,
            lambda after: store.idempotency_keys_before(
                created_before=keys_before, prefix=HEADER_KEY_PREFIX, after=after, limit=batch_size
            ),
            lambda tx, pairs: tx.delete_idempotency_keys(pairs, created_before=keys_before),
            batch_size,
        ),
        "dead_letters": _in_batches(
            store,
            lambda after: store.resolved_dead_letters(
                resolved_before=letters_before, after=after or 0, limit=batch_size
            ),
            lambda tx, ids: tx.delete_resolved_dead_letters(ids, resolved_before=letters_before),
            batch_size,
        ),
    }
    deleted = dict.fromkeys(kinds, 0)
    cutoffs = {
        "outbox_sent_before": sent_before,
        "idempotency_before": keys_before,
        "dead_letters_resolved_before": letters_before,
    }
    try:
        for kind, batches in kinds.items():
            for removed in batches:
                deleted[kind] += removed
    except BaseException as exc:
        _audit_stopped(store, actor, deleted, cutoffs, exc)
        raise
    pruned = Pruned(
        outbox_events=deleted["outbox_events"],
        outbox_sent_before=sent_before,
        idempotency_keys=deleted["idempotency_keys"],
        idempotency_before=keys_before,
        dead_letters=deleted["dead_letters"],
        dead_letters_resolved_before=letters_before,
    )
    with store.transaction() as tx:
        tx.audit(actor=actor, action="pruned", details=asdict(pruned))
    log.info("store.pruned", **deleted)
    return pruned


def _audit_stopped(
    store: Store,
    actor: str,
    deleted: dict[str, int],
    cutoffs: dict[str, datetime],
    exc: BaseException,
) -> None:
    """Audit what a prune stopped by `exc` (an operator's Ctrl-C, a failed batch) had deleted
    by then, if anything: those rows are gone. An audit the store refuses too is logged, and
    the prune's own failure is what the caller sees."""
    if not any(deleted.values()):
        return
    details = {**deleted, **cutoffs}
    try:
        with store.transaction() as tx:
            tx.audit(
                actor=actor,
                action="pruned",
                outcome="error",
                details={**details, "stopped_by": type(exc).__name__},
            )
    except Exception as audit_exc:
        log.error("store.prune_stopped_unaudited", error=str(audit_exc), **details)
    log.warning("store.prune_stopped", stopped_by=type(exc).__name__, **details)


def _in_batches(
    store: Store,
    find: Callable[[K | None], list[K]],
    remove: Callable[[Transaction, Sequence[K]], int],
    batch_size: int,
) -> Iterator[int]:
    """Find a batch (after the last one's last key), remove it in a transaction of its own,
    until a batch comes back short; how many each batch removed, as it is committed."""
    after = None
    while True:
        batch = find(after)
        if batch:
            with store.transaction() as tx:
                removed = remove(tx, batch)
            yield removed
            after = batch[-1]
        if len(batch) < batch_size:
            return


def forget_closed(
    store: Store,
    *,
    closed_before: datetime,
    batch_size: int = BATCH_SIZE,
    actor: str = FORGET_ACTOR,
) -> int:
    """Delete the reporter contact data of every request with a closing status last updated
    before `closed_before`, each request audited with the deletion; how many requests."""

    def forget(tx: Transaction, ids: Sequence[str]) -> int:
        forgotten = tx.forget_reporters(ids, closed_before=closed_before)
        for request_id in forgotten:
            tx.audit(
                actor=actor,
                action=FORGOTTEN,
                request_id=request_id,
                details={"closed_before": closed_before},
            )
        return len(forgotten)

    count = sum(
        _in_batches(
            store,
            lambda after: store.closed_with_reporter(
                closed_before=closed_before, after=after or "", limit=batch_size
            ),
            forget,
            batch_size,
        )
    )
    log.info("privacy.reporters_forgotten", requests=count, closed_before=closed_before)
    return count


@dataclass(frozen=True)
class Forgotten:
    """The outcome of forgetting one request's reporter."""

    request_id: str
    #: False when the request held no contact data (reported without, or forgotten before).
    held_contact: bool
    #: The adapter instances the request was delivered to (they keep what they were sent).
    delivered_to: tuple[str, ...]


def forget_request(store: Store, request_id: str, *, actor: str = FORGET_ACTOR) -> Forgotten:
    """Delete the reporter contact data of one request, whatever its status (a resident's
    erasure request), audited; `request_id` may be the batch token a resident was given.

    A request not yet delivered to its back-end is delivered without the contact data.
    RetentionError when there is no such request.
    """
    request = store.request_by_id_or_token(request_id)
    if request is None:
        raise RetentionError(f"there is no request (nor batch token) {request_id}")
    delivered_to = tuple(ref.adapter for ref in request.backend_refs)
    with store.transaction() as tx:
        held = bool(tx.forget_reporters([request.id]))
        if held:
            tx.audit(
                actor=actor,
                action=FORGOTTEN,
                request_id=request.id,
                details={"on_request": True, "delivered": bool(delivered_to)},
            )
    log.info("privacy.reporter_forgotten", request_id=request.id, held_contact=held)
    return Forgotten(request_id=request.id, held_contact=held, delivered_to=delivered_to)
