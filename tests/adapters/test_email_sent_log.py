"""The email adapter's sent-log in a database the worker copies on several hosts share
(`sent_log_url`), against the sandbox mailbox and a real PostgreSQL; and the default SQLite file."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from backends_support import MAPPINGS, a_request, free_port, simulator
from structlog.testing import capture_logs

from adapters import TransientError
from adapters.email import EmailAdapter, message_id_for
from adapters.email._sentlog import SentLog
from adapters.mapping import Mapping, load_mapping
from civicbus.sandbox.mailbox import MailboxServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[MailboxServer]:
    with simulator("mailbox", tmp_path / "sandbox") as running:
        assert isinstance(running, MailboxServer)
        yield running


@pytest.fixture
def mapping() -> Mapping:
    return load_mapping(MAPPINGS / "email-311.yaml")


def on_host(
    host: str, mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, **settings: Any
) -> EmailAdapter:
    """The adapter as a worker on `host` builds it: each host has a state dir of its own."""
    return EmailAdapter(
        settings.pop("instance", "email-311"),
        {
            "smtp_host": mailbox.host,
            "smtp_port": mailbox.port,
            "to": "311-desk@sandbox.example",
            "state_dir": str(tmp_path / host),
            "timeout": 5,
            **settings,
        },
        mapping,
    )


def mailed(tmp_path: Path) -> list[str]:
    """The request ids of the messages the mailbox holds, one per message."""
    files = sorted((tmp_path / "sandbox" / "mailbox").glob("*.eml"))
    return [str(message_from_bytes(f.read_bytes())["X-Civicbus-Request-Id"]) for f in files]


def unreachable_postgres(password: str = "") -> str:
    secret = f":{password}" if password else ""
    return f"postgresql+psycopg://civicbus{secret}@127.0.0.1:{free_port()}/civicbus"


def test_a_message_sent_on_one_host_is_found_on_another_which_does_not_send_it(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, postgres_url: str
) -> None:
    host_a = on_host("a", mailbox, mapping, tmp_path, sent_log_url=postgres_url)
    host_b = on_host("b", mailbox, mapping, tmp_path, sent_log_url=postgres_url)
    request = a_request("GRAFFITI")

    first = host_a.submit(request)
    # A worker on host a was killed before the receipt was stored: host b gets the redelivery.
    found = host_b.find(request.id)
    again = host_b.submit(request)

    assert first.created
    assert found is not None and found.reference == first.reference
    assert not again.created and again.reference == first.reference
    assert mailed(tmp_path) == [request.id]


def test_the_store_s_database_url_serves_as_the_sent_log_s(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, postgres_url: str
) -> None:
    # One environment variable can name both: a plain postgresql:// URL means psycopg 3 to the
    # store, and its query_timeout is the store's own (psycopg would refuse it).
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://") + "?query_timeout=15"
    request = a_request("GRAFFITI")

    on_host("a", mailbox, mapping, tmp_path, sent_log_url=plain).submit(request)

    assert on_host("b", mailbox, mapping, tmp_path, sent_log_url=postgres_url).find(request.id)


def test_a_sent_log_database_that_is_down_is_transient_and_nothing_is_sent(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    adapter = on_host("a", mailbox, mapping, tmp_path, sent_log_url=unreachable_postgres())
    request = a_request("GRAFFITI")

    with pytest.raises(TransientError, match=f"request {request.id}: the sent-log cannot be used"):
        adapter.submit(request)
    with pytest.raises(TransientError, match="the sent-log cannot be used"):
        adapter.find(request.id)
    assert mailed(tmp_path) == []


def test_a_sent_log_that_can_be_read_but_not_written_sends_nothing(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, postgres_url: str
) -> None:
    """Had the message been sent before it was recorded, every redelivery would send it again."""
    on_host("a", mailbox, mapping, tmp_path, sent_log_url=postgres_url).find("req-0")  # the table
    read_only = sa.make_url(postgres_url).update_query_dict(
        {"options": "-c default_transaction_read_only=on"}
    )
    adapter = on_host("b", mailbox, mapping, tmp_path, sent_log_url=str(read_only))
    request = a_request("GRAFFITI")

    with pytest.raises(TransientError, match="read-only"):
        adapter.submit(request)
    assert mailed(tmp_path) == []


def test_the_password_of_the_sent_log_url_is_in_no_error_and_no_check(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    url = unreachable_postgres(password="s3cret-pw")
    adapter = on_host("a", mailbox, mapping, tmp_path, sent_log_url=url)

    with pytest.raises(TransientError) as caught:
        adapter.submit(a_request("GRAFFITI"))
    health = adapter.check()

    assert not health.ok and "sent-log at postgresql+psycopg://civicbus:***@" in health.detail
    assert "s3cret-pw" not in str(caught.value) and "s3cret-pw" not in health.detail


def test_check_says_where_a_shared_sent_log_is_and_that_it_answers(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, postgres_url: str
) -> None:
    health = on_host("a", mailbox, mapping, tmp_path, sent_log_url=postgres_url).check()
    assert health.ok and f"sent-log at {postgres_url} answers" in health.detail, health.detail


def test_a_sent_log_url_of_another_database_is_refused_when_the_adapter_is_built(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    for url, said in (
        ("mysql://civicbus:s3cret@db/civicbus", "mysql:// cannot hold the sent-log"),
        ("not a url", "not a database URL"),
    ):
        with pytest.raises(ValueError, match=f"email adapter email-311: sent_log_url: {said}"):
            on_host("a", mailbox, mapping, tmp_path, sent_log_url=url)


def test_a_message_another_worker_is_sending_now_is_retried_not_sent_twice(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, postgres_url: str
) -> None:
    request = a_request("GRAFFITI")
    # A worker on host a has claimed the message and is talking to the mail server.
    SentLog(postgres_url, "email-311").claim(
        request.id, message_id_for(request.id), datetime.now(UTC)
    )
    host_b = on_host("b", mailbox, mapping, tmp_path, sent_log_url=postgres_url)

    with pytest.raises(TransientError, match="another worker is sending its message"):
        host_b.submit(request)
    assert host_b.find(request.id) is None
    assert mailed(tmp_path) == []


def test_a_claim_left_by_a_worker_killed_mid_send_is_taken_over_and_sent(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, postgres_url: str
) -> None:
    request = a_request("GRAFFITI")
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    SentLog(postgres_url, "email-311").claim(request.id, message_id_for(request.id), long_ago)
    host_b = on_host("b", mailbox, mapping, tmp_path, sent_log_url=postgres_url)

    receipt = host_b.submit(request)

    assert receipt.created and mailed(tmp_path) == [request.id]
    assert host_b.find(request.id) == receipt.__class__(
        request.id, receipt.reference, created=False, status=receipt.status, at=receipt.at
    )


def test_a_message_the_server_refused_leaves_no_claim_so_the_retry_sends_at_once(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, postgres_url: str
) -> None:
    request = a_request("GRAFFITI")
    down = on_host("a", mailbox, mapping, tmp_path, sent_log_url=postgres_url,
                   smtp_port=free_port())  # fmt: skip
    with pytest.raises(TransientError, match="ConnectionRefusedError"):
        down.submit(request)

    assert on_host("b", mailbox, mapping, tmp_path, sent_log_url=postgres_url).submit(request)
    assert mailed(tmp_path) == [request.id]


def test_a_claim_that_cannot_be_released_is_logged_with_when_it_expires(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, postgres_url: str
) -> None:
    request = a_request("GRAFFITI")
    down = on_host("a", mailbox, mapping, tmp_path, sent_log_url=postgres_url,
                   smtp_port=free_port())  # fmt: skip
    down.sent_log.probe()  # the table is made
    # The sent-log takes the claim, then refuses to give it up (as a database gone read-only
    # between the two would): a real refusal, by a trigger.
    with sa.create_engine(postgres_url).begin() as db:
        db.exec_driver_sql(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'no deletes today'; END $$ LANGUAGE plpgsql"
        )
        db.exec_driver_sql(
            "CREATE TRIGGER no_release BEFORE DELETE ON email_sent "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    with capture_logs() as logs, pytest.raises(TransientError, match="ConnectionRefusedError"):
        down.submit(request)

    [kept] = [line for line in logs if line["event"] == "email.claim_kept"]
    assert kept["request_id"] == request.id and kept["expires_in_s"] == 50.0
    assert "no deletes today" in kept["error"]
    down.close()


def test_instances_sharing_a_sent_log_each_send_their_own_message(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, postgres_url: str
) -> None:
    # A request re-routed from one department's instance to another's is mailed to both.
    request = a_request("GRAFFITI")
    streets = on_host("a", mailbox, mapping, tmp_path, sent_log_url=postgres_url)
    parks = on_host("a", mailbox, mapping, tmp_path, sent_log_url=postgres_url, instance="parks")

    assert streets.submit(request).created and parks.submit(request).created
    assert mailed(tmp_path) == [request.id, request.id]


def test_the_sent_log_file_an_earlier_version_wrote_is_still_read(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path
) -> None:
    """Upgrading forgets no message sent before: a redelivery after the upgrade sends none."""
    request = a_request("GRAFFITI")
    (tmp_path / "a").mkdir()
    with sqlite3.connect(tmp_path / "a" / "sent.db") as db:
        db.execute(
            "CREATE TABLE sent (request_id TEXT PRIMARY KEY, "
            "message_id TEXT NOT NULL, sent_at TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO sent VALUES (?, ?, ?)",
            (request.id, message_id_for(request.id), "2026-11-20T09:30:00+00:00"),
        )
    adapter = on_host("a", mailbox, mapping, tmp_path)

    again = adapter.submit(request)

    assert not again.created and again.reference == message_id_for(request.id)
    assert again.at == datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    assert mailed(tmp_path) == []


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_of_workers_claiming_one_message_at_once_exactly_one_wins(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path}/sent.db"
        if database == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    # One sent-log each, as worker processes have: their tables are made as they start together.
    logs = [SentLog(url, "email-311") for _ in range(8)]
    start = threading.Barrier(len(logs))

    def claim(log: SentLog) -> bool:
        start.wait()
        for _ in range(20):  # a table made by another at the same moment: retried, as a worker does
            try:
                return log.claim("req-1", "<req-1@civicbus.local>", datetime.now(UTC)) is None
            except sa.exc.SQLAlchemyError:
                time.sleep(0.05)
        raise AssertionError("the sent-log never answered")

    with ThreadPoolExecutor(len(logs)) as pool:
        won = list(pool.map(claim, logs))
    for log in logs:
        log.close()

    assert won.count(True) == 1


def test_a_sent_log_that_does_not_answer_in_time_holds_the_request_back_and_sends_nothing(
    mailbox: MailboxServer, mapping: Mapping, tmp_path: Path, postgres_url: str
) -> None:
    adapter = on_host("a", mailbox, mapping, tmp_path, sent_log_url=postgres_url, timeout=1)
    adapter.sent_log.probe()  # the table is made
    # Another session (an operator's open transaction, a vacuum) holds the table: without a
    # limit, the worker would wait for it for as long as it is held.
    blocker = sa.create_engine(postgres_url)
    with blocker.connect() as other, other.begin():
        other.exec_driver_sql("LOCK TABLE email_sent IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(TransientError, match="sent-log cannot be used"):
            adapter.submit(a_request("GRAFFITI"))
    blocker.dispose()
    adapter.close()

    assert mailed(tmp_path) == []
