"""Staggered starts (issue 16): at most N print starts within T seconds per power group.

Twenty heated beds switching on at once can trip a breaker, so the printers of a power
group (``printers[].power_group``; empty: ``default``) share a budget: a start is
allowed only while fewer than ``max_starts`` starts of that group happened in the last
``window`` seconds (``[power]``, or the group's ``[[power.groups]]`` entry; 0 = no
limit). Queued jobs keep their order; the printers of a full group wait, and a wake-up
timer runs dispatch again when the oldest start leaves the window.

A start counts from the moment its printer accepted the job (``StartResult``), not from
the decision: a hand-over can take minutes (an upload), and the beds heat when the
printer starts. A start still being handed over counts as happening now, whatever its
age; a refused one is given back. So the printers' own starts are at least ``window``
apart for every ``max_starts`` of them.

The starts are kept as UTC times per group (``FarmState.power_starts``), and rebuilt at
a restart from the jobs still on a printer (``starts_of``). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from printfarmd.core.farm.state import Now, Slot, Tx
from printfarmd.core.farm.upkeep_state import GroupLimit, Policy, power_group
from printfarmd.models import Job, JobState


class Start(msgspec.Struct, frozen=True):
    """A start of ``printer_id``: decided at ``at``, or accepted then (``accepted``)."""

    at: float
    printer_id: str
    accepted: bool = False


Starts = Mapping[str, tuple[Start, ...]]


def recent(starts: Iterable[Start], limit: GroupLimit, wall: float) -> list[Start]:
    """The starts that count at ``wall``: accepted ones inside the window, and every
    one still being handed over."""
    return sorted(
        (s for s in starts if not s.accepted or wall - limit.window < s.at),
        key=lambda s: (s.accepted, s.at),
    )


def budget(policy: Policy, starts: Starts, groups: Iterable[str], wall: float) -> dict[str, int]:
    """Starts left now for each limited group of ``groups`` (groups without a limit are
    left out: they take any number)."""
    out: dict[str, int] = {}
    for group in set(groups):
        limit = policy.limit(group)
        if limit.max_starts > 0:
            used = len(recent(starts.get(group, ()), limit, wall))
            out[group] = max(limit.max_starts - used, 0)
    return out


def opens_at(policy: Policy, starts: Starts, group: str, wall: float) -> float | None:
    """When ``group`` may start a print again (UTC), if it is full at ``wall``; ``None``
    when it is not full, or when only a hand-over's answer can free it."""
    limit = policy.limit(group)
    if limit.max_starts <= 0:
        return None
    inside = recent(starts.get(group, ()), limit, wall)
    if len(inside) < limit.max_starts:
        return None
    accepted = sorted(s.at for s in inside if s.accepted)
    excess = len(inside) - limit.max_starts  # this many more must leave
    if excess >= len(accepted):
        return None  # hand-overs in flight: their answers kick dispatch
    return accepted[excess] + limit.window


def note_start(tx: Tx, slot: Slot, now: Now) -> None:
    """A print is handed to ``slot`` now: it counts against its group's budget."""
    group = power_group(slot.config)
    limit = tx.policy.limit(group)
    if limit.max_starts <= 0:
        return
    starts = dict(tx.power_starts)
    kept = recent(starts.get(group, ()), limit, now.wall)
    starts[group] = (*kept, Start(now.wall, slot.id))
    tx.set("power_starts", starts)


def start_settled(tx: Tx, printer_id: str, accepted: bool, now: Now) -> None:
    """The hand-over to ``printer_id`` returned: an accepted start counts from now, a
    refused one not at all."""
    starts = dict(tx.power_starts)
    for group, entries in starts.items():
        pending = [
            n for n, s in enumerate(entries) if s.printer_id == printer_id and not s.accepted
        ]
        if not pending:
            continue
        n = pending[-1]
        rest = [s for k, s in enumerate(entries) if k != n]
        if accepted:
            rest.append(Start(now.wall, printer_id, True))
        starts[group] = tuple(rest)
        tx.set("power_starts", starts)
        return


def starts_of(jobs: Iterable[Job], printers: Mapping[str, Slot]) -> dict[str, tuple[Start, ...]]:
    """The starts of the jobs still on a printer (at a restart), by power group."""
    out: dict[str, list[Start]] = {}
    for job in jobs:
        slot = printers.get(job.printer_id or "")
        if slot is None or job.started_at is None:
            continue
        if job.state not in (JobState.PRINTING, JobState.POST_PROCESS, JobState.FAILED):
            continue
        out.setdefault(power_group(slot.config), []).append(
            Start(job.started_at, slot.id, accepted=True)
        )
    return {group: tuple(sorted(times, key=lambda s: s.at)) for group, times in out.items()}
