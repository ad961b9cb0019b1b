"""Configuration: frozen msgspec Structs read from TOML, strictly.

A valid file is read by the quick reader here; one it cannot vouch for is read again by
the cattrs converter (``config_cattrs``), which reports every problem.

Unknown keys are rejected and every error names the dotted key, e.g.
``printers[2].nozzle_diameter: expected a number``.
"""

# No ``from __future__ import annotations`` here (issue 17): the quick reader (each
# field's ``type``) and cattrs read these classes' real annotations; string annotations
# would cost one ``compile`` each (~180 fields) to resolve.

import contextlib
import datetime
import enum
import functools
import ipaddress
import math
import os
import re
import tomllib
import typing
import urllib.parse
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from printfarmd.errors import ConfigError


def _upper(names: Iterable[str]) -> tuple[str, ...]:
    """Materials and colours as the farm names them: ``" pla"`` is ``"PLA"``."""
    return tuple(name.strip().upper() for name in names)


#: A colour as the farm names it.
COLOUR_RE = re.compile(r"#[0-9A-F]{6}")


class Synchronous(enum.StrEnum):
    FULL = "FULL"
    NORMAL = "NORMAL"


class StorageBackend(enum.StrEnum):
    """Where the farm keeps its state (issue 18): the SQLite file in ``data_dir``, or a
    PostgreSQL database (``storage.dsn``)."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class ServerConfig(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 7125
    #: The API key in plain text (legacy; ``printfarmd api-key rotate`` replaces it with
    #: ``api_key_hash``). At most one of the two may be set.
    api_key: str = ""
    #: The API key's SHA-256 digest, ``sha256:<64 hex digits>``: the daemon never needs
    #: the key itself. Written by ``printfarmd init`` and ``printfarmd api-key rotate``.
    api_key_hash: str = ""
    max_body_bytes: int = 1_048_576
    #: Seconds between heartbeat comments on an idle event stream (SSE).
    sse_heartbeat: float = 15.0
    #: Messages buffered per event-stream client before a client that does not read
    #: is dropped.
    sse_buffer: int = 1024
    #: Largest file upload (``POST /api/files``, ``POST /server/files/upload``), in bytes.
    max_upload_bytes: int = 536_870_912
    #: An upload is refused (507) if it would leave less free disk than this, in bytes.
    upload_min_free_bytes: int = 67_108_864
    #: Moonraker-style trusted client networks (CIDR): requests from them need no key.
    trusted_clients: tuple[str, ...] = ()
    #: Origins allowed by CORS (exact ``scheme://host[:port]``); empty = CORS off.
    cors_domains: tuple[str, ...] = ()
    #: Reverse proxies (IP or CIDR) whose ``X-Forwarded-For`` names the client; forwarded
    #: headers from anyone else are ignored.
    trusted_proxies: tuple[str, ...] = ()
    #: Requests, event streams and websockets served at once; more get HTTP 503.
    max_connections: int = 1024
    #: Serve ``GET /metrics`` (Prometheus) without a key; off = behind the API key.
    metrics_public: bool = False
    #: (issue 18) This daemon's name in a farm of several daemons sharing one PostgreSQL
    #: database: it drives its own ``[[printers]]``, all share the jobs. Empty: the only
    #: daemon of its database.
    node_id: str = ""
    #: Seconds a daemon's lease lasts without renewal before the others take its printing
    #: jobs back (renewed every third of it).
    lease_seconds: float = 15.0


class StorageConfig(msgspec.Struct, frozen=True):
    data_dir: str = "data"
    gcodes_dir: str = ""
    synchronous: Synchronous = Synchronous.FULL
    #: Seconds between online backups into ``<data_dir>/backups`` (0 = no periodic backups).
    backup_interval: float = 3600.0
    #: How many backup files to keep (the oldest are removed).
    backup_keep: int = 5
    #: Days the event log is kept (SSE replay, audits); older events are pruned daily.
    #: 0 keeps every event forever.
    event_retention_days: float = 400.0
    #: Days an Idempotency-Key is remembered (a retry after that creates a new job).
    #: 0 keeps them forever.
    idempotency_retention_days: float = 30.0
    #: issue 18: ``"sqlite"`` (the file ``<data_dir>/printfarmd.db``) or ``"postgresql"``.
    backend: StorageBackend = StorageBackend.SQLITE
    #: The PostgreSQL database (libpq URI or key=value string), with ``backend =
    #: "postgresql"`` only. May hold a password: keep the file private.
    dsn: str = ""


class WatchdogConfig(msgspec.Struct, frozen=True):
    #: Seconds between sweeps for stuck jobs.
    interval: float = 300.0
    #: A printing job with no progress for this many seconds is stuck.
    stale_threshold: float = 900.0


class SchedulerConfig(msgspec.Struct, frozen=True):
    dispatch_paused: bool = False
    cooldown_seconds: float = 0.0
    max_retries: int = 3
    retry_backoff: tuple[float, ...] = (60.0, 300.0, 1500.0)
    max_priority: int = 100


class SimulatorOptions(msgspec.Struct, frozen=True):
    speed: float = 1.0
    failure_rate: float = 0.0
    seed: int = 0
    default_print_time: float = 600.0
    report_interval: float = 5.0


class MoonrakerOptions(msgspec.Struct, frozen=True):
    """How to reach a Klipper printer's Moonraker (``driver = "moonraker"``)."""

    #: Base URL of the printer's Moonraker, e.g. ``http://voron.local:7125``.
    url: str = ""
    #: Sent as ``X-Api-Key`` when not empty.
    api_key: str = ""
    #: Seconds any one call (connect, request, answer) may take.
    timeout: float = 10.0
    #: Seconds a G-code upload may take.
    upload_timeout: float = 300.0
    #: Seconds between liveness/status polls on an open connection.
    heartbeat: float = 5.0
    #: Consecutive failed calls/connects after which the printer is reported offline.
    offline_after: int = 3
    #: Reconnect backoff: first delay and cap (seconds), doubling in between.
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    #: Camera snapshot URL (absolute, or relative to ``url``); empty = no camera.
    snapshot_url: str = ""


class OctoPrintOptions(msgspec.Struct, frozen=True):
    """How to reach a printer's OctoPrint (``driver = "octoprint"``)."""

    #: Base URL of the OctoPrint server, e.g. ``http://octopi.local``.
    url: str = ""
    #: An OctoPrint API key (a user's or an application key); sent as ``X-Api-Key``.
    api_key: str = ""
    #: Seconds any one call (connect, request, answer) may take.
    timeout: float = 10.0
    #: Seconds a G-code upload may take.
    upload_timeout: float = 300.0
    #: Seconds between status polls (the websocket pushes in between).
    heartbeat: float = 5.0
    #: Consecutive failed polls/connects after which the printer is reported offline.
    offline_after: int = 3
    #: Reconnect backoff: first delay and cap (seconds), doubling in between.
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    #: Camera snapshot URL (absolute, or relative to ``url``); empty = no camera.
    snapshot_url: str = ""


class PrusaLinkOptions(msgspec.Struct, frozen=True):
    """How to reach a Prusa printer's PrusaLink (``driver = "prusalink"``)."""

    #: Base URL of the printer's PrusaLink, e.g. ``http://prusa-mk4.local``.
    url: str = ""
    #: HTTP digest user and password (PrusaLink's settings page); the user is ``maker``
    #: on Prusa's printers.
    username: str = "maker"
    password: str = ""
    #: ``X-Api-Key`` for older firmware, instead of a password.
    api_key: str = ""
    #: Storage to upload to (``/local``, ``/usb``, ...); empty = the first writable one
    #: ``/api/v1/storage`` lists.
    storage: str = ""
    #: Seconds any one call (connect, request, answer) may take.
    timeout: float = 10.0
    #: Seconds a G-code upload may take.
    upload_timeout: float = 300.0
    #: Seconds between status polls.
    heartbeat: float = 5.0
    #: Consecutive failed polls after which the printer is reported offline.
    offline_after: int = 3
    #: Reconnect backoff: first delay and cap (seconds), doubling in between.
    backoff_initial: float = 1.0
    backoff_max: float = 30.0


class BambuOptions(msgspec.Struct, frozen=True):
    """How to reach a Bambu Lab printer in LAN mode (``driver = "bambu"``)."""

    #: The printer's address (LAN mode on; see its network settings).
    host: str = ""
    #: Its serial number (the MQTT topics are ``device/<serial>/...``).
    serial: str = ""
    #: The LAN access code shown on the printer's screen (the password of user ``bblp``).
    access_code: str = ""
    mqtt_port: int = 8883
    ftps_port: int = 990
    #: SHA-256 of the printer's certificate (hex, colons allowed); empty = pin the one
    #: it presents on first contact (stored in the data dir) and refuse any other.
    ca_fingerprint: str = ""
    #: Seconds for a connect, a command's answer, an FTPS step.
    timeout: float = 10.0
    #: Seconds an upload may take.
    upload_timeout: float = 300.0
    #: Seconds a printer has to show a started job (or answer the start).
    start_timeout: float = 60.0
    #: MQTT keepalive with the printer: a silent link is dropped after ~1.5x this.
    keepalive: int = 30
    #: Seconds between full-status requests (``pushing.pushall``); the P1 series sends only
    #: changes in between, and asking more often than every 5 minutes slows a P1P down.
    pushall_interval: float = 300.0
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    #: Print 3MF projects with the AMS (``use_ams``).
    use_ams: bool = False
    #: Where the certificate pins live: ``<data dir>/bambu``, filled in when the config
    #: is loaded (empty: pins kept in memory only).
    state_dir: str = ""

    #: Not TOML keys: the loader sets them (``_with_state_dirs``); never read or written.
    internal_keys: ClassVar[frozenset[str]] = frozenset({"state_dir"})


class MqttTopics(msgspec.Struct, frozen=True):
    """Topic templates of the MQTT job-handler protocol; ``{id}`` is a printer or robot id."""

    printer_progress: str = "device/printer/{id}/progress"
    #: The seed's spelling.
    assignment: str = "device/printer/{id}/assignement"
    command: str = "device/printer/{id}/command"
    printers: str = "device/printers"
    robot_progress: str = "device/robot/{id}/progress"


class MqttDiscoveredDefaults(msgspec.Struct, frozen=True):
    """Capabilities given to MQTT printers that announce themselves without being listed."""

    materials: tuple[str, ...] = ("PLA",)
    nozzle_diameter: float = 0.4
    bed_size: tuple[float, float, float] = (220.0, 220.0, 250.0)
    tags: tuple[str, ...] = ()
    auto_clear: bool = False


class MqttConfig(msgspec.Struct, frozen=True):
    """The one MQTT broker connection shared by every ``driver = "mqtt"`` printer."""

    #: Broker host; empty = MQTT off.
    host: str = ""
    port: int = 1883
    #: Stable client id (the broker keeps our subscriptions across reconnects).
    client_id: str = "printfarmd"
    username: str = ""
    password: str = ""
    #: Seconds between keepalive pings; a silent (half-open) link is dropped after ~2x.
    keepalive: int = 30
    tls: bool = False
    #: CA bundle for TLS (empty = the system's); client certificate and key, if any.
    ca_certs: str = ""
    certfile: str = ""
    keyfile: str = ""
    tls_insecure: bool = False
    #: Reconnect backoff: first delay and cap (seconds), doubling in between.
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    #: Register printers that report idle without being listed in ``[[printers]]``.
    discover: bool = True
    #: Seconds to wait at start for printers to announce themselves before dispatching.
    discovery_window: float = 0.0
    #: A printer silent for this many seconds is shown offline.
    printer_timeout: float = 60.0
    #: Seconds a printer has to confirm an assignment (by reporting it printing).
    start_timeout: float = 30.0
    #: Seconds between re-sends of an unconfirmed assignment or a pending plate announcement.
    resend_interval: float = 5.0
    #: ``modelUrl`` sent with assignments; ``{filename}`` is the G-code path in the gcodes
    #: folder, e.g. ``http://farm.local:7125/server/files/gcodes/{filename}``.
    model_url: str = "{filename}"
    topics: MqttTopics = msgspec.field(default_factory=MqttTopics)
    discovered: MqttDiscoveredDefaults = msgspec.field(default_factory=MqttDiscoveredDefaults)


class PrinterConfig(msgspec.Struct, frozen=True):
    id: str
    name: str = ""
    driver: str = "simulator"
    #: Upper-cased (and stripped) on construction, so "pla" and "PLA" are one material.
    materials: tuple[str, ...] = ()
    #: The colour (``#RRGGBB``) of each material, in the same order; empty: unknown
    #: (a job asking for a colour does not go there). Upper-cased on construction.
    colours: tuple[str, ...] = ()
    nozzle_diameter: float = 0.4
    bed_size: tuple[float, float, float] = (220.0, 220.0, 250.0)
    tags: tuple[str, ...] = ()
    auto_clear: bool = False
    #: Remove the file the farm uploaded to the printer once its job has ended.
    remove_uploads: bool = True
    #: Tools (extruders, AMS slots) that each take a spool (issue 16: spool bindings).
    tools: int = 1
    #: Printers of one power group share the staggered-start limit (``[power]``); empty
    #: is the ``default`` group.
    power_group: str = ""
    #: Mean electrical draw while printing, in watts (the cost of a print's electricity).
    power_watts: float = 0.0
    #: No print starts between these two local times (``["22:00", "07:00"]``); empty: none.
    quiet_hours: tuple[str, ...] = ()
    simulator: SimulatorOptions = msgspec.field(default_factory=SimulatorOptions)
    moonraker: MoonrakerOptions = msgspec.field(default_factory=MoonrakerOptions)
    octoprint: OctoPrintOptions = msgspec.field(default_factory=OctoPrintOptions)
    prusalink: PrusaLinkOptions = msgspec.field(default_factory=PrusaLinkOptions)
    bambu: BambuOptions = msgspec.field(default_factory=BambuOptions)


class LoggingConfig(msgspec.Struct, frozen=True):
    #: Lower-cased on construction; one of ``LOG_LEVELS``.
    level: str = "info"
    format: LogFormat = LogFormat.TEXT


class DemoConfig(msgspec.Struct, frozen=True):
    #: G-code files (relative to the gcodes folder) submitted once, on the first start
    #: with an empty database, so a demo farm starts printing at once.
    jobs: tuple[str, ...] = ()


class SlicerConfig(msgspec.Struct, frozen=True):
    """The slicing stage for STL/3MF jobs (docs/files.md); off while ``command`` is empty."""

    #: argv of the slicer CLI; ``{input}`` and ``{output}`` are replaced by the model and
    #: the G-code to write (put the printer profile in the arguments).
    command: tuple[str, ...] = ()
    #: Seconds a slice may take before the slicer is killed and the job fails.
    timeout: float = 600.0


class NotifyConfig(msgspec.Struct, frozen=True):
    """Escalation channels: who hears of a job that failed for good (docs/notifications.md).

    A channel is on when its target is set: ``webhook_urls``, ``email_to`` (with
    ``smtp_host`` and ``email_from``), ``mqtt_topic``.
    """

    webhook_urls: tuple[str, ...] = ()
    #: HMAC-SHA256 key of the X-Printfarmd-Signature header; empty = unsigned.
    webhook_secret: str = ""
    webhook_timeout: float = 10.0
    #: Seconds to wait after failed attempt 1, 2, ...; the last value repeats.
    retry_backoff: tuple[float, ...] = (10.0, 60.0, 300.0, 900.0)
    max_attempts: int = 5
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_starttls: bool = True
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_timeout: float = 30.0
    email_from: str = ""
    email_to: tuple[str, ...] = ()
    mqtt_topic: str = ""


class SpoolmanConfig(msgspec.Struct, frozen=True):
    """The Spoolman filament inventory (docs/upkeep.md); off while ``url`` is empty."""

    #: Base URL of the Spoolman server, e.g. ``http://spoolman.local:7912``.
    url: str = ""
    #: Seconds any one call to Spoolman may take.
    timeout: float = 10.0
    #: Seconds between reads of the bound spools (material, colour, remaining weight).
    refresh_interval: float = 60.0
    #: Seconds to wait after failed attempt 1, 2, ... to report usage; the last repeats.
    retry_backoff: tuple[float, ...] = (5.0, 15.0, 60.0, 300.0)
    #: A job goes only to a spool holding its filament weight plus this many grams ...
    weight_margin: float = 5.0
    #: ... plus this percentage of the job's weight.
    weight_margin_percent: float = 5.0
    #: The printer whose first tool the Moonraker facade's spool panel shows and binds
    #: (Mainsail and Fluidd know one printer); empty = the first configured printer.
    facade_printer: str = ""


class MaintenanceConfig(msgspec.Struct, frozen=True):
    """Upkeep thresholds: a printer past one goes into maintenance after its print."""

    #: Print hours since the last recorded maintenance (0 = no threshold).
    every_hours: float = 0.0
    #: Prints since the last recorded maintenance (0 = no threshold).
    every_prints: int = 0
    #: Grams of filament since the last recorded maintenance (0 = no threshold).
    every_grams: float = 0.0


class PowerGroupConfig(msgspec.Struct, frozen=True):
    """The staggered-start limit of one power group (overrides ``[power]``)."""

    name: str
    max_starts: int = 0
    window: float = 60.0


class PowerConfig(msgspec.Struct, frozen=True):
    """Staggered starts: at most ``max_starts`` print starts per ``window`` seconds in each
    power group, so heated beds do not all switch on at once; quiet hours' time zone."""

    #: Starts per window in each group (0 = no limit), unless the group says otherwise.
    max_starts: int = 0
    window: float = 60.0
    groups: tuple[PowerGroupConfig, ...] = ()
    #: The time zone of ``printers[].quiet_hours`` (an IANA name such as
    #: ``Europe/Berlin``); empty = the system's.
    timezone: str = ""


class CostConfig(msgspec.Struct, frozen=True):
    """What a print costs: filament by weight, electricity by time and power."""

    #: Shown with every cost; not converted.
    currency: str = "EUR"
    #: Price per kg when the spool's price is not known (no Spoolman, or no price there).
    filament_price_per_kg: float = 0.0
    energy_price_per_kwh: float = 0.0


class Config(msgspec.Struct, frozen=True, dict=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    watchdog: WatchdogConfig = msgspec.field(default_factory=WatchdogConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    printers: tuple[PrinterConfig, ...] = ()
    demo: DemoConfig = msgspec.field(default_factory=DemoConfig)
    notify: NotifyConfig = msgspec.field(default_factory=NotifyConfig)
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    slicer: SlicerConfig = msgspec.field(default_factory=SlicerConfig)
    spoolman: SpoolmanConfig = msgspec.field(default_factory=SpoolmanConfig)
    maintenance: MaintenanceConfig = msgspec.field(default_factory=MaintenanceConfig)
    power: PowerConfig = msgspec.field(default_factory=PowerConfig)
    cost: CostConfig = msgspec.field(default_factory=CostConfig)
    #: Directory of the config file; relative paths in the file are resolved against it.
    base_dir: Path = Path(".")

    #: Not TOML keys: the loader sets ``base_dir``; never read from or written to a file.
    internal_keys: ClassVar[frozenset[str]] = frozenset({"base_dir"})

    # Resolved once per config (``resolve()`` walks the file system: a job submission
    # asks for the gcodes folder every time).
    @functools.cached_property
    def data_path(self) -> Path:
        return (self.base_dir / self.storage.data_dir).resolve()

    @functools.cached_property
    def gcodes_path(self) -> Path:
        if self.storage.gcodes_dir:
            return (self.base_dir / self.storage.gcodes_dir).resolve()
        return self.data_path / "gcodes"


# --------------------------------------------------------------------------------------
# Loading: TOML -> dict (tomllib) -> Config (one strict cattrs converter) -> semantic checks.

#: Driver names a printer may use. Add a driver's name here when its module lands.
KNOWN_DRIVERS: frozenset[str] = frozenset(
    {"simulator", "moonraker", "mqtt", "octoprint", "prusalink", "bambu"}
)
#: Accepted values of ``logging.level`` (case-insensitive in the file).
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
#: A printer id appears in URLs, topics and log lines, so keep it to a safe alphabet.
PRINTER_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_BODY_BYTES = 1024
_KEY_HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")
_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Bounds of ``server.lease_seconds``.
MIN_LEASE = 2.0
MAX_LEASE = 300.0

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


class _Invalid(ValueError):
    """A value of the wrong shape; ``message`` is what the user reads after the key."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date subclass
        return "a date/time"
    return type(value).__name__  # only reachable from Python callers, never from TOML


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what}, got {_toml_type(value)}")


# What several values of a scalar type are called in messages ("an array of 3 numbers").
_PLURAL_NAMES: dict[type, str] = {
    int: "integers",
    float: "numbers",
    str: "strings",
    bool: "booleans",
}


def _structure_int(value: object, _: type) -> int:
    # bool is an int subclass: `port = true` must not quietly become port 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expected("an integer", value)
    return value


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _expected("a number", value)
    result = float(value)
    # TOML allows inf and nan; no setting of ours means anything with them.
    if not math.isfinite(result):
        raise _Invalid(f"expected a finite number, got {value}")
    return result


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    return value


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise _expected("a boolean (true or false)", value)
    return value


def _structure_enum(value: object, cls: type[enum.StrEnum]) -> enum.StrEnum:
    """Match a string to a member's value, ignoring case (``synchronous = "full"`` is fine)."""
    choices = ", ".join(member.value for member in cls)
    if not isinstance(value, str):
        raise _expected(f"one of {choices}", value)
    for member in cls:
        if member.value.casefold() == value.casefold():
            return member
    raise _Invalid(f"expected one of {choices}, got {_quote(value)}")


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


def is_config_class(tp: Any) -> bool:
    """Whether ``tp`` is one of the config classes (a TOML table)."""
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


@functools.cache
def settable_fields(cls: type) -> tuple[msgspec.structs.FieldInfo, ...]:
    """The fields of config class ``cls`` that are TOML keys, in order: all but its
    ``internal_keys``. Cached: ``msgspec.structs.fields`` evaluates the annotations anew
    on every call, and every load (and reload) asks for each class."""
    internal: frozenset[str] = getattr(cls, "internal_keys", frozenset())
    return tuple(f for f in msgspec.structs.fields(cls) if f.name not in internal)


# The quick reader (issue 17): TOML data that is right to the config classes, with the
# same scalar rules as the cattrs converter (the hooks above) but without importing
# cattrs or generating its structuring code (~45 ms of every start). It never words an
# error: anything it is not sure of, it hands to cattrs, which decides and reports
# (``tests/test_config_quick.py`` holds it to cattrs' answers).


class _NotSure(Exception):
    """The quick reader gives up; the cattrs converter reads the data instead."""


_QUICK_SCALARS: dict[Any, Callable[[object, type], Any]] = {
    int: _structure_int,
    float: _structure_float,
    str: _structure_str,
    bool: _structure_bool,
}


def _quick(value: object, tp: Any) -> Any:
    scalar = _QUICK_SCALARS.get(tp)
    if scalar is not None:
        return scalar(value, tp)
    if isinstance(tp, type) and issubclass(tp, enum.StrEnum):
        return _structure_enum(value, tp)
    if tp is Path and isinstance(value, str):
        return Path(value)
    if is_config_class(tp):
        return _quick_class(value, tp)
    if _is_tuple(tp) and isinstance(value, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_quick(item, args[0]) for item in value)
        if len(args) == len(value):
            return tuple(_quick(item, arg) for item, arg in zip(value, args, strict=True))
    raise _NotSure


@functools.cache
def _quick_fields(cls: type) -> tuple[frozenset[str], tuple[tuple[str, Any, bool], ...]]:
    """The settable keys of ``cls``, and ``(key, type, required)`` of each."""
    fields = tuple((f.name, f.type, f.required) for f in settable_fields(cls))
    return frozenset(key for key, *_ in fields), fields


def _quick_class(value: object, cls: type) -> Any:
    if not isinstance(value, dict):
        raise _NotSure
    keys, fields = _quick_fields(cls)
    if not value.keys() <= keys:
        raise _NotSure  # an unknown key
    kwargs: dict[str, Any] = {}
    for key, tp, required in fields:
        if key in value:
            kwargs[key] = _quick(value[key], tp)
        elif required:
            raise _NotSure
    return cls(**kwargs)


def _structure(data: Mapping[str, Any]) -> "Config":
    """``data`` as a ``Config``, or ``ConfigError`` with a line for every wrong key."""
    try:
        return typing.cast(Config, _quick_class(dict(data), Config))
    except Exception:  # noqa: S110 - not sure (or wrong): cattrs decides and words it
        pass
    from printfarmd import config_cattrs

    return config_cattrs.structure(data)


def _quote(text: str) -> str:
    """Quote as TOML would (a basic string); used for keys and values in messages."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _join(path: str, key: str) -> str:
    part = key if _BARE_KEY_RE.fullmatch(key) else _quote(key)
    return f"{path}.{part}" if path else part


def _normalize(config: Config) -> Config:
    """Fill in derived defaults and the farm's spelling of names: a printer's ``name`` is
    its ``id`` when left empty; materials and colours are upper case (``"pla"`` is
    ``"PLA"``), the log level lower case."""
    printers = tuple(
        msgspec.structs.replace(
            printer,
            name=printer.name.strip() or printer.id,
            materials=_upper(printer.materials),
            colours=_upper(printer.colours),
        )
        for printer in config.printers
    )
    mqtt = config.mqtt
    discovered = msgspec.structs.replace(
        mqtt.discovered, materials=_upper(mqtt.discovered.materials)
    )
    return msgspec.structs.replace(
        config,
        printers=printers,
        mqtt=msgspec.structs.replace(mqtt, discovered=discovered),
        logging=msgspec.structs.replace(config.logging, level=config.logging.level.lower()),
    )


def _notify_errors(notify: NotifyConfig) -> list[str]:
    """Range and consistency rules of ``[notify]`` (URLs, addresses, retry policy)."""
    errors: list[str] = []
    for index, url in enumerate(notify.webhook_urls):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append(
                f"notify.webhook_urls[{index}]: expected an http:// or https:// URL with a host"
            )
    if notify.webhook_timeout <= 0:
        errors.append("notify.webhook_timeout: must be > 0")
    if not notify.retry_backoff:
        errors.append("notify.retry_backoff: must not be empty")
    for index, delay in enumerate(notify.retry_backoff):
        if delay < 0:
            errors.append(f"notify.retry_backoff[{index}]: must be >= 0")
    if notify.max_attempts < 1:
        errors.append("notify.max_attempts: must be >= 1")
    if not 1 <= notify.smtp_port <= 65535:
        errors.append(f"notify.smtp_port: must be between 1 and 65535, got {notify.smtp_port}")
    if notify.smtp_timeout <= 0:
        errors.append("notify.smtp_timeout: must be > 0")
    for index, address in enumerate(notify.email_to):
        if "@" not in address or any(c in address for c in " ,\r\n"):
            errors.append(f"notify.email_to[{index}]: not an email address: {_quote(address)}")
    if notify.email_to:
        if not notify.smtp_host.strip():
            errors.append("notify.smtp_host: required when notify.email_to is set")
        if "@" not in notify.email_from:
            errors.append("notify.email_from: an email address is required when email_to is set")
    if notify.smtp_password and not notify.smtp_username:
        errors.append("notify.smtp_username: required when notify.smtp_password is set")
    if any(c in notify.mqtt_topic for c in "+#\0"):
        errors.append("notify.mqtt_topic: must not contain the wildcards + or #")
    return errors


def _semantic_errors(config: Config) -> list[str]:
    errors: list[str] = []

    def check(ok: bool, key: str, message: str) -> None:
        if not ok:
            errors.append(f"{key}: {message}")

    check(config.slicer.timeout > 0, "slicer.timeout", "must be > 0")  # issue 7
    server = config.server
    check(bool(server.host.strip()), "server.host", "must not be empty")
    check(
        0 <= server.port <= 65535,
        "server.port",
        f"must be between 0 and 65535 (0 picks a free port), got {server.port}",
    )
    check(
        server.max_body_bytes >= MIN_BODY_BYTES,
        "server.max_body_bytes",
        f"must be at least {MIN_BODY_BYTES}, got {server.max_body_bytes}",
    )
    check(server.sse_heartbeat > 0, "server.sse_heartbeat", "must be > 0")
    check(server.sse_buffer >= 1, "server.sse_buffer", "must be >= 1")
    check(server.max_upload_bytes >= 1024, "server.max_upload_bytes", "must be >= 1024")
    check(server.upload_min_free_bytes >= 0, "server.upload_min_free_bytes", "must be >= 0")
    for i, cidr in enumerate(server.trusted_clients):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            check(False, f"server.trusted_clients[{i}]", "must be an IP address or CIDR network")
    for i, cidr in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            check(False, f"server.trusted_proxies[{i}]", "must be an IP address or CIDR network")
    check(
        not (server.api_key and server.api_key_hash),
        "server.api_key_hash",
        "set either api_key or api_key_hash, not both",
    )
    check(
        not server.api_key_hash or _KEY_HASH_RE.fullmatch(server.api_key_hash) is not None,
        "server.api_key_hash",
        'must be "sha256:" followed by 64 lowercase hex digits'
        " (`printfarmd api-key rotate` writes it)",
    )
    check(server.max_connections >= 1, "server.max_connections", "must be >= 1")
    for i, origin in enumerate(server.cors_domains):
        check(
            origin.startswith(("http://", "https://")) and "*" not in origin,
            f"server.cors_domains[{i}]",
            "must be an exact http:// or https:// origin (no wildcards)",
        )
    check(bool(config.storage.data_dir.strip()), "storage.data_dir", "must not be empty")
    check(config.storage.backup_interval >= 0, "storage.backup_interval", "must be >= 0")
    check(config.storage.backup_keep >= 1, "storage.backup_keep", "must be >= 1")
    check(config.storage.event_retention_days >= 0, "storage.event_retention_days", "must be >= 0")
    check(
        config.storage.idempotency_retention_days >= 0,
        "storage.idempotency_retention_days",
        "must be >= 0",
    )
    if config.storage.backend is StorageBackend.POSTGRESQL:
        check(
            bool(config.storage.dsn.strip()),
            "storage.dsn",
            'must name the PostgreSQL database with backend = "postgresql" '
            '(e.g. "postgresql://printfarmd@db-host/printfarm")',
        )
    else:
        check(
            not config.storage.dsn,
            "storage.dsn",
            'is only used with backend = "postgresql"',
        )
    if server.node_id:
        check(
            _NODE_ID_RE.fullmatch(server.node_id) is not None,
            "server.node_id",
            "must be 1 to 64 letters, digits, '-', '_' or '.'",
        )
        check(
            config.storage.backend is StorageBackend.POSTGRESQL,
            "server.node_id",
            'needs storage.backend = "postgresql": several daemons share a PostgreSQL '
            "database, never a SQLite file",
        )
    check(
        MIN_LEASE <= server.lease_seconds <= MAX_LEASE,
        "server.lease_seconds",
        f"must be between {MIN_LEASE:g} and {MAX_LEASE:g}, got {server.lease_seconds:g}",
    )
    check(config.watchdog.interval > 0, "watchdog.interval", "must be > 0")
    check(config.watchdog.stale_threshold > 0, "watchdog.stale_threshold", "must be > 0")

    scheduler = config.scheduler
    check(scheduler.cooldown_seconds >= 0, "scheduler.cooldown_seconds", "must be >= 0")
    check(scheduler.max_retries >= 0, "scheduler.max_retries", "must be >= 0")
    check(bool(scheduler.retry_backoff), "scheduler.retry_backoff", "must not be empty")
    for index, delay in enumerate(scheduler.retry_backoff):
        check(delay >= 0, f"scheduler.retry_backoff[{index}]", "must be >= 0")
    check(scheduler.max_priority >= 1, "scheduler.max_priority", "must be >= 1")
    errors.extend(_notify_errors(config.notify))

    check(
        config.logging.level in LOG_LEVELS,
        "logging.level",
        f"expected one of {', '.join(LOG_LEVELS)}, got {_quote(config.logging.level)}",
    )

    first_index: dict[str, int] = {}
    for index, printer in enumerate(config.printers):
        key = f"printers[{index}]"
        if PRINTER_ID_RE.fullmatch(printer.id) is None:
            errors.append(
                f"{key}.id: must be 1 to 64 characters from A-Z a-z 0-9 _ . -, "
                f"got {_quote(printer.id)}"
            )
        elif printer.id in first_index:
            errors.append(
                f"{key}.id: duplicate printer id {_quote(printer.id)} "
                f"(also printers[{first_index[printer.id]}])"
            )
        else:
            first_index[printer.id] = index
        check(
            printer.driver in KNOWN_DRIVERS,
            f"{key}.driver",
            f"unknown driver {_quote(printer.driver)} (known: {', '.join(sorted(KNOWN_DRIVERS))})",
        )
        for sub, material in enumerate(printer.materials):
            check(bool(material), f"{key}.materials[{sub}]", "must not be empty")
        check(
            not printer.colours or len(printer.colours) == len(printer.materials),
            f"{key}.colours",
            "must list one colour per material, in the same order",
        )
        for sub, colour in enumerate(printer.colours):
            check(bool(COLOUR_RE.fullmatch(colour)), f"{key}.colours[{sub}]", "expected #RRGGBB")
        check(printer.nozzle_diameter > 0, f"{key}.nozzle_diameter", "must be > 0")
        for sub, size in enumerate(printer.bed_size):
            check(size > 0, f"{key}.bed_size[{sub}]", "must be > 0")
        for sub, tag in enumerate(printer.tags):
            check(bool(tag.strip()), f"{key}.tags[{sub}]", "must not be empty")
        simulator = printer.simulator
        check(simulator.speed > 0, f"{key}.simulator.speed", "must be > 0")
        check(
            0 <= simulator.failure_rate <= 1,
            f"{key}.simulator.failure_rate",
            "must be between 0 and 1",
        )
        check(
            simulator.default_print_time > 0, f"{key}.simulator.default_print_time", "must be > 0"
        )
        check(simulator.report_interval > 0, f"{key}.simulator.report_interval", "must be > 0")
        errors.extend(_moonraker_errors(printer, key))
        errors.extend(_octoprint_errors(printer, key))
        errors.extend(_prusalink_errors(printer, key))
        errors.extend(_bambu_errors(printer, key))
        if printer.driver == "mqtt" and not config.mqtt.host.strip():
            errors.append(f'{key}.driver: "mqtt" needs a broker: set mqtt.host')
    errors.extend(_mqtt_errors(config.mqtt))
    errors.extend(_upkeep_errors(config))
    return errors


_CLOCK_RE = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


def _upkeep_errors(config: Config) -> list[str]:
    """Range rules of ``[spoolman]``, ``[maintenance]``, ``[power]``, ``[cost]`` and the
    printers' upkeep keys (issue 16)."""
    errors: list[str] = []
    sm = config.spoolman
    if sm.url and not re.match(r"https?://[^/\s]+", sm.url):
        errors.append(f"spoolman.url: expected an http:// or https:// URL, got {_quote(sm.url)}")
    for name in ("timeout", "refresh_interval"):
        if not getattr(sm, name) > 0:
            errors.append(f"spoolman.{name}: must be > 0")
    if not sm.retry_backoff:
        errors.append("spoolman.retry_backoff: must not be empty")
    for index, delay in enumerate(sm.retry_backoff):
        if delay < 0:
            errors.append(f"spoolman.retry_backoff[{index}]: must be >= 0")
    for name in ("weight_margin", "weight_margin_percent"):
        if getattr(sm, name) < 0:
            errors.append(f"spoolman.{name}: must be >= 0")
    ids = {p.id for p in config.printers}
    if sm.facade_printer and sm.facade_printer not in ids:
        errors.append(f"spoolman.facade_printer: no printer {_quote(sm.facade_printer)}")
    mt = config.maintenance
    for name in ("every_hours", "every_prints", "every_grams"):
        if getattr(mt, name) < 0:
            errors.append(f"maintenance.{name}: must be >= 0 (0 = no threshold)")
    pw = config.power
    if pw.max_starts < 0:
        errors.append("power.max_starts: must be >= 0 (0 = no limit)")
    if not pw.window > 0:
        errors.append("power.window: must be > 0")
    seen: set[str] = set()
    for index, group in enumerate(pw.groups):
        key = f"power.groups[{index}]"
        if not group.name.strip():
            errors.append(f"{key}.name: must not be empty")
        elif group.name in seen:
            errors.append(f"{key}.name: duplicate group {_quote(group.name)}")
        seen.add(group.name)
        if group.max_starts < 0:
            errors.append(f"{key}.max_starts: must be >= 0 (0 = no limit)")
        if not group.window > 0:
            errors.append(f"{key}.window: must be > 0")
    if pw.timezone:
        try:
            zoneinfo.ZoneInfo(pw.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            errors.append(f"power.timezone: unknown time zone {_quote(pw.timezone)}")
    cost = config.cost
    for name in ("filament_price_per_kg", "energy_price_per_kwh"):
        if getattr(cost, name) < 0:
            errors.append(f"cost.{name}: must be >= 0")
    if not 1 <= len(cost.currency) <= 8:
        errors.append("cost.currency: must be 1 to 8 characters")
    for index, printer in enumerate(config.printers):
        key = f"printers[{index}]"
        if not 1 <= printer.tools <= 64:
            errors.append(f"{key}.tools: must be between 1 and 64")
        if printer.power_watts < 0:
            errors.append(f"{key}.power_watts: must be >= 0")
        if len(printer.power_group) > 64:
            errors.append(f"{key}.power_group: longer than 64 characters")
        quiet = printer.quiet_hours
        if quiet and (len(quiet) != 2 or not all(_CLOCK_RE.fullmatch(t) for t in quiet)):
            errors.append(f'{key}.quiet_hours: expected two local times such as ["22:00", "07:00"]')
        elif quiet and quiet[0] == quiet[1]:
            errors.append(f"{key}.quiet_hours: the start and the end must differ")
    return errors


def _mqtt_errors(mqtt: MqttConfig) -> list[str]:
    """Range rules of ``[mqtt]`` and its topic templates."""
    errors = [
        f"mqtt.{name}: must be > 0"
        for name in (
            "keepalive",
            "backoff_initial",
            "backoff_max",
            "printer_timeout",
            "start_timeout",
            "resend_interval",
        )
        if not getattr(mqtt, name) > 0
    ]
    if not 1 <= mqtt.port <= 65535:
        errors.append(f"mqtt.port: must be between 1 and 65535, got {mqtt.port}")
    if mqtt.discovery_window < 0:
        errors.append("mqtt.discovery_window: must be >= 0")
    for name in ("printer_progress", "assignment", "command", "robot_progress"):
        template = getattr(mqtt.topics, name)
        if template.count("{id}") != 1 or any(c in template for c in "+#"):
            errors.append(f"mqtt.topics.{name}: must contain {{id}} once and no wildcards")
    if not mqtt.topics.printers or any(c in mqtt.topics.printers for c in "+#"):
        errors.append("mqtt.topics.printers: must be a topic without wildcards")
    return errors


def _moonraker_errors(printer: PrinterConfig, key: str) -> list[str]:
    """Problems with ``printers[i].moonraker`` (the URL only matters for that driver)."""
    opts, key = printer.moonraker, f"{key}.moonraker"
    errors = [
        f"{key}.{name}: must be > 0"
        for name in ("timeout", "upload_timeout", "heartbeat", "backoff_initial", "backoff_max")
        if not getattr(opts, name) > 0
    ]
    if opts.offline_after < 1:
        errors.append(f"{key}.offline_after: must be >= 1")
    if printer.driver == "moonraker" and not re.match(r"https?://[^/\s]+", opts.url):
        errors.append(f"{key}.url: expected an http:// or https:// URL, got {_quote(opts.url)}")
    return errors


_TIMING_KEYS = ("timeout", "upload_timeout", "heartbeat", "backoff_initial", "backoff_max")


def _link_errors(opts: OctoPrintOptions | PrusaLinkOptions, key: str, used: bool) -> list[str]:
    """Range rules shared by the network drivers' option tables; the URL only matters
    when the printer uses that driver (``used``)."""
    errors = [f"{key}.{name}: must be > 0" for name in _TIMING_KEYS if not getattr(opts, name) > 0]
    if opts.offline_after < 1:
        errors.append(f"{key}.offline_after: must be >= 1")
    if used and not re.match(r"https?://[^/\s]+", opts.url):
        errors.append(f"{key}.url: expected an http:// or https:// URL, got {_quote(opts.url)}")
    return errors


def _octoprint_errors(printer: PrinterConfig, key: str) -> list[str]:
    """Problems with ``printers[i].octoprint``."""
    opts, key, used = printer.octoprint, f"{key}.octoprint", printer.driver == "octoprint"
    errors = _link_errors(opts, key, used)
    if used and not opts.api_key.strip():
        errors.append(f'{key}.api_key: required with driver = "octoprint"')
    return errors


def _prusalink_errors(printer: PrinterConfig, key: str) -> list[str]:
    """Problems with ``printers[i].prusalink``: a password (digest) or an API key."""
    opts, key, used = printer.prusalink, f"{key}.prusalink", printer.driver == "prusalink"
    errors = _link_errors(opts, key, used)
    if used and not opts.password and not opts.api_key:
        errors.append(f'{key}.password: required with driver = "prusalink" (or set api_key)')
    if opts.password and opts.api_key:
        errors.append(f"{key}.api_key: set either password or api_key, not both")
    if opts.password and not opts.username.strip():
        errors.append(f"{key}.username: must not be empty with a password")
    if opts.storage and not re.fullmatch(r"/[A-Za-z0-9_-]+", opts.storage):
        errors.append(f"{key}.storage: expected a storage path like /local or /usb")
    return errors


_BAMBU_SERIAL_RE = re.compile(r"[A-Za-z0-9]{1,40}")


def _bambu_errors(printer: PrinterConfig, key: str) -> list[str]:
    """Problems with ``printers[i].bambu`` (host, serial and code only for that driver)."""
    opts, key = printer.bambu, f"{key}.bambu"
    errors = [
        f"{key}.{name}: must be > 0"
        for name in (
            "timeout",
            "upload_timeout",
            "start_timeout",
            "pushall_interval",
            "backoff_initial",
            "backoff_max",
        )
        if not getattr(opts, name) > 0
    ]
    for name in ("mqtt_port", "ftps_port"):
        port = getattr(opts, name)
        if not 1 <= port <= 65535:
            errors.append(f"{key}.{name}: must be between 1 and 65535, got {port}")
    if opts.keepalive < 5:
        errors.append(f"{key}.keepalive: must be >= 5")
    if opts.ca_fingerprint and not re.fullmatch(
        r"[0-9A-Fa-f]{64}", re.sub(r"[\s:]", "", opts.ca_fingerprint)
    ):
        errors.append(
            f"{key}.ca_fingerprint: expected a SHA-256 fingerprint (64 hex digits, colons allowed)"
        )
    if printer.driver == "bambu":
        if not opts.host.strip():
            errors.append(f'{key}.host: required with driver = "bambu"')
        if not _BAMBU_SERIAL_RE.fullmatch(opts.serial):
            errors.append(
                f"{key}.serial: expected the printer's serial number (letters and digits), "
                f"got {_quote(opts.serial)}"
            )
        if not opts.access_code:
            errors.append(f'{key}.access_code: required with driver = "bambu"')
    return errors


def _with_state_dirs(config: Config) -> Config:
    """Give every Bambu printer its pin folder under the data dir."""
    if not any(p.driver == "bambu" for p in config.printers):
        return config
    state = str(config.data_path / "bambu")
    printers = tuple(
        msgspec.structs.replace(p, bambu=msgspec.structs.replace(p.bambu, state_dir=state))
        if p.driver == "bambu"
        else p
        for p in config.printers
    )
    return msgspec.structs.replace(config, printers=printers)


def resolve_timezone(name: str) -> datetime.tzinfo:
    """The zone ``name`` (IANA), or the system's for an empty name (``TZ``, else
    ``/etc/localtime``, else UTC). Reads the zone files: call it at start-up."""
    if name:
        return zoneinfo.ZoneInfo(name)
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError):
            return zoneinfo.ZoneInfo(env)
    try:
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return datetime.UTC


def validate_config(config: Config) -> None:
    """Check the rules types cannot express (ranges, unique ids, known drivers).

    Raises ``ConfigError`` listing every problem, one ``dotted.key: message`` per line.
    """
    errors = _semantic_errors(config)
    if errors:
        raise ConfigError("\n".join(errors))


def config_from_dict(data: Mapping[str, Any], *, base_dir: Path = Path(".")) -> Config:
    """Structure parsed TOML into a validated ``Config`` whose ``base_dir`` is ``base_dir``.

    Raises ``ConfigError`` naming the dotted key of every problem, one per line: wrong
    types (no coercion: ``"3"`` is not a number, ``1.5`` not an integer, ``true`` neither),
    unknown keys (``base_dir`` included: it is not a TOML key), missing required keys, then
    the semantic rules of ``validate_config``.
    """
    config = _structure(data)
    config = msgspec.structs.replace(_normalize(config), base_dir=base_dir)
    validate_config(config)
    return _with_state_dirs(config)


def load_config(path: Path) -> Config:
    """Read, structure and validate the TOML file at ``path``.

    ``base_dir`` becomes the file's (absolute) folder, so relative paths in the file are
    relative to the file, not to the working directory. Raises ``ConfigError``: missing or
    unreadable file, TOML syntax error (with line and column), or the errors of
    ``config_from_dict``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file is a directory: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return config_from_dict(data, base_dir=path.absolute().parent)


def dump_config(config: Config) -> str:
    """The TOML text of ``config`` (every settable key; ``base_dir`` is not written).

    ``config_from_dict(tomllib.loads(dump_config(c)))`` equals ``c`` up to ``base_dir``.
    """
    import tomli_w  # only `config` writes TOML (issue 17: not imported at serve)

    return tomli_w.dumps(_toml_data(config))


def starter_config(api_key_hash: str) -> dict[str, Any]:
    """The TOML data ``printfarmd init`` writes: defaults, the key's hash, two simulated
    printers."""
    config = Config(
        server=ServerConfig(api_key_hash=api_key_hash),
        printers=(
            PrinterConfig(id="sim-1", name="Simulated printer 1", materials=("PLA",)),
            PrinterConfig(id="sim-2", name="Simulated printer 2", materials=("PLA", "PETG")),
        ),
    )
    data = _toml_data(config)
    del data["server"]["api_key"]  # only the hash is stored
    return data


def _toml_data(config: Config) -> dict[str, Any]:
    """``config`` as TOML data: every settable key, none of the ``internal_keys``."""
    return typing.cast(dict[str, Any], _toml_value(config))


def _toml_value(value: Any) -> Any:
    # TOML-native: tables as dicts, tuples as arrays (lists), enums as their values.
    cls: type = type(value)
    if is_config_class(cls):
        return {f.name: _toml_value(getattr(value, f.name)) for f in settable_fields(cls)}
    if isinstance(value, tuple):
        return [_toml_value(item) for item in value]
    if isinstance(value, enum.StrEnum):
        return value.value
    return value


def _field_paths(cls: type, prefix: str) -> Iterator[str]:
    for field in settable_fields(cls):
        tp = field.type
        key = f"{prefix}{field.name}"
        args = typing.get_args(tp)
        if is_config_class(tp):
            yield from _field_paths(tp, f"{key}.")
        elif _is_tuple(tp) and args and is_config_class(args[0]):
            yield from _field_paths(args[0], f"{key}[].")
        else:
            yield key


def config_field_paths() -> list[str]:
    """Every dotted key a user can set, e.g. ``server.port``, ``printers[].simulator.speed``.

    Derived from the config classes, so a new field shows up here (and in the tests that
    check it is documented) without anyone remembering to list it.
    """
    return list(_field_paths(Config, ""))
