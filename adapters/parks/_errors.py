"""How httpx failures and HTTP answers become TransientError or PermanentError, in one place.

Transport failures are classified by type through `ERRORS` (and worded by adapters/_http.py);
an HTTP answer by its status: a redirect is not followed, and retried; 429 and 408 are worth
retrying (429 with the server's Retry-After), and so are 404 and 405, which on the API's fixed
endpoints mean a wrong `base_url` (retried, so that a setting fixed in time loses no request to
the dead-letter queue); other 4xx are refusals of our request; 5xx are failures of the parks
system. The answer's own error text is quoted short, on one line, with quoted values blanked: a
validation error may echo the request's values, which can be a resident's personal data.
"""

from __future__ import annotations

import json

import httpx

from adapters._exceptions import ErrorTable, PermanentError, TransientError, answer_excerpt
from adapters._http import (
    NOT_SERVED,
    AnswerTooLarge,
    AnswerTooSlow,
    Where,
    redirect_said,
    retry_after,
)

ERRORS: ErrorTable = {
    httpx.InvalidURL: PermanentError,
    httpx.UnsupportedProtocol: PermanentError,
    httpx.TimeoutException: TransientError,
    httpx.TransportError: TransientError,
    # An answer past settings.answer_timeout or max_answer_mb: a back-end in trouble.
    AnswerTooSlow: TransientError,
    AnswerTooLarge: TransientError,
    # A body that is not the JSON promised: a proxy's error page, a cut connection.
    json.JSONDecodeError: TransientError,
}

_RETRYABLE_4XX = frozenset({408, 425, 429})


def raise_for_status(
    response: httpx.Response, context: str, where: Where, *, endpoint: str
) -> None:
    """Raise the typed error for a non-2xx answer; return quietly for 2xx. `endpoint` names
    what a 404 says is missing at the URL (`token endpoint`), `where` what to check then."""
    status = response.status_code
    if response.is_redirect:
        # Not followed (httpx's default): the call carries a resident's report and a token.
        raise TransientError(
            f"{context}: {redirect_said(status, response.headers.get('Location'))}, not "
            f"followed: if the parks system moved, {where.advice}"
        )
    if status < 400:
        return
    if status in NOT_SERVED:
        # Its body (a web server's "Not Found" page or JSON) says nothing more to act on.
        said = where.not_served(status, response.reason_phrase, response.request.url, endpoint)
        raise TransientError(f"{context}: {said}")
    what = f"{context}: HTTP {status} {response.reason_phrase} from the parks system"
    said = answer_excerpt(response.text)
    if said:
        what = f"{what}: {said}"
    if status == 429:
        raise TransientError(what, retry_after=retry_after(response.headers))
    if status in _RETRYABLE_4XX or status >= 500:
        raise TransientError(what, retry_after=retry_after(response.headers))
    raise PermanentError(what)
