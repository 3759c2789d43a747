"""A SIMULATED parks asset and work-request system, served over REST/JSON (FastAPI) for the sandbox.

It is not the real parks system: work requests live in a SQLite file in the sandbox state dir.
The API it simulates:

- `POST /oauth/token` — OAuth2 client credentials (form fields or HTTP Basic) -> bearer token.
  Tokens live in memory, so a restart (or `POST /_sandbox/revoke-tokens`) makes clients
  meet a 401 and fetch a new one, as they must with the real system.
- `POST /work-requests` — create one; `external_reference` is unique (409 with the existing id).
- `GET /work-requests?external_reference=...` — find by external reference.
- `GET /work-requests/{id}` — one work request.
- `GET /work-requests/changes?since=CURSOR&limit=N` — status changes after an opaque cursor,
  oldest first, with the cursor to ask from next.

Fault modes (`PUT /_sandbox/fault`): `down` 503, `slow` delays each call, `throttle` 429 with
`Retry-After`, `reject` answers creates with 422. Control endpoint: see `civicbus.sandbox._control`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from civicbus.sandbox._control import PREFIX, Control
from civicbus.sandbox._serving import ServedThread, serve_asgi
from civicbus.sandbox._workitems import (
    AutoProgress,
    Change,
    DuplicateReference,
    Faults,
    Item,
    UnknownItem,
    WorkItems,
)
from civicbus.sandbox.runner import ServeOptions

#: The statuses a work request moves through (the parks system's own codes).
FLOW = ("NEW", "ASSIGNED", "SCHEDULED", "IN_PROGRESS", "COMPLETED")
OTHER_STATUSES = ("CANCELLED", "DUPLICATE")
#: Sandbox-only credentials, used when `civicbus sandbox` is not given others. Not a secret.
SANDBOX_CLIENT_ID = "civicbus"
SANDBOX_CLIENT_SECRET = "sandbox-parks-secret"


class GeoPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class WorkRequestIn(BaseModel):
    """What a client sends to create a work request."""

    model_config = ConfigDict(extra="forbid")
    external_reference: str = Field(min_length=1, max_length=64)
    category: str = Field(min_length=1, max_length=40)
    park: str | None = Field(default=None, max_length=80)
    description: str | None = Field(default=None, max_length=2000)
    location: GeoPoint | None = None
    address: str | None = Field(default=None, max_length=200)
    priority: int = Field(default=3, ge=1, le=5)
    reported_at: str | None = None
    contact_email: str | None = Field(default=None, max_length=254)


class Tokens:
    """Issued bearer tokens, in memory only; each expires after `ttl` seconds."""

    def __init__(self, client_id: str, client_secret: str, ttl: float) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.ttl = ttl
        self._issued: dict[str, float] = {}

    def issue(self, client_id: str, client_secret: str) -> str | None:
        ok = secrets.compare_digest(client_id, self.client_id) and secrets.compare_digest(
            client_secret, self.client_secret
        )
        if not ok:
            return None
        token = secrets.token_urlsafe(24)
        self._issued[token] = time.monotonic() + self.ttl
        return token

    def valid(self, token: str) -> bool:
        return self._issued.get(token, 0.0) > time.monotonic()

    def revoke_all(self) -> int:
        count = len(self._issued)
        self._issued.clear()
        return count


def _work_request(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "external_reference": item.external_reference,
        "status": item.status,
        **{k: v for k, v in item.payload.items() if k != "external_reference"},
        "created_at": item.created_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
    }


def _change(change: Change) -> dict[str, Any]:
    return {
        "change_id": change.seq,
        "work_request_id": change.item_id,
        "external_reference": change.external_reference,
        "status": change.status,
        "changed_at": change.at.isoformat(),
        "note": change.note,
    }


def create_app(items: WorkItems, faults: Faults, tokens: Tokens) -> FastAPI:
    """The simulated parks API plus its control endpoint, as one FastAPI app."""
    app = FastAPI(title="Parks work requests (SIMULATED, civicbus sandbox)", openapi_url=None)
    revoke = {"revoke-tokens": lambda _: {"revoked": tokens.revoke_all()}}
    control = Control("parks", faults, items, actions=revoke)

    @app.middleware("http")
    async def apply_faults(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path.startswith(PREFIX):
            return await call_next(request)
        if faults.take("down"):
            return JSONResponse({"error": "simulated outage"}, status_code=503)
        if faults.take("throttle"):
            return JSONResponse(
                {"error": "too many requests (simulated)"},
                status_code=429,
                headers={"Retry-After": str(int(faults.delay))},
            )
        if faults.take("slow"):
            await asyncio.sleep(faults.delay)
        return await call_next(request)

    @app.api_route(PREFIX + "{rest:path}", methods=["GET", "POST", "PUT"], include_in_schema=False)
    async def sandbox_control(request: Request, rest: str) -> JSONResponse:
        body = await request.body()
        status, answer = await asyncio.to_thread(
            control.handle, request.method, request.url.path, body
        )
        return JSONResponse(answer, status_code=status)

    def bearer(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not tokens.valid(token):
            raise HTTPException(
                401,
                "a valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    @app.post("/oauth/token")
    def token(
        grant_type: Annotated[str, Form()],
        client_id: Annotated[str | None, Form()] = None,
        client_secret: Annotated[str | None, Form()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        if grant_type != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:]).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ":"
            client_id, _, client_secret = decoded.partition(":")
        issued = tokens.issue(client_id or "", client_secret or "")
        if issued is None:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        return JSONResponse(
            {"access_token": issued, "token_type": "Bearer", "expires_in": int(tokens.ttl)},
            headers={"Cache-Control": "no-store"},
        )

    @app.post("/work-requests", status_code=201, dependencies=[Depends(bearer)])
    def create(body: WorkRequestIn) -> JSONResponse:
        if faults.take("reject"):
            return JSONResponse(
                {"error": "the parks system rejected the request (simulated)"}, status_code=422
            )
        if body.location is None and not body.address:
            return JSONResponse(
                {"error": "a work request needs a location or an address"}, status_code=422
            )
        payload = body.model_dump(exclude={"external_reference"}, mode="json")
        try:
            item = items.create(body.external_reference, payload)
        except DuplicateReference as exc:
            return JSONResponse(
                {"error": "external_reference already used", "id": exc.existing.id},
                status_code=409,
            )
        return JSONResponse(
            _work_request(item), status_code=201, headers={"Location": f"/work-requests/{item.id}"}
        )

    @app.get("/work-requests", dependencies=[Depends(bearer)])
    def find(external_reference: str) -> dict[str, Any]:
        item = items.find(external_reference)
        return {"items": [] if item is None else [_work_request(item)]}

    @app.get("/work-requests/changes", dependencies=[Depends(bearer)])
    def changes(
        since: str = "0", limit: Annotated[int, Query(ge=1, le=500)] = 100
    ) -> dict[str, Any]:
        try:
            after = int(since)
        except ValueError as exc:
            raise HTTPException(400, "since must be a cursor returned by this endpoint") from exc
        found = items.changes(after_seq=after, limit=limit + 1)
        page = found[:limit]
        return {
            "changes": [_change(c) for c in page],
            "next": str(page[-1].seq if page else after),
            "more": len(found) > limit,
        }

    @app.get("/work-requests/{work_request_id}", dependencies=[Depends(bearer)])
    def get(work_request_id: str) -> dict[str, Any]:
        try:
            item = items.get(work_request_id)
        except UnknownItem as exc:
            raise HTTPException(404, "no such work request") from exc
        if item.id != work_request_id:
            raise HTTPException(404, "no such work request")
        return _work_request(item)

    return app


def serve(options: ServeOptions) -> ServedThread:
    """Start the parks simulator; state in `<state_dir>/parks.db`.

    Credentials come from `options.extra` (`client_id`, `client_secret`), else the sandbox-only
    defaults above; `token_ttl` (seconds) is optional.
    """
    items = WorkItems(options.state_dir / "parks.db", id_prefix="WR", flow=FLOW)
    faults = Faults()
    tokens = Tokens(
        options.extra.get("client_id", SANDBOX_CLIENT_ID),
        options.extra.get("client_secret", SANDBOX_CLIENT_SECRET),
        float(options.extra.get("token_ttl", 3600)),
    )
    url, stop_server = serve_asgi(
        create_app(items, faults, tokens), options.host, options.port, "parks"
    )
    progress = AutoProgress(items, options.auto_progress).start() if options.auto_progress else None

    def stop() -> None:
        if progress:
            progress.stop()
        stop_server()

    return ServedThread(url, stop)
