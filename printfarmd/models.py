"""Value types of the domain: jobs, printers, events.

Everything here is immutable (``attrs.frozen``) and free of I/O. States are
``StrEnum`` members so JSON and SQL see stable lowercase strings.
"""

from __future__ import annotations

import enum
import re
import secrets
from typing import Any

import msgspec

JOB_ID_RE = re.compile(r"^[0-9A-F]{16}$")


class JobState(enum.StrEnum):
    CREATED = "created"
    VALIDATED = "validated"
    SLICED = "sliced"
    QUEUED = "queued"
    PRINTING = "printing"
    POST_PROCESS = "post_process"
    READY = "ready"
    SHIPPED = "shipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: States a job never leaves.
TERMINAL_STATES = frozenset({JobState.SHIPPED, JobState.CANCELLED})
#: States in which a job occupies a printer.
ACTIVE_STATES = frozenset({JobState.PRINTING, JobState.POST_PROCESS})


class JobEvent(enum.StrEnum):
    """What happens to a job; the state machine maps (state, event) to a new state."""

    VALIDATE = "validate"
    SLICE = "slice"
    ENQUEUE = "enqueue"
    START = "start"
    FINISH = "finish"
    FAIL = "fail"
    CLEAR = "clear"
    SHIP = "ship"
    RETRY = "retry"
    CANCEL = "cancel"


class PrinterState(enum.StrEnum):
    OFFLINE = "offline"
    IDLE = "idle"
    PRINTING = "printing"
    PAUSED = "paused"
    AWAITING_CLEAR = "awaiting_clear"
    ERROR = "error"
    MAINTENANCE = "maintenance"


def new_job_id() -> str:
    """A fresh job id: 16 uppercase hex characters, the shape Moonraker uses."""
    return secrets.token_hex(8).upper()


class Job(msgspec.Struct, frozen=True):
    """One print (a submission with ``copies = N`` becomes N jobs sharing ``group_id``).

    Times are UTC Unix seconds (floats); ``None`` means "not yet". ``progress`` is a
    percentage 0..100. Queue order is ``(-front, -priority, position)``.
    """

    id: str
    filename: str
    state: JobState = JobState.CREATED
    priority: int = 0
    position: int = 0
    front: int = 0
    copies: int = 1
    copy_index: int = 1
    group_id: str = ""
    name: str = ""
    material: str | None = None
    nozzle_diameter: float | None = None
    required_tags: tuple[str, ...] = ()
    min_bed: tuple[float, float, float] | None = None
    sku: str | None = None
    estimated_time: float | None = None
    printer_id: str | None = None
    retry_count: int = 0
    failed_printers: tuple[str, ...] = ()
    progress: float = 0.0
    eta: float | None = None
    retry_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None
    tracking: str | None = None
    source: str = "api"
    #: Progress (0..100) a retry may resume from, where the printer can resume.
    resume_progress: float = 0.0
    #: (issue 16) Grams of filament the file uses (its slicer's figure), if it says.
    filament_weight: float | None = None
    #: The filament colour the job asks for (``#RRGGBB``, upper-case); ``None``: any.
    #: Matched against the printer's colours (config, AMS) and its bound spools.
    colour: str | None = None
    #: (issue 16) Not started before this UTC time (a scheduled job).
    not_before: float | None = None
    #: (issue 16) The Spoolman spool the current (or last) attempt prints from.
    spool_id: int | None = None

    @property
    def sort_key(self) -> tuple[int, int, int]:
        """Dispatch order: jumped jobs first, then higher priority, then FIFO."""
        return (-self.front, -self.priority, self.position)


class Capabilities(msgspec.Struct, frozen=True):
    """What a printer can print: loaded materials (and their colours), nozzle, bed size
    (mm), tags."""

    materials: tuple[str, ...] = ()
    nozzle_diameter: float = 0.4
    bed_size: tuple[float, float, float] = (220.0, 220.0, 250.0)
    tags: tuple[str, ...] = ()
    #: The colour (``#RRGGBB``) of each loaded material, index-aligned with
    #: ``materials``; empty when the printer does not say.
    colours: tuple[str, ...] = ()


class Printer(msgspec.Struct, frozen=True):
    """A printer's live view as the scheduler sees it."""

    id: str
    name: str
    driver: str
    capabilities: Capabilities
    state: PrinterState = PrinterState.OFFLINE
    plate_clear: bool = True
    current_job: str | None = None
    progress: float = 0.0
    message: str = ""
    maintenance: bool = False
    auto_clear: bool = False
    updated_at: float = 0.0


class Event(msgspec.Struct, frozen=True):
    """One row of the append-only event log. ``seq`` is assigned by the store."""

    seq: int
    type: str
    at: float
    job_id: str | None = None
    printer_id: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    reason: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
