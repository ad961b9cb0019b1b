"""What the farm core takes: commands (from people and programs, answered with a reply)
and events (printer reports, timers, watchdog sweeps, the outcomes of effects).

Commands carry everything the core needs that takes I/O to learn (a file's metadata, a
finished job read from the store): the edge does the I/O, the core decides.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from printfarmd.config import PrinterConfig
from printfarmd.core.farm.outputs import TimerKind
from printfarmd.drivers.base import DriverEvent
from printfarmd.models import Job


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
    #: ``#RRGGBB``; only a printer with that colour loaded (config, AMS, bound spool).
    colour: str | None = None
    #: (issue 16) Not started before this UTC time.
    not_before: float | None = None

    def digest(self) -> str:
        """A stable hash of the request, to detect an Idempotency-Key reused for another."""
        fields = attrs.asdict(self)
        for added_later in ("colour", "not_before"):  # keys stored before still match
            if fields[added_later] is None:
                del fields[added_later]
        return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


@attrs.frozen
class FileFacts:
    """What the file says (read by the edge): material, nozzle, estimate; ``model`` for an
    STL/3MF waiting for the slicer (its metadata comes after slicing)."""

    material: str | None = None
    nozzle_diameter: float | None = None
    estimated_time: float | None = None
    model: bool = False
    #: (issue 16) Grams of filament the file uses.
    filament_weight: float | None = None


# ---------------------------------------------------------------------- commands


@attrs.frozen
class CreateJobs:
    request: JobRequest
    facts: FileFacts
    idempotency_key: str | None = None


@attrs.frozen
class Cancel:
    """``snapshot``: the job as stored, for a job not in memory (finished)."""

    job_id: str
    reason: str = "cancelled by operator"
    snapshot: Job | None = None


@attrs.frozen
class Release:
    job_id: str
    printer_id: str
    snapshot: Job | None = None


@attrs.frozen
class Reprioritize:
    job_id: str
    priority: int
    snapshot: Job | None = None


@attrs.frozen
class Jump:
    job_id: str
    snapshot: Job | None = None


@attrs.frozen
class Ship:
    job_id: str
    tracking: str
    snapshot: Job | None = None


@attrs.frozen
class SetPaused:
    paused: bool


@attrs.frozen
class UpdateSettings:
    changes: Mapping[str, Any]


@attrs.frozen
class ClearPlate:
    printer_id: str
    source: str = "operator"


@attrs.frozen
class SetMaintenance:
    printer_id: str
    enabled: bool


@attrs.frozen
class QueueFile:
    """A new queued job for ``filename`` (in ``SetQueue``)."""

    filename: str
    facts: FileFacts
    source: str = "moonraker"


@attrs.frozen
class SetQueue:
    """Make the head of the queue ``items`` in this order: job ids of queued jobs (kept,
    with their history) and ``QueueFile`` entries (new jobs). With ``cancel_unlisted``,
    queued jobs not listed are cancelled (the listed order becomes the whole queue).
    With ``ordered`` False the new jobs are simply appended (no reordering)."""

    items: tuple[str | QueueFile, ...]
    cancel_unlisted: bool = False
    ordered: bool = True
    reason: str = "removed from the queue"


@attrs.frozen
class CancelQueued:
    """Cancel those of ``job_ids`` that are queued; the reply lists the ids cancelled."""

    job_ids: tuple[str, ...]
    reason: str


@attrs.frozen
class PauseJob:
    """Ask the printer of a printing job to pause it (``token``: see ``EmergencyStop``)."""

    job_id: str
    token: str = ""


@attrs.frozen
class ResumeJob:
    job_id: str
    token: str = ""


@attrs.frozen
class EmergencyStopFarm:
    """Stop every printing printer at once, pause dispatch, fail their jobs. ``token``
    is passed on to the printers' emergency-stop effects (see ``outputs.EmergencyStop``)."""

    client: str
    token: str = ""


@attrs.frozen
class AddPrinter:
    config: PrinterConfig
    plate_clear: bool = True
    maintenance: bool = False
    #: (issue 16) What the store remembers: its spools, its counters and why it is due.
    spools: tuple[int | None, ...] = ()
    counters: Any = None
    due: str | None = None
    due_at: float | None = None


@attrs.frozen
class RemovePrinter:
    printer_id: str


@attrs.frozen
class UpdatePrinter:
    """Capabilities, name or auto_clear changed; the driver stays."""

    config: PrinterConfig


@attrs.frozen
class Ping:
    """Answered at once: shows the owner is taking inputs (the systemd watchdog)."""


@attrs.frozen
class BindSpool:
    """(issue 16) Bind ``spool_id`` (``None``: unbind) to ``tool`` of ``printer_id``;
    ``info``: the spool as Spoolman has it (read by the edge), ``None`` if not reached."""

    printer_id: str
    tool: int
    spool_id: int | None
    info: Any = None


@attrs.frozen
class RecordMaintenance:
    """(issue 16) Maintenance was done on ``printer_id`` by ``by``: ``work``; at ``at``
    (UTC; ``None``: now). Resets the counters and ends maintenance mode."""

    printer_id: str
    by: str
    work: str
    at: float | None = None


Command = (
    CreateJobs
    | Cancel
    | Release
    | Reprioritize
    | Jump
    | Ship
    | SetPaused
    | UpdateSettings
    | ClearPlate
    | SetMaintenance
    | SetQueue
    | CancelQueued
    | PauseJob
    | ResumeJob
    | EmergencyStopFarm
    | AddPrinter
    | RemovePrinter
    | UpdatePrinter
    | Ping
    | BindSpool
    | RecordMaintenance
)

# ---------------------------------------------------------------------- events


@attrs.frozen
class Report:
    """What a printer's driver said."""

    event: DriverEvent


@attrs.frozen
class TimerFired:
    kind: TimerKind
    key: str


@attrs.frozen
class WatchdogSweep:
    stale_threshold: float


@attrs.frozen
class Startup:
    """The owner has restored the state: re-arm timers, carry on half-done pipelines."""


@attrs.frozen
class Dispatch:
    """Give queued jobs to idle printers."""


@attrs.frozen
class FlushProgress:
    """Store the printers' latest progress for their jobs (coalesced)."""


class StartOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    FILE_ESCAPED = "file_escaped"


@attrs.frozen
class StartResult:
    printer_id: str
    job_id: str
    outcome: StartOutcome
    message: str = ""


@attrs.frozen
class CommandResult:
    """The outcome of a stop/pause/resume/emergency stop sent to a printer."""

    printer_id: str
    job_id: str | None
    command: str
    ok: bool
    message: str = ""


@attrs.frozen
class SliceResult:
    job_ids: tuple[str, ...]
    output: str
    facts: FileFacts
    error: str | None = None


@attrs.frozen
class SpoolsRefreshed:
    """(issue 16) What Spoolman says of spools now (``upkeep_state.SpoolInfo`` values),
    and the ids it answered 404 for."""

    spools: tuple[Any, ...]
    missing: tuple[int, ...] = ()


@attrs.frozen
class UsageReported:
    """(issue 16) The usage report ``key`` is settled: Spoolman applied it (``applied``),
    or it was dropped (``error`` says why)."""

    key: str
    applied: bool
    error: str | None = None


@attrs.frozen
class SharedChanges:
    """(issue 18) What the other daemons of a cluster committed, read back from the
    database: the ``jobs`` as stored now, each with ``seqs[id]``, the newest event of the
    job read before the row (the owner drops a row not newer than what it has); the
    ``events`` (published once applied); the farm's ``settings`` and ``paused`` flag when
    another daemon changed them. ``resync``: every job this daemon holds, read again after
    it lost its lease (all of them apply), and ``epoch``, the lease it rejoined under (the
    owner writes under it once this is applied)."""

    jobs: tuple[Job, ...] = ()
    seqs: Mapping[str, int] = attrs.field(factory=dict)
    events: tuple[Any, ...] = ()
    settings: Any = None
    paused: bool | None = None
    resync: bool = False
    epoch: int = 0
    #: Who asked for each emergency stop another daemon received (and did not relay):
    #: this daemon stops its printers too.
    estops: tuple[str, ...] = ()


@attrs.frozen
class NodeLost:
    """(issue 18) Daemon ``node_id`` of the cluster stopped renewing its lease (still at
    ``epoch``) ``silent_for`` seconds ago; ``printers`` are the ones it drives. Its
    printing jobs are taken back as the watchdog takes back a silent printer's."""

    node_id: str
    epoch: int
    printers: tuple[str, ...]
    silent_for: float


Event = (
    Report
    | TimerFired
    | WatchdogSweep
    | Startup
    | Dispatch
    | FlushProgress
    | StartResult
    | CommandResult
    | SliceResult
    | SpoolsRefreshed
    | UsageReported
    | SharedChanges
    | NodeLost
)
Input = Command | Event
