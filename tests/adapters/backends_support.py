"""Helpers for the tests of the permits, parks, email and SAP adapters against their simulators."""

from __future__ import annotations

import threading
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

# Before the kit is first imported (here, through conftest.py), so that its checks fail with
# pytest's assertion messages.
pytest.register_assert_rewrite("civicbus.testing")

from adapters import Adapter, Receipt  # noqa: E402
from adapters.mapping import Mapping, parse_mapping  # noqa: E402
from civicbus.sandbox.runner import SIMULATORS, Running, ServeOptions  # noqa: E402
from civicbus.testing import ConformanceTarget  # noqa: E402
from schemas.model import Location, Reporter, ServiceRequest, Status  # noqa: E402
from tests.ports import free_port as free_port  # noqa: E402  (the adapter tests take it from here)

REPO = Path(__file__).resolve().parents[2]
MAPPINGS = REPO / "mappings"


def a_request(service_code: str = "SKIP_PERMIT", **changes: Any) -> ServiceRequest:
    """A canonical request with a fresh id, a location, and a reporter (personal data)."""
    now = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    fields: dict[str, Any] = {
        "id": f"req-{uuid.uuid4().hex[:12]}",
        "jurisdiction": "springfield.example",
        "service_code": service_code,
        "service_name": service_code.replace("_", " ").title(),
        "description": "Scaffold blocks the pavement outside number 12.",
        "location": Location(lat=51.50101, long=-0.12412, address="12 Evergreen Terrace"),
        "reporter": Reporter(email="resident@example.org", first_name="Marge", phone="555-0100"),
        "requested_at": now,
        "updated_at": now,
    }
    fields.update(changes)
    return ServiceRequest(**fields)


def mapping_without_status(name: str, code: str) -> Mapping:
    """The mapping file `name` of `mappings/` with back-end status `code` left out of its table."""
    path = MAPPINGS / name
    lines = [ln for ln in path.read_text().splitlines() if not ln.strip().startswith(f"{code}:")]
    return parse_mapping("\n".join(lines), source=str(path), base_dir=MAPPINGS)


@contextmanager
def simulator(name: str, state_dir: Path, **extra: str) -> Iterator[Running]:
    """Run one sandbox simulator on a free loopback port for the duration of the block."""
    running = SIMULATORS[name].serve(ServeOptions(state_dir=state_dir, port=0, extra=extra))
    try:
        yield running
    finally:
        running.stop()


def control(running: Running, method: str, path: str, **json: Any) -> Any:
    """Call the simulator's control endpoint (`/_sandbox/...`) and return its JSON answer."""
    response = httpx.request(
        method, f"{running.control_url}/_sandbox{path}", json=json or None, timeout=5
    )
    response.raise_for_status()
    return response.json()


#: What a misbehaving back-end does with one call: given the handler (its `command`, `path`,
#: `headers` and `body` read), it answers through `reply` or writes what it likes to `wfile`.
Behaviour = Callable[["_Misbehaving"], None]


class _Misbehaving(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b""

    def _any(self) -> None:
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.behave(self)  # type: ignore[attr-defined]

    do_GET = do_POST = do_PUT = do_HEAD = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


def reply(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: str | bytes = b"",
    content_type: str = "application/json",
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    """Answer one call of a `misbehaving_backend` whole, with a Content-Length."""
    data = body.encode() if isinstance(body, str) else body
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in headers:
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def drip(
    handler: BaseHTTPRequestHandler,
    body: bytes,
    content_type: str,
    *,
    dripped: int | None = None,
    every: float = 0.2,
) -> None:
    """Answer 200 with `body` and its Content-Length, its last `dripped` bytes (all, by
    default) one at a time `every` seconds: each read well within a read timeout, the whole
    answer not."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    slow = len(body) if dripped is None else dripped
    handler.wfile.write(body[: len(body) - slow])
    for byte in body[len(body) - slow :]:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(every)


@contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler], **state: Any) -> Iterator[str]:
    """A real HTTP server on a free loopback port answering by `handler`, with `state` set on
    the server for the handler to read (`self.server.NAME`); yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for name, value in state.items():
        setattr(server, name, value)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def misbehaving_backend(behave: Behaviour) -> AbstractContextManager[str]:
    """A loopback server that answers every call by `behave` (slowly, endlessly, wrongly: what
    a city's legacy back-end may do); yields its base URL."""
    return loopback_server(_Misbehaving, behave=behave)


class WorkItemsTarget(ConformanceTarget):
    """A conformance target on a simulator built on the sandbox's shared work items (parks,
    permits): records are counted and statuses moved through its `/_sandbox/items` control."""

    def __init__(self, running: Running, mapping: Mapping) -> None:
        self.running = running
        self.mapping = mapping

    @abstractmethod
    def adapter_to_a_closed_port(self) -> Adapter:
        """A fresh adapter aimed at a loopback port where nothing listens."""

    @contextmanager
    def unreachable_adapter(self) -> Iterator[Adapter]:
        adapter = self.adapter_to_a_closed_port()
        try:
            yield adapter
        finally:
            adapter.close()

    def records(self, request_id: str) -> int:
        return sum(
            1
            for i in control(self.running, "GET", "/items")
            if i["external_reference"] == request_id
        )

    def change_status(self, receipt: Receipt) -> Status:
        change = control(self.running, "POST", f"/items/{receipt.reference}/advance")
        return self.mapping.status(change["status"])


def long_note_is_cut_and_later_changes_arrive(
    adapter: Any, running: Running, first: ServiceRequest, second: ServiceRequest, closing: str
) -> None:
    """A clerk closes `first` (status code `closing`, a fix) with a note longer than an update
    holds, then `second` advances: both changes arrive, the note cut to fit, and the cursor
    moves past them. Refusing the note had failed every poll at that change."""
    long_note = "Resident Marge Simpson wrote: " + "it is still not done. " * 200
    adapter.submit(first)
    adapter.submit(second)
    start = adapter.updates(None).watermark

    control(running, "POST", f"/items/{first.id}/status", status=closing, note=long_note)
    control(running, "POST", f"/items/{second.id}/advance")
    page = adapter.updates(start)

    assert [(u.request_id, u.status) for u in page.updates] == [
        (first.id, Status.FIXED),
        (second.id, Status.INVESTIGATING),
    ]
    note = page.updates[0].note
    assert note is not None and len(note) == 4000
    assert note.endswith("…") and note[:-1] == long_note[:3999]
    assert adapter.updates(page.watermark).updates == ()


def unmapped_status_is_skipped_and_later_changes_arrive(
    adapter: Any,
    running: Running,
    first: ServiceRequest,
    second: ServiceRequest,
    code: str,
    mapping_file: str,
) -> None:
    """A clerk moves `first` to status `code`, which the adapter's mapping (`mapping_file`
    without it) lacks, then `second` advances: the first change is skipped, named for the
    poller to log and audit with the fix, and the second arrives. Raising had failed every poll
    at that change: the cursor would never have moved again."""
    adapter.submit(first)
    adapter.submit(second)
    start = adapter.updates(None).watermark

    control(running, "POST", f"/items/{first.id}/status", status=code)
    control(running, "POST", f"/items/{second.id}/advance")
    page = adapter.updates(start)

    assert [(u.request_id, u.status) for u in page.updates] == [(second.id, Status.INVESTIGATING)]
    assert adapter.updates(page.watermark).updates == ()
    [skipped] = page.skipped
    assert skipped.request_id == first.id and skipped.change.startswith("change ")
    assert skipped.problem.startswith(f"status code {code!r} is not in the mapping ")
    assert skipped.problem.endswith(mapping_file)
    assert skipped.fix == f"add `{code}: <canonical status>` under `statuses`"
