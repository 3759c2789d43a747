"""The log lines written while the worker handles a command carry the request id and the
correlation id (its own lines and the adapter's), so an operator can follow one report from
the API's lines through the worker's."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog
from worker_support import FAST, INSTANCE, MemoryBackend, new_request, publish, running, wait_until

from adapters import Receipt
from bus.logging import configure_logging
from bus.store import Store
from bus.worker import command_consumer
from schemas.events import EventType
from schemas.model import ServiceRequest

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]


class LoggingBackend(MemoryBackend):
    """A back-end whose client logs a line of its own, naming no request."""

    def submit(self, request: ServiceRequest) -> Receipt:
        structlog.get_logger("test.backend").info("backend.called")
        return super().submit(request)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    yield stream
    configure_logging("json")


def lines_about(stream: io.StringIO, request_id: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line.get("request_id") == request_id]


def test_retry_dead_letter_and_submitted_lines_carry_the_correlation_and_message_ids(
    store: Store, topology: str, log_stream: io.StringIO
) -> None:
    # 2 quick tries per round: round 1 fails and is scheduled for retry, round 2 delivers.
    backend = LoggingBackend(transient_failures=2)
    retried = new_request(store).model_copy(update={"correlationid": "corr-retried"})
    unknown = retried.model_copy(
        update={"id": "msg-unknown", "subject": "req-nowhere", "correlationid": "corr-unknown"}
    )
    publish(topology, retried)
    publish(topology, unknown)

    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        wait_until(
            lambda: any(row.envelope.type is EventType.SUBMITTED for row in store.pending_outbox()),
            what="the receipt",
        )
        wait_until(lambda: store.dead_letters(INSTANCE), what="the dead letter")

    about_retried = lines_about(log_stream, retried.subject)
    assert {line["event"] for line in about_retried} >= {
        "worker.attempt_failed",
        "worker.retry_scheduled",
        "request.submitted",
        "backend.called",
    }
    assert {line["correlation_id"] for line in about_retried} == {"corr-retried"}
    # The message id too, as `civicbus status` names a worker's message in hand.
    assert {line.get("message_id") for line in about_retried} == {retried.id}
    # Seen in a log kept at warning level, with why.
    [retry] = [line for line in about_retried if line["event"] == "worker.retry_scheduled"]
    assert retry["level"] == "warning"
    assert str(retry["error"]).startswith("TransientError: ")
    [dead] = [line for line in lines_about(log_stream, "req-nowhere")]
    assert (dead["event"], dead["correlation_id"]) == ("worker.dead_lettered", "corr-unknown")
