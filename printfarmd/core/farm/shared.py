"""Several daemons, one farm (issue 18): what this daemon makes of the others' commits.

Each daemon of a cluster drives its own printers; the jobs are shared. Its live state
holds every live job of the farm: the queue is one queue, and jobs printing on another
daemon's printers are known (listed, cancellable) but never watched here — their printer
is not one of this daemon's slots.

- ``on_shared``: jobs another daemon changed replace ours. A job one of our printers
  holds that is no longer printing (or waiting for its plate) on that printer — cancelled
  by another daemon, or taken back after this daemon lost its lease — is let go: the
  printer is told to stop it, as a cancel would. A retry another daemon scheduled is
  armed here too. An emergency stop another daemon received stops this daemon's
  printers too.
- ``on_node_lost``: a daemon that stopped renewing its lease: its printing jobs are taken
  back the way the watchdog takes back a silent printer's (requeued with the resume
  position, or failed once retries are spent), in one commit with the fence that ends
  its epoch, so a daemon coming back cannot act on them.
"""

from __future__ import annotations

from printfarmd.core import watchdog as watchdog_rules
from printfarmd.core.farm import common, fleet
from printfarmd.core.farm.inputs import NodeLost, SharedChanges
from printfarmd.core.farm.outputs import Count, Escalate, FenceNode, Log, StopPrint
from printfarmd.core.farm.state import Now, Tx
from printfarmd.models import Job, JobState, PrinterState

_HELD = (JobState.PRINTING, JobState.POST_PROCESS)


def on_shared(tx: Tx, c: SharedChanges, now: Now) -> None:
    for job in c.jobs:
        if tx.job(job.id) == job:
            continue
        tx.put_job(job)
        _let_go(tx, job, now)
        # A retry another daemon scheduled is this daemon's too: if that daemon stops
        # before it is due, the job still goes back to the queue (the first to act wins;
        # the other's write is refused as stale and changes nothing).
        common.arm_retry(tx, job, now)
        tx.kick = True
    if c.settings is not None and c.settings != tx.settings:
        tx.set("settings", c.settings)
    if c.paused is not None and c.paused != tx.paused:
        tx.set("paused", c.paused)
        tx.kick = True
    for client in c.estops:
        # An emergency stop on any daemon stops the whole farm.
        fleet.emergency_stop(tx, client, now, relayed=True)


def _let_go(tx: Tx, job: Job, now: Now) -> None:
    """Free the slot still holding ``job`` if the job left it (see the module doc)."""
    for slot in list(tx.slots()):
        if slot.current_job != job.id:
            continue
        if job.state in _HELD and job.printer_id == slot.id:
            continue
        handing = slot.handing == job.id
        started = slot.confirmed or slot.restored or slot.start_acked_at is not None
        slot = common.release_slot(tx, slot, job.id)
        if handing:
            # The hand-over in flight is settled when it returns (StartResult): the
            # printer is told to stop then, as after a cancel.
            continue
        if slot.reported in (PrinterState.PRINTING, PrinterState.PAUSED) or started:
            tx.effect(StopPrint(slot.id, job.id, f"job is {job.state.value} elsewhere"))
        if started:
            slot = common.set_plate(tx, slot, False, now)
        if not slot.plate_clear:
            common.arm_autoclear(tx, slot, now)
        common.forget_upload(tx, slot, job.id)
        tx.effect(
            Log(
                "warning",
                "job left this daemon's printer",
                {"job": job.id, "printer": slot.id, "state": job.state.value},
            )
        )


def on_node_lost(tx: Tx, c: NodeLost, now: Now) -> list[str]:
    """Take ``c.node_id``'s printing jobs back; returns their ids."""
    tx.record(FenceNode(c.node_id, c.epoch))
    printers = set(c.printers)
    mine = set(tx.printer_ids())
    reason = f"node {c.node_id} stopped renewing its lease {c.silent_for:.0f} s ago"
    acted: list[str] = []
    for jid in sorted(tx.base.jobs):
        job = tx.job(jid)
        if job is None or job.state is not JobState.PRINTING:
            continue
        if job.printer_id not in printers or job.printer_id in mine:
            continue
        steps = watchdog_rules.requeue_or_fail(
            job, c.silent_for, tx.settings.policy, now.wall, reason
        )
        prev = job
        for event, nxt in steps:
            common.moved(tx, prev, nxt, event, nxt.last_error)
            prev = nxt
        tx.effect(Count("watchdog_actions"))
        if prev.state is JobState.QUEUED:
            tx.kick = True
        else:
            tx.effect(Escalate(prev))
        acted.append(job.id)
    tx.effect(
        Log(
            "warning",
            "a daemon of the farm stopped; its printing jobs were taken back",
            {"node": c.node_id, "jobs": ",".join(acted)},
        )
    )
    return acted
