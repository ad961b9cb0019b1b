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

import msgspec
import orjson

from printfarmd.config import PrinterConfig
from printfarmd.core.farm.outputs import TimerKind
from printfarmd.drivers.base import DriverEvent
from printfarmd.models import Job


class JobRequest(msgspec.Struct, frozen=True):
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
        fields = msgspec.structs.asdict(self)
        for added_later in ("colour", "not_before"):  # keys stored before still match
            if fields[added_later] is None:
                del fields[added_later]
        return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


class FileFacts(msgspec.Struct, frozen=True):
    """What the file says (read by the edge): material, nozzle, estimate; ``model`` for an
    STL/3MF waiting for the slicer (its metadata comes after slicing)."""

    material: str | None = None
    nozzle_diameter: float | None = None
    estimated_time: float | None = None
    model: bool = False
    #: (issue 16) Grams of filament the file uses.
    filament_weight: float | None = None


# ---------------------------------------------------------------------- commands


class CreateJobs(msgspec.Struct, frozen=True):
    request: JobRequest
    facts: FileFacts
    idempotency_key: str | None = None


class Cancel(msgspec.Struct, frozen=True):
    """``snapshot``: the job as stored, for a job not in memory (finished)."""

    job_id: str
    reason: str = "cancelled by operator"
    snapshot: Job | None = None


class Release(msgspec.Struct, frozen=True):
    job_id: str
    printer_id: str
    snapshot: Job | None = None


class Reprioritize(msgspec.Struct, frozen=True):
    job_id: str
    priority: int
    snapshot: Job | None = None


class Jump(msgspec.Struct, frozen=True):
    job_id: str
    snapshot: Job | None = None


class Ship(msgspec.Struct, frozen=True):
    job_id: str
    tracking: str
    snapshot: Job | None = None


class SetPaused(msgspec.Struct, frozen=True):
    paused: bool


class UpdateSettings(msgspec.Struct, frozen=True):
    changes: Mapping[str, Any]


class ClearPlate(msgspec.Struct, frozen=True):
    printer_id: str
    source: str = "operator"


class SetMaintenance(msgspec.Struct, frozen=True):
    printer_id: str
    enabled: bool


class QueueFile(msgspec.Struct, frozen=True):
    """A new queued job for ``filename`` (in ``SetQueue``)."""

    filename: str
    facts: FileFacts
    source: str = "moonraker"


class SetQueue(msgspec.Struct, frozen=True):
    """Make the head of the queue ``items`` in this order: job ids of queued jobs (kept,
    with their history) and ``QueueFile`` entries (new jobs). With ``cancel_unlisted``,
    queued jobs not listed are cancelled (the listed order becomes the whole queue).
    With ``ordered`` False the new jobs are simply appended (no reordering)."""

    items: tuple[str | QueueFile, ...]
    cancel_unlisted: bool = False
    ordered: bool = True
    reason: str = "removed from the queue"


class CancelQueued(msgspec.Struct, frozen=True):
    """Cancel those of ``job_ids`` that are queued; the reply lists the ids cancelled."""

    job_ids: tuple[str, ...]
    reason: str


class PauseJob(msgspec.Struct, frozen=True):
    """Ask the printer of a printing job to pause it (``token``: see ``EmergencyStop``)."""

    job_id: str
    token: str = ""


class ResumeJob(msgspec.Struct, frozen=True):
    job_id: str
    token: str = ""


class EmergencyStopFarm(msgspec.Struct, frozen=True):
    """Stop every printing printer at once, pause dispatch, fail their jobs. ``token``
    is passed on to the printers' emergency-stop effects (see ``outputs.EmergencyStop``)."""

    client: str
    token: str = ""


class AddPrinter(msgspec.Struct, frozen=True):
    config: PrinterConfig
    plate_clear: bool = True
    maintenance: bool = False
    #: (issue 16) What the store remembers: its spools, its counters and why it is due.
    spools: tuple[int | None, ...] = ()
    counters: Any = None
    due: str | None = None
    due_at: float | None = None


class RemovePrinter(msgspec.Struct, frozen=True):
    printer_id: str


class UpdatePrinter(msgspec.Struct, frozen=True):
    """Capabilities, name or auto_clear changed; the driver stays."""

    config: PrinterConfig


class Ping(msgspec.Struct, frozen=True):
    """Answered at once: shows the owner is taking inputs (the systemd watchdog)."""


class BindSpool(msgspec.Struct, frozen=True):
    """(issue 16) Bind ``spool_id`` (``None``: unbind) to ``tool`` of ``printer_id``;
    ``info``: the spool as Spoolman has it (read by the edge), ``None`` if not reached."""

    printer_id: str
    tool: int
    spool_id: int | None
    info: Any = None


class RecordMaintenance(msgspec.Struct, frozen=True):
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


class Report(msgspec.Struct, frozen=True):
    """What a printer's driver said."""

    event: DriverEvent


class TimerFired(msgspec.Struct, frozen=True):
    kind: TimerKind
    key: str


class WatchdogSweep(msgspec.Struct, frozen=True):
    stale_threshold: float


class Startup(msgspec.Struct, frozen=True):
    """The owner has restored the state: re-arm timers, carry on half-done pipelines."""


class Dispatch(msgspec.Struct, frozen=True):
    """Give queued jobs to idle printers."""


class FlushProgress(msgspec.Struct, frozen=True):
    """Store the printers' latest progress for their jobs (coalesced)."""


class StartOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    FILE_ESCAPED = "file_escaped"


class StartResult(msgspec.Struct, frozen=True):
    printer_id: str
    job_id: str
    outcome: StartOutcome
    message: str = ""


class CommandResult(msgspec.Struct, frozen=True):
    """The outcome of a stop/pause/resume/emergency stop sent to a printer."""

    printer_id: str
    job_id: str | None
    command: str
    ok: bool
    message: str = ""


class SliceResult(msgspec.Struct, frozen=True):
    job_ids: tuple[str, ...]
    output: str
    facts: FileFacts
    error: str | None = None


class SpoolsRefreshed(msgspec.Struct, frozen=True):
    """(issue 16) What Spoolman says of spools now (``upkeep_state.SpoolInfo`` values),
    and the ids it answered 404 for."""

    spools: tuple[Any, ...]
    missing: tuple[int, ...] = ()


class UsageReported(msgspec.Struct, frozen=True):
    """(issue 16) The usage report ``key`` is settled: Spoolman applied it (``applied``),
    or it was dropped (``error`` says why)."""

    key: str
    applied: bool
    error: str | None = None


class SharedChanges(msgspec.Struct, frozen=True):
    """(issue 18) What the other daemons of a cluster committed, read back from the
    database: the ``jobs`` as stored now, each with ``seqs[id]``, the newest event of the
    job read before the row (the owner drops a row not newer than what it has); the
    ``events`` (published once applied); the farm's ``settings`` and ``paused`` flag when
    another daemon changed them. ``resync``: every job this daemon holds, read again after
    it lost its lease (all of them apply), and ``epoch``, the lease it rejoined under (the
    owner writes under it once this is applied)."""

    jobs: tuple[Job, ...] = ()
    seqs: Mapping[str, int] = msgspec.field(default_factory=dict)
    events: tuple[Any, ...] = ()
    settings: Any = None
    paused: bool | None = None
    resync: bool = False
    epoch: int = 0
    #: Who asked for each emergency stop another daemon received (and did not relay):
    #: this daemon stops its printers too.
    estops: tuple[str, ...] = ()


class NodeLost(msgspec.Struct, frozen=True):
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
