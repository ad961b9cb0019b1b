"""Small building blocks every decision module uses: moving a job through the state
machine with its records, changing a printer slot, arming timers."""

from __future__ import annotations

from typing import Any

import msgspec

from printfarmd.core.farm.outputs import (
    AppendEvent,
    ArmTimer,
    ForgetFile,
    Log,
    NewEvent,
    PutPrinter,
    TimerKind,
    UpdateJob,
)
from printfarmd.core.farm.state import Now, Slot, Tx
from printfarmd.core.jobs import transition
from printfarmd.errors import NotFound
from printfarmd.models import Job, JobEvent, JobState


def transition_event(
    old: Job | None, new: Job, event: JobEvent | None, reason: str | None
) -> NewEvent:
    data: dict[str, object] = {
        "event": event.value if event else "create",
        "retry_count": new.retry_count,
    }
    if new.state is JobState.FAILED:
        # Whether a retry follows (None: failed for good), so a reader of the log needs
        # no other source to tell a final failure from a retried one.
        data["retry_at"] = new.retry_at
    return NewEvent(
        type="job.transition",
        at=new.updated_at,
        job_id=new.id,
        printer_id=new.printer_id or (old.printer_id if old else None),
        from_state=old.state.value if old else None,
        to_state=new.state.value,
        reason=reason,
        data=data,
    )


def move(
    tx: Tx,
    job: Job,
    event: JobEvent,
    now: Now,
    reason: str | None = None,
    **changes: Any,
) -> Job:
    """``job`` moved by ``event`` (``InvalidTransition`` if the table forbids it), written
    only if the stored row is still in ``job.state``, with its event."""
    new = transition(job, event, now.wall, **changes)
    _write(tx, job, new, event, reason)
    return new


def moved(tx: Tx, old: Job, new: Job, event: JobEvent, reason: str | None) -> None:
    """Record an already computed transition ``old -> new`` (core rules built ``new``)."""
    _write(tx, old, new, event, reason)


def _write(tx: Tx, old: Job, new: Job, event: JobEvent, reason: str | None) -> None:
    tx.put_job(new)
    tx.record(UpdateJob(new, old.state), AppendEvent(transition_event(old, new, event, reason)))
    if old.state is JobState.PRINTING and new.state is not JobState.PRINTING:
        # (issue 16) An attempt ended: its usage, cost and the printer's counters go
        # into the same commit as the transition (after it: the history row is closed).
        from printfarmd.core.farm import upkeep

        upkeep.attempt_ended(tx, old, new)
    if event is not JobEvent.VALIDATE and event is not JobEvent.SLICE:
        tx.effect(
            Log(
                "info",
                "job state changed",
                {
                    "job": new.id,
                    "printer": new.printer_id or old.printer_id,
                    "state": new.state.value,
                    "from_state": old.state.value,
                    "reason": reason,
                },
            )
        )


def update_job(tx: Tx, old: Job, new: Job, event: NewEvent) -> None:
    """A change within a state (priority, front): written only if still in that state."""
    tx.put_job(new)
    tx.record(UpdateJob(new, old.state), AppendEvent(event))


def get_job(tx: Tx, job_id: str, snapshot: Job | None = None) -> Job:
    """The job as the farm sees it: live (or changed in this batch), else the stored
    ``snapshot`` the edge read. ``NotFound`` if neither has it."""
    job = tx.job(job_id)
    if job is None and snapshot is not None and snapshot.id == job_id:
        job = snapshot
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def get_slot(tx: Tx, printer_id: str) -> Slot:
    slot = tx.printer(printer_id)
    if slot is None:
        raise NotFound(f"printer {printer_id} not found")
    return slot


def set_slot(tx: Tx, slot: Slot, **changes: Any) -> Slot:
    new = msgspec.structs.replace(slot, **changes)
    tx.put_printer(new)
    return new


def remember(tx: Tx, slot: Slot, now: Now) -> None:
    """Store the slot's plate and maintenance flags (they survive restarts)."""
    tx.record(PutPrinter(slot.id, slot.plate_clear, slot.maintenance, now.wall))


def set_plate(tx: Tx, slot: Slot, clear: bool, now: Now) -> Slot:
    """Change the plate flag (stored) when it differs."""
    if slot.plate_clear == clear:
        return slot
    slot = set_slot(tx, slot, plate_clear=clear)
    remember(tx, slot, now)
    return slot


def arm_autoclear(tx: Tx, slot: Slot, now: Now) -> None:
    """A printer that clears its own plate does so after the cooldown."""
    if slot.config.auto_clear and not slot.plate_clear:
        at = now.mono + max(0.0, tx.settings.cooldown_seconds)
        tx.effect(ArmTimer(at, TimerKind.AUTOCLEAR, slot.id))


def forget_upload(tx: Tx, slot: Slot, job_id: str) -> None:
    """The job has left the printer: remove what the farm uploaded there (configurable)."""
    if slot.config.remove_uploads:
        tx.effect(ForgetFile(slot.id, job_id))


def arm_retry(tx: Tx, job: Job, now: Now) -> None:
    if job.state is JobState.FAILED and job.retry_at is not None:
        tx.effect(ArmTimer(now.mono + max(0.0, job.retry_at - now.wall), TimerKind.RETRY, job.id))


def release_slot(tx: Tx, slot: Slot, job_id: str) -> Slot:
    """``job_id`` no longer occupies ``slot`` (the watch on it ends)."""
    if slot.current_job != job_id:
        return slot
    return set_slot(
        tx,
        slot,
        current_job=None,
        confirmed=False,
        restored=False,
        start_acked_at=None,
        paused=False,
        eta=None,
    )
