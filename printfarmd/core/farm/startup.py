"""The farm's state rebuilt from what the store holds (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from printfarmd.config import PrinterConfig
from printfarmd.core.farm.state import FarmState, Settings, Slot
from printfarmd.models import Job, JobState


@attrs.frozen
class Remembered:
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
) -> FarmState:
    """The state after a (re)start. A job that was printing is held by its printer as
    ``restored``: not confirmed, its fate decided by the printer's first real report; the
    watchdog gives an unreachable printer a whole fresh window (``last_progress_at``)."""
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
            slot = attrs.evolve(slot, plate_clear=mem.plate_clear, maintenance=mem.maintenance)
        held = holders.get(config.id)
        if held is not None:
            slot = attrs.evolve(
                slot,
                current_job=held.id,
                restored=held.state is JobState.PRINTING,
                last_progress_at=mono,
                plate_clear=False if held.state is JobState.POST_PROCESS else slot.plate_clear,
            )
        slots.append(slot)
    return FarmState(
        printers=slots,
        jobs=live,
        settings=settings,
        paused=paused,
        next_position=next_position,
        accept_without_printers=accept_without_printers,
    )
