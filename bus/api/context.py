"""What the API needs at hand for every call, computed once when the app is built.

The service catalogue and its rendered documents are precomputed: the config does not change
while a process runs, and intake should not pay for re-reading it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from bus.api.client_cache import ClientCache
from bus.api.committer import GroupCommitter
from bus.api.media import MediaStore
from bus.api.wire import Format, Open311Problem, encode
from bus.bootstrap import Runtime
from bus.intake import Accepted, Prepared
from bus.store import Client, Store
from schemas import open311_render as render
from schemas.model import Service


@dataclass
class Catalogue:
    """Jurisdictions and their services, with the rendered service lists ready to send."""

    jurisdictions: tuple[str, ...]
    services: dict[tuple[str, str], Service]
    _lists: dict[tuple[str, Format], tuple[bytes, str]] = field(default_factory=dict)

    @classmethod
    def build(cls, jurisdictions: list[str], catalogue: list[Service]) -> Catalogue:
        built = cls(tuple(jurisdictions), {(s.jurisdiction, s.code): s for s in catalogue})
        for jurisdiction in built.jurisdictions:
            docs = render.services(s for s in catalogue if s.jurisdiction == jurisdiction)
            for fmt in Format:
                built._lists[(jurisdiction, fmt)] = encode(docs, fmt, "services")
        return built

    def jurisdiction(self, given: str | None) -> str:
        """The jurisdiction a call is about: required only when there are several; unknown, 404."""
        if given is None:
            if len(self.jurisdictions) == 1:
                return self.jurisdictions[0]
            known = ", ".join(self.jurisdictions)
            raise Open311Problem(400, f"jurisdiction_id required (one of {known})")
        if given not in self.jurisdictions:
            raise Open311Problem(404, f"jurisdiction_id {given[:80]!r} is not served here")
        return given

    def service(self, jurisdiction: str, code: str) -> Service | None:
        return self.services.get((jurisdiction, code))

    def codes(self, jurisdiction: str) -> set[str]:
        return {code for (j, code) in self.services if j == jurisdiction}

    def service_list(self, jurisdiction: str, fmt: Format) -> tuple[bytes, str]:
        return self._lists[(jurisdiction, fmt)]


P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class ApiContext:
    """The runtime plus what is derived from it once: catalogue, media store, base URL."""

    runtime: Runtime
    catalogue: Catalogue
    media: MediaStore
    base_url: str
    #: SQLite takes one writer at a time and makes waiting writers sleep and poll; queueing
    #: them on one thread of our own instead keeps latency flat under concurrent posts.
    committer: GroupCommitter | None = None
    #: Whether creates are written by the intake writer process (SQLite; see
    #: bus/api/intake_process.py), else on the event loop.
    intake_process: bool = False
    clients: ClientCache = field(default_factory=ClientCache)
    _sqlite_writer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="civicbus-writer")
    )

    @classmethod
    def build(cls, runtime: Runtime, *, intake_process: bool = False) -> ApiContext:
        config = runtime.config
        base_url = config.api.base_url.rstrip("/")
        return cls(
            runtime=runtime,
            catalogue=Catalogue.build(
                [j.id for j in config.jurisdictions], config.service_catalogue()
            ),
            media=MediaStore(Path(runtime.env.media_dir), base_url),
            base_url=base_url,
            intake_process=intake_process,
        )

    @property
    def store(self) -> Store:
        return self.runtime.store

    async def commit(self, prepared: Prepared) -> Accepted:
        """Write a prepared request through the group committer (started on first use)."""
        return await self._committer().submit(prepared)

    def start(self) -> None:
        """At the API's start-up (on its event loop): the intake writer process, if used."""
        if self.intake_process:
            self._committer().start()

    def close(self) -> None:
        """At the API's shutdown, once no request is in flight."""
        if self.committer is not None:
            self.committer.close()

    def _committer(self) -> GroupCommitter:
        if self.committer is None:
            url = self.runtime.env.database_url if self.intake_process else None
            self.committer = GroupCommitter(self.store, process_url=url)
        return self.committer

    async def write(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking store work that writes, off the event loop (serialized on SQLite)."""
        if self.store.dialect == "sqlite":
            loop = asyncio.get_running_loop()
            call = functools.partial(work, *args, **kwargs)
            return await loop.run_in_executor(self._sqlite_writer, call)
        return await run_in_threadpool(work, *args, **kwargs)

    def authenticate(self, api_key: str | None, jurisdiction: str | None) -> Client:
        """The client behind an api_key, allowed to write to `jurisdiction`; else 403."""
        if api_key is None:
            raise Open311Problem(403, "api_key required")
        client = self.store.authenticate(api_key) if len(api_key) <= MAX_KEY else None
        if client is None:
            raise Open311Problem(403, INVALID_KEY)
        return _allowed(client, jurisdiction)

    async def authenticate_remembered(
        self, api_key: str | None, jurisdiction: str | None
    ) -> tuple[Client, bool]:
        """As `authenticate`, from memory for a key that authenticated before; the flag says so.

        Only for creates: their group commit checks the client again in the transaction that
        writes (see bus.api.client_cache), so a revocation still takes effect at once.
        """
        if api_key is not None and len(api_key) <= MAX_KEY:
            client = self.clients.get(api_key)
            if client is not None:
                return _allowed(client, jurisdiction), True
        client = await run_in_threadpool(self.authenticate, api_key, jurisdiction)
        assert api_key is not None  # authenticate refused a missing key
        self.clients.put(api_key, client)
        return client, False


#: Longest api_key looked up; longer ones are refused without a query.
MAX_KEY = 200
INVALID_KEY = "api_key is not valid (unknown or revoked)"


def _allowed(client: Client, jurisdiction: str | None) -> Client:
    if jurisdiction is not None and client.jurisdiction not in (None, jurisdiction):
        raise Open311Problem(403, f"api_key is not valid for jurisdiction {jurisdiction}")
    return client
