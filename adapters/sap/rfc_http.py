"""A PyRFC-compatible client for the sandbox's SAP **simulation**, over HTTP.

The real RFC wire protocol needs SAP's NW RFC SDK, which cannot be installed here. This class
offers pyrfc's interface — `Connection(**params).call(name, **kwargs) -> dict`, `ping()`,
`close()` and pyrfc's error class names — and talks to `civicbus.sandbox.sap` (the simulated
BAPIs) instead, so the RFC transport runs the same code against the simulation that it runs
against SAP through pyrfc. It is not an RFC client for real SAP systems.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import httpx

RFC_PATH = "/sap/bc/rfc-simulation"
SESSION_HEADER = "sap-rfc-session"


class RFCError(Exception):
    """Base of the simulation client's errors, named as pyrfc names its own."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.key = key


class CommunicationError(RFCError):
    """The partner could not be reached or the connection broke (pyrfc: CommunicationError)."""


class LogonError(RFCError):
    """The logon was refused (pyrfc: LogonError)."""


class ABAPApplicationError(RFCError):
    """The function module raised an ABAP exception (pyrfc: ABAPApplicationError)."""


class ABAPRuntimeError(RFCError):
    """The ABAP side dumped (pyrfc: ABAPRuntimeError)."""


_KINDS: dict[str, type[RFCError]] = {
    "CommunicationError": CommunicationError,
    "LogonError": LogonError,
    "ABAPApplicationError": ABAPApplicationError,
    "ABAPRuntimeError": ABAPRuntimeError,
}


class Connection:
    """One connection (one RFC session, hence one unit of work) to the SAP simulation.

    Parameters as for pyrfc where they apply: `url` (the simulation's base URL), `user`,
    `passwd`, `client`; pyrfc-only parameters (`ashost`, `sysnr`, ...) are accepted and ignored.
    """

    def __init__(
        self,
        *,
        url: str,
        user: str | None = None,
        passwd: str | None = None,
        client: str = "100",
        timeout: float = 10.0,
        **ignored: Any,
    ) -> None:
        self._session = uuid.uuid4().hex
        self._http = httpx.Client(
            base_url=url.rstrip("/") + RFC_PATH + "/",
            auth=httpx.BasicAuth(user, passwd or "") if user else None,
            timeout=timeout,
            headers={SESSION_HEADER: self._session, "sap-client": str(client)},
        )
        self.alive = True

    def call(self, func_name: str, **params: Any) -> dict[str, Any]:
        """Call a (simulated) function module; its exporting, changing and table parameters."""
        if not self.alive:
            raise CommunicationError("the connection is closed", key="RFC_INVALID_HANDLE")
        try:
            response = self._http.post(func_name, json=params)
        except httpx.HTTPError as exc:
            self.alive = False
            raise CommunicationError(
                f"{type(exc).__name__}: {exc}", key="RFC_COMMUNICATION_FAILURE"
            ) from exc
        if response.status_code == 200:
            result: dict[str, Any] = response.json()
            return result
        try:
            error = response.json()["error"]
            kind = _KINDS.get(error.get("kind", ""), CommunicationError)
            message, key = str(error.get("message", "")), str(error.get("key", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            kind, message, key = CommunicationError, f"HTTP {response.status_code}", ""
        if kind is CommunicationError:
            self.alive = False
        raise kind(message, key=key)

    def ping(self) -> None:
        self.call("RFC_PING")

    def close(self) -> None:
        """Close the session; the simulation rolls back whatever was not committed."""
        if self.alive:
            with contextlib.suppress(httpx.HTTPError):
                self._http.delete("session")
        self.alive = False
        self._http.close()
