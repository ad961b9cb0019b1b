"""The scheduler: sole owner of the live queue, job states and printer assignments.

Every change follows one path: compute the new values with the pure core, **persist**
them (``Store.save`` returns after COMMIT), apply them to memory, then **publish** the
committed events on the bus. Changes to existing jobs happen under one lock so two
commands can never interleave on the same job; job creation needs no lock (a new job
is invisible until committed) so concurrent submissions share group commits.

Printer I/O (start/cancel) never runs under the lock: a hung printer must not stall
the farm. The dispatch loop assigns jobs to idle printers in queue order; driver
reports arrive on one channel and are handled one at a time.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio

from printfarmd import faults
from printfarmd.config import Config, PrinterConfig
from printfarmd.core import eta as eta_rules
from printfarmd.core import gcode_meta, routing
from printfarmd.core import retry as retry_rules
from printfarmd.core import watchdog as watchdog_rules
from printfarmd.core.jobs import transition
from printfarmd.core.queue import JobQueue
from printfarmd.core.reload import PrinterReloadPlan, plan_printer_reload
from printfarmd.drivers.base import (
    DriverError,
    DriverEvent,
    JobFailed,
    JobFinished,
    JobSpec,
    PlateCleared,
    PrinterDriver,
    StatusReport,
)
from printfarmd.errors import BadRequest, Conflict, FarmError, NotFound, ValidationFailed
from printfarmd.models import (
    TERMINAL_STATES,
    Event,
    Job,
    JobEvent,
    JobState,
    Printer,
    PrinterState,
    new_job_id,
)
from printfarmd.services import files, photos, slicing
from printfarmd.services.bus import Bus, ProgressUpdate
from printfarmd.services.metrics import FarmCounters
from printfarmd.services.printers import PrinterSlot
from printfarmd.store.store import NewEvent, Store

log = logging.getLogger("printfarmd.scheduler")

PROGRESS_FLUSH_SECONDS = 5.0
STATUS_TIMEOUT = 10.0
#: After a printer accepted a job, idle reports are taken as "job lost" only once this
#: many seconds have passed (a report sent before the start may still be in flight),
#: unless the printer already reported printing the job.
START_GRACE = 3.0
SETTINGS_KEY = "orchestrator"
PAUSED_KEY = "dispatch_paused"


@attrs.frozen
class JobRequest:
    """A validated submission (the API checked types and ranges)."""

    filename: str
    name: str = ""
    priority: int = 0
    copies: int = 1
    material: str | None = None
    nozzle_diameter: float | None = None
    required_tags: tuple[str, ...] = ()
    min_bed: tuple[float, float, float] | None = None
    sku: str | None = None
    estimated_time: float | None = None
    source: str = "api"

    def digest(self) -> str:
        """A stable hash of the request, to detect an Idempotency-Key reused for another."""
        return hashlib.sha256(
            orjson.dumps(attrs.asdict(self), option=orjson.OPT_SORT_KEYS)
        ).hexdigest()


@attrs.frozen
class OrchestratorSettings:
    """Runtime-tunable settings (``PUT /api/orchestrator/config``), persisted."""

    max_retries: int
    retry_backoff: tuple[float, ...]
    cooldown_seconds: float

    @property
    def policy(self) -> retry_rules.RetryPolicy:
        return retry_rules.RetryPolicy(self.max_retries, self.retry_backoff)


@attrs.frozen
class QueueHealth:
    paused: bool
    queue_depth: int
    printing: int
    dispatching: int
    awaiting_clear: int
    retry_waiting: int
    oldest_queued_at: float | None
    printers_by_state: dict[str, int]


def _contained_path(root: Path, job: Job) -> Path:
    """``job``'s file through the one containment check (``BadRequest`` if it escapes)."""
    return files.resolve_in(root, job.filename, must_exist=False)


class Scheduler:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        bus: Bus,
        drivers: Mapping[str, PrinterDriver],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self._wall = wall
        self.jobs: dict[str, Job] = {}
        self.queue = JobQueue()
        self.printers: dict[str, PrinterSlot] = {
            p.id: PrinterSlot.from_config(p, drivers[p.id]) for p in config.printers
        }
        sc = config.scheduler
        self.settings = OrchestratorSettings(
            sc.max_retries, tuple(sc.retry_backoff), sc.cooldown_seconds
        )
        self.paused = sc.dispatch_paused
        self._lock = trio.Lock()
        self._next_position = 1
        self._dispatch_kick = trio.Event()
        self._timers: list[tuple[float, int, str, str]] = []
        self._timer_seq = itertools.count()
        self._timer_kick = trio.Event()
        self._dirty_progress: set[str] = set()
        #: trio time of each printing job's last progress (or start): the watchdog's input.
        self._last_progress: dict[str, float] = {}
        #: Printing jobs whose printer reports them paused (never "stuck").
        self._paused_jobs: set[str] = set()
        self._idempotency_inflight: dict[str, trio.Event] = {}
        #: Per printer: observed print time per second of slicer estimate (core/eta.py).
        self.speed_factors: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None
        self._send_events, self._recv_events = trio.open_memory_channel[DriverEvent](1024)
        self.ready = False
        #: Called (after commit, never blocking) when a job fails for good: retries spent.
        #: The daemon wires the notifier here.
        self.escalate: Callable[[Job], None] | None = None
        #: issue 8: each driver's cancel scope, so a reload can stop one printer's driver.
        self._driver_scopes: dict[str, trio.CancelScope] = {}
        #: issue 8: counters for /metrics, bumped after each commit.
        self.counters = FarmCounters()

    # ================================================================ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Rebuild from the store, start drivers, reconcile, then serve until cancelled."""
        await self._restore()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # Start every driver at once: a printer that does not answer must not delay
            # the others (or the HTTP server) by its connect timeout.
            async with trio.open_nursery() as starting:
                for slot in self.printers.values():
                    starting.start_soon(nursery.start, self._run_driver, slot.id, slot.driver)
            nursery.start_soon(self._driver_event_loop)
            await self._reconcile()
            nursery.start_soon(self._dispatch_loop)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._progress_flush_loop)
            self.ready = True
            self._kick()
            log.info("printer drivers started", extra={"printers": len(self.printers)})
            task_status.started()

    async def _restore(self) -> None:
        saved = await self.store.settings()
        if SETTINGS_KEY in saved:
            s = saved[SETTINGS_KEY]
            self.settings = OrchestratorSettings(
                int(s["max_retries"]),
                tuple(float(x) for x in s["retry_backoff"]),
                float(s["cooldown_seconds"]),
            )
        if PAUSED_KEY in saved:
            self.paused = bool(saved[PAUSED_KEY])
        memory = await self.store.printer_memory()
        for pid, mem in memory.items():
            if pid in self.printers:
                self.printers[pid].plate_clear = mem.plate_clear
                self.printers[pid].maintenance = mem.maintenance
        self._next_position = await self.store.max_position() + 1
        for job in await self.store.load_open_jobs():
            self.jobs[job.id] = job
            if job.state is JobState.QUEUED:
                self.queue.push(job)
            if job.state is JobState.PRINTING:
                # A fresh window after a restart: an unreachable printer gets the whole
                # stale threshold to report before the watchdog acts.
                self._last_progress[job.id] = trio.current_time()
            slot = self.printers.get(job.printer_id or "")
            if job.state in (JobState.PRINTING, JobState.POST_PROCESS) and slot is not None:
                slot.current_job = job.id
                slot.plate_clear = False if job.state is JobState.POST_PROCESS else slot.plate_clear
        log.info(
            "queue restored",
            extra={"open_jobs": len(self.jobs), "queued": len(self.queue), "paused": self.paused},
        )

    async def _reconcile(self) -> None:
        """Match jobs that were in flight at the last stop with what printers report.

        Printing this job: keep it. Reachable but idle or on another job: failure path,
        with the reason recorded. Unreachable: keep waiting for its first report.
        Jobs stopped half-way through the pipeline are carried on; timers re-armed.
        """
        for job in list(self.jobs.values()):
            if job.state is JobState.PRINTING:
                slot = self.printers.get(job.printer_id or "")
                if slot is None:
                    await self._fail_job(job.id, "printer was removed from the configuration", None)
                    continue
                try:
                    with trio.fail_after(STATUS_TIMEOUT):
                        report = await slot.driver.status()
                except (DriverError, trio.TooSlowError):
                    log.warning(
                        "printer unreachable at start", extra={"printer": slot.id, "job": job.id}
                    )
                    continue
                self._note_report(slot, report)
                if report.job_id == job.id and report.state in (
                    PrinterState.PRINTING,
                    PrinterState.PAUSED,
                ):
                    slot.confirmed = True
                    continue
                await self._fail_job(
                    job.id,
                    f"printer {slot.id} no longer has the job after a restart "
                    f"(reports {report.state.value})",
                    slot.id,
                )
            elif job.state is JobState.FAILED and job.retry_at is not None:
                self._add_timer_wall(job.retry_at, "retry", job.id)
            elif job.state is JobState.POST_PROCESS:
                slot = self.printers.get(job.printer_id or "")
                if slot is not None and slot.config.auto_clear:
                    self._add_timer(self.settings.cooldown_seconds, "autoclear", slot.id)
            elif job.state in (JobState.CREATED, JobState.VALIDATED, JobState.SLICED):
                async with self._lock:
                    await self._advance_pipeline([job])
        # Models whose slicing was cut short by the stop: slice them again, once per group.
        unsliced: dict[str, list[str]] = {}
        for job in self.jobs.values():
            if job.state is JobState.VALIDATED and slicing.is_model(job.filename):
                unsliced.setdefault(job.group_id or job.id, []).append(job.id)
        assert self._nursery is not None
        for ids in unsliced.values():
            model = self.config.gcodes_path / self.jobs[ids[0]].filename
            self._nursery.start_soon(self._slice_group, ids, model)
        for slot in self.printers.values():
            if slot.current_job is None and not slot.plate_clear and slot.config.auto_clear:
                self._add_timer(self.settings.cooldown_seconds, "autoclear", slot.id)

    # ================================================================ persistence core

    async def _commit(
        self,
        jobs: Sequence[Job],
        events: Sequence[NewEvent],
        printers: Sequence[PrinterSlot] = (),
    ) -> list[Event]:
        """Persist, then apply to memory, then publish. Raises FarmError if nothing was stored."""
        stored = await self.store.save(
            jobs, events, printers=[(p.id, p.memory) for p in printers], now=self._wall()
        )
        for job in jobs:
            self._apply(job)
        for ev in stored:
            self.bus.publish(ev)
            if ev.type == "job.transition":
                log.info(
                    "job state changed",
                    extra={
                        "job": ev.job_id,
                        "printer": ev.printer_id,
                        "state": ev.to_state,
                        "from_state": ev.from_state,
                        "reason": ev.reason,
                    },
                )
        return stored

    def _apply(self, job: Job) -> None:
        old = self.jobs.get(job.id)
        if job.state is JobState.PRINTING:
            if old is None or old.state is not JobState.PRINTING:
                self._last_progress[job.id] = trio.current_time()
        else:
            self._last_progress.pop(job.id, None)
            self._paused_jobs.discard(job.id)
        if job.state is JobState.QUEUED:
            self.queue.push(job)
        elif job.id in self.queue:
            self.queue.remove(job.id)
        if job.state in TERMINAL_STATES:
            self.jobs.pop(job.id, None)
        else:
            self.jobs[job.id] = job
        if old is not None and old.printer_id and old.printer_id != job.printer_id:
            slot = self.printers.get(old.printer_id)
            if slot is not None and slot.current_job == job.id:
                slot.current_job = None
        if job.printer_id and job.state in (JobState.PRINTING, JobState.POST_PROCESS):
            slot = self.printers.get(job.printer_id)
            if slot is not None:
                slot.current_job = job.id
        elif job.printer_id:
            slot = self.printers.get(job.printer_id)
            if slot is not None and slot.current_job == job.id:
                slot.current_job = None
                slot.confirmed = False
                slot.start_acked_at = None
        if job.state is JobState.QUEUED:
            self._kick()

    def _transition_event(
        self, old: Job | None, new: Job, event: JobEvent | None, reason: str | None
    ) -> NewEvent:
        return NewEvent(
            type="job.transition",
            at=new.updated_at,
            job_id=new.id,
            printer_id=new.printer_id or (old.printer_id if old else None),
            from_state=old.state.value if old else None,
            to_state=new.state.value,
            reason=reason,
            data={"event": event.value if event else "create", "retry_count": new.retry_count},
        )

    async def _load(self, job_id: str) -> Job:
        """The job (open ones from memory, finished ones from the store), or NotFound.

        Finished jobs are returned too so that an action on them fails as the state
        machine says (409), not as "not found".
        """
        job = self.jobs.get(job_id) or await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    # ================================================================ commands

    async def submit(
        self, request: JobRequest, idempotency_key: str | None = None
    ) -> tuple[list[Job], bool]:
        """Validate and store a submission; returns (jobs, created).

        ``created`` is False when ``idempotency_key`` was seen before with the same
        request: the original jobs are returned and nothing new is stored. The same key
        with a different request is a ``Conflict``. Validation failures store nothing.
        """
        if idempotency_key is None:
            return await self._submit_new(request, None), True
        # One request per key at a time: later ones wait, then replay the first's result.
        while (pending := self._idempotency_inflight.get(idempotency_key)) is not None:
            await pending.wait()
        done = self._idempotency_inflight[idempotency_key] = trio.Event()
        try:
            found = await self.store.find_idempotency_key(idempotency_key)
            if found is not None:
                return await self._replay_idempotent(request, found)
            return await self._submit_new(request, idempotency_key), True
        finally:
            del self._idempotency_inflight[idempotency_key]
            done.set()

    async def _replay_idempotent(
        self, request: JobRequest, found: tuple[str, list[str]]
    ) -> tuple[list[Job], bool]:
        digest, ids = found
        if digest != request.digest():
            raise Conflict("Idempotency-Key was already used for a different request")
        jobs = [j for j in [self.jobs.get(i) or await self.store.get_job(i) for i in ids] if j]
        return jobs, False

    async def _submit_new(self, request: JobRequest, idempotency_key: str | None) -> list[Job]:
        # issue 7: an STL/3MF job waits in VALIDATED for the slicer (metadata comes after).
        model = slicing.is_model(request.filename) and bool(self.config.slicer.command)
        if model:
            path = await trio.to_thread.run_sync(
                files.resolve_in, self.config.gcodes_path, request.filename
            )
            meta = gcode_meta.GcodeMeta()
        else:
            path = await trio.to_thread.run_sync(
                files.resolve_gcode, self.config.gcodes_path, request.filename
            )
            meta = await trio.to_thread.run_sync(files.read_meta, path)
        material = (request.material or meta.filament_type or "").upper() or None
        nozzle = request.nozzle_diameter or meta.nozzle_diameter
        estimate = (
            request.estimated_time if request.estimated_time is not None else meta.estimated_time
        )
        now = self._wall()
        group = new_job_id()
        base = Job(
            id=group,
            filename=request.filename,
            name=request.name or request.filename.rsplit("/", 1)[-1],
            priority=request.priority,
            copies=request.copies,
            group_id=group,
            material=material,
            nozzle_diameter=nozzle,
            required_tags=tuple(sorted(set(request.required_tags))),
            min_bed=request.min_bed,
            sku=request.sku,
            estimated_time=estimate,
            created_at=now,
            updated_at=now,
            source=request.source,
        )
        self._check_some_printer_can(base)
        jobs: list[Job] = []
        events: list[NewEvent] = []
        for i in range(request.copies):
            job = attrs.evolve(
                base,
                id=group if i == 0 else new_job_id(),
                copy_index=i + 1,
                position=self._next_position,
            )
            self._next_position += 1
            events.append(self._transition_event(None, job, None, None))
            for step in self._pipeline_steps(job, now):
                events.append(self._transition_event(job, step[1], step[0], None))
                job = step[1]
            jobs.append(job)
        idem = (
            (idempotency_key, request.digest(), [j.id for j in jobs], now)
            if idempotency_key
            else None
        )
        stored = await self.store.save(jobs, events, idempotency=idem, now=now)
        faults.point("job-created")  # committed, not yet acknowledged (test F14)
        for job in jobs:
            self._apply(job)
        if model and self._nursery is not None:
            self._nursery.start_soon(self._slice_group, [j.id for j in jobs], path)
        for ev in stored:
            self.bus.publish(ev)
        log.info(
            "job created",
            extra={
                "job": group,
                "file": request.filename,
                "copies": request.copies,
                "priority": request.priority,
            },
        )
        return jobs

    def _pipeline_steps(self, job: Job, now: float) -> list[tuple[JobEvent, Job]]:
        """The stage transitions a job can take right away (validate, slice, enqueue).

        Validation already ran at submission (file, compatibility); G-code needs no
        slicing, so it passes the slicing stage straight away.
        """
        steps: list[tuple[JobEvent, Job]] = []
        for event in (JobEvent.VALIDATE, JobEvent.SLICE, JobEvent.ENQUEUE):
            if event is JobEvent.SLICE and slicing.is_model(job.filename):
                break  # a model waits in VALIDATED until _slice_group has run the slicer
            if (job.state, event) in _PIPELINE_FROM:
                job = transition(job, event, now)
                steps.append((event, job))
        return steps

    async def _slice_group(self, job_ids: list[str], model: Path) -> None:
        """Run the slicer once for a job group (its copies share the G-code), then move
        each copy still VALIDATED to SLICED and QUEUED with the sliced file and its
        metadata, or to FAILED with the slicer's error text."""
        group = job_ids[0]
        rel = slicing.output_name(self.jobs[group].filename, group)
        out = self.config.gcodes_path / rel
        error: str | None = None
        meta = gcode_meta.GcodeMeta()
        try:
            cmd = self.config.slicer.command
            await slicing.run_slicer(cmd, model, out, self.config.slicer.timeout)
            meta = await trio.to_thread.run_sync(files.read_meta, out)
        except slicing.SliceFailed as exc:
            error = exc.message
        async with self._lock:
            now = self._wall()
            changed: list[Job] = []
            events: list[NewEvent] = []
            for jid in job_ids:
                job = self.jobs.get(jid)
                if job is None or job.state is not JobState.VALIDATED:
                    continue  # cancelled meanwhile
                if error is not None:
                    new = transition(job, JobEvent.FAIL, now, last_error=error)
                    events.append(self._transition_event(job, new, JobEvent.FAIL, error))
                    changed.append(new)
                    continue
                prev = attrs.evolve(
                    job,
                    filename=rel,
                    material=job.material or (meta.filament_type or "").upper() or None,
                    nozzle_diameter=job.nozzle_diameter or meta.nozzle_diameter,
                    estimated_time=job.estimated_time
                    if job.estimated_time is not None
                    else meta.estimated_time,
                )
                for event, nxt in self._pipeline_steps(prev, now):
                    events.append(self._transition_event(prev, nxt, event, None))
                    prev = nxt
                changed.append(prev)
            if changed:
                await self._commit(changed, events)
        log.info("model sliced", extra={"job": group, "file": rel, "reason": error})

    async def _advance_pipeline(self, jobs: Sequence[Job]) -> None:
        now = self._wall()
        out: list[Job] = []
        events: list[NewEvent] = []
        for job in jobs:
            prev = job
            for event, nxt in self._pipeline_steps(job, now):
                events.append(self._transition_event(prev, nxt, event, "resumed after restart"))
                prev = nxt
            out.append(prev)
        if events:
            await self._commit(out, events)

    def _check_some_printer_can(self, job: Job) -> None:
        if not self.printers:
            raise ValidationFailed("no printers are configured", field="filename")
        req = routing.requirements_of(job)
        reasons = []
        for slot in self.printers.values():
            why = routing.incompatibility(slot.capabilities, req)
            if why is None:
                return
            reasons.append(f"{slot.id}: {why}")
        raise ValidationFailed(
            "no configured printer can print this job (" + "; ".join(reasons) + ")"
        )

    async def cancel(self, job_id: str, reason: str = "cancelled by operator") -> Job:
        async with self._lock:
            job = await self._load(job_id)
            new = transition(job, JobEvent.CANCEL, self._wall(), last_error=None)
            slot = (
                self.printers.get(job.printer_id or "") if job.state is JobState.PRINTING else None
            )
            touched: list[PrinterSlot] = []
            if slot is not None:
                # Whatever was printed stays on the plate until someone clears it.
                slot.plate_clear = False
                touched.append(slot)
            await self._commit(
                [new], [self._transition_event(job, new, JobEvent.CANCEL, reason)], touched
            )
        if slot is not None:
            await self._call_driver(slot, "cancel", slot.driver.cancel_job(job.id))
        log.info("job cancelled", extra={"job": job_id, "reason": reason})
        return new

    async def release(self, job_id: str, printer_id: str) -> Job:
        """Send a queued job to a chosen printer now (it must be idle and compatible)."""
        async with self._lock:
            job = await self._load(job_id)
            slot = self.printers.get(printer_id)
            if slot is None:
                raise NotFound(f"printer {printer_id} not found")
            if job.state is not JobState.QUEUED:
                raise Conflict(
                    f"job {job_id} is {job.state.value}: only queued jobs can be released"
                )
            why = routing.incompatibility(slot.capabilities, routing.requirements_of(job))
            if why is not None:
                raise ValidationFailed(
                    f"printer {printer_id} cannot print job {job_id}: {why}", field="printerId"
                )
            if not slot.dispatchable:
                raise Conflict(
                    f"printer {printer_id} is {slot.state.value}: it can take a job only when idle"
                )
            started = await self._start_jobs(
                [(job, slot)], reason=f"released to {printer_id} by operator"
            )
        return started[0]

    async def reprioritize(self, job_id: str, priority: int) -> Job:
        async with self._lock:
            job = await self._load(job_id)
            if job.state in TERMINAL_STATES:
                raise Conflict(
                    f"job {job_id} is {job.state.value}: its priority can no longer change"
                )
            new = attrs.evolve(job, priority=priority, updated_at=self._wall())
            ev = NewEvent(
                "job.reprioritized",
                new.updated_at,
                job_id=job.id,
                data={"from": job.priority, "to": priority},
            )
            await self._commit([new], [ev])
            return new

    async def jump(self, job_id: str) -> Job:
        """Put a queued job in front of every other one."""
        async with self._lock:
            job = await self._load(job_id)
            if job.state is not JobState.QUEUED:
                raise Conflict(f"job {job_id} is {job.state.value}: only queued jobs can jump")
            new = attrs.evolve(job, front=self.queue.max_front() + 1, updated_at=self._wall())
            await self._commit([new], [NewEvent("job.jumped", new.updated_at, job_id=job.id)])
            return new

    async def ship(self, job_id: str, tracking: str) -> Job:
        async with self._lock:
            job = await self._load(job_id)
            new = transition(job, JobEvent.SHIP, self._wall(), tracking=tracking)
            await self._commit([new], [self._transition_event(job, new, JobEvent.SHIP, None)])
            return new

    async def set_paused(self, paused: bool) -> None:
        async with self._lock:
            ev = NewEvent("orchestrator.paused" if paused else "orchestrator.resumed", self._wall())
            stored = await self.store.put_setting(PAUSED_KEY, paused, ev)
            self.paused = paused
            for e in stored:
                self.bus.publish(e)
        log.info("dispatch paused" if paused else "dispatch resumed")
        self._kick()

    async def update_settings(self, changes: Mapping[str, Any]) -> OrchestratorSettings:
        """Apply validated ``changes`` (keys of OrchestratorSettings) and persist them."""
        async with self._lock:
            new = attrs.evolve(self.settings, **changes)
            value = {
                "max_retries": new.max_retries,
                "retry_backoff": list(new.retry_backoff),
                "cooldown_seconds": new.cooldown_seconds,
            }
            ev = NewEvent("orchestrator.config", self._wall(), data=value)
            stored = await self.store.put_setting(SETTINGS_KEY, value, ev)
            self.settings = new
            for e in stored:
                self.bus.publish(e)
            return new

    async def clear_plate(self, printer_id: str, source: str = "operator") -> Printer:
        """The plate of ``printer_id`` is clear: its finished job becomes ready, it may print."""
        async with self._lock:
            slot = self._slot(printer_id)
            await self._clear_plate_locked(slot, source)
            return slot.view()

    async def _clear_plate_locked(self, slot: PrinterSlot, source: str) -> None:
        now = self._wall()
        jobs: list[Job] = []
        events: list[NewEvent] = []
        job = self.jobs.get(slot.current_job or "")
        if job is not None and job.state is JobState.POST_PROCESS:
            new = transition(job, JobEvent.CLEAR, now)
            jobs.append(new)
            events.append(
                self._transition_event(job, new, JobEvent.CLEAR, f"plate cleared by {source}")
            )
        elif job is not None and job.state is JobState.PRINTING:
            raise Conflict(
                f"printer {slot.id} is printing job {job.id}: its plate cannot be cleared now"
            )
        if slot.plate_clear and not jobs:
            return  # already clear: nothing to record
        slot.plate_clear = True
        events.append(NewEvent("printer.plate_cleared", now, printer_id=slot.id, reason=source))
        await self._commit(jobs, events, [slot])
        self._kick()

    async def set_maintenance(self, printer_id: str, enabled: bool) -> Printer:
        async with self._lock:
            slot = self._slot(printer_id)
            if slot.maintenance != enabled:
                slot.maintenance = enabled
                ev = NewEvent(
                    "printer.maintenance",
                    self._wall(),
                    printer_id=slot.id,
                    data={"enabled": enabled},
                )
                await self._commit([], [ev], [slot])
                self._kick()
            return slot.view()

    def _slot(self, printer_id: str) -> PrinterSlot:
        slot = self.printers.get(printer_id)
        if slot is None:
            raise NotFound(f"printer {printer_id} not found")
        return slot

    # ================================================================ views

    def printer_views(self) -> list[Printer]:
        return [slot.view() for slot in self.printers.values()]

    def printer_view(self, printer_id: str) -> Printer:
        return self._slot(printer_id).view()

    async def get_job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id) or await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    def fresh(self, job: Job) -> Job:
        """The in-memory version of ``job`` if it is open (fresher progress), else ``job``."""
        return self.jobs.get(job.id, job)

    def health(self) -> QueueHealth:
        by_state: dict[str, int] = {}
        for slot in self.printers.values():
            by_state[slot.state.value] = by_state.get(slot.state.value, 0) + 1
        queued = [j.queued_at for j in self.queue if j.queued_at is not None]
        return QueueHealth(
            paused=self.paused,
            queue_depth=len(self.queue),
            printing=sum(1 for j in self.jobs.values() if j.state is JobState.PRINTING),
            dispatching=sum(1 for s in self.printers.values() if s.dispatching),
            awaiting_clear=sum(1 for s in self.printers.values() if not s.plate_clear),
            retry_waiting=sum(
                1 for j in self.jobs.values() if j.state is JobState.FAILED and j.retry_at
            ),
            oldest_queued_at=min(queued) if queued else None,
            printers_by_state=by_state,
        )

    # ================================================================ dispatch

    def _kick(self) -> None:
        self._dispatch_kick.set()

    async def _dispatch_loop(self) -> None:
        while True:
            await self._dispatch_kick.wait()
            self._dispatch_kick = trio.Event()
            try:
                async with self._lock:
                    await self._dispatch_once()
            except FarmError as exc:
                # Storage trouble: nothing was assigned. Try again shortly.
                log.error("dispatch failed", extra={"reason": exc.message})
                await trio.sleep(1.0)
                self._kick()

    async def _dispatch_once(self) -> None:
        """Give queued jobs to idle printers: best job first, then its best printer."""
        if self.paused or not len(self.queue):
            return
        idle = [s for s in self.printers.values() if s.dispatchable]
        taken: list[tuple[Job, PrinterSlot]] = []
        held: list[Job] = []
        while idle:
            best: Job | None = None
            for slot in idle:
                cand = self.queue.peek_for(slot.capabilities)
                if cand is not None and (best is None or cand.sort_key < best.sort_key):
                    best = cand
            if best is None:
                break
            chosen = routing.choose_printer(best, [s.view() for s in idle])
            self.queue.remove(best.id)
            held.append(best)
            if chosen is None:  # pragma: no cover - peek_for guarantees a compatible printer
                continue
            slot = self.printers[chosen.id]
            idle.remove(slot)
            taken.append((best, slot))
        # Put back what we took out of the queue; _start_jobs' commit moves them on.
        for job in held:
            self.queue.push(job)
        if taken:
            await self._start_jobs(taken, reason=None)

    async def _start_jobs(
        self, pairs: Sequence[tuple[Job, PrinterSlot]], reason: str | None
    ) -> list[Job]:
        """Commit QUEUED -> PRINTING for each pair, then hand each job to its driver."""
        now = self._wall()
        new_jobs: list[Job] = []
        events: list[NewEvent] = []
        for job, slot in pairs:
            new = transition(
                job,
                JobEvent.START,
                now,
                printer_id=slot.id,
                eta=self._initial_eta(job, now, slot.id),
            )
            new_jobs.append(new)
            events.append(self._transition_event(job, new, JobEvent.START, reason))
        await self._commit(new_jobs, events)
        for job, _ in pairs:
            if job.queued_at is not None:
                self.counters.observe_dispatch(now - job.queued_at)
        assert self._nursery is not None
        for new, (_, slot) in zip(new_jobs, pairs, strict=True):
            slot.dispatching = True
            slot.confirmed = False
            log.info(
                "job dispatched",
                extra={"job": new.id, "printer": slot.id, "file": new.filename},
            )
            self._nursery.start_soon(self._hand_to_printer, new, slot)
        return new_jobs

    def _initial_eta(self, job: Job, now: float, printer_id: str | None = None) -> float | None:
        # issue 7: the estimate scaled by the printer's observed speed (core/eta.py).
        expected = eta_rules.adjusted(job.estimated_time, self.speed_factors.get(printer_id or ""))
        return None if expected is None else now + expected

    async def _hand_to_printer(self, job: Job, slot: PrinterSlot) -> None:
        faults.point("dispatch")  # issue 8: `wedge@dispatch` tests the systemd watchdog
        try:
            # Checked again now, not only at submission: the file may have been replaced
            # by a symlink out of the gcodes folder since, and the driver reads this path.
            path = await trio.to_thread.run_sync(_contained_path, self.config.gcodes_path, job)
        except BadRequest as exc:
            slot.dispatching = False
            log.warning(
                "job file left the gcodes folder",
                extra={"job": job.id, "printer": slot.id, "reason": exc.message},
            )
            await self._fail_job(job.id, f"file {job.filename}: {exc.message}", slot.id)
            return
        spec = JobSpec(
            job_id=job.id,
            filename=job.filename,
            path=str(path),
            estimated_time=job.estimated_time,
            material=job.material,
            resume_progress=job.resume_progress,
        )
        try:
            await slot.driver.start_job(spec)
        except DriverError as exc:
            slot.dispatching = False
            log.warning(
                "printer refused job",
                extra={"job": job.id, "printer": slot.id, "reason": exc.message},
            )
            await self._fail_job(
                job.id, f"printer {slot.id} refused the job: {exc.message}", slot.id
            )
            return
        slot.dispatching = False
        slot.start_acked_at = trio.current_time()
        # The printer took it; until it reports printing this job, an idle report is stale.
        if slot.reported is PrinterState.IDLE:
            slot.reported = PrinterState.PRINTING
            slot.reported_job = job.id

    async def _call_driver(self, slot: PrinterSlot, what: str, call: Any) -> None:
        try:
            with trio.fail_after(STATUS_TIMEOUT):
                await call
        except (DriverError, trio.TooSlowError) as exc:
            message = exc.message if isinstance(exc, DriverError) else "timed out"
            log.warning(
                "printer command failed",
                extra={"printer": slot.id, "command": what, "reason": message},
            )

    # ================================================================ failures and timers

    async def _fail_job(self, job_id: str, reason: str, printer_id: str | None) -> None:
        async with self._lock:
            await self._fail_job_locked(job_id, reason, printer_id)

    async def _fail_job_locked(self, job_id: str, reason: str, printer_id: str | None) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.state is not JobState.PRINTING:
            return  # already handled (a repeated report, or a cancel won the race)
        now = self._wall()
        # A print that failed on its own restarts from the beginning next time.
        new = attrs.evolve(
            retry_rules.fail(job, reason, printer_id, self.settings.policy, now),
            resume_progress=0.0,
        )
        touched: list[PrinterSlot] = []
        slot = self.printers.get(printer_id or "")
        if (
            slot is not None
            and slot.current_job == job_id
            and (slot.confirmed or slot.start_acked_at is not None)
        ):
            # A print that started and failed leaves something on the plate.
            slot.plate_clear = False
            touched.append(slot)
        await self._commit(
            [new], [self._transition_event(job, new, JobEvent.FAIL, new.last_error)], touched
        )
        if slot is not None and not slot.plate_clear and slot.config.auto_clear:
            self._add_timer(self.settings.cooldown_seconds, "autoclear", slot.id)
        if new.retry_at is not None:
            self._add_timer_wall(new.retry_at, "retry", new.id)
            log.warning(
                "job failed, will retry",
                extra={"job": job_id, "printer": printer_id, "reason": reason},
            )
        else:
            if self.escalate is not None:
                self.escalate(new)
            log.error(
                "job failed for good",
                extra={"job": job_id, "printer": printer_id, "reason": reason},
            )

    def _add_timer(self, delay: float, kind: str, key: str) -> None:
        heapq.heappush(
            self._timers, (trio.current_time() + max(0.0, delay), next(self._timer_seq), kind, key)
        )
        self._timer_kick.set()

    def _add_timer_wall(self, at: float, kind: str, key: str) -> None:
        # The wall clock read now, not when the caller began: a slow commit in between
        # would otherwise make the timer fire that much after ``at``.
        self._add_timer(at - self._wall(), kind, key)

    async def _timer_loop(self) -> None:
        while True:
            while self._timers and self._timers[0][0] <= trio.current_time():
                _, _, kind, key = heapq.heappop(self._timers)
                try:
                    await self._fire(kind, key)
                except FarmError as exc:
                    log.error(
                        "timer action failed",
                        extra={"kind": kind, "key": key, "reason": exc.message},
                    )
                    self._add_timer(1.0, kind, key)
            deadline = self._timers[0][0] if self._timers else math.inf
            with trio.move_on_at(deadline):
                await self._timer_kick.wait()
            if self._timer_kick.is_set():
                self._timer_kick = trio.Event()

    async def _fire(self, kind: str, key: str) -> None:
        async with self._lock:
            if kind == "retry":
                job = self.jobs.get(key)
                if job is None or job.state is not JobState.FAILED or job.retry_at is None:
                    return
                new = retry_rules.retry(job, self._wall())
                await self._commit(
                    [new], [self._transition_event(job, new, JobEvent.RETRY, "retry")]
                )
                self.counters.retries += 1
            elif kind == "autoclear":
                slot = self.printers.get(key)
                if slot is not None and not slot.plate_clear and slot.config.auto_clear:
                    job = self.jobs.get(slot.current_job or "")
                    if job is None or job.state is not JobState.PRINTING:
                        await self._clear_plate_locked(slot, "auto_clear")

    # ================================================================ watchdog

    async def watchdog_sweep(self, stale_threshold: float) -> list[str]:
        """Requeue (or, with retries spent, fail) printing jobs with no progress for
        ``stale_threshold`` seconds of trio time. Returns the ids acted on.

        Each job's transitions (FAILED, then QUEUED) and its printer's plate flag are one
        transaction: a crash leaves the job either still assigned or requeued once.
        """
        acted: list[tuple[Job, PrinterSlot | None]] = []
        async with self._lock:
            stuck = watchdog_rules.find_stuck(
                self._last_progress, self._paused_jobs, trio.current_time(), stale_threshold
            )
            if stuck:
                log.warning("watchdog found stale jobs", extra={"count": len(stuck)})
            for item in stuck:
                job = self.jobs.get(item.job_id)
                if job is None or job.state is not JobState.PRINTING:
                    continue
                now = self._wall()
                steps = watchdog_rules.requeue_or_fail(
                    job, item.idle_for, self.settings.policy, now
                )
                events, prev = [], job
                for event, nxt in steps:
                    events.append(self._transition_event(prev, nxt, event, nxt.last_error))
                    prev = nxt
                slot = self.printers.get(job.printer_id or "")
                touched = []
                if slot is not None:
                    # Whatever the hung printer did, its plate is not known to be clear.
                    slot.plate_clear = False
                    touched.append(slot)
                faults.point("watchdog-before-commit")
                await self._commit([prev], events, touched)
                faults.point("watchdog-after-commit")
                self.counters.watchdog_actions += 1
                acted.append((prev, slot))
                if prev.state is JobState.QUEUED:
                    log.info(
                        "job requeued by watchdog",
                        extra={"job": job.id, "printer": job.printer_id, "reason": prev.last_error},
                    )
                else:
                    log.warning(
                        "job marked as error by watchdog",
                        extra={"job": job.id, "printer": job.printer_id, "reason": prev.last_error},
                    )
                    if self.escalate is not None:
                        self.escalate(prev)
        for job, slot in acted:
            if slot is not None:
                if slot.config.auto_clear:
                    self._add_timer(self.settings.cooldown_seconds, "autoclear", slot.id)
                await self._call_driver(slot, "cancel", slot.driver.cancel_job(job.id))
        return [job.id for job, _ in acted]

    # ================================================================ driver reports

    async def _driver_event_loop(self) -> None:
        async for ev in self._recv_events:
            try:
                async with self._lock:
                    await self._handle(ev)
            except FarmError as exc:
                log.error("could not record a printer report", extra={"reason": exc.message})

    def _note_report(self, slot: PrinterSlot, report: StatusReport) -> None:
        slot.reported = report.state
        slot.reported_job = report.job_id
        slot.progress = report.progress
        slot.message = report.message
        slot.updated_at = self._wall()

    async def _handle(self, ev: DriverEvent) -> None:
        slot = self.printers.get(ev.printer_id)
        if slot is None:
            return
        if isinstance(ev, StatusReport):
            await self._on_status(slot, ev)
        elif isinstance(ev, JobFinished):
            await self._on_finished(slot, ev.job_id)
        elif isinstance(ev, JobFailed):
            await self._fail_job_locked(ev.job_id, ev.reason, slot.id)
        elif isinstance(ev, PlateCleared):
            held = self.jobs.get(slot.current_job or "")
            if held is None or held.state is not JobState.PRINTING:
                await self._clear_plate_locked(slot, "printer")

    async def _on_status(self, slot: PrinterSlot, report: StatusReport) -> None:
        was_dispatchable = slot.dispatchable
        if slot.dispatching and report.state is PrinterState.IDLE:
            # Stale idle report racing our start command: keep the printer busy.
            slot.message = report.message
            return
        self._note_report(slot, report)
        job = self.jobs.get(slot.current_job or "")
        log.debug(
            "printer report",
            extra={
                "printer": slot.id,
                "state": report.state.value,
                "reported_job": report.job_id,
                "job": job.id if job else None,
                "confirmed": slot.confirmed,
            },
        )
        if job is not None and job.state is JobState.PRINTING:
            if report.job_id == job.id and report.state in (
                PrinterState.PRINTING,
                PrinterState.PAUSED,
            ):
                slot.confirmed = True
                if report.state is PrinterState.PAUSED:
                    self._paused_jobs.add(job.id)
                else:
                    self._paused_jobs.discard(job.id)
                if report.progress > job.progress or report.state is PrinterState.PAUSED:
                    self._last_progress[job.id] = trio.current_time()
                now = self._wall()
                eta = (
                    now + report.remaining
                    if report.remaining is not None
                    else self._eta_from_rate(job, report, now)
                )
                self.jobs[job.id] = attrs.evolve(
                    job, progress=report.progress, eta=eta, updated_at=now
                )
                slot.eta = eta
                self._dirty_progress.add(job.id)
            elif report.state is PrinterState.IDLE and (
                slot.confirmed
                or (
                    slot.start_acked_at is not None
                    and trio.current_time() - slot.start_acked_at > START_GRACE
                )
            ):
                # Idle while our job is still printing: lost, whatever job id the report
                # still names (drivers report a finish or failure before the idle after it).
                await self._fail_job_locked(
                    job.id, f"printer {slot.id} went idle without finishing the job", slot.id
                )
            elif report.state is PrinterState.ERROR:
                await self._fail_job_locked(
                    job.id,
                    f"printer {slot.id} reports an error: {report.message or 'unknown'}",
                    slot.id,
                )
        self.bus.publish(
            ProgressUpdate(slot.id, slot.state, slot.current_job, slot.progress, slot.eta)
        )
        if slot.dispatchable and not was_dispatchable:
            self._kick()

    def _eta_from_rate(self, job: Job, report: StatusReport, now: float) -> float | None:
        if job.started_at is None or report.progress < 1.0:
            return job.eta
        elapsed = now - job.started_at
        return now + elapsed * (100.0 - report.progress) / report.progress

    async def _on_finished(self, slot: PrinterSlot, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.state is not JobState.PRINTING or job.printer_id != slot.id:
            return  # a repeated or stale report: already handled
        now = self._wall()
        new = transition(job, JobEvent.FINISH, now)
        slot.plate_clear = False
        slot.progress = 100.0
        await self._commit([new], [self._transition_event(job, new, JobEvent.FINISH, None)], [slot])
        log.info("job printed", extra={"job": job_id, "printer": slot.id})
        if job.started_at is not None:  # issue 7: learn this printer's speed
            factor = eta_rules.learn(
                self.speed_factors.get(slot.id), job.estimated_time, now - job.started_at
            )
            if factor is not None:
                self.speed_factors[slot.id] = factor
        if self._nursery is not None:  # issue 7: the plate photo, in the background
            root = self.config.data_path / "photos"
            self._nursery.start_soon(photos.capture, slot.driver, root, job_id, now)
        if slot.config.auto_clear:
            self._add_timer(self.settings.cooldown_seconds, "autoclear", slot.id)

    async def _progress_flush_loop(self) -> None:
        """Persist coalesced progress every few seconds (state changes are never coalesced)."""
        while True:
            await trio.sleep(PROGRESS_FLUSH_SECONDS)
            await self.flush_progress()

    async def flush_progress(self) -> None:
        dirty, self._dirty_progress = self._dirty_progress, set()
        updates = [
            (j.id, j.progress, j.eta, j.updated_at)
            for jid in dirty
            if (j := self.jobs.get(jid)) is not None and j.state is JobState.PRINTING
        ]
        if updates:
            try:
                await self.store.save_progress(updates)
            except FarmError as exc:
                log.warning("progress not saved", extra={"reason": exc.message})
                self._dirty_progress |= dirty

    # ================================================================ Moonraker facade commands
    # (issue 3) The facade's queue is the farm's QUEUED jobs in dispatch order.

    @property
    def dispatching(self) -> bool:
        """True while some job is being handed to a printer (the facade's ``loading``)."""
        return any(s.dispatching for s in self.printers.values())

    async def _new_queued_job(self, filename: str, source: str, now: float) -> Job:
        """A fresh (uncommitted) job for ``filename``, validated like a REST submission."""
        path = await trio.to_thread.run_sync(files.resolve_gcode, self.config.gcodes_path, filename)
        meta = await trio.to_thread.run_sync(files.read_meta, path)
        jid = new_job_id()
        job = Job(
            id=jid,
            filename=filename,
            name=filename.rsplit("/", 1)[-1],
            group_id=jid,
            material=(meta.filament_type or "").upper() or None,
            nozzle_diameter=meta.nozzle_diameter,
            estimated_time=meta.estimated_time,
            created_at=now,
            updated_at=now,
            source=source,
        )
        self._check_some_printer_can(job)
        return job

    async def enqueue_files(
        self, filenames: Sequence[str], *, reset: bool = False, source: str = "moonraker"
    ) -> None:
        """Queue one job per filename, in order, in ONE commit; nothing is stored if any
        file is missing or illegal (the error of the first bad one is raised).

        With ``reset`` the listed files become the whole queue, in the listed order: each
        entry takes the first not-yet-matched queued job with that filename (keeping its
        id, priority and history), extra entries become new jobs, and queued jobs not
        listed are cancelled. The order is imposed with ``front`` values (listed order,
        ahead of anything queued later by priority only).
        """
        now = self._wall()
        fresh: dict[int, Job] = {}
        async with self._lock:
            matched: dict[int, Job] = {}
            if reset:
                pool: dict[str, list[Job]] = {}
                for job in self.queue.ordered():
                    pool.setdefault(job.filename, []).append(job)
                for i, name in enumerate(filenames):
                    if pool.get(name):
                        matched[i] = pool[name].pop(0)
                leftover = [j for js in pool.values() for j in js]
            else:
                leftover = []
            for i, name in enumerate(filenames):
                if i not in matched:
                    fresh[i] = await self._new_queued_job(name, source, now)
            jobs: list[Job] = []
            events: list[NewEvent] = []
            top = self.queue.max_front() + len(filenames) if reset else 0
            for i in range(len(filenames)):
                if i in matched:
                    old = matched[i]
                    new = attrs.evolve(old, front=top - i, updated_at=now)
                    jobs.append(new)
                    events.append(
                        NewEvent("job.jumped", now, job_id=new.id, data={"reorder": True})
                    )
                    continue
                job = attrs.evolve(fresh[i], position=self._next_position, front=max(top - i, 0))
                self._next_position += 1
                events.append(self._transition_event(None, job, None, None))
                for event, nxt in self._pipeline_steps(job, now):
                    events.append(self._transition_event(job, nxt, event, None))
                    job = nxt
                jobs.append(job)
            for old in leftover:
                new = transition(old, JobEvent.CANCEL, now, last_error=None)
                jobs.append(new)
                events.append(
                    self._transition_event(old, new, JobEvent.CANCEL, "removed from the queue")
                )
            if events:
                await self._commit(jobs, events)

    async def cancel_queued(self, job_ids: Sequence[str], reason: str) -> list[str]:
        """Cancel the listed jobs that are QUEUED, in one commit; others are ignored.
        Returns the ids cancelled."""
        async with self._lock:
            now = self._wall()
            jobs: list[Job] = []
            events: list[NewEvent] = []
            for jid in dict.fromkeys(job_ids):
                old = self.queue.get(jid)
                if old is None:
                    continue
                new = transition(old, JobEvent.CANCEL, now, last_error=None)
                jobs.append(new)
                events.append(self._transition_event(old, new, JobEvent.CANCEL, reason))
            if events:
                await self._commit(jobs, events)
            return [j.id for j in jobs]

    # ================================================================ printers added at run time
    # (issue 4: MQTT printers discovered on the broker; a config reload may reuse it.)

    async def add_printer(self, config: PrinterConfig, driver: PrinterDriver) -> Printer:
        """Start managing a printer that was not configured when the scheduler started.

        Under the lock: creates its slot and restores its remembered plate and
        maintenance flags from the store. Then (outside the lock, as the driver's first
        report needs the lock) starts ``driver.run`` in the scheduler's nursery, waits
        for it to report started, and kicks dispatch. Returns the printer's view.
        Raises ``Conflict`` if the id is taken or the scheduler is not running.
        """
        if self._nursery is None:
            raise Conflict("the scheduler is not running")
        async with self._lock:
            if config.id in self.printers:
                raise Conflict(f"printer {config.id} already exists")
            slot = PrinterSlot.from_config(config, driver)
            memory = (await self.store.printer_memory()).get(config.id)
            if memory is not None:
                slot.plate_clear = memory.plate_clear
                slot.maintenance = memory.maintenance
            self.printers[config.id] = slot
        await self._nursery.start(self._run_driver, config.id, driver)
        log.info("printer added", extra={"printer": config.id, "driver": config.driver})
        self._kick()
        return slot.view()

    # ================================================================ config reload (issue 8)
    # SIGHUP: printers added, removed or changed without touching jobs or unchanged printers.

    async def _run_driver(
        self, printer_id: str, driver: PrinterDriver, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        """``driver.run`` inside a cancel scope that ``reload_printers`` can cancel."""
        with trio.CancelScope() as scope:
            self._driver_scopes[printer_id] = scope
            try:
                await driver.run(self._send_events.clone(), task_status=task_status)
            finally:
                if self._driver_scopes.get(printer_id) is scope:
                    del self._driver_scopes[printer_id]

    async def reload_printers(
        self,
        printers: Sequence[PrinterConfig],
        make_driver: Callable[[PrinterConfig], PrinterDriver],
    ) -> PrinterReloadPlan:
        """Make the managed printers match ``printers``; returns what was done.

        Unchanged printers keep their slot and driver (connection). A capability-only
        change is applied in place, even while printing. A printer that holds a job
        (printing, on its plate, or being dispatched) is never removed or restarted: that
        part of the plan is skipped with a warning and happens on a later reload. Printer
        configs are not stored (the file is the truth), so there is nothing to persist
        first; plate and maintenance flags stay in the store. Raises ``ValueError`` (from
        ``make_driver``) before changing anything if a new driver cannot be built.
        """
        if self._nursery is None:
            raise Conflict("the scheduler is not running")
        plan = plan_printer_reload({k: s.config for k, s in self.printers.items()}, printers)
        new_drivers = {p.id: make_driver(p) for p in (*plan.added, *plan.restarted)}
        stopping: list[str] = []
        skipped: set[str] = set()
        async with self._lock:
            for pid in (*plan.removed, *(p.id for p in plan.restarted)):
                slot = self.printers[pid]
                if slot.current_job is not None or slot.dispatching:
                    log.warning(
                        "printer busy: reload change deferred",
                        extra={"printer": pid, "job": slot.current_job or ""},
                    )
                    skipped.add(pid)
                    continue
                del self.printers[pid]
                stopping.append(pid)
            for p in plan.updated:
                slot = self.printers[p.id]
                slot.config = p
                slot.capabilities = PrinterSlot.from_config(p, slot.driver).capabilities
        for pid in stopping:
            scope = self._driver_scopes.get(pid)
            if scope is not None:
                scope.cancel()
        for p in (*plan.added, *(p for p in plan.restarted if p.id not in skipped)):
            await self.add_printer(p, new_drivers[p.id])
        done = PrinterReloadPlan(
            added=plan.added,
            removed=tuple(pid for pid in plan.removed if pid not in skipped),
            updated=plan.updated,
            restarted=tuple(p for p in plan.restarted if p.id not in skipped),
        )
        log.info(
            "printers reloaded",
            extra={
                "added": ",".join(p.id for p in done.added),
                "removed": ",".join(done.removed),
                "updated": ",".join(p.id for p in done.updated),
                "restarted": ",".join(p.id for p in done.restarted),
            },
        )
        self._kick()
        return done

    # ==== helper h14: farm emergency stop (issue 14) ====
    # One farm command for Moonraker's printer.emergency_stop (websocket and HTTP) and the
    # dashboard. Self-contained: it uses only set_paused, _fail_job_locked, _commit and the
    # drivers' emergency_stop, so the owner rewrite can port it as one input. (A method has
    # to live in the class: this block ends the class body.)

    async def emergency_stop(self, client: str) -> list[str]:
        """Stop the whole farm at once, for ``client`` (a label: "mainsail (192.0.2.7)").

        In this order: pause dispatch (persisted, as ``set_paused(True)``; nothing starts
        until an operator resumes). Then, under the lock: call ``emergency_stop`` on the
        driver of every printer that holds a PRINTING job, is being handed one, or reports
        printing or paused (a print the farm did not start too), concurrently and shielded,
        each bounded by ``STATUS_TIMEOUT``: this is the one printer I/O under the lock, so
        that no report of a stopping printer ("went idle") is taken for its own failure
        before the job is failed; then fail every PRINTING job once through the ordinary
        failure path (``_fail_job_locked``: reason "emergency stop by <client>", plate
        marked not clear, retry timer armed as for any failure: the retried job waits
        QUEUED while dispatch is paused). A printer that was being handed a job is stopped
        once more when the hand-over ends (in the background). Last, one
        ``farm.emergency_stop`` event (reason as above; data: client, jobs, printers
        stopped, printers not reached, whether dispatch was already paused) is committed
        and published.

        Returns the ids of the jobs failed. The printers are stopped even when the store
        cannot be written; then the first ``FarmError`` is raised at the end.
        """
        reason = f"emergency stop by {client}"
        was_paused = self.paused
        failed: list[str] = []
        stopped: list[str] = []
        unreachable: list[str] = []
        trouble: FarmError | None = None
        if not was_paused:
            try:
                await self.set_paused(True)
            except FarmError as exc:  # the printers are stopped all the same
                trouble = exc
        async with self._lock:
            printing = [j for j in self.jobs.values() if j.state is JobState.PRINTING]
            targets = {
                slot.id: slot
                for slot in self.printers.values()
                if slot.dispatching
                or slot.reported in (PrinterState.PRINTING, PrinterState.PAUSED)
                or any(j.printer_id == slot.id for j in printing)
            }
            handover = [slot for slot in self.printers.values() if slot.dispatching]
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as nursery:
                    for slot in targets.values():
                        nursery.start_soon(self._estop_one, slot, stopped, unreachable)
            for job in printing:
                try:
                    await self._fail_job_locked(job.id, reason, job.printer_id)
                except FarmError as exc:
                    trouble = trouble or exc
                    continue
                failed.append(job.id)
            if self._nursery is not None:
                for slot in handover:
                    self._nursery.start_soon(self._estop_after_handover, slot)
            event = NewEvent(
                "farm.emergency_stop",
                self._wall(),
                reason=reason,
                data={
                    "client": client,
                    "jobs": failed,
                    "stopped": sorted(stopped),
                    "unreachable": sorted(unreachable),
                    "dispatch_was_paused": was_paused,
                },
            )
            try:
                await self._commit([], [event])
            except FarmError as exc:
                trouble = trouble or exc
        log.critical(
            "emergency stop",
            extra={
                "client": client,
                "jobs": ",".join(failed),
                "stopped": ",".join(sorted(stopped)),
                "unreachable": ",".join(sorted(unreachable)),
            },
        )
        if trouble is not None:
            raise trouble
        return failed

    @staticmethod
    async def _estop_one(slot: PrinterSlot, stopped: list[str], unreachable: list[str]) -> None:
        """``emergency_stop`` on one printer's driver; never raises (the others go on)."""
        try:
            with trio.fail_after(STATUS_TIMEOUT):
                await slot.driver.emergency_stop()
        except (DriverError, trio.TooSlowError) as exc:
            message = exc.message if isinstance(exc, DriverError) else "timed out"
            log.error("emergency stop not delivered", extra={"printer": slot.id, "reason": message})
            unreachable.append(slot.id)
            return
        except Exception as exc:  # a driver bug must not keep the other printers printing
            log.error("emergency stop failed", exc_info=exc, extra={"printer": slot.id})
            unreachable.append(slot.id)
            return
        stopped.append(slot.id)

    async def _estop_after_handover(self, slot: PrinterSlot) -> None:
        """A job being handed to ``slot`` when the farm stopped may reach it afterwards:
        once the hand-over ended (bounded), stop the printer again. Never raises."""
        with trio.move_on_after(4 * STATUS_TIMEOUT):
            while slot.dispatching:  # noqa: ASYNC110 - the hand-over task sets no event
                await trio.sleep(0.05)
        await self._estop_one(slot, [], [])

    # ==== end helper h14 ====


_PIPELINE_FROM = frozenset(
    {
        (JobState.CREATED, JobEvent.VALIDATE),
        (JobState.VALIDATED, JobEvent.SLICE),
        (JobState.SLICED, JobEvent.ENQUEUE),
    }
)


def validate_priority(value: object, limit: int) -> int:
    """A priority from user input: an integer within ``-limit..limit``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("priority: expected an integer")
    if not -limit <= value <= limit:
        raise ValidationFailed(f"priority: must be between {-limit} and {limit}", field="priority")
    return value
