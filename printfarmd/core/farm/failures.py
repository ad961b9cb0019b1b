"""Failures, retries and the stuck-job watchdog: what happens when a print goes wrong."""

from __future__ import annotations

import msgspec

from printfarmd.core import retry as retry_rules
from printfarmd.core import watchdog as watchdog_rules
from printfarmd.core.farm import common
from printfarmd.core.farm.outputs import Count, Escalate, Log, StopPrint
from printfarmd.core.farm.state import Now, Tx
from printfarmd.models import Job, JobEvent, JobState


def fail_printing(tx: Tx, job: Job, reason: str, printer_id: str | None, now: Now) -> Job:
    """The print of ``job`` failed for ``reason`` on ``printer_id``: FAILED, retried after
    the backoff while retries remain (on another printer if one fits), else failed for
    good and escalated. A print that had started leaves something on the plate."""
    new = msgspec.structs.replace(
        retry_rules.fail(job, reason, printer_id, tx.settings.policy, now.wall),
        resume_progress=0.0,
    )
    common.moved(tx, job, new, JobEvent.FAIL, new.last_error)
    slot = tx.printer(printer_id or "")
    if slot is not None and slot.current_job == job.id:
        started = slot.confirmed or slot.restored or slot.start_acked_at is not None
        slot = common.release_slot(tx, slot, job.id)
        if started:
            slot = common.set_plate(tx, slot, False, now)
            common.arm_autoclear(tx, slot, now)
        common.forget_upload(tx, slot, job.id)
    after_failure(tx, new, printer_id, reason, now)
    return new


def after_failure(tx: Tx, new: Job, printer_id: str | None, reason: str, now: Now) -> None:
    """Arm the retry, or escalate a job that failed for good."""
    if new.retry_at is not None:
        common.arm_retry(tx, new, now)
        tx.effect(
            Log(
                "warning",
                "job failed, will retry",
                {"job": new.id, "printer": printer_id, "reason": reason},
            )
        )
    else:
        tx.effect(Escalate(new))
        tx.effect(
            Log(
                "error",
                "job failed for good",
                {"job": new.id, "printer": printer_id, "reason": reason},
            )
        )


def retry_due(tx: Tx, job_id: str, now: Now) -> None:
    """A retry timer fired: a job still waiting for it goes back to the queue."""
    job = tx.job(job_id)
    if job is None or job.state is not JobState.FAILED or job.retry_at is None:
        return  # cancelled, or already handled
    if job.retry_at > now.wall + 1.0:
        # The timer fired early (the wall clock jumped back): wait the rest.
        common.arm_retry(tx, job, now)
        return
    new = retry_rules.retry(job, now.wall)
    common.moved(tx, job, new, JobEvent.RETRY, "retry")
    tx.effect(Count("retries"))


def sweep(tx: Tx, stale_threshold: float, now: Now) -> list[str]:
    """Requeue (or, with retries spent, fail) printing jobs whose printer showed no
    progress for ``stale_threshold`` monotonic seconds. Paused prints are never stuck.

    Each job's FAILED -> QUEUED and its printer's plate flag go into the same commit, so
    a crash leaves it either still assigned or requeued once. The printer is told to
    stop; if it prints the job when it comes back, the stray-print rule stops it again.
    """
    last: dict[str, float] = {}
    paused: set[str] = set()
    holder: dict[str, str] = {}
    for slot in tx.slots():
        jid = slot.current_job
        if jid is None:
            continue
        job = tx.job(jid)
        if job is None or job.state is not JobState.PRINTING:
            continue
        last[jid] = slot.last_progress_at
        holder[jid] = slot.id
        if slot.paused:
            paused.add(jid)
    acted: list[str] = []
    for item in watchdog_rules.find_stuck(last, paused, now.mono, stale_threshold):
        job = tx.job(item.job_id)
        if job is None or job.state is not JobState.PRINTING:
            continue
        steps = watchdog_rules.requeue_or_fail(job, item.idle_for, tx.settings.policy, now.wall)
        prev = job
        for event, nxt in steps:
            common.moved(tx, prev, nxt, event, nxt.last_error)
            prev = nxt
        held_by = tx.printer(holder[job.id])
        if held_by is not None:
            slot = common.release_slot(tx, held_by, job.id)
            # Whatever the silent printer did, its plate is not known to be clear.
            slot = common.set_plate(tx, slot, False, now)
            common.arm_autoclear(tx, slot, now)
            tx.effect(StopPrint(slot.id, job.id, "the watchdog took the job back"))
        tx.effect(Count("watchdog_actions"))
        if prev.state is JobState.QUEUED:
            tx.effect(
                Log(
                    "info",
                    "job requeued by watchdog",
                    {"job": job.id, "printer": job.printer_id, "reason": prev.last_error},
                )
            )
        else:
            tx.effect(Escalate(prev))
            tx.effect(
                Log(
                    "warning",
                    "job marked as error by watchdog",
                    {"job": job.id, "printer": job.printer_id, "reason": prev.last_error},
                )
            )
        acted.append(job.id)
    return acted
