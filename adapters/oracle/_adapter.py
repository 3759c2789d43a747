"""The Oracle adapter: work orders in a legacy work-order database, via SQLAlchemy Core.

`submit` inserts the work order and its first history row in one transaction, with the civicbus
request id as the unique EXTERNAL_REF: a unique-constraint violation means a redelivery found the
order already there, and `find` answers instead. Status changes are polled by UPDATED_AT with a
safety overlap (see `watermark`). The tables' times are the database's local time without a zone,
in the instance's `timezone` (default UTC; see adapters.local_time for the hour repeated when
the clocks go back). Oracle URLs (`oracle+oracledb://`) use python-oracledb in thin
mode (the `oracle` extra); `postgresql+psycopg://` and `sqlite:///` URLs run the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import structlog

from adapters._changes import page_parts, unmapped_status
from adapters._contract import Adapter, Health, Receipt, SkippedChange, UpdatePage
from adapters._exceptions import AdapterError, PermanentError
from adapters.local_time import LocalClock, reading, zone_named
from adapters.mapping import Mapping as FieldMapping
from adapters.mapping import UnknownStatus
from adapters.oracle import _statements as sql
from adapters.oracle._errors import db_errors, is_duplicate
from adapters.oracle._tables import MAPPED_FIELDS, create_schema
from adapters.oracle._timeouts import Timeouts
from adapters.oracle.watermark import Changed, OverlapWatermark
from schemas.model import ServiceRequest, StatusUpdate

log = structlog.get_logger(__name__)


class OracleAdapter(Adapter):
    """A work-order database reached through SQLAlchemy (Oracle, PostgreSQL or SQLite).

    Settings: `url` (SQLAlchemy URL, required; put the password in it through a secret),
    `pool_size` (default 5), `pool_timeout` (seconds to wait for a free pooled connection, default
    10), `connect_timeout` (seconds to open a connection, default 10), `call_timeout` (seconds
    for each database call, default 30; a timed-out call is retried), `initial_status` (default
    NEW), `poll_overlap_seconds` (default 60), `timezone` (the IANA zone the tables' times are
    in, default UTC), `create_schema` (sandbox and tests only: create the tables on first use;
    never on Oracle, where the DBA runs the DDL).
    """

    kind = "oracle"
    polls = True

    def __init__(
        self, instance: str, settings: Mapping[str, Any], mapping: FieldMapping | None = None
    ) -> None:
        super().__init__(instance, settings, mapping)
        if not settings.get("url"):
            raise ValueError(f"oracle adapter {instance}: the setting `url` is required")
        if mapping is None:
            raise ValueError(f"oracle adapter {instance}: a mapping file is required")
        self.field_mapping: FieldMapping = mapping
        self.url = sa.make_url(str(settings["url"]))
        self.initial_status = str(settings.get("initial_status", sql.NEW))
        self.overlap = timedelta(seconds=float(settings.get("poll_overlap_seconds", 60)))
        zone = str(settings.get("timezone", "UTC"))
        self.clock = LocalClock(zone_named(zone, f"oracle adapter {instance}: timezone"))
        self._pool = {
            "pool_size": int(settings.get("pool_size", 5)),
            "pool_timeout": float(settings.get("pool_timeout", 10)),
        }
        self.timeouts = Timeouts(
            connect=float(settings.get("connect_timeout", 10)),
            call=float(settings.get("call_timeout", 30)),
        )
        if not (self.timeouts.connect > 0 and self.timeouts.call > 0):
            raise ValueError(f"oracle adapter {instance}: connect_timeout and call_timeout "
                             "must be positive (seconds)")  # fmt: skip
        # Built on first use: a constructor must not fail because the database is down.
        self._engine: sa.Engine | None = None
        self.create_schema = bool(settings.get("create_schema", False))
        if self.create_schema and self.url.get_backend_name() == "oracle":
            raise ValueError(
                f"oracle adapter {instance}: create_schema is for PostgreSQL and "
                "SQLite only; on Oracle run deploy/sandbox/oracle/schema.sql"
            )

    # -- the contract --------------------------------------------------------------------------

    def submit(self, request: ServiceRequest) -> Receipt:
        """Insert the work order unless one with this external reference exists; idempotent."""
        fields = self._fields(request)
        existing = self.find(request.id)
        if existing is not None:
            return existing
        context = f"oracle adapter {self.instance}: create for request {request.id}"
        now = self.clock.local(datetime.now(UTC))
        try:
            with db_errors(context), self.engine.begin() as conn:
                inserted = conn.execute(
                    sql.insert_work_order(request.id, fields, self.initial_status, now)
                )
                (order_id,) = inserted.inserted_primary_key or (None,)
                if order_id is None:
                    raise PermanentError(f"{context}: the database returned no work-order id")
                conn.execute(sql.insert_history(order_id, self.initial_status, "civicbus", now))
        except PermanentError as exc:
            cause = exc.__cause__
            if isinstance(cause, sa_exc.IntegrityError) and is_duplicate(cause):
                # Another delivery of this request won the race: it is there, created once.
                found = self.find(request.id)
                if found is not None:
                    return found
            raise
        log.info("oracle.work_order.created", adapter=self.instance, request_id=request.id,
                 work_order=order_id)  # fmt: skip
        return Receipt(request_id=request.id, reference=str(order_id), created=True,
                       status=self.field_mapping.status_or_none(self.initial_status))  # fmt: skip

    def find(self, request_id: str) -> Receipt | None:
        context = f"oracle adapter {self.instance}: find request {request_id}"
        with db_errors(context), self.engine.connect() as conn:
            row = conn.execute(sql.select_by_reference(request_id)).first()
        if row is None:
            return None
        return Receipt(request_id=request_id, reference=str(row.id), created=False,
                       status=self.field_mapping.status_or_none(row.status))  # fmt: skip

    def updates(self, since: str | None) -> UpdatePage:
        """Changes after the watermark, re-reading an overlap window so late commits are seen."""
        mark = OverlapWatermark.parse(since)
        start = mark.window_start(self.overlap)
        local_start = None if start is None else self.clock.window_start(start)
        with db_errors(f"oracle adapter {self.instance}: poll changes"), self.engine.connect() as c:
            rows = c.execute(sql.select_changed_since(local_start)).all()
        polled = []
        for row in rows:
            earlier, later = self.clock.readings(row.updated_at)
            at = reading(str(row.id), earlier, later, mark.seen, start)
            polled.append(Changed(key=str(row.id), at=at, row=row))
        # Remembered `clock_back` longer: a change in the repeated hour stays in the window by
        # its later reading that long, and must be known under its earlier one.
        fresh, after = mark.advance(polled, self.overlap + self.clock.clock_back)
        updates, skipped = page_parts(self._update(c.row, c.at) for c in fresh)
        return UpdatePage(updates=updates, watermark=after.dump(), skipped=skipped)

    def check(self) -> Health:
        try:
            with db_errors(f"oracle adapter {self.instance}"), self.engine.connect() as conn:
                conn.execute(sql.probe()).all()
        except AdapterError as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"{self.url.render_as_string(hide_password=True)} answers")

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- helpers -------------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            with db_errors(f"oracle adapter {self.instance}: connect"):
                engine = sa.create_engine(
                    self.url,
                    pool_pre_ping=True,
                    connect_args=self.timeouts.connect_args(self.url),
                    **self._pool,
                )
                self.timeouts.bound_calls(engine)
                if self.create_schema:
                    if self.url.get_backend_name() == "sqlite" and self.url.database:
                        Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
                    create_schema(engine)
                self._engine = engine
        return self._engine

    def _fields(self, request: ServiceRequest) -> dict[str, Any]:
        fields = self.field_mapping.apply(request)
        where = f"oracle adapter {self.instance}: request {request.id}"
        unknown = sorted(set(fields) - set(MAPPED_FIELDS))
        if unknown:
            raise PermanentError(f"{where}: mapping field(s) {', '.join(unknown)} are not "
                                 f"WORK_ORDERS columns ({', '.join(MAPPED_FIELDS)})")  # fmt: skip
        if not fields.get("work_type"):
            raise PermanentError(f"{where}: the mapping gives no work_type")
        return fields

    def _update(self, row: Any, at: datetime) -> StatusUpdate | SkippedChange:
        try:
            status = self.field_mapping.status(row.status)
        except UnknownStatus:
            return unmapped_status(f"work order {row.id}", row.status, self.field_mapping,
                                   row.external_ref)  # fmt: skip
        return StatusUpdate(
            request_id=row.external_ref,
            status=status,
            at=at,
            update_id=f"{self.instance}:{row.id}:{at.isoformat()}",
            source=self.instance,
            external_status_code=row.status,
        )
