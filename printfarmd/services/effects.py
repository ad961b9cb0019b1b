"""Effects: what the farm core decided to do, done after the commit.

Printer commands (start, stop, pause, resume, emergency stop, forget a file) and the
slicer run as tasks of their own; each comes back to the owner as an input
(``StartResult``, ``CommandResult``, ``SliceResult``), so whatever changed meanwhile is
settled by the core. Nothing here raises into the owner: a failing effect is an input.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from printfarmd import faults
from printfarmd.config import Config
from printfarmd.core.farm import inputs as i
from printfarmd.core.farm import outputs as out
from printfarmd.core.gcode_meta import GcodeMeta
from printfarmd.drivers.base import DriverError, JobSpec, PrinterDriver
from printfarmd.drivers.params import assignment_parameters
from printfarmd.errors import FarmError
from printfarmd.models import Job
from printfarmd.services import files, photos, slicing
from printfarmd.services.metrics import FarmCounters

log = logging.getLogger("printfarmd.effects")
#: What the farm core decided, logged (``outputs.Log``).
farm_log = logging.getLogger("printfarmd.farm")

#: Seconds a printer command (stop, pause, resume, emergency stop) may take.
COMMAND_TIMEOUT = 10.0
#: Seconds a hand-over (upload and start) may take before it counts as refused.
START_TIMEOUT = 900.0


def facts_of(meta: GcodeMeta, *, model: bool = False) -> i.FileFacts:
    return i.FileFacts(
        material=meta.filament_type,
        nozzle_diameter=meta.nozzle_diameter,
        estimated_time=meta.estimated_time,
        model=model,
        filament_weight=meta.filament_weight_total,
    )


class Outcomes(msgspec.Struct):
    """What the printers told to do something for one command answered: printer id ->
    ``None`` (done) or the error message. ``arrived`` is set at every answer."""

    results: dict[str, str | None] = msgspec.field(default_factory=dict)
    arrived: trio.Event = msgspec.field(default_factory=trio.Event)

    async def wait_for(self, printers: Sequence[str]) -> None:
        """Until every one of ``printers`` answered (the caller bounds the wait)."""
        while not all(p in self.results for p in printers):
            await self.arrived.wait()
            self.arrived = trio.Event()


class Effects:
    """Runs effects for the owner. ``post`` sends an input back to the owner (never
    blocks); ``driver`` finds a printer's driver (``None`` once it was removed)."""

    def __init__(
        self,
        *,
        config: Config,
        post: Callable[[i.Input], None],
        driver: Callable[[str], PrinterDriver | None],
        counters: FarmCounters,
        publish_progress: Callable[[str], None],
        arm_timer: Callable[[float, out.TimerKind, str], None],
        drivers_changed: Callable[[out.StartDriver | out.StopDriver], None],
    ) -> None:
        self.config = config
        self._post = post
        self._driver = driver
        self.counters = counters
        self._publish_progress = publish_progress
        self._arm_timer = arm_timer
        self._drivers_changed = drivers_changed
        self.escalate: Callable[[Job], None] | None = None
        #: (issue 16) A printer is due for maintenance: tell the people (the notifier).
        self.maintenance_due: Callable[[out.MaintenanceDue], None] | None = None
        #: (issue 16) The Spoolman service has work (usage to send, a spool to read).
        self.spoolman_kick: Callable[[], None] | None = None
        self.nursery: trio.Nursery | None = None
        self._watches: dict[str, Outcomes] = {}

    def watch(self, token: str) -> Outcomes:
        """Collect the outcomes of effects carrying ``token`` (until ``unwatch``)."""
        return self._watches.setdefault(token, Outcomes())

    def unwatch(self, token: str) -> None:
        self._watches.pop(token, None)

    def _tell(self, token: str, printer_id: str, outcome: str | None) -> None:
        watch = self._watches.get(token) if token else None
        if watch is not None:
            watch.results[printer_id] = outcome
            watch.arrived.set()

    def run(self, effect: out.Effect) -> None:
        """Start ``effect`` (sync: tasks are spawned, never awaited here)."""
        if isinstance(effect, out.Log):
            farm_log.log(
                logging.getLevelNamesMapping()[effect.level.upper()],
                effect.message,
                extra=dict(effect.fields),
            )
        elif isinstance(effect, out.PublishProgress):
            self._publish_progress(effect.printer_id)
        elif isinstance(effect, out.ArmTimer):
            self._arm_timer(effect.at, effect.kind, effect.key)
        elif isinstance(effect, out.Count):
            self._count(effect)
        elif isinstance(effect, out.Escalate):
            if self.escalate is not None:
                self.escalate(effect.job)
        elif isinstance(effect, out.StartDriver | out.StopDriver):
            self._drivers_changed(effect)
        elif isinstance(effect, out.MaintenanceDue):
            if self.maintenance_due is not None:
                self.maintenance_due(effect)
        elif isinstance(effect, out.SpoolmanKick):
            if self.spoolman_kick is not None:
                self.spoolman_kick()
        else:
            assert self.nursery is not None, "effects need the owner's nursery"
            self.nursery.start_soon(self._task, effect)

    def _count(self, effect: out.Count) -> None:
        c = self.counters
        if effect.name == "dispatch_wait":
            c.observe_dispatch(effect.value)
        elif effect.name == "retries":
            c.retries += 1
        elif effect.name == "watchdog_actions":
            c.watchdog_actions += 1

    async def _task(self, effect: out.Effect) -> None:
        try:
            if isinstance(effect, out.StartPrint):
                await self._start(effect.printer_id, effect.job)
            elif isinstance(effect, out.StopPrint):
                await self._command(
                    effect.printer_id,
                    effect.job_id,
                    "cancel",
                    lambda d: d.cancel_job(effect.job_id),
                )
            elif isinstance(effect, out.PausePrint):
                ok = await self._command(
                    effect.printer_id, effect.job_id, "pause", lambda d: d.pause_job(effect.job_id)
                )
                self._tell(effect.token, effect.printer_id, ok)
            elif isinstance(effect, out.ResumePrint):
                ok = await self._command(
                    effect.printer_id,
                    effect.job_id,
                    "resume",
                    lambda d: d.resume_job(effect.job_id),
                )
                self._tell(effect.token, effect.printer_id, ok)
            elif isinstance(effect, out.EmergencyStop):
                ok = await self._command(effect.printer_id, None, "emergency_stop", _emergency_stop)
                self._tell(effect.token, effect.printer_id, ok)
            elif isinstance(effect, out.ForgetFile):
                await self._forget(effect)
            elif isinstance(effect, out.Slice):
                await self._slice(effect)
            elif isinstance(effect, out.CapturePhoto):
                driver = self._driver(effect.printer_id)
                if driver is not None:
                    root = self.config.data_path / "photos"
                    await photos.capture(driver, root, effect.job_id, effect.at)
        except Exception:
            # A bug in an effect must not take the daemon down; the core hears of a
            # failed hand-over (below), other effects are only logged.
            log.exception("effect failed", extra={"effect": type(effect).__name__})
            if isinstance(effect, out.StartPrint):
                self._post(
                    i.StartResult(
                        effect.printer_id, effect.job.id, i.StartOutcome.REFUSED, "internal error"
                    )
                )

    async def _start(self, printer_id: str, job: Job) -> None:
        faults.point("dispatch")  # issue 8: `wedge@dispatch` tests the systemd watchdog
        driver = self._driver(printer_id)
        if driver is None:
            self._post(i.StartResult(printer_id, job.id, i.StartOutcome.REFUSED, "printer removed"))
            return
        try:
            # Checked again now, not only at submission: the file may have been replaced
            # by a symlink out of the gcodes folder since, and the driver reads this path.
            path = await trio.to_thread.run_sync(
                lambda: files.resolve_in(self.config.gcodes_path, job.filename, must_exist=False)
            )
        except FarmError as exc:
            log.warning(
                "job file left the gcodes folder",
                extra={"job": job.id, "printer": printer_id, "reason": exc.message},
            )
            self._post(i.StartResult(printer_id, job.id, i.StartOutcome.FILE_ESCAPED, exc.message))
            return
        spec = JobSpec(
            job_id=job.id,
            filename=job.filename,
            path=str(path),
            estimated_time=job.estimated_time,
            material=job.material,
            resume_progress=job.resume_progress,
            priority=job.priority,
            parameters=await self._parameters(path),
        )
        try:
            with trio.fail_after(START_TIMEOUT):
                await driver.start_job(spec)
        except (DriverError, trio.TooSlowError) as exc:
            message = exc.message if isinstance(exc, DriverError) else "the hand-over timed out"
            log.warning(
                "printer refused job",
                extra={"job": job.id, "printer": printer_id, "reason": message},
            )
            self._post(i.StartResult(printer_id, job.id, i.StartOutcome.REFUSED, message))
            return
        self._post(i.StartResult(printer_id, job.id, i.StartOutcome.ACCEPTED))

    async def _parameters(self, path: Path) -> dict[str, float]:
        """The print settings the file states (the MQTT assignment's ``parameters``)."""
        try:
            meta = await trio.to_thread.run_sync(files.meta_of, path)
        except OSError:
            return {}  # the driver reports the unreadable file itself
        return assignment_parameters(meta)

    async def _command(
        self,
        printer_id: str,
        job_id: str | None,
        name: str,
        call: Callable[[PrinterDriver], Awaitable[None]],
    ) -> str | None:
        """Run ``call`` on the printer's driver, bounded; its outcome goes to the owner.
        Returns ``None`` when done, else the error message."""
        driver = self._driver(printer_id)
        if driver is None:
            return "printer removed"
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                await call(driver)
        except (DriverError, trio.TooSlowError) as exc:
            message = exc.message if isinstance(exc, DriverError) else "timed out"
            self._post(i.CommandResult(printer_id, job_id, name, False, message))
            return message
        self._post(i.CommandResult(printer_id, job_id, name, True))
        return None

    async def _forget(self, effect: out.ForgetFile) -> None:
        driver = self._driver(effect.printer_id)
        forget: Any = getattr(driver, "forget_job", None)
        if forget is None:
            return
        await self._command(
            effect.printer_id, effect.job_id, "forget_job", lambda _d: forget(effect.job_id)
        )

    async def _slice(self, effect: out.Slice) -> None:
        root = self.config.gcodes_path
        model = root / effect.model
        output = root / effect.output
        meta = GcodeMeta()
        error: str | None = None
        try:
            await slicing.run_slicer(
                self.config.slicer.command, model, output, self.config.slicer.timeout
            )
            meta = await trio.to_thread.run_sync(files.read_meta, output)
        except slicing.SliceFailed as exc:
            error = exc.message
        except OSError as exc:
            error = f"the sliced file cannot be read: {exc.strerror or exc}"
        log.info(
            "model sliced", extra={"job": effect.job_ids[0], "file": effect.output, "reason": error}
        )
        self._post(i.SliceResult(effect.job_ids, effect.output, facts_of(meta), error))


async def _emergency_stop(driver: PrinterDriver) -> None:
    stop: Any = getattr(driver, "emergency_stop", None)
    if stop is None:
        raise DriverError("this driver has no emergency stop")
    await stop()
