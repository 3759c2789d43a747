"""The parks adapter: creates work requests in the parks system over REST and reads changes back.

The civicbus request id is the work request's `external_reference`: `submit` looks it up first
and creates only when it is missing (a 409 from a racing create counts as found), so a
redelivered message creates nothing. Changes are read from `/work-requests/changes`, paged on
the server's opaque cursor, which is the watermark; a change that cannot be read is logged and
skipped (adapters/_changes.py), so that it cannot hold back the changes after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from adapters._changes import (
    UnreadableChange,
    page_parts,
    require,
    status_update,
    unmapped_status,
)
from adapters._contract import Adapter, Health, Receipt, SkippedChange, UpdatePage
from adapters._exceptions import AdapterError, TransientError, map_exceptions
from adapters._http import BoundedTransport, Bounds, Where, check_settings, require_http_url
from adapters.mapping import Mapping as FieldMapping
from adapters.mapping import UnknownStatus
from adapters.parks._auth import ClientCredentials
from adapters.parks._errors import ERRORS, raise_for_status
from schemas.model import ServiceRequest, StatusUpdate

log = structlog.get_logger(__name__)

_HEALTH_PROBE_REFERENCE = "civicbus-health-check"


class ParksAdapter(Adapter):
    """A parks work-request system over REST/JSON, authenticated by OAuth2 client credentials.

    Settings: `base_url`, `client_id`, `client_secret` (from the environment), `token_url`
    (default `<base_url>/oauth/token`), `timeout` (seconds per read, default 10),
    `answer_timeout` and `max_answer_mb` (one whole answer's time and size, adapters/_http.py's
    Bounds), `page_size` (changes per call, default 100), `max_pages` (calls per `updates`,
    default 10). A mapping field with
    a dotted name (`location.lat`) becomes a nested JSON member.
    """

    kind = "parks"
    polls = True
    mapping_fields = frozenset({"category"})

    def __init__(
        self, instance: str, settings: Mapping[str, Any], mapping: FieldMapping | None = None
    ) -> None:
        super().__init__(instance, settings, mapping)
        missing = [k for k in ("base_url", "client_id", "client_secret") if not settings.get(k)]
        if missing:
            raise ValueError(f"parks adapter {instance}: set {', '.join(missing)}")
        if mapping is None:
            raise ValueError(f"parks adapter {instance}: a mapping file is required")
        self.field_mapping: FieldMapping = mapping
        context = f"parks adapter {instance}"
        self.base_url = require_http_url(
            settings["base_url"], context=context, setting="base_url"
        ).rstrip("/")
        token_url = settings.get("token_url")
        if token_url:
            token_url = require_http_url(token_url, context=context, setting="token_url")
        self._where = Where("the parks system", check_settings(instance, "base_url"))
        token_where = (
            Where("the parks system", check_settings(instance, "token_url"))
            if token_url
            else Where(
                "the parks system",
                check_settings(instance, "base_url"),
                f"{check_settings(instance, 'base_url')} (or set settings.token_url)",
            )
        )
        self.page_size = int(settings.get("page_size", 100))
        self.max_pages = int(settings.get("max_pages", 10))
        timeout = float(settings.get("timeout", 10))
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers={"Accept": "application/json"},
            transport=BoundedTransport(Bounds.from_settings(settings, timeout, context=context)),
        )
        self.credentials = ClientCredentials(
            self._http,
            str(token_url or f"{self.base_url}/oauth/token"),
            str(settings["client_id"]),
            str(settings["client_secret"]),
            context=context,
            where=token_where,
            credentials_advice=check_settings(instance, "client_id", "client_secret"),
        )

    # -- the contract --------------------------------------------------------------------------

    def submit(self, request: ServiceRequest) -> Receipt:
        """Create the work request unless one with this external reference exists; idempotent."""
        body = _nested(self.field_mapping.apply(request))
        body["external_reference"] = request.id
        existing = self.find(request.id)
        if existing is not None:
            log.info(
                "parks.work_request.exists",
                adapter=self.instance,
                request_id=request.id,
                reference=existing.reference,
            )
            return existing
        context = f"parks adapter {self.instance}: create for request {request.id}"
        response = self._call("POST", "/work-requests", context, json=body, accept=(409,))
        if response.status_code == 409:
            # Another delivery created it between our lookup and our create: that is success.
            raced = self.find(request.id)
            if raced is None:
                raise TransientError(f"{context}: 409 conflict, but the lookup finds nothing")
            return raced
        created = self._json(response, context)
        log.info(
            "parks.work_request.created",
            adapter=self.instance,
            request_id=request.id,
            reference=created.get("id"),
        )
        return self._receipt(request.id, created, created=True)

    def find(self, request_id: str) -> Receipt | None:
        """The work request whose external reference is `request_id`, if there is one."""
        context = f"parks adapter {self.instance}: find {request_id}"
        response = self._call(
            "GET", "/work-requests", context, params={"external_reference": request_id}
        )
        items = self._json(response, context).get("items") or []
        if len(items) > 1:
            # The parks system holds duplicates (made outside civicbus, or before a unique
            # external reference): the first it lists wins, and an operator is told.
            log.warning(
                "parks.work_request.duplicates",
                adapter=self.instance,
                request_id=request_id,
                references=[i.get("id") if isinstance(i, dict) else None for i in items],
            )
        return self._receipt(request_id, items[0], created=False) if items else None

    def updates(self, since: str | None) -> UpdatePage:
        """Changes after cursor `since`, oldest first, up to `max_pages` pages."""
        cursor = since or "0"
        found: list[StatusUpdate | SkippedChange] = []
        read = 0
        for _ in range(self.max_pages):
            context = f"parks adapter {self.instance}: changes since {cursor}"
            response = self._call(
                "GET",
                "/work-requests/changes",
                context,
                params={"since": cursor, "limit": self.page_size},
            )
            page = self._json(response, context)
            changes = page.get("changes") or []
            read += len(changes)
            found += map(self._update, changes)
            asked, cursor = cursor, str(page.get("next") or cursor)
            if not page.get("more"):
                break
            if cursor == asked:
                # "More" without a cursor that moved: asking again would read the same page.
                log.warning("parks.changes.cursor_stuck", adapter=self.instance, cursor=cursor)
                break
        updates, skipped = page_parts(found)
        watermark = cursor if (read or since) else since
        return UpdatePage(updates=updates, watermark=watermark, skipped=skipped)

    def check(self) -> Health:
        """Get a token (credentials), then make one read call."""
        try:
            self.find(_HEALTH_PROBE_REFERENCE)
        except AdapterError as exc:
            return Health(False, f"parks system at {self.base_url}: {exc}")
        return Health(True, f"parks system at {self.base_url} answers; credentials accepted")

    def close(self) -> None:
        self._http.close()

    # -- helpers -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        context: str,
        *,
        accept: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """One API call with the bearer token; a 401 renews the token and retries once."""
        with map_exceptions(ERRORS, context=context, describe=self._where.describe):
            for attempt in (1, 2):
                token = self.credentials.token()
                response = self._http.request(
                    method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
                )
                if response.status_code != 401 or attempt == 2:
                    break
                log.info("parks.token.refused", adapter=self.instance)
                self.credentials.invalidate(token)
        if response.status_code not in accept:
            # A 404 here is a wrong base_url, not a missing item: the endpoints are collections.
            raise_for_status(response, context, self._where, endpoint="work-request endpoint")
        return response

    def _json(self, response: httpx.Response, context: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:  # a web page (a wrong base_url) or a proxy's error page
            kind = response.headers.get("Content-Type") or "no content type"
            address = str(response.request.url).split("?", 1)[0]
            raise TransientError(
                f"{context}: {address} answered HTTP {response.status_code} with {kind}, "
                f"not JSON: is it the parks API? {self._where.advice}"
            ) from exc
        if not isinstance(body, dict):
            raise TransientError(f"{context}: the answer is not a JSON object")
        return body

    def _receipt(self, request_id: str, item: Any, *, created: bool) -> Receipt:
        """The receipt of a work request as the parks system answers it; TransientError when it
        lacks its id or status: the parks system's fault, not the request's, and a create that
        answered so may have made the work request, which the retry's lookup finds."""
        fields = item if isinstance(item, dict) else {}
        missing = [k for k in ("id", "status") if fields.get(k) is None]
        if missing:
            raise TransientError(
                f"parks adapter {self.instance}: request {request_id}: the parks system's "
                f"work request lacks {' and '.join(missing)}"
            )
        return Receipt(
            request_id=request_id,
            reference=str(fields["id"]),
            created=created,
            status=self.field_mapping.status_or_none(str(fields["status"])),
            at=_timestamp(fields.get("created_at")),
        )

    def _update(self, change: Any) -> StatusUpdate | SkippedChange:
        """The change as an update, or skipped (so that the cursor moves past it): raising
        would fail every poll at this change, and no later change would ever be read."""
        try:
            return self._read_change(change)
        except UnreadableChange as exc:
            fields = change if isinstance(change, dict) else {}
            reference = fields.get("external_reference")
            return SkippedChange(
                change=f"change {fields.get('change_id')}",
                problem=str(exc),
                request_id=reference if isinstance(reference, str) else None,
            )

    def _read_change(self, change: Any) -> StatusUpdate | SkippedChange:
        if not isinstance(change, dict):
            raise UnreadableChange("not a JSON object")
        require(**{k: change.get(k) for k in ("change_id", "external_reference", "status")})
        code = str(change["status"])
        try:
            status = self.field_mapping.status(code)
        except UnknownStatus:
            # The operator adds the code to the mapping for the next ones.
            return unmapped_status(f"change {change['change_id']}", code, self.field_mapping,
                                   str(change["external_reference"]))  # fmt: skip
        return status_update(
            request_id=str(change["external_reference"]),
            status=status,
            at=_timestamp(change.get("changed_at")),
            update_id=f"{self.instance}:{change['change_id']}",
            source=self.instance,
            note=change.get("note"),  # cut to fit if longer than an update holds
            external_status_code=code,
        )


def _nested(fields: dict[str, Any]) -> dict[str, Any]:
    """`{"location.lat": 1}` -> `{"location": {"lat": 1}}`: the API's nested JSON shape."""
    body: dict[str, Any] = {}
    for name, value in fields.items():
        *parents, leaf = name.split(".")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return body


def _timestamp(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return datetime.now(UTC)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)
