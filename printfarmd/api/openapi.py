"""The OpenAPI 3.1 document of the REST API, served at ``/api/openapi.json``.

The request bodies and the domain response objects are the contract's (``api/shapes.py``,
``api/contract.py``): declared once, parsed and serialized by the handlers through the
same declarations. This module adds the operations (``PATHS``: summary, parameters,
responses; an operation names its body with ``body("Shape")``) and the aggregate
responses (``STATIC_SCHEMAS``). ``tests/test_api.py`` compares the paths and methods with
the app's routes both ways; ``tests/test_contract.py`` checks the handlers against the
document field by field.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from printfarmd import __version__
from printfarmd.api.context import services
from printfarmd.api.contract import MAX_UNIX_TIME, Limits, request_schema
from printfarmd.api.respond import json_response
from printfarmd.api.shapes import (
    COST,
    COUNTERS,
    FILE_NAME,
    JOB_ID_PATTERN,
    REQUESTS,
    RESPONSES,
    TOOL,
)
from printfarmd.config import SchedulerConfig
from printfarmd.models import JobState
from printfarmd.store.history import STATUSES as HISTORY_STATUSES

bp = Blueprint("openapi", __name__)

_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}
_TS = {"type": ["string", "null"], "format": "date-time"}
_JOB_ID_PATTERN = JOB_ID_PATTERN
#: Largest page offset the list endpoints accept (SQLite's OFFSET is a 64-bit integer).
MAX_OFFSET = 10**9
_OFFSET = {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}
_FILE_NAME = FILE_NAME


#: ``Idempotency-Key``: 1 to 200 printable Latin-1 characters (headers are Latin-1),
#: no space at either end (HTTP strips it).
_KEY_CHAR = "!-~\\u00a1-\\u00ac\\u00ae-\\u00ff"
_IDEMPOTENCY_KEY = f"^[{_KEY_CHAR}](?:[ {_KEY_CHAR}]{{0,198}}[{_KEY_CHAR}])?$"


#: Event sequence numbers are SQLite integers.
MAX_SEQ = 2**63 - 1
#: Time filters (history, stats) in Unix seconds; ISO-8601 is accepted too (docs/api.md).
_UNIX_TIME = {"type": "number", "minimum": 0, "maximum": MAX_UNIX_TIME}
_HISTORY_STATUS = "|".join(HISTORY_STATUSES)
_HISTORY_STATUS_LIST = f"^(({_HISTORY_STATUS})(,({_HISTORY_STATUS}))*)?$"
_STATE = "|".join(s.value for s in JobState)
#: ``status`` filters: states separated by commas (the handler also takes any case).
_STATE_LIST = f"^(({_STATE})(,({_STATE}))*)?$"
#: The priority bound the document states; the served copy states the configured one.
DEFAULT_MAX_PRIORITY = SchedulerConfig().max_priority
_DEFAULT_LIMITS = Limits(DEFAULT_MAX_PRIORITY)

STATIC_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                    "error_id": {"type": "string"},
                    "retry_after": {"type": "integer"},
                },
            }
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs"],
        "properties": {
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
            "total": {"type": "integer"},
        },
    },
    "QueueStatus": {
        "type": "object",
        "required": ["paused", "queue_depth", "jobs_by_state", "printers_by_state"],
        "properties": {
            "degraded": {"type": ["string", "null"]},
            "paused": {"type": "boolean"},
            "queue_depth": {"type": "integer"},
            "printing": {"type": "integer"},
            "dispatching": {"type": "integer"},
            "awaiting_clear": {"type": "integer"},
            "retry_waiting": {"type": "integer"},
            "oldest_queued_at": _TS,
            "jobs_by_state": {"type": "object", "additionalProperties": {"type": "integer"}},
            "printers_by_state": {"type": "object", "additionalProperties": {"type": "integer"}},
            "last_event_seq": {"type": "integer"},
            "nodes": {
                "description": "(issue 18) The daemons sharing the farm, in a cluster",
                "type": "array",
                "items": {"$ref": "#/components/schemas/Node"},
            },
        },
    },
    "Node": {
        "type": "object",
        "required": ["id", "epoch", "alive", "printers"],
        "properties": {
            "id": {"type": "string"},
            "epoch": {"type": "integer"},
            "alive": {"type": "boolean"},
            "lease_left": {"type": "number"},
            "printers": {"type": "array", "items": {"type": "string"}},
        },
    },
    "HistoryEntry": {
        "type": "object",
        "required": ["id", "job_id", "filename", "status", "started_at", "duration", "deleted"],
        "properties": {
            "id": {"type": "string", "description": "the attempt (Moonraker's history uid)"},
            "job_id": {"type": "string", "pattern": _JOB_ID_PATTERN},
            "printer_id": _NULLABLE_STR,
            "filename": {"type": "string"},
            "sku": _NULLABLE_STR,
            "status": {"type": "string", "enum": list(HISTORY_STATUSES)},
            "started_at": _TS,
            "ended_at": _TS,
            "duration": {"type": "number", "minimum": 0, "description": "seconds"},
            "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
            "reason": _NULLABLE_STR,
            "filament_used_mm": {"type": "number", "minimum": 0},
            "filament_used_g": {"type": "number", "minimum": 0},
            "deleted": {
                "type": "boolean",
                "description": "a Moonraker client deleted it from its history view",
            },
        },
    },
    "HistoryList": {
        "type": "object",
        "required": ["entries", "total", "offset", "limit"],
        "properties": {
            "entries": {"type": "array", "items": {"$ref": "#/components/schemas/HistoryEntry"}},
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
        },
    },
    "StatsGroup": {
        "type": "object",
        "required": ["attempts", "success_rate", "print_hours", "filament_m", "filament_g"],
        "properties": {
            "printer_id": _NULLABLE_STR,
            "filename": {"type": "string"},
            "attempts": {"type": "integer", "minimum": 0},
            **{s: {"type": "integer", "minimum": 0} for s in HISTORY_STATUSES},
            "success_rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "print_hours": {"type": "number", "minimum": 0},
            "filament_m": {"type": "number", "minimum": 0},
            "filament_g": {"type": "number", "minimum": 0},
            "mtbf_hours": {"type": ["number", "null"], "minimum": 0},
            "last_failure": {"type": ["object", "null"]},
            "outcomes_by_day": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["date"],
                    "properties": {
                        "date": {"type": "string", "format": "date"},
                        # attempts that ended that day, by how they ended (api/stats.py)
                        **{
                            s: {"type": "integer", "minimum": 0}
                            for s in ("completed", "cancelled", "error", "interrupted")
                        },
                    },
                },
            },
        },
    },
    "Stats": {
        "type": "object",
        "required": ["farm", "printers", "files", "days"],
        "properties": {
            "since": _TS,
            "before": _TS,
            "days": {"type": "integer"},
            "farm": {"$ref": "#/components/schemas/StatsGroup"},
            "printers": {"type": "array", "items": {"$ref": "#/components/schemas/StatsGroup"}},
            "files": {"type": "array", "items": {"$ref": "#/components/schemas/StatsGroup"}},
        },
    },
}


# Issue 16 (docs/upkeep.md): cost in the history and the statistics; spools; the
# maintenance log.
STATIC_SCHEMAS["HistoryEntry"]["properties"]["cost"] = {"anyOf": [COST, {"type": "null"}]}
STATIC_SCHEMAS["StatsGroup"]["properties"]["cost"] = COST | {
    "required": ["filament", "energy", "total"]
}
STATIC_SCHEMAS["Stats"]["properties"]["currency"] = {"type": "string"}
STATIC_SCHEMAS.update(
    {
        "SpoolList": {
            "type": "object",
            "required": ["spoolman", "printers", "pending_reports"],
            "properties": {
                "spoolman": {
                    "type": "object",
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "url": _NULLABLE_STR,
                        "connected": {"type": "boolean"},
                    },
                },
                "printers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["printer_id", "tools"],
                        "properties": {
                            "printer_id": {"type": "string"},
                            "tools": {"type": "array", "items": TOOL},
                        },
                    },
                },
                "pending_reports": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "spool_id": {"type": "integer"},
                            "grams": {"type": "number"},
                            "since": _TS,
                            "attempts": {"type": "integer", "minimum": 0},
                            "last_error": _NULLABLE_STR,
                        },
                    },
                },
            },
        },
        "MaintenanceLog": {
            "type": "object",
            "required": ["thresholds", "printers", "log", "total"],
            "properties": {
                "thresholds": {
                    "type": "object",
                    "properties": {
                        "every_hours": _NULLABLE_NUM,
                        "every_prints": {"type": ["integer", "null"]},
                        "every_grams": _NULLABLE_NUM,
                    },
                },
                "printers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["printer_id", "maintenance", "counters"],
                        "properties": {
                            "printer_id": {"type": "string"},
                            "maintenance": {"type": "boolean"},
                            "counters": COUNTERS,
                            "due": _NULLABLE_STR,
                            "due_at": _TS,
                        },
                    },
                },
                "log": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "printer_id", "at", "by", "work", "counters"],
                        "properties": {
                            "id": {"type": "integer"},
                            "printer_id": {"type": "string"},
                            "at": _TS,
                            "by": {"type": "string"},
                            "work": {"type": "string"},
                            "counters": COUNTERS,
                            "due": _NULLABLE_STR,
                            "recorded_at": _TS,
                        },
                    },
                },
                "total": {"type": "integer", "minimum": 0},
            },
        },
    }
)


def schemas(limits: Limits = _DEFAULT_LIMITS) -> dict[str, Any]:
    """Every component schema: the contract's request and response shapes (``shapes``)
    with ``limits``, and the aggregate responses written here."""
    return {
        **{name: out.schema() for name, out in RESPONSES.items()},
        **{name: request_schema(shape, limits) for name, shape in REQUESTS.items()},
        **STATIC_SCHEMAS,
    }


SCHEMAS: dict[str, Any] = schemas()


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: str, status: str = "200", description: str = "OK") -> dict[str, Any]:
    return {
        status: {
            "description": description,
            "content": {"application/json": {"schema": _ref(schema)}},
        }
    }


_ERRORS = {
    code: {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
    for code, text in {
        "400": "malformed request (bad JSON, wrong type, unknown field)",
        "401": "missing or wrong X-Api-Key",
        "404": "unknown job or printer",
        "409": "not allowed in the current state",
        "413": "request body too large",
        "422": "a value is out of range or the file cannot be printed",
        "503": "storage busy: nothing stored, retry",
        "507": "disk full: nothing stored",
    }.items()
}


#: A printer that could not carry out a command (pause, resume).
_PRINTER_ERROR = {
    "502": {
        "description": "the printer could not do it (unreachable, refused, no answer)",
        "content": {"application/json": {"schema": _ref("Error")}},
    }
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_ERRORS}, **extra}


def body(shape: str, *, required: bool = True) -> dict[str, Any]:
    """The ``requestBody`` of an operation taking the contract's request shape ``shape``
    (its name in ``shapes.REQUESTS``)."""
    assert shape in REQUESTS, shape
    return {"required": required, "content": {"application/json": {"schema": _ref(shape)}}}


def operation(
    summary: str, ok: dict[str, Any], *, request: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One documented operation: ``ok`` (its success responses, e.g. ``_ok("Job")``),
    the canonical error responses, and ``request`` (a request shape's name) as its body."""
    if request is not None:
        extra["requestBody"] = body(request, required=extra.pop("body_required", True))
    return _op(summary, ok, **extra)


_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": _JOB_ID_PATTERN},
}
_FORBIDDEN = {
    "description": "not allowed from here (a foreign Origin, an expired or altered URL)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_SSE_OK = {
    "200": {
        "description": "text/event-stream: id = event seq, event = type, data = Event JSON",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    "403": _FORBIDDEN,
}


def _text_ok(media_type: str) -> dict[str, Any]:
    return {"200": {"description": "OK", "content": {media_type: {"schema": {"type": "string"}}}}}


_FILE_PATH = {"name": "path", "in": "path", "required": True, "schema": _FILE_NAME}
_PRINTER_ID = {"name": "printer_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


PATHS: dict[str, Any] = {
    "/api/health": {
        "get": {
            "summary": "Liveness (public, no key)",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["status"],
                                "properties": {
                                    "status": {
                                        "type": "string",
                                        "enum": ["starting", "ok", "degraded"],
                                    },
                                    "version": {"type": "string"},
                                    "reason": {"type": "string"},
                                    "node": {
                                        "description": "(issue 18) this daemon in a cluster",
                                        "type": "object",
                                        "properties": {
                                            "id": {"type": "string"},
                                            "epoch": {"type": "integer"},
                                        },
                                    },
                                },
                            }
                        }
                    },
                }
            },
        }
    },
    "/api/openapi.json": {
        "get": _op("This document", {"200": {"description": "OpenAPI document"}})
    },
    # issue 8: Prometheus metrics (public only with server.metrics_public).
    "/metrics": {
        "get": _op(
            "Prometheus metrics (text format 0.0.4)",
            {
                "200": {
                    "description": "jobs and printers by state, queue depth, dispatch "
                    "latency histogram, retries, watchdog actions",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        )
    },
    "/api/jobs": {
        "get": _op(
            "List jobs with filters and sorting",
            _ok("JobList"),
            parameters=[
                _q(
                    "status",
                    {"type": "string", "pattern": _STATE_LIST},
                    "comma-separated states, e.g. printing,queued",
                ),
                _q("printer", {"type": "string"}, "only jobs on this printer"),
                _q("sku", {"type": "string"}, "only this SKU"),
                _q("material", {"type": "string"}, "only this material"),
                _q("group", {"type": "string"}, "only copies of this submission"),
                _q(
                    "sort",
                    {
                        "type": "string",
                        "enum": [
                            "created",
                            "updated",
                            "state",
                            "printer",
                            "sku",
                            "eta",
                            "priority",
                            "name",
                            "filename",
                        ],
                    },
                    "sort key",
                ),
                _q("order", {"type": "string", "enum": ["asc", "desc"]}, "sort direction"),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"),
                _q("offset", _OFFSET, "page start"),
            ],
        ),
        "post": _op(
            "Submit a job (copies = N makes N jobs)",
            {
                **_ok("JobList", "201", "created"),
                **_ok("JobList", "200", "replayed: the Idempotency-Key was seen before"),
            },
            parameters=[
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": _IDEMPOTENCY_KEY},
                    "description": "1 to 200 printable characters",
                }
            ],
            requestBody=body("JobCreate"),
        ),
    },
    "/api/jobs/{job_id}": {"get": _op("One job", _ok("Job"), parameters=[_JOB_ID])},
    "/api/jobs/{job_id}/cancel": {
        "post": _op(
            "Cancel a job",
            _ok("Job"),
            parameters=[_JOB_ID],
            requestBody=body("JobCancel", required=False),
        )
    },
    "/api/jobs/{job_id}/release": {
        "post": _op(
            "Send a queued job to a chosen idle printer now",
            _ok("Job"),
            parameters=[_JOB_ID],
            requestBody=body("JobRelease"),
        )
    },
    "/api/jobs/{job_id}/ship": {
        "post": _op(
            "Mark a ready job shipped with its tracking number",
            _ok("Job"),
            parameters=[_JOB_ID],
            requestBody=body("JobShip"),
        )
    },
    "/api/jobs/{job_id}/jump": {
        "post": _op("Move a queued job to the front of the queue", _ok("Job"), parameters=[_JOB_ID])
    },
    "/api/jobs/{job_id}/pause": {
        "post": _op(
            "Pause a printing job on its printer (answers once the printer did)",
            {**_ok("Job"), **_PRINTER_ERROR},
            parameters=[_JOB_ID],
        )
    },
    "/api/jobs/{job_id}/resume": {
        "post": _op(
            "Resume a paused job on its printer (answers once the printer did)",
            {**_ok("Job"), **_PRINTER_ERROR},
            parameters=[_JOB_ID],
        )
    },
    "/api/printers": {
        "get": _op(
            "List printers",
            {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "printers": {"type": "array", "items": _ref("Printer")}
                                },
                            }
                        }
                    },
                }
            },
        )
    },
    "/api/printers/{printer_id}": {
        "get": _op("One printer", _ok("Printer"), parameters=[_PRINTER_ID])
    },
    "/api/printers/{printer_id}/clear": {
        "post": _op(
            "The plate is clear: finish post-processing", _ok("Printer"), parameters=[_PRINTER_ID]
        )
    },
    "/api/printers/{printer_id}/maintenance": {
        "post": _op(
            "Maintenance mode on or off (no jobs while on)",
            _ok("Printer"),
            parameters=[_PRINTER_ID],
            requestBody=body("Maintenance"),
        )
    },
    "/api/files": {
        "get": _op(
            "List the G-code files in the gcodes folder",
            {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["files"],
                                "properties": {
                                    "files": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["path", "size", "modified"],
                                            "properties": {
                                                "path": {"type": "string"},
                                                "size": {"type": "integer"},
                                                "modified": {"type": "number"},
                                            },
                                        },
                                    }
                                },
                            }
                        }
                    },
                }
            },
        ),
        "post": _op(
            "Upload a G-code file (multipart: file, optional path, optional checksum)",
            {
                "201": {
                    "description": "Stored",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": {
                                    "file": {
                                        "type": "object",
                                        "required": ["path", "size", "sha256", "modified"],
                                        "properties": {
                                            "path": {"type": "string"},
                                            "size": {"type": "integer"},
                                            "sha256": {"type": "string"},
                                            "modified": {"type": "number"},
                                        },
                                    }
                                },
                            }
                        }
                    },
                }
            },
            requestBody={
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "path": {"type": "string"},
                                "checksum": {
                                    "type": "string",
                                    "pattern": "^[0-9a-fA-F]{64}$",
                                    "description": "sha256 hex; 422 if the file differs",
                                },
                            },
                        }
                    }
                },
            },
        ),
    },
    "/api/files/{path}": {
        "get": _op(
            "Download a G-code file",
            {
                "200": {
                    "description": "The file",
                    "content": {"text/x-gcode": {"schema": {"type": "string", "format": "binary"}}},
                }
            },
            parameters=[_FILE_PATH],
        ),
        "delete": _op(
            "Delete a G-code file (and its extracted thumbnails)",
            {
                "200": {
                    "description": "Deleted",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["deleted"],
                                "properties": {"deleted": {"type": "string"}},
                            }
                        }
                    },
                }
            },
            parameters=[_FILE_PATH],
        ),
    },
    "/api/photos": {
        "get": _op(
            "Plate photos under low/, sorted by key, each with a URL signed for one hour",
            {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["photos", "total", "offset", "limit"],
                                "properties": {
                                    "photos": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["key", "url", "expires"],
                                            "properties": {
                                                "key": {"type": "string"},
                                                "url": {"type": "string"},
                                                "expires": {"type": "integer"},
                                            },
                                        },
                                    },
                                    "total": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                    "limit": {"type": "integer"},
                                },
                            }
                        }
                    },
                }
            },
            parameters=[
                _q("offset", _OFFSET, "first item (default 0)"),
                _q("limit", {"type": "integer", "minimum": 0, "maximum": 200}, "default 50"),
            ],
        )
    },
    "/api/photos/low/{key}": {
        "get": _op(
            "A reduced photo through its pre-signed URL (no API key; 403 if expired or altered)",
            {
                "200": {
                    "description": "The PNG",
                    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                },
                "403": _FORBIDDEN,
            },
            parameters=[
                {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                _q("expires", {"type": "integer"}, "unix time the URL expires"),
                _q("sig", {"type": "string"}, "HMAC-SHA256 hex over low/<key> and expires"),
            ],
            security=[],
        )
    },
    "/api/orchestrator/status": {"get": _op("Queue health", _ok("QueueStatus"))},
    "/api/orchestrator/pause": {"post": _op("Pause dispatching", _ok("QueueStatus"))},
    "/api/orchestrator/resume": {"post": _op("Resume dispatching", _ok("QueueStatus"))},
    "/api/orchestrator/reprioritize": {
        "post": _op(
            "Change a job's priority",
            _ok("Job"),
            requestBody=body("Reprioritize"),
        )
    },
    "/api/orchestrator/config": {
        "get": _op("Retry and cool-down settings", _ok("OrchestratorConfig")),
        "put": _op(
            "Change retry and cool-down settings (persisted; an empty body changes nothing)",
            _ok("OrchestratorConfig"),
            requestBody=body("OrchestratorConfig", required=False),
        ),
    },
    "/api/notifications": {
        "get": _op(
            "The notification delivery log, newest first",
            {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "notifications": {
                                        "type": "array",
                                        "items": _ref("Notification"),
                                    },
                                    "total": {"type": "integer"},
                                },
                            }
                        }
                    },
                }
            },
            parameters=[
                _q("job", {"type": "string"}, "only this job"),
                _q(
                    "status",
                    {"type": "string", "enum": ["pending", "delivered", "failed"]},
                    "only this status",
                ),
                _q(
                    "channel",
                    {"type": "string", "enum": ["webhook", "email", "mqtt"]},
                    "only this channel",
                ),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page size"),
                _q("offset", _OFFSET, "page start"),
            ],
        )
    },
    "/api/history": {
        "get": _op(
            "Print attempts, newest first (CSV with Accept: text/csv)",
            {
                "200": {
                    "description": "OK (CSV: the same columns, a header row, X-Total-Count)",
                    "content": {
                        "application/json": {"schema": _ref("HistoryList")},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                }
            },
            parameters=[
                _q("printer", {"type": "string"}, "only this printer"),
                _q("file", {"type": "string"}, "only this file (path in the gcodes folder)"),
                _q("sku", {"type": "string"}, "only this SKU"),
                _q(
                    "status",
                    {"type": "string", "pattern": _HISTORY_STATUS_LIST},
                    "comma-separated statuses",
                ),
                _q("since", _UNIX_TIME, "started after (Unix seconds or ISO-8601)"),
                _q("before", _UNIX_TIME, "ended before (Unix seconds or ISO-8601)"),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"),
                _q("offset", _OFFSET, "page start"),
                _q("order", {"type": "string", "enum": ["asc", "desc"]}, "default desc"),
            ],
        )
    },
    "/api/stats": {
        "get": _op(
            "Per printer and per file: attempts, success rate, print hours, filament, MTBF",
            _ok("Stats"),
            parameters=[
                _q("since", _UNIX_TIME, "attempts started after (Unix seconds or ISO-8601)"),
                _q("before", _UNIX_TIME, "attempts started before (Unix seconds or ISO-8601)"),
                _q(
                    "days",
                    {"type": "integer", "minimum": 1, "maximum": 366},
                    "days of outcomes_by_day per printer (default 30)",
                ),
            ],
        )
    },
    "/api/events/history": {
        "get": _op(
            "The event log, oldest first",
            {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"events": {"type": "array", "items": _ref("Event")}},
                            }
                        }
                    },
                }
            },
            parameters=[
                _q(
                    "after",
                    {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                    "only events with a larger seq",
                ),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 5000}, "page size"),
                _q("job", {"type": "string"}, "only this job"),
                _q("printer", {"type": "string"}, "only this printer"),
                _q("type", {"type": "string"}, "comma-separated event types"),
            ],
        )
    },
    "/api/events": {
        "get": _op(
            "Live stream (SSE) of every committed event; replays from Last-Event-ID",
            _SSE_OK,
            parameters=[
                _q("job", {"type": "string"}, "only this job"),
                _q("printer", {"type": "string"}, "only this printer"),
                _q("type", {"type": "string"}, "comma-separated event types (and progress)"),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                    "description": "replay every event with a larger seq first",
                },
            ],
        )
    },
    "/api/jobs/{job_id}/stream": {
        "get": _op(
            "Live stream (SSE) of one job: its state at once, then every change, until final",
            _SSE_OK,
            parameters=[_JOB_ID],
        )
    },
    # Public (auth.PUBLIC_ROUTES): the shell carries no farm data; its data calls need the key.
    "/dashboard": {
        "get": _op(
            "The operator dashboard (public page, no data)", _text_ok("text/html"), security=[]
        )
    },
    "/dashboard/dashboard.js": {
        "get": _op("The dashboard's script (public)", _text_ok("text/javascript"), security=[])
    },
    "/dashboard/dashboard.css": {
        "get": _op("The dashboard's stylesheet (public)", _text_ok("text/css"), security=[])
    },
}

# Issue 16: spools and the maintenance log.
_PAGE = [
    _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "log page size"),
    _q("offset", _OFFSET, "log page start"),
]
PATHS["/api/printers/{printer_id}/maintenance"]["post"].update(
    summary="Maintenance mode on or off (enabled), or record work done (by, work, at: "
    "the counters reset, the printer is back in service)",
)
PATHS["/api/printers/{printer_id}/maintenance"]["get"] = _op(
    "The printer's counters, thresholds and maintenance log",
    _ok("MaintenanceLog"),
    parameters=[_PRINTER_ID, *_PAGE],
)
PATHS.update(
    {
        "/api/printers/{printer_id}/spool": {
            "put": _op(
                "Bind a Spoolman spool to a tool (spool_id null: unbind)",
                _ok("Printer"),
                parameters=[_PRINTER_ID],
                requestBody=body("SpoolBind"),
            )
        },
        "/api/spools": {
            "get": _op("Spoolman, the bound spools, the usage not yet reported", _ok("SpoolList"))
        },
        "/api/maintenance": {
            "get": _op(
                "Every printer's counters and the maintenance log, newest first",
                _ok("MaintenanceLog"),
                parameters=[_q("printer", {"type": "string"}, "only this printer"), *_PAGE],
            )
        },
    }
)


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "printfarmd REST API", "version": __version__},
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}},
    },
    "security": [{"ApiKey": []}],
    "paths": PATHS,
}


def document(max_priority: int) -> dict[str, Any]:
    """The document with ``max_priority`` as the priority bound (the handlers use the
    configured ``scheduler.max_priority``; ``DOCUMENT`` states the default)."""
    if max_priority == DEFAULT_MAX_PRIORITY:
        return DOCUMENT
    doc = dict(DOCUMENT)
    doc["components"] = {**DOCUMENT["components"], "schemas": schemas(Limits(max_priority))}
    return doc


@bp.get("/api/openapi.json")
async def openapi_document() -> Response:
    return json_response(document(services().config.scheduler.max_priority))
