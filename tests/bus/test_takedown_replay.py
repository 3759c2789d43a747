"""A dead letter replayed while its request is taken down: the replay carries the request as it
reads after the take-down, whichever of the two an operator started first."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus import deadletters, takedown
from bus.api.media import MediaStore
from bus.broker import topology as t
from bus.config import load_config
from bus.store import DeadLetter, Store
from schemas.events import Envelope, EventType
from tests.media_files import png
from tests.store.store_factories import make_request

SANDBOX = Path(__file__).parents[2] / "deploy/sandbox/civicbus.yaml"
SERVICES = load_config(SANDBOX).service_catalogue()
WRITTEN = "Car HH-AB 123 of my neighbour Jo Smith blocks the drain"


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


@pytest.fixture
def files(tmp_path: Path) -> MediaStore:
    return MediaStore(tmp_path / "media", "https://311.example")


def test_a_replay_read_before_a_take_down_queues_the_request_as_it_now_reads(
    store: Store, files: MediaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = files.save(png(b"replayed after a take-down"))
    request = make_request(
        "r-1",
        service_code="POTHOLE",
        jurisdiction="springfield.example",
        description=WRITTEN,
        media=(photo,),
    )
    command = Envelope(
        type=EventType.CREATED,
        subject=request.id,
        data=request.without_personal_data().model_dump(mode="json"),
        correlationid=request.id,
    )
    with store.transaction() as tx:
        tx.add_request(request)
        letter = tx.record_dead_letter(
            instance="sap-roads",
            message_id=command.id,
            request_id=request.id,
            reason="back-end down",
            envelope=command.model_dump(mode="json"),
        )
    assert letter is not None
    read = store.get_dead_letter

    def read_then_taken_down(dead_letter_id: int) -> DeadLetter | None:
        # The operator's replay has read the letter; a take-down commits before it writes.
        found = read(dead_letter_id)
        takedown.take_down(store, files, request.id, services=SERVICES)
        return found

    monkeypatch.setattr(store, "get_dead_letter", read_then_taken_down)

    assert deadletters.replay(store, "sap-roads", [letter.id]) == [letter]

    [row] = [r for r in store.pending_outbox_messages() if r.exchange == t.COMMANDS_EXCHANGE]
    assert row.envelope.data["description"] == takedown.TAKEN_DOWN
    assert row.envelope.data["media"] == []
    assert WRITTEN not in row.body.decode() and photo.url not in row.body.decode()
