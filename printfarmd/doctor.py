"""``printfarmd doctor``: say what is wrong with an installation, without the daemon.

Checks, in order: the config file is valid (if not, nothing else can be checked); the
database passes ``quick_check`` (opened read-only: doctor never migrates or repairs);
free disk under the data folder; the wall clock is plausible; every Moonraker printer
answers; the MQTT broker accepts a connection. Each check yields a ``Finding``; the
command exits non-zero when any finding is a problem.

The judgements (``disk_finding``, ``clock_finding``) are pure; the probes around them do
the I/O, each bounded by a timeout.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec

from printfarmd.config import Config, PrinterConfig, ServerConfig, load_config
from printfarmd.errors import ConfigError

DB_NAME = "printfarmd.db"  # the daemon's; not imported to keep doctor light
#: Below this much free space under the data folder, backups and the WAL are at risk.
MIN_FREE_BYTES = 200 * 1024 * 1024
#: A Pi has no real-time clock: until NTP syncs it may think it is 1970 (or the last
#: shutdown). Any time before this is certainly wrong.
EARLIEST_PLAUSIBLE = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
#: Longest wait for one printer or the broker.
PROBE_TIMEOUT = 5.0


class Finding(msgspec.Struct, frozen=True):
    """One check's outcome: ``ok`` False means a problem the operator should fix."""

    check: str
    ok: bool
    detail: str


def disk_finding(free: int, total: int) -> Finding:
    """Pure: judge free space on the data folder's file system."""
    mib = free // (1024 * 1024)
    detail = f"{mib} MiB free of {total // (1024 * 1024)} MiB"
    if free < MIN_FREE_BYTES:
        return Finding("disk", False, f"{detail}: under {MIN_FREE_BYTES // 2**20} MiB")
    return Finding("disk", True, detail)


def clock_finding(now: float, newest_file: float | None) -> Finding:
    """Pure: the wall clock ``now`` against a floor and the newest database write."""
    shown = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if now < EARLIEST_PLAUSIBLE:
        return Finding("clock", False, f"{shown}: not set (is NTP synchronised?)")
    if newest_file is not None and newest_file > now + 300:
        return Finding("clock", False, f"{shown}: behind the database's last write")
    return Finding("clock", True, shown)


def check_database(path: Path) -> Finding:
    """Read-only ``quick_check`` of the database; a missing file is fine (created at start)."""
    if not path.exists():
        return Finding("database", True, f"{path}: none yet (created at first start)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Finding("database", False, f"{path}: {exc}")
    if rows != ["ok"]:
        return Finding("database", False, f"{path}: damaged: {'; '.join(map(str, rows[:3]))}")
    return Finding("database", True, f"{path}: integrity ok")


def check_postgresql(dsn: str) -> Finding:
    """issue 18: the configured PostgreSQL database answers, and at which schema version."""
    from printfarmd.store import postgresql

    where = postgresql.describe(dsn)
    try:
        conn = postgresql.connect(dsn)
    except postgresql.Error as exc:
        return Finding("database", False, f"{where}: cannot connect: {str(exc).strip()}")
    try:
        version = postgresql.read_schema_version(conn)
    except postgresql.Error as exc:
        return Finding("database", False, f"{where}: {str(exc).strip()}")
    finally:
        conn.close()
    return Finding("database", True, f"{where}: reachable, schema version {version}")


#: The key config.example.toml ships with: everyone who read the file knows it.
DEMO_KEY = "demo-key-change-me"
#: Plain-text keys shorter than this are guessable (``printfarmd init`` makes 43 characters).
MIN_KEY_LENGTH = 16


def key_finding(server: ServerConfig) -> Finding:
    """How the API key is kept (issue 9): a hash is best; a public or short key is a problem."""
    if server.api_key_hash:
        return Finding("api key", True, "stored as its hash")
    rotate = "run `printfarmd api-key rotate`"
    if server.api_key == DEMO_KEY:
        return Finding("api key", False, f"the public demo key: {rotate}")
    if server.api_key and len(server.api_key) < MIN_KEY_LENGTH:
        return Finding("api key", False, f"only {len(server.api_key)} characters: {rotate}")
    if server.api_key:
        return Finding("api key", True, f"in plain text ({rotate} to keep only its hash)")
    if server.trusted_clients:
        return Finding("api key", True, "none: only server.trusted_clients get in")
    return Finding("api key", False, f"none, and no trusted clients: nobody gets in; {rotate}")


def check_printer(printer: PrinterConfig) -> Finding:
    """Whether one printer answers (Moonraker: ``GET /server/info``)."""
    name = f"printer {printer.id}"
    if printer.driver == "simulator":
        return Finding(name, True, "simulated (built in)")
    if printer.driver == "mqtt":
        return Finding(name, True, "reached through the MQTT broker")
    options = printer.moonraker
    headers = {"X-Api-Key": options.api_key} if options.api_key else {}
    url = options.url.rstrip("/") + "/server/info"
    try:
        response = httpx.get(url, headers=headers, timeout=min(options.timeout, PROBE_TIMEOUT))
    except httpx.HTTPError as exc:
        return Finding(name, False, f"{options.url}: unreachable ({type(exc).__name__})")
    if response.status_code != 200:
        return Finding(name, False, f"{options.url}: HTTP {response.status_code}")
    return Finding(name, True, f"{options.url}: answers")


def check_broker(config: Config) -> Finding | None:
    """A TCP connection to the MQTT broker, or None when MQTT is off."""
    host, port = config.mqtt.host, config.mqtt.port
    if not host:
        return None
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            pass
    except OSError as exc:
        return Finding("mqtt broker", False, f"{host}:{port}: {exc.strerror or exc}")
    return Finding("mqtt broker", True, f"{host}:{port}: accepts connections")


def diagnose(config_path: Path) -> Iterator[Finding]:
    """Every finding for the installation configured at ``config_path``. Blocking."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        yield Finding("config", False, exc.message)
        return
    yield Finding("config", True, f"{config_path}: {len(config.printers)} printers")
    yield key_finding(config.server)
    db = config.data_path / DB_NAME
    if config.storage.backend.value == "postgresql":
        yield check_postgresql(config.storage.dsn)
    else:
        yield check_database(db)
    existing = config.data_path
    while not existing.exists():
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    yield disk_finding(usage.free, usage.total)
    newest = max((p.stat().st_mtime for p in db.parent.glob(DB_NAME + "*")), default=None)
    yield clock_finding(time.time(), newest)
    # Printers are probed at once: ten dead printers must not take ten timeouts.
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        yield from pool.map(check_printer, config.printers)
    broker = check_broker(config)
    if broker is not None:
        yield broker
