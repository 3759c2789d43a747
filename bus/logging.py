"""Logging, configured once at start-up: structlog over the standard library.

JSON lines in production (or whenever stderr is not a terminal), readable lines on a terminal.
Every line carries the bound request and correlation ids, and passes a redaction step so that a
resident's name, e-mail address or phone number never reaches a log, whatever a caller logged.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

from bus.json_text import json_writer
from bus.redaction import redact


def redact_personal_data(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact reporter e-mail, phone and names from every field."""
    redacted: MutableMapping[str, Any] = redact(event_dict)  # a new dict; the input is kept
    return redacted


#: One encoder for every JSON line, json.dumps's output (structlog's renderer passes `default=`
#: to json.dumps, which then builds a new encoder for each call). Values JSON cannot hold are
#: written as their repr, as structlog's renderer writes them.
_LINE = json_writer(default=repr, separators=(", ", ": "))


def _json_line(event_dict: Any, **_dumps_kw: Any) -> str:
    return _LINE(event_dict)


#: The ids `request_context` binds, as one value: set and reset with a token, where structlog's
#: `bound_contextvars` reads and restores every bound variable (~8 us a message for a worker).
_REQUEST_IDS: ContextVar[dict[str, str] | None] = ContextVar("civicbus_request_ids", default=None)


def add_request_ids(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the ids of the enclosing `request_context`, unless the line has its
    own."""
    ids = _REQUEST_IDS.get()
    if ids:
        for key, value in ids.items():
            event_dict.setdefault(key, value)
    return event_dict


class _UtcTimestamp:
    """structlog processor: the line's time in UTC, `2026-12-07T06:09:52.396725Z`, as
    structlog's TimeStamper(fmt="iso", utc=True) writes it but always with its microseconds.
    The text of the second is kept until the next one: less than half the stamper's cost, on
    one line per accepted request and per delivered message."""

    def __init__(self) -> None:
        # One tuple, replaced whole: threads logging at once never pair a second's text with
        # another second.
        self._second: tuple[int, str] = (-1, "")

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        known, text = self._second
        if second != known:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        event_dict["timestamp"] = f"{text}.{nanoseconds // 1000:06d}Z"
        return event_dict


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's direct writer, with the name `add_logger_name` puts on each line."""

    def __init__(self, stream: TextIO, name: str | None) -> None:
        super().__init__(stream)
        self.name = name or "civicbus"


def configure_logging(
    fmt: str = "auto", level: str | int = "INFO", stream: TextIO | None = None
) -> None:
    """Set up structlog and the stdlib root logger; `fmt` is "json", "console" or "auto"."""
    stream = sys.stderr if stream is None else stream
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    numeric_level = level if isinstance(level, int) else logging.getLevelNamesMapping()[level]
    shared: list[structlog.typing.Processor] = [
        add_request_ids,
        structlog.contextvars.merge_contextvars,  # what an adapter or library binds itself
        # A traceback as text, before redaction: an exception's message may quote a resident's
        # e-mail address or phone number (a back-end echoing the payload it refused).
        structlog.processors.format_exc_info,
        # Before the fields added next: the level, the logger's name and the time are ours,
        # never a resident's, and need no search for e-mail addresses or phone numbers.
        redact_personal_data,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _UtcTimestamp(),
    ]
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer(serializer=_json_line)
    )
    # civicbus's own lines are rendered and written by structlog directly: going through the
    # standard library's loggers, handlers and formatter cost several times as much per line
    # (one line per accepted request and per delivered message).
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=lambda *args: _NamedWriteLogger(stream, args[0] if args else None),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # Not cached: a logger bound once would ignore any later configuration (tests that
        # capture logs, a CLI command reconfiguring); the lookup costs a few microseconds.
        cache_logger_on_first_use=False,
    )
    # Records from libraries (uvicorn, pika, alembic) go through the same redaction and renderer.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_discarded_connection_in_words)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # alembic is chatty at INFO about every migration step. pika logs each failed connection
    # attempt at ERROR with a traceback; our broker module reports the same event once, in
    # words (broker.reconnect_wait, worker.connection_lost), so pika's lines are only noise.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    # httpx logs every request at INFO (a polled back-end: several lines a minute, forever) and
    # the sandbox's SMTP server five lines per connection; the adapters log what matters.
    # At DEBUG they speak again, for whoever is chasing a back-end's behaviour.
    chatty_level = logging.WARNING if numeric_level > logging.DEBUG else logging.NOTSET
    for chatty in ("httpx", "httpcore", "mail.log"):
        logging.getLogger(chatty).setLevel(chatty_level)


#: What SQLAlchemy's pool logs at ERROR, with a traceback, when a pooled connection it returns,
#: closes or ends proves dead: the database was restarted or dropped its connections.
_POOL_CLEAN_UP_FAILED = ("Exception during reset or similar", "Exception closing connection",
                         "Exception terminating connection")  # fmt: skip


def _discarded_connection_in_words(record: logging.LogRecord) -> bool:
    """Turn the pool's traceback for a connection found dead while being put away into one
    warning: it reads as a crash in the journal, yet the pool drops that connection and the
    next operation connects anew; an operation that failed on it reports that itself."""
    if (
        record.name.startswith("sqlalchemy.pool")
        and record.levelno >= logging.ERROR
        and isinstance(record.msg, str)
        and record.msg.startswith(_POOL_CLEAN_UP_FAILED)
        and record.exc_info
    ):
        error = record.exc_info[1]
        said = str(error).splitlines()[0] if str(error) else ""
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "a pooled database connection was found closed and dropped (%s): %s"
        record.args = (
            f"{type(error).__name__}: {said}",
            "the database closed it (a restart?); the next operation connects anew",
        )
        record.exc_info = record.exc_text = None
    return True


@contextmanager
def request_context(
    request_id: str | None, correlation_id: str | None, message_id: str | None = None
) -> Iterator[None]:
    """Every log line written inside the block (on this thread or task) carries these ids,
    the lines of adapters and libraries included; a worker's also the id of the message it
    handles, as `civicbus status` and the dead letters name it."""
    ids = {"request_id": request_id, "correlation_id": correlation_id, "message_id": message_id}
    token = _REQUEST_IDS.set({key: value for key, value in ids.items() if value})
    try:
        yield
    finally:
        _REQUEST_IDS.reset(token)
