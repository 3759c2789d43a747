"""The webhook adapter as a routed back-end, against a real HTTP receiver on a loopback port."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from backends_support import a_request, free_port, loopback_server, misbehaving_backend, reply

from adapters import TransientError
from adapters.webhook import WebhookAdapter
from schemas.model import EVENT_HISTORY, Status, StatusNote
from tests.asyncapi_support import assert_documented

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Any]]]:
    """A URL that accepts every POST (202), and the JSON bodies it received."""
    bodies: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with loopback_server(Handler) as url:
        yield f"{url}/hook", bodies


def test_submit_sends_the_request_without_the_reporters_personal_data(
    receiver: tuple[str, list[Any]],
) -> None:
    url, bodies = receiver
    adapter = WebhookAdapter("contractor", {"url": url, "secret": "s"})
    request = a_request()
    adapter.submit(request)
    adapter.close()

    [event] = bodies
    # As in every other event (bus.worker._commands._public): the reporter is blanked.
    assert event["data"]["id"] == request.id
    assert set(event["data"]["reporter"].values()) == {None}
    for personal in ("resident@example.org", "Marge", "555-0100"):
        assert personal not in json.dumps(event)


def test_submit_sends_the_reporter_fields_the_settings_list(
    receiver: tuple[str, list[Any]],
) -> None:
    url, bodies = receiver
    adapter = WebhookAdapter("contractor", {"url": url, "personal_data": ["email"]})
    adapter.submit(a_request())
    adapter.close()

    [event] = bodies
    assert event["data"]["reporter"]["email"] == "resident@example.org"
    assert event["data"]["reporter"]["first_name"] is None
    assert event["data"]["reporter"]["phone"] is None


def test_submit_sends_a_created_event_as_the_asyncapi_document_describes_it(
    receiver: tuple[str, list[Any]],
) -> None:
    # A request annotated while its back-end was down: like every event, the one a routed
    # webhook sends carries its latest EVENT_HISTORY status updates, not all it keeps.
    url, bodies = receiver
    adapter = WebhookAdapter("contractor", {"url": url, "personal_data": ["email"]})
    request = a_request()
    notes = tuple(
        StatusNote(
            status=Status.OPEN,
            at=request.updated_at,
            source="desk",
            update_id=f"u{n}",
            note=f"note {n}",
        )
        for n in range(EVENT_HISTORY + 5)
    )
    adapter.submit(request.model_copy(update={"history": notes}))
    adapter.close()

    [event] = bodies
    assert_documented(event)
    carried = [note["update_id"] for note in event["data"]["history"]]
    assert carried == [f"u{n}" for n in range(5, EVENT_HISTORY + 5)]
    assert event["data"]["reporter"]["email"] == "resident@example.org"


def test_an_empty_secret_is_refused_rather_than_sending_unsigned(
    receiver: tuple[str, list[Any]],
) -> None:
    # What a configured `secrets: {secret: HOOK_SECRET}` gives with HOOK_SECRET set but empty.
    url, bodies = receiver
    with pytest.raises(ValueError, match=r"contractor: the setting `secret` is empty"):
        WebhookAdapter("contractor", {"url": url, "secret": ""}).submit(a_request())

    assert bodies == []


@pytest.mark.parametrize("listed", [["mail"], True])
def test_personal_data_must_list_reporter_fields(listed: Any) -> None:
    with pytest.raises(ValueError, match=r"personal_data.*email, first_name"):
        WebhookAdapter("contractor", {"url": "http://127.0.0.1:1/", "personal_data": listed})


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "127.0.0.1/hook"])
def test_a_url_httpx_cannot_use_is_refused_when_the_adapter_is_built(url: str) -> None:
    # At start-up, not as a dead letter for every event.
    with pytest.raises(ValueError, match="the setting `url` must be an http:// or https:// URL"):
        WebhookAdapter("contractor", {"url": url})


def test_a_refused_connection_is_transient_and_names_the_address_and_the_setting() -> None:
    port = free_port()
    adapter = WebhookAdapter("contractor", {"url": f"http://127.0.0.1:{port}/hook"})
    with pytest.raises(TransientError) as caught:
        adapter.submit(a_request())
    adapter.close()

    # It said "ConnectError: [Errno 111] Connection refused", as for an untrusted certificate
    # "ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] ...": adapters/_http.py words both.
    assert str(caught.value).endswith(
        f": cannot connect to 127.0.0.1:{port} (connection refused): is the receiver running "
        "there, on that port? check settings.url of instance contractor"
    )


def test_a_busy_receiver_s_retry_after_as_an_http_date_is_honoured() -> None:
    # RFC 9110 allows either form; the date form was read as "no pause asked".
    in_two_minutes = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    answer = [("Retry-After", in_two_minutes)]
    with misbehaving_backend(lambda h: reply(h, 503, "busy", "text/plain", answer)) as url:
        adapter = WebhookAdapter("contractor", {"url": f"{url}/hook"})
        with pytest.raises(TransientError, match="HTTP 503") as caught:
            adapter.submit(a_request())
        adapter.close()

    assert caught.value.retry_after is not None and 100 < caught.value.retry_after <= 120


def test_a_receiver_s_huge_answer_is_not_read_to_its_end() -> None:
    huge = '{"reference": "' + "x" * (4 * 1024 * 1024) + '"}'
    with misbehaving_backend(lambda h: reply(h, 200, huge)) as url:
        adapter = WebhookAdapter("contractor", {"url": f"{url}/hook", "max_answer_mb": 1})
        with pytest.raises(TransientError, match=r"is larger than 1 MB \(settings.max_answer_mb\)"):
            adapter.submit(a_request())
        adapter.close()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data)


def _zlib(data: bytes) -> bytes:
    return zlib.compress(data)


def _raw_deflate(data: bytes) -> bytes:
    # What some servers send as "deflate": no zlib header (httpx reads it too).
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


ENCODINGS = pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", _gzip), ("deflate", _zlib), ("deflate", _raw_deflate)],
    ids=["gzip", "deflate", "raw deflate"],
)


@ENCODINGS
def test_a_receiver_s_huge_answer_is_not_read_to_its_end_when_compressed(
    encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    # 64 MB of JSON come as a few kilobytes of gzip: it is the answer's size that is bounded.
    huge = encode(b'{"reference": "' + b"x" * (64 * 1024 * 1024) + b'"}')
    answer = [("Content-Encoding", encoding)]
    with misbehaving_backend(lambda h: reply(h, 200, huge, headers=answer)) as url:
        adapter = WebhookAdapter("contractor", {"url": f"{url}/hook", "max_answer_mb": 1})
        with pytest.raises(TransientError, match=r"is larger than 1 MB \(settings.max_answer_mb\)"):
            adapter.submit(a_request())
        adapter.close()


@ENCODINGS
def test_a_receiver_s_compressed_answer_is_read(
    encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    answer = [("Content-Encoding", encoding)]
    body = encode(b'{"reference": "R-9"}')
    with misbehaving_backend(lambda h: reply(h, 202, body, headers=answer)) as url:
        adapter = WebhookAdapter("contractor", {"url": f"{url}/hook"})
        receipt = adapter.submit(a_request())
        adapter.close()

    assert receipt.reference == "R-9"
