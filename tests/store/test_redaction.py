"""Redaction of residents' personal data from audit details and log fields."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.redaction import EMAIL_MASK, PHONE_MASK, REDACTED, masking, redact, redact_text
from schemas.model import Reporter


def test_personal_keys_are_redacted_at_any_depth_without_touching_the_input() -> None:
    details = {
        "reporter": {"email": "ann@example.org"},
        "request": {"first_name": "Ann", "Last-Name": "Lee", "phone": "555", "device_id": "d"},
        "items": [{"name": "Ann Lee"}, {"email": None}],
        "reporter_email": "x@y.org",
        "service_name": "Pothole",
        "attempt": 3,
    }
    original = repr(details)

    assert redact(details) == {
        "reporter": REDACTED,
        "request": {
            "first_name": REDACTED,
            "Last-Name": REDACTED,
            "phone": REDACTED,
            "device_id": REDACTED,
        },
        "items": [{"name": REDACTED}, {"email": None}],
        "reporter_email": REDACTED,
        "service_name": "Pothole",
        "attempt": 3,
    }
    assert repr(details) == original


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ann.lee+311@example.co.uk please", f"write to {EMAIL_MASK} please"),
        ("call +49 30 1234567 today", f"call {PHONE_MASK} today"),
        ("call (555) 123-4567", f"call {PHONE_MASK}"),
        ("mobile 0170/1234567", f"mobile {PHONE_MASK}"),
    ],
)
def test_emails_and_phone_numbers_in_free_text_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T12:00:00+00:00",
        "2026-03-01 12:00:00",
        "request 550e8400-e29b-41d4-a716-446655440000",
        "at 52.5200081,13.4049540",
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "ticket 12345, 31.12.2026",
    ],
)
def test_dates_ids_hashes_and_coordinates_are_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "postgresql+psycopg://civicbus@db.internal:5432/civicbus: the database did not answer",
        "postgresql+psycopg://civicbus:***@db.internal:5432/civicbus: not tried",
        "amqp://guest@127.0.0.1:5672/%2F refused the connection",
    ],
)
def test_the_user_of_a_service_url_is_kept_with_its_host(text: str) -> None:
    # A store or broker error names its server: masked as an e-mail, the host was lost too.
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amqp://guest:s3cret@broker.internal/", f"amqp://guest:{EMAIL_MASK}/"),
        (
            "db postgresql://civicbus@db.internal/civicbus, reply to ann@example.org",
            f"db postgresql://civicbus@db.internal/civicbus, reply to {EMAIL_MASK}",
        ),
    ],
)
def test_a_url_password_and_addresses_beside_a_url_are_still_masked(
    text: str, expected: str
) -> None:
    assert redact(text) == expected


def test_pydantic_models_are_dumped_and_redacted() -> None:
    assert redact(Reporter(email="a@b.org"))["email"] == REDACTED


@given(st.emails())
def test_any_email_address_in_text_is_masked(address: str) -> None:
    assert address not in redact(f"from {address} :")


def test_identifiers_are_not_mistaken_for_phone_numbers_or_addresses() -> None:
    details = {
        "reference": "000010000042",
        "message_id": "<01M80CQ@civicbus.local>",
        "update_id": "5551234567",
        "device_id": "5551234567",
        "note": "call 555 123 4567",
    }
    assert redact(details) == {
        "reference": "000010000042",
        "message_id": "<01M80CQ@civicbus.local>",
        "update_id": "5551234567",
        "device_id": REDACTED,
        "note": "call " + PHONE_MASK,
    }


@pytest.mark.parametrize(
    "key",
    ["holder", "lease", "work_order", "routing_key", "Message-ID", "Update-Id", "to_revision"],
)
def test_identifier_keys_are_recognised_however_they_are_written(key: str) -> None:
    assert redact({key: "vm:12374:73662891", "note": "vm:12374:73662891"}) == {
        key: "vm:12374:73662891",
        "note": "vm:12374:" + PHONE_MASK,
    }


def test_masking_masks_the_named_values_as_whole_words_in_any_case_within_its_block() -> None:
    text = "Reporter Jane Doe (jane@x.example) asked; JANE DOE again; Janet, Doerr, J are others"
    with masking(["Jane", "Doe", None, "J", "jane@x.example"]):
        masked = redact_text(text)
    assert masked == (
        "Reporter [redacted] [redacted] ([redacted-email]) asked; [redacted] [redacted] again; "
        "Janet, Doerr, J are others"  # one letter alone is never masked: too many false hits
    )
    assert redact_text(text) == text.replace("jane@x.example", "[redacted-email]")  # outside
    with masking(["O'Brien (Jr.)"]):  # a value with pattern characters is matched as written
        assert redact_text("see O'Brien (Jr.) now") == "see [redacted] now"
