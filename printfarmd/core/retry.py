"""Retry and escalation rules: pure functions of the job, the policy and ``now``."""

from __future__ import annotations

import msgspec

from printfarmd.core.jobs import transition
from printfarmd.models import Job, JobEvent


class RetryPolicy(msgspec.Struct, frozen=True):
    """``max_retries`` retries after the first attempt, waiting ``backoff[i]`` seconds
    before retry ``i + 1`` (the last value repeats if there are more retries than values).
    """

    max_retries: int = 3
    backoff: tuple[float, ...] = (60.0, 300.0, 1500.0)

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based)."""
        if not self.backoff:
            return 0.0
        return self.backoff[min(retry_number - 1, len(self.backoff) - 1)]


def fail(job: Job, reason: str, printer_id: str | None, policy: RetryPolicy, now: float) -> Job:
    """Move ``job`` to FAILED for ``reason``; schedule a retry if the policy allows.

    The printer that failed it is remembered so a retry prefers another one. When
    retries are spent ``retry_at`` stays ``None`` and ``last_error`` says
    "max retries reached": the caller escalates.
    """
    failed = job.failed_printers
    if printer_id is not None and printer_id not in failed:
        failed = (*failed, printer_id)
    if job.retry_count < policy.max_retries:
        retry_at = now + policy.delay(job.retry_count + 1)
        return transition(
            job,
            JobEvent.FAIL,
            now,
            last_error=reason,
            failed_printers=failed,
            retry_at=retry_at,
        )
    return transition(
        job,
        JobEvent.FAIL,
        now,
        last_error=f"max retries reached: {reason}",
        failed_printers=failed,
        retry_at=None,
    )


def retry(job: Job, now: float) -> Job:
    """FAILED -> QUEUED for the next attempt (counts the retry)."""
    return transition(job, JobEvent.RETRY, now, retry_count=job.retry_count + 1)


def will_retry(job: Job) -> bool:
    """A FAILED job with a retry scheduled."""
    return job.retry_at is not None
