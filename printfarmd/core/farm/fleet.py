"""The printers and the farm as a whole: plates, maintenance, pausing, settings,
printers added and removed at run time, the emergency stop, and start-up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from printfarmd.core.farm import common, failures, intake, spools
from printfarmd.core.farm.inputs import AddPrinter, UpdatePrinter
from printfarmd.core.farm.outputs import (
    AppendEvent,
    ArmTimer,
    EmergencyStop,
    Log,
    NewEvent,
    PausePrint,
    PutSetting,
    ResumePrint,
    StartDriver,
    StopDriver,
    TimerKind,
)
from printfarmd.core.farm.state import Now, Settings, Slot, Tx
from printfarmd.errors import Conflict
from printfarmd.models import Job, JobEvent, JobState, PrinterState

SETTINGS_KEY = "orchestrator"
PAUSED_KEY = "dispatch_paused"
#: Seconds start-up waits for every printer's first report before it dispatches anyway.
RECONCILE_DEADLINE = 10.0


def clear_plate(tx: Tx, slot: Slot, source: str, now: Now) -> Slot:
    """The plate of ``slot`` is clear: its finished job becomes ready; it may print."""
    job = tx.job(slot.current_job or "")
    done = False
    if job is not None and job.state is JobState.POST_PROCESS:
        common.move(tx, job, JobEvent.CLEAR, now, f"plate cleared by {source}")
        slot = common.release_slot(tx, slot, job.id)
        done = True
    elif job is not None and job.state is JobState.PRINTING:
        raise Conflict(
            f"printer {slot.id} is printing job {job.id}: its plate cannot be cleared now"
        )
    if slot.plate_clear and not done:
        return slot  # already clear: nothing to record
    slot = common.set_slot(tx, slot, plate_clear=True, outside=False)
    common.remember(tx, slot, now)
    tx.record(
        AppendEvent(NewEvent("printer.plate_cleared", now.wall, printer_id=slot.id, reason=source))
    )
    tx.kick = True
    return slot


def autoclear_due(tx: Tx, printer_id: str, now: Now) -> None:
    slot = tx.printer(printer_id)
    if slot is None or slot.plate_clear or not slot.config.auto_clear:
        return
    job = tx.job(slot.current_job or "")
    if job is not None and job.state is JobState.PRINTING:
        return
    if slot.reported in (PrinterState.PRINTING, PrinterState.PAUSED):
        return  # still printing something of its own: it clears after that
    clear_plate(tx, slot, "auto_clear", now)


def set_maintenance(tx: Tx, slot: Slot, enabled: bool, now: Now) -> Slot:
    if slot.maintenance == enabled:
        return slot
    slot = common.set_slot(tx, slot, maintenance=enabled)
    common.remember(tx, slot, now)
    tx.record(
        AppendEvent(
            NewEvent("printer.maintenance", now.wall, printer_id=slot.id, data={"enabled": enabled})
        )
    )
    tx.kick = True
    return slot


def set_paused(tx: Tx, paused: bool, now: Now) -> None:
    tx.set("paused", paused)
    tx.record(
        PutSetting(PAUSED_KEY, paused),
        AppendEvent(
            NewEvent("orchestrator.paused" if paused else "orchestrator.resumed", now.wall)
        ),
    )
    tx.effect(Log("info", "dispatch paused" if paused else "dispatch resumed"))
    tx.kick = True


def update_settings(tx: Tx, changes: Mapping[str, Any], now: Now) -> Settings:
    new = msgspec.structs.replace(tx.settings, **changes)
    tx.set("settings", new)
    value = new.as_json()
    tx.record(
        PutSetting(SETTINGS_KEY, value),
        AppendEvent(NewEvent("orchestrator.config", now.wall, data=value)),
    )
    return new


def add_printer(tx: Tx, cmd: AddPrinter) -> Slot:
    if tx.printer(cmd.config.id) is not None:
        raise Conflict(f"printer {cmd.config.id} already exists")
    slot = msgspec.structs.replace(
        Slot.from_config(cmd.config), plate_clear=cmd.plate_clear, maintenance=cmd.maintenance
    )
    # (issue 16) a printer added at run time keeps its stored spools and counters
    slot = msgspec.structs.replace(
        slot,
        spools=cmd.spools[: max(cmd.config.tools, 1)],
        counters=cmd.counters if cmd.counters is not None else slot.counters,
        due=cmd.due,
        due_at=cmd.due_at,
    )
    slot = msgspec.structs.replace(slot, capabilities=spools.capabilities(slot, tx.spools))
    tx.put_printer(slot)
    tx.effect(
        StartDriver(slot.id),
        Log("info", "printer added", {"printer": slot.id, "driver": cmd.config.driver}),
    )
    tx.kick = True
    return slot


def remove_printer(tx: Tx, printer_id: str) -> None:
    """Stop managing a printer; refused (``Conflict``) while it holds a job."""
    slot = common.get_slot(tx, printer_id)
    if slot.current_job is not None or slot.handing is not None:
        raise Conflict(f"printer {printer_id} holds job {slot.current_job or slot.handing}")
    tx.remove_printer(printer_id)
    tx.effect(StopDriver(printer_id))


def update_printer(tx: Tx, cmd: UpdatePrinter) -> Slot:
    slot = common.get_slot(tx, cmd.config.id)
    slot = common.set_slot(tx, slot, config=cmd.config)
    slot = spools.refresh_capabilities(tx, slot)  # (issue 16) config, reported, spools
    tx.kick = True
    return slot


def held_job(tx: Tx, slot: Slot) -> Job | None:
    job = tx.job(slot.current_job or "")
    if job is None or job.state is not JobState.PRINTING or job.printer_id != slot.id:
        return None
    return job


def pause_or_resume(tx: Tx, job_id: str, pause: bool, now: Now, token: str = "") -> tuple[Job, str]:
    """Ask the printer of a printing job to pause (or resume) it; returns the job and its
    printer. ``Conflict`` unless the job is printing on a printer that confirmed it."""
    job = common.get_job(tx, job_id)
    slot = tx.printer(job.printer_id or "")
    verb = "paused" if pause else "resumed"
    if job.state is not JobState.PRINTING or slot is None or slot.current_job != job.id:
        raise Conflict(f"job {job_id} is {job.state.value}: only a printing job can be {verb}")
    if not slot.confirmed:
        raise Conflict(
            f"job {job_id} has not started on printer {slot.id} yet: it cannot be {verb}"
        )
    tx.effect(PausePrint(slot.id, job.id, token) if pause else ResumePrint(slot.id, job.id, token))
    tx.record(
        AppendEvent(
            NewEvent(
                "job.pause_requested" if pause else "job.resume_requested",
                now.wall,
                job_id=job.id,
                printer_id=slot.id,
            )
        )
    )
    return job, slot.id


def emergency_stop(
    tx: Tx, client: str, now: Now, token: str = "", *, relayed: bool = False
) -> tuple[list[str], list[str]]:
    """Stop every printer that prints (a farm job, a hand-over, or a print of its own) at
    once through its driver's emergency stop, pause dispatch and fail each printing job
    once with the reason and the client. One ``farm.emergency_stop`` event records it
    (``relayed``: this daemon's part of a stop another daemon of the cluster received,
    issue 18; a relayed stop is not relayed again). Returns (the jobs failed, the
    printers told to stop)."""
    reason = f"emergency stop by {client}"
    failed: list[str] = []
    stopped: list[str] = []
    for slot in list(tx.slots()):
        job = held_job(tx, slot)
        busy = slot.reported in (PrinterState.PRINTING, PrinterState.PAUSED) or slot.handing
        if job is None and not busy:
            continue
        stopped.append(slot.id)
        tx.effect(EmergencyStop(slot.id, token))
        if job is not None:
            failures.fail_printing(tx, job, reason, slot.id, now)
            failed.append(job.id)
            slot = tx.printer(slot.id) or slot
        common.set_slot(tx, slot, stray_job=job.id if job else None, stray_stop_at=now.mono)
    was_paused = tx.paused
    if not was_paused:
        set_paused(tx, True, now)
    tx.record(
        AppendEvent(
            NewEvent(
                "farm.emergency_stop",
                now.wall,
                reason=reason,
                data={
                    "client": client,
                    "printers": sorted(stopped),
                    "jobs": failed,
                    "dispatch_was_paused": was_paused,
                    **({"relayed": True} if relayed else {}),
                },
            )
        )
    )
    tx.effect(Log("critical", "emergency stop", {"client": client, "printers": ",".join(stopped)}))
    return failed, stopped


def start_running(tx: Tx, now: Now) -> None:
    """Reconciliation is over: dispatch may begin."""
    if not tx.running:
        tx.set("running", True)
        tx.kick = True
        tx.effect(Log("info", "printers reconciled; dispatching"))


def startup(tx: Tx, now: Now) -> None:
    """Right after the state was restored: jobs of removed printers fail, timers are armed
    again, half-done pipelines carry on, and the reconciliation deadline is set."""
    base = tx.base
    for job in list(base.jobs.values()):
        gone = job.state is JobState.PRINTING and tx.printer(job.printer_id or "") is None
        if gone and base.cluster and job.printer_id not in base.dropped:
            continue  # issue 18: printing on another daemon's printer
        if gone:
            failures.fail_printing(tx, job, "printer was removed from the configuration", None, now)
        elif job.state is JobState.FAILED and job.retry_at is not None:
            common.arm_retry(tx, job, now)
    for slot in tx.slots():
        common.arm_autoclear(tx, slot, now)
    intake.resume_pipeline(tx, now)
    if not any(True for _ in tx.slots()):
        start_running(tx, now)
    else:
        tx.effect(ArmTimer(now.mono + RECONCILE_DEADLINE, TimerKind.STARTUP, ""))
