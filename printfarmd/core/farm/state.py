"""The farm's live state, and the overlay a decision writes into.

``FarmState`` holds what can still change: live jobs (see ``is_live``), the queue of
QUEUED jobs, the printers' slots, settings and a few counters. Only the owner task
changes it, and only by ``FarmState.apply(tx)`` after the store committed what ``tx``
decided. ``Tx`` is a copy-on-write overlay over a ``FarmState`` (or over another ``Tx``):
decisions read through it and write into it, so nothing a decision did is visible in
the state until it is applied, and a decision that raises leaves its parent untouched.

Pure: no trio, no I/O, no clock. Times are passed in as ``Now`` (UTC wall seconds for
what is stored, monotonic seconds for timers and the watchdog).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from printfarmd.config import PrinterConfig
from printfarmd.core import retry as retry_rules
from printfarmd.core.farm.upkeep_state import Counters, PendingUsage, Policy, SpoolInfo
from printfarmd.core.queue import JobQueue
from printfarmd.models import Capabilities, Job, JobState, Printer, PrinterState

#: (issue 16) Parts of the state a ``Tx`` replaces whole with ``set``.
UPKEEP_SCALARS = ("spools", "pending", "power_starts", "wakes")
#: Idempotency keys the farm remembers in memory (older ones are found in the store).
KEYS_IN_MEMORY = 10_000
#: A printer that accepted a job and then reports idle this many monotonic seconds later
#: (without ever reporting the job) has lost it; earlier idle reports may be stale.
START_GRACE = 3.0
#: A printer printing a farm job it should not (cancelled, moved) is told to stop again
#: at most this often while it keeps reporting it.
STRAY_STOP_INTERVAL = 10.0


class Now(msgspec.Struct, frozen=True):
    """The time of an input: ``wall`` (UTC Unix seconds, stored) and ``mono`` (trio's
    monotonic clock, for timers and the watchdog)."""

    wall: float
    mono: float


class Settings(msgspec.Struct, frozen=True):
    """Runtime-tunable settings (``PUT /api/orchestrator/config``), persisted."""

    max_retries: int = 3
    retry_backoff: tuple[float, ...] = (60.0, 300.0, 1500.0)
    cooldown_seconds: float = 0.0

    @property
    def policy(self) -> retry_rules.RetryPolicy:
        return retry_rules.RetryPolicy(self.max_retries, self.retry_backoff)

    def as_json(self) -> dict[str, Any]:
        return {
            "max_retries": self.max_retries,
            "retry_backoff": list(self.retry_backoff),
            "cooldown_seconds": self.cooldown_seconds,
        }


def capabilities_of(config: PrinterConfig) -> Capabilities:
    return Capabilities(
        materials=tuple(m.upper() for m in config.materials),
        nozzle_diameter=config.nozzle_diameter,
        bed_size=config.bed_size,
        tags=tuple(config.tags),
        colours=tuple(config.colours),
    )


class Slot(msgspec.Struct, frozen=True):
    """One printer as the farm sees it (an immutable value; changes make a new one).

    Three kinds of field:
    - the driver's last report (``reported``, ``reported_job``, ``progress``, ...): facts,
      shown as they arrive; ``known`` turns true with the first report since start;
    - farm state that is stored: ``plate_clear`` and ``maintenance``; ``current_job``
      (the job printing or post-processing here) follows from the stored jobs;
    - the hand-over and the watch, never stored: ``handing`` (a start command in flight
      for that job), ``confirmed`` (the printer reported printing ``current_job``),
      ``start_acked_at`` (monotonic time the printer accepted it), ``restored`` (held
      since before a restart, not yet confirmed), ``last_progress_at`` (the watchdog's
      input), ``paused`` and the stray-print bookkeeping.
    """

    config: PrinterConfig
    capabilities: Capabilities
    reported: PrinterState = PrinterState.OFFLINE
    reported_job: str | None = None
    known: bool = False
    progress: float = 0.0
    remaining: float | None = None
    message: str = ""
    updated_at: float = 0.0
    plate_clear: bool = True
    maintenance: bool = False
    current_job: str | None = None
    handing: str | None = None
    confirmed: bool = False
    restored: bool = False
    start_acked_at: float | None = None
    last_progress_at: float = 0.0
    paused: bool = False
    eta: float | None = None
    stray_job: str | None = None
    stray_stop_at: float | None = None
    #: The printer printed something the farm did not start: its plate is not known clear
    #: once it stops.
    outside: bool = False
    #: (issue 16, stored) The Spoolman spool bound to each tool (``None``: no spool).
    spools: tuple[int | None, ...] = ()
    #: The materials the driver last reported loaded (an AMS, say; empty: the configured
    #: ones), with ``loaded_colours`` index-aligned (``""``: unknown); with the bound
    #: spools' they make ``capabilities`` (``spools.capabilities``).
    loaded: tuple[str, ...] = ()
    loaded_colours: tuple[str, ...] = ()
    #: (issue 16, stored) Use since the last recorded maintenance, and why it is due
    #: (``due``: a threshold was crossed at ``due_at``; cleared by recorded maintenance).
    counters: Counters = msgspec.field(default_factory=Counters)
    due: str | None = None
    due_at: float | None = None

    @classmethod
    def from_config(cls, config: PrinterConfig) -> Slot:
        return cls(config=config, capabilities=capabilities_of(config))

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def state(self) -> PrinterState:
        """The farm-level state, from the driver's report and the farm's own flags."""
        if self.maintenance:
            return PrinterState.MAINTENANCE
        if self.handing is not None:
            return PrinterState.PRINTING
        if self.reported is PrinterState.IDLE:
            return PrinterState.IDLE if self.plate_clear else PrinterState.AWAITING_CLEAR
        return self.reported

    @property
    def dispatchable(self) -> bool:
        """May be given a job now: reports idle, plate known clear, nothing held or in
        flight, not in maintenance, not printing anything of its own."""
        return (
            not self.maintenance
            and self.reported is PrinterState.IDLE
            and self.plate_clear
            and self.current_job is None
            and self.handing is None
        )

    def view(self) -> Printer:
        return Printer(
            id=self.id,
            name=self.config.name or self.id,
            driver=self.config.driver,
            capabilities=self.capabilities,
            state=self.state,
            plate_clear=self.plate_clear,
            current_job=self.current_job or self.handing,
            progress=self.progress,
            message=self.message,
            maintenance=self.maintenance,
            auto_clear=self.config.auto_clear,
            updated_at=self.updated_at,
        )


def is_live(job: Job) -> bool:
    """Whether ``job`` can still change without an operator asking: kept in memory.

    ``ready``, ``shipped``, ``cancelled`` and failed-for-good jobs (no retry scheduled)
    are read from the store when needed.
    """
    if job.state in (JobState.READY, JobState.SHIPPED, JobState.CANCELLED):
        return False
    return not (job.state is JobState.FAILED and job.retry_at is None)


class FarmState:
    """The committed live state. Changed only by ``apply`` (the owner, after a commit)."""

    def __init__(
        self,
        *,
        printers: Iterable[Slot] = (),
        jobs: Iterable[Job] = (),
        settings: Settings | None = None,
        paused: bool = False,
        next_position: int = 1,
        accept_without_printers: bool = False,
        policy: Policy | None = None,
        spools: Mapping[int, SpoolInfo] | None = None,
        pending: Iterable[PendingUsage] = (),
        power_starts: Mapping[str, tuple[Any, ...]] | None = None,
        cluster: bool = False,
        dropped: Iterable[str] = (),
    ) -> None:
        live = [j for j in jobs if is_live(j)]
        self.jobs: dict[str, Job] = {j.id: j for j in live}
        self.queue = JobQueue(j for j in live if j.state is JobState.QUEUED)
        self.printers: dict[str, Slot] = {s.id: s for s in printers}
        self.settings = settings or Settings()
        self.paused = paused
        #: False until start-up reconciliation is over: no dispatch before.
        self.running = False
        self.next_position = max(next_position, 1)
        #: Jobs may be accepted while no printer is known (printers arrive by discovery).
        self.accept_without_printers = accept_without_printers
        self.keys: collections.OrderedDict[str, tuple[str, tuple[str, ...]]] = (
            collections.OrderedDict()
        )
        self.speed_factors: dict[str, float] = {}
        self.retry_waiting: set[str] = {
            j.id for j in live if j.state is JobState.FAILED and j.retry_at is not None
        }
        # (issue 16) Upkeep: the rules, what is known of the spools, the usage not yet
        # confirmed by Spoolman, recent print starts per power group (``power.Start``) and the
        # wake-up timers armed for dispatch (UTC times).
        self.policy: Policy = policy or Policy()
        self.spools: Mapping[int, SpoolInfo] = dict(spools or {})
        self.pending: Mapping[str, PendingUsage] = {p.key: p for p in pending}
        self.power_starts: Mapping[str, tuple[Any, ...]] = dict(power_starts or {})
        self.wakes: frozenset[float] = frozenset()
        #: (issue 18) One daemon of several sharing the farm: jobs printing on printers
        #: that are not this daemon's are another daemon's (``core/farm/shared.py``).
        self.cluster = cluster
        #: (issue 18) Printers this daemon drove before its restart and no longer does.
        self.dropped: frozenset[str] = frozenset(dropped)

    # ------------------------------------------------------------------ reads (FarmView)

    def job(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def printer(self, printer_id: str) -> Slot | None:
        return self.printers.get(printer_id)

    def printer_ids(self) -> list[str]:
        return list(self.printers)

    def key(self, key: str) -> tuple[str, tuple[str, ...]] | None:
        return self.keys.get(key)

    def speed_factor(self, printer_id: str) -> float | None:
        return self.speed_factors.get(printer_id)

    def max_front(self) -> int:
        return self.queue.max_front()

    def queued_ordered(self) -> list[Job]:
        return self.queue.ordered()

    @property
    def base(self) -> FarmState:
        return self

    # ------------------------------------------------------------------ apply

    def apply(self, tx: Tx) -> None:
        """Make ``tx``'s changes (decided on this state) the state. Sync: no checkpoint."""
        if tx.parent is not self:
            raise ValueError("a transaction can only be applied to the state it was made on")
        for job in tx.jobs.values():
            self._put_job(job)
        for pid, slot in tx.printers.items():
            if slot is None:
                self.printers.pop(pid, None)
            else:
                self.printers[pid] = slot
        s = tx.scalars
        if "settings" in s:
            self.settings = s["settings"]
        if "paused" in s:
            self.paused = s["paused"]
        if "running" in s:
            self.running = s["running"]
        if "next_position" in s:
            self.next_position = s["next_position"]
        for name in UPKEEP_SCALARS:
            if name in s:
                setattr(self, name, s[name])
        for key, value in tx.keys.items():
            self.keys[key] = value
            self.keys.move_to_end(key)
        while len(self.keys) > KEYS_IN_MEMORY:
            self.keys.popitem(last=False)
        self.speed_factors.update(tx.speed)

    def _put_job(self, job: Job) -> None:
        if job.state is JobState.QUEUED:
            current = self.queue.get(job.id)
            if current != job:
                self.queue.push(job)
        elif job.id in self.queue:
            self.queue.remove(job.id)
        if job.state is JobState.FAILED and job.retry_at is not None:
            self.retry_waiting.add(job.id)
        else:
            self.retry_waiting.discard(job.id)
        if is_live(job):
            self.jobs[job.id] = job
        else:
            self.jobs.pop(job.id, None)


class Tx:
    """A copy-on-write overlay: what one batch (or one input) decided, not yet committed.

    Reads look here first, then in ``parent``. Writes stay here until ``merge`` (into a
    parent ``Tx``) or ``FarmState.apply``. Decisions also collect here the records the
    store must commit and the effects to run after the commit.
    """

    def __init__(self, parent: FarmState | Tx) -> None:
        self.parent = parent
        self.jobs: dict[str, Job] = {}
        self.printers: dict[str, Slot | None] = {}
        self.printer_order: list[str] = []
        self.scalars: dict[str, Any] = {}
        self.keys: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.speed: dict[str, float] = {}
        self.records: list[Any] = []
        self.effects: list[Any] = []
        #: A dispatch pass is worth running after this commits.
        self.kick = False

    # ------------------------------------------------------------------ reads

    @property
    def base(self) -> FarmState:
        return self.parent.base

    def job(self, job_id: str) -> Job | None:
        if job_id in self.jobs:
            return self.jobs[job_id]
        return self.parent.job(job_id)

    def printer(self, printer_id: str) -> Slot | None:
        if printer_id in self.printers:
            return self.printers[printer_id]
        return self.parent.printer(printer_id)

    def printer_ids(self) -> list[str]:
        ids = [pid for pid in self.parent.printer_ids() if self.printers.get(pid, True)]
        return ids + [pid for pid in self.printer_order if pid not in ids and self.printers[pid]]

    def slots(self) -> Iterator[Slot]:
        for pid in self.printer_ids():
            slot = self.printer(pid)
            if slot is not None:
                yield slot

    def key(self, key: str) -> tuple[str, tuple[str, ...]] | None:
        if key in self.keys:
            return self.keys[key]
        return self.parent.key(key)

    def speed_factor(self, printer_id: str) -> float | None:
        if printer_id in self.speed:
            return self.speed[printer_id]
        return self.parent.speed_factor(printer_id)

    def _scalar(self, name: str) -> Any:
        if name in self.scalars:
            return self.scalars[name]
        parent = self.parent
        if isinstance(parent, Tx):
            return parent._scalar(name)
        if name == "max_front":
            return parent.max_front()
        return getattr(parent, name)

    @property
    def settings(self) -> Settings:
        value: Settings = self._scalar("settings")
        return value

    @property
    def paused(self) -> bool:
        return bool(self._scalar("paused"))

    @property
    def running(self) -> bool:
        return bool(self._scalar("running"))

    @property
    def accept_without_printers(self) -> bool:
        return bool(self._scalar("accept_without_printers"))

    # (issue 16) upkeep parts of the state; each is replaced whole by ``set``.
    @property
    def policy(self) -> Policy:
        value: Policy = self._scalar("policy")
        return value

    @property
    def spools(self) -> Mapping[int, SpoolInfo]:
        value: Mapping[int, SpoolInfo] = self._scalar("spools")
        return value

    @property
    def pending(self) -> Mapping[str, PendingUsage]:
        value: Mapping[str, PendingUsage] = self._scalar("pending")
        return value

    @property
    def power_starts(self) -> Mapping[str, tuple[Any, ...]]:
        """Recent print starts per power group (``power.Start`` values)."""
        value: Mapping[str, tuple[Any, ...]] = self._scalar("power_starts")
        return value

    @property
    def wakes(self) -> frozenset[float]:
        value: frozenset[float] = self._scalar("wakes")
        return value

    def max_front(self) -> int:
        return int(self._scalar("max_front"))

    def queued_ordered(self) -> list[Job]:
        """Every queued job in dispatch order, as this overlay sees them. O(n log n)."""
        changed = self._all_changed_jobs()
        out = [changed.get(j.id, j) for j in self.base.queue.ordered()]
        seen = {j.id for j in out}
        out += [j for jid, j in changed.items() if jid not in seen]
        queued = [j for j in out if j.state is JobState.QUEUED]
        queued.sort(key=lambda j: (j.sort_key, j.id))
        return queued

    def _all_changed_jobs(self) -> dict[str, Job]:
        parent = self.parent
        merged = parent._all_changed_jobs() if isinstance(parent, Tx) else {}
        merged.update(self.jobs)
        return merged

    @property
    def dirty_jobs(self) -> bool:
        """Whether this overlay (or a parent overlay) changed any job."""
        return bool(self._all_changed_jobs())

    # ------------------------------------------------------------------ writes

    def put_job(self, job: Job) -> None:
        self.jobs[job.id] = job
        if job.state is JobState.QUEUED:
            self.kick = True
        if job.front > self.max_front():
            self.scalars["max_front"] = job.front

    def put_printer(self, slot: Slot) -> None:
        if self.printer(slot.id) is None and slot.id not in self.printer_order:
            self.printer_order.append(slot.id)
        self.printers[slot.id] = slot

    def remove_printer(self, printer_id: str) -> None:
        self.printers[printer_id] = None

    def set(self, name: str, value: Any) -> None:
        """Set one of the scalars: settings, paused, running, next_position, and the
        upkeep parts (``UPKEEP_SCALARS``)."""
        self.scalars[name] = value

    def allocate_position(self) -> int:
        position = int(self._scalar("next_position"))
        self.scalars["next_position"] = position + 1
        return position

    def remember_key(self, key: str, digest: str, job_ids: tuple[str, ...]) -> None:
        self.keys[key] = (digest, job_ids)

    def set_speed_factor(self, printer_id: str, factor: float) -> None:
        self.speed[printer_id] = factor

    def record(self, *records: Any) -> None:
        self.records.extend(records)

    def effect(self, *effects: Any) -> None:
        self.effects.extend(effects)

    def merge(self) -> None:
        """Fold this overlay into its parent ``Tx`` (the input it decided succeeded)."""
        parent = self.parent
        if not isinstance(parent, Tx):
            raise TypeError("merge folds into a parent Tx; use FarmState.apply for the state")
        parent.jobs.update(self.jobs)
        for pid in self.printer_order:
            if pid not in parent.printer_order:
                parent.printer_order.append(pid)
        parent.printers.update(self.printers)
        parent.scalars.update(self.scalars)
        parent.keys.update(self.keys)
        parent.speed.update(self.speed)
        parent.records.extend(self.records)
        parent.effects.extend(self.effects)
        parent.kick = parent.kick or self.kick
