"""The store's errors, and the one place database-driver errors are translated into them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc


class StoreUnavailable(Exception):
    """The database cannot be reached or is locked; the caller answers 503 / retries later."""


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


class InvalidData(ValueError):
    """The database refused a value (e.g. a NUL character on PostgreSQL); a client error."""


def _reason(error: sa_exc.DBAPIError | sa_exc.SQLAlchemyError) -> str:
    # Only the driver's first line: the rest may quote row values (personal data).
    original = getattr(error, "orig", None) or error
    first_line = (str(original).strip().splitlines() or [""])[0]
    return f"{type(original).__name__}: {first_line}"


@contextmanager
def translate_errors(database: str) -> Iterator[None]:
    """Turn connection failures and lock timeouts into StoreUnavailable, unique-key violations
    into AlreadyExists and refused values into InvalidData; the enclosing transaction has been
    rolled back by then."""
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
        raise StoreUnavailable(f"{database}: {_reason(error)}") from None
    except sa_exc.StatementError as error:
        if isinstance(error.orig, ValueError):  # refused while binding, e.g. a naive datetime
            raise InvalidData(f"{database}: {_reason(error)}") from None
        raise
