"""Dispatch: which queued job goes to which idle printer.

The rule: repeatedly take the first job in queue order that some idle printer can print,
and give it to the best such printer (``routing.rank_key``: material loaded, least
versatile, then id), preferring printers that have not failed the job.

Cost of one pass: idle printers are grouped by capabilities; each requirement class
compatible with an idle group is walked lazily in queue order (``JobQueue.iter_class``)
and its compatible idle printers are ranked once. With P idle printers, C classes and
k assignments that is O(P + C·P_c log P_c + k log C) — no longer O(P²) per pass.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from printfarmd.core import eta as eta_rules
from printfarmd.core import routing
from printfarmd.core.farm import common, eligibility, power
from printfarmd.core.farm.outputs import Count, Log, StartPrint
from printfarmd.core.farm.state import Now, Slot, Tx
from printfarmd.core.queue import JobQueue
from printfarmd.errors import Conflict, ValidationFailed
from printfarmd.models import Capabilities, Job, JobEvent, JobState

#: Jobs of one class a pass passes over (scheduled for later, or fitting no spool)
#: before it gives up on that class until the next pass: bounds a pass's cost.
MAX_SKIPPED = 1000


def plan(
    queue: JobQueue, idle: list[Slot], gate: eligibility.Gate | None = None
) -> list[tuple[Job, Slot]]:
    """The assignments of one dispatch pass over ``queue`` for the ``idle`` printers.

    With a ``gate`` (issue 16), a job it holds (``not_before``) is passed over, a job
    goes only to a printer whose spools fit it (the next jobs of its class still get
    their turn), and a start uses its power group's budget: once that is spent, the
    group's other printers take nothing more in this pass.
    """
    if not idle or not len(queue):
        return []
    groups: dict[Capabilities, list[Slot]] = {}
    for slot in idle:
        groups.setdefault(slot.capabilities, []).append(slot)
    class_groups: dict[routing.Requirements, list[Capabilities]] = {}
    for caps in groups:
        for req in queue.classes_for(caps):
            class_groups.setdefault(req, []).append(caps)
    walks: dict[routing.Requirements, Iterator[Job]] = {}
    ranked: dict[routing.Requirements, list[Slot]] = {}
    heap: list[tuple[tuple[int, int, int], str, int, routing.Requirements, Job]] = []
    for n, (req, caps_list) in enumerate(class_groups.items()):
        walk = queue.iter_class(req)
        first = next(walk, None)
        if first is None:
            continue
        walks[req] = walk
        slots = [s for caps in caps_list for s in groups[caps]]
        slots.sort(key=lambda s: routing.rank_key(req, s.capabilities, s.id))
        ranked[req] = slots
        heap.append((first.sort_key, first.id, n, req, first))
    heapq.heapify(heap)
    start_at = dict.fromkeys(ranked, 0)
    skipped = dict.fromkeys(ranked, 0)
    taken: set[str] = set()
    out: list[tuple[Job, Slot]] = []
    while heap and len(taken) < len(idle):
        _, _, n, req, job = heapq.heappop(heap)
        slots, i = ranked[req], start_at[req]
        while i < len(slots) and slots[i].id in taken:
            i += 1  # skip the taken prefix: each printer is passed once per class
        start_at[req] = i
        if i == len(slots):
            continue  # no idle printer left for this class: its other jobs wait too
        if gate is None:
            chosen: Slot | None = _choose(job, slots, i, taken)
        elif gate.job_blocked(job) is not None:
            chosen = None  # scheduled for later: the jobs behind it may go
        else:
            chosen = _choose_fitting(job, slots, i, taken, gate)
        if chosen is not None:
            taken.add(chosen.id)
            out.append((job, chosen))
            if gate is not None:
                taken.update(gate.take(chosen))
        else:
            skipped[req] += 1
            if skipped[req] > MAX_SKIPPED:
                continue  # a pathological queue: this class waits for the next pass
        nxt = next(walks[req], None)
        if nxt is not None:
            heapq.heappush(heap, (nxt.sort_key, nxt.id, n, req, nxt))
    return out


def _choose(job: Job, ranked: list[Slot], start: int, taken: set[str]) -> Slot:
    """The best free printer of ``ranked[start:]`` for ``job``: one that has not failed
    it, else the best that has."""
    failed = job.failed_printers
    first: Slot | None = None
    for slot in ranked[start:] if failed else ranked[start : start + 1]:
        if slot.id in taken:
            continue
        if first is None:
            first = slot
        if slot.id not in failed:
            return slot
    assert first is not None
    return first


def _choose_fitting(
    job: Job, ranked: list[Slot], start: int, taken: set[str], gate: eligibility.Gate
) -> Slot | None:
    """Like ``_choose``, among the printers whose spools fit ``job``; ``None`` if none."""
    failed = job.failed_printers
    first: Slot | None = None
    for slot in ranked[start:]:
        if slot.id in taken or not gate.fits(job, slot):
            continue
        if slot.id not in failed:
            return slot
        if first is None:
            first = slot
    return first


def dispatch(tx: Tx, now: Now) -> int:
    """One dispatch pass on the committed queue; returns the number of jobs started.

    Runs only on a clean overlay (the owner puts it first in a batch), since it walks
    the committed queue; otherwise it asks to be run again.
    """
    if tx.paused or not tx.running:
        return 0
    if tx.dirty_jobs:
        tx.kick = True
        return 0
    idle = [s for s in tx.slots() if s.dispatchable]
    if not idle or not len(tx.base.queue):
        return 0
    # (issue 16) quiet hours, staggered starts, scheduled jobs, spools.
    gate = eligibility.Gate(tx, now.wall, idle)
    idle = [s for s in idle if gate.printer_blocked(s) is None]
    pairs = plan(tx.base.queue, idle, gate)
    for job, slot in pairs:
        start(tx, job, slot, now, None, spool_id=gate.spool_for(job, slot))
    gate.arm(tx, now)
    return len(pairs)


def start(
    tx: Tx, job: Job, slot: Slot, now: Now, reason: str | None, *, spool_id: int | None = None
) -> Job:
    """QUEUED -> PRINTING on ``slot``; the hand-over runs after the commit. ``spool_id``:
    the spool it prints from (its usage is reported there)."""
    expected = eta_rules.adjusted(job.estimated_time, tx.speed_factor(slot.id))
    eta = None if expected is None else now.wall + expected
    new = common.move(
        tx, job, JobEvent.START, now, reason, printer_id=slot.id, eta=eta, spool_id=spool_id
    )
    power.note_start(tx, slot, now)
    common.set_slot(
        tx,
        slot,
        current_job=job.id,
        handing=job.id,
        confirmed=False,
        restored=False,
        start_acked_at=None,
        last_progress_at=now.mono,
        paused=False,
        eta=eta,
        progress=0.0,
    )
    tx.effect(StartPrint(slot.id, new))
    if job.queued_at is not None:
        tx.effect(Count("dispatch_wait", now.wall - job.queued_at))
    tx.effect(
        Log("info", "job dispatched", {"job": job.id, "printer": slot.id, "file": job.filename})
    )
    return new


def release(tx: Tx, job: Job, printer_id: str, now: Now) -> Job:
    """Send a queued job to a chosen printer now (it must be idle and compatible)."""
    job_id = job.id
    slot = common.get_slot(tx, printer_id)
    if job.state is not JobState.QUEUED:
        raise Conflict(f"job {job_id} is {job.state.value}: only queued jobs can be released")
    why = routing.incompatibility(slot.capabilities, routing.requirements_of(job))
    if why is not None:
        raise ValidationFailed(
            f"printer {printer_id} cannot print job {job_id}: {why}", field="printerId"
        )
    if not slot.dispatchable:
        raise Conflict(
            f"printer {printer_id} is {slot.state.value}: it can take a job only when idle"
        )
    # (issue 16) An operator's release overrides the job's schedule (not_before), not
    # the printer's quiet hours, its power group's budget or its spools.
    gate = eligibility.Gate(tx, now.wall, list(tx.slots()))
    held = gate.printer_blocked(slot)
    if held is not None:
        raise Conflict(f"printer {printer_id} may not start a print now: {held}")
    why = gate.refusal(job, slot)
    if why is not None:
        raise Conflict(f"printer {printer_id} cannot print job {job_id}: {why}")
    return start(
        tx,
        job,
        slot,
        now,
        f"released to {printer_id} by operator",
        spool_id=gate.spool_for(job, slot),
    )
