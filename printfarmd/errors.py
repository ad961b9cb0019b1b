"""The one exception tree. Each class carries the HTTP status it maps to.

No I/O here; ``printfarmd.api.errors`` is the single place these become HTTP bodies
or JSON-RPC errors.
"""

from __future__ import annotations


class FarmError(Exception):
    """Base class. ``code`` is a stable machine-readable string, ``status`` the HTTP status."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(FarmError):
    status = 400
    code = "bad_request"


class ValidationFailed(FarmError):
    """A request was well-formed but its content is unacceptable (bad field value)."""

    status = 422
    code = "validation_failed"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unauthorized(FarmError):
    status = 401
    code = "unauthorized"


class Forbidden(FarmError):
    status = 403
    code = "forbidden"


class TooBusy(FarmError):
    """More requests, streams and websockets at once than ``server.max_connections``."""

    status = 503
    code = "too_busy"


class NotFound(FarmError):
    status = 404
    code = "not_found"


class Conflict(FarmError):
    status = 409
    code = "conflict"


class InvalidTransition(Conflict):
    """A (state, event) pair that is not a row of the transition table."""

    code = "invalid_transition"

    def __init__(self, job_id: str, state: str, event: str) -> None:
        super().__init__(f"job {job_id} is {state}: cannot {event}")
        self.job_id = job_id
        self.state = state
        self.event = event


class StaleWrite(Conflict):
    """A conditional write found its row no longer in the state the farm saw: nothing
    was stored (another writer changed it)."""

    code = "stale_write"


class PayloadTooLarge(FarmError):
    status = 413
    code = "payload_too_large"


class StorageFull(FarmError):
    """The disk is full: nothing was stored."""

    status = 507
    code = "storage_full"


class StorageBusy(FarmError):
    """The database stayed locked past the busy timeout: nothing was stored."""

    status = 503
    code = "storage_busy"


class Fenced(StorageBusy):
    """(issue 18) This daemon's lease was taken over by another daemon of its cluster:
    nothing was stored; it re-reads the farm and rejoins before writing again."""

    code = "lease_lost"


class PrinterCommandFailed(FarmError):
    """A printer did not carry out what the farm asked (unreachable, refused, no answer
    in time); the message says which printer and why."""

    status = 502
    code = "printer_error"


class Degraded(FarmError):
    """The farm cannot store changes right now (it recovers by itself)."""

    status = 503
    code = "degraded"


class ShuttingDown(FarmError):
    status = 503
    code = "shutting_down"


class ConfigError(FarmError):
    """An invalid configuration file; the message names the dotted key."""

    status = 400
    code = "config_error"


class DatabaseDamaged(FarmError):
    """The database failed its integrity check at start; we refuse to run on it."""

    code = "database_damaged"
