"""What the HTTP adapters share: a failed call worded for an operator, and bounds on one answer.

A refused connection, an unknown host, https spoken to a plain-http port, or an address that
serves nothing (404, 405) is a fault of a setting or of the back-end, never of a request's data.
`Where` names the system an address reaches and the settings that give it; `describe` turns a
transport error (httpx's or requests') into a sentence saying what happened and what to check,
for `map_exceptions(..., describe=where.describe)`; `not_served` words an answer that says
nothing is there. `require_http_url` refuses, at construction, a URL no HTTP client can use.

A per-read timeout does not bound a call: a back-end that sends a byte every few seconds, or an
answer that never ends, would hold a worker (and its memory) for as long as it went on.
`Bounds` caps the time and the size of one answer's body, read by `read_bounded`;
`BoundedTransport` applies it to every call of an httpx client, and `retry_after` reads the
pause a back-end asks for.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import urllib.request
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import requests

#: Answers that say the URL serves nothing (or not this method): for an API's fixed endpoints
#: (a collection, a token endpoint, a SOAP address) that is a wrong base URL, not bad data.
NOT_SERVED = frozenset({404, 405})

_NO_SCHEME = (httpx.UnsupportedProtocol, requests.exceptions.MissingSchema,
              requests.exceptions.InvalidSchema)  # fmt: skip
_CONNECT_TIMEOUT = (httpx.ConnectTimeout, requests.exceptions.ConnectTimeout)


#: Defaults of `Bounds`: a whole answer may take this many per-read timeouts, and this many bytes
#: (a page of changes or a lookup is a few kilobytes; tens of megabytes is a back-end gone wrong).
ANSWER_TIMEOUTS = 3
MAX_ANSWER_MB = 32


class AnswerTooSlow(Exception):
    """The answer's body was still arriving when the call's whole time was up."""


class AnswerTooLarge(Exception):
    """The answer's body was larger than an adapter reads."""


@dataclass(frozen=True)
class Bounds:
    """How long one call's answer may take as a whole (not per read), and how large it may be."""

    seconds: float
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], timeout: float, *, context: str) -> Bounds:
        """`answer_timeout` (seconds, default ANSWER_TIMEOUTS per-read timeouts) and
        `max_answer_mb` (default MAX_ANSWER_MB) of an instance's settings; ValueError if not
        positive numbers."""
        try:
            seconds = float(settings.get("answer_timeout", ANSWER_TIMEOUTS * timeout))
            megabytes = float(settings.get("max_answer_mb", MAX_ANSWER_MB))
        except (TypeError, ValueError):
            seconds = megabytes = 0
        if not (seconds > 0 and megabytes > 0):
            raise ValueError(
                f"{context}: the settings `answer_timeout` (seconds) and `max_answer_mb` must be "
                "positive numbers"
            )
        return cls(seconds, int(megabytes * 1024 * 1024))


def read_bounded(chunks: Iterable[bytes], bounds: Bounds, started: float, url: object) -> bytes:
    """The body of an answer read from `chunks` in the call's time (`started` by
    time.monotonic()) and size `bounds`; AnswerTooSlow or AnswerTooLarge when it goes past them."""
    address = str(url).split("?", 1)[0]
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > bounds.max_bytes:
            raise AnswerTooLarge(
                f"the answer of {address} is larger than {bounds.max_bytes // (1024 * 1024)} MB "
                "(settings.max_answer_mb), and was not read to its end"
            )
        if time.monotonic() - started > bounds.seconds:
            raise AnswerTooSlow(
                f"the answer of {address} was still arriving after {bounds.seconds:g} s "
                "(settings.answer_timeout): the back-end is overloaded, or sends an endless answer"
            )
    return bytes(body)


class BoundedTransport(httpx.BaseTransport):
    """An httpx transport that reads each answer's body within `bounds` (httpx's own timeouts
    are per read, and its client reads a body whatever its size). Redirects are not followed
    here: httpx clients leave them to the caller unless told otherwise.

    A call goes through the proxy the environment names (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY;
    not to the hosts NO_PROXY lists), as with httpx's own transport: a client given another
    transport no longer looks, and a city whose back-ends are reached only through its egress
    proxy found them unreachable."""

    def __init__(self, bounds: Bounds, **transport: Any) -> None:
        self._bounds = bounds
        self._inner = httpx.HTTPTransport(**transport)
        proxies = urllib.request.getproxies() if transport.get("trust_env", True) else {}
        self._proxied = {
            scheme: httpx.HTTPTransport(proxy=_proxy_url(proxy), **transport)
            for scheme in ("http", "https")
            if (proxy := proxies.get(scheme) or proxies.get("all"))
        }

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        response = self._transport_for(request.url).handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)  # a sync transport's
        headers = response.headers
        wbits = _ZLIB_WBITS.get(headers.get("Content-Encoding", "").strip().lower())
        chunks: Iterable[bytes] = response.stream
        if wbits is not None:
            # Decoded here, not by the client: the bound is the answer's, and a few kilobytes
            # of gzip may be gigabytes of JSON.
            chunks = _decoded(chunks, wbits, request)
            headers = headers.copy()
            del headers["Content-Encoding"]
        try:
            body = read_bounded(chunks, self._bounds, started, request.url)
        finally:
            response.close()
        if wbits is not None and "Content-Length" in headers:
            headers["Content-Length"] = str(len(body))
        # In another encoding (none that httpx asks for), the client decodes it.
        return httpx.Response(
            response.status_code,
            headers=headers,
            stream=httpx.ByteStream(body),
            extensions=response.extensions,
            request=request,
        )

    def close(self) -> None:
        for transport in (self._inner, *self._proxied.values()):
            transport.close()

    def _transport_for(self, url: httpx.URL) -> httpx.HTTPTransport:
        proxied = self._proxied.get(url.scheme)
        address = url.netloc.decode("ascii")  # with its port: NO_PROXY may name one
        if proxied is None or urllib.request.proxy_bypass(address):  # by NO_PROXY
            return self._inner
        return proxied


#: The zlib formats of the content encodings httpx asks for (Accept-Encoding: gzip, deflate).
_GZIP = zlib.MAX_WBITS | 16
_ZLIB_WBITS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": zlib.MAX_WBITS}
#: The most one step of decoding makes of a chunk (compressed, a chunk may be a thousand times as
#: much), so that an answer past its bound is noticed within this much more.
_DECODED_PIECE = 256 * 1024


def _decoded(chunks: Iterable[bytes], wbits: int, request: httpx.Request) -> Iterator[bytes]:
    """The body in `chunks` decoded from zlib's format `wbits`, a piece at a time; a "deflate"
    without zlib's header read as raw deflate, as httpx reads it. httpx.DecodingError, as the
    client would raise, for a body that is not in the format."""
    decoder = zlib.decompressobj(wbits)
    started = False
    try:
        for chunk in chunks:
            data = chunk
            while data:
                try:
                    piece = decoder.decompress(data, _DECODED_PIECE)
                except zlib.error:
                    if started or wbits != zlib.MAX_WBITS:
                        raise
                    decoder, wbits = zlib.decompressobj(-zlib.MAX_WBITS), -zlib.MAX_WBITS
                    continue
                started = True
                yield piece
                data = decoder.unconsumed_tail
        yield decoder.flush()
    except zlib.error as exc:
        raise httpx.DecodingError(
            f"the answer is not in the encoding it names: {exc}", request=request
        ) from exc


def _proxy_url(proxy: str) -> str:
    # `proxy.example.gov:3128` is taken for an http:// proxy, as httpx and requests take it.
    return proxy if "://" in proxy else f"http://{proxy}"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent/bad."""
    value = headers.get("Retry-After")  # both clients' headers ignore the name's case
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def redirect_said(status: int, location: str | None) -> str:
    """A redirect an adapter does not follow, in words: `HTTP 302 redirect to <where>`, the
    Location without its query or fragment (they may carry a token or a session)."""
    where = re.split(r"[?#]", location or "", maxsplit=1)[0]
    return f"HTTP {status} redirect to {where or 'no Location'}"


def require_http_url(value: Any, *, context: str, setting: str) -> str:
    """`value` if it is an http:// or https:// URL with a host; ValueError saying so if not."""
    url = str(value).strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{context}: the setting `{setting}` must be an http:// or https:// URL with a "
            f"host (e.g. https://host.example.gov/api), not {url!r}"
        )
    return url


def check_settings(instance: str, *settings: str) -> str:
    """`check settings.base_url of instance parks`: the advice closing each sentence here."""
    names = " and ".join(f"settings.{name}" for name in settings)
    return f"check {names} of instance {instance}"


@dataclass(frozen=True)
class Where:
    """The system an address reaches (`the parks system`) and what to check when it fails."""

    system: str
    advice: str
    #: The advice for a URL that serves nothing, when it differs (another setting may say
    #: where that endpoint is, as parks' `token_url`).
    not_served_advice: str = ""

    def describe(self, exc: BaseException) -> str | None:
        """A sentence for a transport error, or None when it is none of the kinds known here
        (the caller then says its type and text)."""
        chain = list(_chain(exc))
        host, port = _address(exc)
        at = f" {host}:{port}" if port else f" {host}" if host else ""
        if isinstance(exc, AnswerTooSlow | AnswerTooLarge):
            return str(exc)
        if isinstance(exc, _NO_SCHEME):
            return f"the URL has no http:// or https:// scheme: {self.advice}"
        if isinstance(exc, _CONNECT_TIMEOUT):
            return (
                f"no answer from{at} within the timeout while connecting: is the host and "
                f"port right, or does a firewall drop the connection? {self.advice}"
            )
        for cause in chain:
            if isinstance(cause, ConnectionRefusedError):
                return (
                    f"cannot connect to{at} (connection refused): is {self.system} running "
                    f"there, on that port? {self.advice}"
                )
            if isinstance(cause, socket.gaierror):
                name = f" {host}" if host else ""
                return (
                    f"cannot find the host{name} ({cause.strerror or cause}): is the host "
                    f"name right, and known to this machine's DNS? {self.advice}"
                )
            if isinstance(cause, ssl.SSLCertVerificationError):
                return (
                    f"the TLS certificate of{at} is not trusted "
                    f"({cause.verify_message or cause.reason}): {self.advice}"
                )
            if isinstance(cause, ssl.SSLError):
                if cause.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"):
                    return (
                        f"https to{at}, which answers plain http (TLS: "
                        f"{cause.reason.lower().replace('_', ' ')}): use http://, or the "
                        f"port that serves https; {self.advice}"
                    )
                return f"the TLS handshake with{at} failed ({cause.reason}): {self.advice}"
        return None

    def not_served(
        self, status: int, reason: str, url: object, endpoint: str, *, query: bool = False
    ) -> str:
        """`HTTP 404 Not Found (no token endpoint at <url>: check ...)`; the URL's query left
        out unless it is part of the address (`?wsdl`), not of the one call."""
        address = str(url) if query else str(url).split("?", 1)[0]
        answer = f"HTTP {status} {reason}".strip()
        return f"{answer} (no {endpoint} at {address}: {self.not_served_advice or self.advice})"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it (or what it was raised while handling), a few levels deep;
    urllib3 keeps the socket's error in `reason` besides."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 12:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        todo += [current.__cause__, current.__context__]
        if isinstance(reason, BaseException):
            todo.append(reason)
        todo += [a for a in current.args if isinstance(a, BaseException)]


def _address(exc: BaseException) -> tuple[str, int | None]:
    """Host and port of the request that failed, when the error knows it (httpx, requests)."""
    for cause in _chain(exc):
        url = None
        if isinstance(cause, httpx.RequestError):
            try:
                url = str(cause.request.url)
            except RuntimeError:  # an error raised without its request
                url = None
        elif isinstance(cause, requests.RequestException) and cause.request is not None:
            given = cause.request.url
            url = given.decode() if isinstance(given, bytes) else given
        if url:
            parts = urlsplit(url)
            if parts.hostname:
                port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
                return parts.hostname, port
    return "", None
