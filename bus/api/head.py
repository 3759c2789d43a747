"""HEAD and 405: what HTTP asks of every resource beyond the Open311 methods.

FastAPI routes answer only the methods they name, so HEAD on a read was 405 (RFC 9110 9.3.2:
a server that serves GET should serve HEAD), and a 405 named only the method of the first route
matching the path in its `Allow` header (RFC 9110 15.5.6: every method the resource supports).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: a HEAD request is served as its GET, without the body (headers, the
    Content-Length of the body included, as GET answers them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # A copy: the server still knows the request as HEAD, and sends no body either.
        await self.app({**scope, "method": "GET"}, receive, headers_only)


#: The methods a 405 may name (HEAD comes with GET, see HeadAsGet).
_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> str:
    """The methods some route serves at the request's path, for a 405's Allow header.

    Each method is tried against every route's `matches` (a full match: path and method) on a
    copy of the request's scope: routers included in others match through it too, whatever
    FastAPI builds them from."""
    routes = list(routes)
    methods = {
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
    }
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))
