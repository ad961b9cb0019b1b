"""Upkeep in the store (issue 16): spool bindings, what is known of the spools, each
print attempt's usage and cost (which doubles as the outbox of Spoolman usage reports),
the printers' maintenance counters and the maintenance log.

- ``attempt_usage`` holds one row per ended attempt, written in the transaction that
  ended it (``RecordUsage``), linked to its ``history`` row (closed by the history
  trigger just before, in the same transaction). ``report`` is ``none`` (nothing to tell
  Spoolman), ``pending``, ``sent`` or ``dropped``: the outbox. The Spoolman service
  records each attempt (``note_attempt``) and the spool's used weight read before its
  first send (``set_base``), so that after a crash it can tell whether Spoolman already
  has a report it never heard answered (``services/spoolman.py``); ``MarkUsage`` (from
  the farm's commit) settles it.
- Plain SQL (no SQLite-only functions): a PostgreSQL port keeps it.

Functions take a ``Conn`` and are blocking; ``UpkeepStore`` runs them on the
store's reader and writer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from printfarmd.core.farm import outputs as out
from printfarmd.core.farm.upkeep_state import Counters, SpoolInfo
from printfarmd.store.dialect import Conn

if TYPE_CHECKING:
    from printfarmd.store.store import Store

MIGRATION = """
ALTER TABLE jobs ADD COLUMN filament_weight REAL;
ALTER TABLE jobs ADD COLUMN not_before REAL;
ALTER TABLE jobs ADD COLUMN spool_id INTEGER;
CREATE TABLE spool_bindings (
    printer_id TEXT NOT NULL,
    tool INTEGER NOT NULL,
    spool_id INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (printer_id, tool)
);
CREATE TABLE spools (
    id INTEGER PRIMARY KEY,
    material TEXT,
    colours TEXT NOT NULL,
    remaining REAL,
    used REAL NOT NULL,
    price_per_kg REAL,
    name TEXT NOT NULL,
    archived INTEGER NOT NULL,
    missing INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE attempt_usage (
    key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    printer_id TEXT,
    spool_id INTEGER,
    history_id INTEGER,
    status TEXT NOT NULL,
    fraction REAL NOT NULL,
    grams REAL,
    seconds REAL NOT NULL,
    filament_cost REAL NOT NULL,
    energy_kwh REAL NOT NULL,
    energy_cost REAL NOT NULL,
    currency TEXT NOT NULL,
    at REAL NOT NULL,
    report TEXT NOT NULL,
    report_attempts INTEGER NOT NULL DEFAULT 0,
    base_used REAL,
    last_error TEXT,
    reported_at REAL
);
CREATE INDEX attempt_usage_job ON attempt_usage (job_id);
CREATE INDEX attempt_usage_history ON attempt_usage (history_id);
CREATE INDEX attempt_usage_pending ON attempt_usage (at) WHERE report = 'pending';
CREATE TABLE printer_upkeep (
    printer_id TEXT PRIMARY KEY,
    print_seconds REAL NOT NULL,
    prints INTEGER NOT NULL,
    grams REAL NOT NULL,
    since REAL,
    due TEXT,
    due_at REAL
);
CREATE TABLE maintenance_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    printer_id TEXT NOT NULL,
    at REAL NOT NULL,
    done_by TEXT NOT NULL,
    work TEXT NOT NULL,
    print_seconds REAL NOT NULL,
    prints INTEGER NOT NULL,
    grams REAL NOT NULL,
    since REAL,
    due TEXT,
    recorded_at REAL NOT NULL
);
CREATE INDEX maintenance_log_printer ON maintenance_log (printer_id, at);
"""

#: Most entries one listing returns.
MAX_PAGE = 1000


class Outgoing(msgspec.Struct, frozen=True):
    """A usage report still owed to Spoolman (an ``attempt_usage`` row, ``pending``)."""

    key: str
    spool_id: int
    grams: float
    at: float
    attempts: int
    base_used: float | None
    last_error: str | None


class Usage(msgspec.Struct, frozen=True):
    """One attempt's usage and cost, as stored."""

    key: str
    job_id: str
    printer_id: str | None
    spool_id: int | None
    history_id: int | None
    status: str
    fraction: float
    grams: float | None
    seconds: float
    filament_cost: float
    energy_kwh: float
    energy_cost: float
    currency: str
    at: float
    report: str
    report_attempts: int
    last_error: str | None
    reported_at: float | None


_USAGE_COLUMNS = Usage.__struct_fields__


class LogEntry(msgspec.Struct, frozen=True):
    id: int
    printer_id: str
    at: float
    by: str
    work: str
    counters: Counters
    due: str | None
    recorded_at: float


class Memory(msgspec.Struct, frozen=True):
    """What the store holds for the farm's upkeep state at a (re)start."""

    bindings: dict[str, tuple[int | None, ...]]
    spools: dict[int, SpoolInfo]
    pending: list[Outgoing]
    upkeep: dict[str, tuple[Counters, str | None, float | None]]


# ---------------------------------------------------------------- writes (the farm's commit)


def apply(conn: Conn, rec: Any) -> None:
    """Write one of ``outputs.UPKEEP_RECORDS``."""
    if isinstance(rec, out.PutBinding):
        if rec.spool_id is None:
            conn.execute(
                "DELETE FROM spool_bindings WHERE printer_id = ? AND tool = ?",
                (rec.printer_id, rec.tool),
            )
        else:
            conn.execute(
                "INSERT INTO spool_bindings (printer_id, tool, spool_id, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (printer_id, tool) DO UPDATE SET "
                "spool_id = excluded.spool_id, updated_at = excluded.updated_at",
                (rec.printer_id, rec.tool, rec.spool_id, rec.at),
            )
    elif isinstance(rec, out.PutSpool):
        s: SpoolInfo = rec.info
        conn.execute(
            "INSERT INTO spools (id, material, colours, remaining, used, price_per_kg, name, "
            "archived, missing, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET material = excluded.material, "
            "colours = excluded.colours, remaining = excluded.remaining, used = excluded.used, "
            "price_per_kg = excluded.price_per_kg, name = excluded.name, "
            "archived = excluded.archived, missing = excluded.missing, "
            "updated_at = excluded.updated_at",
            (
                s.id,
                s.material,
                orjson.dumps(list(s.colours)).decode(),
                s.remaining,
                s.used,
                s.price_per_kg,
                s.name,
                int(s.archived),
                int(s.missing),
                s.updated_at,
            ),
        )
    elif isinstance(rec, out.RecordUsage):
        conn.execute(
            "INSERT INTO attempt_usage (key, job_id, printer_id, spool_id, history_id, status, "
            "fraction, grams, seconds, filament_cost, energy_kwh, energy_cost, currency, at, "
            "report) VALUES (?, ?, ?, ?, (SELECT MAX(h.id) FROM history h WHERE h.job_id = ? "
            "AND h.end_time IS NOT NULL), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.key,
                rec.job_id,
                rec.printer_id,
                rec.spool_id,
                rec.job_id,
                rec.status,
                rec.fraction,
                rec.grams,
                rec.seconds,
                rec.filament_cost,
                rec.energy_kwh,
                rec.energy_cost,
                rec.currency,
                rec.at,
                "pending" if rec.report else "none",
            ),
        )
    elif isinstance(rec, out.MarkUsage):
        conn.execute(
            "UPDATE attempt_usage SET report = ?, reported_at = ?, last_error = ? "
            "WHERE key = ? AND report = 'pending'",
            (rec.status, rec.at, rec.error, rec.key),
        )
    elif isinstance(rec, out.PutUpkeep):
        c: Counters = rec.counters
        conn.execute(
            "INSERT INTO printer_upkeep (printer_id, print_seconds, prints, grams, since, due, "
            "due_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (printer_id) DO UPDATE SET "
            "print_seconds = excluded.print_seconds, prints = excluded.prints, "
            "grams = excluded.grams, since = excluded.since, due = excluded.due, "
            "due_at = excluded.due_at",
            (rec.printer_id, c.print_seconds, c.prints, c.grams, c.since, rec.due, rec.due_at),
        )
    elif isinstance(rec, out.AppendMaintenance):
        c = rec.counters
        conn.execute(
            "INSERT INTO maintenance_log (printer_id, at, done_by, work, print_seconds, prints, "
            "grams, since, due, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.printer_id,
                rec.at,
                rec.by,
                rec.work,
                c.print_seconds,
                c.prints,
                c.grams,
                c.since,
                rec.due,
                rec.recorded_at,
            ),
        )
    else:  # pragma: no cover - UPKEEP_RECORDS is closed
        raise TypeError(f"not an upkeep record: {rec!r}")


# ---------------------------------------------------------------- writes (the Spoolman service)


def set_base(conn: Conn, key: str, base_used: float | None) -> None:
    """The spool's used weight read before the report ``key`` is sent (``None``: the
    last attempt certainly did not reach Spoolman, read it again next time)."""
    conn.execute(
        "UPDATE attempt_usage SET base_used = ? WHERE key = ? AND report = 'pending'",
        (base_used, key),
    )


def note_attempt(conn: Conn, key: str, error: str | None) -> None:
    conn.execute(
        "UPDATE attempt_usage SET report_attempts = report_attempts + 1, last_error = ? "
        "WHERE key = ? AND report = 'pending'",
        (error, key),
    )


# ---------------------------------------------------------------- reads


def _spool(row: Sequence[Any]) -> SpoolInfo:
    sid, material, colours, remaining, used, price, name, archived, missing, at = row
    return SpoolInfo(
        id=int(sid),
        material=material,
        colours=tuple(orjson.loads(colours)),
        remaining=remaining,
        used=float(used),
        price_per_kg=price,
        name=name,
        archived=bool(archived),
        missing=bool(missing),
        updated_at=float(at),
    )


def pending(conn: Conn, printers: Collection[str] | None = None) -> list[Outgoing]:
    """Every report still owed to Spoolman, oldest first; with ``printers``, only those
    of attempts on them (issue 18: each daemon of a cluster reports its own)."""
    where, params = "report = 'pending'", list(printers or ())
    if printers is not None:
        where += f" AND printer_id IN ({', '.join('?' for _ in params) or 'NULL'})"
    rows = conn.execute(
        "SELECT key, spool_id, grams, at, report_attempts, base_used, last_error "
        f"FROM attempt_usage WHERE {where} ORDER BY at, key",
        params,
    ).fetchall()
    return [
        Outgoing(k, int(sid), float(g or 0.0), float(at), int(n), base, err)
        for k, sid, g, at, n, base, err in rows
    ]


def memory(conn: Conn) -> Memory:
    bindings: dict[str, list[int | None]] = {}
    for pid, tool, sid in conn.execute(
        "SELECT printer_id, tool, spool_id FROM spool_bindings ORDER BY printer_id, tool"
    ):
        tools = bindings.setdefault(pid, [])
        tools.extend([None] * (int(tool) + 1 - len(tools)))
        tools[int(tool)] = int(sid)
    spools = {
        s.id: s
        for s in map(
            _spool,
            conn.execute(
                "SELECT id, material, colours, remaining, used, price_per_kg, name, archived, "
                "missing, updated_at FROM spools"
            ),
        )
    }
    upkeep = {
        pid: (Counters(float(secs), int(n), float(g), since), due, due_at)
        for pid, secs, n, g, since, due, due_at in conn.execute(
            "SELECT printer_id, print_seconds, prints, grams, since, due, due_at "
            "FROM printer_upkeep"
        )
    }
    return Memory({pid: tuple(t) for pid, t in bindings.items()}, spools, pending(conn), upkeep)


def due_printers(conn: Conn) -> list[tuple[str, str, float]]:
    """(printer, why, since when) of every printer due for maintenance."""
    rows = conn.execute(
        "SELECT printer_id, due, due_at FROM printer_upkeep WHERE due IS NOT NULL "
        "AND due_at IS NOT NULL ORDER BY due_at"
    ).fetchall()
    return [(pid, due, float(at)) for pid, due, at in rows]


def usage_of_jobs(conn: Conn, job_ids: Sequence[str]) -> dict[str, list[Usage]]:
    """The attempts' usage of each of ``job_ids`` that has any, oldest first."""
    out: dict[str, list[Usage]] = {}
    ids = list(dict.fromkeys(job_ids))
    cols = ", ".join(_USAGE_COLUMNS)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for row in conn.execute(
            f"SELECT {cols} FROM attempt_usage WHERE job_id IN ({marks}) ORDER BY at, key", chunk
        ):
            u = Usage(*row)
            out.setdefault(u.job_id, []).append(u)
    return out


def usage_of_attempts(conn: Conn, history_ids: Sequence[int]) -> dict[int, Usage]:
    """The usage row of each history attempt of ``history_ids`` that has one."""
    out: dict[int, Usage] = {}
    ids = list(dict.fromkeys(history_ids))
    cols = ", ".join(_USAGE_COLUMNS)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for row in conn.execute(
            f"SELECT {cols} FROM attempt_usage WHERE history_id IN ({marks})", chunk
        ):
            u = Usage(*row)
            assert u.history_id is not None
            out[u.history_id] = u
    return out


def log_page(
    conn: Conn, printer_id: str | None, limit: int, offset: int
) -> tuple[list[LogEntry], int]:
    """A page of the maintenance log (newest first) and how many entries match."""
    clause, params = ("WHERE printer_id = ?", [printer_id]) if printer_id else ("", [])
    total = conn.execute(f"SELECT COUNT(*) FROM maintenance_log {clause}", params).fetchone()[0]
    rows = conn.execute(
        "SELECT id, printer_id, at, done_by, work, print_seconds, prints, grams, since, due, "
        f"recorded_at FROM maintenance_log {clause} ORDER BY at DESC, id DESC LIMIT ? OFFSET ?",
        [*params, min(max(limit, 0), MAX_PAGE), max(offset, 0)],
    ).fetchall()
    entries = [
        LogEntry(
            int(i),
            pid,
            float(at),
            by,
            work,
            Counters(float(s), int(n), float(g), since),
            due,
            float(rec),
        )
        for i, pid, at, by, work, s, n, g, since, due, rec in rows
    ]
    return entries, int(total)


# ---------------------------------------------------------------- on the store


class UpkeepStore(msgspec.Struct, frozen=True):
    """The functions above on a ``Store`` (every method is a checkpoint)."""

    store: Store

    async def memory(self) -> Memory:
        return await self.store.run_read(memory)

    async def pending(self, printers: Collection[str] | None = None) -> list[Outgoing]:
        return await self.store.run_read(lambda c: pending(c, printers))

    async def set_base(self, key: str, base_used: float | None) -> None:
        await self.store.run_write(lambda c: set_base(c, key, base_used))

    async def note_attempt(self, key: str, error: str | None) -> None:
        await self.store.run_write(lambda c: note_attempt(c, key, error))

    async def due_printers(self) -> list[tuple[str, str, float]]:
        return await self.store.run_read(due_printers)

    async def usage_of_jobs(self, job_ids: Sequence[str]) -> dict[str, list[Usage]]:
        return await self.store.run_read(lambda c: usage_of_jobs(c, job_ids))

    async def usage_of_attempts(self, history_ids: Sequence[int]) -> dict[int, Usage]:
        return await self.store.run_read(lambda c: usage_of_attempts(c, history_ids))

    async def log_page(
        self, printer_id: str | None, limit: int, offset: int
    ) -> tuple[list[LogEntry], int]:
        return await self.store.run_read(lambda c: log_page(c, printer_id, limit, offset))
