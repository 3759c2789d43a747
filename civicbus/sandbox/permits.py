"""A SIMULATED permit and inspection system, served over SOAP 1.1 (spyne + lxml) for the sandbox.

It is not the real permit system: it keeps cases in a SQLite file in the sandbox state dir and
implements the contract of `schemas/wsdl/permits.wsdl` (the committed WSDL is what it serves at
`/permits?wsdl`; a test checks that spyne's own rendering of the service still matches it):

- `CreateCase(externalReference, caseType, description, address, lat, lon, district,
  reportedAt, contactEmail) -> CaseReceipt`; a second case with the same external reference
  is refused with a `Client.DuplicateReference` fault.
- `FindCaseByExternalReference(externalReference) -> Case` (empty when there is none).
- `GetCaseStatus(caseId) -> CaseStatus`.
- `ListCaseChangesSince(since, afterSequence, maxResults) -> CaseChanges`, oldest first.

Invalid data (schema violations, caught by lxml validation) is a `Client` fault; the `reject`
fault mode turns every create into a `Client.Rejected` fault, `down` answers HTTP 503, `slow`
delays each call. Control endpoint: `/_sandbox/` (see `civicbus.sandbox._control`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spyne import (
    Application,
    Array,
    Boolean,
    ComplexModel,
    DateTime,
    Double,
    Fault,
    Integer,
    Long,
    ServiceBase,
    Unicode,
    rpc,
)
from spyne.interface.wsdl import Wsdl11
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from civicbus.sandbox._control import Control, WsgiApp, with_control
from civicbus.sandbox._serving import ServedThread, serve_wsgi
from civicbus.sandbox._workitems import (
    AutoProgress,
    Change,
    DuplicateReference,
    Faults,
    UnknownItem,
    WorkItems,
)
from civicbus.sandbox.runner import ServeOptions

NAMESPACE = "http://permits.sandbox.example/soap/v1"
WSDL_PATH = Path(__file__).resolve().parents[2] / "schemas" / "wsdl" / "permits.wsdl"
SERVICE_PATH = "/permits"
SOAP_OVER_HTTP = "http://schemas.xmlsoap.org/soap/http"
#: The statuses a case moves through; the permit office's own codes.
FLOW = ("RECEIVED", "UNDER_REVIEW", "INSPECTION_SCHEDULED", "APPROVED", "CLOSED")
#: Statuses the control endpoint may also set by hand (not reached by `advance`).
OTHER_STATUSES = ("REJECTED", "WITHDRAWN")


class CaseReceipt(ComplexModel):
    __namespace__ = NAMESPACE
    caseId = Unicode(min_occurs=1)
    externalReference = Unicode(min_occurs=1)
    status = Unicode(min_occurs=1)
    createdAt = DateTime(min_occurs=1)


class Case(ComplexModel):
    __namespace__ = NAMESPACE
    caseId = Unicode(min_occurs=1)
    externalReference = Unicode(min_occurs=1)
    caseType = Unicode(min_occurs=1)
    status = Unicode(min_occurs=1)
    createdAt = DateTime(min_occurs=1)
    updatedAt = DateTime(min_occurs=1)


class CaseStatus(ComplexModel):
    __namespace__ = NAMESPACE
    caseId = Unicode(min_occurs=1)
    status = Unicode(min_occurs=1)
    changedAt = DateTime(min_occurs=1)


class CaseChange(ComplexModel):
    __namespace__ = NAMESPACE
    sequence = Long(min_occurs=1)
    caseId = Unicode(min_occurs=1)
    externalReference = Unicode(min_occurs=1)
    status = Unicode(min_occurs=1)
    changedAt = DateTime(min_occurs=1)
    note = Unicode


class CaseChanges(ComplexModel):
    __namespace__ = NAMESPACE
    changes = Array(CaseChange)
    #: The highest sequence in this page (or `afterSequence` when the page is empty).
    lastSequence = Long(min_occurs=1)
    #: True when more changes wait beyond this page.
    more = Boolean(min_occurs=1)


@dataclass
class _State:
    items: WorkItems
    faults: Faults


def _state(ctx: Any) -> _State:
    state: _State = ctx.app.user_state
    return state


def _caller_fault(message: str, code: str = "Client.InvalidData") -> Fault:
    return Fault(faultcode=code, faultstring=message)


class PermitService(ServiceBase):
    """The four operations of the permit system's case API (simulated)."""

    @rpc(
        Unicode(min_occurs=1, nillable=False, min_len=1, max_len=64),
        Unicode(min_occurs=1, nillable=False, min_len=1, max_len=20, pattern=r"[A-Z_]+"),
        Unicode(max_len=2000),
        Unicode(max_len=200),
        Double(ge=-90, le=90),
        Double(ge=-180, le=180),
        Unicode(max_len=40),
        DateTime,
        Unicode(max_len=254),
        _returns=CaseReceipt,
    )
    def CreateCase(
        ctx,
        externalReference,
        caseType,
        description,
        address,
        lat,
        lon,
        district,
        reportedAt,
        contactEmail,
    ):
        state = _state(ctx)
        if state.faults.take("reject"):
            raise _caller_fault(
                "the permit system rejected the case (simulated)", "Client.Rejected"
            )
        if lat is None and lon is None and not address:
            raise _caller_fault("a case needs an address or a position")
        payload = {
            "caseType": caseType,
            "description": description,
            "address": address,
            "lat": lat,
            "lon": lon,
            "district": district,
            "reportedAt": reportedAt.isoformat() if reportedAt else None,
            "contactEmail": contactEmail,
        }
        try:
            item = state.items.create(externalReference, payload)
        except DuplicateReference as exc:
            raise _caller_fault(
                f"external reference already used by case {exc.existing.id}",
                "Client.DuplicateReference",
            ) from exc
        return CaseReceipt(
            caseId=item.id,
            externalReference=item.external_reference,
            status=item.status,
            createdAt=item.created_at,
        )

    @rpc(Unicode(min_occurs=1, nillable=False, min_len=1, max_len=64), _returns=Case)
    def FindCaseByExternalReference(ctx, externalReference):
        item = _state(ctx).items.find(externalReference)
        if item is None:
            return None
        return Case(
            caseId=item.id,
            externalReference=item.external_reference,
            caseType=item.payload.get("caseType") or "",
            status=item.status,
            createdAt=item.created_at,
            updatedAt=item.updated_at,
        )

    @rpc(Unicode(min_occurs=1, nillable=False, min_len=1), _returns=CaseStatus)
    def GetCaseStatus(ctx, caseId):
        try:
            item = _state(ctx).items.get(caseId)
        except UnknownItem as exc:
            raise _caller_fault(f"no case {caseId}", "Client.UnknownCase") from exc
        return CaseStatus(caseId=item.id, status=item.status, changedAt=item.updated_at)

    @rpc(DateTime, Long(ge=0), Integer(ge=1, le=1000), _returns=CaseChanges)
    def ListCaseChangesSince(ctx, since, afterSequence, maxResults):
        after = afterSequence or 0
        limit = maxResults or 100
        found = _state(ctx).items.changes(
            after_seq=after, since=_aware(since) if since else None, limit=limit + 1
        )
        page = found[:limit]
        return CaseChanges(
            changes=[_case_change(c) for c in page],
            lastSequence=page[-1].seq if page else after,
            more=len(found) > limit,
        )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _case_change(change: Change) -> CaseChange:
    return CaseChange(
        sequence=change.seq,
        caseId=change.item_id,
        externalReference=change.external_reference,
        status=change.status,
        changedAt=change.at,
        note=change.note,
    )


def application(state: _State | None = None) -> Application:
    """The spyne application (SOAP 1.1 in and out, requests validated by lxml)."""
    app = Application(
        [PermitService],
        tns=NAMESPACE,
        name="PermitCaseService",
        in_protocol=Soap11(validator="lxml"),
        out_protocol=Soap11(),
    )
    app.user_state = state
    return app


def rendered_wsdl(address: str = "http://127.0.0.1:8322/permits") -> str:
    """The WSDL spyne renders for this service (compared with the committed file in a test)."""
    app = application()
    app.transport = SOAP_OVER_HTTP  # what WsgiApplication sets when it serves the app
    doc = Wsdl11(app.interface)
    doc.build_interface_document(address)
    text: bytes = doc.get_interface_document()
    return text.decode()


def committed_wsdl(address: str) -> bytes:
    """The committed WSDL with its endpoint address pointed at where we listen."""
    text = WSDL_PATH.read_text(encoding="utf-8")
    return re.sub(r'(<\w+:address location=")[^"]*(")', rf"\g<1>{address}\g<2>", text).encode()


def wsgi_app(items: WorkItems, faults: Faults) -> WsgiApp:
    """The whole simulator as one WSGI app: the SOAP service, its WSDL, the control endpoint."""
    soap = WsgiApplication(application(_State(items, faults)))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != SERVICE_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"the permit service is at {SERVICE_PATH}\n".encode()]
        if environ["REQUEST_METHOD"] == "GET" and environ.get("QUERY_STRING", "").lower() == "wsdl":
            host = environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
            body = committed_wsdl(f"http://{host}{SERVICE_PATH}")
            start_response(
                "200 OK",
                [("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]
        result: Iterable[bytes] = soap(environ, start_response)
        return result

    return with_control(Control("permits", faults, items), app)


def serve(options: ServeOptions) -> ServedThread:
    """Start the permit simulator on (host, port); state in `<state_dir>/permits.db`."""
    items = WorkItems(options.state_dir / "permits.db", id_prefix="PRM", flow=FLOW)
    faults = Faults()
    url, stop_server = serve_wsgi(wsgi_app(items, faults), options.host, options.port, "permits")
    progress = AutoProgress(items, options.auto_progress).start() if options.auto_progress else None

    def stop() -> None:
        if progress:
            progress.stop()
        stop_server()

    return ServedThread(url + SERVICE_PATH, stop)
