"""What a decision produces: records for the store to commit, effects to run after.

Records are domain operations, never rows: the store turns each into SQL and refuses a
write whose row is no longer in the state the core saw (``UpdateJob.expect``). Effects
run only after the commit; those that talk to a printer run as tasks whose outcome comes
back to the owner as an input (``inputs.StartResult``, ``inputs.CommandResult``, ...).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import msgspec

from printfarmd.models import Job, JobState

# ---------------------------------------------------------------------- records


class NewEvent(msgspec.Struct, frozen=True):
    """An event to append to the log; the store assigns its ``seq``."""

    type: str
    at: float
    job_id: str | None = None
    printer_id: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    reason: str | None = None
    data: Mapping[str, Any] = msgspec.field(default_factory=dict)


class InsertJob(msgspec.Struct, frozen=True):
    """A new job row (it must not exist)."""

    job: Job


class UpdateJob(msgspec.Struct, frozen=True):
    """Write ``job`` over its row, but only if the stored row is still in ``expect``
    (a transition from ``expect``, or a change within it). A mismatch is an error."""

    job: Job
    expect: JobState


class SaveProgress(msgspec.Struct, frozen=True):
    """Coalesced progress of a printing job: touches only progress/eta/updated_at, and
    only while the row is still ``printing`` (a no-op otherwise)."""

    job_id: str
    progress: float
    eta: float | None
    at: float


class AppendEvent(msgspec.Struct, frozen=True):
    event: NewEvent


class PutPrinter(msgspec.Struct, frozen=True):
    """What the farm remembers about a printer across restarts."""

    printer_id: str
    plate_clear: bool
    maintenance: bool
    at: float


class PutSetting(msgspec.Struct, frozen=True):
    key: str
    value: Any


class PutIdempotency(msgspec.Struct, frozen=True):
    key: str
    digest: str
    job_ids: tuple[str, ...]
    at: float


# (issue 16) upkeep records: spools, usage and its outbox, counters, the maintenance log.


class PutBinding(msgspec.Struct, frozen=True):
    """The spool bound to ``tool`` of ``printer_id`` (``None``: unbound)."""

    printer_id: str
    tool: int
    spool_id: int | None
    at: float


class PutSpool(msgspec.Struct, frozen=True):
    """What the farm knows of a spool (``info`` is a ``upkeep_state.SpoolInfo``)."""

    info: Any


class RecordUsage(msgspec.Struct, frozen=True):
    """One print attempt ended: what it used and cost, stored with the transition that
    ended it. With ``report``, the usage is also queued for Spoolman (an outbox row keyed
    ``key``, sent by ``services/spoolman.py``)."""

    key: str
    job_id: str
    printer_id: str | None
    spool_id: int | None
    status: str
    fraction: float
    grams: float | None
    seconds: float
    filament_cost: float
    energy_kwh: float
    energy_cost: float
    currency: str
    at: float
    report: bool


class MarkUsage(msgspec.Struct, frozen=True):
    """The outbox row ``key`` is settled: ``sent`` (Spoolman has it) or ``dropped``."""

    key: str
    status: str
    at: float
    error: str | None = None


class PutUpkeep(msgspec.Struct, frozen=True):
    """A printer's counters since its last maintenance and why it is due (stored)."""

    printer_id: str
    counters: Any
    due: str | None
    due_at: float | None


class AppendMaintenance(msgspec.Struct, frozen=True):
    """One entry of the maintenance log (who did what, when, and the counters reset)."""

    printer_id: str
    at: float
    by: str
    work: str
    counters: Any
    due: str | None
    recorded_at: float


class FenceNode(msgspec.Struct, frozen=True):
    """(issue 18) Another daemon's lease, still at ``epoch``, has expired: mark it lost
    (ending its epoch) in the commit that takes its jobs over. A mismatch (it renewed,
    or another daemon took it over first) refuses the whole commit."""

    node_id: str
    epoch: int


Record = (
    InsertJob
    | UpdateJob
    | SaveProgress
    | AppendEvent
    | PutPrinter
    | PutSetting
    | PutIdempotency
    | PutBinding
    | PutSpool
    | RecordUsage
    | MarkUsage
    | PutUpkeep
    | AppendMaintenance
    | FenceNode
)
#: The records ``store/upkeep.py`` writes.
UPKEEP_RECORDS = (PutBinding, PutSpool, RecordUsage, MarkUsage, PutUpkeep, AppendMaintenance)

# ---------------------------------------------------------------------- effects


class TimerKind(enum.StrEnum):
    RETRY = "retry"  # key: job id
    AUTOCLEAR = "autoclear"  # key: printer id
    STARTUP = "startup"  # key: "" (the reconciliation deadline)
    WAKE = "wake"  # key: a UTC time (repr): a dispatch rule's window opens (issue 16)


class StartPrint(msgspec.Struct, frozen=True):
    """Hand ``job`` (already committed as printing on ``printer_id``) to the printer."""

    printer_id: str
    job: Job


class StopPrint(msgspec.Struct, frozen=True):
    """Tell ``printer_id`` to stop ``job_id`` (cancel on the printer)."""

    printer_id: str
    job_id: str
    reason: str


class PausePrint(msgspec.Struct, frozen=True):
    printer_id: str
    job_id: str
    token: str = ""


class ResumePrint(msgspec.Struct, frozen=True):
    printer_id: str
    job_id: str
    token: str = ""


class EmergencyStop(msgspec.Struct, frozen=True):
    """Stop ``printer_id`` at once; ``token`` names the command that asked, so its caller
    can learn which printers were reached."""

    printer_id: str
    token: str = ""


class ForgetFile(msgspec.Struct, frozen=True):
    """Remove what the farm uploaded to ``printer_id`` for ``job_id`` (its job ended)."""

    printer_id: str
    job_id: str


class ArmTimer(msgspec.Struct, frozen=True):
    """Fire ``TimerFired(kind, key)`` at monotonic time ``at``."""

    at: float
    kind: TimerKind
    key: str


class Escalate(msgspec.Struct, frozen=True):
    """``job`` failed for good: tell the people (webhook, email, MQTT)."""

    job: Job


class Slice(msgspec.Struct, frozen=True):
    """Run the slicer on ``model`` (relative to the gcodes folder) into ``output``, then
    report ``SliceResult`` for ``job_ids``."""

    job_ids: tuple[str, ...]
    model: str
    output: str


class CapturePhoto(msgspec.Struct, frozen=True):
    printer_id: str
    job_id: str
    at: float


class PublishProgress(msgspec.Struct, frozen=True):
    """An ephemeral progress report for live clients (never stored)."""

    printer_id: str


class StartDriver(msgspec.Struct, frozen=True):
    printer_id: str


class StopDriver(msgspec.Struct, frozen=True):
    printer_id: str


class Log(msgspec.Struct, frozen=True):
    level: str
    message: str
    fields: Mapping[str, Any] = msgspec.field(default_factory=dict)


class Count(msgspec.Struct, frozen=True):
    """A metrics counter: ``name`` += 1 (or observe ``value`` for a histogram)."""

    name: str
    value: float = 1.0


class MaintenanceDue(msgspec.Struct, frozen=True):
    """``printer_id`` crossed a maintenance threshold at ``at``: tell the people once
    (the escalation channels)."""

    printer_id: str
    reason: str
    at: float


class SpoolmanKick(msgspec.Struct, frozen=True):
    """Usage waits for Spoolman, or a binding changed: the Spoolman service has work."""


Effect = (
    StartPrint
    | StopPrint
    | PausePrint
    | ResumePrint
    | EmergencyStop
    | ForgetFile
    | ArmTimer
    | Escalate
    | Slice
    | CapturePhoto
    | PublishProgress
    | StartDriver
    | StopDriver
    | Log
    | Count
    | MaintenanceDue
    | SpoolmanKick
)
