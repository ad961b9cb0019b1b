"""Every REST request body and the domain response objects, declared once (the contract:
``api/contract.py``). The handlers parse and serialize through these; ``api/openapi.py``
documents them from the same declarations."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from printfarmd.api.contract import (
    Boolean,
    Integer,
    Limits,
    Number,
    NumberList,
    Out,
    Prop,
    Shape,
    Spec,
    Text,
    TextList,
    Time,
    field,
    shape,
)
from printfarmd.core.routing import normalize_colour
from printfarmd.errors import BadRequest, ValidationFailed
from printfarmd.models import JobState, PrinterState

#: What ``JOB_ID_RE`` accepts; any other id is answered 404 (path) or 422 (body).
JOB_ID_PATTERN = "^[0-9A-F]{16}$"
_SEGMENT = "[A-Za-z0-9_-](?:[A-Za-z0-9_.-]{0,253}[A-Za-z0-9_-])?"
#: File names: the portable subset of what ``services.files.check_relative_name`` accepts
#: (it also takes other printable Unicode; it refuses control characters, backslashes,
#: absolute paths, dot segments, segments ending in a dot or space, percent escapes).
FILE_NAME = {
    "type": "string",
    "maxLength": 1024,
    "pattern": f"^(?:{_SEGMENT}/)*{_SEGMENT}$",
    "description": "path relative to the gcodes folder, e.g. parts/benchy.gcode",
}
MAX_COPIES = 100


def _priority(limits: Limits) -> int:
    return limits.max_priority


def _neg_priority(limits: Limits) -> int:
    return -limits.max_priority


PRIORITY = Integer(_neg_priority, _priority)
#: A string with something in it besides white space (and no NUL).
FILLED = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
#: Largest spool id accepted (Spoolman's ids are SQL integers).
MAX_SPOOL_ID = 2**31 - 1


class Colour(Spec, frozen=True):
    """A filament colour, ``#RRGGBB`` (the ``#`` optional, any case), read as
    ``#RRGGBB`` upper-case."""

    def check(self, key: str, value: Any, limits: Limits) -> Any:
        if not isinstance(value, str):
            raise BadRequest(f"{key}: expected a string")
        colour = normalize_colour(value) if len(value.strip().lstrip("#")) == 6 else None
        if colour is None:
            raise ValidationFailed(f"{key}: expected #RRGGBB, e.g. #FF6600", field=key)
        return colour

    def schema(self, limits: Limits) -> dict[str, Any]:
        return {"type": "string", "pattern": "^\\s*#?[0-9A-Fa-f]{6}\\s*$"}

    def example(self, limits: Limits) -> Any:
        return "#FF6600"


# ---------------------------------------------------------------- request bodies


@shape
class JobCreate(Shape, frozen=True, kw_only=True):
    """``POST /api/jobs``."""

    # Length and shape are judged by the one containment check (services.files).
    filename: str = field(Text(65536, doc=FILE_NAME, sample="benchy_pla.gcode"), required=True)
    name: str = field(Text(200), default="", blank_is_missing=True)
    priority: int = field(PRIORITY, default=0, description="higher prints first")
    copies: int = field(Integer(1, MAX_COPIES), default=1)
    material: str | None = field(Text(32, upper=True, sample="PLA"), blank_is_missing=True)
    nozzle_diameter: float | None = field(Number(0.05, 5.0))
    required_tags: tuple[str, ...] = field(TextList(20, 64), default=())
    min_bed: tuple[float, ...] | None = field(NumberList(0.0, 10_000.0, exact=3))
    sku: str | None = field(Text(100))
    estimated_time: float | None = field(Number(0.0, 30 * 86400.0))
    colour: str | None = field(
        Colour(),
        description="only a printer with a filament of this colour loaded (configured, "
        "reported by an AMS, or its bound spool's), of the job's material if it names one",
    )
    not_before: float | None = field(Time(), description="do not start before this UTC time")


@shape
class JobCancel(Shape, frozen=True, kw_only=True):
    """``POST /api/jobs/{job_id}/cancel`` (an empty body is fine)."""

    reason: str = field(Text(500), default="cancelled by operator", blank_is_missing=True)


@shape
class JobRelease(Shape, frozen=True, kw_only=True):
    """``POST /api/jobs/{job_id}/release``."""

    printerId: str = field(Text(64, min_len=1), required=True, blank_is_missing=True)


@shape
class JobShip(Shape, frozen=True, kw_only=True):
    """``POST /api/jobs/{job_id}/ship``."""

    tracking: str = field(Text(200), required=True)


@shape
class Maintenance(Shape, frozen=True, kw_only=True):
    """``POST /api/printers/{printer_id}/maintenance``: either ``enabled`` (maintenance
    mode on or off), or ``by`` and ``work`` (and ``at``: work done, recorded in the log;
    the counters reset and the printer is back in service)."""

    #: One form or the other (the handler refuses a mix or neither, 400).
    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {
                "required": ["enabled"],
                "properties": {
                    "enabled": {"type": "boolean"},
                    "by": {"type": "null"},
                    "work": {"type": "null"},
                    "at": {"type": "null"},
                },
            },
            {
                "required": ["by", "work"],
                "properties": {
                    "enabled": {"type": "null"},
                    "by": {"type": "string"},
                    "work": {"type": "string"},
                },
            },
        ]
    }

    enabled: bool | None = field(Boolean(), description="maintenance mode on or off")
    by: str | None = field(Text(100, pattern=FILLED, mismatch="must not be blank"))
    work: str | None = field(Text(2000, pattern=FILLED, mismatch="must not be blank"))
    at: float | None = field(Time(), description="when the work was done (default: now)")


@shape
class SpoolBind(Shape, frozen=True, kw_only=True):
    """``PUT /api/printers/{printer_id}/spool``: bind a Spoolman spool to a tool
    (``spool_id`` null: unbind)."""

    spool_id: int | None = field(
        Integer(0, MAX_SPOOL_ID),
        required=True,
        null_is_value=True,
        missing="required (a Spoolman spool id, or null to unbind)",
    )
    tool: int = field(Integer(0, 63), default=0)


@shape
class Reprioritize(Shape, frozen=True, kw_only=True):
    """``POST /api/orchestrator/reprioritize``."""

    jobId: str = field(
        Text(
            64,
            pattern=JOB_ID_PATTERN,
            mismatch="not a job id (16 uppercase hex characters)",
            sample="0123456789ABCDEF",
        ),
        required=True,
        blank_is_missing=True,
    )
    priority: int = field(PRIORITY, required=True)


@shape
class OrchestratorConfig(Shape, frozen=True, kw_only=True):
    """``PUT /api/orchestrator/config``: only the fields given change."""

    max_retries: int | None = field(Integer(0, 100), no_null=True)
    retry_backoff: tuple[float, ...] | None = field(
        NumberList(0.0, 7 * 86400.0, max_items=20), no_null=True
    )
    cooldown_seconds: float | None = field(Number(0.0, 86400.0), no_null=True)


#: Request shapes by their component name in the OpenAPI document.
REQUESTS: dict[str, type[Any]] = {
    "JobCreate": JobCreate,
    "JobCancel": JobCancel,
    "JobRelease": JobRelease,
    "JobShip": JobShip,
    "Maintenance": Maintenance,
    "SpoolBind": SpoolBind,
    "Reprioritize": Reprioritize,
    "OrchestratorConfig": OrchestratorConfig,
}


# ---------------------------------------------------------------- response objects


def iso(ts: float | None) -> str | None:
    """UTC ISO-8601 with milliseconds and ``Z``, or ``None``."""
    if ts is None:
        return None
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}
_TS = {"type": ["string", "null"], "format": "date-time"}
_STRINGS = {"type": "array", "items": {"type": "string"}}

#: What an attempt (or a job's attempts so far) cost (issue 16; ``api/upkeep_json.py``).
COST = {
    "type": "object",
    "required": ["currency", "filament", "energy", "total"],
    "properties": {
        "currency": {"type": "string"},
        "filament": {"type": "number", "minimum": 0},
        "energy": {"type": "number", "minimum": 0},
        "total": {"type": "number", "minimum": 0},
        "filament_g": {"type": "number", "minimum": 0},
        "energy_kwh": {"type": "number", "minimum": 0},
        "attempts": {"type": "integer", "minimum": 0},
        "spool_id": {"type": ["integer", "null"]},
        "spoolman": {
            "type": "string",
            "enum": ["none", "pending", "sent", "dropped"],
            "description": "the attempt's usage report to Spoolman",
        },
    },
}
#: A printer's use since its last recorded maintenance.
COUNTERS = {
    "type": "object",
    "required": ["print_hours", "prints", "filament_g"],
    "properties": {
        "print_hours": {"type": "number", "minimum": 0},
        "prints": {"type": "integer", "minimum": 0},
        "filament_g": {"type": "number", "minimum": 0},
        "since": _NULLABLE_NUM,
    },
}
#: One tool of a printer and its bound spool.
TOOL = {
    "type": "object",
    "required": ["tool", "spool_id"],
    "properties": {
        "tool": {"type": "integer", "minimum": 0},
        "spool_id": {"type": ["integer", "null"]},
        "known": {"type": "boolean", "description": "read from Spoolman at least once"},
        "name": _NULLABLE_STR,
        "material": _NULLABLE_STR,
        "colours": _STRINGS,
        "remaining_g": {
            "type": ["number", "null"],
            "description": "as Spoolman last said, minus the usage not yet reported",
        },
        "owed_g": {"type": "number", "minimum": 0},
        "price_per_kg": _NULLABLE_NUM,
        "archived": {"type": "boolean"},
        "missing": {"type": "boolean", "description": "Spoolman says it does not exist"},
        "read_at": _TS,
    },
}
_COLOUR_OUT = {"type": ["string", "null"], "pattern": "^#[0-9A-F]{6}$"}


def _p(name: str, schema: dict[str, Any], read: Any, required: bool = False) -> Prop:
    return Prop(name, schema, read, required)


JOB = Out(
    "Job",
    [
        _p("id", {"type": "string", "pattern": JOB_ID_PATTERN}, lambda j: j.id, True),
        _p("filename", _STR, lambda j: j.filename, True),
        _p("name", _STR, lambda j: j.name),
        _p(
            "state",
            {"type": "string", "enum": [s.value for s in JobState]},
            lambda j: j.state.value,
            True,
        ),
        _p("priority", _INT, lambda j: j.priority, True),
        _p("position", _INT, lambda j: j.position),
        _p("jumped", {"type": "boolean"}, lambda j: j.front > 0),
        _p("copies", {"type": "integer", "minimum": 1}, lambda j: j.copies, True),
        _p("copy_index", {"type": "integer", "minimum": 1}, lambda j: j.copy_index),
        _p("group_id", _STR, lambda j: j.group_id),
        _p("material", _NULLABLE_STR, lambda j: j.material),
        _p("colour", _COLOUR_OUT, lambda j: j.colour),
        _p("nozzle_diameter", _NULLABLE_NUM, lambda j: j.nozzle_diameter),
        _p("required_tags", _STRINGS, lambda j: list(j.required_tags)),
        _p(
            "min_bed",
            {"type": ["array", "null"], "items": {"type": "number"}},
            lambda j: list(j.min_bed) if j.min_bed else None,
        ),
        _p("sku", _NULLABLE_STR, lambda j: j.sku),
        _p("estimated_time", _NULLABLE_NUM, lambda j: j.estimated_time),
        _p("printer_id", _NULLABLE_STR, lambda j: j.printer_id),
        _p("retry_count", _INT, lambda j: j.retry_count),
        _p("failed_printers", _STRINGS, lambda j: list(j.failed_printers)),
        _p(
            "progress",
            {"type": "number", "minimum": 0, "maximum": 100},
            lambda j: round(j.progress, 2),
            True,
        ),
        _p("eta", _TS, lambda j: iso(j.eta)),
        _p("retry_at", _TS, lambda j: iso(j.retry_at)),
        _p("created_at", _TS, lambda j: iso(j.created_at), True),
        _p("updated_at", _TS, lambda j: iso(j.updated_at)),
        _p("queued_at", _TS, lambda j: iso(j.queued_at)),
        _p("started_at", _TS, lambda j: iso(j.started_at)),
        _p("finished_at", _TS, lambda j: iso(j.finished_at)),
        _p("last_error", _NULLABLE_STR, lambda j: j.last_error),
        _p("tracking", _NULLABLE_STR, lambda j: j.tracking),
        _p("source", _STR, lambda j: j.source),
        _p(
            "filament_weight",
            {**_NULLABLE_NUM, "description": "grams, from the file"},
            lambda j: j.filament_weight,
        ),
        _p("not_before", _TS, lambda j: iso(j.not_before)),
        _p(
            "spool_id",
            {"type": ["integer", "null"], "description": "the spool its attempt prints from"},
            lambda j: j.spool_id,
        ),
        # Added by the job views (api/upkeep.py jobs_extra), not by the job alone:
        _p("cost", {**COST, "description": "over the attempts so far"}, None),
        _p(
            "waiting",
            {**_NULLABLE_STR, "description": "why a queued job has not gone to a printer yet"},
            None,
        ),
    ],
)

#: A printer with its estimate: ``PRINTER.dump((printer, eta))``.
PRINTER = Out(
    "Printer",
    [
        _p("id", _STR, lambda v: v[0].id, True),
        _p("name", _STR, lambda v: v[0].name, True),
        _p("driver", _STR, lambda v: v[0].driver),
        _p(
            "state",
            {"type": "string", "enum": [s.value for s in PrinterState]},
            lambda v: v[0].state.value,
            True,
        ),
        _p("plate_clear", {"type": "boolean"}, lambda v: v[0].plate_clear, True),
        _p("current_job", _NULLABLE_STR, lambda v: v[0].current_job),
        _p("progress", {"type": "number"}, lambda v: round(v[0].progress, 2)),
        _p("eta", _TS, lambda v: iso(v[1])),
        _p("message", _STR, lambda v: v[0].message),
        _p("maintenance", {"type": "boolean"}, lambda v: v[0].maintenance),
        _p("auto_clear", {"type": "boolean"}, lambda v: v[0].auto_clear),
        _p("materials", _STRINGS, lambda v: list(v[0].capabilities.materials)),
        _p(
            "colours",
            {**_STRINGS, "description": "#RRGGBB of each material (index-aligned); empty: unknown"},
            lambda v: list(v[0].capabilities.colours),
        ),
        _p("nozzle_diameter", {"type": "number"}, lambda v: v[0].capabilities.nozzle_diameter),
        _p(
            "bed_size",
            {"type": "array", "items": {"type": "number"}},
            lambda v: list(v[0].capabilities.bed_size),
        ),
        _p("tags", _STRINGS, lambda v: list(v[0].capabilities.tags)),
        _p("updated_at", _TS, lambda v: iso(v[0].updated_at) if v[0].updated_at else None),
        # Added by the printer views (api/upkeep.py printer_upkeep):
        _p("spools", {"type": "array", "items": TOOL}, None),
        _p("power_group", _STR, None),
        _p("counters", COUNTERS, None),
        _p("maintenance_due", {**_NULLABLE_STR, "description": "the threshold crossed"}, None),
        _p("maintenance_due_at", _TS, None),
        _p(
            "waiting",
            {**_NULLABLE_STR, "description": "why an idle printer starts nothing"},
            None,
        ),
        # Added for a printer another daemon of the cluster drives (issue 18):
        _p("node", {**_STR, "description": "the daemon of the cluster that drives it"}, None),
    ],
)

EVENT = Out(
    "Event",
    [
        _p("seq", _INT, lambda e: e.seq, True),
        _p("type", _STR, lambda e: e.type, True),
        _p("at", _TS, lambda e: iso(e.at), True),
        _p("job_id", _NULLABLE_STR, lambda e: e.job_id),
        _p("printer_id", _NULLABLE_STR, lambda e: e.printer_id),
        _p("from_state", _NULLABLE_STR, lambda e: e.from_state),
        _p("to_state", _NULLABLE_STR, lambda e: e.to_state),
        _p("reason", _NULLABLE_STR, lambda e: e.reason),
        _p("data", {"type": "object"}, lambda e: e.data),
    ],
)


def _next_attempt(d: Any) -> str | None:
    from printfarmd.core.notify import DeliveryStatus

    return iso(d.next_attempt_at) if d.status is DeliveryStatus.PENDING else None


NOTIFICATION = Out(
    "Notification",
    [
        _p(
            "id",
            {"type": "string", "description": "also sent as X-Printfarmd-Delivery"},
            lambda d: d.id,
            True,
        ),
        _p(
            "channel",
            {"type": "string", "enum": ["webhook", "email", "mqtt"]},
            lambda d: d.channel.value,
            True,
        ),
        _p(
            "target",
            {"type": "string", "description": "where it goes, without secrets"},
            lambda d: d.target,
            True,
        ),
        _p("job_id", _NULLABLE_STR, lambda d: d.job_id),
        _p("event", _STR, lambda d: d.event),
        _p(
            "status",
            {"type": "string", "enum": ["pending", "delivered", "failed"]},
            lambda d: d.status.value,
            True,
        ),
        _p("attempts", {"type": "integer", "minimum": 0}, lambda d: d.attempts, True),
        _p("last_error", _NULLABLE_STR, lambda d: d.last_error),
        _p("created_at", _TS, lambda d: iso(d.created_at), True),
        _p("updated_at", _TS, lambda d: iso(d.updated_at)),
        _p("delivered_at", _TS, lambda d: iso(d.delivered_at)),
        _p("next_attempt_at", _TS, _next_attempt),
    ],
)

#: Response objects by their component name in the OpenAPI document.
RESPONSES: dict[str, Out] = {o.name: o for o in (JOB, PRINTER, EVENT, NOTIFICATION)}
