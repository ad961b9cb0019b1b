"""The farm core's one entry point: ``decide(tx, input, now) -> reply``.

``decide`` reads the farm through ``tx`` and writes what it decided into ``tx``: the
changed jobs and printers, the records the store must commit, the effects to run after
the commit. An illegal input raises a ``FarmError`` (``Conflict``, ``NotFound``, …); the
caller runs each input in its own ``Tx`` layer, so a refused input changes nothing.
Pure: no trio, no I/O, no clock reads (``now`` is given).
"""

from __future__ import annotations

from typing import Any

import msgspec

from printfarmd.core.farm import (
    dispatch,
    eligibility,
    failures,
    fleet,
    intake,
    reports,
    shared,
    spools,
    upkeep,
)
from printfarmd.core.farm import inputs as i
from printfarmd.core.farm.common import get_job, get_slot
from printfarmd.core.farm.outputs import SaveProgress, TimerKind
from printfarmd.core.farm.state import Now, Tx
from printfarmd.models import JobState


def decide(tx: Tx, inp: i.Input, now: Now) -> Any:
    """Decide ``inp``; returns the reply for a command (``None`` for events)."""
    handler = _HANDLERS.get(type(inp))
    if handler is None:
        raise TypeError(f"the farm core takes no {type(inp).__name__}")
    return handler(tx, inp, now)


def _create(tx: Tx, c: i.CreateJobs, now: Now) -> Any:
    return intake.create(tx, c, now)


def _cancel(tx: Tx, c: i.Cancel, now: Now) -> Any:
    return intake.cancel(tx, get_job(tx, c.job_id, c.snapshot), c.reason, now)


def _release(tx: Tx, c: i.Release, now: Now) -> Any:
    return dispatch.release(tx, get_job(tx, c.job_id, c.snapshot), c.printer_id, now)


def _reprioritize(tx: Tx, c: i.Reprioritize, now: Now) -> Any:
    return intake.reprioritize(tx, get_job(tx, c.job_id, c.snapshot), c.priority, now)


def _jump(tx: Tx, c: i.Jump, now: Now) -> Any:
    return intake.jump(tx, get_job(tx, c.job_id, c.snapshot), now)


def _ship(tx: Tx, c: i.Ship, now: Now) -> Any:
    return intake.ship(tx, get_job(tx, c.job_id, c.snapshot), c.tracking, now)


def _set_paused(tx: Tx, c: i.SetPaused, now: Now) -> Any:
    fleet.set_paused(tx, c.paused, now)  # recorded even when it was so already: who asked
    return c.paused


def _settings(tx: Tx, c: i.UpdateSettings, now: Now) -> Any:
    return fleet.update_settings(tx, c.changes, now)


def _clear(tx: Tx, c: i.ClearPlate, now: Now) -> Any:
    return fleet.clear_plate(tx, get_slot(tx, c.printer_id), c.source, now).view()


def _maintenance(tx: Tx, c: i.SetMaintenance, now: Now) -> Any:
    return fleet.set_maintenance(tx, get_slot(tx, c.printer_id), c.enabled, now).view()


def _set_queue(tx: Tx, c: i.SetQueue, now: Now) -> Any:
    return intake.set_queue(tx, c, now)


def _cancel_queued(tx: Tx, c: i.CancelQueued, now: Now) -> Any:
    return intake.cancel_queued(tx, c.job_ids, c.reason, now)


def _pause(tx: Tx, c: i.PauseJob, now: Now) -> Any:
    return fleet.pause_or_resume(tx, c.job_id, True, now, c.token)


def _resume(tx: Tx, c: i.ResumeJob, now: Now) -> Any:
    return fleet.pause_or_resume(tx, c.job_id, False, now, c.token)


def _estop(tx: Tx, c: i.EmergencyStopFarm, now: Now) -> Any:
    return fleet.emergency_stop(tx, c.client, now, c.token)


def _add(tx: Tx, c: i.AddPrinter, now: Now) -> Any:
    return fleet.add_printer(tx, c).view()


def _remove(tx: Tx, c: i.RemovePrinter, now: Now) -> Any:
    fleet.remove_printer(tx, c.printer_id)


def _update(tx: Tx, c: i.UpdatePrinter, now: Now) -> Any:
    return fleet.update_printer(tx, c).view()


def _ping(tx: Tx, c: i.Ping, now: Now) -> Any:
    return True


def _report(tx: Tx, e: i.Report, now: Now) -> Any:
    reports.on_driver_event(tx, e.event, now)


def _timer(tx: Tx, e: i.TimerFired, now: Now) -> Any:
    if e.kind is TimerKind.RETRY:
        failures.retry_due(tx, e.key, now)
    elif e.kind is TimerKind.AUTOCLEAR:
        fleet.autoclear_due(tx, e.key, now)
    elif e.kind is TimerKind.STARTUP:
        fleet.start_running(tx, now)
    elif e.kind is TimerKind.WAKE:
        eligibility.woke(tx, e.key)


def _sweep(tx: Tx, e: i.WatchdogSweep, now: Now) -> Any:
    return failures.sweep(tx, e.stale_threshold, now)


def _startup(tx: Tx, e: i.Startup, now: Now) -> Any:
    fleet.startup(tx, now)


def _dispatch(tx: Tx, e: i.Dispatch, now: Now) -> Any:
    return dispatch.dispatch(tx, now)


def _flush(tx: Tx, e: i.FlushProgress, now: Now) -> Any:
    """Coalesced progress: each printing job's latest reported progress, when it moved."""
    for slot in tx.slots():
        job = tx.job(slot.current_job or "")
        if job is None or job.state is not JobState.PRINTING or not slot.confirmed:
            continue
        if slot.progress != job.progress or slot.eta != job.eta:
            tx.put_job(
                msgspec.structs.replace(
                    job, progress=slot.progress, eta=slot.eta, updated_at=now.wall
                )
            )
            tx.record(SaveProgress(job.id, slot.progress, slot.eta, now.wall))


def _start_result(tx: Tx, e: i.StartResult, now: Now) -> Any:
    reports.on_start_result(tx, e, now)


def _command_result(tx: Tx, e: i.CommandResult, now: Now) -> Any:
    reports.on_command_result(tx, e, now)


def _slice_result(tx: Tx, e: i.SliceResult, now: Now) -> Any:
    intake.sliced(tx, e, now)


def _bind_spool(tx: Tx, c: i.BindSpool, now: Now) -> Any:
    return spools.bind(tx, c, now)


def _record_maintenance(tx: Tx, c: i.RecordMaintenance, now: Now) -> Any:
    return upkeep.record_maintenance(tx, c, now)


def _spools_refreshed(tx: Tx, e: i.SpoolsRefreshed, now: Now) -> Any:
    spools.refreshed(tx, e, now)


def _usage_reported(tx: Tx, e: i.UsageReported, now: Now) -> Any:
    spools.usage_reported(tx, e, now)


def _shared(tx: Tx, e: i.SharedChanges, now: Now) -> Any:
    return shared.on_shared(tx, e, now)


def _node_lost(tx: Tx, e: i.NodeLost, now: Now) -> Any:
    return shared.on_node_lost(tx, e, now)


_HANDLERS: dict[type, Any] = {
    i.CreateJobs: _create,
    i.Cancel: _cancel,
    i.Release: _release,
    i.Reprioritize: _reprioritize,
    i.Jump: _jump,
    i.Ship: _ship,
    i.SetPaused: _set_paused,
    i.UpdateSettings: _settings,
    i.ClearPlate: _clear,
    i.SetMaintenance: _maintenance,
    i.SetQueue: _set_queue,
    i.CancelQueued: _cancel_queued,
    i.PauseJob: _pause,
    i.ResumeJob: _resume,
    i.EmergencyStopFarm: _estop,
    i.AddPrinter: _add,
    i.RemovePrinter: _remove,
    i.UpdatePrinter: _update,
    i.Ping: _ping,
    i.Report: _report,
    i.TimerFired: _timer,
    i.WatchdogSweep: _sweep,
    i.Startup: _startup,
    i.Dispatch: _dispatch,
    i.FlushProgress: _flush,
    i.StartResult: _start_result,
    i.CommandResult: _command_result,
    i.SliceResult: _slice_result,
    # issue 16: spools, upkeep
    i.BindSpool: _bind_spool,
    i.RecordMaintenance: _record_maintenance,
    i.SpoolsRefreshed: _spools_refreshed,
    i.UsageReported: _usage_reported,
    i.SharedChanges: _shared,  # issue 18: several daemons, one farm
    i.NodeLost: _node_lost,
}
