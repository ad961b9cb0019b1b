"""The ``printfarmd`` command: run the daemon, write and check configs, talk to the daemon.

Exit codes: 0 success; 1 a runtime failure (daemon unreachable, API error, file exists);
2 a usage or configuration error. Errors are printed as ``error: <message>`` on stderr,
never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from printfarmd import __version__, heap
from printfarmd.api.auth import hash_key, new_key
from printfarmd.cli_client import (
    ENV_API_KEY,
    ENV_CONFIG,
    ENV_URL,
    LOCAL_CONFIG_NAME,
    SYSTEM_CONFIG,
    ClientError,
    FarmClient,
    default_config_path,
    resolve_endpoint,
)
from printfarmd.config import load_config, starter_config
from printfarmd.errors import ConfigError, FarmError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
else:
    # issue 17: `printfarmd serve` never needs rich; every other command imports it on
    # its first use of one of these.
    def _lazy(module: str, name: str) -> Any:
        def make(*args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(module), name)(*args, **kwargs)

        return make

    Console = _lazy("rich.console", "Console")
    Table = _lazy("rich.table", "Table")
    Text = _lazy("rich.text", "Text")


class _ConsoleOnFirstUse:
    """Stands in for the rich ``Console`` a command prints through; the real one (and rich
    with it) is made on first use, so ``serve``, which never prints through it, never
    imports rich (issue 17: ~15 ms of start-up)."""

    def __init__(self) -> None:
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            self._console = Console()
        return getattr(self._console, name)


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_Handler = Callable[[argparse.Namespace, Console], int]

# Colours for states; anything not listed is printed plain.
_STATE_STYLES = {
    "idle": "cyan",
    "printing": "green",
    "paused": "yellow",
    "awaiting_clear": "yellow",
    "error": "bold red",
    "offline": "dim",
    "maintenance": "magenta",
    "queued": "cyan",
    "post_process": "yellow",
    "ready": "bold green",
    "shipped": "dim green",
    "failed": "bold red",
    "cancelled": "dim",
}

_INIT_HEADER = """\
# printfarmd configuration, written by `printfarmd init`.
# Every key is described in docs/configuration.md; config.example.toml has them all
# with comments. Check this file with `printfarmd check-config FILE`.
#
# server.api_key_hash is the hash of a fresh API key (shown once by init; make a new one
# with `printfarmd api-key rotate`). The file is written mode 0600.
# The printers below are simulated; replace them with your own.

"""


def _error(message: str) -> None:
    # Plain print, not rich: messages hold user text such as "printers[2]" that rich
    # would take for markup.
    for line in message.splitlines() or [""]:
        print(f"error: {line}", file=sys.stderr)


def _styled(state: object) -> Text:
    text = str(state) if state is not None else ""
    return Text(text, style=_STATE_STYLES.get(text, ""))


def _cell(value: object) -> Text:
    """A table cell from API data, never interpreted as rich markup."""
    if value is None:
        return Text("")
    if isinstance(value, float):
        return Text(f"{value:g}")
    return Text(str(value))


def _percent(value: object) -> Text:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Text(f"{value:.0f}%")
    return Text("")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _print_json(out: Console, data: object) -> None:
    out.print_json(json.dumps(data))


# -- commands that do not need the daemon -----------------------------------------------


def _config_path(args: argparse.Namespace) -> Path:
    path: Path | None = args.config
    return path if path is not None else default_config_path()


def cmd_serve(args: argparse.Namespace, out: Console) -> int:
    """Load the config and run the daemon until SIGTERM/SIGINT; its exit code."""
    # issue 17: the config and the server stack load with young collections only.
    with heap.loading():
        config = load_config(_config_path(args))
        # Imported here so `printfarmd status` and friends never pay for (or depend on)
        # importing the whole server stack.
        from printfarmd.daemon import serve

    try:
        return serve(config, log_format=args.log_format, config_path=_config_path(args))
    except FarmError as exc:
        _error(exc.message)
        return EXIT_FAILURE
    except ExceptionGroup as group:
        # A service that failed at startup inside the root nursery arrives wrapped.
        matched, rest = group.split(FarmError)
        if matched is None or rest is not None:
            raise
        for leaf in _leaves(matched):
            _error(leaf.message if isinstance(leaf, FarmError) else str(leaf))
        return EXIT_FAILURE


def cmd_simulate_mqtt(args: argparse.Namespace, out: Console) -> int:
    """Run a fleet of simulated MQTT printers and robots against a broker until Ctrl-C."""
    import trio

    from printfarmd.drivers.mqtt_sim import FleetOptions, MqttFleet

    host, sep, port_text = str(args.broker).rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        _error(f"--broker: expected HOST:PORT, got {args.broker!r}")
        return EXIT_USAGE
    if args.printers < 1 or args.robots < 1 or not args.speed > 0:
        _error("--printers and --robots must be >= 1, --speed > 0")
        return EXIT_USAGE
    options = FleetOptions(
        printers=args.printers, robots=args.robots, prefix=args.prefix, speed=args.speed
    )
    fleet = MqttFleet(host, int(port_text), options)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            ids = ", ".join(fleet.printers)
            out.print(
                f"simulated MQTT printers {ids} and {len(fleet.robots)} robot(s) on "
                f"{host}:{port_text} (Ctrl-C stops them)",
                markup=False,
                highlight=False,
            )

    trio.run(main)
    return EXIT_OK


def cmd_simulate_moonraker(args: argparse.Namespace, out: Console) -> int:
    """Run one simulated Moonraker printer on 127.0.0.1 until Ctrl-C."""
    import functools

    import trio

    from printfarmd.drivers.moonraker_sim import serve_forever

    def ready(url: str) -> None:
        out.print(f"simulated Moonraker printer at {url} (Ctrl-C stops it)", highlight=False)

    try:
        trio.run(
            functools.partial(
                serve_forever,
                args.port,
                print_time=args.print_time,
                api_key=args.api_key or "",
                ready=ready,
            )
        )
    except OSError as exc:
        _error(f"cannot listen on port {args.port}: {exc.strerror or exc}")
        return EXIT_FAILURE
    return EXIT_OK


def _leaves(group: BaseExceptionGroup[Any]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def cmd_init(args: argparse.Namespace, out: Console) -> int:
    """Write a starter config with a fresh API key; refuse to overwrite unless ``--force``."""
    path = Path(args.file)
    key = new_key()
    import tomli_w  # only `init` and `config` write TOML (issue 17: not at serve)

    text = _INIT_HEADER + tomli_w.dumps(starter_config(hash_key(key)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if args.force:
            _write_replacing(path, text)
        else:
            # O_EXCL: never clobber a config (and its key) that appeared since we looked.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
    except FileExistsError:
        _error(f"{path} already exists; use --force to overwrite it")
        return EXIT_FAILURE
    except OSError as exc:
        _error(f"cannot write {path}: {exc.strerror or exc}")
        return EXIT_FAILURE
    shown = path.absolute()
    out.print(f"wrote {shown} (2 simulated printers, mode 0600)", markup=False, highlight=False)
    _show_key_once(out, key)
    out.print(f"start the daemon with: printfarmd serve --config {shown}", markup=False)
    return EXIT_OK


def _show_key_once(out: Console, key: str) -> None:
    out.print(f"API key: {key}", markup=False, highlight=False)
    out.print(
        "it is shown this once: the file keeps only its hash (server.api_key_hash);"
        " clients send it as X-Api-Key",
        markup=False,
        highlight=False,
    )


def cmd_api_key_rotate(args: argparse.Namespace, out: Console) -> int:
    """Make a new API key, store its hash in the config (comments and the rest of the
    file kept; owner and mode too) and show the key once. The running daemon takes it
    on SIGHUP; until then the old key still works."""
    from printfarmd.keyfile import set_key_hash, write_preserving

    path = _config_path(args)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    key = new_key()
    new_text = set_key_hash(text, hash_key(key), base_dir=path.absolute().parent)
    try:
        write_preserving(path, new_text)
    except OSError as exc:
        _error(f"cannot write {path}: {exc.strerror or exc}")
        return EXIT_FAILURE
    out.print(f"new API key stored (as its hash) in {path.absolute()}", markup=False)
    _show_key_once(out, key)
    out.print(
        "the daemon takes it on reload (systemctl reload printfarmd, or kill -HUP); "
        "the old key works until then",
        markup=False,
        highlight=False,
    )
    return EXIT_OK


def _write_replacing(path: Path, text: str) -> None:
    """Atomically replace ``path`` with a 0600 file holding ``text``."""
    # mkstemp creates the file 0600, and os.replace means a crash leaves the old file
    # or the new one, never half of either.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_check_config(args: argparse.Namespace, out: Console) -> int:
    """Load and validate a config; ``ok: N printers`` or the errors (exit 2)."""
    config = load_config(args.file if args.file is not None else default_config_path())
    out.print(f"ok: {_plural(len(config.printers), 'printer')}", markup=False, highlight=False)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, out: Console) -> int:
    """Check config, database, disk, clock, printers and broker; 1 if anything is wrong."""
    from printfarmd.doctor import diagnose  # issue 8

    table = Table(title="printfarmd doctor")
    for column in ("check", "", "detail"):
        table.add_column(column)
    problems = 0
    for finding in diagnose(_config_path(args)):
        problems += not finding.ok
        mark = Text("ok", "green") if finding.ok else Text("PROBLEM", "bold red")
        table.add_row(finding.check, mark, Text(finding.detail))
    out.print(table)
    out.print(f"{problems} problem(s) found" if problems else "no problems found", markup=False)
    return EXIT_FAILURE if problems else EXIT_OK


def cmd_backup(args: argparse.Namespace, out: Console) -> int:
    """Copy the database with SQLite's online backup API (safe while the daemon runs)."""
    from printfarmd.daemon import DB_NAME
    from printfarmd.store.database import backup_database

    config = load_config(args.config if args.config is not None else default_config_path())
    if config.storage.backend.value == "postgresql":
        _error(
            'storage.backend is "postgresql": back it up with PostgreSQL\'s tools '
            "(pg_dump, see docs/postgresql.md)"
        )
        return EXIT_FAILURE
    source = config.data_path / DB_NAME
    if not source.exists():
        _error(f"no database at {source}")
        return EXIT_FAILURE
    dest: Path = args.output or (
        config.data_path / "backups" / time.strftime("manual-%Y%m%dT%H%M%SZ.db", time.gmtime())
    )
    try:
        backup_database(source, dest)
    except (FarmError, sqlite3.Error, OSError) as exc:
        _error(f"backup failed: {getattr(exc, 'message', exc)}")
        return EXIT_FAILURE
    out.print(f"backup written: {dest}", markup=False, highlight=False)
    return EXIT_OK


def cmd_migrate_store(args: argparse.Namespace, out: Console) -> int:
    """issue 18: copy the SQLite farm into an empty PostgreSQL database and verify it."""
    from printfarmd.daemon import DB_NAME
    from printfarmd.store import transfer

    if args.source is not None:
        source: Path = args.source
    else:
        config = load_config(args.config if args.config is not None else default_config_path())
        source = config.data_path / DB_NAME
    try:
        report = transfer.copy_farm(
            source, args.to, lambda line: out.print(line, markup=False, highlight=False)
        )
    except FarmError as exc:
        _error(exc.message)
        return EXIT_FAILURE
    table = Table(title=f"{source} -> PostgreSQL")
    for column in ("table", "rows (SQLite)", "rows (PostgreSQL)", "checksum", ""):
        table.add_column(column)
    for check in report.tables:
        same = check.source_hash == check.target_hash
        table.add_row(
            check.table,
            str(check.source_rows),
            str(check.target_rows),
            check.source_hash[:16]
            if same
            else f"{check.source_hash[:8]} != {check.target_hash[:8]}",
            Text("ok", "green") if check.ok else Text("MISMATCH", "bold red"),
        )
    out.print(table)
    if not report.ok:
        bad = ", ".join(c.table for c in report.tables if not c.ok)
        _error(f"the copy does not match the SQLite file ({bad}): do not switch to it")
        return EXIT_FAILURE
    out.print(
        'copied and verified. To use it: storage.backend = "postgresql" and storage.dsn '
        "in the config (docs/postgresql.md); the SQLite file is left as it was.",
        markup=False,
        highlight=False,
    )
    return EXIT_OK


# -- commands that talk to the daemon ---------------------------------------------------


class _Exit(Exception):
    """Leave ``main`` with ``code``; the message has already been printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _client(args: argparse.Namespace) -> FarmClient:
    try:
        endpoint = resolve_endpoint(url=args.url, api_key=args.api_key, config_path=args.config)
    except ConfigError as exc:
        _error(exc.message)
        print(
            "hint: the daemon's URL and API key come from --url/--api-key, else "
            f"${ENV_URL}/${ENV_API_KEY}, else its config file (--config)",
            file=sys.stderr,
        )
        raise _Exit(EXIT_USAGE) from None
    return FarmClient(endpoint)


def cmd_status(args: argparse.Namespace, out: Console) -> int:
    """Two tables: every printer, and a summary of the queue."""
    with _client(args) as client:
        printers = client.list_printers()
        status = client.orchestrator_status()
    if args.json:
        _print_json(out, {"printers": printers, "status": status})
        return EXIT_OK
    out.print(printers_table(printers))
    out.print(queue_table(status))
    return EXIT_OK


def printers_table(printers: Iterable[Mapping[str, Any]]) -> Table:
    """Printers: id, name, state, current job, progress, loaded materials."""
    table = Table(title="Printers", title_justify="left")
    table.add_column("ID", no_wrap=True)
    table.add_column("Name")
    table.add_column("State", no_wrap=True, min_width=5)
    table.add_column("Job", no_wrap=True)
    table.add_column("Progress", justify="right", min_width=8)
    table.add_column("Materials", min_width=9)
    for printer in printers:
        job = printer.get("current_job")
        state = _styled(printer.get("state"))
        if printer.get("maintenance") and printer.get("state") != "maintenance":
            state.append(" (maintenance)", style="magenta")
        materials = printer.get("materials")
        table.add_row(
            _cell(printer.get("id")),
            _cell(printer.get("name")),
            state,
            _cell(job),
            _percent(printer.get("progress")) if job else Text(""),
            _cell(", ".join(map(str, materials)) if isinstance(materials, list) else ""),
        )
    if not table.row_count:
        table.caption = "no printers configured"
    return table


def queue_table(status: Mapping[str, Any]) -> Table:
    """Queue summary: dispatch paused or running, depth, jobs per state."""
    table = Table(title="Queue", title_justify="left", show_header=False)
    table.add_column("What")
    table.add_column("Value", justify="right")
    paused = status.get("paused")
    table.add_row(
        Text("Dispatch"),
        Text("paused", style="yellow") if paused else Text("running", style="green"),
    )
    table.add_row(Text("Queue depth"), _cell(status.get("queue_depth")))
    jobs_by_state = status.get("jobs_by_state")
    if isinstance(jobs_by_state, dict):
        for state, count in jobs_by_state.items():
            table.add_row(Text("Jobs ") + _styled(state), _cell(count))
    return table


def jobs_table(jobs: Iterable[Mapping[str, Any]], total: int | None = None) -> Table:
    """Jobs: id, name (or filename), state, priority, printer, progress, material."""
    table = Table(title="Jobs", title_justify="left")
    table.add_column("ID", no_wrap=True)
    table.add_column("Name")
    table.add_column("State", no_wrap=True, min_width=5)
    table.add_column("Priority", justify="right", min_width=8)
    table.add_column("Printer", no_wrap=True, min_width=7)
    table.add_column("Progress", justify="right", min_width=8)
    table.add_column("Material", min_width=8)
    for job in jobs:
        name = job.get("name") or job.get("filename")
        copies = job.get("copies")
        if isinstance(copies, int) and copies > 1:
            name = f"{name} ({job.get('copy_index')}/{copies})"
        table.add_row(
            _cell(job.get("id")),
            _cell(name),
            _styled(job.get("state")),
            _cell(job.get("priority")),
            _cell(job.get("printer_id")),
            _percent(job.get("progress")) if job.get("state") == "printing" else Text(""),
            _cell(job.get("material")),
        )
    shown = table.row_count
    if not shown:
        table.caption = "no jobs"
    elif total is not None and total != shown:
        table.caption = f"{shown} of {total} jobs shown"
    return table


def cmd_jobs_list(args: argparse.Namespace, out: Console) -> int:
    statuses = [s.strip() for s in (args.status or "").split(",") if s.strip()]
    with _client(args) as client:
        jobs, total = client.list_jobs(statuses, limit=args.limit)
    if args.json:
        _print_json(out, {"jobs": jobs, "total": total})
    else:
        out.print(jobs_table(jobs, total))
    return EXIT_OK


def cmd_jobs_add(args: argparse.Namespace, out: Console) -> int:
    with _client(args) as client:
        jobs = client.add_jobs(
            args.file,
            priority=args.priority,
            copies=args.copies,
            material=args.material,
            colour=args.colour,
            name=args.name,
            sku=args.sku,
            nozzle_diameter=args.nozzle_diameter,
            required_tags=args.tag or None,
            not_before=args.not_before,
        )
    out.print(f"added {_plural(len(jobs), 'job')}", markup=False, highlight=False)
    out.print(jobs_table(jobs))
    return EXIT_OK


def cmd_jobs_cancel(args: argparse.Namespace, out: Console) -> int:
    with _client(args) as client:
        job = client.cancel_job(args.id, args.reason)
    line = Text(f"job {job.get('id', args.id)}: ")
    out.print(line + _styled(job.get("state")))
    return EXIT_OK


def cmd_jobs_pause(args: argparse.Namespace, out: Console) -> int:
    with _client(args) as client:
        job = client.pause_job(args.id)
    out.print(Text(f"job {job.get('id', args.id)}: paused on {job.get('printer_id')}"))
    return EXIT_OK


def cmd_jobs_resume(args: argparse.Namespace, out: Console) -> int:
    with _client(args) as client:
        job = client.resume_job(args.id)
    out.print(Text(f"job {job.get('id', args.id)}: resumed on {job.get('printer_id')}"))
    return EXIT_OK


def cmd_printers_clear(args: argparse.Namespace, out: Console) -> int:
    with _client(args) as client:
        printer = client.clear_printer(args.id)
    line = Text(f"printer {printer.get('id', args.id)}: plate cleared, now ")
    out.print(line + _styled(printer.get("state")))
    return EXIT_OK


def spools_table(body: Mapping[str, Any]) -> Table:
    """(issue 16) Every printer tool and its spool: material, colour, grams left."""
    sm: dict[str, Any] = body.get("spoolman") or {}
    connected = "connected" if sm.get("connected") else "not reachable"
    title = "Spools" + (f" (Spoolman {connected})" if sm.get("enabled") else " (Spoolman off)")
    table = Table(title=title, title_justify="left")
    for name in ("Printer", "Tool", "Spool", "Material", "Colour", "Left (g)", "Owed (g)"):
        table.add_column(name, justify="right" if name.endswith("(g)") else "left")
    for printer in body.get("printers") or []:
        for tool in printer.get("tools") or []:
            colours = tool.get("colours") or []
            left = tool.get("remaining_g")
            table.add_row(
                _cell(printer.get("printer_id")),
                _cell(tool.get("tool")),
                _cell(tool.get("spool_id")),
                _cell(tool.get("material")),
                _cell(", ".join(map(str, colours))),
                _cell(None if left is None else f"{left:.0f}"),
                _cell(tool.get("owed_g") or None),
            )
    pending = body.get("pending_reports") or []
    if pending:
        table.caption = f"{_plural(len(pending), 'usage report')} not yet sent to Spoolman"
    return table


def cmd_spools_list(args: argparse.Namespace, out: Console) -> int:
    with _client(args) as client:
        body = client.list_spools()
    if args.json:
        _print_json(out, body)
    else:
        out.print(spools_table(body))
    return EXIT_OK


def cmd_spools_bind(args: argparse.Namespace, out: Console) -> int:
    with _client(args) as client:
        printer = client.bind_spool(args.printer, args.spool, args.tool)
    tools = printer.get("spools") or []
    tool: dict[str, Any] = next((t for t in tools if t.get("tool") == args.tool), {})
    what = f"spool {args.spool}" if args.spool is not None else "no spool"
    left = tool.get("remaining_g")
    extra = f" ({tool.get('material') or '?'}, {left:.0f} g left)" if left is not None else ""
    out.print(f"printer {args.printer} tool {args.tool}: {what}{extra}", markup=False)
    return EXIT_OK


def cmd_spools_unbind(args: argparse.Namespace, out: Console) -> int:
    args.spool = None
    return cmd_spools_bind(args, out)


def maintenance_table(body: Mapping[str, Any]) -> Table:
    """(issue 16) Each printer's counters since its last maintenance, and why it is due."""
    table = Table(title="Maintenance", title_justify="left")
    for name in ("Printer", "Hours", "Prints", "Filament (g)", "Due"):
        table.add_column(name, justify="left" if name in ("Printer", "Due") else "right")
    for p in body.get("printers") or []:
        c = p.get("counters") or {}
        table.add_row(
            _cell(p.get("printer_id")),
            _cell(c.get("print_hours")),
            _cell(c.get("prints")),
            _cell(c.get("filament_g")),
            Text(str(p["due"]), style="magenta") if p.get("due") else Text(""),
        )
    return table


def log_table(body: Mapping[str, Any]) -> Table:
    table = Table(title="Maintenance log", title_justify="left")
    for name in ("When", "Printer", "By", "Work", "Prints", "Hours"):
        table.add_column(name)
    for e in body.get("log") or []:
        c = e.get("counters") or {}
        table.add_row(
            _cell(e.get("at")),
            _cell(e.get("printer_id")),
            _cell(e.get("by")),
            _cell(e.get("work")),
            _cell(c.get("prints")),
            _cell(c.get("print_hours")),
        )
    if not table.row_count:
        table.caption = "no maintenance recorded"
    return table


def cmd_maintenance_list(args: argparse.Namespace, out: Console) -> int:
    with _client(args) as client:
        body = client.maintenance(args.printer, args.limit)
    if args.json:
        _print_json(out, body)
    else:
        out.print(maintenance_table(body))
        out.print(log_table(body))
    return EXIT_OK


def cmd_maintenance_record(args: argparse.Namespace, out: Console) -> int:
    with _client(args) as client:
        printer = client.record_maintenance(args.printer, args.by, args.work, args.at)
    line = Text(f"printer {printer.get('id', args.printer)}: maintenance recorded, now ")
    out.print(line + _styled(printer.get("state")))
    return EXIT_OK


# -- the parser -------------------------------------------------------------------------


def _integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return value


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_CONFIG_HELP = (
    f"config file (default: ${ENV_CONFIG}, else ./{LOCAL_CONFIG_NAME} if it exists, "
    f"else {SYSTEM_CONFIG})"
)


def build_parser(*, serve_only: bool = False) -> argparse.ArgumentParser:
    """The argparse tree; each leaf sets ``handler`` to one of the ``cmd_*`` functions.

    ``serve_only``: the same tree with the ``serve`` command alone, for a command line
    that starts with ``serve`` (issue 17: the other ~20 commands' parsers took ~15 ms of
    every start, most of it argparse translating their help texts). ``serve``'s options,
    help and usage errors are the same either way.
    """
    parser = argparse.ArgumentParser(
        prog="printfarmd",
        description="The brain of a hobby 3D-print farm: one durable job queue, many printers.",
    )
    parser.add_argument("--version", action="version", version=f"printfarmd {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(
        sub: Any, name: str, handler: _Handler, help_text: str, **kwargs: Any
    ) -> argparse.ArgumentParser:
        leaf: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=help_text, **kwargs
        )
        leaf.set_defaults(handler=handler)
        return leaf

    serve = command(commands, "serve", cmd_serve, "run the daemon (until SIGTERM or Ctrl-C)")
    serve.add_argument("--config", type=Path, help=_CONFIG_HELP)
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log line format (default: logging.format from the config)",
    )
    if serve_only:
        return parser

    init = command(commands, "init", cmd_init, "write a starter config with a fresh API key")
    init.add_argument(
        "file", nargs="?", default=LOCAL_CONFIG_NAME, metavar="FILE",
        help=f"where to write it (default: {LOCAL_CONFIG_NAME})",
    )  # fmt: skip
    init.add_argument("--force", action="store_true", help="overwrite FILE if it exists")

    check = command(commands, "check-config", cmd_check_config, "validate a config file")
    check.add_argument("file", nargs="?", type=Path, metavar="FILE", help=_CONFIG_HELP)
    doctor = command(
        commands,
        "doctor",
        cmd_doctor,
        "check config, database, disk, clock, printers and broker (exit 1 on problems)",
    )
    doctor.add_argument("--config", type=Path, help=_CONFIG_HELP)

    api_key = commands.add_parser(
        "api-key", help="manage the API key", description="manage the API key"
    )
    api_key_commands = api_key.add_subparsers(title="commands", metavar="COMMAND", required=True)
    rotate = command(
        api_key_commands,
        "rotate",
        cmd_api_key_rotate,
        "make a new API key, store its hash in the config and show the key once",
    )
    rotate.add_argument("--config", type=Path, help=_CONFIG_HELP)

    backup = command(
        commands, "backup", cmd_backup, "copy the database now (online, SQLite backup API)"
    )
    backup.add_argument("--config", type=Path, help=_CONFIG_HELP)
    backup.add_argument("--output", type=Path, help="where to write it (default: data/backups/)")

    migrate = command(
        commands,
        "migrate-store",
        cmd_migrate_store,
        "copy the SQLite farm (daemon stopped) into an empty PostgreSQL database and verify",
    )
    migrate.add_argument(
        "--to", required=True, metavar="DSN",
        help="the empty PostgreSQL database, e.g. postgresql://printfarmd@db-host/printfarm",
    )  # fmt: skip
    migrate.add_argument("--config", type=Path, help=_CONFIG_HELP)
    migrate.add_argument(
        "--from", dest="source", type=Path, metavar="FILE",
        help="the SQLite file (default: printfarmd.db in the config's data_dir)",
    )  # fmt: skip

    # Options shared by every command that talks to a running daemon.
    client = argparse.ArgumentParser(add_help=False)
    where = client.add_argument_group("where the daemon is")
    where.add_argument(
        "--url", help=f"daemon URL, e.g. http://127.0.0.1:7125 (default: ${ENV_URL}, else config)"
    )
    where.add_argument("--api-key", help=f"API key (default: ${ENV_API_KEY}, else config)")
    where.add_argument("--config", type=Path, help=_CONFIG_HELP)

    status = command(
        commands, "status", cmd_status, "show printers and the queue", parents=[client]
    )
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    jobs = commands.add_parser(
        "jobs", help="add, list, cancel, pause and resume jobs", description="jobs"
    )
    jobs_commands = jobs.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add = command(
        jobs_commands,
        "add",
        cmd_jobs_add,
        "queue a file from the daemon's gcodes folder",
        parents=[client],
    )
    add.add_argument("file", metavar="FILE", help="path relative to the daemon's gcodes folder")
    add.add_argument("--priority", type=_integer, help="higher prints first (default 0)")
    add.add_argument("--copies", type=_positive_int, help="number of copies (default 1)")
    add.add_argument("--material", help="required material, e.g. PLA")
    add.add_argument(
        "--colour",
        metavar="#RRGGBB",
        help="only printers with this filament colour loaded (configured, AMS or spool)",
    )
    add.add_argument("--name", help="display name (default: the file name)")
    add.add_argument("--sku", help="product SKU, for your own bookkeeping")
    add.add_argument(
        "--nozzle-diameter", type=float, metavar="MM", help="only printers with this nozzle"
    )
    add.add_argument(
        "--tag",
        action="append",
        metavar="TAG",
        help="only printers with this tag (repeat for several)",
    )
    add.add_argument(
        "--not-before",
        metavar="TIME",
        help="do not start before this time (ISO-8601, e.g. 2026-07-01T22:00:00Z)",
    )
    listing = command(jobs_commands, "list", cmd_jobs_list, "list jobs", parents=[client])
    listing.add_argument(
        "--status",
        metavar="STATES",
        help="only these states, comma-separated, e.g. queued,printing",
    )
    listing.add_argument(
        "--limit", type=_positive_int, help="at most this many jobs (default: the daemon's, 100)"
    )
    listing.add_argument("--json", action="store_true", help="print the raw JSON")
    cancel = command(jobs_commands, "cancel", cmd_jobs_cancel, "cancel a job", parents=[client])
    cancel.add_argument("id", metavar="ID", help="job id")
    cancel.add_argument("--reason", help="recorded in the job's history")
    pause = command(
        jobs_commands, "pause", cmd_jobs_pause, "pause a printing job", parents=[client]
    )
    pause.add_argument("id", metavar="ID", help="job id")
    resume = command(
        jobs_commands, "resume", cmd_jobs_resume, "resume a paused job", parents=[client]
    )
    resume.add_argument("id", metavar="ID", help="job id")

    printers = commands.add_parser("printers", help="act on printers", description="printers")
    printer_commands = printers.add_subparsers(title="commands", metavar="COMMAND", required=True)
    clear = command(
        printer_commands,
        "clear",
        cmd_printers_clear,
        "confirm a printer's plate is clear so it can take the next job",
        parents=[client],
    )
    clear.add_argument("id", metavar="ID", help="printer id")

    # issue 16: spools and maintenance
    spools = commands.add_parser(
        "spools", help="Spoolman spools bound to printers", description="spools"
    )
    spool_commands = spools.add_subparsers(title="commands", metavar="COMMAND", required=True)
    spool_list = command(
        spool_commands, "list", cmd_spools_list, "every printer tool and its spool",
        parents=[client],
    )  # fmt: skip
    spool_list.add_argument("--json", action="store_true", help="print the raw JSON")
    bind = command(
        spool_commands, "bind", cmd_spools_bind, "bind a Spoolman spool to a printer's tool",
        parents=[client],
    )  # fmt: skip
    bind.add_argument("printer", metavar="PRINTER", help="printer id")
    bind.add_argument("spool", metavar="SPOOL", type=_integer, help="Spoolman spool id")
    bind.add_argument("--tool", type=_integer, default=0, help="tool number (default 0)")
    unbind = command(
        spool_commands, "unbind", cmd_spools_unbind, "take the spool off a printer's tool",
        parents=[client],
    )  # fmt: skip
    unbind.add_argument("printer", metavar="PRINTER", help="printer id")
    unbind.add_argument("--tool", type=_integer, default=0, help="tool number (default 0)")

    maintenance = commands.add_parser(
        "maintenance", help="maintenance counters and log", description="maintenance"
    )
    maintenance_commands = maintenance.add_subparsers(
        title="commands", metavar="COMMAND", required=True
    )
    m_list = command(
        maintenance_commands, "list", cmd_maintenance_list,
        "counters since the last maintenance, what is due, and the log", parents=[client],
    )  # fmt: skip
    m_list.add_argument("printer", nargs="?", metavar="PRINTER", help="only this printer")
    m_list.add_argument("--limit", type=_positive_int, default=20, help="log entries (default 20)")
    m_list.add_argument("--json", action="store_true", help="print the raw JSON")
    record = command(
        maintenance_commands, "record", cmd_maintenance_record,
        "record maintenance done: resets the counters, back into service", parents=[client],
    )  # fmt: skip
    record.add_argument("printer", metavar="PRINTER", help="printer id")
    record.add_argument("--by", required=True, help="who did the work")
    record.add_argument("--work", required=True, help="what was done")
    record.add_argument("--at", metavar="TIME", help="when (ISO-8601; default now)")

    simulate = commands.add_parser(
        "simulate", help="run a simulated printer", description="simulate"
    )
    simulate_commands = simulate.add_subparsers(title="kinds", metavar="KIND", required=True)
    moonraker = command(
        simulate_commands,
        "moonraker",
        cmd_simulate_moonraker,
        "a Klipper printer speaking Moonraker's API, on 127.0.0.1",
    )
    moonraker.add_argument("--port", type=_integer, default=7126, help="port (default 7126)")
    moonraker.add_argument(
        "--print-time", type=float, default=60.0, metavar="S", help="seconds per print"
    )
    moonraker.add_argument("--api-key", help="require this X-Api-Key (default: none)")
    mqtt = command(
        simulate_commands,
        "mqtt",
        cmd_simulate_mqtt,
        "MQTT printers and plate-clearing robots speaking the job-handler topics",
    )
    mqtt.add_argument("--printers", type=_integer, default=2, metavar="N", help="default 2")
    mqtt.add_argument("--robots", type=_integer, default=1, metavar="N", help="default 1")
    mqtt.add_argument(
        "--broker", default="127.0.0.1:1883", metavar="HOST:PORT", help="default 127.0.0.1:1883"
    )
    mqtt.add_argument("--prefix", default="mqtt-", help="printer ids are PREFIX1.. (default mqtt-)")
    mqtt.add_argument(
        "--speed", type=float, default=60.0, help="times faster than estimatedTime (default 60)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script's ``main``)."""
    given = sys.argv[1:] if argv is None else argv
    parser = build_parser(serve_only=given[:1] == ["serve"])
    try:
        args = parser.parse_args(given)
    except SystemExit as exc:  # --help, --version and usage errors
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: _Handler = args.handler
    try:
        return handler(args, _ConsoleOnFirstUse())  # type: ignore[arg-type]
    except ConfigError as exc:
        _error(exc.message)
        return EXIT_USAGE
    except ClientError as exc:
        _error(exc.message)
        return EXIT_FAILURE
    except _Exit as exc:
        return exc.code
    except KeyboardInterrupt:
        return 130
