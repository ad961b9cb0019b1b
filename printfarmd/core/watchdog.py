"""Stuck-job rules (pure). Time here is monotonic seconds, never wall-clock time, so a
clock jump can neither make every job look stuck nor hide a stuck one."""

from __future__ import annotations

from collections.abc import Mapping, Set

import msgspec

from printfarmd.core import retry as retry_rules
from printfarmd.models import Job, JobEvent


class Stuck(msgspec.Struct, frozen=True):
    job_id: str
    idle_for: float


def find_stuck(
    last_progress: Mapping[str, float], paused: Set[str], now: float, threshold: float
) -> list[Stuck]:
    """Printing jobs whose last progress is older than ``threshold``; paused ones never."""
    return [
        Stuck(job_id, now - at)
        for job_id, at in sorted(last_progress.items())
        if job_id not in paused and now - at >= threshold
    ]


def requeue_or_fail(
    job: Job,
    idle_for: float,
    policy: retry_rules.RetryPolicy,
    now: float,
    reason: str | None = None,
) -> list[tuple[JobEvent, Job]]:
    """The transitions for a stuck printing ``job`` at wall time ``now``.

    Below the retry limit: FAILED then straight back to QUEUED (retry count + 1), with the
    last printed position kept in ``resume_progress`` for a printer that can resume. At the
    limit: FAILED with "max retries reached". The caller commits them in one transaction.
    ``reason`` replaces the watchdog's own (a daemon of a cluster that stopped, issue 18).
    """
    if reason is None:
        reason = f"watchdog: no progress for {idle_for:.0f} s at {job.progress:.1f}%"
    failed = retry_rules.fail(job, reason, job.printer_id, policy, now)
    if failed.retry_at is None:
        return [(JobEvent.FAIL, failed)]
    failed = msgspec.structs.replace(failed, retry_at=now, resume_progress=job.progress)
    return [(JobEvent.FAIL, failed), (JobEvent.RETRY, retry_rules.retry(failed, now))]
