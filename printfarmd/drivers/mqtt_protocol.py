"""The MQTT job-handler protocol (``/work/shared/seeds/mqtt-job-handler.md``), pure.

Parsing and building of every payload, topic templates, and ``PrinterTracker``: the
per-printer logic that turns progress messages into driver reports and filters
repeats (QoS 1 redeliveries, periodic re-reports) so a job finishes or fails once.
No I/O, no trio: tested with recorded payloads in ``tests/data/mqtt/``.

Messages (JSON objects, camelCase keys as in the seed):

- ``device/printer/<id>/progress`` (printer -> farm): ``printerId``, ``jobId``,
  ``status`` (``idle``/``printing``/``paused``/``error``/``offline``), ``progress``
  (0..100), ``timestamp``; optional ``message``.
- ``device/printer/<id>/assignement`` (farm -> printer): ``jobId``, ``modelUrl``,
  ``filamentType``, ``estimatedTime``, ``priority``, ``assignedAt``, ``parameters``,
  plus ``resumeProgress`` (0..100; a retried job may continue from there).
- ``device/printer/<id>/command`` (farm -> printer, not in the seed): ``command``
  (``cancel``/``pause``/``resume``/``gcode``/``emergency_stop``), ``jobId``, ``script``.
  ``emergency_stop`` (``jobId`` null) stops whatever the printer does at once.
- ``device/printers`` (farm -> robots): ``printerId``, ``jobId``, ``status``
  (``idle``), ``progress`` (100), ``timestamp``: this plate needs clearing.
- ``device/robot/<id>/progress`` (robot -> farm): ``robotId``, ``printerId``,
  ``action``, ``status`` (``completed`` means the plate is clear), ``timestamp``.
"""

from __future__ import annotations

import collections
import datetime
import enum
import re
from typing import Any

import attrs
import msgspec
import orjson

from printfarmd.drivers.base import (
    DriverEvent,
    JobFailed,
    JobFinished,
    JobSpec,
    StatusReport,
)
from printfarmd.models import PrinterState

#: How many finished/failed job ids a tracker remembers to recognise repeats.
REMEMBERED_JOBS = 64
#: A report older than the newest by less than this is a stale redelivery (dropped); by
#: more, the printer's clock went back and the report is taken.
CLOCK_RESET = datetime.timedelta(minutes=10)
_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ProtocolError(ValueError):
    """A payload that does not follow the protocol; ``str(exc)`` says why."""


class DeviceStatus(enum.StrEnum):
    IDLE = "idle"
    PRINTING = "printing"
    PAUSED = "paused"
    ERROR = "error"
    OFFLINE = "offline"


class Command(enum.StrEnum):
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    GCODE = "gcode"
    #: Stop whatever the printer does at once (the seed has no such command: ours).
    EMERGENCY_STOP = "emergency_stop"


def for_id(template: str, device_id: str) -> str:
    """The topic of ``template`` for one printer or robot."""
    return template.replace("{id}", device_id)


def topic_filter(template: str) -> str:
    """The subscription filter of a template: ``{id}`` becomes ``+``."""
    return template.replace("{id}", "+")


def match_topic(template: str, topic: str) -> str | None:
    """The id in ``topic`` if it matches ``template``, else ``None``."""
    head, sep, tail = template.partition("{id}")
    if not sep:
        return None
    if not (topic.startswith(head) and topic.endswith(tail)) or len(topic) <= len(head + tail):
        return None
    device_id = topic[len(head) : len(topic) - len(tail)]
    return device_id if _ID_RE.fullmatch(device_id) else None


class PrinterProgress(msgspec.Struct, frozen=True):
    printer_id: str
    status: DeviceStatus
    job_id: str | None = None
    progress: float = 0.0
    timestamp: datetime.datetime | None = None
    message: str = ""


class RobotProgress(msgspec.Struct, frozen=True):
    robot_id: str
    printer_id: str
    action: str
    status: str
    timestamp: datetime.datetime | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


class Assignment(msgspec.Struct, frozen=True):
    job_id: str
    model_url: str
    filament_type: str | None
    estimated_time: float | None
    priority: int
    assigned_at: str
    parameters: dict[str, Any]
    resume_progress: float = 0.0


class PrinterCommand(msgspec.Struct, frozen=True):
    command: Command
    job_id: str | None = None
    script: str = ""


# ------------------------------------------------------------------ field helpers


def _object(payload: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("expected a JSON object")
    return data


def _str(data: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"{key}: required")
        return None
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{key}: expected a non-empty string")
    return value


def _number(data: dict[str, Any], key: str, *, required: bool = True) -> float | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"{key}: required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{key}: expected a number")
    return float(value)


def parse_timestamp(text: str | None) -> datetime.datetime | None:
    """An ISO 8601 time (``Z`` allowed), as aware UTC; ``None`` if absent or unreadable."""
    if text is None:
        return None
    try:
        ts = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=datetime.UTC)
    return ts


def format_timestamp(now: float) -> str:
    """UTC Unix seconds as the seed writes times: ``2025-06-15T08:30:00.123Z``."""
    ts = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_id(value: str, key: str) -> str:
    if _ID_RE.fullmatch(value) is None:
        raise ProtocolError(f"{key}: not a valid id")
    return value


# ------------------------------------------------------------------ printer -> farm


def parse_printer_progress(payload: bytes, topic_id: str) -> PrinterProgress:
    """Parse a ``device/printer/<topic_id>/progress`` message. Raises ``ProtocolError``.

    ``printerId`` is optional but must equal the topic's id when present; ``jobId`` is
    required while printing or paused.
    """
    data = _object(payload)
    printer_id = _str(data, "printerId", required=False)
    if printer_id is not None and printer_id != topic_id:
        raise ProtocolError(f"printerId {printer_id!r} does not match the topic's {topic_id!r}")
    raw_status = _str(data, "status")
    try:
        status = DeviceStatus(str(raw_status).lower())
    except ValueError:
        raise ProtocolError(f"status: unknown value {raw_status!r}") from None
    job_id = _str(data, "jobId", required=False)
    if job_id is not None:
        _check_id(job_id, "jobId")
    if job_id is None and status in (DeviceStatus.PRINTING, DeviceStatus.PAUSED):
        raise ProtocolError(f"jobId: required when status is {status.value}")
    progress = _number(data, "progress", required=status is DeviceStatus.PRINTING) or 0.0
    if not 0.0 <= progress <= 100.0:
        raise ProtocolError("progress: must be between 0 and 100")
    message = data.get("message")
    return PrinterProgress(
        printer_id=topic_id,
        status=status,
        job_id=job_id,
        progress=progress,
        timestamp=parse_timestamp(_str(data, "timestamp", required=False)),
        message=message if isinstance(message, str) else "",
    )


def build_printer_progress(
    printer_id: str,
    status: DeviceStatus,
    job_id: str | None,
    progress: float,
    now: float,
    message: str = "",
) -> bytes:
    data: dict[str, Any] = {
        "printerId": printer_id,
        "jobId": job_id,
        "status": status.value,
        "progress": round(progress, 2),
        "timestamp": format_timestamp(now),
    }
    if message:
        data["message"] = message
    return orjson.dumps(data)


# ------------------------------------------------------------------ robots


def parse_robot_progress(payload: bytes, topic_id: str) -> RobotProgress:
    """Parse a ``device/robot/<topic_id>/progress`` message. Raises ``ProtocolError``."""
    data = _object(payload)
    robot_id = _str(data, "robotId", required=False) or topic_id
    if robot_id != topic_id:
        raise ProtocolError(f"robotId {robot_id!r} does not match the topic's {topic_id!r}")
    printer_id = _check_id(str(_str(data, "printerId")), "printerId")
    return RobotProgress(
        robot_id=robot_id,
        printer_id=printer_id,
        action=_str(data, "action", required=False) or "",
        status=str(_str(data, "status")).lower(),
        timestamp=parse_timestamp(_str(data, "timestamp", required=False)),
    )


def build_robot_progress(
    robot_id: str, printer_id: str, action: str, status: str, now: float
) -> bytes:
    return orjson.dumps(
        {
            "robotId": robot_id,
            "printerId": printer_id,
            "action": action,
            "status": status,
            "timestamp": format_timestamp(now),
        }
    )


def build_announcement(printer_id: str, job_id: str | None, now: float) -> bytes:
    """The ``device/printers`` message: ``printer_id`` finished and needs its plate cleared."""
    return orjson.dumps(
        {
            "printerId": printer_id,
            "jobId": job_id,
            "status": DeviceStatus.IDLE.value,
            "progress": 100,
            "timestamp": format_timestamp(now),
        }
    )


def parse_announcement(payload: bytes) -> tuple[str, str | None]:
    """(printer id, job id) of a ``device/printers`` message. Raises ``ProtocolError``."""
    data = _object(payload)
    printer_id = _check_id(str(_str(data, "printerId")), "printerId")
    return printer_id, _str(data, "jobId", required=False)


# ------------------------------------------------------------------ farm -> printer


def build_assignment(job: JobSpec, *, model_url: str, now: float) -> bytes:
    """The seed's assignment payload for ``job`` (plus ``resumeProgress``).

    ``priority`` is the job's; ``parameters`` are ``job.parameters`` (the spec's
    ``layerHeight``, ``infill``, ``nozzleTemp``, ``bedTemp``), whole numbers written as
    integers as in the spec's example (``"infill": 20``).
    """
    return orjson.dumps(
        {
            "jobId": job.job_id,
            "modelUrl": model_url,
            "filamentType": job.material,
            "estimatedTime": job.estimated_time,
            "priority": job.priority,
            "assignedAt": format_timestamp(now),
            "parameters": {k: _json_number(v) for k, v in job.parameters.items()},
            "resumeProgress": job.resume_progress,
        }
    )


def _json_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def parse_assignment(payload: bytes) -> Assignment:
    """Parse an assignment (what a printer, e.g. the simulator, receives)."""
    data = _object(payload)
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("parameters: expected an object")
    priority = _number(data, "priority", required=False) or 0.0
    return Assignment(
        job_id=_check_id(str(_str(data, "jobId")), "jobId"),
        model_url=str(_str(data, "modelUrl")),
        filament_type=_str(data, "filamentType", required=False),
        estimated_time=_number(data, "estimatedTime", required=False),
        priority=int(priority),
        assigned_at=_str(data, "assignedAt", required=False) or "",
        parameters=params,
        resume_progress=_number(data, "resumeProgress", required=False) or 0.0,
    )


def build_command(command: Command, job_id: str | None = None, script: str = "") -> bytes:
    data: dict[str, Any] = {"command": command.value, "jobId": job_id}
    if script:
        data["script"] = script
    return orjson.dumps(data)


def parse_command(payload: bytes) -> PrinterCommand:
    data = _object(payload)
    raw = _str(data, "command")
    try:
        command = Command(str(raw))
    except ValueError:
        raise ProtocolError(f"command: unknown value {raw!r}") from None
    script = data.get("script")
    return PrinterCommand(
        command,
        _str(data, "jobId", required=False),
        script if isinstance(script, str) else "",
    )


# ------------------------------------------------------------------ per-printer logic


_STATES = {
    DeviceStatus.IDLE: PrinterState.IDLE,
    DeviceStatus.PRINTING: PrinterState.PRINTING,
    DeviceStatus.PAUSED: PrinterState.PAUSED,
    DeviceStatus.ERROR: PrinterState.ERROR,
    DeviceStatus.OFFLINE: PrinterState.OFFLINE,
}


@attrs.define
class PrinterTracker:
    """Turns one printer's progress messages into driver reports, at most once per outcome.

    A message older than the newest one seen (by ``timestamp``, by less than
    ``CLOCK_RESET``) is dropped: a QoS 1 redelivery must not take a printer back in
    time. ``idle`` at ``progress`` 100 with a ``jobId`` means that job finished;
    ``error`` with a ``jobId`` means it failed. Each job finishes or fails at most once,
    however often the printer repeats itself.
    """

    printer_id: str
    last: PrinterProgress | None = None
    _newest: datetime.datetime | None = None
    _done: collections.deque[str] = attrs.field(
        factory=lambda: collections.deque(maxlen=REMEMBERED_JOBS)
    )

    def is_done(self, job_id: str) -> bool:
        return job_id in self._done

    def feed(self, msg: PrinterProgress) -> list[DriverEvent]:
        """The reports ``msg`` implies (empty for a stale repeat). Pure apart from self."""
        if msg.timestamp is not None:
            newest = self._newest
            if newest is not None and newest - CLOCK_RESET < msg.timestamp < newest:
                return []
            # Far older than the newest: the printer's clock was reset (a reboot without
            # a real-time clock), not a redelivery; start again from this one.
            self._newest = msg.timestamp
        self.last = msg
        pid = self.printer_id
        job = msg.job_id
        if msg.status is DeviceStatus.IDLE and job is not None and msg.progress >= 100.0:
            if job in self._done:
                return [StatusReport(pid, PrinterState.IDLE, message=msg.message)]
            self._done.append(job)
            return [
                StatusReport(pid, PrinterState.PRINTING, job, 100.0, remaining=0.0),
                JobFinished(pid, job),
                StatusReport(pid, PrinterState.IDLE, message=msg.message),
            ]
        if msg.status is DeviceStatus.ERROR:
            events: list[DriverEvent] = []
            if job is not None and job not in self._done:
                self._done.append(job)
                events.append(JobFailed(pid, job, msg.message or "the printer reports an error"))
            events.append(StatusReport(pid, PrinterState.ERROR, message=msg.message))
            return events
        if msg.status in (DeviceStatus.PRINTING, DeviceStatus.PAUSED):
            if job is not None and job in self._done:
                return []  # a late report about a job that already ended
            return [StatusReport(pid, _STATES[msg.status], job, msg.progress, message=msg.message)]
        if msg.status is DeviceStatus.IDLE:
            return [StatusReport(pid, PrinterState.IDLE, message=msg.message)]
        return [StatusReport(pid, PrinterState.OFFLINE, message=msg.message)]

    def current(self) -> StatusReport | None:
        """The status implied by the last message (``None`` before any). No side effects."""
        msg = self.last
        if msg is None:
            return None
        ended = msg.job_id is not None and msg.job_id in self._done
        if msg.status is DeviceStatus.IDLE or (ended and msg.status is not DeviceStatus.ERROR):
            return StatusReport(self.printer_id, PrinterState.IDLE, message=msg.message)
        job = None if ended else msg.job_id
        return StatusReport(
            self.printer_id, _STATES[msg.status], job, msg.progress, message=msg.message
        )
