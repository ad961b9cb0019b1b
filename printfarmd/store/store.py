"""The SQLite store: the only module that speaks SQL.

Durability rules (see docs/operations.md):

- WAL journal, ``synchronous=FULL`` unless configured otherwise (read back and
  checked), ``foreign_keys=ON``, ``busy_timeout=5000`` on every connection.
- ``PRAGMA quick_check`` before anything else; a damaged file raises
  ``DatabaseDamaged`` and is never replaced by an empty one.
- One writer. Callers hand it a unit of work; a writer task drains every unit that
  is waiting (up to ``MAX_BATCH``) and runs them in ONE transaction on a worker
  thread, each unit inside its own savepoint so one failing unit cannot undo
  another. A caller's ``await`` returns only after ``COMMIT`` returned: commit
  before acknowledgement. This is group commit: one fsync for many changes.
- Reads use a second connection (WAL readers never block the writer).

The interface speaks domain operations and returns ``models`` values, never rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs
import orjson
import sqlite_utils
import trio

from printfarmd.core.notify import Channel, Delivery, DeliveryStatus
from printfarmd.errors import DatabaseDamaged, FarmError, StorageBusy, StorageFull
from printfarmd.models import TERMINAL_STATES, Event, Job, JobState
from printfarmd.store.migrations import MIGRATIONS

log = logging.getLogger("printfarmd.store")

T = TypeVar("T")

MAX_BATCH = 100
BUSY_TIMEOUT_MS = 5000
_JSON_FIELDS = frozenset({"required_tags", "failed_printers", "min_bed"})
_JOB_FIELDS = tuple(f.name for f in attrs.fields(Job))
_JOB_COLUMNS = ", ".join(_JOB_FIELDS)
_UPSERT_JOB = (
    f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' for _ in _JOB_FIELDS)}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _JOB_FIELDS if c != "id")
)
_INSERT_EVENT = (
    "INSERT INTO events (type, at, job_id, printer_id, from_state, to_state, reason, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Sort keys the job listing accepts, mapped to SQL expressions (never user text).
JOB_SORTS: Mapping[str, str] = {
    "created": "created_at",
    "updated": "updated_at",
    "state": "state",
    "printer": "printer_id",
    "sku": "sku",
    "eta": "eta",
    "priority": "priority",
    "name": "name",
    "filename": "filename",
}


@attrs.frozen
class NewEvent:
    """An event to append to the log; the store assigns its ``seq``."""

    type: str
    at: float
    job_id: str | None = None
    printer_id: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    reason: str | None = None
    data: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class PrinterMemory:
    """What the store remembers about a printer across restarts."""

    plate_clear: bool
    maintenance: bool


@attrs.frozen
class StoreStatistics:
    """Counters since open: ``commits`` transactions holding ``units`` units of work."""

    commits: int
    units: int
    failed_units: int
    max_batch: int


@attrs.define
class _Unit(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: T | None = None
    error: BaseException | None = None


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _job_to_row(job: Job) -> tuple[object, ...]:
    row: list[object] = []
    for name in _JOB_FIELDS:
        value = getattr(job, name)
        if name in _JSON_FIELDS:
            value = None if value is None else _json(list(value))
        elif name == "state":
            value = value.value
        row.append(value)
    return tuple(row)


def _job_from_row(row: Sequence[Any]) -> Job:
    values = dict(zip(_JOB_FIELDS, row, strict=True))
    values["state"] = JobState(values["state"])
    values["required_tags"] = tuple(orjson.loads(values["required_tags"]))
    values["failed_printers"] = tuple(orjson.loads(values["failed_printers"]))
    if values["min_bed"] is not None:
        values["min_bed"] = tuple(orjson.loads(values["min_bed"]))
    return Job(**values)


def _event_from_row(row: Sequence[Any]) -> Event:
    seq, type_, at, job_id, printer_id, from_state, to_state, reason, data = row
    return Event(
        seq=seq,
        type=type_,
        at=at,
        job_id=job_id,
        printer_id=printer_id,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        data=orjson.loads(data),
    )


def _append_event(conn: sqlite3.Connection, ev: NewEvent, data_json: str | None = None) -> Event:
    cur = conn.execute(
        _INSERT_EVENT,
        (
            ev.type,
            ev.at,
            ev.job_id,
            ev.printer_id,
            ev.from_state,
            ev.to_state,
            ev.reason,
            data_json if data_json is not None else _json(dict(ev.data)),
        ),
    )
    seq = cur.lastrowid
    assert seq is not None
    return Event(
        seq=seq,
        type=ev.type,
        at=ev.at,
        job_id=ev.job_id,
        printer_id=ev.printer_id,
        from_state=ev.from_state,
        to_state=ev.to_state,
        reason=ev.reason,
        data=dict(ev.data),
    )


def map_sqlite_error(exc: sqlite3.Error) -> FarmError:
    """The domain error for a failed SQLite call (disk full, busy, I/O)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return StorageFull("the disk is full: nothing was stored")
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc):
        return StorageBusy("the database is busy: nothing was stored, try again")
    if primary == sqlite3.SQLITE_CONSTRAINT:
        return FarmError("a database constraint was violated: nothing was stored")
    return StorageBusy("the database could not be written: nothing was stored")


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    wanted = {"FULL": 2, "NORMAL": 1}[synchronous]
    got = conn.execute("PRAGMA synchronous").fetchone()[0]
    if got != wanted:
        conn.close()
        raise DatabaseDamaged(f"SQLite refused synchronous={synchronous} (got {got})")
    return conn


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_database(src: Path | sqlite3.Connection, dest: Path) -> None:
    """Online copy of the database through SQLite's backup API. Blocking.

    Safe while the daemon runs (WAL readers never block the writer). Writes a temp file,
    fsyncs it, checks it (``quick_check``), then renames it over ``dest`` and fsyncs the
    folder, so ``dest`` is always a whole, sound database. Raises ``DatabaseDamaged``
    if the copy fails its check.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True) if isinstance(src, Path) else src
    try:
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)
            ok = target.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        finally:
            target.close()
    finally:
        if isinstance(src, Path):
            source.close()
    if not ok:
        tmp.unlink(missing_ok=True)
        raise DatabaseDamaged(f"the backup of {dest.name} failed its integrity check")
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def open_database(path: Path, synchronous: str = "FULL") -> tuple[sqlite3.Connection, int]:
    """Open (or create) the database file, check it, migrate it. Blocking.

    Returns the writer connection and the number of migrations applied now.
    Raises ``DatabaseDamaged`` if the file exists but fails ``quick_check`` or is not
    a database; never recreates a damaged file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists() and path.stat().st_size > 0
    conn: sqlite3.Connection | None = None
    try:
        conn = _connect(path, synchronous)
        if existed:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if [r[0] for r in rows] != ["ok"]:
                detail = "; ".join(str(r[0]) for r in rows[:3])
                conn.close()
                raise DatabaseDamaged(f"database {path.name} failed its integrity check: {detail}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise DatabaseDamaged(f"could not switch {path.name} to WAL (got {mode})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            conn.close()
            raise DatabaseDamaged(
                f"database {path.name} has schema version {version}, newer than this "
                f"printfarmd knows ({len(MIGRATIONS)}); refusing to run an older version on it"
            )
        if existed and version < len(MIGRATIONS):
            # Reliability rule: a copy before the schema changes.
            backup_database(conn, path.parent / "backups" / f"pre-migration-v{version}.db")
        applied = 0
        for step, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript() commits first; run the step's statements in our own
            # transaction so a failed migration leaves the old schema intact.
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            applied += 1
        bad_fk = conn.execute("PRAGMA foreign_key_check").fetchall()
        if bad_fk:
            conn.close()
            raise DatabaseDamaged(f"database {path.name} has {len(bad_fk)} dangling references")
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        raise DatabaseDamaged(f"database {path.name} cannot be opened: {exc}") from None
    if not existed:
        _fsync_dir(path.parent)
    return conn, applied


def _split_sql(script: str) -> list[str]:
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements


class Store:
    """Domain-level access to the database. Create with ``open_store``.

    Every ``async`` method is a checkpoint. Write methods return only after the
    change is committed, and raise ``StorageFull``/``StorageBusy`` (nothing stored)
    when SQLite cannot commit.
    """

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        self._send, self._recv = trio.open_memory_channel[_Unit[Any]](math.inf)
        self._commits = 0
        self._units = 0
        self._failed_units = 0
        self._max_batch = 0
        #: Test hook: called on the writer thread after COMMIT, before callers are woken.
        self.after_commit: Callable[[], None] | None = None

    # ------------------------------------------------------------------ plumbing

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(self._commits, self._units, self._failed_units, self._max_batch)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        unit: _Unit[T] = _Unit(fn)
        self._send.send_nowait(unit)
        await unit.done.wait()
        if unit.error is not None:
            raise unit.error
        return unit.result  # type: ignore[return-value]

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def guarded() -> T:
            try:
                return fn(self._reader)
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc) from None

        return await trio.to_thread.run_sync(guarded, limiter=self._read_limiter)

    async def run_writer(self) -> None:
        """The group-commit loop. Runs until cancelled; a batch in flight completes."""
        async for first in self._recv:
            batch: list[_Unit[Any]] = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            # Not cancellable: a started transaction always finishes (commits or
            # rolls back) before the daemon moves on.
            await trio.to_thread.run_sync(self._commit_batch, batch, limiter=self._write_limiter)
            for unit in batch:
                unit.done.set()

    def _commit_batch(self, batch: list[_Unit[Any]]) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            err = map_sqlite_error(exc)
            for unit in batch:
                unit.error = err
            self._failed_units += len(batch)
            return
        ok: list[_Unit[Any]] = []
        try:
            for unit in batch:
                conn.execute("SAVEPOINT unit")
                try:
                    unit.result = unit.fn(conn)
                except sqlite3.OperationalError:
                    raise  # disk full, I/O, lock: the whole transaction is lost
                except sqlite3.IntegrityError as exc:
                    conn.execute("ROLLBACK TO SAVEPOINT unit")
                    unit.error = map_sqlite_error(exc)
                except Exception as exc:
                    # A FarmError, or a bug in one unit: only that unit fails, its caller
                    # gets the exception, and the writer keeps serving everyone else.
                    conn.execute("ROLLBACK TO SAVEPOINT unit")
                    unit.error = exc
                else:
                    ok.append(unit)
                conn.execute("RELEASE SAVEPOINT unit")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # Disk full, I/O error, ...: the whole transaction is gone. Nobody gets
            # an acknowledgement for anything in it.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            err = map_sqlite_error(exc)
            for unit in batch:
                unit.error = err
                unit.result = None
            self._failed_units += len(batch)
            return
        self._commits += 1
        self._units += len(ok)
        self._failed_units += len(batch) - len(ok)
        self._max_batch = max(self._max_batch, len(batch))
        if self.after_commit is not None:
            self.after_commit()

    def close(self) -> None:
        self._send.close()
        for conn in (self._writer, self._reader):
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # ------------------------------------------------------------------ writes

    async def save(
        self,
        jobs: Iterable[Job] = (),
        events: Iterable[NewEvent] = (),
        *,
        printers: Iterable[tuple[str, PrinterMemory]] = (),
        idempotency: tuple[str, str, Sequence[str], float] | None = None,
        now: float = 0.0,
    ) -> list[Event]:
        """Write ``jobs`` (insert or replace), printer memories, and append ``events``,
        all in one transaction.

        ``idempotency`` = (key, request_hash, job_ids, now) records an idempotency key in
        the same transaction. Returns the appended events with their ``seq``.
        """
        job_rows = [_job_to_row(j) for j in jobs]
        printer_rows = [(pid, int(m.plate_clear), int(m.maintenance), now) for pid, m in printers]
        # Encode before the writer sees it: a bad payload fails this caller, here.
        new_events = [(ev, _json(dict(ev.data))) for ev in events]

        def unit(conn: sqlite3.Connection) -> list[Event]:
            if job_rows:
                conn.executemany(_UPSERT_JOB, job_rows)
            if printer_rows:
                conn.executemany(
                    "INSERT INTO printers (id, plate_clear, maintenance, updated_at) "
                    "VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET plate_clear = excluded.plate_clear, "
                    "maintenance = excluded.maintenance, updated_at = excluded.updated_at",
                    printer_rows,
                )
            if idempotency is not None:
                key, digest, ids, at = idempotency
                conn.execute(
                    "INSERT INTO idempotency_keys (key, request_hash, job_ids, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (key, digest, _json(list(ids)), at),
                )
            return [_append_event(conn, ev, data) for ev, data in new_events]

        return await self._write(unit)

    async def save_progress(
        self, updates: Sequence[tuple[str, float, float | None, float]]
    ) -> None:
        """Coalesced progress: (job_id, progress, eta, updated_at) for jobs still printing.

        Touches only those columns and only rows still ``printing``, so it can never
        undo a state change committed around it. Appends no event.
        """
        rows = [(p, eta, at, jid) for jid, p, eta, at in updates]

        def unit(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE jobs SET progress = ?, eta = ?, updated_at = ? "
                "WHERE id = ? AND state = 'printing'",
                rows,
            )

        await self._write(unit)

    async def put_setting(
        self, key: str, value: object, event: NewEvent | None = None
    ) -> list[Event]:
        """Persist a JSON-able setting (and optionally log an event with it)."""
        encoded = _json(value)

        def unit(conn: sqlite3.Connection) -> list[Event]:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, encoded),
            )
            return [_append_event(conn, event)] if event is not None else []

        return await self._write(unit)

    # ------------------------------------------------------------------ reads

    async def get_job(self, job_id: str) -> Job | None:
        def q(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return None if row is None else _job_from_row(row)

        return await self._read(q)

    async def load_open_jobs(self) -> list[Job]:
        """Every job not in a terminal state (what the scheduler keeps in memory)."""
        terminal = tuple(s.value for s in TERMINAL_STATES)

        def q(conn: sqlite3.Connection) -> list[Job]:
            marks = ", ".join("?" for _ in terminal)
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state NOT IN ({marks})", terminal
            ).fetchall()
            return [_job_from_row(r) for r in rows]

        return await self._read(q)

    async def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        printer_id: str | None = None,
        sku: str | None = None,
        material: str | None = None,
        group_id: str | None = None,
        sort: str = "created",
        descending: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """A filtered, sorted page of jobs and the total count matching the filters.

        ``sort`` must be a key of ``JOB_SORTS`` (KeyError otherwise; the API validates).
        Ties (and NULLs, last) are broken by creation time and id for a stable order.
        """
        column = JOB_SORTS[sort]
        where: list[str] = []
        params: list[object] = []
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(states)
        for col, value in (
            ("printer_id", printer_id),
            ("sku", sku),
            ("material", material),
            ("group_id", group_id),
        ):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        direction = "DESC" if descending else "ASC"
        order = f"{column} IS NULL, {column} {direction}, created_at ASC, id ASC"

        def q(conn: sqlite3.Connection) -> tuple[list[Job], int]:
            total = conn.execute(f"SELECT COUNT(*) FROM jobs {clause}", params).fetchone()[0]
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs {clause} ORDER BY {order} LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            return [_job_from_row(r) for r in rows], total

        return await self._read(q)

    async def count_jobs_by_state(self) -> dict[str, int]:
        def q(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
            return {state: n for state, n in rows}

        return await self._read(q)

    async def events_since(
        self,
        after: int = 0,
        *,
        job_id: str | None = None,
        printer_id: str | None = None,
        types: Sequence[str] = (),
        limit: int = 1000,
    ) -> list[Event]:
        """Events with ``seq > after`` in sequence order, optionally filtered."""
        where = ["seq > ?"]
        params: list[object] = [after]
        if job_id is not None:
            where.append("job_id = ?")
            params.append(job_id)
        if printer_id is not None:
            where.append("printer_id = ?")
            params.append(printer_id)
        if types:
            where.append(f"type IN ({', '.join('?' for _ in types)})")
            params.extend(types)

        def q(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                "SELECT seq, type, at, job_id, printer_id, from_state, to_state, reason, data "
                f"FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                [*params, limit],
            ).fetchall()
            return [_event_from_row(r) for r in rows]

        return await self._read(q)

    async def last_event_seq(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

        return await self._read(q)

    async def max_position(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COALESCE(MAX(position), 0) FROM jobs").fetchone()[0])

        return await self._read(q)

    async def find_idempotency_key(self, key: str) -> tuple[str, list[str]] | None:
        """The (request_hash, job_ids) recorded for ``key``, or ``None``."""

        def q(conn: sqlite3.Connection) -> tuple[str, list[str]] | None:
            row = conn.execute(
                "SELECT request_hash, job_ids FROM idempotency_keys WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else (row[0], list(orjson.loads(row[1])))

        return await self._read(q)

    async def settings(self) -> dict[str, Any]:
        def q(conn: sqlite3.Connection) -> dict[str, Any]:
            return {k: orjson.loads(v) for k, v in conn.execute("SELECT key, value FROM settings")}

        return await self._read(q)

    async def printer_memory(self) -> dict[str, PrinterMemory]:
        def q(conn: sqlite3.Connection) -> dict[str, PrinterMemory]:
            rows = conn.execute("SELECT id, plate_clear, maintenance FROM printers").fetchall()
            return {pid: PrinterMemory(bool(p), bool(m)) for pid, p, m in rows}

        return await self._read(q)

    async def integrity_check(self) -> list[str]:
        """Full ``PRAGMA integrity_check`` on the reader connection; ``["ok"]`` if sound."""

        def q(conn: sqlite3.Connection) -> list[str]:
            return [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]

        return await self._read(q)

    async def backup_to(self, dest: Path) -> None:
        """Online backup (see ``backup_database``) from the reader connection."""
        await self._read(lambda conn: backup_database(conn, dest))

    async def tables(self) -> list[str]:
        """Table names (for diagnostics and tests)."""
        return await self._read(lambda conn: list(sqlite_utils.Database(conn).table_names()))

    # ------------------------------------------------------------------ notifications

    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Record new deliveries (normally ``pending``) in one transaction."""
        rows = [_delivery_to_row(d) for d in deliveries]

        def unit(conn: sqlite3.Connection) -> None:
            conn.executemany(
                f"INSERT INTO notifications ({_DELIVERY_COLUMNS}) "
                f"VALUES ({', '.join('?' for _ in _DELIVERY_FIELDS)})",
                rows,
            )

        await self._write(unit)

    async def update_delivery(self, delivery: Delivery) -> None:
        """Store the outcome of an attempt: status, attempts, error and times."""
        d = delivery

        def unit(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE notifications SET status = ?, attempts = ?, last_error = ?, "
                "updated_at = ?, delivered_at = ?, next_attempt_at = ? WHERE id = ?",
                (
                    d.status.value,
                    d.attempts,
                    d.last_error,
                    d.updated_at,
                    d.delivered_at,
                    d.next_attempt_at,
                    d.id,
                ),
            )

        await self._write(unit)

    async def list_deliveries(
        self,
        *,
        job_id: str | None = None,
        status: str | None = None,
        channel: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Delivery], int]:
        """A page of the delivery log, newest first, and the total matching the filters."""
        where: list[str] = []
        params: list[object] = []
        for col, value in (("job_id", job_id), ("status", status), ("channel", channel)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""

        def q(conn: sqlite3.Connection) -> tuple[list[Delivery], int]:
            count = f"SELECT COUNT(*) FROM notifications {clause}"
            total = conn.execute(count, params).fetchone()[0]
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM notifications {clause} "
                "ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            return [_delivery_from_row(r) for r in rows], total

        return await self._read(q)

    async def pending_deliveries(self) -> list[Delivery]:
        """Every delivery still ``pending`` (to resume after a restart), oldest first."""

        def q(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM notifications WHERE status = 'pending' "
                "ORDER BY created_at, rowid"
            ).fetchall()
            return [_delivery_from_row(r) for r in rows]

        return await self._read(q)

    async def unnotified_failures(self, since: float, error_prefix: str) -> list[Job]:
        """Jobs failed for good (``failed``, no retry scheduled, ``last_error`` starting
        with ``error_prefix``) last updated at or after ``since`` that have no delivery
        recorded: escalations a crash lost between the job's commit and the notifier's."""
        pattern = error_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

        def q(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = 'failed' AND retry_at IS NULL "
                "AND last_error LIKE ? ESCAPE '\\' AND updated_at >= ? AND NOT EXISTS "
                "(SELECT 1 FROM notifications n WHERE n.job_id = jobs.id) ORDER BY updated_at",
                (pattern + "%", since),
            ).fetchall()
            return [_job_from_row(r) for r in rows]

        return await self._read(q)

    # ------------------------------------------------------------------ other store modules
    # (issue 14) Modules under store/ that keep their own SQL (store/history.py) run it here.

    async def run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on the reader connection in a worker thread; SQLite errors become
        ``StorageBusy``/``StorageFull``. Checkpoint."""
        return await self._read(fn)

    async def run_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` as one unit of the group-commit writer (its own savepoint);
        returns ``fn``'s result after COMMIT, or raises what ``fn`` raised (nothing of it
        stored). Checkpoint."""
        return await self._write(fn)


_DELIVERY_FIELDS = tuple(f.name for f in attrs.fields(Delivery))
_DELIVERY_COLUMNS = ", ".join(_DELIVERY_FIELDS)


def _delivery_to_row(d: Delivery) -> tuple[object, ...]:
    return tuple(
        value.value if isinstance(value, StrEnum) else value
        for value in (getattr(d, name) for name in _DELIVERY_FIELDS)
    )


def _delivery_from_row(row: Sequence[Any]) -> Delivery:
    values = dict(zip(_DELIVERY_FIELDS, row, strict=True))
    values["channel"] = Channel(values["channel"])
    values["status"] = DeliveryStatus(values["status"])
    return Delivery(**values)


@contextlib.asynccontextmanager
async def open_store(path: Path, synchronous: str = "FULL") -> AsyncIterator[Store]:
    """Open, check and migrate the database, run its writer, and close it at exit.

    Raises ``DatabaseDamaged`` (before yielding) if the file is damaged.
    """
    writer, applied = await trio.to_thread.run_sync(open_database, path, synchronous)
    log.info("database migrations applied", extra={"applied": applied, "db": str(path)})
    try:
        reader = await trio.to_thread.run_sync(_connect, path, synchronous)
    except BaseException:
        writer.close()
        raise
    store = Store(path, writer, reader)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run_writer)
            try:
                yield store
            finally:
                nursery.cancel_scope.cancel()
    finally:
        store.close()
