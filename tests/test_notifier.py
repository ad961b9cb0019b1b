"""Escalation (issue #5): a job that fails for good is reported through every channel.

Real parts: a real local SMTP server (aiosmtpd, in its own thread), a real local webhook
receiver (http.server, in a thread), the real daemon over real sockets. The retry and
backoff rules are checked under ``autojump_clock`` with an in-memory HTTP transport.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import http.server
import logging
import smtplib
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import attrs
import httpx
import msgspec
import orjson
import pytest
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from printfarmd.config import NotifyConfig, config_from_dict
from printfarmd.core import notify
from printfarmd.core.farm.outputs import InsertJob
from printfarmd.core.notify import Channel, Delivery, DeliveryPolicy, DeliveryStatus
from printfarmd.errors import ConfigError
from printfarmd.models import Job, JobState
from printfarmd.services.notifier import MQTT_NOT_AVAILABLE, Notifier, send_email
from printfarmd.store.store import Store
from tests.conftest import (
    LiveFarm,
    StoreTarget,
    free_port,
    live_farm,
    make_config,
    sim_printer,
)

SECRET = "webhook-secret-s3cr3t"
PASSWORD = "smtp-pa55word"


def failed_job(**kw: Any) -> Job:
    values: dict[str, Any] = {
        "id": "0123456789ABCDEF",
        "filename": "benchy_pla.gcode",
        "name": "Benchy",
        "state": JobState.FAILED,
        "retry_count": 1,
        "failed_printers": ("p1", "p2"),
        "last_error": "max retries reached: simulated failure at 42%",
        "created_at": 1_700_000_000.0,
        "updated_at": 1_700_000_100.0,
    }
    values.update(kw)
    return Job(**values)


# ------------------------------------------------------------------ real receivers


@attrs.define
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 in a thread; records every POST, answers 200."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Received] = []
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                received.append(Received(self.path, dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/farm"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class MailHandler:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes, bool]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.content,
                bool(session.authenticated),
            )
        )
        return "250 OK"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = data.login == b"farm" and data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535


@contextlib.contextmanager
def smtp_server(*, with_auth: bool = False) -> Iterator[tuple[int, MailHandler]]:
    """A real SMTP server (aiosmtpd) on a free 127.0.0.1 port; with login if asked."""
    handler = MailHandler()
    port = free_port()
    kw: dict[str, Any] = {}
    if with_auth:
        # Plain-text AUTH is fine on loopback in a test; production uses STARTTLS.
        kw = {"authenticator": _authenticator, "auth_require_tls": False}
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kw)
    controller.start()
    try:
        yield port, handler
    finally:
        controller.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@contextlib.asynccontextmanager
async def running_notifier(store: Store, **kw: Any) -> Any:
    async with trio.open_nursery() as nursery:
        notifier = Notifier(store=store, **kw)
        await nursery.start(notifier.run)
        yield notifier
        nursery.cancel_scope.cancel()


async def wait_deliveries(
    store: Store, done: Any, *, poll: float = 0.02, polls: int = 500
) -> list[Delivery]:
    """Poll the delivery log until ``done(rows)``. Bounded by a number of polls, not a
    trio deadline: under ``autojump_clock`` a deadline would be jumped to whenever every
    task waits on a worker thread (the store's), failing the test spuriously."""
    for _ in range(polls):
        rows, _ = await store.list_deliveries()
        if done(rows):
            return rows
        await trio.sleep(poll)
    raise AssertionError(f"deliveries never settled: {rows}")


def all_settled(rows: list[Delivery]) -> bool:
    return bool(rows) and all(d.status is not DeliveryStatus.PENDING for d in rows)


# ------------------------------------------------------------------ pure rules


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    import hashlib
    import hmac

    body = b'{"event":"job.failed"}'
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert notify.sign(body, SECRET) == f"sha256={expected}"
    assert notify.verify(body, SECRET, f"sha256={expected}")
    assert not notify.verify(body + b" ", SECRET, f"sha256={expected}")
    headers = notify.webhook_headers(body, SECRET, "d1")
    assert headers["X-Printfarmd-Delivery"] == "d1"
    assert "X-Printfarmd-Signature" not in notify.webhook_headers(body, "", "d1")


def test_after_attempt_retries_with_backoff_then_fails() -> None:
    policy = DeliveryPolicy(max_attempts=3, backoff=(10.0, 60.0))
    d = Delivery("d", Channel.WEBHOOK, "t", "a", "J", "job.failed", "{}")
    d = notify.after_attempt(d, "HTTP 503", policy, now=100.0)
    assert (d.status, d.attempts, d.next_attempt_at, d.last_error) == (
        DeliveryStatus.PENDING,
        1,
        110.0,
        "HTTP 503",
    )
    d = notify.after_attempt(d, "refused", policy, now=110.0)
    assert (d.status, d.attempts, d.next_attempt_at) == (DeliveryStatus.PENDING, 2, 170.0)
    d = notify.after_attempt(d, "refused", policy, now=170.0)
    assert (d.status, d.attempts, d.next_attempt_at) == (DeliveryStatus.FAILED, 3, None)
    ok = notify.after_attempt(
        msgspec.structs.replace(d, status=DeliveryStatus.PENDING), None, policy, 200.0
    )
    assert (ok.status, ok.delivered_at, ok.last_error) == (DeliveryStatus.DELIVERED, 200.0, None)
    assert [policy.delay(n) for n in (1, 2, 3, 9)] == [10.0, 60.0, 60.0, 60.0]


def test_event_and_email_content() -> None:
    job = failed_job()
    body = orjson.loads(notify.event_body(job, {"id": job.id}, 1_700_000_200.0))
    assert body == {
        "event": "job.failed",
        "job": {"id": job.id},
        "reason": "simulated failure at 42%",
        "at": "2023-11-14T22:16:40.000Z",
    }
    text = notify.email_text(job, 1_700_000_200.0)
    for part in (job.id, "benchy_pla.gcode", "p1, p2", "Attempts:   2", "simulated failure"):
        assert part in text
    assert job.id in notify.email_subject(job)


def test_redact_url_hides_credentials_and_query() -> None:
    assert (
        notify.redact_url("https://user:pw@hooks.example:8443/x/y?token=abc")
        == "https://hooks.example:8443/x/y?..."
    )
    assert notify.redact_url("http://127.0.0.1:9/a") == "http://127.0.0.1:9/a"


def test_notify_config_is_validated() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "notify": {
                    "webhook_urls": ["ftp://x", "http://ok.example/"],
                    "email_to": ["ops@example.com"],
                    "max_attempts": 0,
                    "retry_backoff": [-1.0],
                }
            }
        )
    lines = info.value.message.splitlines()
    assert "notify.webhook_urls[0]: expected an http:// or https:// URL with a host" in lines
    assert "notify.max_attempts: must be >= 1" in lines
    assert "notify.retry_backoff[0]: must be >= 0" in lines
    assert "notify.smtp_host: required when notify.email_to is set" in lines
    assert any(line.startswith("notify.email_from:") for line in lines)


class FakeSMTP:
    """Records the calls smtplib.SMTP would get (a TLS server is impractical here)."""

    calls: list[tuple[Any, ...]] = []

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.calls.append(("connect", host, port, timeout))

    def __enter__(self) -> FakeSMTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.append(("quit",))

    def ehlo(self) -> None:
        self.calls.append(("ehlo",))

    def starttls(self, context: Any = None) -> None:
        self.calls.append(("starttls", context is not None))

    def login(self, user: str, password: str) -> None:
        self.calls.append(("login", user, password))

    def send_message(self, msg: EmailMessage) -> None:
        self.calls.append(("send", msg["To"]))


def test_send_email_uses_starttls_then_login_when_configured() -> None:
    msg = EmailMessage()
    msg["To"] = "ops@example.com"
    cfg = NotifyConfig(
        smtp_host="mail.example",
        smtp_port=587,
        smtp_username="farm",
        smtp_password=PASSWORD,
        smtp_timeout=7.0,
    )
    FakeSMTP.calls = []
    send_email(cfg, msg, smtp_factory=FakeSMTP)
    assert FakeSMTP.calls == [
        ("connect", "mail.example", 587, 7.0),
        ("ehlo",),
        ("starttls", True),
        ("ehlo",),
        ("login", "farm", PASSWORD),
        ("send", "ops@example.com"),
        ("quit",),
    ]
    FakeSMTP.calls = []
    send_email(
        msgspec.structs.replace(cfg, smtp_starttls=False, smtp_username=""),
        msg,
        smtp_factory=FakeSMTP,
    )
    assert [c[0] for c in FakeSMTP.calls] == ["connect", "ehlo", "send", "quit"]


def test_send_email_logs_in_to_a_real_smtp_server() -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "farm@example.com", "ops@example.com", "hi"
    msg.set_content("body")
    with smtp_server(with_auth=True) as (port, handler):
        base = NotifyConfig(smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            send_email(
                msgspec.structs.replace(base, smtp_username="farm", smtp_password="wrong"), msg
            )
        send_email(msgspec.structs.replace(base, smtp_username="farm", smtp_password=PASSWORD), msg)
    assert len(handler.messages) == 1 and handler.messages[0][3] is True


# ------------------------------------------------------------------ the service, autojump clock


def flaky_transport(down_for: int, calls: list[tuple[float, httpx.Request]]) -> Any:
    """An in-memory receiver: connection refused ``down_for`` times, then 200."""

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append((trio.current_time(), request))
        if len(calls) <= down_for:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(200)

    return httpx.MockTransport(handler)


async def test_a_receiver_that_is_down_is_retried_with_backoff_and_logged(
    tmp_path: Path, store_target: StoreTarget, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="printfarmd.notifier")
    calls: list[tuple[float, httpx.Request]] = []
    seen_before_first_attempt: list[list[Delivery]] = []
    transport = flaky_transport(2, calls)
    inner = transport.handler

    third = trio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if not calls:  # persist first: the row exists, pending, before the first attempt
            seen_before_first_attempt.append((await store.list_deliveries())[0])
        response = await inner(request)
        if len(calls) == 3:
            third.set()
        return response  # type: ignore[no-any-return]

    cfg = NotifyConfig(
        webhook_urls=("http://hooks.example/farm?token=t0k3n",),
        webhook_secret=SECRET,
        retry_backoff=(10.0, 60.0),
        max_attempts=5,
    )
    async with (
        store_target.open() as store,
        running_notifier(
            store, config=cfg, transport=httpx.MockTransport(handler), wall=lambda: 1.7e9
        ) as notifier,
    ):
        start = trio.current_time()
        notifier.escalate(failed_job())
        # Wait without a deadline: while the notifier waits on the store's worker thread
        # the autojump clock then has nothing to jump to, so attempt times are exact.
        await third.wait()
        [d] = await wait_deliveries(store, all_settled, poll=1.0, polls=5000)
    assert [(d.status, d.attempts) for d in seen_before_first_attempt[0]] == [
        (DeliveryStatus.PENDING, 0)
    ]
    assert d.status is DeliveryStatus.DELIVERED and d.attempts == 3 and d.last_error is None
    assert d.target == "http://hooks.example/farm?..."  # the token is not shown
    # attempts at once, then 10 s and 60 s after each failure
    assert [t - start for t, _ in calls] == pytest.approx([0, 10, 70], abs=1e-6)
    bodies = {r.content for _, r in calls}
    assert len(bodies) == 1  # every attempt sends the same bytes, same id, same signature
    for _, r in calls:
        assert r.headers["X-Printfarmd-Delivery"] == d.id
        assert notify.verify(r.content, SECRET, r.headers["X-Printfarmd-Signature"])
    failures = [r for r in caplog.records if r.getMessage() == "notification attempt failed"]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.WARNING]
    assert [(r.delivery, r.channel, r.attempt) for r in failures] == [  # type: ignore[attr-defined]
        (d.id, "webhook", 1),
        (d.id, "webhook", 2),
    ]
    assert all("Connection refused" in r.reason for r in failures)  # type: ignore[attr-defined]
    assert "t0k3n" not in caplog.text


async def test_a_receiver_that_stays_down_ends_failed_after_max_attempts(
    tmp_path: Path, store_target: StoreTarget, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[float, httpx.Request]] = []
    cfg = NotifyConfig(
        webhook_urls=("http://hooks.example/a",), retry_backoff=(5.0,), max_attempts=3
    )
    async with (
        store_target.open() as store,
        running_notifier(store, config=cfg, transport=flaky_transport(99, calls)) as notifier,
    ):
        notifier.escalate(failed_job())
        [d] = await wait_deliveries(store, all_settled, poll=1.0, polls=5000)
    assert (d.status, d.attempts, len(calls)) == (DeliveryStatus.FAILED, 3, 3)
    assert d.last_error is not None and "Connection refused" in d.last_error
    [final] = [r for r in caplog.records if r.getMessage() == "notification failed for good"]
    assert final.levelno == logging.ERROR


async def test_pending_deliveries_resume_after_a_restart(
    tmp_path: Path, store_target: StoreTarget
) -> None:
    # Real clock: under autojump_clock the clock could jump past the 30 s backoff while
    # the test waits on the store's worker thread.
    calls: list[tuple[float, httpx.Request]] = []
    cfg = NotifyConfig(
        webhook_urls=("http://hooks.example/a",), retry_backoff=(30.0,), max_attempts=5
    )
    async with (
        store_target.open() as store,
        running_notifier(store, config=cfg, transport=flaky_transport(99, calls)) as notifier,
    ):
        notifier.escalate(failed_job())
        await wait_deliveries(store, lambda rows: rows and rows[0].attempts == 1)
        # the daemon stops during the backoff: the delivery stays pending, attempt 1 logged
    async with store_target.open() as store:
        [before] = await store.pending_deliveries()
        assert before.next_attempt_at is not None
        up: list[tuple[float, httpx.Request]] = []
        later = before.next_attempt_at + 1  # the restart happens after the attempt was due
        async with running_notifier(
            store, config=cfg, transport=flaky_transport(0, up), wall=lambda: later
        ):
            [d] = await wait_deliveries(store, all_settled)
        assert (d.id, d.status, d.attempts) == (before.id, DeliveryStatus.DELIVERED, 2)
        assert up[0][1].content == calls[0][1].content
        assert up[0][1].headers["X-Printfarmd-Delivery"] == d.id
        # a pending delivery whose target was removed from the config is closed, not sent
        await store.add_deliveries(
            [msgspec.structs.replace(before, id="gone", status=DeliveryStatus.PENDING)]
        )
        other = msgspec.structs.replace(cfg, webhook_urls=("http://elsewhere.example/",))
        sent: list[tuple[float, httpx.Request]] = []
        async with running_notifier(store, config=other, transport=flaky_transport(0, sent)):
            rows = await wait_deliveries(store, all_settled)
        gone = next(r for r in rows if r.id == "gone")
        assert gone.status is DeliveryStatus.FAILED and not sent
        assert gone.last_error == "channel no longer configured"


async def test_an_escalation_lost_in_a_crash_is_sent_at_the_next_start(
    tmp_path: Path, store_target: StoreTarget, autojump_clock: Any
) -> None:
    """The owner committed the failure but the daemon died before the notifier stored
    a delivery: the next start finds the job and escalates it, once. Failures from before
    notifications were first started are left alone."""
    cfg = NotifyConfig(webhook_urls=("http://hooks.example/a",))
    wall = [1_700_000_000.0]
    old = failed_job(id="00000000000000AA", updated_at=wall[0] - 3600)
    async with store_target.open() as store:
        await store.commit([InsertJob(old)])
        async with running_notifier(store, config=cfg, wall=lambda: wall[0]):
            pass  # first start: sets the mark, sends nothing about the old failure
        assert (await store.list_deliveries())[1] == 0
        lost = failed_job(id="00000000000000BB", updated_at=wall[0] + 60)
        await store.commit([InsertJob(lost)])  # ... and the crash: no delivery stored
        wall[0] += 120
        calls: list[tuple[float, httpx.Request]] = []
        async with running_notifier(
            store, config=cfg, wall=lambda: wall[0], transport=flaky_transport(0, calls)
        ):
            [d] = await wait_deliveries(store, all_settled, poll=1.0)
        async with running_notifier(store, config=cfg, wall=lambda: wall[0]):
            pass  # a third start finds nothing new
        assert (await store.list_deliveries())[1] == 1
    assert (d.job_id, d.status) == (lost.id, DeliveryStatus.DELIVERED)
    assert orjson.loads(calls[0][1].content)["job"]["id"] == lost.id


class FakeHub:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))


async def test_mqtt_channel_without_a_hub_is_logged_not_available(
    tmp_path: Path, store_target: StoreTarget, autojump_clock: Any
) -> None:
    cfg = NotifyConfig(mqtt_topic="farm/events/job_failed")
    async with store_target.open() as store:
        async with running_notifier(store, config=cfg) as notifier:
            notifier.escalate(failed_job())
            [d] = await wait_deliveries(store, all_settled, poll=1.0, polls=5000)
        assert (d.channel, d.status, d.attempts) == (Channel.MQTT, DeliveryStatus.FAILED, 0)
        assert d.last_error == MQTT_NOT_AVAILABLE
        hub = FakeHub()
        async with running_notifier(store, config=cfg, mqtt=hub) as notifier:
            notifier.escalate(failed_job(id="FEDCBA9876543210"))
            rows = await wait_deliveries(
                store, lambda rows: len(rows) == 2 and all_settled(rows), poll=1.0
            )
    assert rows[0].status is DeliveryStatus.DELIVERED
    [(topic, payload)] = hub.published
    assert topic == "farm/events/job_failed"
    assert orjson.loads(payload)["job"]["id"] == "FEDCBA9876543210"


async def test_escalate_never_blocks_or_raises(
    tmp_path: Path, store_target: StoreTarget, caplog: pytest.LogCaptureFixture
) -> None:
    async with store_target.open() as store:
        notifier = Notifier(config=NotifyConfig(webhook_urls=("http://x.example/",)), store=store)
        for _ in range(1500):  # nobody is receiving: the overflow is logged and dropped
            notifier.escalate(failed_job())
        notifier._send.close()
        notifier.escalate(failed_job())
    dropped = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert dropped.count("escalation dropped: too many waiting") == 500
    assert dropped.count("escalation dropped: the notifier has stopped") == 1


# ------------------------------------------------------------------ real sockets, real clock


async def test_real_receiver_down_then_up_and_one_that_stays_down(
    tmp_path: Path, store_target: StoreTarget
) -> None:
    late_port, dead_port = free_port(), free_port()
    cfg = NotifyConfig(
        webhook_urls=(f"http://127.0.0.1:{late_port}/late", f"http://127.0.0.1:{dead_port}/dead"),
        webhook_secret=SECRET,
        webhook_timeout=2.0,
        retry_backoff=(0.2,),
        max_attempts=4,
    )
    late: WebhookReceiver | None = None
    try:
        async with (
            store_target.open() as store,
            running_notifier(store, config=cfg) as notifier,
        ):
            notifier.escalate(failed_job())
            await wait_deliveries(store, lambda rows: any(r.attempts >= 1 for r in rows))
            late = WebhookReceiver(late_port)  # the receiver comes up
            rows = await wait_deliveries(store, lambda r: len(r) == 2 and all_settled(r))
        by_path = {r.target.rsplit("/", 1)[1]: r for r in rows}
        assert by_path["late"].status is DeliveryStatus.DELIVERED
        assert by_path["late"].attempts >= 2
        assert by_path["dead"].status is DeliveryStatus.FAILED
        assert by_path["dead"].attempts == 4
        assert "ConnectError" in (by_path["dead"].last_error or "")
        [got] = late.requests
        assert notify.verify(got.body, SECRET, got.headers["X-Printfarmd-Signature"])
    finally:
        if late is not None:
            late.close()


async def test_escalation_reaches_real_smtp_and_webhook_end_to_end(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """A farm whose only printer always fails: after the last retry the job is failed and
    the operator hears of it by webhook and by email; the API lists both delivered."""
    with smtp_server() as (smtp_port, mail):
        notify_cfg = NotifyConfig(
            webhook_urls=(receiver.url + "?token=t0k3n",),
            webhook_secret=SECRET,
            retry_backoff=(0.1,),
            max_attempts=3,
            smtp_host="127.0.0.1",
            smtp_port=smtp_port,
            smtp_starttls=False,
            smtp_password="",
            email_from="farm@example.com",
            email_to=("ops@example.com", "owner@example.com"),
        )
        config = make_config(
            tmp_path,
            (sim_printer("p1", failure_rate=1.0, auto_clear=True),),
            max_retries=1,
            retry_backoff=(0.1,),
        )
        async with live_farm(msgspec.structs.replace(config, notify=notify_cfg)) as farm:
            r = await farm.client.post("/api/jobs", json={"filename": "keychain_any.gcode"})
            assert r.status_code == 201
            job_id = r.json()["jobs"][0]["id"]

            async def both_delivered() -> bool:
                body = (await farm.client.get("/api/notifications")).json()
                return body["total"] == 2 and all(
                    n["status"] == "delivered" for n in body["notifications"]
                )

            await farm.wait_for(both_delivered, within=30)
            job = (await farm.client.get(f"/api/jobs/{job_id}")).json()
            listing = await farm.client.get("/api/notifications")
            by_job = await farm.client.get(
                "/api/notifications", params={"job": job_id, "channel": "email"}
            )
            bad = await farm.client.get("/api/notifications", params={"status": "nope"})
            page = await farm.client.get("/api/notifications", params={"limit": 1, "offset": 1})
            await check_listing_is_authenticated(farm)

    assert job["state"] == "failed" and job["retry_count"] == 1
    assert job["last_error"].startswith("max retries reached: ")
    # the webhook: one POST, signed over its exact body, carrying the REST job JSON
    [post] = receiver.requests
    assert post.path == "/hooks/farm?token=t0k3n"
    assert notify.verify(post.body, SECRET, post.headers["X-Printfarmd-Signature"])
    event = orjson.loads(post.body)
    assert event["event"] == "job.failed" and event["job"] == job
    assert event["reason"] == job["last_error"].removeprefix("max retries reached: ")
    # the email: one message to both recipients naming the job, file, printers, attempts
    [(sender, rcpts, raw, _)] = mail.messages
    assert sender == "farm@example.com"
    assert sorted(rcpts) == ["ops@example.com", "owner@example.com"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert job_id in msg["Subject"]
    text = msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    for part in (job_id, "keychain_any.gcode", "Printers:   p1", "Attempts:   2"):
        assert part in text
    # the delivery log: both delivered, newest first, no secrets
    body = listing.json()
    assert body["total"] == 2
    rows = body["notifications"]
    assert {n["channel"] for n in rows} == {"webhook", "email"}
    for n in rows:
        assert n["job_id"] == job_id and n["attempts"] == 1 and n["last_error"] is None
        assert n["delivered_at"] is not None and n["event"] == "job.failed"
    webhook_row = next(n for n in rows if n["channel"] == "webhook")
    assert webhook_row["id"] == post.headers["X-Printfarmd-Delivery"]
    assert webhook_row["target"] == receiver.url + "?..."
    assert SECRET not in listing.text and "t0k3n" not in listing.text
    assert [n["channel"] for n in by_job.json()["notifications"]] == ["email"]
    assert page.json() == {"notifications": rows[1:], "total": 2}
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


async def check_listing_is_authenticated(farm: LiveFarm) -> None:
    async with httpx.AsyncClient(base_url=farm.url) as anon:
        assert (await anon.get("/api/notifications")).status_code == 401
