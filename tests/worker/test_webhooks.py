"""Webhook subscriptions against the real broker and a real HTTP subscriber on loopback:
events wait while the subscriber is down and then arrive in order per request, signed."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pika
import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner
from worker_support import channel_on, new_request, queue_depth, wait_until

from adapters.webhook import DEFAULT_TIMEOUT, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify
from bus import subscriptions
from bus.broker.connection import connect
from bus.broker.topology import EVENTS_EXCHANGE, dead_queue, event_routing_key
from bus.cli import app
from bus.config import RetryPolicy
from bus.overview import Overview, take_overview
from bus.store import Store, StoreUnavailable, Subscription, Transaction
from bus.subscriptions import (
    BROKER_CONSUMER_TIMEOUT_S,
    SUBSCRIPTION_RETRY,
    Qualifiers,
    SubscriptionError,
    add_subscription,
    binding_key,
    check_pattern,
    declare,
    delete_queue,
    queue_name,
    remove_subscription,
    route_name,
    webhook_for,
)
from bus.worker import _events, run_subscriptions
from bus.worker._delivery import ATTEMPT_HEADER, FIRST_FAILURE_HEADER
from bus.worker._retry import SMALL_RETRY_AFTER, next_tier
from schemas.events import Envelope, EventType
from schemas.model import Status

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]

SECRET = "s3cret-for-tests"
QUICK = RetryPolicy(immediate_attempts=2, tiers=[0.2, 0.5], max_attempts=1000)


class Subscriber:
    """A real HTTP receiver on a loopback port; answers `status` and records what it got."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        self.answer_headers: dict[str, str] = {}
        self.answer_body = b""
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/civicbus"

    def start(self) -> None:
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if subscriber.status < 300:
                    subscriber.received.append((dict(self.headers), body))
                self.send_response(subscriber.status)
                for name, value in subscriber.answer_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(subscriber.answer_body)))
                self.end_headers()
                self.wfile.write(subscriber.answer_body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def events(self) -> list[dict[str, object]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    with socket.socket() as probe:  # a free port, left closed: the subscriber starts "down"
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sub = Subscriber(port)
    yield sub
    sub.stop()


@contextmanager
def webhook_worker(
    store: Store,
    amqp_url: str,
    policy: RetryPolicy = QUICK,
    *,
    refresh: float = 0.3,
    env: Mapping[str, str] | None = None,
) -> Iterator[None]:
    stop = threading.Event()
    env = {"TEST_WEBHOOK_SECRET": SECRET} if env is None else env
    thread = threading.Thread(
        target=run_subscriptions,
        args=(amqp_url, store),
        kwargs={"stop": stop, "env": env, "refresh": refresh, "policy": policy},
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive()


def publish_event(amqp_url: str, envelope: Envelope, qualifier: str) -> None:
    with channel_on(amqp_url) as ch:
        ch.confirm_delivery()
        ch.basic_publish(
            EVENTS_EXCHANGE,
            event_routing_key(envelope.type, qualifier),
            envelope.model_dump_json().encode(),
            properties=pika.BasicProperties(delivery_mode=2, message_id=envelope.id),
        )


def status_event(request_id: str, status: Status) -> Envelope:
    return Envelope(
        type=EventType.STATUS_CHANGED,
        subject=request_id,
        data={"id": request_id, "status": status.value},
        correlationid=request_id,
    )


def subscribe(store: Store, amqp_url: str, url: str, events: list[str]) -> int:
    subscription = add_subscription(store, url, events, secret_env="TEST_WEBHOOK_SECRET")
    with channel_on(amqp_url) as ch:
        declare(ch, subscription)
    return subscription.id


def test_a_subscriber_down_for_a_while_gets_every_event_in_order_signed(
    store: Store, amqp_url: str, subscriber: Subscriber
) -> None:
    sub_id = subscribe(store, amqp_url, subscriber.url, ["request.*"])
    first, second = new_request(store).subject, new_request(store).subject
    sequence = [
        (first, Status.INVESTIGATING),
        (second, Status.IN_PROGRESS),
        (first, Status.IN_PROGRESS),
        (second, Status.FIXED),
        (first, Status.CLOSED),
    ]
    for request_id, status in sequence:
        publish_event(amqp_url, status_event(request_id, status), status.value)

    with webhook_worker(store, amqp_url):
        # Down: connection refused, retried in place (never overtaken by later events).
        wait_until(
            lambda: any(e.action == "attempt" for e in store.audit_trail(first)),
            what="a failed delivery",
        )
        subscriber.start()
        wait_until(lambda: len(subscriber.received) == len(sequence), what="all events")

    got = [(e["subject"], e["data"]["status"]) for e in subscriber.events()]  # type: ignore[index]
    assert got == [(r, s.value) for r, s in sequence]
    for headers, body in subscriber.received:
        assert headers["Content-Type"] == "application/cloudevents+json; charset=utf-8"
        # W3C trace context: a receiver's tracing carries the request's trace on by itself.
        assert headers["traceparent"] == json.loads(body)["traceparent"]
        assert verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert not verify(
            "wrong-secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER]
        )
    delivered = [e for e in store.audit_trail(first) if e.action == "delivered"]
    assert len(delivered) == 3 and delivered[0].details["subscription"] == route_name(sub_id)
    assert queue_depth(amqp_url, f"civicbus.sub.{sub_id}") == 0


def test_events_outside_the_patterns_are_not_delivered(
    store: Store, amqp_url: str, subscriber: Subscriber
) -> None:
    subscriber.start()
    subscribe(store, amqp_url, subscriber.url, ["request.closed"])
    request_id = new_request(store).subject
    publish_event(amqp_url, status_event(request_id, Status.IN_PROGRESS), "in_progress")
    closed = status_event(request_id, Status.CLOSED).model_copy(update={"type": EventType.CLOSED})
    publish_event(amqp_url, closed, "closed")

    with webhook_worker(store, amqp_url):
        wait_until(lambda: subscriber.received, what="the closed event")

    assert [e["type"] for e in subscriber.events()] == ["civicbus.request.closed"]


def test_a_request_star_subscriber_is_told_of_a_take_down(
    store: Store, amqp_url: str, subscriber: Subscriber
) -> None:
    subscriber.start()
    subscribe(store, amqp_url, subscriber.url, ["request.*"])
    request_id = new_request(store).subject
    taken_down = Envelope(
        type=EventType.TAKEN_DOWN,
        subject=request_id,
        data={"id": request_id, "taken_down": {"description": True, "media": 0}},
        correlationid=request_id,
    )
    publish_event(amqp_url, taken_down, "POTHOLE")

    with webhook_worker(store, amqp_url):
        wait_until(lambda: subscriber.received, what="the taken_down event")

    [(headers, _)] = subscriber.received
    assert headers["X-Civicbus-Event-Id"] == taken_down.id
    assert [e["type"] for e in subscriber.events()] == ["civicbus.request.taken_down"]


def test_a_subscriber_refusing_an_event_dead_letters_it_without_announcing_it(
    store: Store, amqp_url: str, subscriber: Subscriber
) -> None:
    subscriber.status = 410
    subscriber.start()
    sub_id = subscribe(store, amqp_url, subscriber.url, ["request.*"])
    request_id = new_request(store).subject
    publish_event(amqp_url, status_event(request_id, Status.FIXED), "fixed")

    with webhook_worker(store, amqp_url):
        (letter,) = wait_until(lambda: store.dead_letters(route_name(sub_id)), what="dead letter")

    assert "HTTP 410" in letter.reason and letter.request_id == request_id
    assert not [r for r in store.pending_outbox() if r.envelope.type is EventType.DELIVERY_FAILED]
    assert queue_depth(amqp_url, f"civicbus.dead.{route_name(sub_id)}") == 1


@pytest.mark.parametrize(
    ("status", "headers", "body", "said"),
    [
        (
            302,
            {"Location": "https://hooks.example/v2/civicbus"},
            b"<html>moved</html>",
            "HTTP 302 to Location https://hooks.example/v2/civicbus",
        ),
        (422, {}, b'{"message": "unknown event type"}', "HTTP 422: unknown event type"),
    ],
)
def test_a_refused_event_is_dead_lettered_with_what_the_subscriber_said(
    status: int,
    headers: dict[str, str],
    body: bytes,
    said: str,
    store: Store,
    amqp_url: str,
    subscriber: Subscriber,
) -> None:
    subscriber.status, subscriber.answer_headers, subscriber.answer_body = status, headers, body
    subscriber.start()
    sub_id = subscribe(store, amqp_url, subscriber.url, ["request.*"])
    publish_event(amqp_url, status_event(new_request(store).subject, Status.FIXED), "fixed")

    with webhook_worker(store, amqp_url):
        (letter,) = wait_until(lambda: store.dead_letters(route_name(sub_id)), what="dead letter")

    assert letter.reason.endswith(said), letter.reason


def test_a_subscriber_down_past_the_whole_schedule_gets_the_event_dead_lettered(
    store: Store, amqp_url: str, subscriber: Subscriber
) -> None:
    # Rounds are retried in place, not through the retry tiers: no header counts them, the
    # dead letter must count them and date the first failed one itself.
    sub_id = subscribe(store, amqp_url, subscriber.url, ["request.*"])  # never started
    request_id = new_request(store).subject
    publish_event(amqp_url, status_event(request_id, Status.FIXED), "fixed")
    brief = RetryPolicy(immediate_attempts=1, tiers=[0.5], max_attempts=3)

    with webhook_worker(store, amqp_url, brief):
        (letter,) = wait_until(lambda: store.dead_letters(route_name(sub_id)), what="dead letter")

    rounds = [e for e in store.audit_trail(request_id) if e.action == "attempt"]
    assert [e.details["attempt"] for e in rounds] == [1, 2, 3]
    assert rounds[-1].details["next_delay_seconds"] is None
    assert queue_depth(amqp_url, f"civicbus.sub.{sub_id}") == 0
    [audited] = [e for e in store.audit_trail(request_id) if e.action == "dead_lettered"]
    first_failure = datetime.fromisoformat(str(audited.details["first_failure"]))
    with channel_on(amqp_url) as ch:
        _, properties, _ = ch.basic_get(dead_queue(route_name(sub_id)), auto_ack=True)
    assert letter.attempts == 3 and audited.details["attempts"] == 3
    assert letter.reason.startswith("gave up after 3 attempts; last error")
    # When round 1 failed (audited just after), not when the event was given up on.
    assert abs((first_failure - rounds[0].at).total_seconds()) < 0.3
    assert (letter.last_failed_at - first_failure).total_seconds() >= 0.9  # two 0.5 s waits
    assert letter.first_failed_at == first_failure  # what `dead list` shows
    assert properties.headers[ATTEMPT_HEADER] == 3
    assert datetime.fromisoformat(properties.headers[FIRST_FAILURE_HEADER]) == first_failure


def failing_attempt_audits(monkeypatch: pytest.MonkeyPatch, times: int) -> dict[str, int]:
    """Make the store refuse the audit entry of a failed try `times` times (a database
    restart); returns the count of refusals so far."""
    real = Transaction.audit
    refused = {"n": 0}

    def audit(self: Transaction, **entry: object) -> None:
        if entry["action"] == "attempt" and refused["n"] < times:
            refused["n"] += 1
            raise StoreUnavailable("database is restarting")
        real(self, **entry)  # type: ignore[arg-type]

    monkeypatch.setattr(Transaction, "audit", audit)
    return refused


def test_a_store_blip_while_auditing_a_failed_try_keeps_the_event_and_its_audit(
    store: Store, amqp_url: str, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub_id = subscribe(store, amqp_url, subscriber.url, ["request.*"])  # down at first
    request_id = new_request(store).subject
    publish_event(amqp_url, status_event(request_id, Status.IN_PROGRESS), "in_progress")
    refused = failing_attempt_audits(monkeypatch, times=1)

    with webhook_worker(store, amqp_url):
        wait_until(lambda: refused["n"] == 1, what="the refused audit entry")
        subscriber.start()
        wait_until(lambda: subscriber.received, what="the event")

    assert not store.dead_letters(route_name(sub_id))
    trail = store.audit_trail(request_id)
    attempts = [e.details["attempt"] for e in trail if e.action == "attempt"]
    assert attempts == list(range(1, len(attempts) + 1))  # the refused entry written later


def test_a_store_down_longer_than_the_audit_retries_requeues_the_event_instead_of_dead_lettering(
    store: Store, amqp_url: str, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub_id = subscribe(store, amqp_url, subscriber.url, ["request.*"])  # down at first
    request_id = new_request(store).subject
    publish_event(amqp_url, status_event(request_id, Status.IN_PROGRESS), "in_progress")
    monkeypatch.setattr(_events, "_AUDIT_PAUSES", (0.1,))
    refused = failing_attempt_audits(monkeypatch, times=3)  # outlasts one message's retries

    with webhook_worker(store, amqp_url):
        wait_until(lambda: refused["n"] == 3, what="the refused audit entries")
        subscriber.start()
        wait_until(lambda: subscriber.received, what="the event")

    assert not store.dead_letters(route_name(sub_id))
    assert queue_depth(amqp_url, f"civicbus.sub.{sub_id}") == 0


def test_a_subscription_whose_secret_is_not_set_waits_without_spinning(
    store: Store, amqp_url: str, subscriber: Subscriber
) -> None:
    subscriber.start()
    unset = add_subscription(store, subscriber.url, ["request.*"], secret_env="NOT_SET_HERE")
    with channel_on(amqp_url) as ch:
        declare(ch, unset)
    request_id = new_request(store).subject
    publish_event(amqp_url, status_event(request_id, Status.FIXED), "fixed")

    with capture_logs() as logs, webhook_worker(store, amqp_url):
        time.sleep(1.5)  # five refresh periods
        idle = [entry["event"] for entry in logs]
        subscribe(store, amqp_url, subscriber.url, ["request.*"])  # one it can deliver
        publish_event(amqp_url, status_event(request_id, Status.CLOSED), "closed")
        wait_until(lambda: subscriber.received, what="the new subscription's event")

    # Reported once; no connection made for a worker with nothing to consume.
    assert idle.count("webhook.not_configured") == 1
    assert "worker.consuming" not in idle and "worker.stopped" not in idle
    assert queue_depth(amqp_url, f"civicbus.sub.{unset.id}") == 2  # kept for later


def test_a_secret_variable_set_but_empty_sends_nothing_unsigned(
    store: Store, amqp_url: str, subscriber: Subscriber
) -> None:
    subscriber.start()
    empty = add_subscription(store, subscriber.url, ["request.*"], secret_env="EMPTY_SECRET")
    with channel_on(amqp_url) as ch:
        declare(ch, empty)
    publish_event(amqp_url, status_event(new_request(store).subject, Status.FIXED), "fixed")

    with capture_logs() as logs, webhook_worker(store, amqp_url, env={"EMPTY_SECRET": ""}):
        [refused] = wait_until(
            lambda: [e for e in logs if e["event"] == "webhook.not_configured"],
            what="the subscription refused",
        )
        time.sleep(1.0)  # three refresh periods: time enough for a POST, were one made

    assert subscriber.received == []
    assert "EMPTY_SECRET" in refused["error"] and "empty" in refused["error"]
    assert queue_depth(amqp_url, queue_name(empty.id)) == 1  # kept for when it is set
    with pytest.raises(SubscriptionError, match="EMPTY_SECRET"):
        webhook_for(empty, {"EMPTY_SECRET": ""})


CITY_CONFIG = """
jurisdictions: [{id: springfield.example, name: Springfield}]
routing: {default: desk}
instances:
  desk: {kind: memory}
"""


def consumers_of(amqp_url: str, queue: str) -> int:
    """The queue's consumers; 0 for a queue that does not exist (yet)."""
    try:
        with channel_on(amqp_url) as ch:
            return int(ch.queue_declare(queue=queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0


def test_a_subscription_added_while_the_worker_looks_gets_its_events(
    store: Store,
    amqp_url: str,
    subscriber: Subscriber,
    use_config: Callable[[str], dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_config(CITY_CONFIG)
    subscriber.start()
    real_declare_new = subscriptions.declare_new
    listed_while_declaring: list[int] = []

    def slow_declare_new(channel: Any, subscription: Subscription) -> None:
        # As slow as a busy broker: the worker looks at the list of subscriptions meanwhile,
        # and would consume the queue (a leftover's, then) if the subscription were on it.
        listed_while_declaring.extend(s.id for s in store.list_subscriptions())
        queue = queue_name(subscription.id)
        deadline = time.monotonic() + 1.5
        while consumers_of(amqp_url, queue) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        real_declare_new(channel, subscription)

    monkeypatch.setattr(subscriptions, "declare_new", slow_declare_new)
    with webhook_worker(store, amqp_url):
        added = CliRunner().invoke(
            app, ["subscriptions", "add", subscriber.url, "--events", "request.*"]
        )
        assert added.exit_code == 0, added.output
        publish_event(amqp_url, status_event(new_request(store).subject, Status.FIXED), "fixed")
        wait_until(lambda: subscriber.received, what="the new subscription's first event")

    assert listed_while_declaring == []  # not active before its queue is ready


def events_named(logs: list[MutableMapping[str, Any]], name: str) -> list[Any]:
    return [entry for entry in logs if entry["event"] == name]


def test_a_subscription_removed_while_the_worker_consumes_it_does_not_get_its_queue_back(
    store: Store, amqp_url: str, subscriber: Subscriber
) -> None:
    subscriber.start()
    kept = subscribe(store, amqp_url, subscriber.url, ["request.*"])
    removed = subscribe(store, amqp_url, subscriber.url, ["request.*"])

    # A long look period: the broker's cancel of the deleted queue's consumer comes first.
    with capture_logs() as logs, webhook_worker(store, amqp_url, refresh=10.0):
        wait_until(lambda: consumers_of(amqp_url, queue_name(removed)), what="its consumer")
        with channel_on(amqp_url) as ch:
            remove_subscription(store, removed, discard=lambda sid: delete_queue(ch, sid))
        wait_until(
            lambda: [e for e in events_named(logs, "worker.consuming") if len(e["queues"]) == 1],
            timeout=20,
            what="the worker to go on with the subscription kept",
        )
        publish_event(amqp_url, status_event(new_request(store).subject, Status.FIXED), "fixed")
        wait_until(lambda: subscriber.received, what="the kept subscription's event")

    assert consumers_of(amqp_url, queue_name(kept)) == 0  # stopped, not gone
    with pytest.raises(pika.exceptions.ChannelClosedByBroker), channel_on(amqp_url) as ch:
        ch.queue_declare(queue=queue_name(removed), passive=True)


def test_the_webhook_worker_stops_on_request_after_a_store_blip_in_its_watcher(
    store: Store, amqp_url: str, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscriber.start()
    subscribe(store, amqp_url, subscriber.url, ["request.*"])
    real = store.list_subscriptions
    looks = {"n": 0}

    def list_subscriptions(**kwargs: bool) -> list[Subscription]:
        looks["n"] += 1
        if looks["n"] == 2:  # the watcher's first look, while the consumer runs
            raise StoreUnavailable("database is restarting")
        return real(**kwargs)

    monkeypatch.setattr(store, "list_subscriptions", list_subscriptions)
    with capture_logs() as logs, webhook_worker(store, amqp_url):  # asserts it stops on request
        wait_until(lambda: looks["n"] >= 3, what="the watcher's next look")

    assert "webhook.subscriptions_unavailable" in [entry["event"] for entry in logs]


def readme_signature_check() -> Callable[[str, dict[str, str], bytes], bool]:
    """The receiver's check the README gives back-office systems, as it is written there."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?def civicbus_signature_ok.*?)```", readme, re.S)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["civicbus_signature_ok"]  # type: ignore[return-value]


def test_the_readme_signature_check_accepts_real_deliveries_only(
    store: Store, amqp_url: str, subscriber: Subscriber
) -> None:
    signature_ok = readme_signature_check()
    subscriber.start()
    subscribe(store, amqp_url, subscriber.url, ["request.*"])
    publish_event(amqp_url, status_event(new_request(store).subject, Status.FIXED), "fixed")
    with webhook_worker(store, amqp_url):
        ((headers, body),) = wait_until(lambda: subscriber.received, what="a delivery")

    assert signature_ok(SECRET, headers, body)
    assert not signature_ok("wrong-secret", headers, body)
    assert not signature_ok(SECRET, headers, body.replace(b"fixed", b"fixes"))
    old = str(int(headers[TIMESTAMP_HEADER]) - 301)  # correctly signed, but too old
    stale = {**headers, TIMESTAMP_HEADER: old, SIGNATURE_HEADER: sign(SECRET, old, body)}
    assert not signature_ok(SECRET, stale, body)
    unsigned = {k: v for k, v in headers.items() if k != SIGNATURE_HEADER}
    assert not signature_ok(SECRET, unsigned, body)
    # Forged headers are refused, not a crash of the receiver: a timestamp of non-ASCII digits
    # or of 5,000 (int() refuses both), a signature of non-ASCII text (compare_digest on str).
    for forged in (
        {TIMESTAMP_HEADER: "\u00b2"},
        {TIMESTAMP_HEADER: "1" * 5000},
        {SIGNATURE_HEADER: "sha256=\u00e9"},
    ):
        assert not signature_ok(SECRET, {**headers, **forged}, body), forged
        assert not verify(
            SECRET,
            {**headers, **forged}[TIMESTAMP_HEADER],
            body,
            {**headers, **forged}[SIGNATURE_HEADER],
        )


def test_signatures_cover_timestamp_and_body() -> None:
    signature = sign("k", "1700000000", b'{"a":1}')
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify("k", "1700000000", b'{"a":1}', signature, now=1700000010)
    assert not verify("k", "1700000001", b'{"a":1}', signature, now=1700000010)
    assert not verify("k", "1700000000", b'{"a":2}', signature, now=1700000010)
    assert not verify("k", "1700000000", b'{"a":1}', signature, now=1700009999)  # too old


@pytest.mark.parametrize(
    ("pattern", "key"),
    [
        ("request.*", "request.#"),
        ("request.closed", "request.closed.*"),
        ("request.status_changed.fixed", "request.status_changed.fixed"),
        ("*.created", "*.created.*"),
        ("request.#", "request.#"),
        ("request.closed.#", "request.closed.#"),
        ("request.*.fixed", "request.*.fixed"),
        ("#.closed", "#.closed.*"),
        ("#", "#"),
    ],
)
def test_event_patterns_become_amqp_topic_patterns(pattern: str, key: str) -> None:
    assert binding_key(pattern) == key
    assert check_pattern(pattern) == key


@pytest.mark.parametrize("pattern", ["", "request..closed", "request/created", "request.cl osed"])
def test_bad_event_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(SubscriptionError):
        binding_key(pattern)
    with pytest.raises(SubscriptionError):
        check_pattern(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        "bogus",
        "request",  # request.* would match; this only matches two-word keys, and there are none
        "request.bogus",
        "request.create.*",
        "requests.closed",
        "bogus.*",
        "request.closed.fixed.extra",
        "#.fixed",  # the word before the qualifier is an event type's
    ],
)
def test_patterns_that_match_no_event_are_refused_with_the_event_types(pattern: str) -> None:
    with pytest.raises(SubscriptionError, match="matches no event") as refused:
        check_pattern(pattern)
    assert all(t.short in str(refused.value) for t in EventType)


CITY = Qualifiers(instances=frozenset({"sap-roads", "parks"}), service_codes=frozenset({"POTHOLE"}))


@pytest.mark.parametrize(
    "pattern",
    [
        "request.status_changed.fixed",
        "request.closed.duplicate",
        "request.noted.in_progress",
        "request.created.POTHOLE",
        "request.taken_down.POTHOLE",
        "request.routed.sap-roads",
        "request.delivery_failed.parks",
        "request.*.fixed",
        "*.*.POTHOLE",
        "request.#.parks",
        "request.created.*",
        "request.submitted.#",
        "#",
    ],
)
def test_patterns_with_a_qualifier_the_city_has_are_accepted(pattern: str) -> None:
    assert check_pattern(pattern, CITY) == binding_key(pattern)


@pytest.mark.parametrize(
    ("pattern", "said"),
    [
        ("request.status_changed.bogus", "'bogus' is not a status"),
        ("request.noted.bogus", "'bogus' is not a status"),
        ("request.closed.in_progress", "'in_progress' is not a closing status"),
        (
            "request.created.NOSUCH",
            "'NOSUCH' is not a service code (add a new service to the config's catalogue",
        ),
        (
            "request.taken_down.NOSUCH",
            "'NOSUCH' is not a service code (add a new service to the config's catalogue",
        ),
        ("request.routed.parkz", "'parkz' is not an adapter instance"),
        ("request.#.parkz", "'parkz' is not a service code or an adapter instance or a status ("),
        ("#.delivery_failed.sub_3", "'sub_3' is not an adapter instance"),
    ],
)
def test_patterns_with_a_qualifier_no_event_carries_are_refused_naming_it(
    pattern: str, said: str
) -> None:
    with pytest.raises(SubscriptionError, match="matches no event") as refused:
        check_pattern(pattern, CITY)
    assert said in str(refused.value)
    if "status" in said:
        assert "fixed" in str(refused.value)  # what would be valid
    if "instance" in said:
        assert "parks, sap-roads" in str(refused.value)


def test_statuses_are_checked_even_without_the_citys_config() -> None:
    with pytest.raises(SubscriptionError, match="'bogus' is not a status"):
        check_pattern("request.status_changed.bogus")
    assert check_pattern("request.created.ANYTHING") == "request.created.ANYTHING"


def test_a_stored_pattern_that_matches_no_event_still_gets_its_binding() -> None:
    # Stored before patterns were checked: its queue is declared rather than the worker failing.
    assert binding_key("request.bogus") == "request.bogus.*"


def test_status_names_a_failing_subscriber_until_it_answers_again(
    store: Store, amqp_url: str, subscriber: Subscriber
) -> None:
    sub_id = subscribe(store, amqp_url, subscriber.url, ["request.*"])
    request_id = new_request(store).subject
    for status in (Status.INVESTIGATING, Status.FIXED):
        publish_event(amqp_url, status_event(request_id, status), status.value)

    def look() -> Overview:
        return take_overview(store, {}, lambda: connect(amqp_url))

    with webhook_worker(store, amqp_url):
        failing = wait_until(
            lambda: (o := look()).recipients[0].failing_since and o, what="a failing subscriber"
        )
        subscriber.start()
        wait_until(lambda: len(subscriber.received) == 2, what="both events")
        recovered = look()

    [sub] = failing.recipients
    assert sub.name == route_name(sub_id) and sub.last_error is not None
    [problem] = [p for p in failing.problems if "failing" in p]
    assert problem.startswith(f"{route_name(sub_id)}: its subscriber has been failing since ")
    assert sub.last_error in problem and "check the receiver" in problem
    assert recovered.recipients[0].failing_since is None
    assert not [p for p in recovered.problems if "failing" in p]


def test_the_subscription_retry_schedule_ends_before_the_broker_takes_the_event_back() -> None:
    # The worker holds a failing event unacknowledged through all its rounds; past RabbitMQ's
    # consumer timeout the broker would requeue it and the rounds would start again, for ever.
    policy = SUBSCRIPTION_RETRY
    waits = [next_tier(policy, attempt, asked_delay=1e9) for attempt in range(1, 100)]
    between_rounds = sum(delay for delay in waits if delay is not None)
    assert waits.count(None) and len([w for w in waits if w is not None]) == (
        policy.max_attempts - 1
    )
    # Each round: every POST times out, with the longest in-process Retry-After between them.
    one_round = (
        policy.immediate_attempts * DEFAULT_TIMEOUT
        + (policy.immediate_attempts - 1) * SMALL_RETRY_AFTER
    )
    worst_case = between_rounds + policy.max_attempts * one_round
    assert worst_case < 0.95 * BROKER_CONSUMER_TIMEOUT_S
