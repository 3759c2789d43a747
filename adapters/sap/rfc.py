"""The RFC transport: the notification BAPIs through pyrfc's `Connection(**params).call(...)`.

Create is `BAPI_ALM_NOTIF_CREATE` → `BAPI_ALM_NOTIF_SAVE` → `BAPI_TRANSACTION_COMMIT` (WAIT='X') on
one connection (one unit of work). The BAPI `RETURN` table decides: a message of type E or A is a
PermanentError with SAP's text (and the unit of work is rolled back). A notification is found by
its external reference (QMEL-REFNUM) with `RFC_READ_TABLE`, and read with
`BAPI_ALM_NOTIF_GET_DETAIL`. With `rfc_client: pyrfc` (needs the `sap` extra and SAP's NW RFC
SDK) it talks to SAP; with `rfc_client: simulation` to the sandbox's SAP simulation over HTTP.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import structlog

from adapters._contract import Health
from adapters._exceptions import ErrorTable, PermanentError, TransientError, map_exceptions
from adapters.local_time import LocalClock, zone_named
from adapters.sap import rfc_http
from adapters.sap._model import SapNotification, passthrough

log = structlog.get_logger(__name__)

PYRFC_MISSING = (
    "pyrfc is not installed: install civicbus[sap] and SAP's NW RFC SDK on this host (see "
    "docs/adapters-sap-oracle.md), or use transport: odata; rfc_client: simulation talks to "
    "the sandbox's SAP simulation only"
)
#: pyrfc connection parameters taken from the instance settings (secrets such as passwd included).
PYRFC_PARAMS = (
    "ashost",
    "sysnr",
    "client",
    "user",
    "passwd",
    "lang",
    "mshost",
    "msserv",
    "sysid",
    "group",
    "saprouter",
    "dest",
    "snc_qop",
    "snc_myname",
    "snc_partnername",
    "snc_lib",
)
SIMULATION_PARAMS = ("url", "client", "user", "passwd", "timeout")
LONG_TEXT_LINE = 132  # TLINE-TDLINE


class CommitUnconfirmed(TransientError):
    """The commit was sent but its outcome is unknown: look the notification up before retrying."""


def _error_table() -> ErrorTable:
    """Simulation client errors and, when installed, pyrfc's: one table, most specific first."""
    table: dict[type[BaseException], type[PermanentError] | type[TransientError]] = {}
    try:
        import pyrfc

        table.update(
            {
                pyrfc.LogonError: TransientError,  # the set-up's fault: see below
                pyrfc.CommunicationError: TransientError,
                pyrfc.ABAPApplicationError: PermanentError,
                pyrfc.ABAPRuntimeError: TransientError,
                pyrfc.ExternalRuntimeError: TransientError,
                pyrfc.RFCError: TransientError,
            }
        )
    except ImportError:
        pass
    table.update(
        {
            # A refused logon (an expired password) is the set-up's, never a request's fault:
            # retried through the tiers, the requests reach SAP once it is fixed.
            rfc_http.LogonError: TransientError,
            rfc_http.CommunicationError: TransientError,
            rfc_http.ABAPApplicationError: PermanentError,
            rfc_http.ABAPRuntimeError: TransientError,
            rfc_http.RFCError: TransientError,
        }
    )
    return table


def pyrfc_connection_factory() -> Callable[..., Any] | None:
    try:
        from pyrfc import Connection
    except ImportError:
        return None
    factory: Callable[..., Any] = Connection
    return factory


class RfcTransport:
    """Talks to one SAP system through BAPIs; one connection at a time, reopened after a failure."""

    def __init__(self, instance: str, settings: Mapping[str, Any]) -> None:
        self.instance = instance
        self.client_kind = str(settings.get("rfc_client", "pyrfc"))
        if self.client_kind == "simulation":
            self._factory: Callable[..., Any] | None = rfc_http.Connection
            names: tuple[str, ...] = SIMULATION_PARAMS
        elif self.client_kind == "pyrfc":
            self._factory = pyrfc_connection_factory()
            names = PYRFC_PARAMS
        else:
            raise ValueError(
                f"SAP instance {instance}: rfc_client must be pyrfc or "
                f"simulation, not {self.client_kind!r}"
            )
        self._params = {k: settings[k] for k in names if settings.get(k) is not None}
        self._reference_field = str(settings.get("external_reference_field", "REFNUM"))
        zone = str(settings.get("system_timezone", "UTC"))
        self._clock = LocalClock(zone_named(zone, f"SAP instance {instance}: system_timezone"))
        self.clock_back = self._clock.clock_back
        self._errors = _error_table()
        self._connection: Any = None
        self._lock = threading.Lock()

    # --- the transport interface ---------------------------------------------------------

    def find(self, external_reference: str) -> SapNotification | None:
        literal = external_reference.replace("'", "''")
        rows = self._read_qmel(
            ["QMNUM", "AEDAT", "AEZEIT"], [f"{self._reference_field} = '{literal}'"], what="find"
        )
        if not rows:
            return None
        number, day, time = sorted(rows)[0]
        return self._detail(number, external_reference, self._moment(day, time))

    def create(self, fields: Mapping[str, Any], external_reference: str) -> str:
        context = f"SAP RFC create for request {external_reference} ({self.instance})"
        header = {
            "SHORT_TEXT": fields.get("short_text", ""),
            "PRIORITY": fields.get("priority", ""),
            "FUNCT_LOC": fields.get("functional_location", ""),
            "REPORTEDBY": fields.get("reported_by", ""),
            "STRMLFNDATE": fields.get("malfunction_start_date", ""),
            "STRMLFNTIME": fields.get("malfunction_start_time", ""),
            self._reference_field: external_reference,
        }
        header.update(passthrough(fields))
        long_text = str(fields.get("long_text", ""))
        lines = [
            {"OBJTYPE": "QMEL", "FORMAT_COL": "*", "TEXT_LINE": line[i : i + LONG_TEXT_LINE]}
            for line in long_text.splitlines()
            for i in range(0, max(len(line), 1), LONG_TEXT_LINE)
        ]
        with self._session(context) as call:
            created = call(
                "BAPI_ALM_NOTIF_CREATE",
                NOTIF_TYPE=fields.get("notification_type", ""),
                NOTIFHEADER=header,
                LONGTEXTS=lines,
            )
            self._check_return(created.get("RETURN"), context, call)
            temporary = created["NOTIFHEADER_EXPORT"]["NOTIF_NO"]
            saved = call("BAPI_ALM_NOTIF_SAVE", NUMBER=temporary)
            self._check_return(saved.get("RETURN"), context, call)
            number = str(saved["NOTIFHEADER"]["NOTIF_NO"])
            try:
                committed = call("BAPI_TRANSACTION_COMMIT", WAIT="X")
            except TransientError as exc:
                raise CommitUnconfirmed(
                    f"{context}: commit of notification {number} not confirmed: {exc}"
                ) from exc
            self._check_return(committed.get("RETURN"), context, call)
        return number

    def changed_since(self, moment: datetime | None) -> list[SapNotification]:
        where = [f"{self._reference_field} <> ''"]
        if moment is not None:
            # From the day before if the clocks went back over midnight (local dates repeat too).
            local = self._clock.window_start(moment)
            where.append(f"AEDAT >= '{local.strftime('%Y%m%d')}'")
        rows = self._read_qmel(
            ["QMNUM", self._reference_field, "AEDAT", "AEZEIT"], where, what="changes"
        )
        # QMEL's change time has whole seconds: compare at that precision.
        floor = None if moment is None else moment.replace(microsecond=0)
        found = []
        for number, reference, day, time in rows:
            earlier, later = self._clock.readings(_local(day, time))
            # A time in the repeated hour is kept if either reading reaches the floor; the
            # adapter decides which one it was (see SapAdapter.updates).
            if floor is None or max(earlier, later or earlier) >= floor:
                found.append(self._detail(number, reference, earlier, later))
        return found

    def check(self) -> Health:
        if self._factory is None:
            return Health(ok=False, detail=PYRFC_MISSING)
        try:
            with self._session(f"SAP RFC ping ({self.instance})") as call:
                call("RFC_PING")
        except (TransientError, PermanentError) as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"RFC ({self.client_kind}) answers")

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- RFC -----------------------------------------------------------------------------

    @contextmanager
    def _session(self, context: str) -> Iterator[Callable[..., dict[str, Any]]]:
        """One connection held for a unit of work; dropped after a communication failure."""
        if self._factory is None:
            raise PermanentError(f"{context}: {PYRFC_MISSING}")
        with self._lock:
            try:
                if self._connection is None:
                    with map_exceptions(self._errors, context=f"{context}: logon"):
                        self._connection = self._factory(**self._params)
                connection = self._connection

                def call(name: str, **params: Any) -> dict[str, Any]:
                    with map_exceptions(self._errors, context=f"{context}: {name}"):
                        result: dict[str, Any] = connection.call(name, **params)
                    return result

                yield call
            except TransientError:
                self._drop()  # the session (and any unit of work in it) is gone
                raise

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception as exc:  # closing a broken connection may fail too
                log.debug("sap.rfc_close_failed", instance=self.instance, error=type(exc).__name__)
            self._connection = None

    def _check_return(self, messages: Any, context: str, call: Callable[..., Any]) -> None:
        """Type E or A in BAPI RETURN: roll back and fail permanently with SAP's text."""
        lines = [messages] if isinstance(messages, Mapping) else list(messages or [])
        errors = [m for m in lines if str(m.get("TYPE", "")) in ("E", "A")]
        if not errors:
            return
        # If the rollback fails, the unit of work dies with the session anyway.
        with contextlib.suppress(TransientError, PermanentError):
            call("BAPI_TRANSACTION_ROLLBACK")
        text = "; ".join(
            f"{m.get('TYPE')} {m.get('ID', '')}/{m.get('NUMBER', '')}: {m.get('MESSAGE', '')}"
            for m in errors
        )
        raise PermanentError(f"{context}: SAP rejected the notification: {text}")

    def _read_qmel(self, fields: list[str], where: list[str], *, what: str) -> list[list[str]]:
        options = [
            {"TEXT": clause if i == 0 else f"AND {clause}"} for i, clause in enumerate(where)
        ]
        with self._session(f"SAP RFC {what} ({self.instance})") as call:
            result = call(
                "RFC_READ_TABLE",
                QUERY_TABLE="QMEL",
                DELIMITER="|",
                FIELDS=[{"FIELDNAME": f} for f in fields],
                OPTIONS=options,
            )
        return [[part.strip() for part in row["WA"].split("|")] for row in result.get("DATA", [])]

    def _detail(
        self, number: str, reference: str, changed_at: datetime, later: datetime | None = None
    ) -> SapNotification:
        context = f"SAP RFC read of notification {number} ({self.instance})"
        with self._session(context) as call:
            detail = call("BAPI_ALM_NOTIF_GET_DETAIL", NUMBER=number)
        errors = [m for m in detail.get("RETURN") or [] if m.get("TYPE") in ("E", "A")]
        if errors:
            raise PermanentError(f"{context}: {errors[0].get('MESSAGE', '')}")
        status = detail.get("NOTIFHDTEXT") or {}
        return SapNotification(
            number=number,
            external_reference=reference,
            system_status=str(status.get("SYSTATUS", "")).split(" ")[0],
            user_status=str(status.get("USRSTATUS", "")).split(" ")[0],
            changed_at=changed_at,
            changed_at_later=later,
        )

    def _moment(self, day: str, time: str) -> datetime:
        """QMEL's local date and time as UTC; in a repeated hour, the earlier reading."""
        return self._clock.readings(_local(day, time))[0]


def _local(day: str, time: str) -> datetime:
    """QMEL's date and time fields (the SAP system's local time)."""
    return datetime.strptime(f"{day}{time or '000000'}", "%Y%m%d%H%M%S")
