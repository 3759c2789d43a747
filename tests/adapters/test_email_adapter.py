"""The email adapter against a real SMTP server: the sandbox mailbox (aiosmtpd) on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.errors import MessageError
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from backends_support import MAPPINGS, a_request, control, free_port, simulator
from hypothesis import example, given
from hypothesis import strategies as st

from adapters import PermanentError, TransientError
from adapters.email import EmailAdapter, compose, message_id_for
from adapters.mapping import Mapping, load_mapping, parse_mapping
from bus import retention
from bus.store import Store
from civicbus.sandbox.mailbox import FreePortController, MailboxServer
from schemas.model import Location, Status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def mapping() -> Mapping:
    # As a worker builds it: with the deployment's public API address (config api.base_url).
    return replace(
        load_mapping(MAPPINGS / "email-311.yaml"), public_base_url="https://311.example.gov/"
    )


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[MailboxServer]:
    with simulator("mailbox", tmp_path / "sandbox") as running:
        assert isinstance(running, MailboxServer)
        yield running


def adapter_for(
    mailbox: MailboxServer, mapping: Mapping, state: Path, **settings: Any
) -> EmailAdapter:
    return EmailAdapter(
        "email-311",
        {
            "smtp_host": mailbox.host,
            "smtp_port": mailbox.port,
            "to": "311-desk@sandbox.example",
            "state_dir": str(state),
            "timeout": 5,
            **settings,
        },
        mapping,
    )


def stored_messages(tmp_path: Path) -> list[Any]:
    files = sorted((tmp_path / "sandbox" / "mailbox").glob("*.eml"))
    return [message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]


def test_a_request_becomes_one_message_threaded_by_its_id(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    request = a_request("GRAFFITI", attributes={"SURFACE": "wall", "OFFENSIVE": "no"})
    receipt = adapter_for(mailbox, mapping, tmp_path / "state").submit(request)

    assert receipt.created and receipt.status is Status.OPEN
    assert receipt.reference == message_id_for(request.id) == f"<{request.id}@civicbus.local>"
    [message] = stored_messages(tmp_path)
    assert message["Message-ID"] == receipt.reference
    assert message["To"] == "311-desk@sandbox.example"
    assert message["Subject"] == f"[311] Graffiti: 12 Evergreen Terrace ({request.id})"
    body = message.get_content()
    assert "Service: Graffiti (GRAFFITI), springfield.example" in body
    assert "12 Evergreen Terrace 51.50101,-0.12412" in body
    assert "Scaffold blocks the pavement" in body
    assert "SURFACE: wall" in body and "OFFENSIVE: no" in body
    assert f"https://311.example.gov/open311/v2/requests/{request.id}.json" in body
    # The reporter's contact is not sent unless the mapping asks for it.
    for personal in ("resident@example.org", "Marge", "555-0100"):
        assert personal not in message.as_string()


def test_the_reporter_contact_is_included_only_when_the_mapping_asks(
    mailbox: MailboxServer, tmp_path: Path
) -> None:
    asking = parse_mapping(
        "adapter: email\npersonal_data: [email]\nfields:\n"
        "  subject: {template: 'Request {id}'}\n"
        "  reporter_contact: {from: reporter.email}\n"
    )
    adapter_for(mailbox, asking, tmp_path / "state").submit(a_request("FLYTIPPING"))

    [message] = stored_messages(tmp_path)
    assert "Reporter contact: resident@example.org" in message.get_content()


def test_a_request_whose_reporter_was_forgotten_goes_out_without_the_contact(
    mailbox: MailboxServer, tmp_path: Path, sqlite_url: str
) -> None:
    asking = parse_mapping(
        "adapter: email\npersonal_data: [email, phone]\nfields:\n"
        "  subject: {template: 'Request {id}'}\n"
        "  reporter_contact: {template: '{reporter.email} {reporter.phone}'}\n"
        "  description: {from: description}\n"
    )
    request = a_request("FLYTIPPING")
    store = Store.open(sqlite_url)
    try:
        with store.transaction() as tx:
            tx.add_request(request)
        retention.forget_request(store, request.id)
        # As the worker loads the requests of a batch.
        forgotten = store.get_requests([request.id])[request.id]
    finally:
        store.close()

    adapter_for(mailbox, asking, tmp_path / "state").submit(forgotten)

    [message] = stored_messages(tmp_path)
    assert "Scaffold blocks the pavement" in message.get_content()
    assert "Reporter contact" not in message.get_content()
    assert "resident@example.org" not in message.as_string()


def test_submit_twice_sends_one_message_and_find_reads_the_sent_log(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    request = a_request("FLYTIPPING")
    first = adapter_for(mailbox, mapping, tmp_path / "state").submit(request)
    # Another adapter instance sharing the state dir (a restarted worker) sees the sent-log.
    again = adapter_for(mailbox, mapping, tmp_path / "state")
    second = again.submit(request)

    assert not second.created and second.reference == first.reference
    assert len(stored_messages(tmp_path)) == 1
    found = again.find(request.id)
    assert found is not None and found.reference == first.reference
    assert again.find("req-never-sent") is None


def test_a_line_break_in_the_address_is_flattened_in_the_subject_and_the_message_goes_out(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    # The API accepts an address typed on two lines; a header cannot hold a line break.
    location = Location(lat=51.5, long=-0.1, address="12 Evergreen Terrace\r\nSpringfield")
    request = a_request("SANITATION", location=location)
    receipt = adapter_for(mailbox, mapping, tmp_path / "state").submit(request)

    [message] = stored_messages(tmp_path)
    assert receipt.created
    assert message["Subject"] == (
        f"[311] Sanitation: 12 Evergreen Terrace Springfield ({request.id})"
    )


@given(subject=st.text(), to=st.text(min_size=1))
@example(subject="s", to="<")  # the stdlib's parser raised IndexError on these
@example(subject="s", to="0@")
# Sent as an encoded word, which the standard library could not parse back:
@example(subject="", to="0000" + "\u00a1" * 6 + "\u0800" + "\U00010000" * 3 + "@\U00010000")
def test_headers_from_request_data_are_single_lines(subject: str, to: str) -> None:
    """A header is one line, or the message is refused with an error the adapter makes permanent
    (ValueError, MessageError): never another exception, which would be retried for nothing."""
    at = datetime(2026, 11, 20, tzinfo=UTC)
    try:
        message = compose("req-1", {"subject": subject, "to": to}, sender="c@x.example", to="d@x",
                          at=at)  # fmt: skip
    except (ValueError, MessageError):
        return
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    for name in ("Subject", "To"):
        assert not any(c in str(parsed[name]) for c in "\r\n\x00")


def test_an_address_must_be_ascii_where_its_name_need_not_be() -> None:
    at = datetime(2026, 11, 20, tzinfo=UTC)
    for address in ("résident@example.org", "roads@exämple.org"):
        with pytest.raises(ValueError, match="non-ASCII"):
            compose("req-1", {"to": address}, sender="c@x.example", to="d@x", at=at)
    message = compose(
        "req-1", {"to": "Bürgeramt <roads@xn--exmple-cua.org>"}, sender="c@x.example", to="d@x",
        at=at,
    )  # fmt: skip
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert parsed["To"].addresses[0].display_name == "Bürgeramt"
    assert parsed["To"].addresses[0].addr_spec == "roads@xn--exmple-cua.org"


def test_data_no_message_can_carry_is_a_permanent_error(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    adapter = adapter_for(mailbox, mapping, tmp_path / "state")
    # Not valid Unicode: the API refuses it, a request built elsewhere might not.
    request = a_request("SANITATION").model_copy(update={"description": "broken \ud800 text"})

    with pytest.raises(PermanentError, match=f"request {request.id}: .*cannot be composed"):
        adapter.submit(request)
    assert stored_messages(tmp_path) == []


def test_a_refusing_mailbox_is_a_permanent_error(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    control(mailbox, "PUT", "/fault", mode="reject")
    adapter = adapter_for(mailbox, mapping, tmp_path / "state")
    request = a_request("GRAFFITI")

    with pytest.raises(PermanentError, match=f"request {request.id}.*SMTP 550"):
        adapter.submit(request)
    assert adapter.find(request.id) is None  # nothing was sent, so nothing is logged


def test_a_mailbox_that_is_down_is_transient_and_the_retry_sends(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    control(mailbox, "PUT", "/fault", mode="down")
    adapter = adapter_for(mailbox, mapping, tmp_path / "state")
    request = a_request("GRAFFITI")

    with pytest.raises(TransientError, match="SMTP 421"):
        adapter.submit(request)
    control(mailbox, "PUT", "/fault", mode="none")
    assert adapter.submit(request).created
    assert len(stored_messages(tmp_path)) == 1


def test_a_slow_mailbox_times_out_as_transient(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    control(mailbox, "PUT", "/fault", mode="slow", delay=2)

    with pytest.raises(TransientError):
        adapter_for(mailbox, mapping, tmp_path / "state", timeout=0.3).submit(a_request())


def test_a_refused_connection_is_transient_and_check_says_so(
    mapping: Mapping, tmp_path: Path
) -> None:
    adapter = EmailAdapter(
        "email-311",
        {
            "smtp_host": "127.0.0.1",
            "smtp_port": free_port(),
            "to": "desk@example.org",
            "state_dir": str(tmp_path),
        },
        mapping,
    )

    with pytest.raises(TransientError, match="ConnectionRefusedError"):
        adapter.submit(a_request())
    health = adapter.check()
    assert not health.ok and "ConnectionRefusedError" in health.detail


def test_check_is_ok_against_the_mailbox(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    health = adapter_for(mailbox, mapping, tmp_path / "state").check()
    assert health.ok, health.detail


def test_the_mailbox_keeps_messages_across_a_restart(mapping: Mapping, tmp_path: Path) -> None:
    with simulator("mailbox", tmp_path / "sandbox") as first:
        assert isinstance(first, MailboxServer)
        adapter_for(first, mapping, tmp_path / "state").submit(a_request("GRAFFITI"))
    with simulator("mailbox", tmp_path / "sandbox") as second:
        listed = control(second, "GET", "/messages")

    assert len(listed) == 1 and listed[0]["message_id"].endswith("@civicbus.local>")


class _AnswersQuitWith:
    """aiosmtpd hooks: accept every message, then answer QUIT with `reply` instead of 221."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.delivered: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.delivered.append(envelope.original_content or b"")
        return "250 2.0.0 Message accepted for delivery"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return self.reply


@pytest.mark.parametrize("reply", ["421 4.4.2 Closing, idle timeout", "554 5.0.0 Bye"])
def test_a_message_accepted_is_sent_once_whatever_the_answer_to_quit(
    reply: str, mapping: Mapping, tmp_path: Path
) -> None:
    """Once DATA is answered 250 the mail is delivered: the answer to QUIT failed the submit
    (before the sent-log was written), so a redelivery sent it again or dead-lettered it."""
    server = _AnswersQuitWith(reply)
    controller = FreePortController(server, hostname="127.0.0.1", port=0, ready_timeout=10)
    controller.start()
    try:
        adapter = EmailAdapter(
            "email-311",
            {
                "smtp_host": "127.0.0.1",
                "smtp_port": controller.port,
                "to": "311-desk@sandbox.example",
                "state_dir": str(tmp_path),
                "timeout": 5,
            },
            mapping,
        )
        request = a_request("GRAFFITI")

        first = adapter.submit(request)
        again = adapter.submit(request)  # a redelivery of the same command
    finally:
        controller.stop()

    assert first.created and not again.created and again.reference == first.reference
    found = adapter.find(request.id)
    assert found is not None and found.reference == first.reference
    assert len(server.delivered) == 1
