"""The store's tables (SQLAlchemy Core), the one source the migrations are checked against."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    PostgreSQL keeps `timestamptz`; SQLite has no zones, so UTC is stored naive (its fixed-width
    text form then also sorts and compares correctly) and the zone is put back on reading.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _in_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    # On SQLite the text is written and read here in one step each: the generic path (the two
    # methods above, then SQLAlchemy's own SQLite DATETIME formatting or parsing in Python)
    # cost ~4 us a value; every request, outbox row and audit entry carries several.
    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            return _sqlite_text
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            return _sqlite_datetime
        return super().result_processor(dialect, coltype)


def _in_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the store takes timezone-aware datetimes only")
    return value.astimezone(UTC)


# Neither function calls datetime.replace: it parses its keyword arguments, which costs more
# than the parsing itself (~10 k instructions against ~2 k) and as much as the formatting.


def _sqlite_text(value: datetime | None) -> str | None:
    """An aware datetime as SQLite keeps it: naive UTC, in SQLAlchemy's storage format
    ("YYYY-MM-DD HH:MM:SS.ffffff", always with microseconds, so that text order is time order)."""
    if value is None:
        return None
    return _in_utc(value).isoformat(" ", "microseconds")[:-6]  # without its "+00:00"


_UTC_SUFFIX = "+00:00"


def _sqlite_datetime(value: str | None) -> datetime | None:
    """The stored text back as an aware UTC datetime (also without microseconds, as SQL's
    CURRENT_TIMESTAMP writes it)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value + _UTC_SUFFIX)  # its tzinfo is UTC itself
    except ValueError:  # a text with a zone of its own, overridden as it always was
        parsed = None
    if parsed is None or parsed.tzinfo is not UTC:  # (a date alone parses naive)
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return parsed


#: An autoincrementing id: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


def _request_fk() -> sa.ForeignKey:
    return sa.ForeignKey("requests.id", ondelete="CASCADE")


requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.Text(), primary_key=True),
    sa.Column("jurisdiction", sa.Text(), nullable=False),
    sa.Column("service_code", sa.Text(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("requested_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("lat", sa.Float(), nullable=True),
    sa.Column("long", sa.Float(), nullable=True),
    # The canonical request without reporter, back-end references and history (own tables).
    sa.Column("document", _json(), nullable=False),
    # When it was last taken down (bus.takedown).
    sa.Column("taken_down_at", UTCDateTime(), nullable=True),
    # When civicbus last recorded a change to it, on its own clock: Open311's updated_datetime
    # and what updated_after filters by (ServiceRequest.changed_at).
    sa.Column("changed_at", UTCDateTime(), nullable=False),
    sa.Index(None, "requested_at", "id"),
    sa.Index(None, "updated_at"),
    sa.Index(None, "taken_down_at"),
    sa.Index(None, "changed_at"),
    sa.Index(None, "service_code"),
    sa.Index(None, "status"),
    sa.Index(None, "lat", "long"),
)

# Personal data lives apart so that nothing copying request rows can copy it by accident.
reporters = sa.Table(
    "reporters",
    metadata,
    sa.Column("request_id", sa.Text(), _request_fk(), primary_key=True),
    sa.Column("email", sa.Text(), nullable=True),
    sa.Column("first_name", sa.Text(), nullable=True),
    sa.Column("last_name", sa.Text(), nullable=True),
    sa.Column("phone", sa.Text(), nullable=True),
    sa.Column("device_id", sa.Text(), nullable=True),
    sa.Column("account_id", sa.Text(), nullable=True),
)

status_history = sa.Table(
    "status_history",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.Text(), _request_fk(), nullable=False),
    sa.Column("update_id", sa.Text(), nullable=True),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("note", sa.Text(), nullable=True),
    sa.Column("source", sa.Text(), nullable=False),
    sa.Column("external_status_code", sa.Text(), nullable=True),
    sa.Column("media_url", sa.Text(), nullable=True),
    sa.Column("recorded_at", UTCDateTime(), nullable=False),
    # A pusher may send an update_id again (a retry): it is recorded once.
    sa.UniqueConstraint("request_id", "update_id"),
    sa.Index(None, "at"),
)

backend_refs = sa.Table(
    "backend_refs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.Text(), _request_fk(), nullable=False),
    sa.Column("adapter", sa.Text(), nullable=False),
    sa.Column("reference", sa.Text(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("request_id", "adapter"),
    sa.Index(None, "adapter", "reference"),
)

batch_tokens = sa.Table(
    "batch_tokens",
    metadata,
    sa.Column("token", sa.Text(), primary_key=True),
    sa.Column("request_id", sa.Text(), _request_fk(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

api_clients = sa.Table(
    "api_clients",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text(), nullable=False, unique=True),
    # SHA-256 hex of the key; the key itself is shown once and never stored.
    sa.Column("key_hash", sa.Text(), nullable=False, unique=True),
    sa.Column("jurisdiction", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    # Whether the key may post status updates (POST /servicerequestupdates), not only create
    # and read. Not by default: a resident app's key must not close other residents' requests.
    sa.Column("may_post_updates", sa.Boolean(), nullable=False, server_default=sa.false()),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column(
        "client_id", BigId, sa.ForeignKey("api_clients.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("key", sa.Text(), primary_key=True),
    sa.Column("response", _json(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),  # the publish order
    sa.Column("message_id", sa.Text(), nullable=False),
    sa.Column("envelope", _json(), nullable=False),
    sa.Column("exchange", sa.Text(), nullable=False),
    sa.Column("routing_key", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("sent_at", UTCDateTime(), nullable=True),
    # Only unsent rows are indexed: the relay's scan stays small however long the history.
    sa.Index(
        "ix_outbox_pending",
        "id",
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    ),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    # Ids are assigned gap-free under the chain-head lock; a gap means a deleted entry.
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("actor", sa.Text(), nullable=False),
    sa.Column("action", sa.Text(), nullable=False),
    sa.Column("request_id", sa.Text(), nullable=True),
    sa.Column("message_id", sa.Text(), nullable=True),
    sa.Column("outcome", sa.Text(), nullable=False),
    # Canonical JSON text, hashed byte for byte as stored (no database re-formatting).
    sa.Column("details", sa.Text(), nullable=False),
    sa.Column("prev_hash", sa.Text(), nullable=False),
    sa.Column("hash", sa.Text(), nullable=False),
    sa.Index(None, "request_id", "id"),
)

# One row: the last entry's id and hash. Writers lock it, so the chain never forks.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("last_id", BigId, nullable=False),
    sa.Column("last_hash", sa.Text(), nullable=False),
)

adapter_watermarks = sa.Table(
    "adapter_watermarks",
    metadata,
    sa.Column("instance", sa.Text(), primary_key=True),
    sa.Column("watermark", sa.Text(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # How the poller's rounds go, for `civicbus status` and /metrics (migration 0002).
    sa.Column("polled_at", UTCDateTime(), nullable=True),
    sa.Column("failing_since", UTCDateTime(), nullable=True),
    sa.Column("failed_rounds", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text(), nullable=True),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.Text(), primary_key=True),
    sa.Column("holder", sa.Text(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)

webhook_subscriptions = sa.Table(
    "webhook_subscriptions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("events", _json(), nullable=False),  # list of patterns such as "request.*"
    sa.Column("secret_env", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("active", sa.Boolean(), nullable=False),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("instance", sa.Text(), nullable=False),
    sa.Column("message_id", sa.Text(), nullable=False),
    sa.Column("request_id", sa.Text(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("first_failed_at", UTCDateTime(), nullable=False),
    sa.Column("last_failed_at", UTCDateTime(), nullable=False),
    sa.Column("envelope", _json(), nullable=True),
    sa.Column("state", sa.Text(), nullable=False),
    # When it was last replayed or dropped (NULL while dead), for `civicbus store prune`
    # (migration 0005: letters resolved before it carry the time of the upgrade).
    sa.Column("resolved_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("instance", "message_id"),
    sa.Index(None, "instance", "state", "id"),
)

# One row per running worker process and queue it consumes, rewritten by the worker's heartbeat
# (migration 0003): a small table, read whole by `civicbus status`.
worker_liveness = sa.Table(
    "worker_liveness",
    metadata,
    sa.Column("worker_id", sa.Text(), primary_key=True),
    sa.Column("recipient", sa.Text(), primary_key=True),  # adapter instance or `sub.<id>`
    sa.Column("host", sa.Text(), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    # The message in hand (none while idle), its request if known, since when.
    sa.Column("message_id", sa.Text(), nullable=True),
    sa.Column("request_id", sa.Text(), nullable=True),
    sa.Column("working_since", UTCDateTime(), nullable=True),
    # Messages delivered to it and not yet acked, in hand and prefetched (migration 0010).
    sa.Column("held", sa.Integer(), nullable=True),
)

# Every adapter instance whose queues the relay declared, ever (migration 0004): removing an
# instance from the config does not delete its queues, and messages left in them would wait
# there unseen. A few rows, read whole by `civicbus status` and `civicbus dead keep`.
declared_instances = sa.Table(
    "declared_instances",
    metadata,
    sa.Column("name", sa.Text(), primary_key=True),
    sa.Column("first_declared_at", UTCDateTime(), nullable=False),
)

# A publisher RabbitMQ blocks for a resource alarm (migration 0006): the relay (or a worker)
# writes its row when the broker blocks its connection, refreshes it while the block lasts and
# deletes it when the broker publishes again; the workers' heartbeats prune a row left stale by
# a publisher that died blocked. One row at most per publisher, read whole by `civicbus status`.
broker_blocks = sa.Table(
    "broker_blocks",
    metadata,
    sa.Column("publisher", sa.Text(), primary_key=True),  # "relay"
    sa.Column("holder", sa.Text(), nullable=False),  # the process (the relay's lease holder)
    sa.Column("blocked_since", UTCDateTime(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),  # the broker's, e.g. "low on disk"
    sa.Column("seen_at", UTCDateTime(), nullable=False),  # when the holder last said so
)

GENESIS_HASH = "0" * 64
