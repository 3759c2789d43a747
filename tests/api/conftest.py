"""API test fixtures: the real app under uvicorn on a free loopback port, on a real store."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from bus.api import create_app
from bus.bootstrap import Runtime
from bus.config import Environment
from bus.intake import Prepared, prepare
from bus.store import Client
from schemas.open311 import RequestDraft, parse_create_form

SANDBOX = "deploy/sandbox/civicbus.yaml"
SPRINGFIELD = "springfield.example"
SHELBYVILLE = "shelbyville.example"


def make_runtime(database_url: str, media_dir: Path, config_path: str = SANDBOX) -> Runtime:
    env = Environment(
        config_path=config_path,
        database_url=database_url,
        amqp_url="amqp://unused",
        media_dir=str(media_dir),
        log_format="console",
    )
    return Runtime(env=env)


def cors_config(directory: Path, origins: str) -> str:
    """The sandbox city with `api.cors_origins: {origins}` (a YAML list), written in
    `directory`, its mapping paths kept pointing home."""
    text = Path(SANDBOX).read_text()
    text = text.replace("../../mappings/", f"{Path('mappings').resolve()}/")
    text = text.replace("api:\n", f"api:\n  cors_origins: {origins}\n", 1)
    path = directory / "civicbus.yaml"
    path.write_text(text)
    return str(path)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def unreachable_store_runtime(media_dir: Path) -> Runtime:
    """A runtime on a PostgreSQL URL whose port nobody listens on: every store call fails."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return make_runtime(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none", media_dir)


class LiveServer:
    """uvicorn serving an app in a thread, on a port the OS picked; `lifespan`: with the app's
    start-up and shutdown (the intake writer process's start and stop)."""

    def __init__(self, app: FastAPI, *, lifespan: bool = False) -> None:
        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on" if lifespan else "off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start within 10 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """A runtime on the sandbox city with a fresh SQLite store, shared by one test module."""
    base = tmp_path_factory.mktemp("api")
    rt = make_runtime(f"sqlite:///{base}/civicbus.db", base / "media")
    yield rt
    rt.close()


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    """A runtime on the sandbox city with a fresh, migrated SQLite store, for one test."""
    runtime = make_runtime(f"sqlite:///{tmp_path}/civicbus.db", tmp_path / "media")
    runtime.store.upgrade()
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def server(runtime: Runtime) -> Iterator[LiveServer]:
    with LiveServer(create_app(runtime)) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/open311/v2", timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def api_key(runtime: Runtime) -> str:
    """A key of a client allowed in every jurisdiction, as a resident app's: it may create and
    read requests, not post status updates."""
    return runtime.store.add_client("test-app")[1]


@pytest.fixture(scope="module")
def desk_key(runtime: Runtime) -> str:
    """A key of a back-office desk allowed in every jurisdiction: it may post status updates."""
    return runtime.store.add_client("test-desk", may_post_updates=True)[1]


def pothole_form(api_key: str, /, **fields: str | list[str]) -> dict[str, str | list[str]]:
    """The form of a valid pothole report in Springfield; `fields` override or add."""
    return {
        "api_key": api_key,
        "jurisdiction_id": SPRINGFIELD,
        "service_code": "POTHOLE",
        "lat": "37.76",
        "long": "-122.41",
        "attribute[LANE]": "carriageway",
        **fields,
    }


def prepared_pothole(
    runtime: Runtime, client: Client, key: str | None = None, **fields: str
) -> Prepared:
    """A valid pothole report in Springfield (with the reporter's e-mail), prepared for
    `client` as the API prepares a create, with Idempotency-Key `key`; `fields` override or
    add form fields."""
    (service,) = [
        s
        for s in runtime.config.service_catalogue()
        if s.jurisdiction == SPRINGFIELD and s.code == "POTHOLE"
    ]
    form = {
        "service_code": ["POTHOLE"],
        "lat": ["37.7612"],
        "long": ["-122.4194"],
        "attribute[LANE]": ["carriageway"],
        "email": ["resident@example.org"],
        **{name: [value] for name, value in fields.items()},
    }
    draft = parse_create_form(form, service)
    assert isinstance(draft, RequestDraft), draft
    return prepare(draft, client=client, actor=f"api:{client.name}", idempotency_header=key)


@pytest.fixture(scope="module")
def create(http: httpx.Client, api_key: str) -> Callable[..., httpx.Response]:
    """POST a valid pothole (override or add fields by keyword) and return the response."""

    def post(fmt: str = "json", **fields: str | list[str]) -> httpx.Response:
        return http.post(f"/requests.{fmt}", data=pothole_form(api_key, **fields))

    return post


def every_read(http: httpx.Client, request_id: str) -> list[bytes]:
    """Every Open311 read that shows the request: one and listed, in both formats, plain, with
    extensions and with an api_key (the bodies, each answered 200)."""
    bodies = []
    for fmt in ("json", "xml"):
        for params in (
            {"jurisdiction_id": SPRINGFIELD},
            {"jurisdiction_id": SPRINGFIELD, "extensions": "true"},
            {"jurisdiction_id": SPRINGFIELD, "api_key": "anything"},
        ):
            one = http.get(f"/requests/{request_id}.{fmt}", params=params)
            listed = http.get(
                f"/requests.{fmt}", params={**params, "service_request_id": request_id}
            )
            assert one.status_code == listed.status_code == 200, one.text + listed.text
            bodies += [one.content, listed.content]
    return bodies
