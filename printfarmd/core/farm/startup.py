"""The farm's state rebuilt from what the store holds (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import msgspec

from printfarmd.config import PrinterConfig
from printfarmd.core.farm import power, spools
from printfarmd.core.farm.state import FarmState, Settings, Slot
from printfarmd.core.farm.upkeep_state import Counters, PendingUsage, Policy, SpoolInfo
from printfarmd.models import Job, JobState


class Remembered(msgspec.Struct, frozen=True):
    """A printer's stored flags."""

    plate_clear: bool
    maintenance: bool


def restore(
    *,
    printers: Sequence[PrinterConfig],
    memory: Mapping[str, Remembered],
    jobs: Iterable[Job],
    settings: Settings,
    paused: bool,
    next_position: int,
    mono: float,
    accept_without_printers: bool = False,
    policy: Policy | None = None,
    upkeep: UpkeepMemory | None = None,
    cluster: bool = False,
    dropped: Iterable[str] = (),
) -> FarmState:
    """The state after a (re)start. A job that was printing is held by its printer as
    ``restored``: not confirmed, its fate decided by the printer's first real report; the
    watchdog gives an unreachable printer a whole fresh window (``last_progress_at``).
    ``cluster``: one daemon of several (issue 18); ``dropped``: the printers it drove
    before and no longer does (their printing jobs fail, as a removed printer's)."""
    live = list(jobs)
    holders: dict[str, Job] = {}
    for job in live:
        if job.state in (JobState.PRINTING, JobState.POST_PROCESS) and job.printer_id:
            holders[job.printer_id] = job
    slots = []
    for config in printers:
        slot = Slot.from_config(config)
        mem = memory.get(config.id)
        if mem is not None:
            slot = msgspec.structs.replace(
                slot, plate_clear=mem.plate_clear, maintenance=mem.maintenance
            )
        held = holders.get(config.id)
        if held is not None:
            slot = msgspec.structs.replace(
                slot,
                current_job=held.id,
                restored=held.state is JobState.PRINTING,
                last_progress_at=mono,
                plate_clear=False if held.state is JobState.POST_PROCESS else slot.plate_clear,
            )
        slots.append(slot)
    kept = upkeep or UpkeepMemory()
    slots = [_with_upkeep(slot, kept) for slot in slots]
    return FarmState(
        printers=slots,
        jobs=live,
        settings=settings,
        paused=paused,
        next_position=next_position,
        accept_without_printers=accept_without_printers,
        policy=policy,
        spools=kept.spools,
        pending=kept.pending,
        power_starts=power.starts_of(live, {s.id: s for s in slots}),
        cluster=cluster,
        dropped=dropped,
    )


class UpkeepMemory(msgspec.Struct, frozen=True):
    """(issue 16) The stored upkeep state: bindings per printer, spools, the usage not yet
    confirmed by Spoolman, counters (and why due) per printer."""

    bindings: Mapping[str, tuple[int | None, ...]] = msgspec.field(default_factory=dict)
    spools: Mapping[int, SpoolInfo] = msgspec.field(default_factory=dict)
    pending: Sequence[PendingUsage] = ()
    counters: Mapping[str, tuple[Counters, str | None, float | None]] = msgspec.field(
        default_factory=dict
    )


def _with_upkeep(slot: Slot, mem: UpkeepMemory) -> Slot:
    bound = tuple(mem.bindings.get(slot.id, ()))[: max(slot.config.tools, 1)]
    while bound and bound[-1] is None:
        bound = bound[:-1]
    counters, due, due_at = mem.counters.get(slot.id, (Counters(), None, None))
    slot = msgspec.structs.replace(slot, spools=bound, counters=counters, due=due, due_at=due_at)
    return msgspec.structs.replace(slot, capabilities=spools.capabilities(slot, mem.spools))
