"""The owner: the one task that changes the farm.

Inputs (commands from the API, printer reports, timers, effect outcomes) arrive on one
channel. The owner drains what has queued up into a batch, runs the pure core on each
input (``core.farm.decide``) in an overlay, commits the batch's records in ONE
transaction that no cancellation can interrupt (shielded; bounded by the store's busy
timeout), then — with no checkpoint in between — applies the overlay to the live state,
answers the callers, publishes the events and starts the effects.

- A caller that goes away (a client hanging up cancels its handler) loses only its
  reply: once sent, an input happens whole or not at all.
- Readers (views, health) see only committed state: nothing changes before its commit.
- A failed commit changes nothing. Storage trouble (a full disk, a locked file) makes the
  farm *degraded*: commands answer the error (507/503), dispatch holds, printer reports
  and effect outcomes are kept and tried again every second, and the farm recovers by
  itself when a write succeeds. Only a bug in the owner ends the process.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import trio

from printfarmd import faults
from printfarmd.config import Config, PrinterConfig, resolve_timezone
from printfarmd.core.farm import FarmState, Now, Tx, decide, eligibility
from printfarmd.core.farm import inputs as i
from printfarmd.core.farm import outputs as out
from printfarmd.core.farm.fleet import PAUSED_KEY, SETTINGS_KEY
from printfarmd.core.farm.intake import Created
from printfarmd.core.farm.startup import UpkeepMemory, restore
from printfarmd.core.farm.state import Settings, Slot
from printfarmd.core.farm.upkeep_state import PendingUsage, policy_of
from printfarmd.core.reload import PrinterReloadPlan, plan_printer_reload
from printfarmd.drivers.base import PrinterDriver, StatusReport
from printfarmd.errors import (
    Conflict,
    FarmError,
    NotFound,
    PrinterCommandFailed,
    ShuttingDown,
    StaleWrite,
    StorageBusy,
    StorageFull,
)
from printfarmd.models import Job, JobState, Printer
from printfarmd.services import files, slicing
from printfarmd.services.bus import Bus, ProgressUpdate
from printfarmd.services.drivers import DriverHost
from printfarmd.services.effects import COMMAND_TIMEOUT, Effects, facts_of
from printfarmd.services.metrics import FarmCounters
from printfarmd.services.spoolman import SpoolmanService
from printfarmd.store.store import Store
from printfarmd.store.upkeep import UpkeepStore

log = logging.getLogger("printfarmd.owner")

#: Inputs decided per batch at most (one transaction).
MAX_BATCH = 200
#: Seconds between coalesced progress writes.
PROGRESS_FLUSH_SECONDS = 5.0
#: Seconds between attempts to store what a storage failure held back.
REDO_SECONDS = 1.0
#: Seconds a checked file's facts are reused for further submissions of it.
FACTS_TTL = 1.0
FACTS_CACHE_SIZE = 256
#: Inputs that are facts: when their commit fails they are kept and tried again.
_FACTS = (
    i.Report,
    i.StartResult,
    i.CommandResult,
    i.SliceResult,
    i.TimerFired,
    i.Startup,
    i.SpoolsRefreshed,  # issue 16
    i.UsageReported,
)


def _is_resync(inp: i.Input) -> bool:
    return isinstance(inp, i.SharedChanges) and inp.resync


class _Envelope(msgspec.Struct, eq=False):
    input: i.Input
    done: trio.Event | None = None
    value: Any = None
    error: BaseException | None = None

    def answer(self, value: Any) -> None:
        self.value = value
        if self.done is not None:
            self.done.set()

    def refuse(self, error: BaseException) -> None:
        self.error = error
        if self.done is not None:
            self.done.set()


class EmergencyStopped(msgspec.Struct, frozen=True):
    """What an emergency stop did: the jobs failed, the printers stopped, the printers
    the stop did not reach (unreachable, or no answer within the command timeout)."""

    jobs: tuple[str, ...]
    stopped: tuple[str, ...]
    unreachable: tuple[str, ...]


class QueueHealth(msgspec.Struct, frozen=True):
    paused: bool
    queue_depth: int
    printing: int
    dispatching: int
    awaiting_clear: int
    retry_waiting: int
    oldest_queued_at: float | None
    printers_by_state: dict[str, int]


class Owner:
    """The farm's one owner task and its command interface (see the module docstring).

    Command methods are checkpoints; each returns after the change is committed and
    applied, or raises the ``FarmError`` that refused it (nothing changed).
    """

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
        self._send, self._recv = trio.open_memory_channel[_Envelope](math.inf)
        #: (issue 16) The upkeep rules; quiet hours' zone resolved once, here.
        self.policy = policy_of(config, resolve_timezone(config.power.timezone))
        self.state = FarmState(
            printers=[Slot.from_config(p) for p in config.printers], policy=self.policy
        )
        #: (issue 16) The Spoolman service, when ``spoolman.url`` is set (the daemon's).
        self.spoolman: SpoolmanService | None = None
        self.counters = FarmCounters()
        self.host = DriverHost(self.post)
        for pid, driver in drivers.items():
            self.host.register(pid, driver)
        self.effects = Effects(
            config=config,
            post=self.post,
            driver=self.host.driver,
            counters=self.counters,
            publish_progress=self._publish_progress,
            arm_timer=self._arm_timer,
            drivers_changed=self._drivers_changed,
        )
        #: filename -> (monotonic expiry, facts): see ``file_facts``.
        self._facts: dict[str, tuple[float, i.FileFacts]] = {}
        self._timers: list[tuple[float, int, out.TimerKind, str]] = []
        self._timer_seq = itertools.count()
        self._timer_kick = trio.Event()
        self._kick = False
        self._redo: list[i.Input] = []
        self._redo_kick = trio.Event()
        #: Why writes fail right now (a full disk, a locked file), or None.
        self.degraded: FarmError | None = None
        #: Set once start-up reconciliation is over and dispatch runs.
        self.running = trio.Event()
        #: Batches decided since start (the systemd watchdog looks at the owner's pulse).
        self.cycles = 0
        self.last_cycle = 0.0
        # issue 18, a daemon of a cluster: the printers this node drove before and no
        # longer does (set by the cluster service before ``run``); per job, the newest
        # event seq applied here (another daemon's row older than that is stale); and
        # what to call when a write found a row another daemon had changed.
        self.dropped: tuple[str, ...] = ()
        self._seen: dict[str, int] = {}
        self.on_stale: Callable[[], None] | None = None

    # ================================================================ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Restore the state from the store, then own the farm until cancelled.

        Reports started once the state is restored and inputs are taken; printers are
        reconciled after that (``running`` is set when dispatch begins).
        """
        await self._restore()
        async with trio.open_nursery() as nursery:
            self.effects.nursery = nursery
            self.host.nursery = nursery
            nursery.start_soon(self._loop)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._redo_loop)
            nursery.start_soon(self._flush_loop)
            nursery.start_soon(self.host.forward)
            self.post(i.Startup())
            for pid in self.state.printers:
                self.host.start(pid)
            log.info("printer drivers started", extra={"printers": len(self.state.printers)})
            task_status.started()

    def saved_settings(self, saved: Mapping[str, Any]) -> tuple[Settings, bool]:
        """The farm's settings and pause flag from the stored ones (the configuration's
        where nothing was stored)."""
        sc = self.config.scheduler
        settings = Settings(sc.max_retries, tuple(sc.retry_backoff), sc.cooldown_seconds)
        if SETTINGS_KEY in saved:
            s = saved[SETTINGS_KEY]
            settings = Settings(
                int(s["max_retries"]),
                tuple(float(x) for x in s["retry_backoff"]),
                float(s["cooldown_seconds"]),
            )
        return settings, bool(saved.get(PAUSED_KEY, sc.dispatch_paused))

    async def _restore(self) -> None:
        settings, paused = self.saved_settings(await self.store.settings())
        jobs = await self.store.load_live_jobs()
        kept = await UpkeepStore(self.store).memory()  # issue 16: spools, counters
        self.state = restore(
            printers=self.config.printers,
            memory=await self.store.printer_memory(),
            jobs=jobs,
            settings=settings,
            paused=paused,
            next_position=await self.store.max_position() + 1,
            mono=trio.current_time(),
            accept_without_printers=self.config.mqtt.host != "" and self.config.mqtt.discover,
            policy=self.policy,
            upkeep=UpkeepMemory(
                bindings=kept.bindings,
                spools=kept.spools,
                pending=[PendingUsage(o.key, o.spool_id, o.grams) for o in kept.pending],
                counters=kept.upkeep,
            ),
            cluster=self.store.membership is not None,
            dropped=self.dropped,
        )
        log.info(
            "queue restored",
            extra={
                "open_jobs": len(self.state.jobs),
                "queued": len(self.state.queue),
                "paused": paused,
            },
        )

    def post(self, inp: i.Input) -> None:
        """Send an event to the owner (never blocks; dropped once the owner stopped)."""
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(_Envelope(inp))

    async def call(self, cmd: i.Input) -> Any:
        """Send ``cmd`` and wait for its reply. Cancelling the wait loses only the reply."""
        env = _Envelope(cmd, trio.Event())
        try:
            self._send.send_nowait(env)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ShuttingDown("the farm is shutting down") from None
        assert env.done is not None
        await env.done.wait()
        if env.error is not None:
            raise env.error
        return env.value

    def _now(self) -> Now:
        return Now(self._wall(), trio.current_time())

    async def _loop(self) -> None:
        while True:
            if self._kick and self._may_dispatch():
                self._kick = False
                batch = [_Envelope(i.Dispatch())]
            else:
                batch = [await self._recv.receive()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._process(batch)
            self.cycles += 1
            self.last_cycle = trio.current_time()

    def _may_dispatch(self) -> bool:
        return self.degraded is None and self.state.running and not self.state.paused

    async def _process(self, batch: Sequence[_Envelope]) -> None:
        """Decide ``batch``, commit it whole, then apply and act (see the module doc)."""
        resync = next((e.input for e in batch if _is_resync(e.input)), None)
        if resync is not None and len(batch) > 1:
            # issue 18: the re-read after a lost lease is decided and committed alone,
            # under the new epoch; what came before it is refused under the old one.
            for env in batch:
                await self._process([env])
            return
        now = self._now()
        tx = Tx(self.state)
        decided: list[tuple[_Envelope, Any]] = []
        for env in batch:
            if isinstance(env.input, i.SharedChanges):
                env.input = self._fresh_only(env.input)
            layer = Tx(tx)
            try:
                reply = decide(layer, env.input, now)
            except FarmError as exc:
                env.refuse(exc)
                continue
            layer.merge()
            decided.append((env, reply))
        appended: list[Any] = []
        if tx.records:
            await faults.hang_point("commit")  # tests: an owner that stops cycling
            # Nothing may stop between the commit and the apply below: a cancelled
            # caller or a stopping daemon must not leave the store ahead of memory.
            with trio.CancelScope(shield=True):
                if any(isinstance(env.input, i.WatchdogSweep) for env, _ in decided):
                    faults.point("watchdog-before-commit")
                member = self.store.membership
                before = None if member is None else member.epoch
                if member is not None and isinstance(resync, i.SharedChanges) and resync.epoch:
                    member.epoch = resync.epoch
                try:
                    appended = await self.store.commit(tx.records)
                except FarmError as exc:
                    if member is not None and before is not None:
                        member.epoch = before
                    if isinstance(exc, StaleWrite) and self.on_stale is not None:
                        self.on_stale()  # issue 18: read what another daemon committed
                    await self._commit_failed(decided, exc)
                    return
            if any(isinstance(env.input, i.CreateJobs) for env, _ in decided):
                faults.point("job-created")  # committed, not yet acknowledged (test F14)
            if any(isinstance(env.input, i.WatchdogSweep) for env, _ in decided):
                faults.point("watchdog-after-commit")
            if self.degraded is not None:
                log.warning(
                    "storage writable again; the farm recovered",
                    extra={"reason": self.degraded.message},
                )
                self.degraded = None
                self._kick = True
        was_running = self.state.running
        self.state.apply(tx)
        for env, reply in decided:
            env.answer(reply)
        for ev in appended:
            self.bus.publish(ev)
            if ev.job_id is not None:
                self._seen[ev.job_id] = ev.seq
        for env, _ in decided:
            if isinstance(env.input, i.SharedChanges):
                self._applied(env.input)
        for effect in tx.effects:
            self.effects.run(effect)
        if tx.kick:
            self._kick = True
        if self.state.running and not was_running:
            self.running.set()

    def _fresh_only(self, inp: i.SharedChanges) -> i.SharedChanges:
        """(issue 18) ``inp`` without the rows that are not newer than what this daemon
        applied (a row read before one of our own commits of that job must not undo it);
        a resync takes every row."""
        if inp.resync:
            return inp
        seen = self._seen
        fresh = tuple(j for j in inp.jobs if inp.seqs.get(j.id, 0) > seen.get(j.id, 0))
        return inp if len(fresh) == len(inp.jobs) else msgspec.structs.replace(inp, jobs=fresh)

    def _applied(self, inp: i.SharedChanges) -> None:
        seen = self._seen
        for job in inp.jobs:
            seen[job.id] = max(seen.get(job.id, 0), inp.seqs.get(job.id, 0))
        if len(seen) > 2 * len(self.state.jobs) + 10_000:
            # Finished jobs change no more (or are read again whole): forget them.
            self._seen = {k: v for k, v in seen.items() if k in self.state.jobs}
        for ev in inp.events:  # another daemon's, now applied here
            self.bus.publish(ev)
        member = self.store.membership
        if inp.resync and inp.epoch and member is not None:
            # Re-read after the lease was lost: act again, under the new epoch.
            member.epoch = inp.epoch
            log.warning("rejoined the farm after re-reading it", extra={"epoch": inp.epoch})
            self.degraded = None
            self._kick = True

    async def _commit_failed(self, decided: list[tuple[_Envelope, Any]], exc: FarmError) -> None:
        if len(decided) > 1:
            # Decide each input alone, so one input's refused write (a stale row, the
            # disk filling up) refuses only that input: one without writes of its own
            # (a ping, a printer's telemetry) goes through.
            for env, _ in decided:
                await self._process([env])
            return
        if isinstance(exc, StorageFull | StorageBusy):
            if self.degraded is None:
                log.error("storage failing; the farm is degraded", extra={"reason": exc.message})
            self.degraded = exc
        for env, _ in decided:
            if env.done is not None:
                env.refuse(exc)
            elif isinstance(env.input, _FACTS):
                self._keep(env.input)
            elif isinstance(exc, StaleWrite) and self.on_stale is not None:
                # issue 18: another daemon was first (a claim lost); the feed brings its
                # change and the next dispatch pass goes by it.
                log.info(
                    "another daemon changed the job first",
                    extra={"input": type(env.input).__name__, "reason": exc.message},
                )
            else:
                log.warning(
                    "input not stored",
                    extra={"input": type(env.input).__name__, "reason": exc.message},
                )
        self._redo_kick.set()

    def _keep(self, inp: i.Input) -> None:
        """Hold a fact back for the next attempt; a newer status report replaces an
        older one of the same printer (only the latest state matters)."""
        if isinstance(inp, i.Report) and isinstance(inp.event, StatusReport):
            pid = inp.event.printer_id
            self._redo = [
                r
                for r in self._redo
                if not (
                    isinstance(r, i.Report)
                    and isinstance(r.event, StatusReport)
                    and r.event.printer_id == pid
                )
            ]
        self._redo.append(inp)

    async def _redo_loop(self) -> None:
        while True:
            await self._redo_kick.wait()
            self._redo_kick = trio.Event()
            await trio.sleep(REDO_SECONDS)
            held, self._redo = self._redo, []
            for inp in held:
                self.post(inp)
            if self.degraded is not None and not held:
                # Nothing held back to try with: probe with a progress flush.
                self.post(i.FlushProgress())
                self._redo_kick.set()

    # ================================================================ timers and ticks

    def _arm_timer(self, at: float, kind: out.TimerKind, key: str) -> None:
        heapq.heappush(self._timers, (at, next(self._timer_seq), kind, key))
        self._timer_kick.set()

    async def _timer_loop(self) -> None:
        while True:
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, kind, key = heapq.heappop(self._timers)
                self.post(i.TimerFired(kind, key))
            deadline = self._timers[0][0] if self._timers else math.inf
            with trio.move_on_at(deadline):
                await self._timer_kick.wait()
            if self._timer_kick.is_set():
                self._timer_kick = trio.Event()

    async def _flush_loop(self) -> None:
        while True:
            await trio.sleep(PROGRESS_FLUSH_SECONDS)
            self.post(i.FlushProgress())

    def _publish_progress(self, printer_id: str) -> None:
        slot = self.state.printers.get(printer_id)
        if slot is not None:
            self.bus.publish(
                ProgressUpdate(slot.id, slot.state, slot.current_job, slot.progress, slot.eta)
            )

    def _drivers_changed(self, effect: out.StartDriver | out.StopDriver) -> None:
        if isinstance(effect, out.StartDriver):
            self.host.start(effect.printer_id)
        else:
            self.host.stop(effect.printer_id)

    # ================================================================ commands

    async def file_facts(self, filename: str, *, allow_model: bool = False) -> i.FileFacts:
        """Check ``filename`` (containment, existence, type) and read what it says.
        Raises ``BadRequest``/``NotFound``/``ValidationFailed``. Worker thread.

        A file checked less than ``FACTS_TTL`` seconds ago is not checked again: a burst
        of submissions of one file costs one worker-thread hop, not one each (a hop is
        the largest share of a submission's event-loop time). The hand-over to a printer
        checks the file again in any case.
        """
        root = self.config.gcodes_path
        if allow_model and slicing.is_model(filename) and self.config.slicer.command:
            await trio.to_thread.run_sync(files.resolve_in, root, filename)
            return i.FileFacts(model=True)
        now = trio.current_time()
        cached = self._facts.get(filename)
        if cached is not None and cached[0] > now:
            await trio.lowlevel.checkpoint()
            return cached[1]
        _, meta = await trio.to_thread.run_sync(files.gcode_file, root, filename)
        facts = facts_of(meta)
        if len(self._facts) >= FACTS_CACHE_SIZE:
            self._facts.clear()
        self._facts[filename] = (trio.current_time() + FACTS_TTL, facts)
        return facts

    async def submit(
        self, request: i.JobRequest, idempotency_key: str | None = None
    ) -> tuple[list[Job], bool]:
        """Validate and store a submission; returns (jobs, created).

        ``created`` is False when ``idempotency_key`` was seen before with the same
        request: the original jobs are returned (as they are now) and nothing is stored.
        The same key with a different request is a ``Conflict``. Validation failures
        store nothing.
        """
        if idempotency_key is not None:
            found = await self.store.find_idempotency_key(idempotency_key)
            if found is not None:
                if found[0] != request.digest():
                    raise Conflict("Idempotency-Key was already used for a different request")
                return await self._jobs(found[1]), False
        facts = await self.file_facts(request.filename, allow_model=True)
        created: Created = await self.call(i.CreateJobs(request, facts, idempotency_key))
        if created.created:
            return created.jobs, True
        return await self._jobs(created.ids), False

    async def _jobs(self, ids: Sequence[str]) -> list[Job]:
        live = [self.state.jobs.get(jid) for jid in ids]
        missing = [jid for jid, job in zip(ids, live, strict=True) if job is None]
        stored = {j.id: j for j in await self.store.get_jobs(missing)} if missing else {}
        return [
            job or stored[jid] for jid, job in zip(ids, live, strict=True) if job or jid in stored
        ]

    async def _snapshot(self, job_id: str) -> Job | None:
        """A job the farm does not keep in memory (finished), read from the store."""
        if job_id in self.state.jobs:
            return None
        return await self.store.get_job(job_id)

    async def cancel(self, job_id: str, reason: str = "cancelled by operator") -> Job:
        job: Job = await self.call(i.Cancel(job_id, reason, await self._snapshot(job_id)))
        return job

    async def release(self, job_id: str, printer_id: str) -> Job:
        """Send a queued job to a chosen printer now (it must be idle and compatible)."""
        job: Job = await self.call(i.Release(job_id, printer_id, await self._snapshot(job_id)))
        return job

    async def reprioritize(self, job_id: str, priority: int) -> Job:
        job: Job = await self.call(i.Reprioritize(job_id, priority, await self._snapshot(job_id)))
        return job

    async def jump(self, job_id: str) -> Job:
        """Put a queued job in front of every other one."""
        job: Job = await self.call(i.Jump(job_id, await self._snapshot(job_id)))
        return job

    async def ship(self, job_id: str, tracking: str) -> Job:
        job: Job = await self.call(i.Ship(job_id, tracking, await self._snapshot(job_id)))
        return job

    async def set_paused(self, paused: bool) -> None:
        await self.call(i.SetPaused(paused))

    async def update_settings(self, changes: Mapping[str, Any]) -> Settings:
        """Apply validated ``changes`` (fields of ``Settings``) and persist them."""
        settings: Settings = await self.call(i.UpdateSettings(dict(changes)))
        return settings

    async def clear_plate(self, printer_id: str, source: str = "operator") -> Printer:
        """The plate of ``printer_id`` is clear: its finished job becomes ready."""
        view: Printer = await self.call(i.ClearPlate(printer_id, source))
        return view

    async def set_maintenance(self, printer_id: str, enabled: bool) -> Printer:
        view: Printer = await self.call(i.SetMaintenance(printer_id, enabled))
        return view

    async def set_queue(
        self,
        items: Sequence[str | i.QueueFile],
        *,
        cancel_unlisted: bool = False,
        ordered: bool = True,
    ) -> list[Job]:
        """New jobs and order for the head of the queue (see ``inputs.SetQueue``)."""
        jobs: list[Job] = await self.call(i.SetQueue(tuple(items), cancel_unlisted, ordered))
        return jobs

    async def cancel_queued(self, job_ids: Sequence[str], reason: str) -> list[str]:
        """Cancel those of ``job_ids`` that are queued, together; returns the ids cancelled."""
        done: list[str] = await self.call(i.CancelQueued(tuple(job_ids), reason))
        return done

    async def pause_job(self, job_id: str) -> Job:
        """Pause a printing job on its printer; returns once the printer did it.
        ``Conflict`` unless the job prints on a printer that confirmed it;
        ``PrinterCommandFailed`` when the printer could not do it (nothing changed)."""
        return await self._pause_or_resume(job_id, pause=True)

    async def resume_job(self, job_id: str) -> Job:
        """Resume a paused job on its printer (as ``pause_job``)."""
        return await self._pause_or_resume(job_id, pause=False)

    async def _pause_or_resume(self, job_id: str, *, pause: bool) -> Job:
        token = secrets.token_hex(8)
        outcomes = self.effects.watch(token)
        try:
            cmd = i.PauseJob(job_id, token) if pause else i.ResumeJob(job_id, token)
            job, printer_id = await self.call(cmd)
            with trio.move_on_after(COMMAND_TIMEOUT + 1.0):
                await outcomes.wait_for([printer_id])
        finally:
            self.effects.unwatch(token)
        verb = "pause" if pause else "resume"
        if printer_id not in outcomes.results:
            raise PrinterCommandFailed(f"printer {printer_id} did not answer the {verb}")
        failed = outcomes.results[printer_id]
        if failed is not None:
            raise PrinterCommandFailed(f"printer {printer_id} could not {verb} the job: {failed}")
        result: Job = self.fresh(job)
        return result

    async def emergency_stop(self, client: str) -> EmergencyStopped:
        """Stop every printing printer now, pause dispatch, fail their jobs once (all
        committed first, then the printers are stopped), and wait (bounded) to learn
        which printers the stop reached."""
        token = secrets.token_hex(8)
        outcomes = self.effects.watch(token)
        try:
            failed, printers = await self.call(i.EmergencyStopFarm(client, token))
            with trio.move_on_after(COMMAND_TIMEOUT + 1.0):
                await outcomes.wait_for(printers)
        finally:
            self.effects.unwatch(token)
        stopped = [p for p in printers if p in outcomes.results and outcomes.results[p] is None]
        return EmergencyStopped(
            jobs=tuple(failed),
            stopped=tuple(stopped),
            unreachable=tuple(p for p in printers if p not in stopped),
        )

    async def watchdog_sweep(self, stale_threshold: float) -> list[str]:
        """Requeue or fail printing jobs with no progress for ``stale_threshold`` s."""
        acted: list[str] = await self.call(i.WatchdogSweep(stale_threshold))
        return acted

    async def flush_progress(self) -> None:
        await self.call(i.FlushProgress())

    async def ping(self) -> None:
        await self.call(i.Ping())

    # ================================================================ upkeep (issue 16)

    async def bind_spool(self, printer_id: str, tool: int, spool_id: int | None) -> Slot:
        """Bind ``spool_id`` (``None``: unbind) to ``tool`` of ``printer_id``; the spool
        is read from Spoolman first (``NotFound`` if Spoolman says it does not exist; a
        Spoolman that does not answer binds it unread). Returns the printer's slot."""
        info = None
        if spool_id is not None and self.spoolman is not None:
            if printer_id not in self.state.printers:
                raise NotFound(f"printer {printer_id} not found")
            info = await self.spoolman.fetch(spool_id)
        slot: Slot = await self.call(i.BindSpool(printer_id, tool, spool_id, info))
        if self.spoolman is not None:
            self.spoolman.kick(refresh=True)
        return self.state.printers.get(printer_id, slot)

    async def record_maintenance(
        self, printer_id: str, by: str, work: str, at: float | None = None
    ) -> Slot:
        """Log maintenance done on ``printer_id``; resets its counters, ends maintenance."""
        slot: Slot = await self.call(i.RecordMaintenance(printer_id, by, work, at))
        return self.state.printers.get(printer_id, slot)

    def bound_spools(self) -> set[int]:
        """Every spool id bound to a tool of some printer (committed state)."""
        return {sid for s in self.state.printers.values() for sid in s.spools if sid is not None}

    def explainer(self) -> eligibility.Explainer:
        """Says why queued jobs and idle printers wait, as of now (committed state); one
        per request that asks about many."""
        return eligibility.Explainer(self.state, self.state.printers.values(), self._wall())

    def job_waiting(self, job: Job, explainer: eligibility.Explainer | None = None) -> str | None:
        """Why a queued ``job`` is not printing (``None``: its turn is coming)."""
        if job.state is not JobState.QUEUED:
            return None
        return (explainer or self.explainer()).job(job)

    def printer_waiting(
        self, printer_id: str, explainer: eligibility.Explainer | None = None
    ) -> str | None:
        """Why an idle printer starts nothing now (quiet hours, its power group)."""
        slot = self.state.printers.get(printer_id)
        if slot is None:
            return None
        return (explainer or self.explainer()).printer(slot)

    # ================================================================ printers at run time

    async def add_printer(self, config: PrinterConfig, driver: PrinterDriver) -> Printer:
        """Start managing a printer that was not configured at start (discovery, reload).
        ``Conflict`` if the id is taken."""
        memory = (await self.store.printer_memory()).get(config.id)
        kept = await UpkeepStore(self.store).memory()  # issue 16: spools, counters
        counters, due, due_at = kept.upkeep.get(config.id, (None, None, None))
        if config.id in self.state.printers:
            raise Conflict(f"printer {config.id} already exists")
        self.host.register(config.id, driver)
        try:
            view: Printer = await self.call(
                i.AddPrinter(
                    config,
                    plate_clear=memory.plate_clear if memory else True,
                    maintenance=memory.maintenance if memory else False,
                    spools=kept.bindings.get(config.id, ()),
                    counters=counters,
                    due=due,
                    due_at=due_at,
                )
            )
        except FarmError:
            if config.id not in self.state.printers:
                self.host.drivers.pop(config.id, None)
            raise
        return view

    async def reload_printers(
        self,
        printers: Sequence[PrinterConfig],
        make_driver: Callable[[PrinterConfig], PrinterDriver],
    ) -> PrinterReloadPlan:
        """Make the managed printers match ``printers``; returns what was done.

        Unchanged printers keep their driver; a capability-only change is applied in
        place, even while printing. A printer that holds a job is never removed or
        restarted: that part waits for a later reload (logged). Raises ``ValueError``
        (from ``make_driver``) before changing anything if a new driver cannot be built.
        """
        plan = plan_printer_reload({k: s.config for k, s in self.state.printers.items()}, printers)
        new_drivers = {p.id: make_driver(p) for p in (*plan.added, *plan.restarted)}
        skipped: set[str] = set()
        for pid in (*plan.removed, *(p.id for p in plan.restarted)):
            try:
                await self.call(i.RemovePrinter(pid))
            except Conflict as exc:
                log.warning(
                    "printer busy: reload change deferred",
                    extra={"printer": pid, "reason": exc.message},
                )
                skipped.add(pid)
        for p in plan.updated:
            await self.call(i.UpdatePrinter(p))
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
        return done

    # ================================================================ views (committed state)

    @property
    def ready(self) -> bool:
        """Start-up is over: printers reconciled, dispatch running."""
        return self.running.is_set()

    @property
    def jobs(self) -> Mapping[str, Job]:
        """The live jobs (see ``core.farm.state.is_live``), as committed."""
        return self.state.jobs

    @property
    def queue(self) -> Any:
        return self.state.queue

    @property
    def printers(self) -> Mapping[str, Slot]:
        return self.state.printers

    @property
    def paused(self) -> bool:
        return self.state.paused

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def speed_factors(self) -> Mapping[str, float]:
        return self.state.speed_factors

    @property
    def dispatching(self) -> bool:
        """True while some job is being handed to a printer (the facade's ``loading``)."""
        return any(s.handing is not None for s in self.state.printers.values())

    def printer_views(self) -> list[Printer]:
        return [slot.view() for slot in self.state.printers.values()]

    def printer_view(self, printer_id: str) -> Printer:
        slot = self.state.printers.get(printer_id)
        if slot is None:
            raise NotFound(f"printer {printer_id} not found")
        return slot.view()

    def fresh(self, job: Job) -> Job:
        """``job`` as it is now: the committed live version, with its printer's latest
        reported progress and estimate while it prints."""
        job = self.state.jobs.get(job.id, job)
        if job.state is JobState.PRINTING:
            slot = self.state.printers.get(job.printer_id or "")
            if slot is not None and slot.current_job == job.id and slot.confirmed:
                return msgspec.structs.replace(job, progress=slot.progress, eta=slot.eta)
        return job

    async def get_job(self, job_id: str) -> Job:
        job = self.state.jobs.get(job_id) or await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return self.fresh(job)

    def health(self) -> QueueHealth:
        """Counts for status and metrics: O(printers), never O(queue)."""
        by_state: dict[str, int] = {}
        printing = 0
        for slot in self.state.printers.values():
            by_state[slot.state.value] = by_state.get(slot.state.value, 0) + 1
            job = self.state.jobs.get(slot.current_job or "")
            if job is not None and job.state is JobState.PRINTING:
                printing += 1
        return QueueHealth(
            paused=self.state.paused,
            queue_depth=len(self.state.queue),
            printing=printing,
            dispatching=sum(1 for s in self.state.printers.values() if s.handing is not None),
            awaiting_clear=sum(1 for s in self.state.printers.values() if not s.plate_clear),
            retry_waiting=len(self.state.retry_waiting),
            oldest_queued_at=self.state.queue.oldest_queued_at(),
            printers_by_state=by_state,
        )
