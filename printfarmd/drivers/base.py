"""The contract between the scheduler and a printer driver.

A driver owns the link to one printer. It runs as a long-lived trio task
(``run``) that keeps the link up and *reports* what the printer does by sending
``DriverEvent`` values on the channel it was given; the scheduler *commands* it with
``start_job``/``cancel_job``/``pause_job``/``resume_job``/``emergency_stop``. Parsing of a printer's
protocol is pure and lives beside the driver; the network loop is thin around it.

Rules every driver keeps:
- Reports are facts about the printer, never decisions about jobs: the scheduler
  alone changes job states.
- ``JobFinished``/``JobFailed`` are sent at most once per started job; a report that
  repeats (e.g. an MQTT QoS 1 redelivery) must be filtered by the driver or is made
  harmless by the scheduler's idempotent handling.
- Commands raise ``DriverError`` (or a subclass) on failure, never anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import msgspec
import trio
from msgspec.structs import force_setattr

from printfarmd.models import PrinterState


class DriverError(Exception):
    """A command to a printer failed; ``message`` is safe to show to an operator."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PrinterBusy(DriverError):
    """The printer refused a job because it is not idle."""


class PrinterUnreachable(DriverError):
    """The printer did not answer in time or the link is down."""


class NotSupported(DriverError):
    """The printer cannot do this (no camera, no G-code console, ...)."""


class JobSpec(msgspec.Struct, frozen=True):
    """What a driver needs to print a job.

    ``path`` is the absolute, already containment-checked file path; ``filename`` the
    path relative to the gcodes folder. ``estimated_time`` is in seconds of real
    printing (``None`` if unknown). ``resume_progress`` (0..100) asks a driver that can
    resume to start from that point; others ignore it. ``priority`` is the job's queue
    priority (the farm has already ordered its queue; protocols that carry it, like the
    MQTT job-handler assignment, pass it on). ``parameters`` are the print settings the
    file was sliced with, under the MQTT job-handler spec's names (``layerHeight`` mm,
    ``infill`` %, ``nozzleTemp`` and ``bedTemp`` degrees C); only known ones are present
    (see ``drivers.params.assignment_parameters``).
    """

    job_id: str
    filename: str
    path: str
    estimated_time: float | None = None
    material: str | None = None
    resume_progress: float = 0.0
    priority: int = 0
    parameters: Mapping[str, float] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        # A copy: the caller's mapping may change after the job is handed over.
        force_setattr(self, "parameters", dict(self.parameters))

    def __hash__(self) -> int:
        # Hashable although ``parameters`` is a dict: every other field counts.
        spec = (self.job_id, self.filename, self.path, self.estimated_time, self.material)
        return hash((*spec, self.resume_progress, self.priority))


class StatusReport(msgspec.Struct, frozen=True):
    """The printer's state now. ``job_id`` is the job it is working on, if any.

    ``remaining`` is the printer's own estimate of real (wall-clock) seconds left, if
    it has one.
    """

    printer_id: str
    state: PrinterState
    job_id: str | None = None
    progress: float = 0.0
    remaining: float | None = None
    message: str = ""


class JobFinished(msgspec.Struct, frozen=True):
    """The printer completed ``job_id``; the plate now holds the print."""

    printer_id: str
    job_id: str


class JobFailed(msgspec.Struct, frozen=True):
    """The printer stopped ``job_id`` without completing it; ``reason`` says why."""

    printer_id: str
    job_id: str
    reason: str


class PlateCleared(msgspec.Struct, frozen=True):
    """Something other than the operator (a robot, an auto-eject) cleared the plate."""

    printer_id: str


class MaterialsReport(msgspec.Struct, frozen=True):
    """The filaments loaded on the printer now, index-aligned: ``materials`` upper-case
    (``"PLA"``), ``colours`` ``#RRGGBB`` upper-case (``""`` when the printer does not
    say); the first entry is the active one. Sent when it changes (e.g. AMS trays)."""

    printer_id: str
    materials: tuple[str, ...]
    colours: tuple[str, ...]


DriverEvent = StatusReport | JobFinished | JobFailed | PlateCleared | MaterialsReport


class PrinterDriver(Protocol):
    """What the scheduler needs from every driver."""

    @property
    def printer_id(self) -> str: ...

    async def run(
        self,
        events: trio.MemorySendChannel[DriverEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the link up and send reports until cancelled.

        Calls ``task_status.started()`` once the first status is known (or the first
        connection attempt failed, in which case an OFFLINE report is sent). Never
        returns normally; never raises except ``trio.Cancelled``.
        """
        ...

    async def status(self) -> StatusReport:
        """The printer's current status (asks the printer if needed). Checkpoint.

        Raises ``PrinterUnreachable`` if it cannot be reached in time.
        """
        ...

    async def start_job(self, job: JobSpec) -> None:
        """Hand ``job`` to the printer and start it. Returns once the printer accepted.

        Raises ``PrinterBusy`` if it is not idle, ``PrinterUnreachable``, or
        ``DriverError``.
        """
        ...

    async def cancel_job(self, job_id: str) -> None:
        """Stop ``job_id`` if the printer is working on it; a no-op otherwise."""
        ...

    async def pause_job(self, job_id: str) -> None: ...

    async def resume_job(self, job_id: str) -> None: ...

    async def forget_job(self, job_id: str) -> None:
        """Remove what the farm uploaded to the printer for ``job_id`` (its G-code or
        project file), so uploads do not pile up. A no-op where nothing was uploaded;
        never raises for a file that is already gone. Raises ``PrinterUnreachable`` (a
        ``DriverError``) only when the printer cannot be reached."""

    async def emergency_stop(self) -> None:
        """Stop whatever the printer is doing at once: M112, Moonraker's
        ``printer.emergency_stop``, the MQTT ``emergency_stop`` command. Checkpoint.

        Stops any print, ours or not, and sends no ``JobFailed`` for it (the farm asked
        and fails the job itself). What the printer reports afterwards is the printer's
        own state (a Klipper printer is shut down until its firmware is restarted).
        Raises ``DriverError`` (``PrinterUnreachable``) if the printer cannot be reached.
        """
        ...

    async def run_gcode(self, script: str) -> None:
        """Run a clearing or transition G-code; ``NotSupported`` where impossible."""
        ...

    async def snapshot(self) -> bytes | None:
        """A camera image (PNG or JPEG bytes), or ``None`` when there is no camera."""
        ...
