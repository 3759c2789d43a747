"""OAuth2 client credentials for the parks API: one cached bearer token, renewed when needed.

Every failure to get a token is a TransientError: a token request carries no request's data,
so what fails it (a wrong `base_url` or `token_url`, refused credentials, a token endpoint
down) is the set-up's or the parks system's fault. Retried through the tiers, the requests
waiting on it reach the parks system once the setting is fixed, instead of all being
dead-lettered at their first attempt.
"""

from __future__ import annotations

import threading
import time

import httpx

from adapters._exceptions import PermanentError, TransientError, map_exceptions
from adapters._http import Where
from adapters.parks._errors import ERRORS, raise_for_status

#: Renew this many seconds before the server's expiry, so a token never dies in flight.
_EXPIRY_MARGIN = 30.0


class ClientCredentials:
    """Fetches and caches a bearer token; `invalidate()` after a 401 forces a new one."""

    def __init__(
        self,
        client: httpx.Client,
        token_url: str,
        client_id: str,
        client_secret: str,
        context: str,
        where: Where,
        credentials_advice: str,
    ) -> None:
        self._client = client
        self._where = where
        self._credentials_advice = credentials_advice
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._context = context
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        #: How many tokens were fetched (tests and metrics read it).
        self.fetched = 0

    def token(self) -> str:
        """A valid bearer token, fetched only when there is none or it is about to expire."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._token, lifetime = self._fetch()
                self._expires_at = time.monotonic() + max(0.0, lifetime - _EXPIRY_MARGIN)
                self.fetched += 1
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget `token` (the server refused it), unless another thread already renewed it."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> tuple[str, float]:
        context = f"{self._context}: token request"
        with map_exceptions(ERRORS, context=context, describe=self._where.describe):
            response = self._client.post(
                self._token_url,
                data={"grant_type": "client_credentials"},
                auth=(self._client_id, self._client_secret),
            )
        if response.status_code in (400, 401):
            raise TransientError(
                f"{context}: the parks system refused the client credentials (HTTP "
                f"{response.status_code}): {self._credentials_advice}"
            )
        try:
            raise_for_status(response, context, self._where, endpoint="token endpoint")
        except PermanentError as exc:  # e.g. a 403 or 415 of a wrong endpoint: not the data's
            raise TransientError(str(exc)) from exc
        try:
            body = response.json()
        except ValueError as exc:  # a web page where the token endpoint should be
            kind = response.headers.get("Content-Type") or "no content type"
            raise TransientError(
                f"{context}: {self._token_url} answered HTTP {response.status_code} with "
                f"{kind}, not a JSON token: is it the token endpoint? {self._where.advice}"
            ) from exc
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TransientError(f"{context}: the token answer has no access_token")
        try:
            lifetime = float(body.get("expires_in", 300))
        except (TypeError, ValueError):
            lifetime = 300.0
        return token, lifetime
