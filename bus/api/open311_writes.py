"""The Open311 write methods: create a request and record a pushed status update.

Handlers read the form themselves: Open311 clients send `attribute[CODE][]`, repeated keys and
the api_key in the query string, which declared form parameters cannot express.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.routing import Route

from bus.api import docs
from bus.api.context import INVALID_KEY, ApiContext
from bus.api.media import MAX_MEDIA_FILES, UnreadableUploads, check_upload
from bus.api.params import context
from bus.api.urlencoded import (
    content_charset,
    decode_urlencoded,
    form_encoding,
    not_in_charset,
    undecodable_fields,
)
from bus.api.wire import Format, Open311Problem, respond
from bus.intake import ClientRevoked, IdempotencyConflict, Prepared, prepare
from bus.status import record_status_update
from bus.store import HistoryFull, UpdateConflict, UpdatesNotAllowed
from schemas import open311_render as render
from schemas.model import Media
from schemas.open311 import (
    FormData,
    InvalidValue,
    RequestDraft,
    check_text,
    first,
    parse_create_form,
    parse_update_form,
)

log = structlog.get_logger(__name__)
router = APIRouter()


@dataclass(frozen=True)
class _Submission:
    fields: dict[str, list[str]]
    uploads: list[bytes]
    idempotency_key: str | None
    correlation_id: str | None


#: Most form fields a submission may have; a form with more is refused (Starlette's default).
MAX_FORM_FIELDS = 1000
#: Largest urlencoded body: text only (photos come as multipart), and the longest report, every
#: field at its limit and each character percent-encoded as UTF-8, stays well under it. Checked
#: before decoding, which runs on the event loop: megabytes of `%41` held up every request.
MAX_URLENCODED_BYTES = 256 * 1024
#: The bodies an Open311 POST comes in: a plain form, or multipart when it carries media.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def _read_submission(request: Request) -> _Submission:
    """The form's text fields (query string values after them) and uploaded files' bytes."""
    fields: dict[str, list[str]] = {}
    uploads: list[bytes] = []
    headers = _wanted_headers(request)
    content_type = headers.get(b"content-type", "")
    if content_type.partition(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        # What nearly every client sends, parsed in one pass: a fraction of the cost of the
        # streaming parser behind `request.form()`, with the same field limit. Percent-escapes
        # and raw bytes alike are read in the charset the Content-Type names, else as UTF-8
        # (as `curl -d` sends non-ASCII text); text not valid in it is refused, not replaced.
        charset = content_charset(content_type)
        encoding = form_encoding(charset)
        body = await request.body()
        if len(body) > MAX_URLENCODED_BYTES:
            raise Open311Problem(
                413,
                f"a urlencoded form is at most {MAX_URLENCODED_BYTES:,} bytes; "
                "send photos as multipart/form-data",
            )
        if body and body.count(b"&") >= MAX_FORM_FIELDS:
            raise Open311Problem(400, f"the form has more than {MAX_FORM_FIELDS} fields")
        try:
            text = body.decode(encoding)
        except UnicodeDecodeError:
            bad = undecodable_fields(body, encoding)
            raise Open311Problem(400, *(not_in_charset(name, charset) for name in bad)) from None
        bad = decode_urlencoded(text, fields, encoding)
        if bad:
            raise Open311Problem(400, *(not_in_charset(name, charset) for name in bad))
    else:
        await _check_form_type(request, content_type)
        # Starlette reads an unknown charset as Latin-1 without a word; refused as above.
        form_encoding(content_charset(content_type))
        form = await request.form()
        for name, item in form.multi_items():
            if isinstance(item, UploadFile):
                if name == "media":
                    uploads.append(await item.read())
            else:
                fields.setdefault(name, []).append(item)
    if any(fields.get("media", ())):
        # A part without a filename arrives as text: dropped, the client would think its
        # photo attached.
        raise Open311Problem(
            400, "media must be sent as a file: a multipart/form-data part with a filename"
        )
    # Old clients put the api_key (or more) in the query string of a POST: its escapes are
    # UTF-8, whatever the body's charset (raw bytes read as Starlette's `request.query_params`
    # reads them).
    query = request.scope.get("query_string", b"")
    if query:
        bad = decode_urlencoded(query.decode("latin-1"), fields)
        if bad:
            raise Open311Problem(400, *(not_in_charset(n, None, in_query=True) for n in bad))
    return _Submission(
        fields=fields,
        uploads=uploads,
        idempotency_key=headers.get(b"idempotency-key", "").strip() or None,
        correlation_id=headers.get(b"x-correlation-id", "").strip() or None,
    )


_WANTED_HEADERS = frozenset({b"content-type", b"idempotency-key", b"x-correlation-id"})


def _wanted_headers(request: Request) -> dict[bytes, str]:
    """The headers a submission is read by, each the first of its name (as
    `request.headers.get` gives it), found in one pass over the raw headers."""
    found: dict[bytes, str] = {}
    for name, value in request.scope["headers"]:
        if name in _WANTED_HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return found


#: An X-Correlation-Id is on every log line of its request, in its events (to back-office
#: systems and webhooks) and its audit trail, all of which leave identifiers unredacted: no room
#: for a resident's name or e-mail address, nor for a value long enough to bloat each of them.
_CORRELATION_ID = re.compile(docs.CORRELATION_ID_PATTERN)


def _correlation_id_problem(value: str) -> str | None:
    """Why a client's X-Correlation-Id is refused, or None."""
    if _CORRELATION_ID.fullmatch(value):
        return None
    return (
        "X-Correlation-Id: must be 1 to 128 printable ASCII characters without spaces, quotes "
        "or @ (a UUID, for example): it is logged and sent to back-office systems"
    )


async def _check_form_type(request: Request, content_type: str) -> None:
    """Refuse a body that is not a form with 415: read as one it would be empty, and the client
    would hear about missing fields it did send. An empty body needs no type (everything may be
    in the query string)."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type in FORM_TYPES or not await request.body():
        return
    given = f"Content-Type {media_type[:80]!r}" if media_type else "a body without Content-Type"
    raise Open311Problem(
        415, f"{given} is not accepted: send the form as {' or '.join(FORM_TYPES)}"
    )


@router.post(
    "/requests.{fmt}",
    summary="Create a request",
    responses=docs.responses(docs.CREATED, errors={**docs.FORM_ERRORS, **docs.CREATE_ERRORS}),
    response_class=Response,
    openapi_extra={
        **docs.form_body(docs.CREATE_FIELDS, files=True),
        "parameters": docs.CREATE_HEADERS,
    },
)
async def create_request(request: Request, fmt: Format) -> Response:
    # Documents the route (OpenAPI); requests are served by `create_request_fast` below.
    return await _create(request, fmt)


async def create_request_fast(request: Request) -> Response:
    """POST /requests.{fmt} on a plain Starlette route, matched before FastAPI's routes.

    Intake is the hot path, and FastAPI's per-call work for a route (solving parameters,
    wrapping the endpoint) was about a fifth of the CPU of a create; this handler reads the
    request itself anyway. Errors go through the same exception handlers as everywhere.
    """
    fmt = request.path_params["fmt"]
    if fmt not in _FORMATS:
        raise Open311Problem(404, "unknown format: use .json or .xml")
    return await _create(request, Format(fmt))


_FORMATS = frozenset(f.value for f in Format)
FAST_ROUTES = [Route("/open311/v2/requests.{fmt}", create_request_fast, methods=["POST"])]


async def _create(request: Request, fmt: Format) -> Response:
    ctx = context(request)
    submission = await _read_submission(request)
    prepared = await _check_create(ctx, submission)
    # The write joins other creates in one transaction; answered only after it committed.
    try:
        accepted = await ctx.commit(prepared)
    except ClientRevoked:
        if prepared.client is not None:
            ctx.clients.forget(prepared.client.id)
        raise Open311Problem(403, INVALID_KEY) from None
    except IdempotencyConflict as exc:
        # Replaying the first answer would tell the client this report was recorded; it was not.
        raise Open311Problem(
            409,
            f"Idempotency-Key {exc.header_key[:80]!r} was already used for a different request; "
            "send this request with a new Idempotency-Key",
        ) from None
    # 200, not 201, for a report created too: GeoReport v2 names no success code, and deployed
    # clients (the GeoReporter Android app, the CUTR open311-client library) take anything but
    # 200 for a failure, so that a resident sends the report again.
    if accepted.replayed:
        # The first answer again: nothing was created this time.
        return respond(accepted.answer, fmt, "requests", headers={"Idempotent-Replayed": "true"})
    return respond(accepted.answer, fmt, "requests")


async def _check_create(ctx: ApiContext, submission: _Submission) -> Prepared:
    """Authenticate and validate, in the order a client fixes things: key, place, form.

    Runs on the event loop (it is a few dozen microseconds of pure checks when the client is
    remembered); only a store lookup or saving uploads goes to a thread.
    """
    form = submission.fields
    jurisdiction = ctx.catalogue.jurisdiction(first(form, "jurisdiction_id"))
    api_key = first(form, "api_key")
    client, remembered = await ctx.authenticate_remembered(api_key, jurisdiction)
    try:
        draft = _validate(ctx, jurisdiction, submission)
        media = await _save_uploads(ctx, submission.uploads)
    except Open311Problem:
        if remembered:
            # A revoked key must hear 403 before it hears about its form.
            ctx.clients.forget(client.id)
            await run_in_threadpool(ctx.authenticate, api_key, jurisdiction)
        raise
    return prepare(
        draft,
        client=client,
        actor=f"api:{client.name}",
        idempotency_header=submission.idempotency_key,
        media=media,
        correlation_id=submission.correlation_id,
    )


async def _save_uploads(ctx: ApiContext, uploads: list[bytes]) -> tuple[Media, ...]:
    """Store the checked uploads without their metadata (in a thread: it copies and writes
    files); a 400 naming each whose metadata cannot be removed, none stored then."""
    if not uploads:
        return ()
    try:
        return await run_in_threadpool(ctx.media.save_all, uploads)
    except UnreadableUploads as exc:
        raise Open311Problem(400, *exc.problems) from None


def _validate(ctx: ApiContext, jurisdiction: str, submission: _Submission) -> RequestDraft:
    """The draft request; a 404 for an unknown service_code, else every problem with the
    submission at once as a 400."""
    form = submission.fields
    code = first(form, "service_code")
    service = ctx.catalogue.service(jurisdiction, code) if code else None
    if code is not None and service is None:
        # GeoReport v2: "404 - service_code or jurisdiction_id was not found", as for an unknown
        # jurisdiction_id; the rest of the form means nothing without its service's definition.
        raise Open311Problem(404, f"service_code {code[:80]!r} is not a service of {jurisdiction}")
    problems: list[str] = []
    key = submission.idempotency_key
    if key is not None:
        try:
            check_text("Idempotency-Key", key, limit=docs.MAX_IDEMPOTENCY_KEY)
        except InvalidValue as exc:
            problems.append(str(exc))
    if submission.correlation_id is not None:
        problem = _correlation_id_problem(submission.correlation_id)
        if problem:
            problems.append(problem)
    if code is None:
        problems.append("service_code required")
    if len(submission.uploads) > MAX_MEDIA_FILES:
        problems.append(f"media: at most {MAX_MEDIA_FILES} files")
    for index, data in enumerate(submission.uploads, start=1):
        problem = check_upload(data, index)
        if problem:
            problems.append(problem)
    draft = parse_create_form(form, service)
    if isinstance(draft, list):
        problems.extend(e.description for e in draft)
    if problems or not isinstance(draft, RequestDraft):
        raise Open311Problem(400, *problems)
    return draft


@router.post(
    "/servicerequestupdates.{fmt}",
    summary="Record a status update pushed by a back-end or partner",
    responses=docs.responses(docs.UPDATES, errors={**docs.FORM_ERRORS, **docs.UPDATE_ERRORS}),
    response_class=Response,
    openapi_extra=docs.form_body(docs.UPDATE_FIELDS),
)
async def post_update(request: Request, fmt: Format) -> Response:
    ctx = context(request)
    submission = await _read_submission(request)
    document = await ctx.write(_record_update, ctx, submission.fields, submission.correlation_id)
    return respond(document, fmt, "updates")


def _record_update(
    ctx: ApiContext, form: FormData, correlation_id: str | None
) -> list[dict[str, object]]:
    """Record a pushed update; `correlation_id` (X-Correlation-Id) goes with its events, as a
    create's does (the request's id when absent)."""
    # Read from the store on every update, never from the cache creates use: a revocation or
    # a permission taken away holds from the next update on, in every API process.
    client = ctx.authenticate(first(form, "api_key"), None)
    if not client.may_post_updates:
        # Before the form is read: such a key does not learn which request ids exist either.
        raise Open311Problem(403, _updates_not_allowed(client.name))
    if correlation_id is not None and (problem := _correlation_id_problem(correlation_id)):
        raise Open311Problem(400, problem)
    # Optional, the request id naming the request anyway (as on GET); unknown is a 404.
    jurisdiction = first(form, "jurisdiction_id")
    if jurisdiction is not None:
        ctx.catalogue.jurisdiction(jurisdiction)
    update = parse_update_form(form, source=f"api:{client.name}", now=datetime.now(UTC))
    if isinstance(update, list):
        raise Open311Problem.of(400, update)
    existing = ctx.store.get_request(update.request_id)
    # Another jurisdiction's request is not found, as on GET /requests/{id}.
    if existing is None or jurisdiction not in (None, existing.jurisdiction):
        raise Open311Problem(404, f"service_request_id {update.request_id[:80]!r} not found")
    if client.jurisdiction not in (None, existing.jurisdiction):
        raise Open311Problem(403, f"api_key is not valid for jurisdiction {existing.jurisdiction}")
    try:
        record_status_update(
            ctx.store,
            update,
            actor=f"api:{client.name}",
            correlation_id=correlation_id,
            refuse_conflicts=True,
            client_id=client.id,
        )
    except UpdatesNotAllowed:
        raise Open311Problem(403, _updates_not_allowed(client.name)) from None
    except KeyError:
        raise Open311Problem(
            404, f"service_request_id {update.request_id[:80]!r} not found"
        ) from None
    except HistoryFull as exc:
        raise Open311Problem(409, str(exc)) from None
    except UpdateConflict:
        # Answering 200 would tell the client its new content was recorded; it was not.
        raise Open311Problem(
            409,
            f"update_id {update.update_id[:80]!r} was already recorded for service_request_id "
            f"{update.request_id[:80]!r} with other content (status, updated_datetime, "
            "description, media_url or external_status_code); send a new update with a new "
            "update_id",
        ) from None
    # A repeated update_id is a pusher's retry: the same answer, nothing recorded twice.
    return render.updates([update])


def _updates_not_allowed(name: str) -> str:
    return (
        f"api_key may not post status updates: client {name!r} may create and read requests "
        f"only; an operator of this civicbus grants it with `civicbus clients allow-updates "
        f"{name}`"
    )
