"""The email adapter passes the conformance kit against the sandbox mailbox (a real SMTP server).

It does not poll (`polls = False`), so the kit skips its `updates` checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from pathlib import Path

import pytest

pytest.register_assert_rewrite("civicbus.testing")

from backends_support import free_port, simulator  # noqa: E402

from adapters import Adapter, TransientError  # noqa: E402
from adapters.email import EmailAdapter  # noqa: E402
from adapters.mapping import parse_mapping  # noqa: E402
from civicbus.sandbox.mailbox import MailboxServer  # noqa: E402
from civicbus.testing import AdapterConformance, ConformanceTarget  # noqa: E402
from schemas.model import ServiceRequest  # noqa: E402

pytest_plugins = ["civicbus.testing"]
pytestmark = pytest.mark.timeout(60)

# As mappings/email-311.yaml, plus a per-service recipient: one service goes to an address in
# the reserved `.invalid` domain, which every mail server (and the mailbox) refuses with 550.
MAPPING = parse_mapping("""
adapter: email
fields:
  subject: {template: "[311] {service_name} ({id})", required: true}
  to: {from: service_code, lookup: {table: mailboxes}}
  description: {from: description}
tables:
  mailboxes: {NOWHERE: "desk@nowhere.invalid"}
""")


class EmailTarget(ConformanceTarget):
    """The email adapter against the mailbox; records are the .eml files it stored."""

    def __init__(
        self,
        mailbox: MailboxServer,
        sandbox_dir: Path,
        state_dir: Path,
        sent_log_url: str | None = None,
    ) -> None:
        self.mailbox = mailbox
        self.sandbox_dir = sandbox_dir
        self.state_dir = state_dir
        self.sent_log_url = sent_log_url

    def _settings(self, port: int) -> dict[str, object]:
        return {
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "to": "311-desk@sandbox.example",
            "state_dir": str(self.state_dir),
            "sent_log_url": self.sent_log_url,
            "timeout": 5,
        }

    def adapter(self) -> Adapter:
        return EmailAdapter("email-311", self._settings(self.mailbox.port), MAPPING)

    def rejected_request(self, request_id: str) -> ServiceRequest:
        return self.request(request_id, service_code="NOWHERE")

    @contextmanager
    def unreachable_adapter(self) -> Iterator[Adapter]:
        yield EmailAdapter("email-311", self._settings(free_port()), MAPPING)

    def records(self, request_id: str) -> int:
        files = (self.sandbox_dir / "mailbox").glob("*.eml")
        return sum(
            1
            for f in files
            if message_from_bytes(f.read_bytes())["X-Civicbus-Request-Id"] == request_id
        )


class TestEmailConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self, tmp_path: Path) -> Iterator[ConformanceTarget]:
        with simulator("mailbox", tmp_path / "sandbox") as running:
            assert isinstance(running, MailboxServer)
            yield EmailTarget(running, tmp_path / "sandbox", tmp_path / "state")

    def test_an_unreachable_backend_is_a_transient_error(
        self, conformance_target: ConformanceTarget
    ) -> None:
        # The kit's version also expects `find` to fail while SMTP is unreachable; this adapter's
        # `find` reads its sent-log (SMTP cannot be asked), so it answers instead.
        request = conformance_target.request(f"conformance-unreachable-{free_port()}")
        with conformance_target.unreachable_adapter() as adapter:
            with pytest.raises(TransientError) as caught:
                adapter.submit(request)
            assert request.reporter.email not in str(caught.value)
            assert adapter.find(request.id) is None


class TestEmailConformanceWithASharedSentLog(TestEmailConformance):
    """The same, with the sent-log in PostgreSQL, as the worker copies on several hosts share it."""

    @pytest.fixture
    def conformance_target(self, tmp_path: Path, postgres_url: str) -> Iterator[ConformanceTarget]:
        with simulator("mailbox", tmp_path / "sandbox") as running:
            assert isinstance(running, MailboxServer)
            yield EmailTarget(running, tmp_path / "sandbox", tmp_path / "state", postgres_url)
