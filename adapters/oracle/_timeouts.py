"""Bounding the adapter's waits on the database: connecting, and each call once connected.

`pool_timeout` bounds only the wait for a free pooled connection; without these a hung database
or a dropped network path would hold the worker's thread for good. Each database names them in
its own driver's terms. A value the URL's query already gives is left as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for a connection to open, and for each call on it."""

    connect: float
    call: float

    def connect_args(self, url: sa.URL) -> dict[str, Any]:
        """Driver connect arguments for `url`'s database (SQLite has none: a local file)."""
        backend, given = url.get_backend_name(), url.query
        args: dict[str, Any] = {}
        if backend == "oracle" and "tcp_connect_timeout" not in given:
            # python-oracledb thin mode: bounds the TCP connect (an unreachable host, a dropped
            # path); each call is bounded by `bound_calls`.
            args["tcp_connect_timeout"] = self.connect
        elif backend == "postgresql":
            if "connect_timeout" not in given:
                args["connect_timeout"] = max(2, math.ceil(self.connect))  # whole seconds, >= 2
            # The server cancels a statement running longer. connect_args replace the URL's own
            # options, so those are kept, after ours: a statement_timeout there wins.
            options = given.get("options")
            timeout = f"-c statement_timeout={self._call_ms}"
            args["options"] = f"{timeout} {options}" if isinstance(options, str) else timeout
        return args

    def bound_calls(self, engine: sa.Engine) -> None:
        """On Oracle, have every new connection limit each of its round trips (DPY-4024)."""
        if engine.url.get_backend_name() == "oracle":
            sa.event.listen(engine, "connect", self.set_call_timeout)

    def set_call_timeout(self, dbapi_connection: Any, _record: Any) -> None:
        """python-oracledb's Connection.call_timeout, in milliseconds."""
        dbapi_connection.call_timeout = self._call_ms

    @property
    def _call_ms(self) -> int:
        return max(1, round(self.call * 1000))
