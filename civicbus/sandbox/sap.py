"""The sandbox's SAP **simulation**: plant-maintenance notifications over OData and simulated BAPIs.

No SAP system can run here, so this FastAPI app simulates the documented behaviour civicbus
relies on: the OData v2 service `API_MAINTNOTIFICATION` (see `sap_odata`) and the BAPIs of the
notification flow over HTTP (see `sap_bapi`; reached by `adapters.sap.rfc_http.Connection`).
Notifications live in `<state_dir>/sap.db`, so they survive a restart. Control endpoint, in the
sandbox's common shape (`/_sandbox/`), never subject to faults:

    GET  /_sandbox/                      simulator, fault, item count
    GET  /_sandbox/items                 every notification
    GET  /_sandbox/items/{number}        one notification (number or external reference)
    POST /_sandbox/items/{number}/status {"status": "NOPR", "user_status": "ASGN"}
    POST /_sandbox/items/{number}/advance  OSNO -> NOPR -> NOCO
    PUT  /_sandbox/fault                 {"mode": "none|down|slow|reject|lose_commit_response",
                                          "retry_after": 5, "delay": 2, "count": null}
    POST /_sandbox/csrf/expire           forget every CSRF token (clients must refetch)
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from civicbus.sandbox import sap_bapi, sap_odata
from civicbus.sandbox._serving import ServedThread, serve_asgi
from civicbus.sandbox.runner import ServeOptions
from civicbus.sandbox.sap_faults import Fault, Faults
from civicbus.sandbox.sap_state import PROGRESSION, SYSTEM_STATUSES, SapStore

CONTROL = "/_sandbox"
#: The functional locations the simulated SAP knows: those of the sandbox city's GeoJSON.
#: (Found next to the source tree; when absent, the simulation accepts any functional location.)
DEFAULT_LOCATIONS = (
    Path(__file__).resolve().parents[2] / "deploy/sandbox/geo/functional_locations.geojson"
)


def known_locations(geojson: Path) -> frozenset[str] | None:
    """Functional locations named in a GeoJSON file (properties `functional_location`, `parent`)."""
    if not geojson.exists():
        return None
    features = json.loads(geojson.read_text(encoding="utf-8")).get("features", [])
    names = {
        str(f["properties"][key])
        for f in features
        for key in ("functional_location", "parent")
        if f["properties"].get(key)
    }
    return frozenset(names)


def create_app(
    store: SapStore,
    *,
    user: str | None = None,
    password: str | None = None,
    locations: frozenset[str] | None = None,
    faults: Faults | None = None,
) -> FastAPI:
    """The simulation as an ASGI app; basic auth is required when `user` is given."""
    faults = faults or Faults()
    csrf = sap_odata.CsrfSessions()
    app = FastAPI(title="SAP simulation (civicbus sandbox)", openapi_url=None, docs_url=None)

    def reject_message() -> str | None:
        fault = faults.take("reject")
        return fault.message if fault else None

    app.include_router(sap_odata.router(store, csrf, locations, reject_message))
    app.include_router(sap_bapi.router(store, faults, locations))

    @app.exception_handler(sap_odata.ODataError)
    async def odata_error(request: Request, exc: sap_odata.ODataError) -> Response:
        return sap_odata.error_response(exc.status, exc.code, exc.message, exc.details)

    @app.middleware("http")
    async def gate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path.startswith(CONTROL):
            return await call_next(request)
        down = faults.take("down")
        if down:
            retry = str(down.retry_after)
            if request.url.path.startswith(sap_bapi.RFC_PATH):
                body = {
                    "error": {
                        "kind": "CommunicationError",
                        "key": "RFC_COMMUNICATION_FAILURE",
                        "message": "partner not reached (simulated outage)",
                    }
                }
                return JSONResponse(body, status_code=503, headers={"retry-after": retry})
            return _unavailable(retry)
        slow = faults.take("slow")
        if slow:
            await asyncio.sleep(slow.delay)
        if user is not None and not _authorized(request, user, password or ""):
            if request.url.path.startswith(sap_bapi.RFC_PATH):
                body = {
                    "error": {
                        "kind": "LogonError",
                        "key": "RFC_LOGON_FAILURE",
                        "message": "Name or password is incorrect (repeat logon)",
                    }
                }
                return JSONResponse(body, status_code=401)
            return Response(
                "Logon failed (simulation)",
                status_code=401,
                headers={
                    "www-authenticate": 'Basic realm="SAP NetWeaver Application Server [SIM/100]"'
                },
            )
        return await call_next(request)

    _add_control(app, store, faults, csrf)
    return app


def _unavailable(retry_after: str) -> Response:
    response = sap_odata.error_response(503, "SIM/503", "Service unavailable (simulated outage)")
    response.headers["retry-after"] = retry_after
    return response


def _authorized(request: Request, user: str, password: str) -> bool:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded).decode()
    except ValueError:
        return False
    return given == f"{user}:{password}"


def _add_control(
    app: FastAPI, store: SapStore, faults: Faults, csrf: sap_odata.CsrfSessions
) -> None:
    def lookup(key: str) -> Any:
        found = store.get(key) if key.isdigit() else None
        found = found or next((n for n in store.all() if n.ext_ref == key), None)
        if found is None:
            return JSONResponse({"error": f"no notification {key!r}"}, status_code=404)
        return found

    @app.get(CONTROL + "/")
    def info() -> dict[str, Any]:
        return {
            "simulator": "sap",
            "simulation": True,
            "fault": asdict(faults.current()),
            "items": len(store.all()),
            "flow": list(PROGRESSION),
        }

    @app.get(CONTROL + "/items")
    def items() -> list[dict[str, Any]]:
        return [asdict(n) for n in store.all()]

    @app.get(CONTROL + "/items/{key}")
    def item(key: str) -> Any:
        found = lookup(key)
        return found if isinstance(found, Response) else asdict(found)

    @app.post(CONTROL + "/items/{key}/status")
    def set_status(key: str, body: dict[str, Any]) -> Any:
        found = lookup(key)
        if isinstance(found, Response):
            return found
        status = body.get("status")
        if status is not None and status not in SYSTEM_STATUSES:
            return JSONResponse(
                {"error": f"system status must be one of {sorted(SYSTEM_STATUSES)}"},
                status_code=400,
            )
        updated = store.set_status(
            found.number, system_status=status, user_status=body.get("user_status")
        )
        return asdict(updated) if updated else None

    @app.post(CONTROL + "/items/{key}/advance")
    def advance(key: str) -> Any:
        found = lookup(key)
        if isinstance(found, Response):
            return found
        if found.system_status not in PROGRESSION[:-1]:
            return JSONResponse(
                {"error": "the notification is at the end of the flow"}, status_code=409
            )
        following = PROGRESSION[PROGRESSION.index(found.system_status) + 1]
        updated = store.set_status(found.number, system_status=following)
        return asdict(updated) if updated else None

    @app.put(CONTROL + "/fault")
    def fault(body: dict[str, Any]) -> dict[str, Any]:
        chosen = Fault(
            mode=body.get("mode", "none"),
            retry_after=int(body.get("retry_after", 5)),
            delay=float(body.get("delay", 2.0)),
            message=str(body.get("message", Fault.message)),
            remaining=body.get("count"),
        )
        if chosen.mode not in ("none", "down", "slow", "reject", "lose_commit_response"):
            return {"error": f"unknown fault mode {chosen.mode!r}"}
        faults.set(chosen)
        return asdict(chosen)

    @app.post(CONTROL + "/csrf/expire")
    def expire_csrf() -> dict[str, str]:
        csrf.expire_all()
        return {}


class _AutoProgress:
    """Moves every open notification one status on, every `interval` seconds (a daemon thread)."""

    def __init__(self, store: SapStore, interval: float) -> None:
        self._store, self._interval = store, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-sap-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval / 2):
            self._store.auto_progress(self._interval)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


def serve(options: ServeOptions) -> ServedThread:
    """Start the SAP simulation on (host, port); state in `<state_dir>/sap.db`.

    `options.extra` may hold `sap_user`/`sap_password` (require basic auth) and `sap_locations`
    (a GeoJSON file of known functional locations).
    """
    store = SapStore(options.state_dir / "sap.db")
    locations = known_locations(Path(options.extra.get("sap_locations", str(DEFAULT_LOCATIONS))))
    app = create_app(
        store,
        user=options.extra.get("sap_user"),
        password=options.extra.get("sap_password"),
        locations=locations,
    )
    url, stop_server = serve_asgi(app, options.host, options.port, "sap")
    progress = _AutoProgress(store, options.auto_progress) if options.auto_progress else None

    def stop() -> None:
        if progress:
            progress.stop()
        stop_server()
        store.close()

    return ServedThread(url, stop)
