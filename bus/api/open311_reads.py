"""The Open311 read methods: discovery, services, requests, tokens, status updates (GET).

Reads need no api_key. None of them ever returns reporter contact data.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import partial

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from bus.api import docs
from bus.api.params import collect, context, given, read, window
from bus.api.wire import Format, Open311Problem, respond
from bus.store import RequestQuery
from schemas import open311_render as render
from schemas.model import Status
from schemas.open311 import comma_list, parse_bool, parse_datetime, parse_float, parse_int

router = APIRouter()
discovery_router = APIRouter()

DEFAULT_LIMIT = 1000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_IDS = 1000
#: Most updates one GET /servicerequestupdates answers, the oldest of its window: a client reads
#: on with start_date at the last one's updated_datetime (repeating those of that instant).
MAX_UPDATES = 1000
# Request ids and tokens are ULIDs (tokens with a T prefix); anything else cannot exist.
_ID = re.compile(r"^T?[0-9A-HJKMNP-TV-Z]{26}$")

JURISDICTION = Query(None, description="required when several jurisdictions are served")
EXTENSIONS = Query(None, description="true adds extended_attributes and notes")


@discovery_router.get(
    "/discovery.{fmt}",
    summary="Service discovery",
    responses=docs.responses(docs.DISCOVERY),
    response_class=Response,
)
async def discovery(request: Request, fmt: Format) -> Response:
    ctx = context(request)
    api = ctx.runtime.config.api
    document = render.discovery(
        url=f"{ctx.base_url}/open311/v2",
        changeset=api.changeset,
        contact=api.contact,
        key_service=api.key_service,
        environment=api.environment,
    )
    return respond(document, fmt, "discovery")


@router.get(
    "/services.{fmt}",
    summary="The service list",
    responses=docs.responses(docs.SERVICES),
    response_class=Response,
)
async def service_list(
    request: Request, fmt: Format, jurisdiction_id: str | None = JURISDICTION
) -> Response:
    catalogue = context(request).catalogue
    body, content_type = catalogue.service_list(catalogue.jurisdiction(given(jurisdiction_id)), fmt)
    return Response(body, media_type=content_type)


@router.get(
    "/services/{service_code}.{fmt}",
    summary="A service definition",
    responses=docs.responses(docs.SERVICE_DEFINITION),
    response_class=Response,
)
async def service_definition(
    request: Request, service_code: str, fmt: Format, jurisdiction_id: str | None = JURISDICTION
) -> Response:
    catalogue = context(request).catalogue
    service = catalogue.service(catalogue.jurisdiction(given(jurisdiction_id)), service_code)
    if service is None:
        raise Open311Problem(404, f"service_code {service_code[:80]!r} not found")
    return respond(render.service_definition(service), fmt, "service_definition")


@router.get(
    "/requests.{fmt}",
    summary="Find requests",
    responses=docs.responses(docs.REQUESTS),
    response_class=Response,
)
async def find_requests(
    request: Request,
    fmt: Format,
    jurisdiction_id: str | None = JURISDICTION,
    service_request_id: list[str] | None = Query(
        None, description="comma list, may be repeated; overrides the rest"
    ),
    service_code: list[str] | None = Query(None, description="comma list, may be repeated"),
    start_date: str | None = Query(None, description="ISO 8601 with zone"),
    end_date: str | None = Query(None, description="ISO 8601 with zone; range ≤ 90 days"),
    status: list[str] | None = Query(
        None, description="comma list of open, closed (or extended), may be repeated"
    ),
    updated_after: str | None = Query(None),
    updated_before: str | None = Query(None),
    page: str | None = Query(None, description="1-based page number"),
    page_size: str | None = Query(None, description="default 50, at most 500"),
    lat_ne: str | None = Query(None),
    long_ne: str | None = Query(None),
    lat_sw: str | None = Query(None),
    long_sw: str | None = Query(None),
    bbox: str | None = Query(None, description="lat_ne,long_ne,lat_sw,long_sw"),
    extensions: str | None = EXTENSIONS,
) -> Response:
    ctx = context(request)
    _fail(_repeated(request, _ONE_VALUE_FILTERS))
    jurisdiction = ctx.catalogue.jurisdiction(given(jurisdiction_id))
    problems: list[str] = []
    with_extensions = collect(problems, lambda: parse_bool("extensions", extensions))
    offset, limit = _paging(problems, given(page), given(page_size))
    ids = _items(service_request_id)
    if ids:
        if len(ids) > MAX_IDS:
            problems.append(f"service_request_id: at most {MAX_IDS} ids")
        _fail(problems)
        known = [i for i in ids if _ID.match(i)]
        query = RequestQuery(ids=known, jurisdiction=jurisdiction, offset=offset, limit=limit)
        found = await run_in_threadpool(ctx.store.find_requests, query) if known else []
        return respond(render.requests(found, extensions=bool(with_extensions)), fmt, "requests")
    codes = _items(service_code)
    statuses = _statuses(problems, _items(status))
    dates = {
        name: _when(problems, name, value)
        for name, value in (
            ("start_date", start_date),
            ("end_date", end_date),
            ("updated_after", updated_after),
            ("updated_before", updated_before),
        )
    }
    box = _bbox(problems, [given(v) for v in (lat_ne, long_ne, lat_sw, long_sw)], given(bbox))
    # A client polling updated_after is told of a change to any request, however long ago it
    # was made: the default window of requested_datetime would hide the older ones. A range
    # given by start_date/end_date still applies, and so does the limit.
    after, before = dates["updated_after"], dates["updated_before"]
    if after is not None and before is not None and after >= before:
        problems.append("updated_after: must be before updated_before (nothing can match)")
    polled = after is not None or before is not None
    ranged = dates["start_date"] is not None or dates["end_date"] is not None
    requested: tuple[datetime | None, datetime | None] | None = None
    if not problems:
        requested = (
            (None, None)
            if polled and not ranged
            else window(problems, dates["start_date"], dates["end_date"], now=datetime.now(UTC))
        )
    _fail(problems)
    assert requested is not None
    if codes:
        codes = sorted(set(codes) & ctx.catalogue.codes(jurisdiction))
        if not codes:  # only unknown codes: nothing can match
            return respond([], fmt, "requests")
    query = RequestQuery(
        service_codes=codes or None,
        jurisdiction=jurisdiction,
        statuses=statuses,
        requested_from=requested[0],
        requested_to=requested[1],
        updated_after=dates["updated_after"],
        updated_before=dates["updated_before"],
        bbox=box,
        offset=offset,
        limit=limit,
    )
    found = await run_in_threadpool(ctx.store.find_requests, query)
    return respond(render.requests(found, extensions=bool(with_extensions)), fmt, "requests")


@router.get(
    "/requests/{service_request_id}.{fmt}",
    summary="One request",
    responses=docs.responses(docs.REQUESTS),
    response_class=Response,
)
async def get_request(
    request: Request,
    service_request_id: str,
    fmt: Format,
    jurisdiction_id: str | None = JURISDICTION,
    extensions: str | None = EXTENSIONS,
) -> Response:
    ctx = context(request)
    jurisdiction = ctx.catalogue.jurisdiction(given(jurisdiction_id))
    with_extensions = read(lambda: parse_bool("extensions", extensions))
    found = None
    if _ID.match(service_request_id):
        found = await run_in_threadpool(ctx.store.get_request, service_request_id)
    if found is None or found.jurisdiction != jurisdiction:
        raise Open311Problem(404, f"service_request_id {service_request_id[:80]!r} not found")
    return respond([render.request(found, extensions=with_extensions)], fmt, "requests")


@router.get(
    "/tokens/{token}.{fmt}",
    summary="The request id behind a batch token",
    responses=docs.responses(docs.TOKENS),
    response_class=Response,
)
async def resolve_token(
    request: Request, token: str, fmt: Format, jurisdiction_id: str | None = JURISDICTION
) -> Response:
    ctx = context(request)
    jurisdiction = ctx.catalogue.jurisdiction(given(jurisdiction_id))
    request_id = None
    if _ID.match(token):
        # Another jurisdiction's token is not found, as its request would not be.
        request_id = await run_in_threadpool(ctx.store.resolve_token, token, jurisdiction)
    if request_id is None:
        raise Open311Problem(404, f"token {token[:80]!r} not found")
    return respond(render.token(token, request_id), fmt, "requests")


@router.get(
    "/servicerequestupdates.{fmt}",
    summary="Status updates in a time range",
    responses=docs.responses(docs.UPDATES),
    response_class=Response,
)
async def status_updates(
    request: Request,
    fmt: Format,
    jurisdiction_id: str | None = Query(None, description="optional: only this jurisdiction"),
    start_date: str | None = Query(None, description="ISO 8601 with zone"),
    end_date: str | None = Query(None, description="ISO 8601 with zone; range ≤ 90 days"),
) -> Response:
    ctx = context(request)
    _fail(_repeated(request, ("jurisdiction_id", "start_date", "end_date")))
    jurisdiction = given(jurisdiction_id)
    if jurisdiction is not None:
        ctx.catalogue.jurisdiction(jurisdiction)
    problems: list[str] = []
    start_at = _when(problems, "start_date", start_date)
    end_at = _when(problems, "end_date", end_date)
    span = None if problems else window(problems, start_at, end_at, now=datetime.now(UTC))
    _fail(problems)
    assert span is not None
    found = await run_in_threadpool(
        partial(
            ctx.store.status_updates,
            span[0],
            span[1],
            jurisdiction=jurisdiction,
            limit=MAX_UPDATES,
        )
    )
    return respond(render.updates(found), fmt, "updates")


#: The filters of GET /requests that take one value each (the lists are service_request_id,
#: service_code and status).
_ONE_VALUE_FILTERS = (
    "jurisdiction_id", "start_date", "end_date", "updated_after", "updated_before", "page",
    "page_size", "lat_ne", "long_ne", "lat_sw", "long_sw", "bbox", "extensions",
)  # fmt: skip


def _repeated(request: Request, names: tuple[str, ...]) -> list[str]:
    """A problem for each of `names` given more than once: which one was meant is a guess (the
    framework keeps the last without a word)."""
    return [
        f"{name}: given {count} times; it takes one value"
        for name in names
        if (count := len(request.query_params.getlist(name))) > 1
    ]


def _items(values: list[str] | None) -> list[str]:
    """The items of a list parameter, comma delimited, repeated, or both: the spec's "may be
    declared multiple times, comma delimited", and clients that send a list as repeated keys
    (e.g. Retrofit's @Query List)."""
    return [item for value in values or () for item in comma_list(value)]


def _when(problems: list[str], name: str, value: str | None) -> datetime | None:
    value = given(value)
    if value is None:
        return None
    return collect(problems, lambda: parse_datetime(name, value))


def _fail(problems: list[str]) -> None:
    if problems:
        raise Open311Problem(400, *problems)


def _paging(problems: list[str], page: str | None, page_size: str | None) -> tuple[int, int]:
    if page is None and page_size is None:
        return 0, DEFAULT_LIMIT
    number = collect(problems, lambda: parse_int("page", page, low=1, high=10**6)) if page else 1
    size = (
        collect(problems, lambda: parse_int("page_size", page_size, low=1, high=MAX_PAGE_SIZE))
        if page_size
        else DEFAULT_PAGE_SIZE
    )
    return ((number or 1) - 1) * (size or DEFAULT_PAGE_SIZE), size or DEFAULT_PAGE_SIZE


def _statuses(problems: list[str], names: list[str]) -> list[Status] | None:
    if not names:
        return None
    chosen: set[Status] = set()
    for name in names:
        lowered = name.lower()
        if lowered == "open":
            chosen.update(s for s in Status if not s.is_closed)
        elif lowered == "closed":
            chosen.update(s for s in Status if s.is_closed)
        elif lowered in Status.__members__.values():
            chosen.add(Status(lowered))
        else:
            problems.append(f"status: {name[:40]!r} is not open or closed")
    return sorted(chosen)


def _coordinate(problems: list[str], name: str, value: str, limit: float) -> float | None:
    return collect(problems, lambda: parse_float(name, value, low=-limit, high=limit))


def _bbox(
    problems: list[str], corners: list[str | None], joined: str | None
) -> tuple[float, float, float, float] | None:
    if joined is not None:
        parts: list[str | None] = list(comma_list(joined))
        if len(parts) != 4:
            problems.append("bbox: give lat_ne,long_ne,lat_sw,long_sw")
            return None
        corners = parts
    if all(c is None for c in corners):
        return None
    if any(c is None for c in corners):
        problems.append("lat_ne, long_ne, lat_sw and long_sw must be given together")
        return None
    names = ("lat_ne", "long_ne", "lat_sw", "long_sw")
    values = []
    for name, corner in zip(names, corners, strict=True):
        assert corner is not None
        limit = 90.0 if name.startswith("lat") else 180.0
        values.append(_coordinate(problems, name, corner, limit))
    if any(v is None for v in values):
        return None
    lat_ne, long_ne, lat_sw, long_sw = (float(v) for v in values if v is not None)
    if lat_ne < lat_sw:
        problems.append("lat_ne: must not be south of lat_sw")
        return None
    return lat_ne, long_ne, lat_sw, long_sw
