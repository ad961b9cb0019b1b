"""Pure parsing of OctoPrint's REST answers and push messages.

No I/O and no trio here: ``octoprint.py`` feeds these functions what OctoPrint answers
(``/api/job``, ``/api/printer``, ``/api/files/local/<path>``, ``/api/login``) and what
arrives on its SockJS websocket (``/sockjs/websocket``), and turns the results into
driver events. Everything a printer sends is untrusted: a frame or answer that is not
what the protocol promises raises ``PayloadError`` (the caller logs and drops it); a
field of the wrong type is skipped and described in the returned ``problems`` list.

Protocol facts (OctoPrint 1.11, checked against the real server in the tests): the
printer's state is a text (``Operational``, ``Printing``, ``Pausing``, ``Paused``,
``Cancelling``, ``Finishing``, ``Offline``, ``Offline after error``, ``Error``,
``Connecting``, ...) and, on the websocket and ``/api/printer``, a set of flags. A print
that ends fires ``PrintDone`` or ``PrintFailed`` (``reason`` ``cancelled`` or ``error``)
and is logged in the file's metadata (``prints.last``: ``date``, ``success``), which
survives a restart of OctoPrint; after ``PrintDone`` ``/api/job`` keeps the file selected
with ``completion`` 100.

Jobs are recognised by file name: the driver uploads a job's G-code as
``printfarmd/<job id>_<file name>``, so the file OctoPrint prints names the farm job.
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

#: The folder (in OctoPrint's local storage) the driver uploads jobs into.
UPLOAD_DIR = "printfarmd"
_JOB_FILE_RE = re.compile(rf"^{UPLOAD_DIR}/([0-9A-Za-z-]{{1,64}})_[^/]+$")
_SAFE_NAME_RE = re.compile(r"[^0-9A-Za-z._-]+")
#: File name endings OctoPrint accepts as G-code.
GCODE_SUFFIXES = (".gcode", ".gco", ".g")


class PayloadError(ValueError):
    """An answer or frame that is not what OctoPrint sends; ``str(exc)`` is safe to log."""


class OctoState(enum.StrEnum):
    """OctoPrint's printer connection state, reduced to what the farm needs to know."""

    OFFLINE = "offline"  # no serial link: Offline, Closed
    CONNECTING = "connecting"  # opening, detecting, connecting
    OPERATIONAL = "operational"
    STARTING = "starting"
    PRINTING = "printing"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    CANCELLING = "cancelling"
    FINISHING = "finishing"
    TRANSFERRING = "transferring"  # a file being copied to the printer's SD card
    ERROR = "error"  # Error, Offline after error: the link broke
    UNKNOWN = "unknown"


#: States in which OctoPrint is busy with a print (the selected file is the job).
BUSY = frozenset(
    {
        OctoState.STARTING,
        OctoState.PRINTING,
        OctoState.PAUSING,
        OctoState.PAUSED,
        OctoState.RESUMING,
        OctoState.CANCELLING,
        OctoState.FINISHING,
    }
)

_TEXTS = {
    "offline": OctoState.OFFLINE,
    "closed": OctoState.OFFLINE,
    "opening serial connection": OctoState.CONNECTING,
    "opening serial port": OctoState.CONNECTING,
    "detecting serial connection": OctoState.CONNECTING,
    "detecting serial port": OctoState.CONNECTING,
    "detecting baudrate": OctoState.CONNECTING,
    "connecting": OctoState.CONNECTING,
    "operational": OctoState.OPERATIONAL,
    "starting": OctoState.STARTING,
    "starting print from sd": OctoState.STARTING,
    "starting to send file to sd": OctoState.STARTING,
    "printing": OctoState.PRINTING,
    "printing from sd": OctoState.PRINTING,
    "sending file to sd": OctoState.PRINTING,
    "pausing": OctoState.PAUSING,
    "paused": OctoState.PAUSED,
    "resuming": OctoState.RESUMING,
    "cancelling": OctoState.CANCELLING,
    "finishing": OctoState.FINISHING,
    "transferring file to sd": OctoState.TRANSFERRING,
    "error": OctoState.ERROR,
    "offline after error": OctoState.ERROR,
}


def state_of_text(text: str) -> OctoState:
    """The state an OctoPrint state text names (``Error: ...`` is ERROR). Pure."""
    key = text.strip().lower()
    if key.startswith("error"):
        return OctoState.ERROR
    return _TEXTS.get(key, OctoState.UNKNOWN)


def state_of_flags(flags: Mapping[str, Any]) -> OctoState:
    """The state OctoPrint's state flags describe (for a text we do not know). Pure."""

    def on(name: str) -> bool:
        return flags.get(name) is True

    if on("closedOrError"):
        return OctoState.ERROR if on("error") else OctoState.OFFLINE
    if on("error"):
        return OctoState.ERROR
    for name, state in (
        ("cancelling", OctoState.CANCELLING),
        ("pausing", OctoState.PAUSING),
        ("paused", OctoState.PAUSED),
        ("resuming", OctoState.RESUMING),
        ("finishing", OctoState.FINISHING),
        ("printing", OctoState.PRINTING),
    ):
        if on(name):
            return state
    if on("operational"):
        return OctoState.OPERATIONAL if on("ready") else OctoState.TRANSFERRING
    return OctoState.CONNECTING


class OctoStatus(msgspec.Struct, frozen=True):
    """What the driver knows of one OctoPrint. ``completion`` is percent (``None``
    when OctoPrint has none); times are seconds; ``file_date`` is the upload time of the
    selected file by OctoPrint's clock."""

    state: OctoState = OctoState.OFFLINE
    text: str = ""
    error: str = ""
    path: str = ""
    origin: str = ""
    file_date: float | None = None
    completion: float | None = None
    print_time: float | None = None
    print_time_left: float | None = None

    @property
    def busy(self) -> bool:
        return self.state in BUSY

    @property
    def job_id(self) -> str | None:
        """The farm job whose file is selected, if it is one of ours (local storage)."""
        return job_id_of(self.path) if self.origin == "local" else None


# ------------------------------------------------------------------------ file names


def upload_name(job_id: str, filename: str) -> str:
    """The path (in OctoPrint's local storage) a job's file is uploaded under. Pure.

    Carries the job id, so that OctoPrint's own report of the file it prints names the
    farm job, even after a restart of either side. Only ``[0-9A-Za-z._-]`` survive (OctoPrint
    would rewrite other characters), and the name keeps a G-code ending OctoPrint accepts.
    """
    base = filename.rsplit("/", 1)[-1]
    safe = _SAFE_NAME_RE.sub("_", base).strip("._") or "job"
    if not safe.lower().endswith(GCODE_SUFFIXES):
        safe += ".gcode"
    return f"{UPLOAD_DIR}/{job_id}_{safe}"


def job_id_of(path: str) -> str | None:
    """The job id in a path made by ``upload_name``; ``None`` for any other file."""
    match = _JOB_FILE_RE.match(path)
    return match.group(1) if match else None


# ------------------------------------------------------------------------ status


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _section(data: Mapping[str, Any], name: str, problems: list[str]) -> Mapping[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{name}: expected an object, got {type(value).__name__}")
        return {}
    return value


def _status(
    text: object,
    flags: object,
    error: object,
    job: Mapping[str, Any],
    progress: Mapping[str, Any],
    problems: list[str],
) -> OctoStatus:
    state = OctoState.UNKNOWN
    if isinstance(text, str):
        state = state_of_text(text)
    elif text is not None:
        problems.append(f"state text: unusable value {text!r}")
    if state is OctoState.UNKNOWN and isinstance(flags, dict):
        state = state_of_flags(flags)
    if state is OctoState.UNKNOWN:
        problems.append(f"unknown printer state {text!r}")
    changes: dict[str, Any] = {"state": state, "text": text if isinstance(text, str) else ""}
    if isinstance(error, str):
        changes["error"] = error
    file = job.get("file")
    if isinstance(file, dict):
        for field, target in (("path", "path"), ("origin", "origin")):
            value = file.get(field)
            if isinstance(value, str):
                changes[target] = value
            elif value is not None:
                problems.append(f"job.file.{field}: unusable value {value!r}")
        date = file.get("date")
        if date is not None:
            if (number := _number(date)) is None:
                problems.append(f"job.file.date: unusable value {date!r}")
            changes["file_date"] = number
    elif file is not None:
        problems.append(f"job.file: expected an object, got {type(file).__name__}")
    for field, target in (
        ("completion", "completion"),
        ("printTime", "print_time"),
        ("printTimeLeft", "print_time_left"),
    ):
        value = progress.get(field)
        if value is None:
            continue
        number = _number(value)
        if number is None or number < 0:
            problems.append(f"progress.{field}: unusable value {value!r}")
        else:
            changes[target] = number
    return OctoStatus(**changes)


def from_current(payload: object) -> tuple[OctoStatus, list[str]]:
    """A websocket ``current`` or ``history`` payload, or a whole ``/api/printer`` answer
    joined with ``/api/job``'s ``job`` and ``progress``. Pure.

    Returns the status and the problems found. Raises ``PayloadError`` when there is no
    state object at all.
    """
    if not isinstance(payload, dict):
        raise PayloadError(f"expected a JSON object, got {type(payload).__name__}")
    problems: list[str] = []
    state = payload.get("state")
    if not isinstance(state, dict):
        raise PayloadError("printer data without a state object")
    return (
        _status(
            state.get("text"),
            state.get("flags"),
            state.get("error"),
            _section(payload, "job", problems),
            _section(payload, "progress", problems),
            problems,
        ),
        problems,
    )


def from_job(answer: object) -> tuple[OctoStatus, list[str]]:
    """The answer of ``GET /api/job`` (``state`` is a text there). Pure.

    Raises ``PayloadError`` when it is not an object with a state text.
    """
    if not isinstance(answer, dict):
        raise PayloadError(f"expected a JSON object, got {type(answer).__name__}")
    if not isinstance(answer.get("state"), str):
        raise PayloadError("job answer without a state text")
    problems: list[str] = []
    status = _status(
        answer["state"],
        None,
        answer.get("error"),
        _section(answer, "job", problems),
        _section(answer, "progress", problems),
        problems,
    )
    return status, problems


# ------------------------------------------------------------------------ push messages


class Connected(msgspec.Struct, frozen=True):
    """The greeting OctoPrint sends on a new websocket (before ``auth``)."""

    version: str


class Current(msgspec.Struct, frozen=True):
    """A ``current`` (or ``history``) message: the printer's state now."""

    status: OctoStatus
    problems: tuple[str, ...] = ()


class PrintEnded(msgspec.Struct, frozen=True):
    """``PrintDone`` (``success``) or ``PrintFailed`` (``reason`` ``cancelled``/``error``)."""

    path: str
    origin: str
    success: bool
    reason: str = ""
    error: str = ""


class PrintBegan(msgspec.Struct, frozen=True):
    """``PrintStarted``: a print of ``path`` began."""

    path: str
    origin: str


class StateChanged(msgspec.Struct, frozen=True):
    """``PrinterStateChanged`` (and the connection events): worth a poll now."""

    state_id: str


class ReauthRequired(msgspec.Struct, frozen=True):
    """OctoPrint wants the socket to log in again (session expired, user changed)."""

    reason: str


class Other(msgspec.Struct, frozen=True):
    """Anything else (timelapse, plugin, slicing, other events): ignored."""

    kind: str


Message = Connected | Current | PrintEnded | PrintBegan | StateChanged | ReauthRequired | Other

_STATE_EVENTS = frozenset({"PrinterStateChanged", "Connected", "Disconnected", "Error"})


def _event(payload: object) -> Message:
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        raise PayloadError("event without a type")
    kind = payload["type"]
    data = payload.get("payload")
    if kind in ("PrintDone", "PrintFailed", "PrintStarted"):
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            raise PayloadError(f"{kind} event without a file path")
        origin = data.get("origin") if isinstance(data.get("origin"), str) else ""
        if kind == "PrintStarted":
            return PrintBegan(data["path"], str(origin))
        reason = data.get("reason")
        error = data.get("error")
        return PrintEnded(
            data["path"],
            str(origin),
            success=kind == "PrintDone",
            reason=reason if isinstance(reason, str) else "",
            error=error if isinstance(error, str) else "",
        )
    if kind in _STATE_EVENTS:
        state_id = data.get("state_id") if isinstance(data, dict) else None
        return StateChanged(state_id if isinstance(state_id, str) else kind)
    return Other(f"event {kind}")


def parse_message(frame: str | bytes) -> Message:
    """Classify one websocket text frame (``{"<type>": payload}``). Pure.

    Raises ``PayloadError`` if it is not one JSON object naming a message type or if a
    message the driver uses is malformed.
    """
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise PayloadError("expected a JSON object with one message")
    kind, payload = next(iter(data.items()))
    if kind == "connected":
        version = payload.get("version") if isinstance(payload, dict) else None
        return Connected(version if isinstance(version, str) else "")
    if kind in ("current", "history"):
        status, problems = from_current(payload)
        return Current(status, tuple(problems))
    if kind == "event":
        return _event(payload)
    if kind == "reauthRequired":
        reason = payload.get("reason") if isinstance(payload, dict) else None
        return ReauthRequired(reason if isinstance(reason, str) else "unknown")
    return Other(str(kind))


def parse_login(answer: object) -> str:
    """The websocket ``auth`` value (``"user:session"``) from a passive ``/api/login``.

    Raises ``PayloadError`` when the answer has no user name or session (the key is not
    a user's: OctoPrint answered for the anonymous user).
    """
    if not isinstance(answer, dict):
        raise PayloadError(f"expected a JSON object, got {type(answer).__name__}")
    name, session = answer.get("name"), answer.get("session")
    if not isinstance(name, str) or not name or not isinstance(session, str) or not session:
        raise PayloadError("login answer without a user name and session")
    return f"{name}:{session}"


# ------------------------------------------------------------------------ files


class PrintRecord(msgspec.Struct, frozen=True):
    """A file's print history in OctoPrint's metadata: when it was uploaded and how its
    last print ended (``None``: never printed)."""

    uploaded: float | None = None
    last_date: float | None = None
    last_success: bool | None = None


def parse_file(answer: object) -> PrintRecord:
    """``GET /api/files/local/<path>`` -> the file's print record. Pure.

    Raises ``PayloadError`` when the answer is not an object.
    """
    if not isinstance(answer, dict):
        raise PayloadError(f"expected a JSON object, got {type(answer).__name__}")
    prints = answer.get("prints")
    last = prints.get("last") if isinstance(prints, dict) else None
    last = last if isinstance(last, dict) else {}
    success = last.get("success")
    return PrintRecord(
        uploaded=_number(answer.get("date")),
        last_date=_number(last.get("date")),
        last_success=success if isinstance(success, bool) else None,
    )


def folder_files(answer: object) -> list[str]:
    """The paths of the files in a ``GET /api/files/local/<folder>`` answer. Pure.

    Raises ``PayloadError`` when the answer is not a folder listing.
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("children"), list):
        raise PayloadError("folder answer without children")
    return [
        child["path"]
        for child in answer["children"]
        if isinstance(child, dict)
        and isinstance(child.get("path"), str)
        and child.get("type") != "folder"
    ]


# ------------------------------------------------------------------------ to driver events


def farm_state(status: OctoStatus) -> PrinterState:
    """The farm's printer state for an OctoPrint status. Pure.

    No serial link (offline, connecting, an error that closed it, a state we cannot
    read) is OFFLINE: the printer cannot be commanded and nothing is known of a print.
    Operational is IDLE; pausing or paused is PAUSED; every other busy state (starting,
    printing, resuming, cancelling, finishing, a transfer to SD) is PRINTING.
    """
    if status.state is OctoState.OPERATIONAL:
        return PrinterState.IDLE
    if status.state in (OctoState.PAUSING, OctoState.PAUSED):
        return PrinterState.PAUSED
    if status.busy or status.state is OctoState.TRANSFERRING:
        return PrinterState.PRINTING
    return PrinterState.OFFLINE


def status_report(printer_id: str, status: OctoStatus) -> StatusReport:
    """The ``StatusReport`` for an OctoPrint status. Pure.

    Only a busy printer names a job and a progress: an idle one reports progress 0 even
    while OctoPrint still shows the last print at 100 %.
    """
    state = farm_state(status)
    if status.busy:
        return StatusReport(
            printer_id,
            state,
            job_id=status.job_id,
            progress=min(max(status.completion or 0.0, 0.0), 100.0),
            remaining=status.print_time_left,
            message=status.text,
        )
    if state is PrinterState.OFFLINE:
        detail = f": {status.error}" if status.error else ""
        return StatusReport(printer_id, state, message=f"OctoPrint: {status.text}{detail}")
    return StatusReport(printer_id, state, message=status.text)


def ended_outcome(printer_id: str, ended: PrintEnded) -> JobFinished | JobFailed | None:
    """The farm outcome of a ``PrintDone``/``PrintFailed`` for one of our files. Pure."""
    job_id = job_id_of(ended.path) if ended.origin in ("local", "") else None
    if job_id is None:
        return None
    if ended.success:
        return JobFinished(printer_id, job_id)
    if ended.reason == "cancelled":
        return JobFailed(printer_id, job_id, "print cancelled on OctoPrint")
    return JobFailed(printer_id, job_id, f"print failed on OctoPrint: {ended.error or 'error'}")


def finished_in_status(printer_id: str, status: OctoStatus) -> JobFinished | None:
    """``JobFinished`` when OctoPrint is operational with one of our files selected at
    100 % (what it shows after ``PrintDone`` until another file is selected). Pure."""
    job_id = status.job_id
    if (
        job_id is not None
        and status.state is OctoState.OPERATIONAL
        and status.completion is not None
        and status.completion >= 100.0
    ):
        return JobFinished(printer_id, job_id)
    return None


def record_outcome(
    printer_id: str, job_id: str, record: PrintRecord | None
) -> JobFinished | JobFailed | None:
    """The outcome of the last print of a file, if it ran after the file was uploaded
    (an older record belongs to an earlier attempt: the upload replaced its file). Pure."""
    if record is None or record.last_date is None or record.last_success is None:
        return None
    if record.uploaded is not None and record.last_date < record.uploaded:
        return None
    if record.last_success:
        return JobFinished(printer_id, job_id)
    return JobFailed(printer_id, job_id, "print failed or was cancelled on OctoPrint")
