"""Deterministic virtual printers on the trio clock, for the demo farm and for tests.

A ``SimulatedPrinter`` implements ``PrinterDriver`` without any I/O. A print takes
``estimated_time or options.default_print_time`` *simulated* seconds and runs
``options.speed`` times faster than trio time, so under ``autojump_clock`` a whole farm
day passes in milliseconds. Whether a print fails, and where, is drawn at job start
from a ``random.Random`` seeded with ``f"{seed}:{printer_id}:{n}"`` (``n`` counts jobs
started on this printer), so every run with the same options tells the same story.

Test knobs (plain methods): ``set_offline`` models a printer that lost its network
link but keeps printing; ``hang`` models a print that silently stops progressing.

Every event goes through one in-process outbox drained by one forwarding task, so
commands never block on the scheduler's channel and events leave in the exact order
the printer produced them.
"""

from __future__ import annotations

import math
import random
import struct
import zlib

import attrs
import msgspec
import trio

from printfarmd.config import SimulatorOptions
from printfarmd.drivers.base import (
    DriverEvent,
    JobFailed,
    JobFinished,
    JobSpec,
    PrinterBusy,
    PrinterUnreachable,
    StatusReport,
)
from printfarmd.models import PrinterState

#: Periodic reports are never closer together than this many trio seconds, however
#: fast the simulation runs (a speed of 10_000 must not flood the scheduler).
MIN_REPORT_INTERVAL = 0.05
#: Failure points are drawn uniformly from this fraction of the part still to print.
FAILURE_WINDOW = (0.05, 0.95)
#: Width and height of ``snapshot()`` images.
SNAPSHOT_SIZE = (64, 48)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_IDLE_COLOUR = (128, 128, 128)
_START_COLOUR = (200, 60, 40)
_DONE_COLOUR = (40, 180, 60)


class _Print(msgspec.Struct):
    """One print in progress. Progress is piecewise linear in trio time.

    While running, progress is ``base + (now - since) * rate``; while frozen (paused
    or hung) ``since`` is ``None`` and progress is ``base``. Keeping segments instead
    of accumulating per-tick increments makes the finish time exact, which matters
    because a float rounding short of 100 would never finish under autojump.
    """

    spec: JobSpec
    #: Simulated seconds a full 0..100 % print takes.
    total: float
    #: Progress (%) per trio second while running.
    rate: float
    #: Progress at which the print stops: 100, or the failure point.
    end: float
    fails: bool
    base: float
    since: float | None
    scope: trio.CancelScope = msgspec.field(default_factory=trio.CancelScope)
    paused: bool = False
    hung: bool = False

    def progress(self, now: float) -> float:
        if self.since is None:
            return self.base
        return min(self.end, self.base + (now - self.since) * self.rate)

    def end_time(self) -> float:
        """Trio time at which the current running segment reaches ``end``; inf if frozen."""
        if self.since is None:
            return math.inf
        return self.since + (self.end - self.base) / self.rate

    def freeze(self, now: float) -> None:
        self.base = self.progress(now)
        self.since = None

    def thaw(self, now: float) -> None:
        if self.since is None and not self.paused and not self.hung:
            self.since = now


@attrs.define
class SimulatedPrinter:
    """A virtual printer that implements ``PrinterDriver`` on the trio clock.

    Construct with ``SimulatedPrinter(printer_id, options)``. A fresh instance knows
    no job (a daemon restart loses what the in-memory printer was doing).
    ``gcode_log`` records every script passed to ``run_gcode``; ``emergency_stops``
    counts ``emergency_stop`` calls.
    """

    _printer_id: str
    _options: SimulatorOptions = attrs.field(factory=SimulatorOptions)
    gcode_log: list[str] = attrs.field(init=False, factory=list)
    emergency_stops: int = attrs.field(init=False, default=0)

    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _outbox: trio.MemorySendChannel[DriverEvent] | None = attrs.field(init=False, default=None)
    _print: _Print | None = attrs.field(init=False, default=None)
    _jobs_started: int = attrs.field(init=False, default=0)
    _offline: bool = attrs.field(init=False, default=False)
    #: JobFinished/JobFailed produced while offline, delivered on return.
    _held: list[JobFinished | JobFailed] = attrs.field(init=False, factory=list)
    #: Set (and replaced) whenever the print's timing changes, to wake the print task.
    _changed: trio.Event = attrs.field(init=False, factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        if not self._options.speed > 0:
            raise ValueError(f"simulator speed must be positive, got {self._options.speed}")
        if not self._options.default_print_time > 0:
            raise ValueError("simulator default_print_time must be positive")

    @property
    def printer_id(self) -> str:
        return self._printer_id

    @property
    def report_interval(self) -> float:
        """Trio seconds between periodic reports while printing."""
        return max(self._options.report_interval / self._options.speed, MIN_REPORT_INTERVAL)

    # -- the driver's life ------------------------------------------------------------

    async def run(
        self,
        events: trio.MemorySendChannel[DriverEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send the initial status, call ``task_status.started()``, live until cancelled.

        Prints run in this task's nursery, so cancelling ``run`` stops them and the
        printer forgets its job. A closed or broken ``events`` channel silences the
        reports but never ends or crashes ``run``. Raises ``RuntimeError`` if this
        printer is already running.
        """
        if self._nursery is not None:
            raise RuntimeError(f"simulated printer {self._printer_id} is already running")
        outbox_send, outbox_receive = trio.open_memory_channel[DriverEvent](math.inf)
        with outbox_send, outbox_receive:
            try:
                async with trio.open_nursery() as nursery:
                    first = self._offline_report() if self._offline else self._current_report()
                    delivered = await self._deliver(events, first)
                    if delivered:
                        self._outbox = outbox_send
                        nursery.start_soon(self._forward, outbox_receive, events)
                    self._nursery = nursery
                    task_status.started()
                    await trio.sleep_forever()
            finally:
                self._nursery = None
                self._outbox = None
                self._print = None
                self._held.clear()

    async def _deliver(
        self, events: trio.MemorySendChannel[DriverEvent], event: DriverEvent
    ) -> bool:
        """Send one event; ``False`` once nobody can receive any more."""
        try:
            await events.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _forward(
        self,
        outbox: trio.MemoryReceiveChannel[DriverEvent],
        events: trio.MemorySendChannel[DriverEvent],
    ) -> None:
        async for event in outbox:
            if not await self._deliver(events, event):
                # Nobody listens any more: stop producing instead of buffering forever.
                self._outbox = None
                return

    def _emit(self, event: DriverEvent) -> None:
        """Queue ``event`` for the scheduler, as the network link allows. Not a checkpoint."""
        if self._offline:
            # A real printer that lost Wi-Fi still finishes; its outcome surfaces later.
            if isinstance(event, JobFinished | JobFailed):
                self._held.append(event)
            return
        if self._outbox is not None:
            self._outbox.send_nowait(event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _current_report(self) -> StatusReport:
        p = self._print
        if p is None:
            return StatusReport(self._printer_id, PrinterState.IDLE)
        progress = p.progress(trio.current_time())
        return StatusReport(
            self._printer_id,
            PrinterState.PAUSED if p.paused else PrinterState.PRINTING,
            job_id=p.spec.job_id,
            progress=progress,
            # Real seconds left (the sim runs `speed` times faster than real time).
            remaining=(100.0 - progress) / 100.0 * p.total / self._options.speed,
            message="paused" if p.paused else "",
        )

    def _offline_report(self) -> StatusReport:
        return StatusReport(
            self._printer_id, PrinterState.OFFLINE, message="simulated network outage"
        )

    def _check_online(self) -> None:
        if self._offline:
            raise PrinterUnreachable(f"simulated printer {self._printer_id} is offline")

    def _current(self, job_id: str) -> _Print | None:
        p = self._print
        return p if p is not None and p.spec.job_id == job_id else None

    async def _print_task(self, p: _Print) -> None:
        interval = self.report_interval
        next_report = trio.current_time() + interval
        with p.scope:
            while True:
                if self._print is not p:
                    return  # cancelled before this task first ran
                now = trio.current_time()
                if now >= p.end_time():
                    p.base, p.since = p.end, None
                    break
                if now >= next_report:
                    if not p.hung:
                        self._emit(self._current_report())
                    next_report = now + interval
                deadline = math.inf if p.hung else min(next_report, p.end_time())
                with trio.move_on_at(deadline):
                    await self._changed.wait()
            self._print = None
            job_id = p.spec.job_id
            if p.fails:
                reason = f"simulated failure at {p.end:.0f}%"
                self._emit(JobFailed(self._printer_id, job_id, reason))
            else:
                self._emit(
                    StatusReport(
                        self._printer_id, PrinterState.PRINTING, job_id, 100.0, remaining=0.0
                    )
                )
                self._emit(JobFinished(self._printer_id, job_id))
            self._emit(self._current_report())

    # -- PrinterDriver commands -------------------------------------------------------

    async def status(self) -> StatusReport:
        """The current status. Checkpoint. Raises ``PrinterUnreachable`` while offline."""
        await trio.lowlevel.checkpoint()
        self._check_online()
        return self._current_report()

    async def start_job(self, job: JobSpec) -> None:
        """Accept ``job`` and start printing it in the background. Checkpoint.

        Raises ``PrinterUnreachable`` while offline or when ``run`` is not running, and
        ``PrinterBusy`` while another job is printing or paused. Printing starts at
        ``job.resume_progress`` percent.
        """
        await trio.lowlevel.checkpoint()
        self._check_online()
        if self._nursery is None:
            raise PrinterUnreachable("simulator not running")
        if self._print is not None:
            raise PrinterBusy(
                f"simulated printer {self._printer_id} is busy with job {self._print.spec.job_id}"
            )
        opts = self._options
        rng = random.Random(f"{opts.seed}:{self._printer_id}:{self._jobs_started}")  # noqa: S311
        self._jobs_started += 1
        # Both draws always happen so a job's failure point does not depend on the rate.
        fails = rng.random() < opts.failure_rate
        fraction = rng.uniform(*FAILURE_WINDOW)
        start = min(max(job.resume_progress, 0.0), 100.0)
        est = job.estimated_time
        total = est if est is not None and est > 0 else opts.default_print_time
        p = _Print(
            spec=job,
            total=total,
            rate=100.0 * opts.speed / total,
            end=start + (100.0 - start) * fraction if fails else 100.0,
            fails=fails,
            base=start,
            since=trio.current_time(),
        )
        self._print = p
        self._emit(self._current_report())
        self._nursery.start_soon(self._print_task, p)

    async def cancel_job(self, job_id: str) -> None:
        """Stop ``job_id`` if it is the current print, then report IDLE. Checkpoint.

        No ``JobFailed`` is sent: the scheduler asked for this. A no-op for any other
        job. Raises ``PrinterUnreachable`` while offline.
        """
        await trio.lowlevel.checkpoint()
        self._check_online()
        p = self._current(job_id)
        if p is None:
            return
        self._print = None
        p.scope.cancel()
        self._emit(self._current_report())

    async def pause_job(self, job_id: str) -> None:
        """Freeze ``job_id`` (paused time does not count) and report PAUSED. Checkpoint.

        A no-op for any other job or if already paused. Raises ``PrinterUnreachable``
        while offline.
        """
        await trio.lowlevel.checkpoint()
        self._check_online()
        p = self._current(job_id)
        if p is None or p.paused:
            return
        p.freeze(trio.current_time())
        p.paused = True
        self._notify()
        self._emit(self._current_report())

    async def resume_job(self, job_id: str) -> None:
        """Continue a paused ``job_id`` and report PRINTING. Checkpoint.

        A no-op for any other job or if not paused. Raises ``PrinterUnreachable``
        while offline.
        """
        await trio.lowlevel.checkpoint()
        self._check_online()
        p = self._current(job_id)
        if p is None or not p.paused:
            return
        p.paused = False
        p.thaw(trio.current_time())
        self._notify()
        self._emit(self._current_report())

    async def forget_job(self, job_id: str) -> None:
        """Nothing to remove: a simulated printer keeps no uploaded files. Checkpoint."""
        await trio.lowlevel.checkpoint()

    async def emergency_stop(self) -> None:
        """Stop the current print at once (no ``JobFailed``: the farm asked) and report
        IDLE with the message "emergency stop"; the part stays on the plate. A simulated
        printer has no firmware to restart: it can print again once its plate is cleared.
        Checkpoint. Raises ``PrinterUnreachable`` while offline.
        """
        await trio.lowlevel.checkpoint()
        self._check_online()
        self.emergency_stops += 1
        p = self._print
        if p is not None:
            self._print = None
            p.scope.cancel()
        self._emit(StatusReport(self._printer_id, PrinterState.IDLE, message="emergency stop"))

    async def run_gcode(self, script: str) -> None:
        """Record ``script`` in ``gcode_log``. Checkpoint. ``PrinterUnreachable`` offline."""
        await trio.lowlevel.checkpoint()
        self._check_online()
        self.gcode_log.append(script)

    async def snapshot(self) -> bytes:
        """A 64x48 solid-colour PNG: grey when idle, red to green as a print progresses.

        Checkpoint. Raises ``PrinterUnreachable`` while offline.
        """
        await trio.lowlevel.checkpoint()
        self._check_online()
        p = self._print
        if p is None:
            colour = _IDLE_COLOUR
        else:
            t = p.progress(trio.current_time()) / 100.0
            colour = (
                round(_START_COLOUR[0] + (_DONE_COLOUR[0] - _START_COLOUR[0]) * t),
                round(_START_COLOUR[1] + (_DONE_COLOUR[1] - _START_COLOUR[1]) * t),
                round(_START_COLOUR[2] + (_DONE_COLOUR[2] - _START_COLOUR[2]) * t),
            )
        return encode_solid_png(*SNAPSHOT_SIZE, colour)

    # -- test knobs -------------------------------------------------------------------

    def set_offline(self, flag: bool) -> None:
        """Drop (``True``) or restore (``False``) the simulated network link.

        Going offline sends one OFFLINE report; then ``status()`` and every command
        raise ``PrinterUnreachable`` and no reports are sent, while the print goes on.
        Coming back sends any ``JobFinished``/``JobFailed`` produced meanwhile, then
        the current status. Must be called inside trio. Not a checkpoint.
        """
        if flag == self._offline:
            return
        if flag:
            self._emit(self._offline_report())
            self._offline = True
            return
        self._offline = False
        held, self._held = self._held, []
        for event in held:
            self._emit(event)
        self._emit(self._current_report())

    def hang(self) -> None:
        """Freeze the current print: no progress, no periodic reports, until ``unhang``.

        ``status()`` and commands still answer (with the frozen progress). A no-op
        when idle. Must be called inside trio. Not a checkpoint.
        """
        p = self._print
        if p is None or p.hung:
            return
        p.freeze(trio.current_time())
        p.hung = True
        self._notify()

    def unhang(self) -> None:
        """Let a hung print continue; the hung time does not count. Not a checkpoint."""
        p = self._print
        if p is None or not p.hung:
            return
        p.hung = False
        p.thaw(trio.current_time())
        self._notify()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid 8-bit RGB PNG of ``width`` x ``height`` pixels, all ``rgb``. Pure."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + bytes(rgb) * width  # filter type 0 (None) for every scanline
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(row * height))
        + _png_chunk(b"IEND", b"")
    )
