"""Classifying database errors: Oracle's ORA-/DPY- codes first, then SQLAlchemy's exception types.

One table each. Messages keep only the driver's first line (never SQLAlchemy's rendering, which
would quote the bound values: a description could hold a resident's words).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy.exc as sa_exc

from adapters._exceptions import AdapterError, ErrorTable, PermanentError, TransientError

#: Oracle error codes -> ours. ORA-00001 (unique constraint) is "already there", handled by submit.
ORACLE_CODES: dict[str, type[AdapterError]] = {
    "ORA-00001": PermanentError,  # unique constraint violated (outside submit: a real conflict)
    "ORA-01400": PermanentError,  # cannot insert NULL
    "ORA-12899": PermanentError,  # value too large for column
    "ORA-01722": PermanentError,  # invalid number
    "ORA-01438": PermanentError,  # value larger than the column's precision
    "ORA-02291": PermanentError,  # parent key not found
    "ORA-00942": PermanentError,  # table or view does not exist (schema/grants)
    "ORA-01031": PermanentError,  # insufficient privileges
    "ORA-01017": PermanentError,  # invalid username/password
    "ORA-28000": PermanentError,  # account locked
    "ORA-00054": TransientError,  # resource busy (lock)
    "ORA-00060": TransientError,  # deadlock detected
    "ORA-30006": TransientError,  # resource busy, wait timeout
    "ORA-01033": TransientError,  # initialisation or shutdown in progress
    "ORA-01034": TransientError,  # Oracle not available
    "ORA-01089": TransientError,  # immediate shutdown in progress
    "ORA-03113": TransientError,  # end-of-file on communication channel
    "ORA-03114": TransientError,  # not connected to Oracle
    "ORA-03135": TransientError,  # connection lost contact
    "ORA-12170": TransientError,  # connect timeout
    "ORA-12514": TransientError,  # listener does not (yet) know the service
    "ORA-12528": TransientError,  # instance blocking new connections
    "ORA-12537": TransientError,  # connection closed
    "ORA-12541": TransientError,  # no listener
    "ORA-12543": TransientError,  # destination host unreachable
    "ORA-25408": TransientError,  # cannot safely replay call
    "DPY-4011": TransientError,  # python-oracledb thin: connection closed
    "DPY-4024": TransientError,  # python-oracledb: call timeout exceeded (call_timeout)
    "DPY-6005": TransientError,  # python-oracledb thin: cannot connect
}

#: SQLAlchemy's exception types -> ours, most specific first, for errors without an Oracle code.
SQLALCHEMY_ERRORS: ErrorTable = {
    sa_exc.DisconnectionError: TransientError,
    sa_exc.TimeoutError: TransientError,  # pool exhausted
    sa_exc.OperationalError: TransientError,  # refused, locked, statement timeout (PostgreSQL)
    sa_exc.InterfaceError: TransientError,
    sa_exc.IntegrityError: PermanentError,
    sa_exc.DataError: PermanentError,
    sa_exc.ProgrammingError: PermanentError,
    sa_exc.NoSuchModuleError: PermanentError,
    sa_exc.ArgumentError: PermanentError,
}

_CODE = re.compile(r"\b(ORA-\d{5}|DPY-\d{4})\b")


def oracle_code(exc: BaseException) -> str | None:
    """The ORA-/DPY- code of a (wrapped) driver error, if it has one."""
    match = _CODE.search(str(getattr(exc, "orig", None) or exc))
    return match.group(1) if match else None


def is_duplicate(exc: sa_exc.IntegrityError) -> bool:
    """A unique-constraint violation, on Oracle (ORA-00001), PostgreSQL (23505) or SQLite."""
    orig = exc.orig
    return (
        oracle_code(exc) == "ORA-00001"
        or getattr(orig, "sqlstate", None) == "23505"
        or "UNIQUE constraint failed" in str(orig)
    )


def describe(exc: BaseException) -> str:
    """The driver's own first line, without SQL or bound values."""
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {first}"


@contextmanager
def db_errors(context: str) -> Iterator[None]:
    """Raise database errors as Transient/PermanentError by ORACLE_CODES, then SQLALCHEMY_ERRORS."""
    try:
        yield
    except AdapterError:
        raise
    except sa_exc.SQLAlchemyError as exc:
        target = ORACLE_CODES.get(oracle_code(exc) or "")
        if target is None:
            target = next(
                (t for source, t in SQLALCHEMY_ERRORS.items() if isinstance(exc, source)),
                TransientError,
            )
        raise target(f"{context}: {describe(exc)}") from exc
    except ImportError as exc:
        raise PermanentError(
            f"{context}: the database driver is missing ({exc.name}); for oracle+oracledb:// "
            "URLs install civicbus[oracle]"
        ) from exc
