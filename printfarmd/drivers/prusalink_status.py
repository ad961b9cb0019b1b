"""Pure parsing of PrusaLink's REST answers (API v1).

No I/O and no trio here: ``prusalink.py`` feeds these functions what PrusaLink answers
(``/api/v1/status``, ``/api/v1/job``, ``/api/v1/storage``, ``/api/v1/files/...``) and turns
the results into driver events. The shapes are those of Prusa's published OpenAPI
document (``prusa3d/Prusa-Link-Web`` ``spec/openapi.yaml``, ``1.0.0-draft``). Everything a
printer sends is untrusted: an answer that is not what the document promises raises
``PayloadError`` (the caller logs and drops it); a field of the wrong type is skipped and
described in the returned ``problems`` list.

Jobs are recognised by file name: the driver uploads a job's G-code as
``printfarmd/<job id>_<file name>``; PrusaLink numbers its own jobs, and
``/api/v1/job`` names the file of the current one, which names the farm job.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import msgspec

from printfarmd.drivers.base import JobFailed, JobFinished, StatusReport
from printfarmd.models import PrinterState

#: The folder (in the printer's storage) the driver uploads jobs into.
UPLOAD_DIR = "printfarmd"
_JOB_NAME_RE = re.compile(r"^([0-9A-Za-z-]{1,64})_[^/]+$")
_SAFE_NAME_RE = re.compile(r"[^0-9A-Za-z._-]+")
#: Print file endings Prusa's printers accept (binary G-code included).
PRINT_SUFFIXES = (".gcode", ".bgcode", ".gco", ".g")


class PayloadError(ValueError):
    """An answer that is not what PrusaLink sends; ``str(exc)`` is safe to log."""


class PrusaState(enum.StrEnum):
    """``printer.state`` of ``/api/v1/status`` (``UNKNOWN``: a state we do not know)."""

    IDLE = "IDLE"
    BUSY = "BUSY"
    PRINTING = "PRINTING"
    PAUSED = "PAUSED"
    FINISHED = "FINISHED"
    STOPPED = "STOPPED"
    ERROR = "ERROR"
    ATTENTION = "ATTENTION"
    READY = "READY"
    UNKNOWN = "UNKNOWN"


#: States in which the printer is working on a job (or holding one).
ACTIVE = frozenset({PrusaState.PRINTING, PrusaState.PAUSED, PrusaState.ATTENTION})
#: States that end a job.
ENDED = frozenset({PrusaState.FINISHED, PrusaState.STOPPED, PrusaState.ERROR})
#: States from which a new print may start.
PRINTABLE = frozenset({PrusaState.IDLE, PrusaState.READY, PrusaState.FINISHED, PrusaState.STOPPED})


class PrusaStatus(msgspec.Struct, frozen=True):
    """What ``/api/v1/status`` says. ``job_number`` is PrusaLink's own job id;
    ``progress`` is percent; times are seconds. ``printer_ok`` is false when PrusaLink
    has lost its link to the printer board (``status_printer.ok``)."""

    state: PrusaState = PrusaState.UNKNOWN
    raw_state: str = ""
    job_number: int | None = None
    progress: float | None = None
    time_remaining: float | None = None
    time_printing: float | None = None
    printer_ok: bool = True
    printer_message: str = ""


class PrusaJob(msgspec.Struct, frozen=True):
    """What ``/api/v1/job`` says of the current job: its number and its file."""

    number: int
    state: str
    path: str
    display_name: str

    @property
    def job_id(self) -> str | None:
        """The farm job whose file this is, if it is one of ours."""
        for name in (self.display_name, self.path.rsplit("/", 1)[-1]):
            found = job_id_of(name)
            if found is not None:
                return found
        return None


class Storage(msgspec.Struct, frozen=True):
    path: str
    available: bool
    read_only: bool


# ------------------------------------------------------------------------ file names


def upload_name(job_id: str, filename: str) -> str:
    """The path (in the printer's storage) a job's file is uploaded under. Pure.

    Only ``[0-9A-Za-z._-]`` survive, and the name keeps a print file ending."""
    base = filename.rsplit("/", 1)[-1]
    safe = _SAFE_NAME_RE.sub("_", base).strip("._") or "job"
    if not safe.lower().endswith(PRINT_SUFFIXES):
        safe += ".gcode"
    return f"{UPLOAD_DIR}/{job_id}_{safe}"


def job_id_of(name: str) -> str | None:
    """The job id in a file name made by ``upload_name`` (the last path part), or
    ``None`` for any other file."""
    match = _JOB_NAME_RE.match(name.rsplit("/", 1)[-1])
    return match.group(1) if match else None


# ------------------------------------------------------------------------ answers


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_status(answer: object) -> tuple[PrusaStatus, list[str]]:
    """``GET /api/v1/status`` -> status and problems. Pure.

    Raises ``PayloadError`` without a ``printer`` object holding a ``state`` text (the
    one field the document requires).
    """
    if not isinstance(answer, dict):
        raise PayloadError(f"expected a JSON object, got {type(answer).__name__}")
    printer = answer.get("printer")
    if not isinstance(printer, dict) or not isinstance(printer.get("state"), str):
        raise PayloadError("status without printer.state")
    problems: list[str] = []
    raw = printer["state"]
    try:
        state = PrusaState(raw.upper())
    except ValueError:
        state = PrusaState.UNKNOWN
        problems.append(f"unknown printer state {raw!r}")
    changes: dict[str, Any] = {"state": state, "raw_state": raw}
    link = printer.get("status_printer")
    if isinstance(link, dict):
        if isinstance(link.get("ok"), bool):
            changes["printer_ok"] = link["ok"]
        if isinstance(link.get("message"), str):
            changes["printer_message"] = link["message"]
    elif link is not None:
        problems.append(f"printer.status_printer: unusable value {link!r}")
    job = answer.get("job")
    if isinstance(job, dict):
        number = job.get("id")
        if isinstance(number, int) and not isinstance(number, bool):
            changes["job_number"] = number
        elif number is not None:
            problems.append(f"job.id: unusable value {number!r}")
        for field, target in (
            ("progress", "progress"),
            ("time_remaining", "time_remaining"),
            ("time_printing", "time_printing"),
        ):
            value = job.get(field)
            if value is None:
                continue
            number_value = _number(value)
            if number_value is None or number_value < 0:
                problems.append(f"job.{field}: unusable value {value!r}")
            else:
                changes[target] = number_value
    elif job is not None:
        problems.append(f"job: expected an object, got {type(job).__name__}")
    return PrusaStatus(**changes), problems


def parse_job(answer: object) -> PrusaJob:
    """``GET /api/v1/job`` -> the current job. Pure. Raises ``PayloadError``.

    ``file.path`` is the folder of the file in Prusa's document and on Buddy firmware,
    the whole path on PrusaLink for a Raspberry Pi; both give the same full path here.
    """
    if not isinstance(answer, dict):
        raise PayloadError(f"expected a JSON object, got {type(answer).__name__}")
    number = answer.get("id")
    if not isinstance(number, int) or isinstance(number, bool):
        raise PayloadError("job without an id")
    file = answer.get("file")
    file = file if isinstance(file, dict) else {}
    path = file.get("path") if isinstance(file.get("path"), str) else ""
    display = file.get("display_name") if isinstance(file.get("display_name"), str) else ""
    name = file.get("name") if isinstance(file.get("name"), str) else ""
    leaf = str(display or name)
    full = str(path)
    if leaf and not full.endswith(("/" + leaf, "/" + str(name))):
        full = f"{full.rstrip('/')}/{leaf}"
    state = answer.get("state")
    return PrusaJob(number, state if isinstance(state, str) else "", full, str(display or name))


def parse_storage(answer: object) -> list[Storage]:
    """``GET /api/v1/storage`` -> the storages. Pure. Raises ``PayloadError``."""
    listing = answer.get("storage_list") if isinstance(answer, dict) else None
    if not isinstance(listing, list):
        raise PayloadError("storage answer without a storage_list")
    found = []
    for item in listing:
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            found.append(
                Storage(
                    path="/" + item["path"].strip("/"),
                    available=item.get("available") is True,
                    read_only=item.get("read_only") is True,
                )
            )
    return found


def choose_storage(storages: list[Storage]) -> str | None:
    """The first available, writable storage's path (``/local``, ``/usb``), if any."""
    for storage in storages:
        if storage.available and not storage.read_only:
            return storage.path
    return None


def folder_names(answer: object) -> list[str]:
    """The file names in a ``GET /api/v1/files/{storage}/{folder}`` answer. Pure.

    Raises ``PayloadError`` when it is not a folder listing.
    """
    children = answer.get("children") if isinstance(answer, dict) else None
    if not isinstance(children, list):
        raise PayloadError("folder answer without children")
    names = []
    for child in children:
        if not isinstance(child, dict) or child.get("type") == "FOLDER":
            continue
        name = child.get("display_name") or child.get("name")
        if isinstance(name, str) and name:
            names.append(name)
    return names


# ------------------------------------------------------------------------ to driver events


def farm_state(status: PrusaStatus) -> PrinterState:
    """The farm's printer state for a PrusaLink status. Pure.

    PrusaLink without its printer board (``status_printer.ok`` false) or a state we do
    not know is OFFLINE. IDLE, READY, FINISHED and STOPPED are IDLE (the end of a job is
    sent as its outcome); PRINTING and BUSY are PRINTING; PAUSED is PAUSED, and so is
    ATTENTION while a job is held (a filament runout waits for someone); ERROR, or
    ATTENTION without a job, is ERROR.
    """
    if not status.printer_ok or status.state is PrusaState.UNKNOWN:
        return PrinterState.OFFLINE
    if status.state in PRINTABLE:
        return PrinterState.IDLE
    if status.state in (PrusaState.PRINTING, PrusaState.BUSY):
        return PrinterState.PRINTING
    if status.state is PrusaState.PAUSED:
        return PrinterState.PAUSED
    if status.state is PrusaState.ATTENTION and status.job_number is not None:
        return PrinterState.PAUSED
    return PrinterState.ERROR


def status_report(printer_id: str, status: PrusaStatus, job_id: str | None) -> StatusReport:
    """The ``StatusReport`` for a PrusaLink status whose job is ``job_id``. Pure.

    Only a printer at work names a job and a progress: an idle one reports 0.
    """
    state = farm_state(status)
    if state is PrinterState.OFFLINE:
        if not status.printer_ok:
            message = f"PrusaLink has no link to the printer: {status.printer_message or '?'}"
        else:
            message = f"PrusaLink reports an unknown state {status.raw_state!r}"
        return StatusReport(printer_id, state, message=message)
    if state in (PrinterState.PRINTING, PrinterState.PAUSED):
        message = status.state.value.lower()
        if status.state is PrusaState.ATTENTION:
            message = f"the printer needs attention: {status.printer_message or 'see its screen'}"
        return StatusReport(
            printer_id,
            state,
            job_id=job_id,
            progress=min(max(status.progress or 0.0, 0.0), 100.0),
            remaining=status.time_remaining,
            message=message,
        )
    if state is PrinterState.ERROR:
        return StatusReport(
            printer_id,
            state,
            message=f"printer {status.state.value.lower()}: "
            f"{status.printer_message or 'see its screen'}",
        )
    return StatusReport(printer_id, state, message=status.state.value.lower())


def outcome(
    printer_id: str, status: PrusaStatus, job_id: str | None
) -> JobFinished | JobFailed | None:
    """The end of job ``job_id`` that ``status`` shows, if any. Pure.

    FINISHED -> ``JobFinished``; STOPPED (on the printer) or ERROR -> ``JobFailed`` with
    the reason. The same status seen again gives the same answer: the caller sends each
    outcome once.
    """
    if job_id is None or not status.printer_ok:
        return None
    if status.state is PrusaState.FINISHED:
        return JobFinished(printer_id, job_id)
    if status.state is PrusaState.STOPPED:
        return JobFailed(printer_id, job_id, "print stopped on the printer")
    if status.state is PrusaState.ERROR:
        return JobFailed(
            printer_id, job_id, f"printer error: {status.printer_message or 'see its screen'}"
        )
    return None
