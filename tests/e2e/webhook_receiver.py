"""A back-office system's webhook endpoint: a real HTTP server that keeps what it was sent.

It checks nothing itself (it answers 200 to every POST) so that the tests can assert on the
signature, the timestamp and the bodies, and show them when something is wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    """One POST the subscriber received."""

    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def signature_problem(self, secret: str, *, tolerance: float = 300) -> str | None:
        """Why this delivery is not authentic and fresh (HMAC-SHA256 over "<ts>.<body>")."""
        timestamp = self.headers.get("x-civicbus-timestamp", "")
        signature = self.headers.get("x-civicbus-signature", "")
        if not timestamp.isdigit():
            return f"timestamp header {timestamp!r} is not a Unix time"
        if abs(self.received_at - int(timestamp)) > tolerance:
            return f"timestamp {timestamp} is more than {tolerance:g}s from the receipt time"
        expected = (
            "sha256="
            + hmac.new(
                secret.encode(), timestamp.encode() + b"." + self.body, hashlib.sha256
            ).hexdigest()
        )
        if not hmac.compare_digest(expected, signature):
            return f"signature {signature!r} does not match the body"
        return None


class WebhookReceiver:
    """An HTTP server on a free loopback port, in a background thread."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                delivery = Delivery(
                    {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                with receiver._lock:
                    receiver.deliveries.append(delivery)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/civicbus-events"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    def received(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def for_request(self, request_id: str) -> list[Delivery]:
        """Deliveries whose event is about this request, in arrival order, each event once."""
        seen: set[str] = set()
        found = []
        for delivery in self.received():
            event = delivery.event
            if event.get("subject") == request_id and event.get("id") not in seen:
                seen.add(event["id"])
                found.append(delivery)
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
