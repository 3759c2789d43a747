"""The OData transport: SAP's `API_MAINTNOTIFICATION` (OData v2) over HTTPS with httpx.

Creates fetch a CSRF token (`x-csrf-token: fetch`) on the session cookie first and refetch it once
when SAP answers 403 "CSRF token validation failed". SAP's error JSON (`error.message.value` and
`innererror.errordetails`) becomes a PermanentError with SAP's text for a 4xx; 5xx, 429, timeouts
and refused connections are transient, honouring Retry-After. So is a 404 or 405: every URL called
is the service's root, `$metadata` or the entity set (never one notification by key), which
answer 404 only when `base_url` or `service_path` is wrong, not for a request's data. And so is
a refused logon (401): an expired password is the set-up's fault, and retried through the
tiers the requests reach SAP once it is fixed, instead of every one being dead-lettered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog

from adapters._contract import Health
from adapters._exceptions import (
    ErrorTable,
    PermanentError,
    TransientError,
    answer_excerpt,
    blank_quoted,
    map_exceptions,
)
from adapters._http import (
    NOT_SERVED,
    AnswerTooLarge,
    AnswerTooSlow,
    BoundedTransport,
    Bounds,
    Where,
    check_settings,
    redirect_said,
    require_http_url,
    retry_after,
)
from adapters.sap._model import SapNotification, passthrough

log = structlog.get_logger(__name__)

DEFAULT_SERVICE_PATH = "/sap/opu/odata/sap/API_MAINTNOTIFICATION"
ENTITY_SET = "MaintenanceNotification"
PAGE_SIZE = 200
#: The keyset `changed_since` pages by: change time, then the number to break ties.
CHANGE_ORDER = "LastChangeDateTime asc,MaintenanceNotification asc"

#: httpx's errors -> ours, most specific first (UnsupportedProtocol is a TransportError too).
ERRORS: ErrorTable = {
    httpx.UnsupportedProtocol: PermanentError,
    httpx.InvalidURL: PermanentError,
    httpx.TimeoutException: TransientError,
    httpx.TransportError: TransientError,
    httpx.DecodingError: TransientError,
    # An answer past settings.answer_timeout or max_answer_mb: a service in trouble.
    AnswerTooSlow: TransientError,
    AnswerTooLarge: TransientError,
}

#: Neutral field -> OData property of MaintenanceNotification.
PROPERTIES = {
    "notification_type": "NotificationType",
    "short_text": "NotificationText",
    "long_text": "MaintNotifLongTextForEdit",
    "priority": "MaintPriority",
    "functional_location": "FunctionalLocation",
    "reported_by": "ReportedByUser",
}


class ODataTransport:
    """Talks to one SAP system's maintenance-notification OData service."""

    clock_back = timedelta(0)  # LastChangeDateTime is a UTC timestamp: never ambiguous

    def __init__(self, instance: str, settings: Mapping[str, Any]) -> None:
        self.instance = instance
        base_url = require_http_url(
            settings["base_url"], context=f"sap adapter {instance}", setting="base_url"
        ).rstrip("/")
        #: Who is reached, and what to check: the host is base_url's, the service's path both's.
        self._host = Where("the SAP system", check_settings(instance, "base_url"))
        self._service = Where(
            "the SAP system", check_settings(instance, "base_url", "service_path")
        )
        self._logon_advice = check_settings(instance, "username", "password")
        service = str(settings.get("service_path", DEFAULT_SERVICE_PATH)).rstrip("/")
        user, password = settings.get("username"), settings.get("password")
        params = {"sap-client": str(settings["sap_client"])} if settings.get("sap_client") else {}
        self._reference_property = str(
            settings.get("external_reference_property", "MaintNotifExtReferenceNumber")
        )
        self._system_status = str(settings.get("system_status_property", "SystemStatus"))
        self._user_status = str(settings.get("user_status_property", "UserStatus"))
        timeout = float(settings.get("timeout", 10.0))
        bounds = Bounds.from_settings(settings, timeout, context=f"sap adapter {instance}")
        self._client = httpx.Client(
            base_url=base_url + service + "/",
            auth=httpx.BasicAuth(str(user), str(password or "")) if user else None,
            params=params,
            timeout=timeout,
            transport=BoundedTransport(bounds, verify=settings.get("verify", True)),
            headers={"accept": "application/json"},
        )
        self._token: str | None = None

    # --- the transport interface ---------------------------------------------------------

    def find(self, external_reference: str) -> SapNotification | None:
        literal = external_reference.replace("'", "''")
        found = self._query(
            f"{self._reference_property} eq '{literal}'",
            top=1,
            orderby="MaintenanceNotification asc",
            what="find",
        )
        return found[0] if found else None

    def create(self, fields: Mapping[str, Any], external_reference: str) -> str:
        body = {PROPERTIES[k]: v for k, v in fields.items() if k in PROPERTIES}
        if fields.get("malfunction_start_date"):
            body["MalfunctionStartDate"] = _edm_date(str(fields["malfunction_start_date"]))
        if fields.get("malfunction_start_time"):
            body["MalfunctionStartTime"] = _edm_time(str(fields["malfunction_start_time"]))
        body.update(passthrough(fields))
        body[self._reference_property] = external_reference
        context = f"SAP OData create for request {external_reference} ({self.instance})"
        response = self._post(ENTITY_SET, body, context)
        number = self._answer(response, context).get("MaintenanceNotification")
        if number is None:
            # Created, maybe: transient, so that the adapter looks it up before any retry.
            raise TransientError(f"{context}: SAP's answer names no MaintenanceNotification")
        return str(number)

    def changed_since(self, moment: datetime | None) -> list[SapNotification]:
        """Notifications changed at or after `moment`, by keyset paging over (LastChangeDateTime,
        number): each page starts after the last one read, not at an offset, so a notification
        that changes while we page moves to the end (read again there) and shifts none past us."""
        base = f"{self._reference_property} ne ''"
        where = base if moment is None else f"{base} and LastChangeDateTime ge {_offset(moment)}"
        found: list[SapNotification] = []
        seen: set[SapNotification] = set()
        while True:
            page = self._query(where, top=PAGE_SIZE, orderby=CHANGE_ORDER, what="changes")
            new = [n for n in page if n not in seen]
            seen.update(new)
            found.extend(new)
            if len(page) < PAGE_SIZE:
                return found
            if not new:
                # Only if SAP orders by finer times than it serves and a whole page changed
                # within one millisecond: stop (the rest of it is missed, so warn) rather than
                # read that page for ever.
                log.warning(
                    "sap.odata_paging_stalled",
                    instance=self.instance,
                    changed_at=page[-1].changed_at.isoformat(),
                )
                return found
            last = page[-1]
            stamp = _offset(last.changed_at)
            # After the last one read: a later time, or the same time and a higher (zero-padded)
            # number, so many changes in one instant still page on. A time stored finer than
            # the millisecond it is served in counts as later: read twice maybe, missed never.
            where = (
                f"{base} and (LastChangeDateTime gt {stamp} or (LastChangeDateTime eq {stamp}"
                f" and MaintenanceNotification gt '{last.number}'))"
            )

    def check(self) -> Health:
        try:
            with map_exceptions(
                ERRORS, context=f"SAP OData ({self.instance})", describe=self._host.describe
            ):
                response = self._client.get("$metadata")
            self._raise_for_status(response, f"SAP OData $metadata ({self.instance})")
        except (TransientError, PermanentError) as exc:
            where = f"cannot use the OData service at {self._client.base_url}"
            return Health(ok=False, detail=f"{where}: {exc}")
        if "MaintenanceNotification" not in response.text:
            return Health(
                ok=False,
                detail=f"{self._client.base_url} does not look like "
                "API_MAINTNOTIFICATION: its $metadata lacks MaintenanceNotification",
            )
        return Health(ok=True, detail=f"OData service at {self._client.base_url} answers")

    def close(self) -> None:
        self._client.close()

    # --- HTTP ----------------------------------------------------------------------------

    def _query(self, where: str, *, top: int, orderby: str, what: str) -> list[SapNotification]:
        params = {"$filter": where, "$top": str(top), "$orderby": orderby, "$format": "json"}
        context = f"SAP OData {what} ({self.instance})"
        with map_exceptions(ERRORS, context=context, describe=self._host.describe):
            response = self._client.get(ENTITY_SET, params=params)
        self._raise_for_status(response, context)
        results = self._answer(response, context).get("results")
        if not isinstance(results, list):
            raise TransientError(f"{context}: SAP's answer has no list of results (d.results)")
        try:
            return [self._notification(e) for e in results]
        except KeyError as missing:
            # A service whose projection lacks what the adapter reads (a custom view, a
            # $select): the set-up's fault, the same for every request.
            raise TransientError(
                f"{context}: a notification in SAP's answer has no {missing.args[0]}: is it "
                f"API_MAINTNOTIFICATION? {self._service.advice}"
            ) from None

    def _post(self, path: str, body: dict[str, Any], context: str) -> httpx.Response:
        for attempt in (1, 2):
            token = self._token or self._fetch_token(context)
            with map_exceptions(ERRORS, context=context, describe=self._host.describe):
                response = self._client.post(
                    path, json=body, headers={"x-csrf-token": token}, params={"$format": "json"}
                )
            if _csrf_failed(response) and attempt == 1:
                log.info("sap.csrf_refetch", instance=self.instance)
                self._token = None
                continue
            self._raise_for_status(response, context)
            return response
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @contextmanager
    def _session_reset_on_error(self) -> Iterator[None]:
        try:
            yield
        except TransientError:
            self._token = None
            raise

    def _fetch_token(self, context: str) -> str:
        with (
            map_exceptions(ERRORS, context=context, describe=self._host.describe),
            self._session_reset_on_error(),
        ):
            response = self._client.get(
                "", headers={"x-csrf-token": "fetch"}, params={"$format": "json"}
            )
        self._raise_for_status(response, f"{context}: CSRF token fetch")
        token: str | None = response.headers.get("x-csrf-token")
        if not token or token.lower() == "required":
            raise PermanentError(
                f"{context}: SAP gave no CSRF token; is CSRF protection set up "
                "for this service and user?"
            )
        self._token = token
        return token

    def _answer(self, response: httpx.Response, context: str) -> dict[str, Any]:
        """The `d` object of an OData v2 JSON answer; TransientError when the answer is none (a
        web page, a cut answer): not the request's fault, and maybe SAP's next time."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("d"), dict):
            return dict(body["d"])
        kind = response.headers.get("Content-Type") or "no content type"
        raise TransientError(
            f"{context}: {str(response.request.url).split('?', 1)[0]} answered HTTP "
            f"{response.status_code} with {kind}, not OData JSON (a web page, or an answer cut "
            f"short): is it the OData service? {self._service.advice}"
        )

    def _raise_for_status(self, response: httpx.Response, context: str) -> None:
        """SAP's answer as our error: 4xx permanent with SAP's text; 404/405 (a wrong service
        URL), 408, 429 and 5xx transient; a redirect (a single sign-on's logon page, a moved
        service) is not followed, and transient."""
        status = response.status_code
        if response.is_redirect:
            raise TransientError(
                f"{context}: {redirect_said(status, response.headers.get('Location'))}, not "
                f"followed (a logon page? the service moved?): {self._service.advice}"
            )
        if status in NOT_SERVED:
            said = self._service.not_served(
                status, response.reason_phrase, response.request.url, "OData service"
            )
            raise TransientError(f"{context}: {said}")
        _raise_for_status(response, context, self._logon_advice)

    def _notification(self, entity: Mapping[str, Any]) -> SapNotification:
        return SapNotification(
            number=str(entity["MaintenanceNotification"]),
            external_reference=str(entity.get(self._reference_property) or ""),
            system_status=str(entity.get(self._system_status) or ""),
            user_status=str(entity.get(self._user_status) or ""),
            changed_at=_from_edm(str(entity["LastChangeDateTime"])),
        )


def _csrf_failed(response: httpx.Response) -> bool:
    return response.status_code == 403 and (
        response.headers.get("x-csrf-token", "").lower() == "required"
        or "csrf token validation failed" in response.text.lower()
    )


def _raise_for_status(response: httpx.Response, context: str, logon_advice: str) -> None:
    """SAP's answer as our error: 4xx permanent with SAP's text; 401 (a refused logon), 408,
    429 and 5xx transient."""
    status = response.status_code
    if status < 400:
        return
    text = sap_message(response)
    if status in (408, 429) or status >= 500:
        raise TransientError(
            f"{context}: HTTP {status}: {text}", retry_after=retry_after(response.headers)
        )
    if status == 401:
        raise TransientError(f"{context}: HTTP 401: {text} (SAP refused the logon: {logon_advice})")
    raise PermanentError(f"{context}: HTTP {status}: {text}")


def sap_message(response: httpx.Response) -> str:
    """SAP's error text: `error.message.value`, its code, and the errordetails' messages, with
    quoted values blanked (else a web page's text, as adapters/_exceptions.answer_excerpt)."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return answer_excerpt(response.text) or response.reason_phrase
    message = error.get("message", {})
    text = message.get("value", "") if isinstance(message, dict) else str(message)
    code = error.get("code", "")
    details = [
        str(d.get("message", ""))
        for d in (error.get("innererror", {}) or {}).get("errordetails", []) or []
        if d.get("message") and d.get("message") != text
    ]
    out = f"{code}: {text}" if code else text
    # Quoted values blanked: SAP's messages quote the values refused, maybe a resident's.
    return blank_quoted(out + (f" (details: {'; '.join(details)})" if details else ""))


_EDM_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


def _from_edm(value: str) -> datetime:
    match = _EDM_DATE.match(value)
    if match:
        return datetime.fromtimestamp(int(match.group(1)) / 1000, UTC)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _offset(moment: datetime) -> str:
    """A datetimeoffset literal at the millisecond precision OData v2 JSON serves times in."""
    return f"datetimeoffset'{moment.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z'"


def _edm_date(yyyymmdd: str) -> str:
    day = datetime.strptime(yyyymmdd, "%Y%m%d").replace(tzinfo=UTC)
    return f"/Date({int(day.timestamp() * 1000)})/"


def _edm_time(hhmmss: str) -> str:
    return f"PT{hhmmss[0:2]}H{hhmmss[2:4]}M{hhmmss[4:6]}S"
