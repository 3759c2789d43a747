"""The SAP **simulation**'s OData v2 service: a stand-in for `API_MAINTNOTIFICATION`.

It simulates the documented behaviour a client depends on: the `$metadata` document, the
`MaintenanceNotification` entity set, the CSRF protocol (`x-csrf-token: fetch` bound to a session
cookie, 403 "CSRF token validation failed"), SAP's error JSON, `$filter` (eq/ne/gt/ge/lt/le joined
by `and` and `or`, with parentheses), `$orderby` (one or more keys), `$top`, `$skip`,
`$inlinecount` and JSON (`$format=json`). It is not SAP: only JSON is served (no Atom), and the
status is flattened into two simulation properties, `SystemStatus` and `UserStatus`.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from civicbus.sandbox.sap_state import Notification, SapStore, now, validate

SERVICE_PATH = "/sap/opu/odata/sap/API_MAINTNOTIFICATION"
ENTITY_SET = "MaintenanceNotification"
SESSION_COOKIE = "SAP_SESSIONID_SIM_100"

#: OData property -> (Edm type, max length, Notification attribute).
PROPERTIES: dict[str, tuple[str, int | None, str]] = {
    "MaintenanceNotification": ("Edm.String", 12, "number"),
    "NotificationType": ("Edm.String", 2, "notif_type"),
    "NotificationText": ("Edm.String", 40, "short_text"),
    "MaintNotifLongTextForEdit": ("Edm.String", None, "long_text"),
    "MaintPriority": ("Edm.String", 1, "priority"),
    "FunctionalLocation": ("Edm.String", 40, "funct_loc"),
    "MaintNotifExtReferenceNumber": ("Edm.String", 64, "ext_ref"),
    "ReportedByUser": ("Edm.String", 12, "reported_by"),
    "MalfunctionStartDate": ("Edm.DateTime", None, "malfunction_date"),
    "MalfunctionStartTime": ("Edm.Time", None, "malfunction_time"),
    "NotificationCreationDate": ("Edm.DateTime", None, "created_at"),
    "LastChangeDateTime": ("Edm.DateTimeOffset", None, "changed_at"),
    "NotifProcessingPhase": ("Edm.String", 1, "system_status"),
    "SystemStatus": ("Edm.String", 40, "system_status"),
    "UserStatus": ("Edm.String", 40, "user_status"),
}
_WRITABLE = (
    "NotificationType",
    "NotificationText",
    "MaintNotifLongTextForEdit",
    "MaintPriority",
    "FunctionalLocation",
    "MaintNotifExtReferenceNumber",
    "ReportedByUser",
    "MalfunctionStartDate",
    "MalfunctionStartTime",
)
_PHASE = {"OSNO": "1", "NOPR": "3", "ORAS": "3", "NOCO": "4", "DLFL": "5"}


class ODataError(Exception):
    """An error answered in SAP's error JSON."""

    def __init__(
        self, status: int, code: str, message: str, details: list[tuple[str, str]]
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def error_response(
    status: int, code: str, message: str, details: Sequence[tuple[str, str]] = ()
) -> JSONResponse:
    """SAP Gateway's error body: code, message {lang, value}, innererror.errordetails."""
    body = {
        "error": {
            "code": code,
            "message": {"lang": "en", "value": message},
            "innererror": {
                "application": {
                    "component_id": "PM-WOC-MN",
                    "service_namespace": "/SAP/",
                    "service_id": "API_MAINTNOTIFICATION",
                    "service_version": "0001",
                },
                "transactionid": uuid.uuid4().hex.upper(),
                "timestamp": now().strftime("%Y%m%d%H%M%S.%f"),
                "errordetails": [
                    {
                        "code": c,
                        "message": m,
                        "propertyref": "",
                        "severity": "error",
                        "target": "",
                        "transition": False,
                    }
                    for c, m in details
                ],
            },
        }
    }
    return JSONResponse(body, status_code=status)


# --- Edm value formats (OData v2 JSON) -------------------------------------------------------


def _edm_datetime(moment: datetime, *, offset: bool) -> str:
    millis = int(moment.timestamp() * 1000)
    return f"/Date({millis}+0000)/" if offset else f"/Date({millis})/"


def _out(edm: str, value: str) -> Any:
    if not value:
        return None if edm != "Edm.String" else ""
    if edm == "Edm.DateTime":
        moment = (
            datetime.fromisoformat(value) if "-" in value else datetime.strptime(value, "%Y%m%d")
        )
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=UTC)
        return _edm_datetime(day, offset=False)
    if edm == "Edm.Time":
        return f"PT{value[0:2]}H{value[2:4]}M{value[4:6]}S"
    if edm == "Edm.DateTimeOffset":
        return _edm_datetime(datetime.fromisoformat(value), offset=True)
    return value


_DATE = re.compile(r"^/Date\((-?\d+)(?:[+-]\d{4})?\)/$")
_TIME = re.compile(r"^PT(\d{1,2})H(\d{1,2})M(\d{1,2})S$")


def _in(edm: str, name: str, value: Any) -> str:
    """An incoming property value in the simulation's storage form (YYYYMMDD, HHMMSS, text)."""
    if value is None:
        return ""
    if edm == "Edm.DateTime":
        text = str(value)
        match = _DATE.match(text)
        try:
            moment = (
                datetime.fromtimestamp(int(match.group(1)) / 1000, UTC)
                if match
                else datetime.fromisoformat(text)
            )
        except ValueError as exc:
            raise ODataError(
                400, "SIM/010", f"Invalid value {text!r} for property {name}", []
            ) from exc
        return moment.strftime("%Y%m%d")
    if edm == "Edm.Time":
        match = _TIME.match(str(value))
        if not match:
            raise ODataError(400, "SIM/010", f"Invalid value {value!r} for property {name}", [])
        return "".join(f"{int(part):02d}" for part in match.groups())
    return str(value)


def entity(n: Notification, base: str) -> dict[str, Any]:
    uri = f"{base}{SERVICE_PATH}/{ENTITY_SET}('{n.number}')"
    data: dict[str, Any] = {
        "__metadata": {
            "id": uri,
            "uri": uri,
            "type": "API_MAINTNOTIFICATION.A_MaintenanceNotificationType",
        }
    }
    for prop, (edm, _, attr) in PROPERTIES.items():
        value = getattr(n, attr)
        data[prop] = _PHASE.get(value, "1") if prop == "NotifProcessingPhase" else _out(edm, value)
    return data


# --- $filter -----------------------------------------------------------------------------------

_CLAUSE = re.compile(
    r"\s*(?P<prop>\w+)\s+(?P<op>eq|ne|gt|ge|lt|le)\s+"
    r"(?P<value>datetimeoffset'[^']*'|datetime'[^']*'|'(?:[^']|'')*'|-?\d+(?:\.\d+)?)\s*"
)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


def parse_filter(text: str) -> Callable[[Notification], bool]:
    """A predicate for a `$filter` of comparisons joined by `and`/`or`, with parentheses (`and`
    binds tighter, as in OData); 400 for anything else."""
    return _FilterParser(text).parse()


class _FilterParser:
    """Recursive descent: filter = conjunction (or conjunction)*; conjunction = operand (and
    operand)*; operand = comparison | ( filter )."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def parse(self) -> Callable[[Notification], bool]:
        predicate = self._disjunction()
        if self.pos < len(self.text):
            self._fail()
        return predicate

    def _disjunction(self) -> Callable[[Notification], bool]:
        options = [self._conjunction()]
        while self._take(r"or\b\s*"):
            options.append(self._conjunction())
        return options[0] if len(options) == 1 else lambda n: any(o(n) for o in options)

    def _conjunction(self) -> Callable[[Notification], bool]:
        parts = [self._operand()]
        while self._take(r"and\b\s*"):
            parts.append(self._operand())
        return parts[0] if len(parts) == 1 else lambda n: all(p(n) for p in parts)

    def _operand(self) -> Callable[[Notification], bool]:
        if self._take(r"\s*\(\s*"):
            inner = self._disjunction()
            if not self._take(r"\)\s*"):
                self._fail()
            return inner
        match = _CLAUSE.match(self.text, self.pos)
        if not match or match.group("prop") not in PROPERTIES:
            self._fail()
        self.pos = match.end()
        return _comparison(match.group("prop"), match.group("op"), match.group("value"))

    def _take(self, pattern: str) -> bool:
        match = re.compile(pattern).match(self.text, self.pos)
        if match:
            self.pos = match.end()
        return match is not None

    def _fail(self) -> NoReturn:
        raise ODataError(
            400, "SIM/020", f"Invalid or unsupported filter near {self.text[self.pos :]!r}", []
        )


def _comparison(prop: str, op: str, literal: str) -> Callable[[Notification], bool]:
    edm, _, attr = PROPERTIES[prop]
    compare = _OPS[op]
    if edm in ("Edm.DateTimeOffset", "Edm.DateTime"):
        raw = literal.split("'")[1]
        bound = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        bound = bound if bound.tzinfo else bound.replace(tzinfo=UTC)

        def as_moment(n: Notification) -> datetime:
            value = getattr(n, attr)
            moment = (
                datetime.fromisoformat(value)
                if "-" in value
                else datetime.strptime(value, "%Y%m%d")
            )
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

        if edm == "Edm.DateTimeOffset":
            return lambda n: compare(_served(getattr(n, attr)), bound)
        return lambda n: getattr(n, attr) != "" and compare(as_moment(n), bound)
    value = literal[1:-1].replace("''", "'") if literal.startswith("'") else literal
    if prop == "NotifProcessingPhase":
        return lambda n: compare(_PHASE.get(n.system_status, "1"), value)
    return lambda n: compare(getattr(n, attr), value)


def _served(value: str) -> datetime:
    """An Edm.DateTimeOffset at the millisecond precision it is served in, which is also the
    precision it is compared and ordered in: a client that pages by the values it was served
    sees ties as ties."""
    moment = datetime.fromisoformat(value)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _sort(items: list[Notification], orderby: str) -> list[Notification]:
    """`$orderby` of one or more `Property [asc|desc]`, comma-separated."""
    for key in reversed(orderby.split(",")):  # stable sorts, the last key first
        prop, _, direction = key.strip().partition(" ")
        if prop not in PROPERTIES or direction.strip() not in ("", "asc", "desc"):
            raise ODataError(400, "SIM/021", f"Property {prop} not found", [])
        items = sorted(items, key=_order_value(prop), reverse=direction.strip() == "desc")
    return items


def _order_value(prop: str) -> Callable[[Notification], Any]:
    edm, _, attr = PROPERTIES[prop]
    if edm == "Edm.DateTimeOffset":
        return lambda n: _served(getattr(n, attr))
    return lambda n: getattr(n, attr)


# --- the service -----------------------------------------------------------------------------


class CsrfSessions:
    """Session cookie -> CSRF token; in memory, so a restart of the simulation invalidates them."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}

    def fetch(self, session: str | None) -> tuple[str, str]:
        if session is None or session not in self.tokens:
            session = secrets.token_urlsafe(16)
            self.tokens[session] = secrets.token_urlsafe(16)
        return session, self.tokens[session]

    def valid(self, session: str | None, token: str | None) -> bool:
        return session is not None and token is not None and self.tokens.get(session) == token

    def expire_all(self) -> None:
        self.tokens.clear()


def router(
    store: SapStore,
    csrf: CsrfSessions,
    known_locations: frozenset[str] | None,
    reject: Callable[[], str | None],
) -> APIRouter:
    """The simulated OData service's routes; `reject()` gives an injected rejection, if any."""
    api = APIRouter()

    def base_of(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def with_csrf(request: Request, response: Response) -> Response:
        if request.headers.get("x-csrf-token", "").lower() == "fetch":
            session, token = csrf.fetch(request.cookies.get(SESSION_COOKIE))
            response.headers["x-csrf-token"] = token
            response.set_cookie(SESSION_COOKIE, session, httponly=True, path="/")
        return response

    def require_json(request: Request) -> None:
        wants_json = request.query_params.get("$format") == "json" or "json" in request.headers.get(
            "accept", ""
        )
        if not wants_json:
            raise ODataError(
                406, "SIM/030", "The simulation serves JSON only: use $format=json", []
            )

    @api.get(SERVICE_PATH + "/")
    def service_document(request: Request) -> Response:
        doc = {"d": {"EntitySets": [ENTITY_SET]}}
        return with_csrf(request, JSONResponse(doc))

    @api.get(SERVICE_PATH + "/$metadata")
    def metadata(request: Request) -> Response:
        return with_csrf(request, Response(metadata_document(), media_type="application/xml"))

    @api.get(f"{SERVICE_PATH}/{ENTITY_SET}")
    def query(request: Request) -> Response:
        require_json(request)
        params = request.query_params
        items = store.all()
        if "$filter" in params:
            predicate = parse_filter(params["$filter"])
            items = [n for n in items if predicate(n)]
        if "$orderby" in params:
            items = _sort(items, params["$orderby"])
        total = len(items)
        skip = int(params.get("$skip", "0"))
        top = int(params["$top"]) if "$top" in params else None
        items = items[skip:] if top is None else items[skip : skip + top]
        body: dict[str, Any] = {"results": [entity(n, base_of(request)) for n in items]}
        if params.get("$inlinecount") == "allpages":
            body["__count"] = str(total)
        return with_csrf(request, JSONResponse({"d": body}))

    @api.get(SERVICE_PATH + "/" + ENTITY_SET + "('{number}')")
    def read(number: str, request: Request) -> Response:
        require_json(request)
        found = store.get(number)
        if found is None:
            raise ODataError(404, "SIM/040", f"Notification {number} does not exist", [])
        return with_csrf(request, JSONResponse({"d": entity(found, base_of(request))}))

    @api.post(f"{SERVICE_PATH}/{ENTITY_SET}")
    async def create(request: Request) -> Response:
        if not csrf.valid(request.cookies.get(SESSION_COOKIE), request.headers.get("x-csrf-token")):
            return Response(
                "CSRF token validation failed",
                status_code=403,
                media_type="text/plain",
                headers={"x-csrf-token": "Required"},
            )
        try:
            payload = await request.json()
        except ValueError as exc:
            raise ODataError(400, "SIM/011", "The request body is not valid JSON", []) from exc
        unknown = sorted(set(payload) - set(_WRITABLE) - {"__metadata"})
        if unknown:
            raise ODataError(400, "SIM/012", f"Property {unknown[0]} is invalid", [])
        fields = {PROPERTIES[p][2]: _in(PROPERTIES[p][0], p, payload.get(p)) for p in _WRITABLE}
        draft = Notification(number="", **fields)
        problems = validate(draft, known_locations)
        rejected = reject()
        if rejected:
            problems.append(("SIM/099", rejected))
        if problems:
            raise ODataError(400, problems[0][0], problems[0][1], problems)
        saved = store.insert(draft)
        uri = f"{base_of(request)}{SERVICE_PATH}/{ENTITY_SET}('{saved.number}')"
        return JSONResponse(
            {"d": entity(saved, base_of(request))}, status_code=201, headers={"location": uri}
        )

    return api


def metadata_document() -> str:
    """The `$metadata` EDMX of the simulated service (OData v2, one entity type)."""
    props = "\n".join(
        f'        <Property Name="{name}" Type="{edm}"'
        + (f' MaxLength="{length}"' if length else "")
        + (' Nullable="false"' if name == "MaintenanceNotification" else ' Nullable="true"')
        + (' Precision="0"' if edm in ("Edm.DateTime", "Edm.Time") else "")
        + (' Precision="7"' if edm == "Edm.DateTimeOffset" else "")
        + "/>"
        for name, (edm, length, _) in PROPERTIES.items()
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="1.0" xmlns:edmx="http://schemas.microsoft.com/ado/2007/06/edmx"
    xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata"
    xmlns:sap="http://www.sap.com/Protocols/SAPData">
  <edmx:DataServices m:DataServiceVersion="2.0">
    <!-- civicbus SAP simulation: not an SAP system -->
    <Schema Namespace="API_MAINTNOTIFICATION" xml:lang="en" sap:schema-version="1"
        xmlns="http://schemas.microsoft.com/ado/2008/09/edm">
      <EntityType Name="A_MaintenanceNotificationType" sap:content-version="1">
        <Key><PropertyRef Name="MaintenanceNotification"/></Key>
{props}
      </EntityType>
      <EntityContainer Name="API_MAINTNOTIFICATION_Entities" m:IsDefaultEntityContainer="true">
        <EntitySet Name="{ENTITY_SET}"
            EntityType="API_MAINTNOTIFICATION.A_MaintenanceNotificationType"
            sap:creatable="true" sap:updatable="true" sap:deletable="false"/>
      </EntityContainer>
    </Schema>
  </edmx:DataServices>
</edmx:Edmx>
"""
