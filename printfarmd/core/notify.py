"""Escalation messages and delivery rules: pure functions, no I/O.

What the notifier sends when a job fails for good (its retries are spent), how a
webhook body is signed, what an email says, and what happens to a delivery after an
attempt (delivered, retried after a backoff, or failed for good). The service in
``printfarmd.services.notifier`` does the I/O around these.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import orjson

from printfarmd.models import Job

#: A job failed for good.
EVENT_JOB_FAILED = "job.failed"
#: (issue 16) A printer crossed a maintenance threshold.
EVENT_MAINTENANCE_DUE = "printer.maintenance_due"
#: Prefix ``core.retry.fail`` gives ``last_error`` when retries are spent.
MAX_RETRIES_PREFIX = "max retries reached: "
SIGNATURE_HEADER = "X-Printfarmd-Signature"
DELIVERY_HEADER = "X-Printfarmd-Delivery"
EVENT_HEADER = "X-Printfarmd-Event"


class Channel(enum.StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"
    MQTT = "mqtt"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Delivery(msgspec.Struct, frozen=True):
    """One message to one target, as stored (one row of the delivery log).

    ``address`` is where it really goes (the full webhook URL, the recipients, the
    MQTT topic) and never leaves the daemon; ``target`` is the same with secrets
    removed, for the API and the logs. ``payload`` is the exact content sent on every
    attempt (a webhook body, or the JSON of an email's subject and text), so a retry,
    even after a restart, sends the same bytes under the same delivery ``id``.
    Times are UTC Unix seconds.
    """

    id: str
    channel: Channel
    target: str
    address: str
    job_id: str | None
    event: str
    payload: str
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    delivered_at: float | None = None
    next_attempt_at: float | None = None


class DeliveryPolicy(msgspec.Struct, frozen=True):
    """At most ``max_attempts`` attempts; ``backoff[i]`` seconds after failed attempt
    ``i + 1`` (the last value repeats)."""

    max_attempts: int = 5
    backoff: tuple[float, ...] = (10.0, 60.0, 300.0, 900.0)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next."""
        if not self.backoff:
            return 0.0
        return self.backoff[min(max(attempt, 1) - 1, len(self.backoff) - 1)]


def after_attempt(
    delivery: Delivery, error: str | None, policy: DeliveryPolicy, now: float
) -> Delivery:
    """The delivery after one more attempt that succeeded (``error is None``) or failed.

    A failure with attempts left stays ``pending`` with ``next_attempt_at`` set by the
    backoff; the last failure is ``failed``. Counting is done here, once.
    """
    attempts = delivery.attempts + 1
    if error is None:
        return msgspec.structs.replace(
            delivery,
            status=DeliveryStatus.DELIVERED,
            attempts=attempts,
            last_error=None,
            updated_at=now,
            delivered_at=now,
            next_attempt_at=None,
        )
    if attempts >= policy.max_attempts:
        return msgspec.structs.replace(
            delivery,
            status=DeliveryStatus.FAILED,
            attempts=attempts,
            last_error=error,
            updated_at=now,
            next_attempt_at=None,
        )
    return msgspec.structs.replace(
        delivery,
        attempts=attempts,
        last_error=error,
        updated_at=now,
        next_attempt_at=now + policy.delay(attempts),
    )


def give_up(delivery: Delivery, error: str, now: float) -> Delivery:
    """The delivery failed for good without (another) attempt: ``error`` says why."""
    return msgspec.structs.replace(
        delivery,
        status=DeliveryStatus.FAILED,
        last_error=error,
        updated_at=now,
        next_attempt_at=None,
    )


# ------------------------------------------------------------------ message content


def iso(ts: float) -> str:
    """UTC ISO-8601 with milliseconds and ``Z`` (the REST API's timestamp form)."""
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def failure_reason(job: Job) -> str:
    """Why the job failed, without the "max retries reached" prefix."""
    error = job.last_error or "unknown error"
    return error.removeprefix(MAX_RETRIES_PREFIX)


def event_body(job: Job, job_json: Mapping[str, Any], now: float) -> bytes:
    """The JSON body of a ``job.failed`` event (webhook POST and MQTT payload).

    ``job_json`` is the job as the REST API shows it (the caller renders it, so the
    event and ``GET /api/jobs/{id}`` always agree).
    """
    return orjson.dumps(
        {
            "event": EVENT_JOB_FAILED,
            "job": dict(job_json),
            "reason": failure_reason(job),
            "at": iso(now),
        }
    )


def sign(body: bytes, secret: str) -> str:
    """The ``X-Printfarmd-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(body: bytes, secret: str, signature: str) -> bool:
    """Whether ``signature`` is the right ``X-Printfarmd-Signature`` for ``body``
    (constant-time comparison; what a receiver does)."""
    return hmac.compare_digest(sign(body, secret), signature)


def webhook_headers(
    body: bytes, secret: str, delivery_id: str, event: str = EVENT_JOB_FAILED
) -> dict[str, str]:
    """Headers of a webhook POST; the signature only when a secret is configured."""
    headers = {
        "Content-Type": "application/json",
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: event,
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    return headers


def email_subject(job: Job) -> str:
    label = job.name or job.filename
    return f"[printfarmd] job {job.id} failed: {label}"[:200]


def email_text(job: Job, now: float) -> str:
    """The plain-text body: the job, its file, the printers tried, attempts, last error."""
    printers = ", ".join(job.failed_printers) or "none"
    lines = [
        f"Print job {job.id} failed for good at {iso(now)}; it will not be retried.",
        "",
        f"Job:        {job.id}" + (f" ({job.name})" if job.name else ""),
        f"File:       {job.filename}",
        f"Printers:   {printers}",
        f"Attempts:   {job.retry_count + 1} (retries: {job.retry_count})",
        f"Last error: {failure_reason(job)}",
    ]
    if job.sku:
        lines.append(f"SKU:        {job.sku}")
    lines += [
        "",
        "Resubmit the job once the cause is fixed, or cancel it.",
        "-- printfarmd",
    ]
    return "\n".join(lines) + "\n"


def email_payload(job: Job, now: float) -> str:
    """What an email delivery stores: its subject and text, as JSON."""
    return orjson.dumps({"subject": email_subject(job), "text": email_text(job, now)}).decode()


def redact_url(url: str) -> str:
    """A webhook URL fit to show: no user or password, no query string or fragment
    (tokens often live there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    query = "?..." if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + query


def recipients_address(recipients: Sequence[str]) -> str:
    return ", ".join(recipients)


# ------------------------------------------------------------------ maintenance (issue 16)


def maintenance_delivery_id(printer_id: str, due_at: float, channel: str, address: str) -> str:
    """The delivery id of a maintenance notice: the same for the same crossing and target,
    so a notice recorded once is never recorded (or sent) again, even after a restart."""
    key = f"{printer_id}|{due_at!r}|{channel}|{address}".encode()
    return "m" + hashlib.sha256(key).hexdigest()[:15]


def maintenance_body(printer_id: str, reason: str, due_at: float, now: float) -> bytes:
    """The JSON body of a ``printer.maintenance_due`` event (webhook and MQTT)."""
    return orjson.dumps(
        {
            "event": EVENT_MAINTENANCE_DUE,
            "printer_id": printer_id,
            "reason": reason,
            "due_at": iso(due_at),
            "at": iso(now),
        }
    )


def maintenance_email(printer_id: str, reason: str, due_at: float) -> str:
    """What a maintenance email delivery stores: its subject and text, as JSON."""
    text = "\n".join(
        [
            f"Printer {printer_id} is due for maintenance since {iso(due_at)}: {reason}.",
            "",
            "It finished its print and takes no new job until the work is recorded:",
            f"  POST /api/printers/{printer_id}/maintenance",
            '  {"by": "<who>", "work": "<what was done>"}',
            "-- printfarmd",
        ]
    )
    subject = f"[printfarmd] printer {printer_id} is due for maintenance"[:200]
    return orjson.dumps({"subject": subject, "text": text + "\n"}).decode()
