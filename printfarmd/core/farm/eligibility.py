"""Which idle printer may start which queued job *now* (issue 16), beyond compatibility.

One ``Gate`` per dispatch pass (or per question from a view) holds the rules:
- a job whose ``not_before`` is still ahead waits (``calendar.waits_until``);
- a printer in its quiet hours starts nothing (``calendar.quiet_until``);
- a printer whose power group has used its starts for the window waits
  (``power.budget``); each start the pass decides uses one;
- a printer with bound spools takes only jobs its spools can print (``spools.fit``).

Whatever blocks ends at a known time; the earliest such time is armed as a
``TimerKind.WAKE`` timer (once per time: ``FarmState.wakes``), so dispatch runs again
when a window opens, also after a restart (the first pass arms it again).

``explain_job`` / ``explain_printer`` say in words why something waits (the dashboard,
the job and printer views). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from printfarmd.core import routing
from printfarmd.core.farm import calendar, power, spools
from printfarmd.core.farm.outputs import ArmTimer, TimerKind
from printfarmd.core.farm.state import Now, Slot, Tx
from printfarmd.core.farm.upkeep_state import PendingUsage, Policy, SpoolInfo, power_group
from printfarmd.core.notify import iso
from printfarmd.models import Job, JobState, PrinterState

#: How many printers a reason names at most.
NAMED = 3


class FarmView(Protocol):
    """What the gate reads: a ``Tx`` or the committed ``FarmState``."""

    @property
    def policy(self) -> Policy: ...
    @property
    def spools(self) -> Mapping[int, SpoolInfo]: ...
    @property
    def pending(self) -> Mapping[str, PendingUsage]: ...
    @property
    def power_starts(self) -> Mapping[str, tuple[Any, ...]]: ...
    @property
    def paused(self) -> bool: ...
    @property
    def running(self) -> bool: ...
    @property
    def accept_without_printers(self) -> bool: ...


class Gate:
    """The rules of one dispatch pass at ``wall`` over the printers ``slots``."""

    def __init__(self, farm: FarmView, wall: float, slots: Iterable[Slot]) -> None:
        self.policy = farm.policy
        self.spools = farm.spools
        self.pending = spools.pending_by_spool(farm.pending)
        self.starts = farm.power_starts
        self.wall = wall
        self.slots = list(slots)
        self.groups = {s.id: power_group(s.config) for s in self.slots}
        self.budget = power.budget(self.policy, self.starts, self.groups.values(), wall)
        #: The earliest UTC time something that blocks now stops blocking.
        self.wake: float | None = None
        #: The spool each chosen (job, printer) prints from.
        self.chosen: dict[tuple[str, str], int | None] = {}

    def _wake_at(self, at: float | None) -> None:
        if at is not None and at > self.wall and (self.wake is None or at < self.wake):
            self.wake = at

    # ---------------------------------------------------------------- printers

    def printer_blocked(self, slot: Slot) -> str | None:
        """Why ``slot`` may start nothing now (quiet hours, a full power group)."""
        until = calendar.quiet_until(slot.config, self.policy.tz, self.wall)
        if until is not None:
            self._wake_at(until)
            end = calendar.local_clock(until, self.policy.tz)
            return f"quiet hours until {end}"
        group = self.groups.get(slot.id, power_group(slot.config))
        if self.budget.get(group, 1) <= 0:
            opens = power.opens_at(self.policy, self.starts, group, self.wall)
            self._wake_at(opens)
            limit = self.policy.limit(group)
            when = f"next start at {iso(opens)}" if opens else "starts being handed over"
            return f"power group {group}: {limit.max_starts} starts in {limit.window:g} s; {when}"
        return None

    def take(self, slot: Slot) -> list[str]:
        """``slot`` starts a print: it uses one of its group's starts. Returns the ids of
        the pass's printers that may start nothing more (its group is now full)."""
        group = self.groups.get(slot.id, power_group(slot.config))
        if group not in self.budget:
            return []
        self.budget[group] -= 1
        if self.budget[group] > 0:
            return []
        return [pid for pid, g in self.groups.items() if g == group]

    # ---------------------------------------------------------------- jobs

    def job_blocked(self, job: Job) -> str | None:
        """Why ``job`` may not start anywhere now (``not_before``)."""
        until = calendar.waits_until(job, self.wall)
        if until is None:
            return None
        self._wake_at(until)
        return f"scheduled: not before {iso(until)}"

    def fits(self, job: Job, slot: Slot) -> bool:
        """Whether ``slot``'s spools can print ``job`` (remembers the spool)."""
        sid, why = spools.fit(self.policy, self.spools, self.pending, slot, job)
        if why is not None:
            return False
        self.chosen[(job.id, slot.id)] = sid
        return True

    def refusal(self, job: Job, slot: Slot) -> str | None:
        return spools.fit(self.policy, self.spools, self.pending, slot, job)[1]

    def spool_for(self, job: Job, slot: Slot) -> int | None:
        if (job.id, slot.id) not in self.chosen:
            self.fits(job, slot)
        return self.chosen.get((job.id, slot.id))

    # ---------------------------------------------------------------- after the pass

    def arm(self, tx: Tx, now: Now) -> None:
        """Arm the wake-up timer for the earliest opening, unless one is armed for it."""
        wake = self.wake
        if wake is None or wake in tx.wakes:
            return
        tx.set("wakes", tx.wakes | {wake})
        tx.effect(ArmTimer(now.mono + max(wake - now.wall, 0.0), TimerKind.WAKE, repr(wake)))


def woke(tx: Tx, key: str) -> None:
    """A wake-up timer fired: dispatch again (the pass re-arms what still waits)."""
    try:
        at = float(key)
    except ValueError:
        return
    if at in tx.wakes:
        tx.set("wakes", tx.wakes - {at})
    tx.kick = True


# -------------------------------------------------------------------- explanations


class Explainer:
    """Says why things wait, for many jobs and printers at one moment: the printers'
    holds and each requirement class's compatible printers are worked out once (a job
    listing of 1000 queued jobs on 200 printers costs the classes, not 200 000 checks)."""

    def __init__(self, farm: FarmView, slots: Iterable[Slot], wall: float) -> None:
        self.farm = farm
        self.slots = list(slots)
        self.gate = Gate(farm, wall, self.slots)
        self._held: dict[str, str | None] = {}
        self._classes: dict[routing.Requirements, list[Slot]] = {}

    def printer(self, slot: Slot) -> str | None:
        """Why an idle ``slot`` starts nothing now, if a rule (not its state) holds it."""
        if not slot.dispatchable:
            return None
        if slot.id not in self._held:
            self._held[slot.id] = self.gate.printer_blocked(slot)
        return self._held[slot.id]

    def job(self, job: Job) -> str | None:
        """Why queued ``job`` is not printing, in words for an operator: the farm (dispatch
        paused, printers being checked, none yet), its schedule, no printer that can print
        it (each one's reason), or per compatible printer what holds it (its state, a rule,
        its spool). ``"next in line for a free printer"`` when some printer could take it
        now (a pass is coming, or it is behind other jobs); ``None`` when not queued."""
        if job.state is not JobState.QUEUED:
            return None
        if self.farm.paused:
            return "dispatch is paused"
        if not self.farm.running:
            return "the printers are being checked after a start"
        if not self.slots:
            if self.farm.accept_without_printers:
                return "no printer yet: it waits for one to announce itself (MQTT discovery)"
            return "no printers are configured"
        why = self.gate.job_blocked(job)
        if why is not None:
            return why
        req = routing.requirements_of(job)
        compatible = self._classes.get(req)
        if compatible is None:
            compatible = [
                s for s in self.slots if routing.incompatibility(s.capabilities, req) is None
            ]
            self._classes[req] = compatible
        if not compatible:
            unfit = [f"{s.id}: {routing.incompatibility(s.capabilities, req)}" for s in self.slots]
            return "no printer can print it (" + _named(unfit) + ")"
        busy: list[str] = []
        held: list[str] = []
        for slot in compatible:
            if not slot.dispatchable:
                state = slot.state
                text = "busy" if state is PrinterState.IDLE else state.value.replace("_", " ")
                busy.append(f"{slot.id} {text}")
                continue
            blocked = self.printer(slot)
            if blocked is None and slot.spools:
                blocked = self.gate.refusal(job, slot)
            if blocked is None:
                return "next in line for a free printer"
            held.append(f"{slot.id}: {blocked}")
        if not held:
            return "waiting for a free printer (" + _named(busy) + ")"
        return "; ".join(held + [b.replace(" ", ": ", 1) for b in busy])


def _named(parts: list[str]) -> str:
    """``parts`` joined, at most ``NAMED`` of them named."""
    more = len(parts) - NAMED
    return "; ".join(parts[:NAMED]) + (f"; and {more} more" if more > 0 else "")


def explain_printer(
    farm: FarmView, slot: Slot, wall: float, *, others: Iterable[Slot]
) -> str | None:
    """Why an idle ``slot`` starts no print now, if a rule (not its state) holds it."""
    return Explainer(farm, [slot, *others], wall).printer(slot)


def explain_job(farm: FarmView, job: Job, slots: Iterable[Slot], wall: float) -> str | None:
    """Why queued ``job`` is not printing (see ``Explainer.job``)."""
    return Explainer(farm, slots, wall).job(job)
