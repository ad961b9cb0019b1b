"""The notifier: tells the operator, through every configured channel, that a job
failed for good (webhook, email, MQTT event), and keeps a delivery log.

Rules (see docs/notifications.md):

- ``escalate(job)`` is what the scheduler calls after its commit. It only queues the
  job; it never blocks, never waits for I/O and never raises.
- **Persist first.** Each delivery (one per webhook URL, one email, one MQTT event) is
  stored ``pending`` before its first attempt, and every attempt updates the row, so
  ``GET /api/notifications`` shows what was sent and whether it arrived. Pending
  deliveries are resumed when the daemon starts again.
- A failed attempt (connection error, timeout, non-2xx answer, SMTP error) is logged at
  warning level and retried after ``retry_backoff`` until ``max_attempts``, then the
  delivery is ``failed``. Retries resend the same bytes under the same delivery id, so
  a receiver can drop duplicates (an attempt cut short by a shutdown may have arrived).
- smtplib is blocking: it runs in a worker thread, never on the trio thread.
- Timers use the trio clock (tests run under ``autojump_clock``); stored times are
  UTC wall time.
"""

from __future__ import annotations

import functools
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import orjson
import trio

from printfarmd import __version__
from printfarmd.api.serialize import job_json
from printfarmd.api.upkeep_json import job_cost
from printfarmd.config import NotifyConfig
from printfarmd.core import notify
from printfarmd.core.farm.outputs import MaintenanceDue
from printfarmd.core.notify import Channel, Delivery, DeliveryPolicy, DeliveryStatus
from printfarmd.errors import FarmError
from printfarmd.models import Job
from printfarmd.store.store import Store
from printfarmd.store.upkeep import UpkeepStore

if TYPE_CHECKING:
    import smtplib
    from email.message import EmailMessage

    import httpx

log = logging.getLogger("printfarmd.notifier")

#: Escalations waiting to be recorded; beyond this (a storm of failures with a stuck
#: disk) further ones are logged and dropped rather than growing memory without bound.
QUEUE_SIZE = 1000
#: Attempts to record new deliveries before sending them unrecorded.
RECORD_TRIES = 5
#: SMTP conversations at once (each holds a worker thread).
SMTP_THREADS = 2
#: Settings key: escalations of jobs failed before this wall time are settled.
SETTLED_KEY = "notify_settled_at"
MQTT_NOT_AVAILABLE = "not available: this printfarmd has no MQTT connection for events"


class EventPublisher(Protocol):
    """Publishes one MQTT message; raises on failure (the MQTT hub provides this)."""

    async def publish(self, topic: str, payload: bytes) -> None: ...


#: Sends one email, blocking (called in a worker thread): ``send_email`` by default.
MailSender = Callable[[NotifyConfig, "EmailMessage"], None]


def send_email(
    config: NotifyConfig,
    message: EmailMessage,
    *,
    smtp_factory: Callable[..., smtplib.SMTP] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Send ``message`` through ``config.smtp_host`` (``smtp_factory``: ``smtplib.SMTP``).
    Blocking: run it in a thread.

    STARTTLS (with certificate checks) when ``smtp_starttls``; login when
    ``smtp_username`` is set; every socket operation bounded by ``smtp_timeout``.
    Raises ``smtplib.SMTPException`` or ``OSError``.
    """
    import smtplib  # issue 17: loaded by the first email, not at start

    factory = smtp_factory if smtp_factory is not None else smtplib.SMTP
    with factory(config.smtp_host, config.smtp_port, timeout=config.smtp_timeout) as smtp:
        smtp.ehlo()
        if config.smtp_starttls:
            smtp.starttls(context=ssl_context or ssl.create_default_context())
            smtp.ehlo()
        if config.smtp_username:
            smtp.login(config.smtp_username, config.smtp_password)
        smtp.send_message(message)


def new_delivery_id() -> str:
    return secrets.token_hex(8)


class _Target(msgspec.Struct, frozen=True):
    channel: Channel
    address: str
    target: str


class Notifier:
    """The escalation service. Start with ``nursery.start(notifier.run)`` before the
    scheduler, and give the scheduler ``notifier.escalate``."""

    def __init__(
        self,
        *,
        config: NotifyConfig,
        store: Store,
        transport: httpx.AsyncBaseTransport | None = None,
        send_mail: MailSender = send_email,
        mqtt: EventPublisher | None = None,
        wall: Callable[[], float] = time.time,
        currency: str = "EUR",
    ) -> None:
        self.config = config
        self.store = store
        self.policy = DeliveryPolicy(config.max_attempts, tuple(config.retry_backoff))
        self._transport = transport
        self._send_mail = send_mail
        self._mqtt = mqtt
        self._wall = wall
        self._send, self._recv = trio.open_memory_channel[Job | MaintenanceDue](QUEUE_SIZE)
        self._smtp_limiter = trio.CapacityLimiter(SMTP_THREADS)
        self._http: httpx.AsyncClient | None = None
        #: (issue 16) The currency of the job costs in ``job.failed`` events.
        self.currency = currency

    def targets(self) -> list[_Target]:
        """Every configured destination of an escalation."""
        c = self.config
        out = [_Target(Channel.WEBHOOK, url, notify.redact_url(url)) for url in c.webhook_urls]
        if c.email_to:
            rcpt = notify.recipients_address(c.email_to)
            out.append(_Target(Channel.EMAIL, rcpt, rcpt))
        if c.mqtt_topic:
            out.append(_Target(Channel.MQTT, c.mqtt_topic, c.mqtt_topic))
        return out

    # ------------------------------------------------------------------ the scheduler's side

    def escalate(self, job: Job) -> None:
        """Queue ``job`` (failed for good) for notification. Never blocks, never raises,
        not a checkpoint."""
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            log.error("escalation dropped: too many waiting", extra={"job": job.id})
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            log.error("escalation dropped: the notifier has stopped", extra={"job": job.id})
        except Exception:  # never let a notification problem reach the scheduler
            log.exception("escalation dropped", extra={"job": job.id})

    def maintenance_due(self, due: MaintenanceDue) -> None:
        """(issue 16) Queue a maintenance notice for ``due.printer_id``. Never blocks,
        never raises, not a checkpoint. Each crossing is notified once per target, even
        across restarts (its delivery ids are derived from it)."""
        try:
            self._send.send_nowait(due)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            log.error("maintenance notice dropped", extra={"printer": due.printer_id})
        except Exception:  # never let a notification problem reach the owner
            log.exception("maintenance notice dropped", extra={"printer": due.printer_id})

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resume pending deliveries, report ready, then serve escalations until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                await self._resume(nursery)
                task_status.started()
                async for item in self._recv:
                    if isinstance(item, MaintenanceDue):
                        await self._open_maintenance(item, nursery)
                    else:
                        await self._open(item, nursery)
        finally:
            if self._http is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._http.aclose()

    def _client(self) -> httpx.AsyncClient:
        """The webhook client, made (and httpx imported) on the first webhook: a farm's
        start needs neither (issue 17)."""
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(
                transport=self._transport,
                timeout=self.config.webhook_timeout,
                headers={"User-Agent": f"printfarmd/{__version__}"},
                follow_redirects=False,
            )
        return self._http

    async def _resume(self, nursery: trio.Nursery) -> None:
        configured = {(t.channel, t.address) for t in self.targets()}
        try:
            pending = await self.store.pending_deliveries()
        except FarmError as exc:
            log.error("pending notifications not read", extra={"reason": exc.message})
            return
        now = self._wall()
        for d in pending:
            if d.channel is Channel.MQTT and self._mqtt is None:
                await self._save(notify.give_up(d, MQTT_NOT_AVAILABLE, now))
            elif (d.channel, d.address) not in configured:
                await self._save(notify.give_up(d, "channel no longer configured", now))
            else:
                log.info(
                    "notification resumed",
                    extra={"delivery": d.id, "channel": d.channel.value, "attempt": d.attempts},
                )
                nursery.start_soon(self._deliver, d)
        await self._recover_lost(nursery, now)
        await self._recover_maintenance(nursery)

    async def _recover_maintenance(self, nursery: trio.Nursery) -> None:
        """(issue 16) Printers due for maintenance whose notice a crash lost between the
        owner's commit and ours get it now (notices already recorded are skipped)."""
        try:
            due = await UpkeepStore(self.store).due_printers()
        except FarmError as exc:
            log.error("maintenance notices not checked", extra={"reason": exc.message})
            return
        for printer_id, reason, at in due:
            await self._open_maintenance(MaintenanceDue(printer_id, reason, at), nursery)

    def _plan_maintenance(self, due: MaintenanceDue, now: float) -> list[Delivery]:
        body = notify.maintenance_body(due.printer_id, due.reason, due.at, now).decode()
        mail = notify.maintenance_email(due.printer_id, due.reason, due.at)
        out: list[Delivery] = []
        for t in self.targets():
            d = Delivery(
                id=notify.maintenance_delivery_id(due.printer_id, due.at, t.channel, t.address),
                channel=t.channel,
                target=t.target,
                address=t.address,
                job_id=None,
                event=notify.EVENT_MAINTENANCE_DUE,
                payload=mail if t.channel is Channel.EMAIL else body,
                created_at=now,
                updated_at=now,
                next_attempt_at=now,
            )
            if t.channel is Channel.MQTT and self._mqtt is None:
                d = notify.give_up(d, MQTT_NOT_AVAILABLE, now)
            out.append(d)
        return out

    async def _open_maintenance(self, due: MaintenanceDue, nursery: trio.Nursery) -> None:
        deliveries = self._plan_maintenance(due, self._wall())
        if not deliveries:
            log.warning(
                "printer due for maintenance; no notification channel is configured",
                extra={"printer": due.printer_id},
            )
            return
        try:
            seen = await self.store.existing_deliveries([d.id for d in deliveries])
            deliveries = [d for d in deliveries if d.id not in seen]
            if deliveries:
                await self.store.add_deliveries(deliveries)
        except FarmError as exc:
            # Not recorded: the next start tries again (the printer is still due).
            log.error(
                "maintenance notice not recorded",
                extra={"printer": due.printer_id, "reason": exc.message},
            )
            return
        for d in deliveries:
            if d.status is DeliveryStatus.PENDING:
                nursery.start_soon(self._deliver, d)

    async def _recover_lost(self, nursery: trio.Nursery, now: float) -> None:
        """Escalate jobs that failed for good since the last start but have no delivery:
        a crash between the scheduler's commit and ours lost them. Then move the mark.

        The mark starts at the first start, so turning notifications on never sends a
        burst about old failures.
        """
        try:
            since = (await self.store.settings()).get(SETTLED_KEY)
            if since is not None and self.targets():
                lost = await self.store.unnotified_failures(float(since), notify.MAX_RETRIES_PREFIX)
                for job in lost:
                    log.warning("escalation recovered after a restart", extra={"job": job.id})
                    await self._open(job, nursery)
            await self.store.put_setting(SETTLED_KEY, now)
        except FarmError as exc:
            log.error("lost escalations not checked", extra={"reason": exc.message})

    def _plan(self, job: Job, now: float, extra: Mapping[str, Any] | None = None) -> list[Delivery]:
        """The new deliveries for one escalation (MQTT without a hub: failed at once).
        ``extra``: what ``GET /api/jobs/{id}`` adds to the job (issue 16: its cost)."""
        body = notify.event_body(job, {**job_json(job), **(extra or {})}, now).decode()
        mail = notify.email_payload(job, now)
        out: list[Delivery] = []
        for t in self.targets():
            d = Delivery(
                id=new_delivery_id(),
                channel=t.channel,
                target=t.target,
                address=t.address,
                job_id=job.id,
                event=notify.EVENT_JOB_FAILED,
                payload=mail if t.channel is Channel.EMAIL else body,
                created_at=now,
                updated_at=now,
                next_attempt_at=now,
            )
            if t.channel is Channel.MQTT and self._mqtt is None:
                d = notify.give_up(d, MQTT_NOT_AVAILABLE, now)
            out.append(d)
        return out

    async def _job_extra(self, job: Job) -> dict[str, Any]:
        """(issue 16) The job view's ``cost`` and ``waiting`` (a failed job waits for
        nothing), so the event's job is what the REST API shows."""
        try:
            usages = await UpkeepStore(self.store).usage_of_jobs([job.id])
        except FarmError as exc:
            log.warning("job cost not read for a notification", extra={"reason": exc.message})
            usages = {}
        return {"cost": job_cost(self.currency, usages.get(job.id, [])), "waiting": None}

    async def _open(self, job: Job, nursery: trio.Nursery) -> None:
        deliveries = self._plan(job, self._wall(), await self._job_extra(job))
        if not deliveries:
            log.warning(
                "job failed for good; no notification channel is configured",
                extra={"job": job.id},
            )
            return
        for n in range(1, RECORD_TRIES + 1):
            try:
                await self.store.add_deliveries(deliveries)
                break
            except FarmError as exc:
                log.error(
                    "notifications not recorded",
                    extra={"job": job.id, "try": n, "reason": exc.message},
                )
                if n < RECORD_TRIES:
                    await trio.sleep(n)
        # Past the last try the operator still hears of it; only the log row is missing.
        for d in deliveries:
            if d.status is DeliveryStatus.PENDING:
                nursery.start_soon(self._deliver, d)
            else:
                log.warning(
                    "notification not sent",
                    extra={
                        "delivery": d.id,
                        "channel": d.channel.value,
                        "job": job.id,
                        "reason": d.last_error,
                    },
                )

    async def _save(self, d: Delivery) -> None:
        try:
            await self.store.update_delivery(d)
        except FarmError as exc:
            # The next update writes every field again; the attempt itself stands.
            log.warning(
                "notification state not stored", extra={"delivery": d.id, "reason": exc.message}
            )

    async def _deliver(self, d: Delivery) -> None:
        """Attempt ``d`` until it is delivered or out of attempts, storing each outcome."""
        longest = max(self.policy.backoff, default=0.0)
        while d.status is DeliveryStatus.PENDING:
            if d.next_attempt_at is not None:
                # Capped: a wall clock set backwards must not park a delivery for days.
                delay = min(d.next_attempt_at - self._wall(), longest)
                if delay > 0:
                    await trio.sleep(delay)
            error = await self._attempt(d)
            d = notify.after_attempt(d, error, self.policy, self._wall())
            self._log_attempt(d, error)
            await self._save(d)

    def _log_attempt(self, d: Delivery, error: str | None) -> None:
        """One line per attempt; a failed one at warning level (error when it was the last)."""
        fields = {
            "delivery": d.id,
            "channel": d.channel.value,
            "target": d.target,
            "job": d.job_id,
            "attempt": d.attempts,
        }
        if d.status is DeliveryStatus.DELIVERED:
            log.info("notification delivered", extra=fields)
        elif d.status is DeliveryStatus.PENDING:
            retry_in = self.policy.delay(d.attempts)
            log.warning(
                "notification attempt failed",
                extra={**fields, "reason": error, "retry_in": retry_in},
            )
        else:
            log.error(
                "notification failed for good",
                extra={**fields, "reason": error, "max_attempts": self.policy.max_attempts},
            )

    async def _attempt(self, d: Delivery) -> str | None:
        """One attempt: ``None`` if it arrived, else why not. Raises only Cancelled."""
        try:
            if d.channel is Channel.WEBHOOK:
                return await self._post_webhook(d)
            if d.channel is Channel.EMAIL:
                return await self._send_email(d)
            return await self._publish_mqtt(d)
        except Exception as exc:  # a bug in one channel must not end the notifier
            log.exception("notification attempt crashed", extra={"delivery": d.id})
            return f"internal error: {type(exc).__name__}"

    async def _post_webhook(self, d: Delivery) -> str | None:
        client = self._client()
        import httpx

        body = d.payload.encode()
        headers = notify.webhook_headers(body, self.config.webhook_secret, d.id, d.event)
        try:
            resp = await client.post(d.address, content=body, headers=headers)
        except httpx.TimeoutException:
            return f"timed out after {self.config.webhook_timeout:g} s"
        except httpx.HTTPError as exc:
            # The message must not carry the full URL (tokens in its query).
            text = str(exc).replace(d.address, d.target) or "no detail"
            return f"{type(exc).__name__}: {text}"
        if 200 <= resp.status_code < 300:
            return None
        return f"HTTP {resp.status_code}"

    async def _send_email(self, d: Delivery) -> str | None:
        # issue 17: the email package (~0.75 MB) is loaded by the first email, not at start.
        import email.utils
        import smtplib
        from email.message import EmailMessage

        content = orjson.loads(d.payload)
        msg = EmailMessage()
        msg["Subject"] = content["subject"]
        msg["From"] = self.config.email_from
        msg["To"] = d.address
        msg["Date"] = email.utils.formatdate(d.created_at, usegmt=True)
        msg["Message-ID"] = email.utils.make_msgid(idstring=d.id, domain="printfarmd")
        msg[notify.DELIVERY_HEADER] = d.id
        msg.set_content(content["text"])
        try:
            await trio.to_thread.run_sync(
                functools.partial(self._send_mail, self.config, msg),
                limiter=self._smtp_limiter,
                abandon_on_cancel=True,
            )
        except (smtplib.SMTPException, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def _publish_mqtt(self, d: Delivery) -> str | None:
        if self._mqtt is None:
            return MQTT_NOT_AVAILABLE
        try:
            with trio.fail_after(self.config.webhook_timeout):
                await self._mqtt.publish(d.address, d.payload.encode())
        except trio.TooSlowError:
            return f"timed out after {self.config.webhook_timeout:g} s"
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None
