"""The request repository: canonical requests in and out of their tables.

A request is one `requests` row (filterable columns plus the canonical document as JSON) with
its reporter (personal data, own table), status history and back-end cross-references.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from pydantic_core import from_json
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from bus.store._errors import HistoryFull, InvalidData, UpdateConflict
from bus.store._records import RecordedUpdate, RequestQuery
from bus.store._sql import (
    JsonText,
    driver_execute,
    insert_ignoring_duplicates,
    insert_rows,
    select_for_ids,
    utcnow,
)
from bus.store._tables import backend_refs, batch_tokens, reporters, requests, status_history
from schemas.model import Reporter, ServiceRequest, Status, StatusNote, StatusUpdate

log = structlog.get_logger(__name__)

_REPORTER_FIELDS = ("email", "first_name", "last_name", "phone", "device_id", "account_id")
#: Most status updates one request keeps: far more than any real request gets, and a bound on
#: what a sender repeating itself in a loop can make a request (and every read of it) weigh.
MAX_HISTORY = 1000

#: Parts of the request kept in tables of their own rather than in the JSON document.
_APART = {"reporter", "backend_refs", "history"}


#: model_dump_json and model_dump, called without the methods' dozen keyword arguments (a
#: third of dumping a reporter; every create writes a document and a reporter row).
_REQUEST_JSON = ServiceRequest.__pydantic_serializer__
_REPORTER_DUMP = Reporter.__pydantic_serializer__


def _document(request: ServiceRequest) -> JsonText:
    """The JSON document of a request, its times in UTC, without the parts kept apart."""
    in_utc = request
    # A new request's times are UTC already (intake stamps them so): no copy needed then.
    if not all(
        at is None or at.tzinfo is UTC
        for at in (request.requested_at, request.updated_at, request.expected_at)
    ):
        in_utc = request.model_copy(
            update={
                "requested_at": request.requested_at.astimezone(UTC),
                "updated_at": request.updated_at.astimezone(UTC),
                "expected_at": request.expected_at and request.expected_at.astimezone(UTC),
            }
        )
    return JsonText(_REQUEST_JSON.to_json(in_utc, exclude=_APART).decode())


def _note_row(request_id: str, note: StatusNote, recorded_at: datetime) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "update_id": note.update_id,
        "status": note.status.value,
        "at": note.at,
        "note": note.note,
        "source": note.source,
        "external_status_code": note.external_status_code,
        "media_url": note.media_url,
        "recorded_at": recorded_at,
    }


# Statements built once: SQLAlchemy then reuses their compiled form without recomputing
# cache keys, which is most of the cost of a small transaction on SQLite.
_IDS: sa.BindParameter[list[str]] = sa.bindparam("ids", expanding=True)
_SELECT_REQUEST = sa.select(requests).where(requests.c.id == sa.bindparam("id"))
_SELECT_REPORTERS = sa.select(reporters).where(reporters.c.request_id.in_(_IDS))
_SELECT_REFS = (
    sa.select(
        backend_refs.c.request_id,
        backend_refs.c.adapter,
        backend_refs.c.reference,
        backend_refs.c.at,
    )
    .where(backend_refs.c.request_id.in_(_IDS))
    .order_by(backend_refs.c.id)
)
#: The StatusNote fields a `status_history` row holds, in the order _SELECT_NOTES reads them
#: (after the request id).
_NOTE_FIELDS = ("status", "at", "note", "source", "update_id", "external_status_code", "media_url")
_SELECT_NOTES = (
    sa.select(status_history.c.request_id, *(status_history.c[f] for f in _NOTE_FIELDS))
    .where(status_history.c.request_id.in_(_IDS))
    # By the updates' own times, as a reader of the history expects (an update recorded late,
    # e.g. from a back-end page delivered late, among the ones it came before); equal times
    # in the order they were recorded.
    .order_by(status_history.c.at, status_history.c.id)
)
_SELECT_NOTE_BY_UPDATE_ID = sa.select(status_history).where(
    status_history.c.request_id == sa.bindparam("request_id"),
    status_history.c.update_id == sa.bindparam("update_id"),
)


def insert_requests(
    conn: Connection, new: Sequence[ServiceRequest], tokens: Mapping[str, str]
) -> None:
    """Insert new requests with their reporters, history, references and batch tokens
    (`tokens`: request id to token), one multi-row statement per table."""
    now = utcnow()
    request_rows: list[dict[str, Any]] = []
    reporter_rows: list[dict[str, Any]] = []
    note_rows: list[dict[str, Any]] = []
    ref_rows: list[dict[str, Any]] = []
    for request in new:
        request_rows.append(
            {
                "id": request.id,
                "jurisdiction": request.jurisdiction,
                "service_code": request.service_code,
                "status": request.status.value,
                "requested_at": request.requested_at,
                "updated_at": request.updated_at,
                "lat": request.location.lat,
                "long": request.location.long,
                "document": _document(request),
                "taken_down_at": request.taken_down_at,
                "changed_at": request.modified_at,  # its changed_at, or the latest it knows
            }
        )
        contact = _REPORTER_DUMP.to_python(request.reporter)
        if any(value is not None for value in contact.values()):
            reporter_rows.append({"request_id": request.id, **contact})
        note_rows.extend(_note_row(request.id, note, now) for note in request.history)
        ref_rows.extend(
            {
                "request_id": request.id,
                "adapter": ref.adapter,
                "reference": ref.reference,
                "at": ref.submitted_at,
            }
            for ref in request.backend_refs
        )
    token_rows = [
        {"token": token, "request_id": request_id, "created_at": now}
        for request_id, token in tokens.items()
    ]
    for table, rows in (
        (requests, request_rows),
        (reporters, reporter_rows),
        (status_history, note_rows),
        (backend_refs, ref_rows),
        (batch_tokens, token_rows),
    ):
        insert_rows(conn, table, rows)


def holders(conn: Connection, ids: list[str]) -> dict[str, set[str]]:
    """The adapter instances holding each request (its back-end references), by request id;
    a request none holds is absent."""
    found: dict[str, set[str]] = defaultdict(set)
    for request_id, adapter, _, _ in select_for_ids(conn, _SELECT_REFS, ids):
        found[request_id].add(adapter)
    return found


def _children(
    conn: Connection, ids: list[str]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """The back-end references and the status history of the requests, by request id."""
    refs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for request_id, adapter, reference, at in select_for_ids(conn, _SELECT_REFS, ids):
        refs[request_id].append({"adapter": adapter, "reference": reference, "submitted_at": at})
    notes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for request_id, *fields in select_for_ids(conn, _SELECT_NOTES, ids):
        notes[request_id].append(dict(zip(_NOTE_FIELDS, fields, strict=True)))
    return refs, notes


def _note(row: Row[Any]) -> StatusNote:
    """The StatusNote of a `status_history` row."""
    return StatusNote.model_validate({name: getattr(row, name) for name in _NOTE_FIELDS})


#: The `requests` columns that are the truth for what queries filter on, over the document's
#: copy (each named as the ServiceRequest field it fills).
_COLUMNS = (
    "id",
    "jurisdiction",
    "service_code",
    "status",
    "requested_at",
    "updated_at",
    "taken_down_at",
    "changed_at",
)


#: ServiceRequest.model_validate without the method's keyword arguments (each batch read of the
#: worker builds a request a message).
_VALIDATE_REQUEST = ServiceRequest.__pydantic_validator__.validate_python


def _whole(
    document: dict[str, Any],
    columns: Iterable[tuple[str, Any]],
    reporter: dict[str, Any],
    refs: dict[str, list[dict[str, Any]]],
    notes: dict[str, list[dict[str, Any]]],
) -> ServiceRequest:
    """The canonical request of a `requests` row: its freshly parsed document, filled in place
    (no copy) with the row's _COLUMNS (name, value) and the request's other parts."""
    document.update(columns)
    request_id = document["id"]
    document["reporter"] = reporter
    document["backend_refs"] = refs.get(request_id, [])
    document["history"] = notes.get(request_id, [])
    request: ServiceRequest = _VALIDATE_REQUEST(document)
    return request


def load_requests(conn: Connection, rows: Sequence[Row[Any]]) -> list[ServiceRequest]:
    """Whole canonical requests for `requests` rows, in the rows' order."""
    ids = [row.id for row in rows]
    if not ids:
        return []
    contacts = {row.request_id: row for row in conn.execute(_SELECT_REPORTERS, {"ids": ids})}
    refs, notes = _children(conn, ids)
    loaded = []
    for row in rows:
        contact = contacts.get(row.id)
        reporter = {f: getattr(contact, f) for f in _REPORTER_FIELDS} if contact else {}
        columns = ((name, getattr(row, name)) for name in _COLUMNS)
        loaded.append(_whole(dict(row.document), columns, reporter, refs, notes))
    return loaded


def get_request(conn: Connection, request_id: str) -> ServiceRequest | None:
    rows = conn.execute(_SELECT_REQUEST, {"id": request_id}).all()
    found = load_requests(conn, rows)
    return found[0] if found else None


# The worker's batch read: the reporter joined in (three statements a batch, not four), and the
# document as its stored text, parsed by pydantic-core (twice as fast as the json module).
_SELECT_WHOLE_REQUESTS = (
    sa.select(
        *(requests.c[name] for name in _COLUMNS),
        sa.cast(requests.c.document, sa.Text()).label("document"),
        reporters.c.request_id.label("reporter_of"),
        *(reporters.c[f] for f in _REPORTER_FIELDS),
    )
    .select_from(requests.outerjoin(reporters, reporters.c.request_id == requests.c.id))
    .where(requests.c.id.in_(_IDS))
)


def get_requests(conn: Connection, request_ids: Collection[str]) -> dict[str, ServiceRequest]:
    """The whole requests by id (three statements whatever their number); unknown ids absent."""
    ids = list(dict.fromkeys(request_ids))
    if not ids:
        return {}
    rows = select_for_ids(conn, _SELECT_WHOLE_REQUESTS, ids)
    if not rows:
        return {}
    refs, notes = _children(conn, [row[0] for row in rows])
    found = {}
    width = len(_COLUMNS)
    for row in rows:
        columns = zip(_COLUMNS, row[:width], strict=True)
        contact = row[width + 2 :]
        reporter = dict(zip(_REPORTER_FIELDS, contact, strict=True)) if row[width + 1] else {}
        found[row[0]] = _whole(from_json(row[width]), columns, reporter, refs, notes)
    return found


# What tells whether a request changed since it was read: any status update moves its status,
# its updated_at or its count of history notes; a new reference moves its count of references;
# a take-down (bus.takedown) that changes the request moves its taken_down_at.
_LOCK_REQUESTS = (
    sa.select(
        requests.c.id,
        requests.c.status,
        requests.c.updated_at,
        requests.c.taken_down_at,
        sa.select(sa.func.count())
        .where(status_history.c.request_id == requests.c.id)
        .scalar_subquery()
        .label("notes"),
        sa.select(sa.func.count())
        .where(backend_refs.c.request_id == requests.c.id)
        .scalar_subquery()
        .label("refs"),
    )
    .where(requests.c.id.in_(_IDS))
    .order_by(requests.c.id)  # locked in one order by every caller: no deadlock between them
    .with_for_update(of=requests)
)


def changed_requests(
    conn: Connection, known: Mapping[str, ServiceRequest]
) -> dict[str, ServiceRequest]:
    """Lock the rows of the `known` requests, as status updates do, and return those that
    changed since `known` was read, whole as they are now (one statement when none did)."""
    if not known:
        return {}
    changed = []
    for request_id, status, updated_at, taken_down_at, notes, refs in select_for_ids(
        conn, _LOCK_REQUESTS, list(known)
    ):
        request = known[request_id]
        if (
            status != request.status  # a StrEnum: equal to its value
            or updated_at != request.updated_at
            or notes != len(request.history)
            or refs != len(request.backend_refs)
            or taken_down_at != request.taken_down_at
        ):
            changed.append(request_id)
    return get_requests(conn, changed) if changed else {}


def _filters(query: RequestQuery) -> Iterable[sa.ColumnElement[bool]]:
    c = requests.c
    if query.ids is not None:
        yield c.id.in_(list(query.ids))
    if query.service_codes is not None:
        yield c.service_code.in_(list(query.service_codes))
    if query.jurisdiction is not None:
        yield c.jurisdiction == query.jurisdiction
    if query.statuses is not None:
        yield c.status.in_([status.value for status in query.statuses])
    if query.requested_from is not None:
        yield c.requested_at >= query.requested_from
    if query.requested_to is not None:
        yield c.requested_at <= query.requested_to
    # Open311's updated_datetime: when civicbus recorded the latest change, on its own clock.
    if query.updated_after is not None:
        yield c.changed_at > query.updated_after
    if query.updated_before is not None:
        yield c.changed_at < query.updated_before
    if query.bbox is not None:
        lat_ne, long_ne, lat_sw, long_sw = query.bbox
        yield c.lat.between(min(lat_sw, lat_ne), max(lat_sw, lat_ne))
        if long_sw <= long_ne:
            yield c.long.between(long_sw, long_ne)
        else:  # the box crosses the antimeridian
            yield sa.or_(c.long >= long_sw, c.long <= long_ne)


def find_requests(conn: Connection, query: RequestQuery) -> list[ServiceRequest]:
    statement = (
        sa.select(requests)
        .where(*_filters(query))
        # Newest first: a client showing recent reports must see the new ones however many
        # older ones match; the id (a ULID, time-ordered) keeps ties in one order across pages.
        .order_by(requests.c.requested_at.desc(), requests.c.id.desc())
        .offset(max(query.offset, 0))
        .limit(max(query.limit, 0))
    )
    return load_requests(conn, conn.execute(statement).all())


def apply_status_update(
    conn: Connection, update: StatusUpdate, *, refuse_conflicts: bool = False
) -> RecordedUpdate | None:
    """Record the update; None when its update_id was already recorded for the request, or
    when it says nothing new: the status the request already has, with no note, no media and
    no back-end status code.

    An update older than the request's current status goes into the history only (see
    `_is_late`). With `refuse_conflicts`, an update_id already recorded with other content
    raises UpdateConflict instead of being ignored."""
    row = conn.execute(
        sa.select(
            requests.c.document, requests.c.status, requests.c.requested_at, requests.c.updated_at
        )
        .where(requests.c.id == update.request_id)
        .with_for_update()  # concurrent updates of one request apply one after the other
    ).first()
    if row is None:
        raise KeyError(f"no request {update.request_id!r}")
    if refuse_conflicts:
        # Looked up under the request's lock, and before the "nothing new" test below: an
        # update_id recorded as IN_PROGRESS, sent again as the CLOSED the request now has, is a
        # conflict too.
        recorded = conn.execute(
            _SELECT_NOTE_BY_UPDATE_ID,
            {"request_id": update.request_id, "update_id": update.update_id},
        ).first()
        if recorded is not None:
            if not update.says_the_same_as(_note(recorded)):
                raise UpdateConflict(update.request_id, update.update_id)
            log.info(
                "store.status_update.repeated",
                request_id=update.request_id,
                update_id=update.update_id,
            )
            return None
    if (
        row.status == update.status.value
        and update.note is None
        and update.media_url is None
        and update.external_status_code is None
    ):
        if _confirms_later(update.at, requested_at=row.requested_at, updated_at=row.updated_at):
            # Nothing new to say, but the reported status holds as of a later time: an older
            # update arriving after this one must find it late, not put its status over it.
            _set_status(conn, update, dict(row.document), reads_the_same=True)
        log.info(
            "store.status_update.unchanged",
            request_id=update.request_id,
            update_id=update.update_id,
            status=update.status.value,
        )
        return None
    held = conn.execute(
        sa.select(sa.func.count())
        .select_from(status_history)
        .where(status_history.c.request_id == update.request_id)
    ).scalar_one()
    if held >= MAX_HISTORY:
        raise HistoryFull(update.request_id, held)
    note = StatusNote(
        status=update.status,
        at=update.at,
        note=update.note,
        source=update.source,
        update_id=update.update_id,
        external_status_code=update.external_status_code,
        media_url=update.media_url,
    )
    inserted = insert_ignoring_duplicates(
        conn,
        status_history,
        _note_row(update.request_id, note, utcnow()),
        keys=("request_id", "update_id"),
    )
    if not inserted:
        log.info(
            "store.status_update.repeated", request_id=update.request_id, update_id=update.update_id
        )
        return None
    previous = Status(row.status)
    late = _is_late(update.at, requested_at=row.requested_at, updated_at=row.updated_at)
    if late:
        # History only, but a change all the same (the request's notes show it): Open311
        # clients polling updated_after are told.
        conn.execute(
            requests.update().where(requests.c.id == update.request_id).values(changed_at=utcnow())
        )
    else:
        _set_status(conn, update, dict(row.document))
    request = get_request(conn, update.request_id)
    assert request is not None  # locked above
    return RecordedUpdate(request=request, previous_status=previous, history_only=late)


def _set_status(
    conn: Connection,
    update: StatusUpdate,
    document: dict[str, Any],
    *,
    reads_the_same: bool = False,
) -> None:
    """Make `update` the request's current status, as of its time (and its note, if any).
    `reads_the_same`: a repeat of the status that only dates it later, which Open311 reads do
    not show (changed_at stays)."""
    document["status"] = update.status.value
    document["updated_at"] = update.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if update.note is not None:
        document["status_notes"] = update.note
    values: dict[str, Any] = {
        "status": update.status.value,
        "updated_at": update.at,
        "document": document,
    }
    if not reads_the_same:
        values["changed_at"] = utcnow()
    conn.execute(requests.update().where(requests.c.id == update.request_id).values(**values))


def _is_late(at: datetime, *, requested_at: datetime, updated_at: datetime) -> bool:
    """Whether an update dated `at` is older than the request's current status.

    It compares the update's own time with the request's updated_at, which is the time of the
    latest update applied (a late one leaves it alone): so a back-end page delivered late, or
    pushes arriving out of order, cannot put an older status over a newer one. Equal times
    apply, in arrival order. While no update has been applied, updated_at is still the
    creation time, taken on civicbus's clock, not the sender's: there is then no newer reported
    status to protect, and a back-end whose clock runs behind ours must still be able to move
    the request (its receipt status, its first change), so any time applies.
    """
    return at < updated_at and updated_at != requested_at


def _confirms_later(at: datetime, *, requested_at: datetime, updated_at: datetime) -> bool:
    """Whether a repeat of the current status, dated `at`, dates it later than the update that
    set it. Only a reported status is dated so: while none was applied, updated_at is the
    creation's time on civicbus's clock, and a repeat of the first status moves nothing. A time
    without a zone (from an adapter that did not validate its update) compares with nothing."""
    return updated_at != requested_at and at.tzinfo is not None and at > updated_at


def add_backend_ref(
    conn: Connection, request_id: str, adapter: str, reference: str, at: datetime
) -> None:
    """Record the cross-reference; the first reference per (request, adapter) is kept. A new
    one is a change to the request (see _handed_over)."""
    inserted = insert_ignoring_duplicates(
        conn,
        backend_refs,
        {"request_id": request_id, "adapter": adapter, "reference": reference, "at": at},
        keys=("request_id", "adapter"),
    )
    if inserted:
        _handed_over(conn, [request_id], utcnow())
    else:
        known = conn.execute(
            sa.select(backend_refs.c.reference).where(
                backend_refs.c.request_id == request_id, backend_refs.c.adapter == adapter
            )
        ).scalar_one()
        if known != reference:
            log.warning(
                "store.backend_ref.conflict",
                request_id=request_id,
                adapter=adapter,
                kept=known,
                offered=reference,
            )


#: The fields of a cross-reference row, each bound as `<letter><row number>` in _INSERT_REFS.
_REF_BINDS = ("r", "a", "f", "t")
_INSERT_REFS: dict[tuple[str, int], tuple[str, bool]] = {}


def _insert_refs_sql(conn: Connection, rows: int) -> tuple[str, bool]:
    """INSERT of `rows` cross-references, skipping known ones, RETURNING the inserted request
    ids: its SQL, and whether its parameters are positional (qmark: the rows' fields in
    order; else pyformat: r0, a0, f0, t0, r1, ...). Compiled once per dialect and row count
    (SQLAlchemy does not cache multi-row VALUES statements itself)."""
    dialect = conn.dialect
    plan = _INSERT_REFS.get((dialect.name, rows))
    if plan is None:
        insert: Any = (postgresql if dialect.name == "postgresql" else sqlite).insert(backend_refs)
        statement = (
            insert.values(
                [
                    {
                        column: sa.bindparam(f"{letter}{i}")
                        for column, letter in zip(
                            ("request_id", "adapter", "reference", "at"), _REF_BINDS, strict=True
                        )
                    }
                    for i in range(rows)
                ]
            )
            .on_conflict_do_nothing(index_elements=["request_id", "adapter"])
            .returning(backend_refs.c.request_id)
        )
        compiled = statement.compile(dialect=dialect)
        if compiled.positional and tuple(compiled.positiontup or ()) != tuple(
            f"{letter}{i}" for i in range(rows) for letter in _REF_BINDS
        ):
            raise RuntimeError("backend_refs: the INSERT binds its rows in an unexpected order")
        plan = (compiled.string, bool(compiled.positional))
        _INSERT_REFS[(dialect.name, rows)] = plan
    return plan


def _handed_over(conn: Connection, request_ids: Collection[str], at: datetime) -> None:
    """A back-end took the requests: a change their readers must be told of (Open311's
    `updated_datetime`, which `updated_after` polls by, and events' `changed_at`). Open311
    shows the reference with `extensions`; and a consumer keeping the copy with the latest
    `changed_at` must not let a `created` event, replayed after `submitted`, win a tie and
    take the reference away."""
    ids = list(request_ids)
    sql, positional = _handed_over_sql(conn, len(ids))
    stamp = requests.c.changed_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    value = stamp(at) if stamp else at
    params: Any = (
        (value, *ids) if positional else {"at": value, **{f"i{n}": i for n, i in enumerate(ids)}}
    )
    driver_execute(conn, sql, params)


#: The hand-over's UPDATE for a number of requests, by dialect: (SQL text, positional binds).
_HANDED_OVER: dict[tuple[str, int], tuple[str, bool]] = {}


def _handed_over_sql(conn: Connection, rows: int) -> tuple[str, bool]:
    """The UPDATE of `rows` requests' changed_at, compiled once per dialect and count (the
    worker's batches come in a few sizes), run on the driver's cursor as the batch's other
    statements: built and compiled by SQLAlchemy for each batch, it cost more than the write."""
    dialect = conn.dialect
    plan = _HANDED_OVER.get((dialect.name, rows))
    if plan is None:
        names = [f"i{n}" for n in range(rows)]
        statement = (
            requests.update()
            .where(requests.c.id.in_([sa.bindparam(name) for name in names]))
            .values(changed_at=sa.bindparam("at"))
        )
        compiled = statement.compile(dialect=dialect)
        if compiled.positional and tuple(compiled.positiontup or ()) != ("at", *names):
            raise RuntimeError("requests: the hand-over's UPDATE binds in an unexpected order")
        plan = (compiled.string, bool(compiled.positional))
        _HANDED_OVER[(dialect.name, rows)] = plan
    return plan


def add_backend_refs(
    conn: Connection,
    adapter: str,
    refs: Sequence[tuple[str, str, datetime]],
    *,
    changed_at: datetime | None = None,
) -> set[str]:
    """Record (request id, reference, time) cross-references for `adapter` in one statement,
    the first reference per (request, adapter) kept as in add_backend_ref; returns the request
    ids whose reference this call recorded (a repeated request id counts once, the first),
    each changed at `changed_at` (default now; see _handed_over). Run on the driver's cursor
    (see bus.store._sql), as the worker's other batch statements."""
    first: dict[str, tuple[str, datetime]] = {}
    for request_id, reference, at in refs:
        first.setdefault(request_id, (reference, at))
    if not first:
        return set()
    # The time goes through the column type's bind processing, as SQLAlchemy would do it.
    process_at = backend_refs.c.at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    fields: list[Any] = []
    for request_id, (reference, at) in first.items():
        try:
            fields += (request_id, adapter, reference, process_at(at) if process_at else at)
        except ValueError:
            raise InvalidData(f"backend_refs: request {request_id}: a refused time") from None
    sql, positional = _insert_refs_sql(conn, len(first))
    width = len(_REF_BINDS)
    params: Any = (
        tuple(fields)
        if positional
        else {f"{_REF_BINDS[n % width]}{n // width}": value for n, value in enumerate(fields)}
    )
    inserted = {request_id for (request_id,) in driver_execute(conn, sql, params)}
    if inserted:
        _handed_over(conn, inserted, changed_at or utcnow())
    known = [rid for rid in first if rid not in inserted]
    if known:
        rows = conn.execute(
            sa.select(backend_refs.c.request_id, backend_refs.c.reference).where(
                backend_refs.c.adapter == adapter, backend_refs.c.request_id.in_(known)
            )
        )
        for request_id, kept in rows:
            if kept != first[request_id][0]:
                log.warning(
                    "store.backend_ref.conflict",
                    request_id=request_id,
                    adapter=adapter,
                    kept=kept,
                    offered=first[request_id][0],
                )
    return inserted


def status_updates(
    conn: Connection,
    start: datetime,
    end: datetime,
    *,
    jurisdiction: str | None = None,
    limit: int | None = None,
) -> list[StatusUpdate]:
    """Recorded updates (history entries with an update_id) whose time is in [start, end], of
    requests of `jurisdiction` if given, the oldest `limit` if given."""
    h = status_history.c
    statement = sa.select(status_history).where(
        h.update_id.is_not(None), h.at >= start, h.at <= end
    )
    if jurisdiction is not None:
        statement = statement.join(requests, requests.c.id == h.request_id).where(
            requests.c.jurisdiction == jurisdiction
        )
    rows = conn.execute(statement.order_by(h.at, h.id).limit(limit))
    return [
        StatusUpdate(
            request_id=row.request_id,
            status=row.status,
            at=row.at,
            update_id=row.update_id,
            source=row.source,
            note=row.note,
            external_status_code=row.external_status_code,
            media_url=row.media_url,
        )
        for row in rows
    ]


def resolve_token(conn: Connection, token: str, jurisdiction: str | None = None) -> str | None:
    query = sa.select(batch_tokens.c.request_id).where(batch_tokens.c.token == token)
    if jurisdiction is not None:
        query = query.join(requests, requests.c.id == batch_tokens.c.request_id).where(
            requests.c.jurisdiction == jurisdiction
        )
    found: str | None = conn.execute(query).scalar()
    return found


def holding_reference(
    conn: Connection, reference: str, adapters: Collection[str]
) -> list[tuple[str, str]]:
    """(request id, adapter) of each request a back-end of `adapters` knows as `reference`:
    a back-end's own number for the work, as its staff quote it. Looked up per adapter, the
    leading column of the (adapter, reference) index."""
    if not adapters:
        return []
    rows = conn.execute(
        sa.select(backend_refs.c.request_id, backend_refs.c.adapter)
        .where(backend_refs.c.adapter.in_(sorted(adapters)))
        .where(backend_refs.c.reference == reference)
        .order_by(backend_refs.c.adapter, backend_refs.c.request_id)
    ).all()
    return [(row.request_id, row.adapter) for row in rows]
