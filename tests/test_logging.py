"""Log lines are structured and never carry a resident's personal data."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import sqlalchemy as sa
import structlog

from bus.logging import configure_logging, request_context
from bus.poller import Poller
from bus.store import Store

Lines = Callable[[], list[dict[str, object]]]


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]


def _text(line: dict[str, object]) -> str:
    """A log line's text without its time stamp, whose digits may spell a phone number's
    (a CI run failed on `...T19:30:53.794691Z` holding 7946)."""
    return json.dumps({key: value for key, value in line.items() if key != "timestamp"})


def test_personal_data_is_redacted_from_every_field(json_lines: Lines) -> None:
    structlog.get_logger("civicbus.test").info(
        "request.accepted",
        request_id="r-1",
        email="ada@example.org",
        reporter={"first_name": "Ada", "phone": "+44 20 7946 0958"},
        note="call me on +44 20 7946 0958 or mail ada@example.org",
    )
    [line] = json_lines()
    text = _text(line)
    assert "ada@example.org" not in text and "7946" not in text and "Ada" not in text
    assert line["request_id"] == "r-1" and line["event"] == "request.accepted"
    assert line["level"] == "info" and "timestamp" in line


def test_bound_request_and_correlation_ids_are_on_every_line(json_lines: Lines) -> None:
    with request_context("r-2", "corr-2"):
        structlog.get_logger("civicbus.test").info("worker.step")
        logging.getLogger("some.library").warning("library says %s", "hello")
    structlog.get_logger("civicbus.test").info("after.the.block")
    *lines, after = json_lines()
    assert "request_id" not in after and "correlation_id" not in after
    assert [(line["request_id"], line["correlation_id"]) for line in lines] == [
        ("r-2", "corr-2"),
        ("r-2", "corr-2"),
    ]


def test_nested_request_contexts_restore_the_outer_ids(json_lines: Lines) -> None:
    log = structlog.get_logger("civicbus.test")
    with request_context("outer", "corr-outer"):
        with request_context("inner", None):
            log.info("inner.line")
        log.info("outer.line")
        log.info("own.ids", request_id="explicit")
    inner, outer, own = json_lines()
    assert (inner["request_id"], "correlation_id" in inner) == ("inner", False)
    assert (outer["request_id"], outer["correlation_id"]) == ("outer", "corr-outer")
    assert (own["request_id"], own["correlation_id"]) == ("explicit", "corr-outer")


def test_ids_bound_by_a_thread_stay_on_that_thread(json_lines: Lines) -> None:
    seen = threading.Event()

    def other() -> None:
        structlog.get_logger("civicbus.test").info("other.thread")
        seen.set()

    with request_context("r-3", "corr-3"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen.is_set()
    [line] = json_lines()
    assert "request_id" not in line and "correlation_id" not in line


def test_tracebacks_are_redacted_too(json_lines: Lines) -> None:
    try:
        raise ValueError("refused: mail ada@example.org or call +44 20 7946 0958")
    except ValueError:
        structlog.get_logger("civicbus.test").exception("worker.failed")
        logging.getLogger("some.library").exception("library failed")
    lines = json_lines()
    assert [line["event"] for line in lines] == ["worker.failed", "library failed"]
    for line in lines:
        assert "ValueError: refused" in str(line["exception"])
        assert "Traceback" in str(line["exception"])
        text = _text(line)
        assert "ada@example.org" not in text and "7946" not in text


def test_library_records_are_redacted_too(json_lines: Lines) -> None:
    logging.getLogger("some.library").warning("sending to %s", "ada@example.org")
    [line] = json_lines()
    assert "ada@example.org" not in json.dumps(line)
    assert line["logger"] == "some.library"


class _Ok(BaseHTTPRequestHandler):
    """A loopback server that answers every GET with an empty 200, silently."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_http_client_request_lines_show_only_at_debug() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/x"
    try:
        request_line = f'HTTP Request: GET {url} "HTTP/1.0 200 OK"'
        for level, expected in (("INFO", []), ("DEBUG", [request_line])):
            stream = io.StringIO()
            configure_logging("json", level=level, stream=stream)
            assert httpx.get(url).status_code == 200  # a real request, logged by httpx itself
            logging.getLogger("httpx").warning("connection pool full")
            lines = [json.loads(line) for line in stream.getvalue().splitlines()]
            events = [line["event"] for line in lines if line.get("logger") == "httpx"]
            assert events == [*expected, "connection pool full"], level
    finally:
        server.shutdown()
        server.server_close()
        configure_logging("json", level="INFO")


def test_ids_that_look_like_phone_numbers_are_logged_as_they_are(
    json_lines: Lines, sqlite_url: str
) -> None:
    holder = "vm:12374:73662891"  # its token's 8 hex digits happen to be all decimal
    stopped = threading.Event()
    stopped.set()
    store = Store.open(sqlite_url)
    try:
        Poller(store, {}, {}, stop=stopped, holder=holder).run()
    finally:
        store.close()
    structlog.get_logger("civicbus.test").info(
        "ids.logged",
        lease="poller:7946095812",
        work_order="4420791234",
        routing_key="request.submitted.7946095812",
        note="call me on +44 20 7946 0958",
    )

    lines = {str(line["event"]): line for line in json_lines()}
    assert lines["poller.started"]["holder"] == lines["poller.stopped"]["holder"] == holder
    ids = lines["ids.logged"]
    assert ids["lease"] == "poller:7946095812" and ids["work_order"] == "4420791234"
    assert ids["routing_key"] == "request.submitted.7946095812"
    assert "7946" not in str(ids["note"])  # free text is masked as before


def test_values_json_cannot_hold_are_written_as_their_repr(json_lines: Lines) -> None:
    at = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)
    structlog.get_logger("t").info("odd.values", at=at, ids={"a", "b"} - {"b"}, ratio=0.5)

    (line,) = json_lines()

    assert line["event"] == "odd.values"
    assert line["at"] == repr(at)
    assert line["ids"] == ["a"]  # a set is walked by redaction into a list
    assert line["ratio"] == 0.5
    assert line["level"] == "info" and line["timestamp"].endswith("Z")


def test_each_line_is_stamped_with_the_time_in_utc_to_the_microsecond(
    json_lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three lines in two seconds: the second's text is kept, then replaced.
    clock = iter([1_796_601_600_000_000_000, 1_796_601_600_999_999_999, 1_796_601_601_000_001_000])
    monkeypatch.setattr("bus.logging.time.time_ns", lambda: next(clock))
    for _ in range(3):
        structlog.get_logger("t").info("tick")

    stamps = [line["timestamp"] for line in json_lines()]

    assert stamps == [
        "2026-12-07T00:00:00.000000Z",
        "2026-12-07T00:00:00.999999Z",
        "2026-12-07T00:00:01.000001Z",
    ]
    parsed = datetime.fromisoformat(stamps[0])
    assert parsed == datetime(2026, 12, 7, tzinfo=UTC)


def test_a_line_is_stamped_with_the_time_it_was_written(json_lines: Lines) -> None:
    before = datetime.now(UTC)
    structlog.get_logger("t").info("now")
    after = datetime.now(UTC)

    (line,) = json_lines()

    assert before <= datetime.fromisoformat(line["timestamp"]) <= after


def test_a_pooled_connection_the_database_dropped_is_one_warning_not_a_traceback(
    json_lines: Lines, postgres_url: str
) -> None:
    # As after a PostgreSQL restart or pg_terminate_backend: the pool finds the connection it
    # puts away dead, and SQLAlchemy logged that at ERROR with a traceback, read as a crash.
    engine = sa.create_engine(postgres_url)
    killer = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        raw = engine.raw_connection()  # as the store's driver-level statements use it
        cursor = raw.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
        with killer.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        raw.close()  # the pool's reset (a ROLLBACK) meets the closed connection
        with engine.connect() as again:  # and the next use connects anew
            assert again.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
        killer.dispose()
    [line] = [line for line in json_lines() if str(line["logger"]).startswith("sqlalchemy")]
    assert line["level"] == "warning" and "exception" not in line
    assert str(line["event"]).startswith("a pooled database connection was found closed")
    assert "terminating connection due to administrator command" in str(line["event"])
