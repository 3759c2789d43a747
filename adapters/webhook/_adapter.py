"""The `webhook` adapter kind: a signed HTTP POST of an event's JSON to a subscriber's URL."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx

from adapters import Adapter, Health, PermanentError, Receipt, TransientError, map_exceptions
from adapters._exceptions import answer_excerpt
from adapters._http import (
    AnswerTooLarge,
    AnswerTooSlow,
    BoundedTransport,
    Bounds,
    Where,
    check_settings,
    require_http_url,
    retry_after,
)
from adapters.webhook._signing import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from schemas.events import STRUCTURED_CONTENT_TYPE, Envelope, EventType
from schemas.model import Reporter, ServiceRequest

#: httpx's errors, classified once, most specific first: anything on the way there is worth
#: retrying, but a URL httpx cannot use (e.g. ftp://, a TransportError too) never will be.
_ERRORS = {
    httpx.UnsupportedProtocol: PermanentError,
    httpx.InvalidURL: PermanentError,
    httpx.TimeoutException: TransientError,
    httpx.TransportError: TransientError,
    # A receiver whose answer is past settings.answer_timeout or max_answer_mb.
    AnswerTooSlow: TransientError,
    AnswerTooLarge: TransientError,
}

#: Seconds a POST may take before it counts as a failed try.
DEFAULT_TIMEOUT = 10.0

#: Client errors that are worth retrying all the same: timeouts and throttling.
_RETRYABLE_4XX = frozenset({408, 429})


class WebhookAdapter(Adapter):
    """POSTs events to `settings["url"]`, signed with `settings["secret"]` when one is set.

    Settings: `url` (required), `secret` (the HMAC key; normally from an environment variable
    named by `secrets`; given, not empty), `timeout` (seconds per read, default DEFAULT_TIMEOUT),
    `answer_timeout` and `max_answer_mb` (one whole answer's time and size, adapters/_http.py),
    `personal_data` (for a routed instance: the reporter fields its requests carry, e.g.
    `[email, phone]`; as in a mapping file, none unless listed, so a request is sent without the
    reporter like an event).
    """

    kind = "webhook"

    def __init__(self, instance: str, settings: Mapping[str, Any], mapping: Any = None) -> None:
        super().__init__(instance, settings, mapping)
        if not settings.get("url"):
            raise ValueError(f"webhook {instance}: the setting `url` is required")
        # Refused here (one line, exit 2 for `civicbus worker`), not at every delivery.
        self.url = require_http_url(settings["url"], context=f"webhook {instance}", setting="url")
        self._where = Where("the receiver", check_settings(instance, "url"))
        if "secret" in settings and not settings["secret"]:
            # Its environment variable set but empty: the events would go out unsigned, though
            # a secret was asked for.
            raise ValueError(
                f"webhook {instance}: the setting `secret` is empty; set its environment "
                f"variable to the signing secret (or name no secret, to send unsigned)"
            )
        self._secret = str(settings["secret"]) if "secret" in settings else None
        self.personal_data = _reporter_fields(instance, settings.get("personal_data") or ())
        timeout = float(settings.get("timeout", DEFAULT_TIMEOUT))
        bounds = Bounds.from_settings(settings, timeout, context=f"webhook {instance}")
        self._client = httpx.Client(timeout=timeout, transport=BoundedTransport(bounds))

    def deliver(
        self, body: bytes, *, event_id: str, traceparent: str | None = None
    ) -> httpx.Response:
        """POST one event body; TransientError or PermanentError when it is not accepted.
        `traceparent` (the event's) goes as the W3C Trace Context header too, which a receiver's
        tracing (OpenTelemetry and the like) carries on by itself."""
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": STRUCTURED_CONTENT_TYPE,
            TIMESTAMP_HEADER: timestamp,
            EVENT_ID_HEADER: event_id,
        }
        if traceparent:
            headers["traceparent"] = traceparent
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        context = f"webhook {self.instance} event {event_id}"
        with map_exceptions(_ERRORS, context=context, describe=self._where.describe):
            response = self._client.post(self.url, content=body, headers=headers)
        _raise_for_status(response, context)
        return response

    def submit(self, request: ServiceRequest) -> Receipt:
        """Deliver the request as a `civicbus.request.created` event; the receiver dedupes by
        the event id, which is derived from the request id so a redelivery repeats it."""
        envelope = Envelope(
            id=f"{request.id}:created",
            type=EventType.CREATED,
            subject=request.id,
            data=self._document(request),
            correlationid=request.id,
        )
        response = self.deliver(
            envelope.model_dump_json().encode(),
            event_id=envelope.id,
            traceparent=envelope.traceparent,
        )
        reference = _reference_in(response) or request.id
        return Receipt(request_id=request.id, reference=reference)

    def _document(self, request: ServiceRequest) -> dict[str, Any]:
        """The request as every other event carries it (the reporter blanked, its latest
        status updates), but for the reporter fields the settings list under `personal_data`."""
        data = request.public_data()
        reporter = request.json_form()["reporter"]
        data["reporter"] = {k: v if k in self.personal_data else None for k, v in reporter.items()}
        return data

    def find(self, request_id: str) -> Receipt | None:
        """A webhook cannot be asked what it holds; receivers dedupe by the event id instead."""
        return None

    def check(self) -> Health:
        try:
            response = self._client.request("HEAD", self.url)
        except httpx.HTTPError as exc:
            said = self._where.describe(exc) or type(exc).__name__
            return Health(ok=False, detail=f"{self.url} cannot be reached: {said}")
        code = response.status_code
        return Health(ok=code < 500, detail=f"HEAD {self.url}: HTTP {code}")

    def close(self) -> None:
        self._client.close()


def _reporter_fields(instance: str, listed: Any) -> frozenset[str]:
    known = list(Reporter.model_fields)
    names = [listed] if isinstance(listed, str) else listed
    if not isinstance(names, list | tuple) or any(n not in known for n in names):
        raise ValueError(
            f"webhook {instance}: `personal_data` lists reporter fields ({', '.join(known)}), "
            f"not {listed!r}"
        )
    return frozenset(names)


def _raise_for_status(response: httpx.Response, context: str) -> None:
    code = response.status_code
    if 200 <= code < 300:
        return
    message = f"{context}: the subscriber answered HTTP {code}"
    if 300 <= code < 400:
        # Redirects are not followed (the signature is for this URL): say where it moved.
        location = response.headers.get("Location")
        message += f" to Location {answer_excerpt(location)}" if location else " (no Location)"
    elif said := answer_excerpt(response.text):
        message = f"{message}: {said}"
    if code >= 500 or code in _RETRYABLE_4XX:
        raise TransientError(message, retry_after=retry_after(response.headers))
    raise PermanentError(message)


def _reference_in(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    reference = data.get("reference") if isinstance(data, dict) else None
    return str(reference) if reference else None
