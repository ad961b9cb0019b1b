"""Why a queued job is still waiting (pure): shown in the job's view and the dashboard,
so an operator sees what holds it (dispatch paused, no printer that can print it, every
fitting printer busy, printers not yet arrived)."""

from __future__ import annotations

from collections.abc import Iterable

from printfarmd.core import routing
from printfarmd.core.farm.state import FarmState, Slot
from printfarmd.models import Job, JobState

#: How many printers a reason names at most.
NAMED = 3


def _named(parts: list[str]) -> str:
    more = len(parts) - NAMED
    return "; ".join(parts[:NAMED]) + (f"; and {more} more" if more > 0 else "")


def why_waiting(state: FarmState, job: Job, slots: Iterable[Slot] | None = None) -> str | None:
    """The reason ``job`` (queued) has not gone to a printer yet, or ``None`` when it is
    not queued. ``slots``: the printers (default: the state's)."""
    if job.state is not JobState.QUEUED:
        return None
    if state.paused:
        return "dispatch is paused"
    if not state.running:
        return "the printers are being checked after a start"
    printers = list(state.printers.values() if slots is None else slots)
    if not printers:
        if state.accept_without_printers:
            return "no printer yet: it waits for one to announce itself (MQTT discovery)"
        return "no printers are configured"
    req = routing.requirements_of(job)
    unfit: list[str] = []
    fits: list[Slot] = []
    for slot in printers:
        why = routing.incompatibility(slot.capabilities, req)
        if why is None:
            fits.append(slot)
        else:
            unfit.append(f"{slot.id}: {why}")
    if not fits:
        return "no printer can print it (" + _named(unfit) + ")"
    if any(s.dispatchable for s in fits):
        return "next in line for a free printer"
    busy = [f"{s.id} {s.state.value.replace('_', ' ')}" for s in fits]
    return "waiting for a free printer (" + _named(busy) + ")"
