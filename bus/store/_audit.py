"""The audit log: an append-only chain where each entry's hash covers the previous hash.

Entry ids are assigned gap-free while the single chain-head row is locked (SELECT ... FOR
UPDATE on PostgreSQL; SQLite's write lock serializes writers anyway), so concurrent writers
never fork the chain and a missing id means a deleted entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import Enum
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from bus.json_text import json_writer
from bus.redaction import redact
from bus.store._records import AuditEntry, AuditVerification
from bus.store._sql import insert_rows, run
from bus.store._tables import GENESIS_HASH, audit_head, audit_log

_HEAD_ID = 1
# Built once so that SQLAlchemy reuses their compiled form (see _requests.py).
_LOCK_HEAD = (
    sa.select(audit_head.c.last_id, audit_head.c.last_hash)
    .where(audit_head.c.id == _HEAD_ID)
    .with_for_update()
)
_MOVE_HEAD = (
    audit_head.update()
    .where(audit_head.c.id == _HEAD_ID)
    .values(last_id=sa.bindparam("last_id"), last_hash=sa.bindparam("last_hash"))
)
_VERIFY_PAGE = 1000


class PendingEntry(NamedTuple):
    """An entry written when its transaction commits (so the head lock is held briefly); a
    tuple, built for every hop of every request, at a third of a frozen dataclass's cost."""

    at: datetime
    actor: str
    action: str
    request_id: str | None
    message_id: str | None
    outcome: str
    details: str  # canonical JSON, already redacted


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


# One encoder for every entry: json.dumps builds a new one on each call given these options.
_CANONICAL = json_writer(sort_keys=True, separators=(",", ":"), default=_json_default)


def canonical_json(value: Any) -> str:
    return _CANONICAL(value)


def _text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _utc_text(at: datetime) -> str:
    """`at.astimezone(UTC).isoformat(timespec="microseconds")`, always with its microseconds,
    without the keyword (whose parsing cost as much as the rest: ~7 k instructions an entry)."""
    utc = at if at.tzinfo is UTC else at.astimezone(UTC)  # most entries' times are UTC already
    text = utc.isoformat()
    return text if utc.microsecond else f"{text[:19]}.000000{text[19:]}"


def entry_hash(
    id: int,
    at: datetime,
    actor: str,
    action: str,
    request_id: str | None,
    message_id: str | None,
    outcome: str,
    details: str,
    prev_hash: str,
) -> str:
    """SHA-256 over the canonical JSON of the entry's fields and the previous entry's hash.

    `details` is canonical JSON text already (as stored) and goes into the hashed document as it
    is: the same bytes as parsing and re-serialising it, without the cost, and a stored text
    altered in any way (even re-formatted) no longer matches. `append` passes the fields by
    position: nine keywords cost ~2 us an entry to pass.
    """
    # The fields in sorted key order, as canonical_json would write them.
    document = (
        f'{{"action":{_text(action)},"actor":{_text(actor)},'
        f'"at":"{_utc_text(at)}",'
        f'"details":{details},"id":{int(id)},"message_id":{_text(message_id)},'
        f'"outcome":{_text(outcome)},"prev_hash":{_text(prev_hash)},'
        f'"request_id":{_text(request_id)}}}'
    )
    return hashlib.sha256(document.encode()).hexdigest()


def pending_entry(
    *,
    at: datetime,
    actor: str,
    action: str,
    request_id: str | None,
    message_id: str | None,
    outcome: str,
    details: dict[str, Any] | None,
) -> PendingEntry:
    # Serialised once: what is stored is what is hashed, and what verification re-hashes.
    redacted = canonical_json(redact(details or {}))
    return PendingEntry(at, actor, action, request_id, message_id, outcome, redacted)


def append(conn: Connection, entries: list[PendingEntry]) -> None:
    """Chain the entries onto the log inside the caller's transaction."""
    if not entries:
        return
    ((head_id, head_hash),) = run(conn, _LOCK_HEAD)
    last_id, last_hash = int(head_id), str(head_hash)
    rows = []
    for at, actor, action, request_id, message_id, outcome, details in entries:
        last_id += 1
        digest = entry_hash(
            last_id, at, actor, action, request_id, message_id, outcome, details, last_hash
        )
        rows.append(
            {
                "id": last_id,
                "at": at,
                "actor": actor,
                "action": action,
                "request_id": request_id,
                "message_id": message_id,
                "outcome": outcome,
                "details": details,
                "prev_hash": last_hash,
                "hash": digest,
            }
        )
        last_hash = digest
    insert_rows(conn, audit_log, rows)
    run(conn, _MOVE_HEAD, {"last_id": last_id, "last_hash": last_hash})


def from_row(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        request_id=row.request_id,
        message_id=row.message_id,
        outcome=row.outcome,
        details=json.loads(row.details),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def trail(conn: Connection, request_id: str) -> list[AuditEntry]:
    return trails(conn, [request_id]).get(request_id, [])


def trails(conn: Connection, request_ids: Sequence[str]) -> dict[str, list[AuditEntry]]:
    """The trails of several requests in one query, each in the order its hops happened.

    That is the entries' time, then their place in the chain: processes write their entries
    when their transactions commit, which is not always the order of the hops (the relay
    audits a batch once the broker confirmed it, by when a worker may have audited the
    command's delivery; the relay's entries carry the time it published)."""
    found: dict[str, list[AuditEntry]] = {}
    if not request_ids:
        return found
    rows = conn.execute(
        sa.select(audit_log).where(audit_log.c.request_id.in_(request_ids)).order_by(audit_log.c.id)
    )
    for row in rows:
        found.setdefault(row.request_id, []).append(from_row(row))
    for trail in found.values():
        trail.sort(key=lambda entry: (entry.at, entry.id))
    return found


def verify(conn: Connection, expect_head: str | None = None) -> AuditVerification:
    """Walk the chain from the start; report the first entry that does not fit.

    The head row is stored alongside the chain, so deleting the last entries and rewriting it
    goes unseen; `expect_head`, a head hash recorded elsewhere earlier, must still be on the
    chain.
    """
    expected_id, running_hash, count = 1, GENESIS_HASH, 0
    expected_seen = expect_head in (None, GENESIS_HASH)
    while True:
        page = conn.execute(
            sa.select(audit_log)
            .where(audit_log.c.id >= expected_id)
            .order_by(audit_log.c.id)
            .limit(_VERIFY_PAGE)
        ).all()
        for row in page:
            if row.id != expected_id:
                return AuditVerification(
                    False, count, row.id, f"entries {expected_id}..{row.id - 1} are missing"
                )
            if row.prev_hash != running_hash:
                return AuditVerification(
                    False, count, row.id, "prev_hash does not match the previous entry's hash"
                )
            recomputed = entry_hash(
                id=row.id,
                at=row.at,
                actor=row.actor,
                action=row.action,
                request_id=row.request_id,
                message_id=row.message_id,
                outcome=row.outcome,
                details=row.details,
                prev_hash=row.prev_hash,
            )
            if recomputed != row.hash:
                return AuditVerification(False, count, row.id, "entry altered: hash mismatch")
            running_hash, expected_id, count = row.hash, expected_id + 1, count + 1
            expected_seen = expected_seen or row.hash == expect_head
        if len(page) < _VERIFY_PAGE:
            break
    # Entries below id 1 cannot be reached by the walk above; any there were inserted.
    stray = conn.execute(sa.select(sa.func.min(audit_log.c.id)).where(audit_log.c.id < 1)).scalar()
    if stray is not None:
        return AuditVerification(False, count, int(stray), "entry inserted outside the chain")
    head = conn.execute(sa.select(audit_head).where(audit_head.c.id == _HEAD_ID)).one_or_none()
    if head is None:
        return AuditVerification(
            False,
            count,
            count + 1,
            f"the chain's head row is missing (the chain read ends at id {count}): it was "
            "deleted, and entries at the end may have gone with it",
        )
    if head.last_id != count or head.last_hash != running_hash:
        return AuditVerification(
            False,
            count,
            count + 1,
            f"the chain ends at id {count} but its head records id {head.last_id}: "
            "entries at the end are missing or the head was altered",
        )
    if not expected_seen:
        # The chain read is sound: no entry of it is broken, the expected head is absent.
        return AuditVerification(
            False,
            count,
            None,
            f"the expected head {expect_head} is not on the chain (which ends at id {count}): "
            "entries were cut from the end since it was recorded, or it is not this log's",
        )
    return AuditVerification(True, count, head=running_hash)
