"""The record of what was sent: SMTP cannot be asked what it delivered, so we remember.

A table `email_sent` in a database named by a SQLAlchemy URL: by default a SQLite file in the
adapter's state dir (one host), or a PostgreSQL database that the worker copies on every host
share. `find` answers from it; it is what makes `submit` idempotent for a redelivered message.

Each message is claimed before it is sent and marked sent once the server took it, so a
database that cannot be written to stops the mail before it goes (a log that can be read but
not written would otherwise let every redelivery send it again), and two workers holding the
same request at once send it once. The sent-log creates its own table (the adapter knows
nothing of the civicbus store, even when it shares the store's database).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

#: The databases the sent-log runs on, by the drivers civicbus installs.
DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "postgresql+psycopg"})

_metadata = sa.MetaData()
#: One row a request and instance: claimed (sent_at NULL) while its message is being sent.
#: Times are ISO 8601 text, as the first sent-log (SQLite) wrote them.
_sent = sa.Table(
    "email_sent",
    _metadata,
    # Several e-mail instances may share one database; a request re-routed to another
    # instance (another department) must be mailed again.
    sa.Column("instance", sa.String(64), primary_key=True),
    sa.Column("request_id", sa.String(200), primary_key=True),
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("claimed_at", sa.Text, nullable=False),
    sa.Column("sent_at", sa.Text, nullable=True),
)


@dataclass(frozen=True)
class Sent:
    """One request's message: claimed at `claimed_at`, sent at `sent_at` (None: not yet known)."""

    request_id: str
    message_id: str
    claimed_at: datetime
    sent_at: datetime | None

    @property
    def sent(self) -> bool:
        return self.sent_at is not None


class SentLog:
    """Which request of one adapter instance got which message, and when.

    Connects on first use (an adapter connects to nothing when it is built). Every failure is
    SQLAlchemy's: the adapter classifies it (adapters/email/_errors.py).
    """

    def __init__(self, url: str | sa.URL, instance: str, *, connect_timeout: float = 10) -> None:
        self.url = database_url(url)
        self.instance = instance
        self._connect_timeout = connect_timeout
        self._engine: sa.Engine | None = None

    @classmethod
    def in_file(cls, path: Path, instance: str) -> SentLog:
        """The default: a SQLite file, which only workers on one host can share."""
        return cls(sa.URL.create("sqlite", database=str(path)), instance)

    @property
    def where(self) -> str:
        """Where the log is, for an operator: the URL without its password."""
        return self.url.render_as_string(hide_password=True)

    def get(self, request_id: str) -> Sent | None:
        """The entry for `request_id`, claimed or sent; None when there is none."""
        with self.engine.connect() as db:
            return self._entry(db, request_id)

    def claim(self, request_id: str, message_id: str, at: datetime) -> Sent | None:
        """Claim the request's message before sending it: None when the claim is ours, else the
        entry that was there first (another claim, or the message sent)."""
        row = {
            "instance": self.instance,
            "request_id": request_id,
            "message_id": message_id,
            "claimed_at": at.isoformat(),
        }
        with self.engine.begin() as db:
            if self._inserted(db, row):
                return None
            there = self._entry(db, request_id)
        if there is None:  # released between our insert and our look: its send failed, try again
            return self.claim(request_id, message_id, at)
        return there

    def take_over(self, stale: Sent, at: datetime) -> bool:
        """Claim anew an entry whose claimant never said it sent (it died mid-send, or could not
        mark it); False when another worker took it over first."""
        with self.engine.begin() as db:
            taken = db.execute(
                self._this(stale.request_id)
                .where(_sent.c.claimed_at == stale.claimed_at.isoformat())
                .where(_sent.c.sent_at.is_(None))
                .values(claimed_at=at.isoformat())
            )
        return taken.rowcount == 1

    def mark_sent(self, request_id: str, at: datetime) -> None:
        """The server took the message: from now on `get` says it was sent."""
        with self.engine.begin() as db:
            db.execute(self._this(request_id).values(sent_at=at.isoformat()))

    def release(self, request_id: str, claimed_at: datetime) -> None:
        """Give up our claim of a message that was not sent, so the retry sends without waiting."""
        with self.engine.begin() as db:
            db.execute(
                sa.delete(_sent).where(
                    _sent.c.instance == self.instance,
                    _sent.c.request_id == request_id,
                    _sent.c.claimed_at == claimed_at.isoformat(),
                    _sent.c.sent_at.is_(None),
                )
            )

    def probe(self) -> None:
        """Reach the database and its table, or raise."""
        with self.engine.connect() as db:
            db.execute(sa.select(_sent.c.request_id).limit(1)).all()  # no count: it grows

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- helpers -------------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            # hide_parameters: error texts never quote the values bound.
            engine = sa.create_engine(
                self.url,
                pool_pre_ping=True,
                hide_parameters=True,
                connect_args=self._connect_args(),
            )
            if self.url.get_backend_name() == "sqlite" and self.url.database:
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            with engine.begin() as db:
                # IF NOT EXISTS: workers starting together (SQLite's file) make it once.
                db.execute(sa.schema.CreateTable(_sent, if_not_exists=True))
                _adopt_first_log(db, self.instance)
            self._engine = engine
        return self._engine

    def _connect_args(self) -> dict[str, Any]:
        # A database that does not answer must fail the attempt (a retry), not hold the worker:
        # a statement waits `timeout` at most (a lock held by another session, a slow server),
        # and a peer gone from the network is given up after as long (the URL's own win).
        if self.url.get_backend_name() == "postgresql":
            limit_ms = max(1, round(self._connect_timeout * 1000))
            return {
                "connect_timeout": max(2, round(self._connect_timeout)),  # libpq: >= 2 s
                "options": f"-c statement_timeout={limit_ms}",
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
                "tcp_user_timeout": limit_ms,
                **self.url.query,
            }
        return {"timeout": self._connect_timeout}  # SQLite: waiting for another writer's lock

    def _inserted(self, db: sa.Connection, row: dict[str, str]) -> bool:
        """Insert `row` unless its key is there: of two workers claiming at once, the database
        keeps the first, as the first sent-log's INSERT OR IGNORE did."""
        if db.dialect.name == "postgresql":
            # The count is -1 here (SQLAlchemy on psycopg): the row returned says it went in.
            claim = postgresql.insert(_sent).values(row).on_conflict_do_nothing()
            return db.execute(claim.returning(_sent.c.request_id)).first() is not None
        # SQLite before 3.35 (RHEL 9's) has no RETURNING; its count of changes is exact.
        return db.execute(sqlite.insert(_sent).values(row).on_conflict_do_nothing()).rowcount == 1

    def _this(self, request_id: str) -> sa.Update:
        return sa.update(_sent).where(
            _sent.c.instance == self.instance, _sent.c.request_id == request_id
        )

    def _entry(self, db: sa.Connection, request_id: str) -> Sent | None:
        row = db.execute(
            sa.select(_sent.c.message_id, _sent.c.claimed_at, _sent.c.sent_at).where(
                _sent.c.instance == self.instance, _sent.c.request_id == request_id
            )
        ).first()
        if row is None:
            return None
        sent_at = None if row.sent_at is None else datetime.fromisoformat(row.sent_at)
        return Sent(request_id, row.message_id, datetime.fromisoformat(row.claimed_at), sent_at)


def database_url(url: str | sa.URL) -> sa.URL:
    """`url` parsed as the store parses its URL, so that one variable can name both (a plain
    `postgresql://` means psycopg 3); ValueError, without the URL's text, for other databases."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a bad port
        raise ValueError(
            "not a database URL: give sqlite:///PATH or postgresql://USER@HOST/DATABASE"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "postgresql":
        # The store's own limit (bus/store/_engine.py), which psycopg would refuse as unknown.
        parsed = parsed.difference_update_query(["query_timeout"])
    if parsed.drivername not in DRIVERS:
        raise ValueError(
            f"{parsed.drivername}:// cannot hold the sent-log: give a postgresql:// "
            "(psycopg 3) or sqlite:/// URL"
        )
    return parsed


def _adopt_first_log(db: sa.Connection, instance: str) -> None:
    """Move the rows of the first sent-log's table (`sent`, in the state dir's file, before
    there was an instance column) into `email_sent`, so an upgrade forgets no sent message."""
    if db.dialect.name != "sqlite" or not sa.inspect(db).has_table("sent"):
        return
    db.execute(
        sa.text(
            "INSERT INTO email_sent (instance, request_id, message_id, claimed_at, sent_at) "
            "SELECT :instance, request_id, message_id, sent_at, sent_at FROM sent "
            "WHERE true ON CONFLICT DO NOTHING"
        ),
        {"instance": instance},
    )
    db.execute(sa.text("DROP TABLE sent"))
