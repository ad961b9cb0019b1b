"""What printers report, and what the farm makes of it.

Reports are facts; the farm decides. The rules:
- A printer whose state is unknown (no report yet, or OFFLINE: unreachable, or its
  firmware not ready) has not lost its job: nothing is decided for the job until the
  printer reports a real state. The watchdog alone acts on a long silence.
- A printer that accepted a job and reports idle (after the start grace, or once it had
  confirmed the job, or for a job held since before a restart) lost it: failure path.
- **Stray prints**: a printer that reports printing (or paused) anything but the job the
  farm gave it gets no farm job. If what it prints is a farm job (drivers report a job id
  only for files the farm uploaded) that was cancelled or moved elsewhere, it is told to
  stop — again every ``STRAY_STOP_INTERVAL`` seconds while it keeps reporting it — and
  each stop is logged as a ``printer.stray_stop`` event. A print the farm did not start
  leaves the plate not known clear.
"""

from __future__ import annotations

from printfarmd.core import eta as eta_rules
from printfarmd.core.farm import common, failures, fleet, power, spools
from printfarmd.core.farm.inputs import CommandResult, StartOutcome, StartResult
from printfarmd.core.farm.outputs import (
    AppendEvent,
    CapturePhoto,
    Log,
    NewEvent,
    PublishProgress,
    StopPrint,
)
from printfarmd.core.farm.state import (
    START_GRACE,
    STRAY_STOP_INTERVAL,
    Now,
    Slot,
    Tx,
)
from printfarmd.drivers.base import (
    DriverEvent,
    JobFailed,
    JobFinished,
    MaterialsReport,
    PlateCleared,
    StatusReport,
)
from printfarmd.models import Job, JobEvent, JobState, PrinterState

_BUSY = (PrinterState.PRINTING, PrinterState.PAUSED)


def on_driver_event(tx: Tx, ev: DriverEvent, now: Now) -> None:
    slot = tx.printer(ev.printer_id)
    if slot is None:
        return  # a printer removed meanwhile
    if isinstance(ev, StatusReport):
        on_status(tx, slot, ev, now)
    elif isinstance(ev, JobFinished):
        on_finished(tx, slot, ev.job_id, now)
    elif isinstance(ev, JobFailed):
        job = _held(tx, slot, ev.job_id)
        if job is not None:
            failures.fail_printing(tx, job, ev.reason, slot.id, now)
    elif isinstance(ev, PlateCleared):
        held = tx.job(slot.current_job or "")
        if held is None or held.state is not JobState.PRINTING:
            fleet.clear_plate(tx, slot, "printer", now)
    elif isinstance(ev, MaterialsReport):
        # What is loaded now (an AMS, say) is what routing goes by; the configured
        # materials stand when the printer names none.
        pairs = [
            (m.strip().upper(), (ev.colours[k] if k < len(ev.colours) else "").strip().upper())
            for k, m in enumerate(ev.materials)
            if m.strip()
        ]
        loaded = tuple(m for m, _ in pairs)
        colours = tuple(c for _, c in pairs) if any(c for _, c in pairs) else ()
        if (loaded, colours) != (slot.loaded, slot.loaded_colours):
            slot = common.set_slot(tx, slot, loaded=loaded, loaded_colours=colours)
        # Bound spools' materials and colours come first (core/farm/spools.py).
        spools.refresh_capabilities(tx, slot)


def _held(tx: Tx, slot: Slot, job_id: str) -> Job | None:
    """``job_id`` if it is printing on ``slot`` as far as the farm knows."""
    job = tx.job(job_id)
    if job is None or job.state is not JobState.PRINTING or job.printer_id != slot.id:
        return None
    return job


def on_status(tx: Tx, slot: Slot, r: StatusReport, now: Now) -> None:
    was_dispatchable = slot.dispatchable
    if slot.handing is not None and r.state is PrinterState.IDLE:
        # An idle report racing our start command is stale: keep the printer busy.
        slot = common.set_slot(tx, slot, message=r.message, known=True, updated_at=now.wall)
        _startup_progress(tx, now)
        return
    previous = slot.progress
    was = slot.reported
    slot = common.set_slot(
        tx,
        slot,
        reported=r.state,
        reported_job=r.job_id,
        progress=r.progress,
        remaining=r.remaining,
        message=r.message,
        updated_at=now.wall,
        known=True,
    )
    job = tx.job(slot.current_job or "")
    if job is not None and job.state is JobState.PRINTING and job.printer_id == slot.id:
        slot = _watch(tx, slot, job, r, previous, now)
    slot = _strays(tx, slot, r, now)
    if r.state is PrinterState.IDLE and was is not PrinterState.IDLE:
        held = tx.job(slot.current_job or "")
        if held is None or held.state is not JobState.PRINTING:
            # Idle again with a plate to clear (a finished job on it, or a print of its
            # own): a printer that clears itself does so after the cooldown (an earlier
            # timer may have found it still reporting its print).
            common.arm_autoclear(tx, slot, now)
    tx.effect(PublishProgress(slot.id))
    if slot.dispatchable and not was_dispatchable:
        tx.kick = True
    _startup_progress(tx, now)


def _watch(tx: Tx, slot: Slot, job: Job, r: StatusReport, previous: float, now: Now) -> Slot:
    """What a report means for the job the printer holds."""
    accepted = (
        slot.confirmed
        or slot.restored
        or (slot.start_acked_at is not None and now.mono - slot.start_acked_at > START_GRACE)
    )
    if r.job_id == job.id and r.state in _BUSY:
        paused = r.state is PrinterState.PAUSED
        changes: dict[str, object] = {"confirmed": True, "restored": False, "paused": paused}
        if paused or r.progress > previous or not slot.confirmed:
            changes["last_progress_at"] = now.mono
        if r.remaining is not None:
            changes["eta"] = now.wall + r.remaining
        elif job.started_at is not None and r.progress >= 1.0:
            elapsed = now.wall - job.started_at
            changes["eta"] = now.wall + elapsed * (100.0 - r.progress) / r.progress
        return common.set_slot(tx, slot, **changes)
    if r.state is PrinterState.IDLE and accepted:
        why = (
            f"printer {slot.id} no longer has the job after a restart (reports idle)"
            if slot.restored
            else f"printer {slot.id} went idle without finishing the job"
        )
        failures.fail_printing(tx, job, why, slot.id, now)
    elif r.state is PrinterState.ERROR:
        failures.fail_printing(
            tx, job, f"printer {slot.id} reports an error: {r.message or 'unknown'}", slot.id, now
        )
    elif r.state in _BUSY and accepted:
        what = f"job {r.job_id}" if r.job_id else "a print the farm did not start"
        failures.fail_printing(
            tx, job, f"printer {slot.id} is printing something else ({what})", slot.id, now
        )
    # OFFLINE (unreachable, firmware not ready): nothing is decided until it reports.
    return tx.printer(slot.id) or slot


def _strays(tx: Tx, slot: Slot, r: StatusReport, now: Now) -> Slot:
    """The stray-print rule (see the module docstring)."""
    if r.state not in _BUSY:
        if r.state is PrinterState.IDLE and slot.outside and slot.current_job is None:
            # It printed something of its own: the plate holds it.
            slot = common.set_slot(tx, slot, outside=False, stray_job=None, stray_stop_at=None)
            if slot.plate_clear:
                slot = common.set_plate(tx, slot, False, now)
                tx.record(
                    AppendEvent(
                        NewEvent(
                            "printer.plate_occupied",
                            now.wall,
                            printer_id=slot.id,
                            reason="it printed something the farm did not start",
                        )
                    )
                )
            common.arm_autoclear(tx, slot, now)
        elif slot.stray_job is not None and r.state is not PrinterState.OFFLINE:
            slot = common.set_slot(tx, slot, stray_job=None, stray_stop_at=None)
        return slot
    if r.job_id is not None and r.job_id == slot.current_job:
        return slot
    slot = common.set_slot(tx, slot, outside=True)
    if r.job_id is None:
        return slot  # someone printing by hand: leave it alone, give it no job
    due = (
        slot.stray_job != r.job_id
        or slot.stray_stop_at is None
        or now.mono - slot.stray_stop_at >= STRAY_STOP_INTERVAL
    )
    if due:
        stop_stray(tx, slot, r.job_id, "it prints a farm job that is not its own", now)
    return tx.printer(slot.id) or slot


def stop_stray(tx: Tx, slot: Slot, job_id: str, why: str, now: Now) -> Slot:
    """Tell ``slot`` to stop ``job_id`` and note it (rate-limited by the caller)."""
    slot = common.set_slot(tx, slot, stray_job=job_id, stray_stop_at=now.mono, outside=True)
    tx.effect(StopPrint(slot.id, job_id, why))
    # The job id goes in ``data``: the report may name a job the farm no longer has.
    tx.record(
        AppendEvent(
            NewEvent(
                "printer.stray_stop", now.wall, printer_id=slot.id, reason=why, data={"job": job_id}
            )
        )
    )
    tx.effect(
        Log(
            "warning",
            "printer told to stop a stray print",
            {"printer": slot.id, "job": job_id, "reason": why},
        )
    )
    return slot


def on_finished(tx: Tx, slot: Slot, job_id: str, now: Now) -> None:
    job = _held(tx, slot, job_id)
    if job is None:
        return  # a repeated or stale report: already handled
    common.move(tx, job, JobEvent.FINISH, now)
    slot = tx.printer(slot.id) or slot  # the attempt's end changed its counters
    slot = common.set_slot(
        tx, slot, progress=100.0, confirmed=True, restored=False, handing=None, eta=None
    )
    slot = common.set_plate(tx, slot, False, now)
    common.arm_autoclear(tx, slot, now)
    if job.started_at is not None:  # learn this printer's speed (core/eta.py)
        factor = eta_rules.learn(
            tx.speed_factor(slot.id), job.estimated_time, now.wall - job.started_at
        )
        if factor is not None:
            tx.set_speed_factor(slot.id, factor)
    tx.effect(CapturePhoto(slot.id, job.id, now.wall))
    common.forget_upload(tx, slot, job.id)
    tx.effect(Log("info", "job printed", {"job": job.id, "printer": slot.id}))
    tx.effect(PublishProgress(slot.id))


def on_start_result(tx: Tx, res: StartResult, now: Now) -> None:
    """A hand-over returned. Whatever changed meanwhile is settled here: a job cancelled
    (or moved) during the upload is stopped on the printer now."""
    slot = tx.printer(res.printer_id)
    if slot is None:
        return
    if slot.handing == res.job_id:
        slot = common.set_slot(tx, slot, handing=None)
        # (issue 16) a staggered start counts from the printer's answer
        power.start_settled(tx, slot.id, res.outcome is StartOutcome.ACCEPTED, now)
    job = tx.job(res.job_id)
    held = slot.current_job == res.job_id
    ours = held and job is not None and job.state is JobState.PRINTING
    if res.outcome is StartOutcome.ACCEPTED:
        if held and not ours:
            pass  # a short print already ended here before the answer came back
        elif ours:
            changes: dict[str, object] = {"start_acked_at": now.mono}
            if slot.reported is PrinterState.IDLE:
                # Until it reports the job, an idle report is taken as stale (START_GRACE).
                changes.update(reported=PrinterState.PRINTING, reported_job=res.job_id)
            common.set_slot(tx, slot, **changes)
        else:
            slot = stop_stray(
                tx, slot, res.job_id, "the job was cancelled while it was handed over", now
            )
            slot = common.set_plate(tx, slot, False, now)
            common.arm_autoclear(tx, slot, now)
            common.forget_upload(tx, slot, res.job_id)
    elif ours:
        assert job is not None
        if res.outcome is StartOutcome.FILE_ESCAPED:
            reason = f"file {job.filename}: {res.message}"
        else:
            reason = f"printer {slot.id} refused the job: {res.message}"
        failures.fail_printing(tx, job, reason, slot.id, now)
    tx.kick = True
    tx.effect(PublishProgress(slot.id))


def on_command_result(tx: Tx, res: CommandResult, now: Now) -> None:
    if not res.ok:
        tx.effect(
            Log(
                "warning",
                "printer command failed",
                {
                    "printer": res.printer_id,
                    "command": res.command,
                    "job": res.job_id,
                    "reason": res.message,
                },
            )
        )


def _startup_progress(tx: Tx, now: Now) -> None:
    """Reconciliation ends once every printer has reported (or at the deadline)."""
    if tx.running:
        return
    if all(s.known for s in tx.slots()):
        fleet.start_running(tx, now)
