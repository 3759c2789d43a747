"""How smtplib's and the sent-log's failures become TransientError or PermanentError.

An SMTP answer carries its own class: 4xx means "try later", 5xx "refused". Everything on the
way there (refused connections, timeouts, dropped connections) is classified by type in `ERRORS`.
Server texts are not quoted: they may echo addresses.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy.exc as sa_exc

from adapters._exceptions import (
    AdapterError,
    ErrorTable,
    PermanentError,
    TransientError,
    map_exceptions,
)

ERRORS: ErrorTable = {
    smtplib.SMTPNotSupportedError: PermanentError,  # e.g. STARTTLS required but not offered
    smtplib.SMTPServerDisconnected: TransientError,
    TimeoutError: TransientError,
    OSError: TransientError,  # refused connections, resets, unreachable hosts
}


def _by_code(code: int) -> type[AdapterError]:
    return PermanentError if 500 <= code < 600 else TransientError


@contextmanager
def smtp_errors(context: str) -> Iterator[None]:
    """Raise any failure of the block as TransientError or PermanentError, with `context`."""
    with map_exceptions(ERRORS, context=context):
        try:
            yield
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            kind = PermanentError if all(c >= 500 for c in codes) else TransientError
            raise kind(
                f"{context}: the mail server refused the recipients (SMTP "
                f"{', '.join(map(str, codes))})"
            ) from exc
        except smtplib.SMTPResponseException as exc:
            raise _by_code(exc.smtp_code)(
                f"{context}: the mail server answered SMTP {exc.smtp_code} ({type(exc).__name__})"
            ) from exc


@contextmanager
def sent_log_errors(context: str) -> Iterator[None]:
    """Raise any failure of the sent-log's database as TransientError, with `context`.

    Never permanent: a database that is down, full, read-only or refusing our user is the
    set-up's fault, never the request's, and the retry tiers hold the request until it is fixed
    (or its attempts run out: then it waits as a dead letter, to replay).
    The message is the driver's first line: SQLAlchemy's own text would quote the statement.
    """
    try:
        yield
    except sa_exc.SQLAlchemyError as exc:
        said = getattr(exc, "orig", None) or exc
        first = next(iter(str(said).strip().splitlines()), "")
        raise TransientError(
            f"{context}: the sent-log cannot be used ({type(said).__name__}: {first})"
        ) from exc
