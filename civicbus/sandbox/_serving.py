"""Serving a simulator on a real loopback socket in a background thread (WSGI or ASGI)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from civicbus.sandbox._control import WsgiApp


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    # wsgiref prints every request to stderr; the simulators are quiet unless something breaks.
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ServedThread:
    """A server running in a daemon thread; `stop()` shuts it down and frees the port."""

    def __init__(self, url: str, stop: Callable[[], None], control_url: str | None = None) -> None:
        self.url = url
        #: Where the `/_sandbox/` control endpoint is (the same server unless said otherwise).
        self.control_url = control_url or "/".join(url.split("/")[:3])
        self._stop = stop

    def stop(self) -> None:
        self._stop()


def serve_wsgi(app: WsgiApp, host: str, port: int, name: str) -> tuple[str, Any]:
    """Serve a WSGI app on (host, port) in a thread; port 0 picks a free one. (url, stop)."""
    server = make_server(
        host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    # A short poll interval makes shutdown quick (tests start and stop many servers).
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"sandbox-{name}",
        daemon=True,
    )
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"http://{host}:{server.server_port}", stop


def serve_asgi(app: Any, host: str, port: int, name: str) -> tuple[str, Any]:
    """Serve an ASGI app with uvicorn in a thread; port 0 picks a free one. (url, stop)."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"sandbox-{name}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        raise RuntimeError(f"the {name} simulator did not start on {host}:{bound_port}")

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()

    return f"http://{host}:{bound_port}", stop
