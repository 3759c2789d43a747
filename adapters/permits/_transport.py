"""zeep's HTTP transport with each call bounded, and answers zeep cannot word told apart.

zeep reads an answer with requests as a whole, with a timeout per read, and follows redirects:
a permit system sending a byte a second held a worker for as long as it went on, one answering
without end filled its memory, and a redirect re-sent a case's data (a resident's address and
e-mail) to wherever it pointed. Here each answer is read within adapters/_http.py's `Bounds`, a
SOAP call is never redirected (`Redirected` says where it was sent instead), and a throttling
answer keeps the pause it asks for (`Throttled`), which zeep's own TransportError drops.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import requests
import urllib3.exceptions
from zeep.transports import Transport

from adapters._http import Bounds, read_bounded, redirect_said, retry_after

_CHUNK = 64 * 1024
_THROTTLING = frozenset({429, 503})


class Redirected(Exception):
    """The SOAP address answered with a redirect, which is not followed."""

    def __init__(self, status: int, location: str | None) -> None:
        super().__init__(redirect_said(status, location))
        self.status = status


class Throttled(Exception):
    """The permit system is busy (429, 503) and said how long to wait."""

    def __init__(self, status: int, seconds: float) -> None:
        super().__init__(f"HTTP {status}, asking to wait {seconds:g} s")
        self.status = status
        self.seconds = seconds


class BoundedTransport(Transport):
    """zeep's Transport, reading every answer (the WSDL's too) within `bounds`."""

    def __init__(self, bounds: Bounds, timeout: float) -> None:
        super().__init__(timeout=timeout, operation_timeout=timeout)  # type: ignore[no-untyped-call]
        self.bounds = bounds

    def post(self, address: str, message: Any, headers: Any) -> requests.Response:
        started = time.monotonic()
        response = self.session.post(
            address,
            data=message,
            headers=headers,
            timeout=self.operation_timeout,
            stream=True,
            allow_redirects=False,
        )
        self._read(response, started)
        if response.is_redirect:
            raise Redirected(response.status_code, response.headers.get("Location"))
        pause = retry_after(response.headers)
        if response.status_code in _THROTTLING and pause is not None:
            raise Throttled(response.status_code, pause)
        return response

    def _load_remote_data(self, url: str) -> bytes:
        """The WSDL or a schema it imports (redirects followed: a GET carries no case data)."""
        started = time.monotonic()
        response = self.session.get(url, timeout=self.load_timeout, stream=True)
        if not response.ok:
            response.close()  # unread, its connection would stay open until collected
            response.raise_for_status()
        return self._read(response, started)

    def _read(self, response: requests.Response, started: float) -> bytes:
        with closing(response):
            body = read_bounded(_arrived(response), self.bounds, started, response.url)
        # Where requests keeps a body it has read: zeep reads `response.content`.
        response._content = body
        return body


def _arrived(response: requests.Response) -> Iterator[bytes]:
    """What has arrived of the body, as it arrives (iter_content waits for whole chunks, so a
    slow answer would never be looked at between them), with urllib3's failures raised as
    requests' own, as requests raises them when it reads a body (zeep's callers, and the
    error table, know those)."""
    try:
        while chunk := response.raw.read1(_CHUNK, decode_content=True):
            yield chunk
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ReadTimeout(exc, request=response.request) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc, request=response.request) from exc
    except urllib3.exceptions.ProtocolError as exc:  # cut short, reset
        raise requests.exceptions.ChunkedEncodingError(exc, request=response.request) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc, request=response.request) from exc
