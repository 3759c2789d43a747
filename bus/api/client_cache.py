"""API clients remembered by key, so that creating a request does not read the store first.

A remembered client may have been revoked since (by `civicbus clients revoke`, from any
process). That is caught where it matters: the group commit checks every member's client
inside the transaction that writes its request (`bus.intake.write_batch`), so a revoked key
never creates anything, with no delay, and its entry is dropped then. Only keys that
authenticated are kept; an unknown key is looked up every time, so a new client works at once.
Status updates do not use the cache: they read their client from the store each time, so a
revocation, or a permission to post updates taken away (`civicbus clients deny-updates`), holds
from the next update on.
"""

from __future__ import annotations

import hashlib
import threading

from bus.store import Client

#: Clients kept at most; beyond it the longest-remembered is dropped.
MAX_CLIENTS = 1024


class ClientCache:
    """Clients by the SHA-256 of their key (the key itself is not kept in memory)."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self._clients: dict[bytes, Client] = {}
        self._max = max_clients
        self._lock = threading.Lock()

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode()).digest()

    def get(self, key: str) -> Client | None:
        """The client remembered for `key`, or None."""
        return self._clients.get(self._digest(key))

    def put(self, key: str, client: Client) -> None:
        """Remember the client that authenticated with `key`."""
        digest = self._digest(key)
        with self._lock:
            if digest not in self._clients and len(self._clients) >= self._max:
                del self._clients[next(iter(self._clients))]
            self._clients[digest] = client

    def forget(self, client_id: int) -> None:
        """Drop every key of the client (found revoked)."""
        with self._lock:
            for digest in [d for d, c in self._clients.items() if c.id == client_id]:
                del self._clients[digest]
