"""The two kinds of failure an adapter reports, and one place to classify a library's errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from contextlib import ContextDecorator
from types import TracebackType


class AdapterError(Exception):
    """A back-end call failed. Messages carry the context an operator needs, never personal data."""


class TransientError(AdapterError):
    """Worth retrying: timeouts, refused connections, locks, 5xx, throttling."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the back-end asked us to wait (e.g. HTTP Retry-After), if it said.
        self.retry_after = retry_after


class PermanentError(AdapterError):
    """Retrying cannot help: rejected data, 4xx, a mapping that does not fit; dead-letter now."""


#: A table from a library's exception types to ours, most specific first.
ErrorTable = Mapping[type[BaseException], type[AdapterError]]


class map_exceptions(ContextDecorator):  # named as the function it was, which adapters call
    """Translate a lower library's exceptions into Transient/PermanentError by `table`.

    Our own errors pass through; an exception the table does not name passes through too and
    is treated by the worker as transient with a bounded number of attempts. `describe`, when
    given, may word a translated error for an operator (adapters/_http.py words a refused
    connection so); when it answers None, the message is the exception's type and text.

    A class rather than a generator-based context manager: adapters enter one for every
    back-end call (two a command for a find then a submit), and a generator costs several
    times as much to set up and leave.
    """

    __slots__ = ("_context", "_describe", "_table")

    def __init__(
        self,
        table: ErrorTable,
        *,
        context: str = "",
        describe: Callable[[BaseException], str | None] | None = None,
    ) -> None:
        self._table = table
        self._context = context
        self._describe = describe

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:  # never swallows: what it does not translate goes on as it came
        if not isinstance(exc, Exception) or isinstance(exc, AdapterError):
            return  # none, an interrupt, or ours already
        for source, target in self._table.items():
            if isinstance(exc, source):
                prefix = f"{self._context}: " if self._context else ""
                said = self._describe(exc) if self._describe is not None else None
                raise target(f"{prefix}{said or f'{type(exc).__name__}: {exc}'}") from exc


#: A quoted value in an error text: from an opening quote (" or a ' that is not inside a word)
#: to the quote that closes it, a ' not followed by a letter or digit (so the apostrophe of
#: 'Marge O'Brien' does not end the value), or to the end of the text when none does.
_QUOTED = re.compile(r"(?<!\w)'.*?(?:'(?!\w)|\Z)|\".*?(?:\"|\Z)", re.DOTALL)


def blank_quoted(text: str, *, keep: Callable[[str], bool] | None = None) -> str:
    """`text` with each quoted value replaced by '…': a back-end's error text may echo a
    resident's data. `keep` spares quoted text known not to be data (e.g. an element name)."""

    def blank(quoted: re.Match[str]) -> str:
        value = quoted.group(0)
        return value if keep is not None and keep(value) else "'…'"

    return _QUOTED.sub(blank, text)


def answer_excerpt(text: str, limit: int = 200) -> str:
    """What a back-end said about an error, for an error message: the `error` or `message`
    member of a JSON answer (or `error.message`), else the text; on one line, quoted values
    blanked (a validation error may echo a resident's data), at most `limit` characters."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        said = data.get("error") or data.get("message")
        if isinstance(said, dict):
            said = said.get("message")
        if isinstance(said, str):
            text = said
    line = " ".join(blank_quoted(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
