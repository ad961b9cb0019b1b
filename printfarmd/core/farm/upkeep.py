"""Upkeep (issue 16): what a print attempt used and cost, the printers' maintenance
counters, and the maintenance log.

**When an attempt ends** (any transition out of ``printing``: finished, failed,
cancelled, taken back by the watchdog; ``common`` calls ``attempt_ended`` with the
transition's records), in the same commit:
- a ``RecordUsage``: the fraction printed (all of it when finished, else the progress
  reached: the printer's live report, or the job's stored progress), the grams (the
  file's filament weight times that fraction), the print time, the filament and energy
  cost (``cost.py``); a hand-over the printer never took used nothing;
- with Spoolman on and a spool known for the attempt, the grams are queued for Spoolman
  (an outbox row and a ``PendingUsage``) — so the report survives any crash and is sent
  once (``services/spoolman.py``);
- the printer's counters (print hours, prints, grams since the last maintenance) grow;
  crossing a threshold (``[maintenance]``) for the first time since the last recorded
  maintenance puts the printer in maintenance (its print has just ended: it takes no new
  job), records ``printer.maintenance_due`` and asks to notify once (``MaintenanceDue``).

**Recorded maintenance** (``POST /api/printers/{id}/maintenance`` with who and what)
appends to the log, resets the counters and brings the printer back into service.

Pure.
"""

from __future__ import annotations

from printfarmd.core.farm import common, cost
from printfarmd.core.farm.inputs import RecordMaintenance
from printfarmd.core.farm.outputs import (
    AppendEvent,
    AppendMaintenance,
    Log,
    MaintenanceDue,
    NewEvent,
    PutUpkeep,
    RecordUsage,
    SpoolmanKick,
)
from printfarmd.core.farm.state import Now, Slot, Tx
from printfarmd.core.farm.upkeep_state import Counters, PendingUsage, Policy
from printfarmd.errors import ValidationFailed
from printfarmd.models import Job, JobState

#: How an attempt ended, by the state its job went to.
_STATUS = {
    JobState.POST_PROCESS: "completed",
    JobState.CANCELLED: "cancelled",
    JobState.FAILED: "failed",
    JobState.QUEUED: "interrupted",
}


def usage_key(job: Job) -> str:
    """The attempt's key: the job and when the attempt started (one per attempt)."""
    started = 0 if job.started_at is None else round(job.started_at * 1000)
    return f"{job.id}@{started}"


def crossed(policy: Policy, c: Counters) -> str | None:
    """The first maintenance threshold ``c`` has reached, as a sentence; else ``None``."""
    if policy.every_hours > 0 and c.hours >= policy.every_hours:
        every = f"{policy.every_hours:g}"
        return f"{c.hours:.1f} print hours since the last maintenance (every {every})"
    if policy.every_prints > 0 and c.prints >= policy.every_prints:
        noun = "print" if c.prints == 1 else "prints"
        return f"{c.prints} {noun} since the last maintenance (every {policy.every_prints})"
    if policy.every_grams > 0 and c.grams >= policy.every_grams:
        return f"{c.grams:.0f} g printed since the last maintenance (every {policy.every_grams:g})"
    return None


def attempt_ended(tx: Tx, old: Job, new: Job) -> None:
    """``old`` (printing) became ``new``: record the attempt (see the module docstring).
    Its time is the transition's (``new.updated_at``)."""
    at = new.updated_at
    slot = tx.printer(old.printer_id or "")
    holds = slot is not None and slot.current_job == old.id
    if slot is None:
        started = old.progress > 0  # its printer is gone: the stored progress tells
    else:
        started = holds and (slot.confirmed or slot.restored or slot.start_acked_at is not None)
    if not started:
        fraction = 0.0
    elif new.state is JobState.POST_PROCESS:
        fraction = 1.0
    else:
        live = slot.progress if slot is not None and holds and slot.confirmed else 0.0
        fraction = min(max(max(live, old.progress), 0.0), 100.0) / 100.0
    seconds = max(at - old.started_at, 0.0) if started and old.started_at is not None else 0.0
    grams = None if old.filament_weight is None else round(old.filament_weight * fraction, 3)
    policy = tx.policy
    spool = tx.spools.get(old.spool_id) if old.spool_id is not None else None
    watts = slot.config.power_watts if slot is not None else 0.0
    price = cost.of_attempt(policy, grams, seconds, watts, spool)
    key = usage_key(old)
    report = policy.spoolman and old.spool_id is not None and bool(grams)
    tx.record(
        RecordUsage(
            key=key,
            job_id=old.id,
            printer_id=old.printer_id,
            spool_id=old.spool_id,
            status=_STATUS.get(new.state, new.state.value),
            fraction=round(fraction, 6),
            grams=grams,
            seconds=round(seconds, 3),
            filament_cost=price.filament,
            energy_kwh=price.energy_kwh,
            energy_cost=price.energy,
            currency=policy.currency,
            at=at,
            report=report,
        )
    )
    if report:
        assert old.spool_id is not None and grams is not None
        pending = dict(tx.pending)
        pending[key] = PendingUsage(key, old.spool_id, grams)
        tx.set("pending", pending)
        tx.effect(SpoolmanKick())
    if slot is not None and started:
        _count(tx, slot, seconds, grams or 0.0, at)


def _count(tx: Tx, slot: Slot, seconds: float, grams: float, at: float) -> None:
    c = slot.counters
    counters = Counters(
        print_seconds=c.print_seconds + seconds,
        prints=c.prints + 1,
        grams=c.grams + grams,
        since=c.since if c.since is not None else at,
    )
    due, due_at = slot.due, slot.due_at
    reason = crossed(tx.policy, counters) if due is None else None
    changes: dict[str, object] = {"counters": counters}
    if reason is not None:
        due, due_at = reason, at
        changes.update(due=due, due_at=due_at, maintenance=True)
    slot = common.set_slot(tx, slot, **changes)
    tx.record(PutUpkeep(slot.id, counters, due, due_at))
    if reason is None:
        return
    now = Now(at, 0.0)
    common.remember(tx, slot, now)
    tx.record(
        AppendEvent(
            NewEvent(
                "printer.maintenance_due",
                at,
                printer_id=slot.id,
                reason=reason,
                data=counters_json(counters),
            )
        )
    )
    tx.effect(
        MaintenanceDue(slot.id, reason, at),
        Log("warning", "printer due for maintenance", {"printer": slot.id, "reason": reason}),
    )


def counters_json(c: Counters) -> dict[str, object]:
    return {
        "print_hours": round(c.hours, 3),
        "prints": c.prints,
        "filament_g": round(c.grams, 3),
        "since": c.since,
    }


def record_maintenance(tx: Tx, cmd: RecordMaintenance, now: Now) -> Slot:
    """Maintenance was done: log it, reset the counters, end maintenance mode."""
    slot = common.get_slot(tx, cmd.printer_id)
    by, work = cmd.by.strip(), cmd.work.strip()
    if not by:
        raise ValidationFailed("by: who did the work is required", field="by")
    if not work:
        raise ValidationFailed("work: what was done is required", field="work")
    at = now.wall if cmd.at is None else cmd.at
    tx.record(
        AppendMaintenance(slot.id, at, by, work, slot.counters, slot.due, now.wall),
        AppendEvent(
            NewEvent(
                "printer.maintenance_recorded",
                now.wall,
                printer_id=slot.id,
                reason=work,
                data={"by": by, "at": at, "due": slot.due, **counters_json(slot.counters)},
            )
        ),
    )
    fresh = Counters(since=at)
    slot = common.set_slot(tx, slot, counters=fresh, due=None, due_at=None, maintenance=False)
    common.remember(tx, slot, now)
    tx.record(PutUpkeep(slot.id, fresh, None, None))
    tx.effect(Log("info", "maintenance recorded", {"printer": slot.id, "by": by}))
    tx.kick = True
    return slot
