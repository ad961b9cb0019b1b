"""Pure parsing of Bambu Lab printers' LAN-mode MQTT reports, and the requests we send.

No I/O and no trio: ``bambu.py`` feeds these functions what arrives on
``device/<serial>/report`` and publishes what they build on ``device/<serial>/request``.
The payloads follow the community's public protocol documentation, the OpenBambuAPI
project (github.com/Doridian/OpenBambuAPI, ``mqtt.md``: ``pushing.pushall``,
``print.push_status``, ``print.project_file``/``gcode_file``/``gcode_line``,
``pause``/``resume``/``stop``; ``ftp.md``: implicit FTPS on 990), and the state names
and HMS code layout the ha-bambulab integration documents (``gcode_state`` IDLE,
PREPARE, RUNNING, PAUSE, FINISH, FAILED, SLICING, INIT, OFFLINE, UNKNOWN).

Reports are merged, not replaced: the P1 and A1 series send only the fields that
changed since their last report (the X1 series sends everything each time), and a
``pushing.pushall`` asks for everything. A status is *complete* once a report carried
``gcode_state`` and ``gcode_file`` (a full report) since the link came up; until then
nothing is reported, let alone decided.

Everything a printer sends is untrusted: a payload that is not a JSON object raises
``BambuPayloadError``; a field of the wrong type is skipped and named in the returned
problems while the rest applies.

Jobs are recognised by file name: the driver uploads a job as
``printfarmd/<job id>--<name>`` and names the print (``subtask_name``)
``<job id>--<name>``, so ``gcode_file``/``subtask_name`` tell which job a printer works
on, even after a restart of either side.
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

#: Folder on the printer's SD card the driver uploads jobs into.
UPLOAD_DIR = "printfarmd"
#: Where the SD card is mounted, as ``print.gcode_file`` wants the path.
SDCARD_ROOT = "/sdcard"
#: A farm job id in a file or task name: 16 upper-case hex digits, then ``--``.
_JOB_RE = re.compile(r"(?:^|/)([0-9A-F]{16})--[^/]*$")
_SAFE_NAME_RE = re.compile(r"[^0-9A-Za-z._-]+")
_COLOUR_RE = re.compile(r"[0-9A-Fa-f]{6}(?:[0-9A-Fa-f]{2})?")
#: ``print_error`` of a print stopped with ``print.stop`` (or on the screen).
PRINT_CANCELLED = 0x0300400C
#: ``tray_now`` values: no filament loaded; the external spool (``vt_tray``).
TRAY_NONE = "255"
TRAY_EXTERNAL = "254"


class BambuPayloadError(ValueError):
    """A report that is not a JSON object; ``str(exc)`` says why (safe to log)."""


class GcodeState(enum.StrEnum):
    IDLE = "IDLE"
    PREPARE = "PREPARE"
    RUNNING = "RUNNING"
    PAUSE = "PAUSE"
    FINISH = "FINISH"
    FAILED = "FAILED"
    SLICING = "SLICING"
    INIT = "INIT"
    OFFLINE = "OFFLINE"
    UNKNOWN = "UNKNOWN"


#: States in which the printer works on a print (accepted, preparing or printing).
WORKING = frozenset({GcodeState.PREPARE, GcodeState.RUNNING, GcodeState.SLICING, GcodeState.INIT})

_HMS_SEVERITY = {1: "fatal", 2: "serious", 3: "common", 4: "info"}


class Hms(msgspec.Struct, frozen=True):
    """One Health Management System message: ``attr`` and ``code`` as the printer sends
    them; ``text`` is the code as Bambu's wiki writes it (``0300_0100_0001_0007``)."""

    attr: int
    code: int

    @property
    def text(self) -> str:
        a, c = self.attr & 0xFFFFFFFF, self.code & 0xFFFFFFFF
        return f"{a >> 16:04X}_{a & 0xFFFF:04X}_{c >> 16:04X}_{c & 0xFFFF:04X}"

    @property
    def severity(self) -> str:
        return _HMS_SEVERITY.get((self.code & 0xFFFFFFFF) >> 16, "unknown")


class Tray(msgspec.Struct, frozen=True):
    """One filament slot: ``unit`` is the AMS index (``None`` for the external spool),
    ``slot`` the tray index in it; ``material`` upper-case, ``colour`` ``#RRGGBB``
    (``""`` if unknown); an empty slot has ``material == ""``."""

    unit: int | None
    slot: int
    material: str
    colour: str


class CommandReply(msgspec.Struct, frozen=True):
    """A printer's answer to one of our requests (``result`` upper-cased)."""

    command: str
    sequence_id: str
    result: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.result == "SUCCESS"


class BambuStatus(msgspec.Struct, frozen=True):
    """What the driver knows of one printer, merged from its reports since the link
    came up. ``percent`` is 0..100, ``remaining_minutes`` as the printer says."""

    complete: bool = False
    gcode_state: GcodeState | None = None
    gcode_file: str = ""
    subtask_name: str = ""
    percent: float = 0.0
    remaining_minutes: float | None = None
    print_error: int = 0
    hms: tuple[Hms, ...] = ()
    trays: tuple[Tray, ...] = ()
    external: Tray | None = None
    tray_now: str = TRAY_NONE

    @property
    def job_id(self) -> str | None:
        """The farm job the printer's current (or last) print belongs to, if any."""
        return job_id_of(self.gcode_file) or job_id_of(self.subtask_name)


# ------------------------------------------------------------------ file names


def upload_name(job_id: str, filename: str) -> str:
    """The SD-card path (relative to its root) a job's file is uploaded under. Pure."""
    base = filename.rsplit("/", 1)[-1]
    safe = _SAFE_NAME_RE.sub("_", base).strip("._") or "job.gcode"
    return f"{UPLOAD_DIR}/{job_id}--{safe}"


def job_id_of(name: str) -> str | None:
    """The job id in a name made by ``upload_name`` (or a task name ``<id>--...``)."""
    match = _JOB_RE.search(name.strip())
    return match.group(1) if match else None


def is_project(name: str) -> bool:
    """Whether ``name`` is a 3MF project (printed with ``project_file``)."""
    return name.lower().endswith(".3mf")


# ------------------------------------------------------------------ reports


def parse_report(payload: bytes) -> dict[str, Any]:
    """The JSON object of one report. Pure. Raises ``BambuPayloadError``."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BambuPayloadError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BambuPayloadError(f"expected a JSON object, got {type(data).__name__}")
    return data


def command_reply(data: Mapping[str, Any]) -> CommandReply | None:
    """The answer to a request carried by a report, if it is one (it has a ``result``
    and a ``sequence_id``). Pure."""
    for section in data.values():
        if not isinstance(section, dict) or "result" not in section:
            continue
        command, seq, result = (
            section.get("command"),
            section.get("sequence_id"),
            section.get("result"),
        )
        if isinstance(command, str) and isinstance(seq, str | int) and isinstance(result, str):
            reason = section.get("reason")
            return CommandReply(
                command, str(seq), result.upper(), reason if isinstance(reason, str) else ""
            )
    return None


def _int(value: object) -> int | None:
    """An integer from a number or a decimal string (Bambu sends both)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,12}", value.strip()):
        return int(value.strip())
    return None


def _float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if number == number and abs(number) != float("inf") else None
    return None


def _colour(value: object) -> str:
    """``"FF8000FF"`` (RRGGBBAA) -> ``"#FF8000"``; ``""`` when not a colour."""
    if not isinstance(value, str) or not _COLOUR_RE.fullmatch(value.strip()):
        return ""
    return "#" + value.strip()[:6].upper()


def _tray(unit: int | None, raw: Mapping[str, Any], problems: list[str]) -> Tray | None:
    slot = _int(raw.get("id"))
    if slot is None:
        problems.append(f"tray without a usable id: {raw.get('id')!r}")
        return None
    material = raw.get("tray_type", "")
    if not isinstance(material, str):
        problems.append(f"tray {slot}: tray_type is not a string")
        material = ""
    return Tray(unit, slot, material.strip().upper(), _colour(raw.get("tray_color")))


def apply_report(status: BambuStatus, data: Mapping[str, Any]) -> tuple[BambuStatus, list[str]]:
    """Merge one report (its ``print`` object) into ``status``. Pure.

    Returns the new status and the problems (fields skipped because of a wrong type or
    an unknown value); a report without a ``print`` object changes nothing.
    """
    problems: list[str] = []
    section = data.get("print")
    if section is None:
        return status, problems
    if not isinstance(section, dict):
        return status, [f"print: expected an object, got {type(section).__name__}"]
    if section.get("command", "push_status") != "push_status":
        # An answer to a request echoes its parameters (a task name, a file): they are
        # what we asked for, not what the printer does.
        return status, problems
    changes: dict[str, Any] = {}

    if "gcode_state" in section:
        raw = section["gcode_state"]
        try:
            changes["gcode_state"] = GcodeState(raw.strip().upper())
        except (AttributeError, ValueError):
            problems.append(f"gcode_state: unknown value {raw!r}")
    for key in ("gcode_file", "subtask_name"):
        if key in section:
            if isinstance(section[key], str):
                changes[key] = section[key]
            else:
                problems.append(f"{key}: expected a string")
    if "mc_percent" in section:
        percent = _float(section["mc_percent"])
        if percent is None or not 0 <= percent <= 100:
            problems.append(f"mc_percent: unusable value {section['mc_percent']!r}")
        else:
            changes["percent"] = percent
    if "mc_remaining_time" in section:
        minutes = _float(section["mc_remaining_time"])
        if minutes is None or minutes < 0:
            problems.append(f"mc_remaining_time: unusable value {section['mc_remaining_time']!r}")
        else:
            changes["remaining_minutes"] = minutes
    if "print_error" in section:
        code = _int(section["print_error"])
        if code is None:
            problems.append(f"print_error: unusable value {section['print_error']!r}")
        else:
            changes["print_error"] = code
    if "hms" in section:
        raw_hms = section["hms"]
        if not isinstance(raw_hms, list):
            problems.append("hms: expected a list")
        else:
            hms = []
            for item in raw_hms:
                attr = _int(item.get("attr")) if isinstance(item, dict) else None
                code = _int(item.get("code")) if isinstance(item, dict) else None
                if attr is None or code is None:
                    problems.append(f"hms: unusable entry {item!r}")
                else:
                    hms.append(Hms(attr, code))
            changes["hms"] = tuple(hms)
    if "ams" in section:
        _apply_ams(section["ams"], changes, problems)
    if "vt_tray" in section:
        raw_vt = section["vt_tray"]
        if isinstance(raw_vt, dict):
            changes["external"] = _tray(None, {"id": TRAY_EXTERNAL, **raw_vt}, problems)
        else:
            problems.append("vt_tray: expected an object")

    new = msgspec.structs.replace(status, **changes)
    if not new.complete and "gcode_state" in changes and "gcode_file" in section:
        new = msgspec.structs.replace(new, complete=True)
    return new, problems


def _apply_ams(raw: object, changes: dict[str, Any], problems: list[str]) -> None:
    """``ams``: ``tray_now`` (the active slot) and, when present, the whole unit list
    (a report that carries ``ams.ams`` carries every unit and tray)."""
    if not isinstance(raw, dict):
        problems.append("ams: expected an object")
        return
    if "tray_now" in raw:
        now = _int(raw["tray_now"])
        if now is None:
            problems.append(f"ams.tray_now: unusable value {raw['tray_now']!r}")
        else:
            changes["tray_now"] = str(now)
    if "ams" not in raw:
        return
    units = raw["ams"]
    if not isinstance(units, list):
        problems.append("ams.ams: expected a list")
        return
    trays: list[Tray] = []
    for unit_raw in units:
        unit = _int(unit_raw.get("id")) if isinstance(unit_raw, dict) else None
        if unit is None or not isinstance(unit_raw, dict):
            problems.append(f"ams.ams: unusable unit {unit_raw!r}"[:200])
            continue
        tray_list = unit_raw.get("tray", [])
        if not isinstance(tray_list, list):
            problems.append(f"ams unit {unit}: tray is not a list")
            continue
        for tray_raw in tray_list:
            if not isinstance(tray_raw, dict):
                problems.append(f"ams unit {unit}: tray entry is not an object")
                continue
            tray = _tray(unit, tray_raw, problems)
            if tray is not None:
                trays.append(tray)
    changes["trays"] = tuple(trays)


# ------------------------------------------------------------------ to driver events


def _active(status: BambuStatus) -> Tray | None:
    if status.tray_now == TRAY_EXTERNAL:
        return status.external
    now = _int(status.tray_now)
    if now is None or now < 0 or str(now) == TRAY_NONE:
        return None
    for tray in status.trays:
        if tray.unit is not None and tray.unit * 4 + tray.slot == now:
            return tray
    return None


def materials(status: BambuStatus) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(materials, colours) loaded now, index-aligned, the active one first; empty
    slots left out. AMS trays in unit and slot order, then the external spool. Pure."""
    loaded = [t for t in (*status.trays, status.external) if t is not None and t.material]
    active = _active(status)
    if active is not None and active in loaded:
        loaded.remove(active)
        loaded.insert(0, active)
    return tuple(t.material for t in loaded), tuple(t.colour for t in loaded)


def farm_state(status: BambuStatus) -> PrinterState:
    """The farm's printer state. Pure.

    Not complete (no full report since the link came up), OFFLINE or UNKNOWN: OFFLINE.
    PREPARE/SLICING/INIT/RUNNING: PRINTING; PAUSE: PAUSED; IDLE, FINISH and FAILED:
    IDLE (the outcome goes with it) unless a fatal HMS message is up: ERROR.
    """
    state = status.gcode_state
    if not status.complete or state in (None, GcodeState.OFFLINE, GcodeState.UNKNOWN):
        return PrinterState.OFFLINE
    if state in WORKING:
        return PrinterState.PRINTING
    if state is GcodeState.PAUSE:
        return PrinterState.PAUSED
    if any(h.severity == "fatal" for h in status.hms):
        return PrinterState.ERROR
    return PrinterState.IDLE


def print_error_text(code: int) -> str:
    """``0x0300400C`` -> ``"0300_400C"`` (how Bambu's wiki writes print errors). Pure."""
    text = f"{code & 0xFFFFFFFF:08X}"
    return f"{text[:4]}_{text[4:]}"


def describe_errors(status: BambuStatus) -> str:
    """The printer's error codes in words for an operator (``""`` if none). Pure."""
    parts = []
    if status.print_error:
        label = "cancelled" if status.print_error == PRINT_CANCELLED else "print error"
        parts.append(f"{label} {print_error_text(status.print_error)}")
    parts += [f"HMS {h.text} ({h.severity})" for h in status.hms]
    return "; ".join(parts)


def status_report(printer_id: str, status: BambuStatus) -> StatusReport:
    """The ``StatusReport`` for a Bambu status. Pure.

    Progress and time left (``mc_remaining_time`` is in minutes) only while a print is
    on; an idle or finished printer shows 0.
    """
    state = farm_state(status)
    busy = state in (PrinterState.PRINTING, PrinterState.PAUSED)
    errors = describe_errors(status)
    if not status.complete:
        message = "no full report from the printer yet"
    elif state is PrinterState.OFFLINE:
        message = f"printer says {status.gcode_state.value if status.gcode_state else '?'}"
    elif status.gcode_state in (GcodeState.PREPARE, GcodeState.SLICING, GcodeState.INIT):
        message = f"{status.gcode_state.value.lower()}" + (f": {errors}" if errors else "")
    elif status.gcode_state is GcodeState.FAILED:
        message = f"last print failed: {errors or 'no reason given'}"
    else:
        message = errors
    remaining = None
    if busy and status.remaining_minutes is not None:
        remaining = status.remaining_minutes * 60.0
    return StatusReport(
        printer_id,
        state,
        job_id=status.job_id if busy else None,
        progress=status.percent if busy else 0.0,
        remaining=remaining,
        message=message,
    )


def outcome(printer_id: str, status: BambuStatus) -> JobFinished | JobFailed | None:
    """The end of one of our jobs that ``status`` shows, if any. Pure.

    FINISH -> ``JobFinished``; FAILED -> ``JobFailed`` with the printer's error codes.
    A finished printer keeps saying FINISH until the next print: the caller sends each
    outcome once.
    """
    job_id = status.job_id
    if not status.complete or job_id is None:
        return None
    if status.gcode_state is GcodeState.FINISH:
        return JobFinished(printer_id, job_id)
    if status.gcode_state is GcodeState.FAILED:
        reason = describe_errors(status) or "the print failed on the printer"
        return JobFailed(printer_id, job_id, f"bambu: {reason}")
    return None


# ------------------------------------------------------------------ requests


def pushall(seq: int) -> bytes:
    """``pushing.pushall``: ask for a full report."""
    return orjson.dumps(
        {"pushing": {"sequence_id": str(seq), "command": "pushall", "version": 1, "push_target": 1}}
    )


def print_command(seq: int, command: str) -> bytes:
    """``print.pause`` / ``print.resume`` / ``print.stop``."""
    return orjson.dumps({"print": {"sequence_id": str(seq), "command": command, "param": ""}})


def gcode_line(seq: int, script: str) -> bytes:
    """``print.gcode_line``: run G-code (lines separated by ``\\n``)."""
    param = script if script.endswith("\n") else script + "\n"
    return orjson.dumps(
        {"print": {"sequence_id": str(seq), "command": "gcode_line", "param": param}}
    )


def start_request(seq: int, job_id: str, name: str, *, use_ams: bool) -> bytes:
    """Start the uploaded file ``name`` (relative to the SD root): a 3MF with
    ``print.project_file`` (its first plate), G-code with ``print.gcode_file``."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    # The task name shows on the printer's screen and comes back in its reports.
    task = stem if job_id_of(stem) == job_id else f"{job_id}--{stem}"
    if is_project(name):
        body: dict[str, Any] = {
            "sequence_id": str(seq),
            "command": "project_file",
            "param": "Metadata/plate_1.gcode",
            "project_id": "0",
            "profile_id": "0",
            "task_id": "0",
            "subtask_id": "0",
            "subtask_name": task,
            "file": name,
            "url": f"ftp:///{name}",
            "md5": "",
            "timelapse": False,
            "bed_type": "auto",
            "bed_levelling": True,
            "flow_cali": False,
            "vibration_cali": False,
            "layer_inspect": False,
            "ams_mapping": "",
            "use_ams": use_ams,
        }
    else:
        body = {
            "sequence_id": str(seq),
            "command": "gcode_file",
            "param": f"{SDCARD_ROOT}/{name}",
            "subtask_name": task,
        }
    return orjson.dumps({"print": body})
