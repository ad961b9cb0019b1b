"""Pure parsing of Moonraker's JSON-RPC traffic and Klipper's printer objects.

No I/O and no trio here: ``moonraker.py`` feeds these functions what arrives on the
websocket and turns their answers into driver events. Everything a printer can send
is treated as untrusted: a frame that is not JSON or not JSON-RPC raises
``PayloadError`` (the caller logs and drops it); a field of the wrong type or an
unknown state name is skipped and described in the returned ``problems`` list, while
the rest of the update still applies.

Jobs are recognised by file name: the driver uploads a job's G-code as
``printfarmd/<job id>--<file name>``, so ``print_stats.filename`` alone tells which
job a printer works on, even after a restart of either side.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from printfarmd.drivers.base import JobFailed, JobFinished, StatusReport
from printfarmd.models import PrinterState

#: The folder (under Moonraker's gcodes root) the driver uploads jobs into.
UPLOAD_DIR = "printfarmd"
_JOB_FILE_RE = re.compile(rf"^{UPLOAD_DIR}/([0-9A-Za-z_-]{{1,64}})--[^/]+$")
_SAFE_NAME_RE = re.compile(r"[^0-9A-Za-z._-]+")

#: The printer objects the driver subscribes to and queries.
OBJECTS: tuple[str, ...] = ("print_stats", "virtual_sdcard", "webhooks", "display_status")


class KlippyState(enum.StrEnum):
    """Klipper's host state, as ``webhooks.state`` / ``server.info.klippy_state`` say."""

    READY = "ready"
    STARTUP = "startup"
    SHUTDOWN = "shutdown"
    ERROR = "error"
    DISCONNECTED = "disconnected"


class PrintState(enum.StrEnum):
    """``print_stats.state``."""

    STANDBY = "standby"
    PRINTING = "printing"
    PAUSED = "paused"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    ERROR = "error"


class PayloadError(ValueError):
    """A frame that is not valid JSON-RPC; ``str(exc)`` says why (safe to log)."""


_BUSY = ("printing", "paused")


class KlipperStatus(msgspec.Struct, frozen=True):
    """What the driver knows of one printer. ``sd_progress`` and ``display_progress``
    are fractions 0..1 (``display_progress`` is ``None`` until the printer sends one).

    Derived per print (kept by ``apply_update``): ``peak_progress`` (the highest
    progress fraction reported for the print, so it never steps back, e.g. when the
    slicer's M73 progress takes over again after a resume), ``paused_for`` (seconds of
    ``total_duration`` spent paused) and ``paused_since`` (``total_duration`` when the
    current pause began).
    """

    klippy: KlippyState = KlippyState.DISCONNECTED
    klippy_message: str = ""
    print_state: PrintState = PrintState.STANDBY
    filename: str = ""
    print_message: str = ""
    print_duration: float = 0.0
    total_duration: float = 0.0
    sd_progress: float = 0.0
    display_progress: float | None = None
    peak_progress: float = 0.0
    paused_for: float = 0.0
    paused_since: float | None = None

    @property
    def job_id(self) -> str | None:
        """The farm job whose file ``print_stats`` names, if it is one of ours."""
        return job_id_of(self.filename)

    @property
    def busy(self) -> bool:
        return self.print_state.value in _BUSY

    @property
    def raw_progress(self) -> float:
        """Fraction 0..1 as the printer says it now: M73 if any, else the file position."""
        fraction = self.display_progress if self.display_progress is not None else self.sd_progress
        return min(max(fraction, 0.0), 1.0)

    @property
    def progress(self) -> float:
        """Percent 0..100: the slicer's M73 progress if any, else the file position;
        never lower than before during one print; 100 once complete."""
        if self.print_state is PrintState.COMPLETE:
            return 100.0
        fraction = self.raw_progress
        if self.busy:
            fraction = max(fraction, self.peak_progress)
        return fraction * 100.0

    @property
    def running_for(self) -> float:
        """Seconds the print has been running: ``total_duration`` (from the start of
        the print, heating included) less the time spent paused."""
        elapsed = self.total_duration or self.print_duration
        paused = self.paused_for
        if self.paused_since is not None:
            paused += max(elapsed - self.paused_since, 0.0)
        return max(elapsed - paused, 0.0)

    def remaining(self) -> float | None:
        """Seconds left, from the file position and the time the print has run: the
        rest of the file at the rate so far. ``None`` before there is a rate."""
        fraction = min(max(self.sd_progress, 0.0), 1.0)
        running = self.running_for
        if not (0.0 < fraction < 1.0) or running <= 0.0:
            return None
        return running * (1.0 - fraction) / fraction


# ------------------------------------------------------------------------ file names


def upload_name(job_id: str, filename: str) -> str:
    """The path (relative to the gcodes root) a job's file is uploaded under. Pure.

    Carries the job id so that the printer's own state names the job: a start that
    is retried after a lost answer can see the job already printing.
    """
    base = filename.rsplit("/", 1)[-1]
    safe = _SAFE_NAME_RE.sub("_", base).strip("._") or "job.gcode"
    return f"{UPLOAD_DIR}/{job_id}--{safe}"


def job_id_of(filename: str) -> str | None:
    """The job id in a name made by ``upload_name``; ``None`` for any other file."""
    match = _JOB_FILE_RE.match(filename)
    return match.group(1) if match else None


# ------------------------------------------------------------------------ JSON-RPC frames


class RpcResponse(msgspec.Struct, frozen=True):
    """A reply to one of our requests: ``error`` is ``(code, message)`` or ``None``."""

    id: int | str
    result: Any = None
    error: tuple[int, str] | None = None


class StatusUpdate(msgspec.Struct, frozen=True):
    """``notify_status_update``: changed fields of printer objects."""

    objects: Mapping[str, Any]


class KlippyNotice(msgspec.Struct, frozen=True):
    """``notify_klippy_ready`` / ``_shutdown`` / ``_disconnected``."""

    state: KlippyState


class OtherNotice(msgspec.Struct, frozen=True):
    """Any other notification (``notify_proc_stat_update``, ...): ignored by the driver."""

    method: str


Message = RpcResponse | StatusUpdate | KlippyNotice | OtherNotice

_KLIPPY_NOTICES = {
    "notify_klippy_ready": KlippyState.READY,
    "notify_klippy_shutdown": KlippyState.SHUTDOWN,
    "notify_klippy_disconnected": KlippyState.DISCONNECTED,
}


def parse_message(frame: str | bytes) -> Message:
    """Classify one websocket text frame. Pure. Raises ``PayloadError`` if malformed."""
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError(f"expected a JSON object, got {type(data).__name__}")
    if "method" in data:
        method = data["method"]
        if not isinstance(method, str):
            raise PayloadError("notification method is not a string")
        params = data.get("params", [])
        if method == "notify_status_update":
            if not isinstance(params, list) or not params or not isinstance(params[0], dict):
                raise PayloadError("notify_status_update without a status object")
            return StatusUpdate(params[0])
        if method in _KLIPPY_NOTICES:
            return KlippyNotice(_KLIPPY_NOTICES[method])
        return OtherNotice(method)
    if "id" not in data:
        raise PayloadError("neither a response (no id) nor a notification (no method)")
    rid = data["id"]
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        raise PayloadError(f"response id {rid!r} is not a number or string")
    if "error" in data:
        err = data["error"]
        if not isinstance(err, dict):
            return RpcResponse(rid, error=(-32603, str(err)))
        code = err.get("code")
        return RpcResponse(
            rid,
            error=(code if isinstance(code, int) else -32603, str(err.get("message", ""))),
        )
    if "result" not in data:
        raise PayloadError(f"response {rid!r} has neither result nor error")
    return RpcResponse(rid, result=data["result"])


def status_objects(result: object) -> Mapping[str, Any]:
    """The ``status`` of a ``printer.objects.query``/``subscribe`` result. Pure.

    Raises ``PayloadError`` when the result has no status object.
    """
    if isinstance(result, dict) and isinstance(result.get("status"), dict):
        status: Mapping[str, Any] = result["status"]
        return status
    raise PayloadError("query result without a status object")


# ------------------------------------------------------------------------ applying updates


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def apply_update(
    status: KlipperStatus, objects: Mapping[str, Any]
) -> tuple[KlipperStatus, list[str]]:
    """Merge changed fields (a status update or a full query result) into ``status``.

    Pure. Returns the new status and a list of problems (fields skipped because of a
    wrong type or an unknown state); unknown objects and fields are ignored silently.
    """
    changes: dict[str, Any] = {}
    problems: list[str] = []

    def take(obj: str, field: str, convert: Any, target: str) -> None:
        section = objects.get(obj)
        if not isinstance(section, dict) or field not in section:
            return
        value = convert(section[field])
        if value is None:
            problems.append(f"{obj}.{field}: unusable value {section[field]!r}")
        else:
            changes[target] = value

    def text(value: object) -> str | None:
        return value if isinstance(value, str) else None

    def klippy(value: object) -> KlippyState | None:
        try:
            return KlippyState(value) if isinstance(value, str) else None
        except ValueError:
            return None

    def print_state(value: object) -> PrintState | None:
        try:
            return PrintState(value) if isinstance(value, str) else None
        except ValueError:
            return None

    for obj in objects:
        if obj in OBJECTS and not isinstance(objects[obj], dict):
            problems.append(f"{obj}: expected an object, got {type(objects[obj]).__name__}")
    take("webhooks", "state", klippy, "klippy")
    take("webhooks", "state_message", text, "klippy_message")
    take("print_stats", "state", print_state, "print_state")
    take("print_stats", "filename", text, "filename")
    take("print_stats", "message", text, "print_message")
    take("print_stats", "print_duration", _number, "print_duration")
    take("print_stats", "total_duration", _number, "total_duration")
    take("virtual_sdcard", "progress", _number, "sd_progress")
    take("display_status", "progress", _number, "display_progress")
    if "klippy" in changes and changes["klippy"] is not status.klippy:
        # A new Klippy state without its own message: the old one ("Printer is
        # ready") no longer describes it.
        changes.setdefault("klippy_message", "")
    return _per_print(status, msgspec.structs.replace(status, **changes)), problems


def _per_print(old: KlipperStatus, new: KlipperStatus) -> KlipperStatus:
    """Carry the per-print fields (peak progress, pause time) from ``old`` to ``new``."""
    fresh = new.busy and (not old.busy or new.filename != old.filename)
    if not new.busy:
        return msgspec.structs.replace(new, peak_progress=0.0, paused_for=0.0, paused_since=None)
    peak, paused_for, paused_since = (
        (0.0, 0.0, None) if fresh else (old.peak_progress, old.paused_for, old.paused_since)
    )
    elapsed = new.total_duration or new.print_duration
    if new.print_state is PrintState.PAUSED and paused_since is None:
        paused_since = elapsed
    elif new.print_state is PrintState.PRINTING and paused_since is not None:
        paused_for += max(elapsed - paused_since, 0.0)
        paused_since = None
    return msgspec.structs.replace(
        new,
        peak_progress=max(peak, new.raw_progress),
        paused_for=paused_for,
        paused_since=paused_since,
    )


# ------------------------------------------------------------------------ to driver events


def farm_state(status: KlipperStatus) -> PrinterState:
    """The farm's printer state for a Klipper status. Pure.

    Klippy not ready: starting up or disconnected is OFFLINE (it cannot be commanded
    yet); shutdown or error is ERROR (it needs a firmware restart). Otherwise
    ``print_stats``: printing/paused map through; standby, complete, cancelled and a
    print error leave an IDLE printer (the scheduler learns of the outcome from the
    ``JobFinished``/``JobFailed`` sent with it, and knows the plate is not clear).
    """
    if status.klippy in (KlippyState.SHUTDOWN, KlippyState.ERROR):
        return PrinterState.ERROR
    if status.klippy is not KlippyState.READY:
        return PrinterState.OFFLINE
    if status.print_state is PrintState.PRINTING:
        return PrinterState.PRINTING
    if status.print_state is PrintState.PAUSED:
        return PrinterState.PAUSED
    return PrinterState.IDLE


def status_report(printer_id: str, status: KlipperStatus) -> StatusReport:
    """The ``StatusReport`` for a Klipper status. Pure.

    Progress and time left only while a print is on (an idle printer shows 0, not the
    100 of its last print); Klippy not ready says so, with Klippy's own words if any.
    """
    state = farm_state(status)
    busy = state in (PrinterState.PRINTING, PrinterState.PAUSED)
    if state is PrinterState.OFFLINE:
        message = f"Klippy not ready ({status.klippy.value})"
        if status.klippy_message:
            message = f"{message}: {status.klippy_message}"
    elif state is PrinterState.ERROR:
        message = status.klippy_message or f"klippy {status.klippy.value}"
    elif status.print_state is PrintState.ERROR:
        message = f"last print failed: {status.print_message or 'error'}"
    else:
        message = status.print_message
    return StatusReport(
        printer_id,
        state,
        job_id=status.job_id if busy else None,
        progress=status.progress if busy else 0.0,
        remaining=status.remaining() if busy else None,
        message=message,
    )


def outcome(printer_id: str, status: KlipperStatus) -> JobFinished | JobFailed | None:
    """The end of one of our jobs that ``status`` shows, if any. Pure.

    Complete -> ``JobFinished``; a print error, a cancel on the printer, or Klipper
    shutting down mid-print -> ``JobFailed`` with the printer's reason. The same status
    seen again gives the same answer: the caller sends each outcome once.
    """
    job_id = status.job_id
    if job_id is None:
        return None
    if status.klippy in (KlippyState.SHUTDOWN, KlippyState.ERROR):
        if status.print_state in (PrintState.PRINTING, PrintState.PAUSED, PrintState.ERROR):
            reason = status.klippy_message or status.print_message or "klippy shutdown"
            return JobFailed(printer_id, job_id, f"klipper {status.klippy.value}: {reason}")
        return None
    if status.klippy is not KlippyState.READY:
        return None  # Klipper is away: the print's fate is not known yet
    if status.print_state is PrintState.COMPLETE:
        return JobFinished(printer_id, job_id)
    if status.print_state is PrintState.ERROR:
        return JobFailed(printer_id, job_id, f"print error: {status.print_message or 'unknown'}")
    if status.print_state is PrintState.CANCELLED:
        return JobFailed(printer_id, job_id, "print cancelled on the printer")
    return None
