"""The SAP adapter: plant-maintenance notifications, over OData or RFC as the instance says.

The civicbus request id is the notification's external reference: `submit` looks it up first and
creates only when it is missing. A create whose outcome is unknown (a lost response, a commit not
confirmed) is looked up again before the error goes back for a retry, so a retry never creates a
second notification. Status changes are polled by last-change time with a safety overlap.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog

from adapters._changes import page_parts, unmapped_status
from adapters._contract import Adapter, Health, Receipt, SkippedChange, UpdatePage
from adapters._exceptions import AdapterError, PermanentError, TransientError
from adapters.local_time import reading
from adapters.mapping import Mapping as FieldMapping
from adapters.mapping import UnknownStatus
from adapters.oracle.watermark import Changed, OverlapWatermark
from adapters.sap._model import FIELDS, SHORT_TEXT_LENGTH, SapNotification, Transport
from schemas.model import ServiceRequest, StatusUpdate

log = structlog.get_logger(__name__)


class SapAdapter(Adapter):
    """SAP plant maintenance (PM) notifications.

    Settings: `transport` (`odata`, default, or `rfc`); for OData `base_url`, `service_path`,
    `username`, `password`, `sap_client`, `timeout`, `answer_timeout`, `max_answer_mb`
    (adapters/_http.py), `verify`; for RFC `rfc_client` (`pyrfc` or `simulation`) and pyrfc's
    connection parameters (`ashost`, `sysnr`, `client`, `user`, `passwd`, ...) or the
    simulation's `url`; `poll_overlap_seconds` (default 60).
    """

    kind = "sap"
    polls = True

    def __init__(
        self, instance: str, settings: Mapping[str, Any], mapping: FieldMapping | None = None
    ) -> None:
        super().__init__(instance, settings, mapping)
        if mapping is None:
            raise ValueError(f"sap adapter {instance}: a mapping file is required")
        self.field_mapping: FieldMapping = mapping
        self.transport_name = str(settings.get("transport", "odata"))
        self.transport: Transport = _transport(instance, self.transport_name, settings)
        self.overlap = timedelta(seconds=float(settings.get("poll_overlap_seconds", 60)))

    # -- the contract --------------------------------------------------------------------------

    def submit(self, request: ServiceRequest) -> Receipt:
        """Create the notification unless one with this external reference exists; idempotent."""
        fields = self._fields(request)
        existing = self.find(request.id)
        if existing is not None:
            log.info(
                "sap.notification.exists",
                adapter=self.instance,
                request_id=request.id,
                reference=existing.reference,
            )
            return existing
        try:
            number = self.transport.create(fields, request.id)
        except TransientError:
            # The outcome is unknown (e.g. the commit or the response was lost): look first.
            found = self._find_after_failure(request.id)
            if found is None:
                raise
            log.info(
                "sap.notification.created_unconfirmed",
                adapter=self.instance,
                request_id=request.id,
                reference=found.reference,
            )
            return Receipt(request_id=request.id, reference=found.reference, status=found.status)
        log.info(
            "sap.notification.created",
            adapter=self.instance,
            request_id=request.id,
            reference=number,
            transport=self.transport_name,
        )
        return Receipt(request_id=request.id, reference=number, created=True)

    def find(self, request_id: str) -> Receipt | None:
        found = self.transport.find(request_id)
        if found is None:
            return None
        return Receipt(
            request_id=request_id,
            reference=found.number,
            created=False,
            status=self.field_mapping.status_or_none(self._status_code(found)),
        )

    def updates(self, since: str | None) -> UpdatePage:
        """Status changes after the watermark; each reported once (overlap window + de-dup)."""
        mark = OverlapWatermark.parse(since)
        start = mark.window_start(self.overlap)
        polled = []
        for n in self.transport.changed_since(start):
            # The key holds the statuses: RFC change times have whole seconds, and two changes
            # of one notification within a second must not look like the same change.
            key = f"{n.number}/{n.system_status}/{n.user_status}"
            at = reading(key, n.changed_at, n.changed_at_later, mark.seen, start)
            polled.append(Changed(key=key, at=at, row=n))
        # Remember what was reported `clock_back` longer: a change in the repeated hour stays in
        # the window by its later reading that long, and must be known under its earlier one.
        fresh, after = mark.advance(polled, self.overlap + self.transport.clock_back)
        updates, skipped = page_parts(self._update(c.row, c.at) for c in fresh)
        return UpdatePage(updates=updates, watermark=after.dump(), skipped=skipped)

    def check(self) -> Health:
        return self.transport.check()

    def close(self) -> None:
        self.transport.close()

    # -- helpers -------------------------------------------------------------------------------

    def _fields(self, request: ServiceRequest) -> dict[str, Any]:
        fields = self.field_mapping.apply(request)
        where = f"sap adapter {self.instance}: request {request.id}"
        if not fields.get("notification_type"):
            raise PermanentError(f"{where}: the mapping gives no notification_type")
        if len(str(fields.get("short_text", ""))) > SHORT_TEXT_LENGTH:
            raise PermanentError(
                f"{where}: short_text is longer than {SHORT_TEXT_LENGTH} "
                "characters; add `truncate: 40` to the mapping"
            )
        unknown = [k for k in fields if k not in FIELDS and not k[:1].isupper()]
        if unknown:
            raise PermanentError(
                f"{where}: mapping field(s) {', '.join(sorted(unknown))} are not "
                f"SAP adapter fields ({', '.join(FIELDS)})"
            )
        return fields

    def _find_after_failure(self, request_id: str) -> Receipt | None:
        try:
            return self.find(request_id)
        except AdapterError as exc:
            log.info(
                "sap.lookup_after_failure_failed",
                adapter=self.instance,
                request_id=request_id,
                error=type(exc).__name__,
            )
            return None

    def _status_code(self, n: SapNotification) -> str:
        """The user status when the mapping lists it (the finer one), else the system status."""
        if n.user_status and n.user_status in self.field_mapping.statuses:
            return n.user_status
        return n.system_status

    def _update(self, n: SapNotification, at: datetime) -> StatusUpdate | SkippedChange:
        code = self._status_code(n)
        try:
            status = self.field_mapping.status(code)
        except UnknownStatus:
            return unmapped_status(
                f"notification {n.number}", code, self.field_mapping, n.external_reference
            )
        return StatusUpdate(
            request_id=n.external_reference,
            status=status,
            at=at,
            update_id=f"{self.instance}:{n.number}:{at.isoformat()}:{code}",
            source=self.instance,
            external_status_code=code,
        )


def _transport(instance: str, name: str, settings: Mapping[str, Any]) -> Transport:
    if name == "odata":
        from adapters.sap.odata import ODataTransport

        if not settings.get("base_url"):
            raise ValueError(f"sap adapter {instance}: transport odata needs `base_url`")
        return ODataTransport(instance, settings)
    if name == "rfc":
        from adapters.sap.rfc import RfcTransport

        return RfcTransport(instance, settings)
    raise ValueError(f"sap adapter {instance}: transport must be odata or rfc, not {name!r}")
