"""The farm console: ``printer.gcode.script`` takes farm commands, not G-code.

Mainsail and Fluidd show a G-code console (and toolhead buttons that send G-code) for
the farm's virtual printer. The farm has no toolhead to move, so the console takes a few
farm commands (``FARM_COMMANDS``; ``printer.gcode.help`` and the ``gcode`` object's
``commands`` list them). Anything else is refused with code 400 and a message the UIs
display: Fluidd shows every 4xx error of a request as a toast, Mainsail shows console
lines starting with ``!!`` (so the refusal is also sent as ``notify_gcode_response``).
A script is checked whole before any of it runs: one unknown line changes nothing.

``printer.emergency_stop`` (and ``M112`` in the console) stops the farm: see
``Owner.emergency_stop``. The controls both UIs show for a ready printer that the
farm cannot honour (print start/pause/resume/cancel, firmware restart, host reboot,
endstop queries) answer 400 with what to do instead, never "Method not found".

Parsing (``parse_script``) is pure; the handlers are thin calls into the farm's owner.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from printfarmd.api.errors import RpcError
from printfarmd.api.moonraker.args import Args
from printfarmd.api.moonraker.rpc import Caller, method
from printfarmd.errors import Conflict, FarmError, NotFound, PrinterCommandFailed
from printfarmd.models import JobState, PrinterState

#: Longest script accepted (a console line; Fluidd's moves are 4 short lines).
MAX_SCRIPT = 4096
#: Longest client label recorded in a reason.
MAX_CLIENT = 64


class FarmCommand(msgspec.Struct, frozen=True):
    help: str
    required: tuple[str, ...] = ()


FARM_COMMANDS: dict[str, FarmCommand] = {
    "HELP": FarmCommand("List the farm console's commands"),
    "STATUS": FarmCommand("Show the farm: dispatch, queue and every printer"),
    "PAUSE": FarmCommand("Pause farm dispatch (prints in progress go on)"),
    "RESUME": FarmCommand("Resume farm dispatch"),
    "CANCEL_PRINT": FarmCommand(
        "Cancel the print of one printer: CANCEL_PRINT PRINTER=<id>", ("PRINTER",)
    ),
    "PAUSE_PRINT": FarmCommand(
        "Pause the print of one printer: PAUSE_PRINT PRINTER=<id>", ("PRINTER",)
    ),
    "RESUME_PRINT": FarmCommand(
        "Resume the paused print of one printer: RESUME_PRINT PRINTER=<id>", ("PRINTER",)
    ),
    "CLEAR": FarmCommand(
        "The plate of a printer is clear (its print is done): CLEAR PRINTER=<id>", ("PRINTER",)
    ),
    "M112": FarmCommand("Emergency stop of the whole farm (as the EMERGENCY STOP button)"),
}

_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)')


class Line(msgspec.Struct, frozen=True):
    """One parsed console line: the command (upper case) and its ``KEY=value`` params
    (keys upper case, values as typed)."""

    command: str
    params: dict[str, str]
    text: str


class ConsoleRefused(Exception):
    """A script the console does not take; ``message`` says why (shown to the user)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _shown(text: str, limit: int = 60) -> str:
    """``text`` safe to echo: control characters escaped, capped."""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def unknown_command_message(word: str) -> str:
    return (
        f"{_shown(word)} is not a farm command: the farm console takes farm commands "
        "(type HELP); send G-code to a printer from that printer's own Mainsail, Fluidd "
        "or console"
    )


def parse_script(script: str) -> list[Line]:
    """The farm commands in ``script`` (one per line; ``;`` starts a comment; blank lines
    skipped). Pure. Raises ``ConsoleRefused`` naming the first line it does not take:
    an unknown command, a missing or unknown parameter."""
    if len(script) > MAX_SCRIPT:
        raise ConsoleRefused(f"a console script is at most {MAX_SCRIPT} characters")
    lines: list[Line] = []
    for raw in script.splitlines():
        text = raw.split(";", 1)[0].strip()
        if not text:
            continue
        word, _, rest = text.partition(" ")
        name = word.upper()
        spec = FARM_COMMANDS.get(name)
        if spec is None:
            raise ConsoleRefused(unknown_command_message(word))
        params: dict[str, str] = {}
        leftover = _PARAM.sub("", rest).strip()
        if leftover:
            raise ConsoleRefused(f"{name}: cannot read {_shown(leftover)!r} (use KEY=value)")
        for key, value in _PARAM.findall(rest):
            params[key.upper()] = value[1:-1] if value.startswith('"') else value
        unknown = sorted(set(params) - set(spec.required))
        if unknown:
            raise ConsoleRefused(f"{name}: unknown parameter {_shown(unknown[0])}")
        missing = [k for k in spec.required if not params.get(k)]
        if missing:
            raise ConsoleRefused(f"{name} needs {missing[0]}=<id>: the farm has many printers")
        lines.append(Line(name, params, text))
    return lines


def client_label(caller: Caller, args: Args | None = None) -> str:
    """Who asked, for reasons and logs: the websocket client's name (from identify) or
    an HTTP request's ``client`` argument, and the peer address."""
    conn = caller.connection
    name = str(getattr(conn, "client_name", "") or "") if conn is not None else ""
    if not name and args is not None and isinstance(args.values.get("client"), str):
        name = str(args.values["client"])
    name = "".join(c for c in name if c.isprintable())[:MAX_CLIENT] or (
        "a websocket client" if conn is not None else "an HTTP client"
    )
    return f"{name} ({caller.peer})" if caller.peer else name


# ---------------------------------------------------------------- the commands


async def _help(caller: Caller, line: Line, who: str) -> list[str]:
    out = ["// Farm console commands (the farm takes no G-code):"]
    out += [f"// {name}: {spec.help}" for name, spec in FARM_COMMANDS.items()]
    return out


async def _status(caller: Caller, line: Line, who: str) -> list[str]:
    sched = caller.facade.svc.owner
    health = sched.health()
    out = [
        f"// Farm: dispatch {'PAUSED' if health.paused else 'running'}; "
        f"{health.queue_depth} queued, {health.printing} printing, "
        f"{health.awaiting_clear} awaiting a plate clear, {health.retry_waiting} "
        "waiting to retry"
    ]
    for p in sched.printer_views():
        job = sched.jobs.get(p.current_job or "")
        what = p.state.value.replace("_", " ")
        if job is not None:
            what += f" {job.filename} (job {job.id}"
            what += f", {p.progress:.0f}%)" if job.state is JobState.PRINTING else ")"
        if p.message:
            what += f": {p.message}"
        out.append(f"// {p.id}: {what}")
    return out


async def _pause(caller: Caller, line: Line, who: str) -> list[str]:
    sched = caller.facade.svc.owner
    if not sched.paused:
        await sched.set_paused(True)
    return ["// Farm dispatch paused (prints in progress go on)"]


async def _resume(caller: Caller, line: Line, who: str) -> list[str]:
    sched = caller.facade.svc.owner
    if sched.paused:
        await sched.set_paused(False)
    return ["// Farm dispatch resumed"]


def _printer(caller: Caller, line: Line) -> Any:
    sched = caller.facade.svc.owner
    pid = line.params["PRINTER"]
    try:
        return sched.printer_view(pid)
    except NotFound:
        known = ", ".join(sorted(sched.printers)) or "none"
        # 400, not 404: over the websocket a 404 becomes "Method not found" (-32601).
        message = f"{line.command}: no printer {_shown(pid)} (printers: {known})"
        raise RpcError(400, message) from None


async def _cancel_print(caller: Caller, line: Line, who: str) -> list[str]:
    sched = caller.facade.svc.owner
    printer = _printer(caller, line)
    job = sched.jobs.get(printer.current_job or "")
    if job is None or job.state is not JobState.PRINTING:
        raise RpcError(400, f"CANCEL_PRINT: {printer.id} is not printing")
    await sched.cancel(job.id, f"cancelled from the farm console by {who}")
    return [f"// Cancelled job {job.id} ({job.filename}) on {printer.id}"]


async def _pause_print(caller: Caller, line: Line, who: str) -> list[str]:
    return await _pause_or_resume(caller, line, pause=True)


async def _resume_print(caller: Caller, line: Line, who: str) -> list[str]:
    return await _pause_or_resume(caller, line, pause=False)


async def _pause_or_resume(caller: Caller, line: Line, *, pause: bool) -> list[str]:
    owner = caller.facade.svc.owner
    printer = _printer(caller, line)
    job = owner.jobs.get(printer.current_job or "")
    if job is None or job.state is not JobState.PRINTING:
        raise RpcError(400, f"{line.command}: {printer.id} is not printing")
    try:
        done = await (owner.pause_job(job.id) if pause else owner.resume_job(job.id))
    except (Conflict, PrinterCommandFailed) as exc:
        raise RpcError(400, f"{line.command}: {exc.message}") from None
    verb = "Paused" if pause else "Resumed"
    return [f"// {verb} job {done.id} ({done.filename}) on {printer.id}"]


async def _clear(caller: Caller, line: Line, who: str) -> list[str]:
    sched = caller.facade.svc.owner
    printer = _printer(caller, line)
    await sched.clear_plate(printer.id, source=f"console ({who})")
    return [f"// Plate of {printer.id} cleared: it can take the next job"]


async def _m112(caller: Caller, line: Line, who: str) -> list[str]:
    # Fluidd sends a console M112 twice: as printer.emergency_stop and as this script
    # (ConsoleBrowser.vue sendCommand). With nothing printing any more there is nothing
    # to stop: one emergency stop, one event.
    sched = caller.facade.svc.owner
    busy = {PrinterState.PRINTING, PrinterState.PAUSED}
    if not sched.health().printing and not any(p.state in busy for p in sched.printer_views()):
        return [
            "// Emergency stop: nothing is printing (farm dispatch is "
            + ("paused)" if sched.paused else "running)")
        ]
    await emergency_stop_farm(caller, who)
    return []


_HANDLERS: dict[str, Callable[[Caller, Line, str], Awaitable[list[str]]]] = {
    "HELP": _help,
    "STATUS": _status,
    "PAUSE": _pause,
    "RESUME": _resume,
    "CANCEL_PRINT": _cancel_print,
    "PAUSE_PRINT": _pause_print,
    "RESUME_PRINT": _resume_print,
    "CLEAR": _clear,
    "M112": _m112,
}


def refuse(caller: Caller, message: str, code: int = 400, *, broadcast: bool = False) -> RpcError:
    """The error for a refused request, after telling the UI as a console error line
    (Mainsail shows only those; Fluidd also shows the 4xx error itself): on every
    console when ``broadcast`` (the farm console's own errors, as Klipper's), else on
    the caller's websocket only (nothing more for an HTTP caller)."""
    if broadcast:
        caller.facade.console(f"!! {message}")
    elif caller.connection is not None:
        caller.facade.console(f"!! {message}", only=caller.connection)
    return RpcError(code, message)


@method("printer.gcode.script", ("POST", "/printer/gcode/script"))
async def gcode_script(caller: Caller, args: Args) -> str:
    script = args.get_str("script")
    facade = caller.facade
    try:
        lines = parse_script(script)
    except ConsoleRefused as exc:
        facade.console(script[:200], kind="command")
        raise refuse(caller, exc.message, broadcast=True) from None
    who = client_label(caller, args)
    for line in lines:
        facade.console(line.text, kind="command")
        try:
            output = await _HANDLERS[line.command](caller, line, who)
        except RpcError as exc:
            raise refuse(caller, exc.message, exc.code, broadcast=True) from None
        except Conflict as exc:
            raise refuse(caller, f"{line.command}: {exc.message}", 409, broadcast=True) from None
        except FarmError as exc:
            code = exc.status if 400 <= exc.status < 500 and exc.status != 404 else 400
            if exc.status >= 500:
                facade.console(f"!! {line.command}: {exc.message}")
                raise
            raise refuse(caller, f"{line.command}: {exc.message}", code, broadcast=True) from None
        for text in output:
            facade.console(text)
    return "ok"


@method("printer.gcode.help", ("GET", "/printer/gcode/help"))
async def gcode_help(caller: Caller, args: Args) -> dict[str, str]:
    return {name: spec.help for name, spec in FARM_COMMANDS.items()}


def gcode_commands() -> dict[str, dict[str, str]]:
    """The ``gcode`` object's ``commands`` (Mainsail's console reads these)."""
    return {name: {"help": spec.help} for name, spec in FARM_COMMANDS.items()}


# ---------------------------------------------------------------- emergency stop


async def emergency_stop_farm(caller: Caller, who: str) -> list[str]:
    """The farm's emergency stop for ``who``, told on every console. Returns the failed
    job ids."""
    facade = caller.facade
    done = await facade.svc.owner.emergency_stop(who)
    stopped = ", ".join(sorted(done.stopped)) or "none"
    text = (
        f"!! EMERGENCY STOP by {who}: farm dispatch paused, {len(done.jobs)} print(s) "
        f"failed; printers stopped: {stopped}"
    )
    if done.unreachable:
        text += f"; NOT REACHED: {', '.join(sorted(done.unreachable))}"
    facade.console(text)
    facade.console("// Check the printers, clear their plates (CLEAR PRINTER=<id>), then RESUME")
    return list(done.jobs)


@method("printer.emergency_stop", ("POST", "/printer/emergency_stop"))
async def emergency_stop(caller: Caller, args: Args) -> str:
    await emergency_stop_farm(caller, client_label(caller, args))
    return "ok"


# ---------------------------------------------------------------- visible refusals

_PRINTS_FROM_QUEUE = (
    "the farm prints from its job queue: add the file to the queue and the farm "
    "starts it on a free printer"
)
_NO_PRINT_HERE = (
    "the farm's virtual printer never prints itself: to stop one printer's print use "
    "CANCEL_PRINT PRINTER=<id> in the console, or that printer's own UI"
)
_NO_FIRMWARE = (
    "the farm's virtual printer has no firmware to restart: restart a printer from its "
    "own UI; after an emergency stop, RESUME resumes the farm"
)
_NO_HOST = "printfarmd does not reboot or shut down its host from a UI: do it on the host"
_NO_SERVICES = (
    "printfarmd does not restart services from a UI: on the host, "
    "`systemctl restart printfarmd` restarts the farm"
)
_FILES_ONLY = (
    "the farm's file manager uploads, downloads and deletes files: rename, copy, zip and "
    "folders on the farm's disk (the gcodes folder)"
)

REFUSED: dict[str, tuple[tuple[str, str], str]] = {
    "printer.print.start": (("POST", "/printer/print/start"), _PRINTS_FROM_QUEUE),
    "printer.print.pause": (("POST", "/printer/print/pause"), _NO_PRINT_HERE),
    "printer.print.resume": (("POST", "/printer/print/resume"), _NO_PRINT_HERE),
    "printer.print.cancel": (("POST", "/printer/print/cancel"), _NO_PRINT_HERE),
    "printer.restart": (("POST", "/printer/restart"), _NO_FIRMWARE),
    "printer.firmware_restart": (("POST", "/printer/firmware_restart"), _NO_FIRMWARE),
    "printer.query_endstops.status": (
        ("GET", "/printer/query_endstops/status"),
        "the farm's virtual printer has no endstops: query a printer from its own UI",
    ),
    "machine.reboot": (("POST", "/machine/reboot"), _NO_HOST),
    "machine.shutdown": (("POST", "/machine/shutdown"), _NO_HOST),
    "server.restart": (("POST", "/server/restart"), _NO_SERVICES),
    "machine.services.restart": (("POST", "/machine/services/restart"), _NO_SERVICES),
    "machine.services.start": (("POST", "/machine/services/start"), _NO_SERVICES),
    "machine.services.stop": (("POST", "/machine/services/stop"), _NO_SERVICES),
    # Mainsail's and Fluidd's file managers (rename, duplicate, zip, folders).
    "server.files.move": (("POST", "/server/files/move"), _FILES_ONLY),
    "server.files.copy": (("POST", "/server/files/copy"), _FILES_ONLY),
    "server.files.zip": (("POST", "/server/files/zip"), _FILES_ONLY),
    "server.files.post_directory": (("POST", "/server/files/directory"), _FILES_ONLY),
    "server.files.delete_directory": (("DELETE", "/server/files/directory"), _FILES_ONLY),
}


def _refusal(message: str) -> Callable[[Caller, Args], Awaitable[Any]]:
    async def handler(caller: Caller, args: Args) -> Any:
        raise refuse(caller, message)

    return handler


for _name, (_route, _message) in REFUSED.items():
    method(_name, _route)(_refusal(_message))
