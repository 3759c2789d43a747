"""The SAP **simulation**'s BAPIs, exposed over HTTP because the RFC wire protocol needs SAP's SDK.

Simulated function modules: `BAPI_ALM_NOTIF_CREATE`, `BAPI_ALM_NOTIF_SAVE`,
`BAPI_TRANSACTION_COMMIT` (WAIT='X'), `BAPI_TRANSACTION_ROLLBACK`, `BAPI_ALM_NOTIF_GET_DETAIL`, and
`RFC_READ_TABLE` on a simulated `QMEL` (to find a notification by its external reference
`REFNUM` and list changes by `AEDAT`/`AEZEIT`). Each call is `POST {RFC_PATH}/{FUNCTION}` with the
parameters as JSON; the `sap-rfc-session` header plays the part of the RFC connection, so that
create, save and commit form one logical unit of work as they do in SAP. It is not SAP: the
parameter shapes follow the BAPIs' documented interfaces, reduced to the fields civicbus uses.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from civicbus.sandbox.sap_faults import Faults
from civicbus.sandbox.sap_state import Notification, SapStore, validate

RFC_PATH = "/sap/bc/rfc-simulation"
SESSION_HEADER = "sap-rfc-session"


def bapiret(
    kind: str, message: str, *, msg_id: str = "SIM", number: str = "000"
) -> dict[str, str | int]:
    """One BAPIRET2 line."""
    return {
        "TYPE": kind,
        "ID": msg_id,
        "NUMBER": number,
        "MESSAGE": message,
        "LOG_NO": "",
        "LOG_MSG_NO": "000000",
        "MESSAGE_V1": "",
        "MESSAGE_V2": "",
        "MESSAGE_V3": "",
        "MESSAGE_V4": "",
        "PARAMETER": "",
        "ROW": 0,
        "FIELD": "",
        "SYSTEM": "SIMCLNT100",
    }


def abap_exception(key: str, message: str) -> JSONResponse:
    """An ABAP exception raised by a function module (pyrfc: ABAPApplicationError)."""
    body = {"error": {"kind": "ABAPApplicationError", "key": key, "message": message}}
    return JSONResponse(body, status_code=500)


@dataclass
class _Luw:
    """One session's unit of work: drafts by temporary number, saved notifications not committed."""

    drafts: dict[str, Notification] = field(default_factory=dict)
    saved: list[Notification] = field(default_factory=list)


def _header_export(n: Notification) -> dict[str, str]:
    created = n.created() if n.created_at else datetime.now(UTC)
    changed = n.changed() if n.changed_at else created
    return {
        "NOTIF_NO": n.number,
        "NOTIF_TYPE": n.notif_type,
        "SHORT_TEXT": n.short_text,
        "PRIORITY": n.priority,
        "FUNCT_LOC": n.funct_loc,
        "REFNUM": n.ext_ref,
        "REPORTEDBY": n.reported_by,
        "STRMLFNDATE": n.malfunction_date,
        "STRMLFNTIME": n.malfunction_time,
        "CREATED_ON": created.strftime("%Y%m%d"),
        "CHANGED_ON": changed.strftime("%Y%m%d"),
    }


_QMEL_FIELDS: dict[str, Callable[[Notification], str]] = {
    "QMNUM": lambda n: n.number,
    "QMART": lambda n: n.notif_type,
    "QMTXT": lambda n: n.short_text,
    "PRIOK": lambda n: n.priority,
    "REFNUM": lambda n: n.ext_ref,
    "ERDAT": lambda n: n.created().strftime("%Y%m%d"),
    "ERZEIT": lambda n: n.created().strftime("%H%M%S"),
    "AEDAT": lambda n: n.changed().strftime("%Y%m%d"),
    "AEZEIT": lambda n: n.changed().strftime("%H%M%S"),
}
_WHERE = re.compile(r"\s*(\w+)\s*(=|<>|>=|<=|>|<|EQ|NE|GE|LE|GT|LT)\s*'((?:[^']|'')*)'\s*", re.I)
_COMPARE: dict[str, Callable[[str, str], bool]] = {
    "=": lambda a, b: a == b,
    "EQ": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "NE": lambda a, b: a != b,
    ">=": lambda a, b: a >= b,
    "GE": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "LE": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "GT": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "LT": lambda a, b: a < b,
}


def _where(text: str) -> Callable[[Notification], bool] | None:
    """RFC_READ_TABLE's OPTIONS: comparisons of QMEL fields with literals, joined by AND."""
    tests: list[Callable[[Notification], bool]] = []
    for part in re.split(r"\s+AND\s+", text.strip(), flags=re.I) if text.strip() else []:
        match = _WHERE.fullmatch(part)
        if not match or match.group(1).upper() not in _QMEL_FIELDS:
            return None
        getter = _QMEL_FIELDS[match.group(1).upper()]
        compare = _COMPARE[match.group(2).upper()]
        literal = match.group(3).replace("''", "'")
        tests.append(lambda n, g=getter, c=compare, v=literal: c(g(n), v))  # type: ignore[misc]
    return lambda n: all(t(n) for t in tests)


def router(
    store: SapStore,
    faults: Faults,
    known_locations: frozenset[str] | None,
) -> APIRouter:
    """The simulated BAPIs; one in-memory unit of work per `sap-rfc-session`."""
    api = APIRouter()
    sessions: dict[str, _Luw] = {}
    lock = threading.Lock()

    def notif_create(params: dict[str, Any], work: _Luw) -> dict[str, Any]:
        header = params.get("NOTIFHEADER") or {}
        long_text = "\n".join(line.get("TEXT_LINE", "") for line in params.get("LONGTEXTS") or [])
        draft = Notification(
            number="",
            notif_type=str(params.get("NOTIF_TYPE", "")),
            short_text=str(header.get("SHORT_TEXT", "")),
            long_text=long_text,
            priority=str(header.get("PRIORITY", "")),
            funct_loc=str(header.get("FUNCT_LOC", "")),
            ext_ref=str(header.get("REFNUM", "")),
            reported_by=str(header.get("REPORTEDBY", "")),
            malfunction_date=str(header.get("STRMLFNDATE", "")),
            malfunction_time=str(header.get("STRMLFNTIME", "")),
        )
        problems = validate(draft, known_locations)
        rejected = faults.take("reject")
        if rejected:
            problems.append(("SIM/099", rejected.message))
        if problems:
            messages = [bapiret("E", text, number=code.split("/")[1]) for code, text in problems]
            return {"NOTIFHEADER_EXPORT": {}, "RETURN": messages}
        temporary = f"%{len(work.drafts) + 1:011d}"
        work.drafts[temporary] = replace(draft, number=temporary)
        return {
            "NOTIFHEADER_EXPORT": _header_export(replace(draft, number=temporary)),
            "RETURN": [],
        }

    def notif_save(params: dict[str, Any], work: _Luw) -> dict[str, Any]:
        temporary = str(params.get("NUMBER", ""))
        draft = work.drafts.pop(temporary, None)
        if draft is None:
            return {
                "NOTIFHEADER": {},
                "RETURN": [bapiret("E", f"Notification {temporary} not in buffer")],
            }
        saved = replace(draft, number=store.reserve_number())
        work.saved.append(saved)
        return {"NOTIFHEADER": _header_export(saved), "RETURN": []}

    def commit(params: dict[str, Any], work: _Luw) -> dict[str, Any] | JSONResponse:
        for notification in work.saved:
            store.insert(notification)
        work.saved.clear()
        if faults.take("lose_commit_response"):
            # The work is committed but the caller never hears so: a broken connection.
            return JSONResponse(
                {
                    "error": {
                        "kind": "CommunicationError",
                        "key": "RFC_COMMUNICATION_FAILURE",
                        "message": "connection closed during commit (simulated)",
                    }
                },
                status_code=502,
            )
        return {"RETURN": bapiret("S", "") | {"TYPE": "", "NUMBER": "000"}}

    def rollback(params: dict[str, Any], work: _Luw) -> dict[str, Any]:
        work.drafts.clear()
        work.saved.clear()
        return {"RETURN": bapiret("S", "") | {"TYPE": ""}}

    def get_detail(params: dict[str, Any], work: _Luw) -> dict[str, Any]:
        number = str(params.get("NUMBER", "")).zfill(12)
        found = store.get(number)
        if found is None:
            return {
                "NOTIFHEADER_EXPORT": {},
                "NOTIFHDTEXT": {},
                "NOTLONGTXT": [],
                "RETURN": [bapiret("E", f"Notification {number} does not exist", number="040")],
            }
        lines = [
            {"OBJTYPE": "QMEL", "FORMAT_COL": "*", "TEXT_LINE": t}
            for t in found.long_text.split("\n")
        ]
        return {
            "NOTIFHEADER_EXPORT": _header_export(found),
            "NOTIFHDTEXT": {"SYSTATUS": found.system_status, "USRSTATUS": found.user_status},
            "NOTLONGTXT": lines if found.long_text else [],
            "RETURN": [],
        }

    def read_table(params: dict[str, Any], work: _Luw) -> dict[str, Any] | JSONResponse:
        if str(params.get("QUERY_TABLE", "")).upper() != "QMEL":
            return abap_exception("TABLE_NOT_AVAILABLE", "the simulation offers table QMEL only")
        names = [str(f.get("FIELDNAME", "")).upper() for f in params.get("FIELDS") or []]
        names = names or list(_QMEL_FIELDS)
        if any(n not in _QMEL_FIELDS for n in names):
            return abap_exception("FIELD_NOT_VALID", f"fields {names} are not all in QMEL")
        predicate = _where(" ".join(str(o.get("TEXT", "")) for o in params.get("OPTIONS") or []))
        if predicate is None:
            return abap_exception("OPTION_NOT_VALID", "the OPTIONS could not be parsed")
        delimiter = str(params.get("DELIMITER", ""))
        rows = [n for n in store.all() if predicate(n)]
        limit = int(params.get("ROWCOUNT", 0) or 0)
        rows = rows[:limit] if limit else rows
        data = [{"WA": delimiter.join(_QMEL_FIELDS[f](n) for f in names)} for n in rows]
        fields = [
            {"FIELDNAME": f, "OFFSET": "000000", "LENGTH": "000040", "TYPE": "C"} for f in names
        ]
        return {"DATA": data, "FIELDS": fields}

    functions: dict[str, Callable[[dict[str, Any], _Luw], dict[str, Any] | JSONResponse]] = {
        "BAPI_ALM_NOTIF_CREATE": notif_create,
        "BAPI_ALM_NOTIF_SAVE": notif_save,
        "BAPI_TRANSACTION_COMMIT": commit,
        "BAPI_TRANSACTION_ROLLBACK": rollback,
        "BAPI_ALM_NOTIF_GET_DETAIL": get_detail,
        "RFC_READ_TABLE": read_table,
        "RFC_PING": lambda params, work: {},
    }

    @api.post(RFC_PATH + "/{function}")
    async def call(function: str, request: Request) -> Any:
        handler = functions.get(function.upper())
        if handler is None:
            return abap_exception("FU_NOT_FOUND", f"Function module {function} not found")
        params = await request.json()
        with lock:  # one call at a time: the simulation is not about concurrency
            work = sessions.setdefault(request.headers.get(SESSION_HEADER, ""), _Luw())
            return handler(params, work)

    @api.delete(RFC_PATH + "/session")
    def close_session(request: Request) -> dict[str, str]:
        """Closing the connection rolls back whatever was not committed, as in SAP."""
        with lock:
            sessions.pop(request.headers.get(SESSION_HEADER, ""), None)
        return {}

    return api
