"""The civicbus HTTP application: the Open311 API, media files, a health check and metrics.

`create_app(runtime)` is the only entry point; the CLI serves it with uvicorn, tests call it
directly. Every error leaves as an Open311 error list in the format the path asked for, never
as a stack trace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

# FileResponse imports this on the first file it serves, from a worker thread. Importing it at
# start-up keeps module compilation off threads: CPython 3.11.7 can fail a compile that races
# another one with "SystemError: AST constructor recursion depth mismatch" (a CPython bug).
import anyio._core._fileio  # noqa: F401
import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bus.api import docs
from bus.api.context import ApiContext
from bus.api.head import HeadAsGet, allowed_methods
from bus.api.limits import BodyLimit
from bus.api.media import CONTENT_TYPES
from bus.api.open311_reads import discovery_router
from bus.api.open311_reads import router as reads
from bus.api.open311_writes import FAST_ROUTES
from bus.api.open311_writes import router as writes
from bus.api.params import context
from bus.api.wire import JSON_TYPE, Open311Problem, error_response
from bus.bootstrap import Runtime
from bus.metrics import api_registry
from bus.store import StoreUnavailable
from bus.subscriptions import route_name
from schemas.open311 import Open311Error

log = structlog.get_logger(__name__)

#: Seconds a client should wait before retrying when the store is unavailable.
RETRY_AFTER = 5
#: On every /media/ answer: what a resident uploaded never runs as a page of the API's origin
#: (its cookies, its other answers). No guessing a type other than the one sent (a "JPEG" that
#: reads as HTML), and a file opened on its own is sandboxed: no scripts, no origin, nothing
#: loaded from elsewhere.
MEDIA_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def create_app(runtime: Runtime, *, intake_process: bool = False) -> FastAPI:
    """Build the API on a runtime; the config is read and the catalogue rendered once, here.

    `intake_process`: creates are written by the intake writer process (SQLite, a second core:
    see bus/api/intake_process.py), started with the app, else on the event loop.
    """
    ctx = ApiContext.build(runtime, intake_process=intake_process)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.start()
        try:
            yield
        finally:
            ctx.close()

    # /docs (Swagger UI) loads its script and styles from the API itself, not from a CDN: on a
    # city's intranet, or an integrator's machine without internet, it was a blank page. No
    # /redoc: it showed the same document, and its page loads Redocly's logo from their CDN.
    app = FastAPIOffline(
        static_url="/docs/assets",
        redoc_url=None,
        lifespan=lifespan,
        title="civicbus Open311 GeoReport v2 API",
        version="2",
        description="Open311 GeoReport v2 with the mySociety servicerequestupdates extension.",
        # civicbus reports through its own metrics (/metrics) and log lines. FastAPI's native
        # OpenTelemetry, off here, asked the global providers on every request whether anyone
        # listens: ~3 % of a create's CPU, for providers civicbus never configures.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.civicbus = ctx
    # Creates first: routes are matched in order, and intake is the hot path.
    app.include_router(writes, prefix="/open311/v2", tags=["open311"])
    app.include_router(discovery_router, prefix="/open311", tags=["open311"])
    app.include_router(reads, prefix="/open311/v2", tags=["open311"])
    _add_service_routes(app)
    app.router.routes[:0] = FAST_ROUTES
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=runtime.config.api.max_body_bytes)
    app.add_middleware(HeadAsGet)
    if runtime.config.api.cors_origins:
        # Outermost, so that a browser's preflight is answered before anything else looks at
        # it. No credentials: the API key travels in the form or query, never in a cookie.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=runtime.config.api.cors_origins,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Content-Type", "Idempotency-Key", "X-Correlation-Id"],
            expose_headers=["Idempotent-Replayed", "Retry-After"],
            max_age=600,
        )
    app.openapi = lambda: _openapi(app, ctx.catalogue.jurisdictions)  # type: ignore[method-assign]
    return app


def _add_service_routes(app: FastAPI) -> None:
    @app.get(
        "/healthz",
        summary="Liveness and store reachability",
        responses={
            200: {"content": {"application/json": {"schema": {"type": "object"}}}},
            503: {"description": "store unavailable", "content": docs.content(docs.ERRORS)},
        },
        response_class=Response,
    )
    async def healthz(request: Request) -> Response:
        # A token lookup is the cheapest read every store answers; it proves the DB is there.
        await run_in_threadpool(context(request).store.resolve_token, "healthz")
        return Response(b'{"status":"ok"}', media_type=JSON_TYPE)

    ctx: ApiContext = app.state.civicbus
    instances = list(ctx.runtime.config.instances)
    # The store is opened on first use (a scrape), as for every other route.
    registry = api_registry(
        lambda: ctx.store,
        lambda: [*instances, *(route_name(s.id) for s in ctx.store.list_subscriptions())],
    )

    @app.get(
        "/metrics",
        summary="Prometheus metrics: the bus's backlog in the store and this process's counters",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
        response_class=Response,
    )
    async def metrics() -> Response:
        # Collecting reads the store: off the event loop.
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/media/{name}",
        summary="A stored media file",
        responses={
            200: {"content": {t: {} for t in CONTENT_TYPES.values()}},
            404: {"description": "no such file", "content": docs.content(docs.ERRORS)},
        },
        response_class=Response,
    )
    async def media(request: Request, name: str) -> Response:
        found = context(request).media.find(name)
        if found is None:
            raise Open311Problem(404, f"media {name[:80]!r} not found", headers=MEDIA_HEADERS)
        path, content_type = found
        # Content-addressed, so it never changes, but it can be taken down (bus.takedown): an
        # hour in a browser or a proxy, not a year, keeps serving a photo taken down.
        headers = {**MEDIA_HEADERS, "Cache-Control": "public, max-age=3600"}
        if content_type == "application/pdf":
            # Downloaded, not shown: a browser's PDF viewer runs the document's scripts and
            # forms, and a PDF keeps what it came with (see bus.api.media_metadata).
            headers["Content-Disposition"] = "attachment"
        return FileResponse(path, media_type=content_type, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Open311Problem)
    async def problem(request: Request, exc: Open311Problem) -> Response:
        return error_response(exc.status, exc.errors, request.url.path, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # Only the `.{fmt}` suffix is typed: a bad one is an unknown resource, a 404.
        for error in exc.errors():
            if tuple(error.get("loc", ()))[-1:] == ("fmt",):
                return error_response(
                    404,
                    [Open311Error(404, "unknown format: use .json or .xml")],
                    request.url.path,
                )
        described = [
            Open311Error(400, f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}")
            for e in exc.errors()
        ]
        return error_response(400, described, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code if 400 <= exc.status_code < 600 else 400
        text = {404: "not found", 405: "method not allowed"}.get(status, str(exc.detail))
        headers = exc.headers
        if status == 405:
            headers = {
                **(headers or {}),
                "Allow": allowed_methods(app.router.routes, request.scope),
            }
        return error_response(status, [Open311Error(status, text)], request.url.path, headers)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, exc: StoreUnavailable) -> Response:
        log.warning("api.store_unavailable", path=request.url.path, reason=str(exc))
        return error_response(
            503,
            [Open311Error(503, "civicbus cannot take requests right now; please retry")],
            request.url.path,
            {"Retry-After": str(RETRY_AFTER)},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("api.unexpected_error", path=request.url.path)
        return error_response(
            500, [Open311Error(500, "internal error; it has been logged")], request.url.path
        )


def _openapi(app: FastAPI, jurisdictions: tuple[str, ...]) -> dict[str, Any]:
    """FastAPI's document, made exact for this deployment: no 422 (this API answers 400), and
    `jurisdiction_id` listing the served jurisdictions, required when there are several."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        several = len(jurisdictions) > 1
        choice = {"type": "string", "enum": list(jurisdictions)}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
                optional = operation.get("operationId", "").startswith("status_updates")
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "jurisdiction_id":
                        parameter["schema"] = dict(choice)
                        parameter["required"] = several and not optional
                content = operation.get("requestBody", {}).get("content", {})
                for media in content.values():
                    body = media["schema"]
                    if "jurisdiction_id" in body.get("properties", {}):
                        body["properties"]["jurisdiction_id"] = dict(choice)
                        if several:
                            body["required"] = ["jurisdiction_id"]
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
