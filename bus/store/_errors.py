"""The store's errors, the one place database-driver errors are translated into them, and what an
operator is advised to check for one of them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import exc as sa_exc

from bus.store._url import shown_url


class StoreUnavailable(Exception):
    """The database cannot be reached or is locked; the caller answers 503 / retries later."""


class NotAnswering(StoreUnavailable):
    """The database server did not answer in time (a round trip, or connecting): frozen, paused
    or cut off by a partition. Until it answers again, the store refuses at once (_breaker)."""


class WriteConflict(StoreUnavailable):
    """PostgreSQL ended the transaction to settle a deadlock or serialization failure with a
    concurrent one; running it again may well succeed at once."""


class SchemaTooNew(StoreUnavailable):
    """The database was migrated by a newer civicbus than this one; it cannot be used."""


class AlreadyExists(Exception):
    """A row with the same unique key exists (request id, client name, idempotency key...)."""


class UpdateConflict(AlreadyExists):
    """A status update reuses an update_id already recorded for its request with other content."""

    def __init__(self, request_id: str, update_id: str) -> None:
        super().__init__(
            f"request {request_id}: update_id {update_id!r} was recorded with other content"
        )
        self.request_id = request_id
        self.update_id = update_id


class BadDatabaseUrl(ValueError):
    """The database URL is not one the store can use; the text never quotes the URL (it may
    hold a password)."""


class NoSuchStore(Exception):
    """Opened as existing, the store's SQLite file is not there; `path` is where it was looked
    for (`database`, the URL's path, relative to the current folder when not absolute)."""

    def __init__(self, path: Path, database: str) -> None:
        where = (
            ""
            if Path(database).is_absolute()
            else f" (sqlite:///{database} is a path from the current folder: run this command "
            "in the folder civicbus runs in)"
        )
        super().__init__(f"no civicbus store at {path}{where}")
        self.path = path


class HistoryFull(ValueError):
    """A request already holds MAX_HISTORY status updates; civicbus records no more of them."""

    def __init__(self, request_id: str, held: int) -> None:
        super().__init__(
            f"request {request_id} has {held:,} status updates, the most civicbus keeps for "
            "one request: no more are recorded (a sender repeating itself in a loop?)"
        )
        self.request_id = request_id


class UpdatesNotAllowed(Exception):
    """The API client may not post status updates (denied, or revoked), as the writing
    transaction sees it."""

    def __init__(self, client_id: int) -> None:
        super().__init__(f"client {client_id} may not post status updates")
        self.client_id = client_id


class InvalidData(ValueError):
    """The database refused a value (e.g. a NUL character on PostgreSQL); a client error."""


class DriverSilence(Exception):
    """Mixed into the driver errors that mean: the server did not answer in time (see
    _pg_deadline); they become NotAnswering."""


def _reason(error: Exception) -> str:
    # Only the driver's first line: the rest may quote row values (personal data).
    original = getattr(error, "orig", None) or error
    first_line = (str(original).strip().splitlines() or [""])[0]
    return f"{type(original).__name__}: {first_line}"


#: SQLSTATEs of a transaction PostgreSQL ended in favour of a concurrent one.
_CONFLICTS = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
#: SQLSTATEs that psycopg raises as InternalError but that mean "no writes here for now": a
#: read-only transaction, e.g. on an old primary that came back as a standby after a fail-over.
#: (Shutdowns, lost connections, full disks and too many connections are OperationalErrors.)
_UNAVAILABLE_INTERNAL = frozenset({"25006"})  # read_only_sql_transaction


def _sqlstate(error: sa_exc.DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)


@contextmanager
def translate_errors(database: str) -> Iterator[None]:
    """Turn connection failures, lock timeouts and a read-only database into StoreUnavailable
    (a server that did not answer in time into its NotAnswering, deadlocks and serialization
    failures into its WriteConflict), unique-key violations into
    AlreadyExists and refused or out-of-range values into InvalidData; the enclosing
    transaction has been rolled back by then."""
    try:
        yield
    except sa_exc.IntegrityError as error:
        raise AlreadyExists(f"{database}: {_reason(error)}") from None
    except sa_exc.DataError as error:
        raise InvalidData(f"{database}: {_reason(error)}") from None
    except (
        sa_exc.OperationalError,  # refused, reset, "database is locked", serialization failures
        sa_exc.InterfaceError,
        sa_exc.DisconnectionError,
        sa_exc.TimeoutError,  # no pooled connection in time
    ) as error:
        if isinstance(error, sa_exc.DBAPIError) and _sqlstate(error) in _CONFLICTS:
            raise WriteConflict(f"{database}: {_reason(error)}") from None
        if isinstance(getattr(error, "orig", None), DriverSilence):
            raise NotAnswering(f"{database}: {_reason(error)}") from None
        raise StoreUnavailable(f"{database}: {_reason(error)}") from None
    except sa_exc.InternalError as error:
        if _sqlstate(error) in _UNAVAILABLE_INTERNAL:
            raise StoreUnavailable(f"{database}: {_reason(error)}") from None
        raise
    except sa_exc.StatementError as error:
        # Refused while binding, e.g. a naive datetime, or one whose UTC form leaves the range.
        if isinstance(error.orig, (ValueError, OverflowError)):
            raise InvalidData(f"{database}: {_reason(error)}") from None
        raise
    except OverflowError as error:
        # A last guard: a datetime whose UTC form leaves the calendar, converted before binding.
        raise InvalidData(f"{database}: {_reason(error)}") from None


def not_answering_advice(url: str) -> str:
    """What an operator should check when the database at `url` did not answer (NotAnswering):
    one line, naming the database without its password or query string (which may hold one)."""
    return (
        f"{shown_url(url)} did not answer in time: the server is reachable but "
        "not answering (paused, frozen, or behind a firewall that drops packets); check that "
        "server and the network to it, and that CIVICBUS_DATABASE_URL names the database meant"
    )
