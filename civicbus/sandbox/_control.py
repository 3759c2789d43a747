"""The control endpoint every simulator offers under `/_sandbox/`, for tests and demos.

    GET  /_sandbox/                      what this simulator is, its fault mode, item count
    GET  /_sandbox/items                 every work item
    GET  /_sandbox/items/{key}           one item, by back-end id or external reference
    POST /_sandbox/items/{key}/status    {"status": "...", "note": "..."}: move it to a status
    POST /_sandbox/items/{key}/advance   move it to the next status of the simulator's flow
    PUT  /_sandbox/fault                 {"mode": "none|down|slow|reject|throttle", "delay": 2,
                                          "count": 1}  (count: requests affected; null: all)

It is written once, framework-neutral (`handle`), and served by WSGI here or by a FastAPI route.
The control endpoint is never subject to the fault mode, so a "down" simulator can be healed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from civicbus.sandbox._workitems import Change, Faults, Item, UnknownItem, WorkItems

PREFIX = "/_sandbox"


@dataclass
class Control:
    """The control surface of one simulator: its name, fault switch and (if any) work items."""

    name: str
    faults: Faults
    items: WorkItems | None = None
    #: Extra read-only listings, e.g. the mailbox's messages: path segment -> producer.
    listings: dict[str, Callable[[], list[dict[str, Any]]]] | None = None
    #: Extra actions (POST), e.g. revoking the parks tokens: path segment -> handler(body).
    actions: dict[str, Callable[[dict[str, Any]], Any]] | None = None

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """Answer one control request: (HTTP status, JSON-able body)."""
        parts = [p for p in path[len(PREFIX) :].split("/") if p]
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return 400, {"error": "the body must be JSON"}
        try:
            return self._route(method, parts, payload)
        except UnknownItem as exc:
            return 404, {"error": f"no item {exc.args[0]!r}"}
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {"error": str(exc)}

    def _route(self, method: str, parts: list[str], payload: dict[str, Any]) -> tuple[int, Any]:
        if not parts and method == "GET":
            info: dict[str, Any] = {"simulator": self.name, "fault": self.faults.describe()}
            if self.items is not None:
                info["items"] = len(self.items.all())
                info["flow"] = list(self.items.flow)
            return 200, info
        if parts == ["fault"] and method == "PUT":
            self.faults.set(
                str(payload.get("mode", "none")), payload.get("delay"), payload.get("count")
            )
            return 200, self.faults.describe()
        if self.listings and len(parts) == 1 and parts[0] in self.listings and method == "GET":
            return 200, self.listings[parts[0]]()
        if self.actions and len(parts) == 1 and parts[0] in self.actions and method == "POST":
            return 200, self.actions[parts[0]](payload)
        if self.items is not None and parts and parts[0] == "items":
            return self._items(method, parts[1:], payload, self.items)
        return 404, {"error": "unknown control path; see GET /_sandbox/"}

    def _items(
        self, method: str, parts: list[str], payload: dict[str, Any], items: WorkItems
    ) -> tuple[int, Any]:
        if not parts and method == "GET":
            return 200, [_item_json(i) for i in items.all()]
        if len(parts) == 1 and method == "GET":
            return 200, _item_json(items.get(parts[0]))
        if len(parts) == 2 and parts[1] == "status" and method == "POST":
            status = payload["status"]
            if not isinstance(status, str) or not status:
                raise ValueError("status must be a non-empty string")
            return 200, _change_json(items.set_status(parts[0], status, payload.get("note")))
        if len(parts) == 2 and parts[1] == "advance" and method == "POST":
            change = items.advance(parts[0])
            if change is None:
                return 409, {"error": "the item is at the end of the flow"}
            return 200, _change_json(change)
        return 404, {"error": "unknown control path; see GET /_sandbox/"}


def _item_json(item: Item) -> dict[str, Any]:
    data = asdict(item)
    data["created_at"] = item.created_at.isoformat()
    data["updated_at"] = item.updated_at.isoformat()
    return data


def _change_json(change: Change) -> dict[str, Any]:
    data = asdict(change)
    data["at"] = change.at.isoformat()
    return data


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def with_control(control: Control, app: WsgiApp) -> WsgiApp:
    """A WSGI app that answers `/_sandbox/...` itself, applies the fault mode, and passes the rest.

    `down` answers 503 and `slow` waits before passing on; `reject` is left to the simulated
    service, which knows how its protocol says "your data is wrong".
    """

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == PREFIX or path.startswith(PREFIX + "/"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            status, answer = control.handle(environ["REQUEST_METHOD"], path, body)
            return _json_response(start_response, status, answer)
        if control.faults.take("down"):
            return _json_response(start_response, 503, {"error": "simulated outage"})
        control.faults.pause_if_slow()
        return app(environ, start_response)

    return wsgi


def _json_response(start_response: Callable[..., Any], status: int, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        409: "Conflict",
        503: "Service Unavailable",
    }.get(status, "Status")
    start_response(
        f"{status} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]
