"""`civicbus requests take-down` on a real store and media directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bus.api.media import MediaStore
from bus.cli import app
from bus.store import Store
from schemas.model import BackendRef, Media
from tests.media_files import png
from tests.store.store_factories import T0, make_request

WRITTEN = "Jo Smith's car HH-AB 123 blocks the drain again"
TOKEN = "T01M92GEHJHKC12PZZEKSM78Q7R"
PNG = png(b"cli take-down")


@pytest.fixture
def store(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The store the command uses (CIVICBUS_DATABASE_URL), open for setting up and looking."""
    monkeypatch.setenv("CIVICBUS_DATABASE_URL", sqlite_url)
    opened = Store.open(sqlite_url)
    yield opened
    opened.close()


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MediaStore:
    """The media directory the command uses (CIVICBUS_MEDIA_DIR)."""
    monkeypatch.setenv("CIVICBUS_MEDIA_DIR", str(tmp_path / "media"))
    return MediaStore(tmp_path / "media", "https://311.example")


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def seed(store: Store, photo: Media, **changes: object) -> None:
    with store.transaction() as tx:
        tx.add_request(
            make_request("r-1", description=WRITTEN, media=(photo,), **changes), token=TOKEN
        )


def test_take_down_by_batch_token_removes_description_and_photo_and_a_second_run_says_so(
    store: Store, files: MediaStore
) -> None:
    photo = files.save(PNG)
    seed(store, photo)

    code, out, err = invoke("requests", "take-down", TOKEN)
    again = invoke("requests", "take-down", "r-1")

    assert code == 0, err
    [event] = [row.envelope for row in store.pending_outbox()]
    assert out.splitlines() == [
        "request r-1 taken down",
        "  description  now reads '[description removed]'",
        "  media        1 removed (1 file(s) deleted)",
        f"  event        civicbus.request.taken_down {event.id} queued: subscribers (queues, "
        "webhooks) are told to overwrite their copy",
    ]
    assert err == ""  # neither delivered nor published yet: nobody else has a copy
    request = store.get_request("r-1")
    assert request is not None
    assert (request.description, request.media) == ("[description removed]", ())
    # Open311 reads show the take-down's time; the time of its latest status stays.
    assert request.taken_down_at is not None and request.updated_at == T0
    assert photo.sha256 is not None and files.find(photo.url.rpartition("/")[2]) is None
    [entry] = store.audit_trail("r-1")
    assert entry.action == "report_taken_down" and WRITTEN not in str(entry.details)
    assert again[0] == 0 and "nothing left to take down" in again[1]
    assert "event" not in again[1] and len(store.pending_outbox()) == 1
    assert len(store.audit_trail("r-1")) == 1
    verified = invoke("audit", "verify")
    assert verified[0] == 0 and "audit log intact: 1 entries" in verified[1]


def test_take_down_of_a_delivered_request_names_the_back_ends_that_keep_their_copy(
    store: Store, files: MediaStore
) -> None:
    ref = BackendRef(adapter="sap-roads", reference="N-7", submitted_at=datetime.now(UTC))
    seed(store, Media(url="https://elsewhere.example/p.jpg"), backend_refs=(ref,))

    code, out, err = invoke("requests", "take-down", "r-1")

    assert code == 0, err
    # An outside URL is only no longer shown: there is no file of it here.
    assert "  media        1 removed (0 file(s) deleted)" in out.splitlines()
    assert "delivered to sap-roads" in err and "take them down there too" in err


def test_take_down_of_the_media_only_keeps_the_description(store: Store, files: MediaStore) -> None:
    seed(store, files.save(PNG))

    code, out, err = invoke("requests", "take-down", "r-1", "--media")

    assert code == 0, err
    assert "description" not in out
    request = store.get_request("r-1")
    assert request is not None and (request.description, request.media) == (WRITTEN, ())


def test_take_down_without_the_media_directory_changes_nothing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = "ab" * 32
    seed(store, Media(url=f"https://311.example/media/{digest}.png", sha256=digest))
    monkeypatch.setenv("CIVICBUS_MEDIA_DIR", str(tmp_path / "elsewhere"))

    code, _, err = invoke("requests", "take-down", "r-1")

    assert code == 1
    assert "the media directory" in err and "CIVICBUS_MEDIA_DIR" in err
    request = store.get_request("r-1")
    assert request is not None and request.description == WRITTEN and store.audit_trail("r-1") == []


def test_take_down_of_an_unknown_request_fails(store: Store, files: MediaStore) -> None:
    code, _, err = invoke("requests", "take-down", "nope")

    assert code == 1
    assert "there is no request (nor batch token) nope" in err


def test_take_down_of_written_answers_names_them_and_keeps_the_city_s_choices(
    store: Store, files: MediaStore
) -> None:
    notes = "Gate code 4711, ask for Jo Smith at number 12"
    answers = {"BIN_TYPE": "recycling", "ACCESS_NOTES": notes}
    with store.transaction() as tx:
        tx.add_request(
            make_request(
                "r-1",
                jurisdiction="shelbyville.example",
                service_code="MISSED_BIN",
                attributes=answers,
            ),
            token=TOKEN,
        )

    media_only = invoke("requests", "take-down", "r-1", "--media")
    code, out, err = invoke("requests", "take-down", TOKEN, "--description")

    assert media_only[0] == 0 and "nothing left to take down" in media_only[1]
    assert code == 0, err
    [event] = [row.envelope for row in store.pending_outbox()]
    # No description was given: only the answer changes.
    assert out.splitlines() == [
        "request r-1 taken down",
        "  attributes   ACCESS_NOTES now reads '[answer removed]'",
        f"  event        civicbus.request.taken_down {event.id} queued: subscribers (queues, "
        "webhooks) are told to overwrite their copy",
    ]
    request = store.get_request("r-1")
    assert request is not None and request.description is None
    assert request.attributes == {"BIN_TYPE": "recycling", "ACCESS_NOTES": "[answer removed]"}
    [entry] = store.audit_trail("r-1")
    assert entry.details["attributes"] == ["ACCESS_NOTES"] and notes not in str(entry.details)


def test_requests_show_tells_when_the_report_was_taken_down(
    store: Store, files: MediaStore
) -> None:
    seed(store, files.save(PNG))
    _, before, _ = invoke("requests", "show", "r-1", "--json")

    code, _, err = invoke("requests", "take-down", "r-1", "--media")
    _, shown, _ = invoke("requests", "show", "r-1")
    _, as_json, _ = invoke("requests", "show", "r-1", "--json")

    assert code == 0, err
    assert json.loads(before)["taken_down_at"] is None
    request = store.get_request("r-1")
    assert request is not None and request.taken_down_at is not None
    at = request.taken_down_at.astimezone(UTC).isoformat(timespec="seconds")
    assert json.loads(as_json)["taken_down_at"] == at
    [line] = [line for line in shown.splitlines() if line.startswith("taken down")]
    assert line.startswith(f"taken down {at}: ") and "report_taken_down" in line
    assert WRITTEN not in shown  # the description stays, but show never prints it
