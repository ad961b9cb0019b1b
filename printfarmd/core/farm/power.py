"""Staggered starts (issue 16): at most N print starts within T seconds per power group.

Twenty heated beds switching on at once can trip a breaker, so the printers of a power
group (``printers[].power_group``; empty: ``default``) share a budget: a start is
allowed only while fewer than ``max_starts`` starts of that group happened in the last
``window`` seconds (``[power]``, or the group's ``[[power.groups]]`` entry; 0 = no
limit). Queued jobs keep their order; the printers of a full group wait, and a wake-up
timer runs dispatch again when the oldest start leaves the window.

The starts are kept as UTC times per group (``FarmState.power_starts``), so they are
rebuilt at a restart from the jobs still printing (``starts_of``). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from printfarmd.core.farm.state import Now, Slot, Tx
from printfarmd.core.farm.upkeep_state import GroupLimit, Policy, power_group
from printfarmd.models import Job, JobState


def recent(starts: Iterable[float], limit: GroupLimit, wall: float) -> list[float]:
    """The starts of ``starts`` that are still inside the window at ``wall``."""
    return sorted(t for t in starts if wall - limit.window < t <= wall + 1e-9)


def budget(
    policy: Policy, starts: Mapping[str, tuple[float, ...]], groups: Iterable[str], wall: float
) -> dict[str, int]:
    """Starts left now for each limited group of ``groups`` (groups without a limit are
    left out: they take any number)."""
    out: dict[str, int] = {}
    for group in set(groups):
        limit = policy.limit(group)
        if limit.max_starts > 0:
            used = len(recent(starts.get(group, ()), limit, wall))
            out[group] = max(limit.max_starts - used, 0)
    return out


def opens_at(
    policy: Policy, starts: Mapping[str, tuple[float, ...]], group: str, wall: float
) -> float | None:
    """When ``group`` may start a print again (UTC), if it is full at ``wall``."""
    limit = policy.limit(group)
    if limit.max_starts <= 0:
        return None
    inside = recent(starts.get(group, ()), limit, wall)
    if len(inside) < limit.max_starts:
        return None
    # The start that has to leave the window before one more is allowed.
    return inside[len(inside) - limit.max_starts] + limit.window


def note_start(tx: Tx, slot: Slot, now: Now) -> None:
    """A print starts on ``slot`` now: it counts against its group's budget."""
    group = power_group(slot.config)
    limit = tx.policy.limit(group)
    if limit.max_starts <= 0:
        return
    starts = dict(tx.power_starts)
    starts[group] = (*recent(starts.get(group, ()), limit, now.wall), now.wall)
    tx.set("power_starts", starts)


def starts_of(jobs: Iterable[Job], printers: Mapping[str, Slot]) -> dict[str, tuple[float, ...]]:
    """The starts of the jobs still on a printer (at a restart), by power group."""
    out: dict[str, list[float]] = {}
    for job in jobs:
        slot = printers.get(job.printer_id or "")
        if slot is None or job.started_at is None:
            continue
        if job.state not in (JobState.PRINTING, JobState.POST_PROCESS, JobState.FAILED):
            continue
        out.setdefault(power_group(slot.config), []).append(job.started_at)
    return {group: tuple(sorted(times)) for group, times in out.items()}
