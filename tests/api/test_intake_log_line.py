"""Each accepted request is logged once, after its commit, with its ids and no personal data."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from structlog.testing import capture_logs


def test_each_accepted_request_is_logged_once_with_its_ids(
    create: Callable[..., httpx.Response],
) -> None:
    with capture_logs() as logs:
        first = create(email="resident@example.org", first_name="Ada")
        second = create(email="resident@example.org")
    assert first.status_code == second.status_code == 200
    ids = [first.json()[0]["service_request_id"], second.json()[0]["service_request_id"]]

    accepted = [entry for entry in logs if entry["event"] == "intake.accepted"]

    assert [entry["request_id"] for entry in accepted] == ids
    for entry in accepted:
        assert entry["service_code"] == "POTHOLE"
        assert entry["message_id"] and entry["correlation_id"]
        assert "resident@example.org" not in repr(entry)
        assert "Ada" not in repr(entry)
