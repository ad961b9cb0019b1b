"""Print history: one row per print attempt, derived from the event log in the store.

Every job transition is an ``events`` row (``type = 'job.transition'``). A trigger on
that table keeps ``history`` up to date in the very transaction that records the
transition, so no writer has to remember to: a transition *to* ``printing`` opens an
attempt (job, printer, file, SKU, start); a transition *from* ``printing`` closes the
open attempt of that job:

==============================  ==============
to                              status
==============================  ==============
``post_process``                ``completed``
``cancelled``                   ``cancelled``
``failed`` (watchdog, restart)  ``interrupted`` (the reason matches ``INTERRUPTED``)
``failed`` (anything else)      ``error``
==============================  ==============

An attempt still open when its job is no longer printing (which only a database written
before this table existed, or edited by hand, can hold) is closed as ``interrupted`` by
``sweep_open``. The progress an attempt reached is read from the job's row when it
closes (the coalesced progress of a watchdog requeue is its ``resume_progress``).

Metadata (the file's slicer figures: filament in mm and g, estimate, thumbnails) is not
known to SQL: the caller records it with ``record_metadata`` (once per attempt, the first
time the attempt is read). Deleting an entry (``delete``) only hides it from Moonraker's
history API: the farm's reports (``list_attempts(include_deleted=True)``, ``stats``)
keep every attempt. The totals (``totals``) count the attempts closed since the last
``reset_totals`` (deleted or not), as Moonraker's survive a deleted job.

The SQL here is plain (one trigger, ``INSERT ... SELECT``, ``CASE``, ``LIKE``, no
SQLite-only functions): a PostgreSQL port writes the trigger as a trigger function.
Functions take a ``Conn`` and are blocking; ``HistoryStore`` runs them on
the store's reader and writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from printfarmd.models import Event
from printfarmd.store.dialect import Conn, Step, pg_types

if TYPE_CHECKING:
    from printfarmd.store.store import Store


class Status:
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ERROR = "error"
    INTERRUPTED = "interrupted"


STATUSES = (
    Status.IN_PROGRESS,
    Status.COMPLETED,
    Status.CANCELLED,
    Status.ERROR,
    Status.INTERRUPTED,
)
#: Closed attempts that count as failures (success rate, mean time between failures).
FAILURES = (Status.ERROR, Status.INTERRUPTED)

#: ``LIKE`` patterns of the failure reasons that mean "the print was interrupted" rather
#: than "the print failed": the watchdog's requeue (``core/watchdog.py``) and the start-up
#: reconciliation of the scheduler. Constants, embedded in the trigger as SQL literals.
INTERRUPTED: tuple[str, ...] = (
    "watchdog: %",
    "max retries reached: watchdog: %",
    "%no longer has the job after a restart%",
    "%printer was removed from the configuration%",
)

#: Totals as Moonraker names them.
TOTAL_FIELDS = (
    "total_jobs",
    "total_time",
    "total_print_time",
    "total_filament_used",
    "longest_job",
    "longest_print",
)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _interrupted(reason: str) -> str:
    return "(" + " OR ".join(f"{reason} LIKE {_literal(p)}" for p in INTERRUPTED) + ")"


def _close_status(to_state: str, reason: str) -> str:
    """SQL for the status of an attempt closed by a transition to ``to_state`` (a new
    attempt of the same job, ``printing``, closes a stray open one as interrupted)."""
    interrupted = _interrupted(f"COALESCE({reason}, '')")
    return (
        f"CASE WHEN {to_state} = 'post_process' THEN 'completed' "
        f"WHEN {to_state} = 'cancelled' THEN 'cancelled' "
        f"WHEN {to_state} = 'printing' THEN 'interrupted' "
        f"WHEN {interrupted} THEN 'interrupted' "
        "ELSE 'error' END"
    )


#: The table, its indexes and the totals mark.
_TABLES = """
CREATE TABLE history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    printer_id TEXT,
    filename TEXT NOT NULL,
    sku TEXT,
    status TEXT NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL,
    progress REAL,
    reason TEXT,
    open_seq INTEGER NOT NULL,
    close_seq INTEGER,
    metadata TEXT,
    filament_total REAL,
    filament_weight REAL,
    deleted_at REAL
);
CREATE INDEX history_open ON history (job_id) WHERE end_time IS NULL;
CREATE INDEX history_start ON history (start_time);
CREATE INDEX history_printer ON history (printer_id, start_time);
CREATE INDEX history_file ON history (filename);
CREATE INDEX history_close ON history (close_seq);
CREATE INDEX history_no_metadata ON history (filename) WHERE metadata IS NULL;
CREATE TABLE history_marks (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
);
INSERT INTO history_marks (name, value) VALUES ('totals_after_seq', 0), ('totals_reset_at', 0);
"""
#: When and what the trigger does (the same SQL in SQLite's trigger and in PostgreSQL's
#: trigger function).
_WHEN = """NEW.type = 'job.transition' AND NEW.job_id IS NOT NULL
    AND (NEW.to_state = 'printing' OR NEW.from_state = 'printing')"""
_BODY = f"""
    UPDATE history SET
        end_time = NEW.at,
        close_seq = NEW.seq,
        reason = NEW.reason,
        status = {_close_status("NEW.to_state", "NEW.reason")},
        progress = CASE WHEN NEW.to_state = 'post_process' THEN 100.0 ELSE (
            SELECT CASE WHEN j.state = 'queued' THEN j.resume_progress ELSE j.progress END
            FROM jobs j WHERE j.id = NEW.job_id) END
    WHERE job_id = NEW.job_id AND end_time IS NULL
        AND NEW.from_state = 'printing' AND NEW.to_state <> 'printing';
    UPDATE history SET
        end_time = NEW.at,
        close_seq = NEW.seq,
        status = 'interrupted',
        reason = 'a new attempt began before this one was closed'
    WHERE job_id = NEW.job_id AND end_time IS NULL AND NEW.to_state = 'printing';
    INSERT INTO history (job_id, printer_id, filename, sku, status, start_time, open_seq)
    SELECT NEW.job_id, COALESCE(NEW.printer_id, j.printer_id), j.filename, j.sku,
        'in_progress', NEW.at, NEW.seq
    FROM jobs j WHERE j.id = NEW.job_id AND NEW.to_state = 'printing';
"""
#: The attempts of the events already recorded.
_BACKFILL = f"""
INSERT INTO history (
    job_id, printer_id, filename, sku, status, start_time, end_time, progress, reason,
    open_seq, close_seq
)
SELECT o.job_id, COALESCE(o.printer_id, j.printer_id), j.filename, j.sku,
    CASE WHEN c.seq IS NULL THEN 'in_progress'
        ELSE {_close_status("c.to_state", "c.reason")} END,
    o.at, c.at,
    CASE WHEN c.to_state = 'post_process' THEN 100.0 ELSE NULL END,
    CASE WHEN c.to_state = 'printing'
        THEN 'a new attempt began before this one was closed' ELSE c.reason END,
    o.seq, c.seq
FROM events o
JOIN jobs j ON j.id = o.job_id
LEFT JOIN events c ON c.seq = (
    SELECT MIN(x.seq) FROM events x
    WHERE x.job_id = o.job_id AND x.seq > o.seq AND x.type = 'job.transition'
        AND ((x.from_state = 'printing' AND x.to_state <> 'printing')
            OR x.to_state = 'printing')
)
WHERE o.type = 'job.transition' AND o.to_state = 'printing'
    AND COALESCE(o.from_state, '') <> 'printing'
ORDER BY o.seq;
"""

#: Migration step: the table, its indexes, the trigger, the backfill from the events
#: already recorded, and the totals mark. Appended to ``store.migrations.MIGRATIONS``.
#: PostgreSQL writes the trigger as a trigger function (issue 18).
MIGRATION = Step(
    sqlite=(
        _TABLES
        + "CREATE TRIGGER history_on_transition AFTER INSERT ON events\nWHEN "
        + _WHEN
        + "\nBEGIN"
        + _BODY
        + "END;"
        + _BACKFILL
    ),
    postgresql=(
        pg_types(_TABLES)
        + "CREATE FUNCTION history_on_transition() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
        + "BEGIN\nIF "
        + _WHEN
        + " THEN"
        + _BODY
        + "END IF;\nRETURN NULL;\nEND\n$fn$;\n"
        + "CREATE TRIGGER history_on_transition AFTER INSERT ON events FOR EACH ROW "
        + "EXECUTE FUNCTION history_on_transition();"
        + _BACKFILL
    ),
)

_COLUMNS = (
    "id",
    "job_id",
    "printer_id",
    "filename",
    "sku",
    "status",
    "start_time",
    "end_time",
    "progress",
    "reason",
    "metadata",
    "filament_total",
    "filament_weight",
    "deleted_at",
    "open_seq",
    "close_seq",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM history"
#: The same without the metadata (statistics read many rows and need only the figures).
_SELECT_FIGURES = (
    "SELECT " + ", ".join("NULL" if c == "metadata" else c for c in _COLUMNS) + " FROM history"
)
#: Most entries one listing returns.
MAX_PAGE = 1000


class Attempt(msgspec.Struct, frozen=True):
    """One print attempt. Times are UTC Unix seconds; ``progress`` 0..100 at the end
    (``None`` when not recorded); ``metadata`` is ``None`` until recorded."""

    id: int
    job_id: str
    printer_id: str | None
    filename: str
    sku: str | None
    status: str
    start_time: float
    end_time: float | None
    progress: float | None
    reason: str | None
    metadata: dict[str, Any] | None
    filament_total: float | None
    filament_weight: float | None
    deleted_at: float | None
    open_seq: int
    close_seq: int | None

    @property
    def uid(self) -> str:
        """Moonraker's ``job_id`` for this entry: at least 6 uppercase hex digits."""
        return f"{self.id:06X}"

    def duration(self, now: float) -> float:
        end = self.end_time if self.end_time is not None else now
        return max(end - self.start_time, 0.0)

    @property
    def fraction(self) -> float:
        """How much of the file was printed: 1 when completed, else the progress."""
        if self.status == Status.COMPLETED:
            return 1.0
        return max(min((self.progress or 0.0) / 100.0, 1.0), 0.0)

    @property
    def filament_used(self) -> float:
        """Millimetres of filament this attempt used (0 when the file does not say)."""
        return (self.filament_total or 0.0) * self.fraction

    @property
    def filament_grams(self) -> float:
        return (self.filament_weight or 0.0) * self.fraction


def parse_uid(uid: str) -> int | None:
    """The row id of a Moonraker history ``uid`` (hex), or ``None`` if it is not one."""
    if not (1 <= len(uid) <= 15) or not all(c in "0123456789abcdefABCDEF" for c in uid):
        return None
    return int(uid, 16)


def _attempt(row: Sequence[Any]) -> Attempt:
    values = dict(zip(_COLUMNS, row, strict=True))
    raw = values["metadata"]
    values["metadata"] = orjson.loads(raw) if raw is not None else None
    return Attempt(**values)


class Filter(msgspec.Struct, frozen=True):
    """What ``list_attempts`` selects. ``since``: started after; ``before``: ended before
    (an attempt still printing has not ended); ``statuses`` empty means every status."""

    printer_id: str | None = None
    filename: str | None = None
    sku: str | None = None
    statuses: tuple[str, ...] = ()
    since: float | None = None
    before: float | None = None
    include_deleted: bool = False

    def where(self) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if not self.include_deleted:
            clauses.append("deleted_at IS NULL")
        for column, value in (
            ("printer_id", self.printer_id),
            ("filename", self.filename),
            ("sku", self.sku),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in self.statuses)})")
            params.extend(self.statuses)
        if self.since is not None:
            clauses.append("start_time > ?")
            params.append(self.since)
        if self.before is not None:
            clauses.append("end_time < ?")
            params.append(self.before)
        return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


# ---------------------------------------------------------------- reads (blocking)


def list_attempts(
    conn: Conn,
    where: Filter = Filter(),
    *,
    limit: int = 50,
    offset: int = 0,
    descending: bool = True,
) -> tuple[list[Attempt], int]:
    """A page of attempts (newest first unless ``descending`` is false) and how many
    match ``where`` in all."""
    clause, params = where.where()
    order = "DESC" if descending else "ASC"
    total = conn.execute(f"SELECT COUNT(*) FROM history{clause}", params).fetchone()[0]
    rows = conn.execute(
        f"{_SELECT}{clause} ORDER BY id {order} LIMIT ? OFFSET ?",
        [*params, min(max(limit, 0), MAX_PAGE), max(offset, 0)],
    ).fetchall()
    return [_attempt(r) for r in rows], int(total)


def get_attempt(conn: Conn, attempt_id: int) -> Attempt | None:
    """The attempt ``attempt_id`` unless it was deleted."""
    row = conn.execute(
        f"{_SELECT} WHERE id = ? AND deleted_at IS NULL",
        (attempt_id,),
    ).fetchone()
    return None if row is None else _attempt(row)


def by_seq(conn: Conn, seq: int) -> list[Attempt]:
    """The attempts the event ``seq`` opened or closed (for notifications)."""
    rows = conn.execute(
        f"{_SELECT} WHERE open_seq = ? OR close_seq = ? ORDER BY id",
        (seq, seq),
    ).fetchall()
    return [_attempt(r) for r in rows]


def last_attempts(conn: Conn, filenames: Sequence[str]) -> dict[str, Attempt]:
    """The newest (not deleted) attempt of each of ``filenames`` that has one."""
    out: dict[str, Attempt] = {}
    names = list(dict.fromkeys(filenames))
    for i in range(0, len(names), 500):
        chunk = names[i : i + 500]
        marks = ", ".join("?" for _ in chunk)
        rows = conn.execute(
            f"{_SELECT} WHERE id IN (SELECT MAX(id) FROM history "
            f"WHERE deleted_at IS NULL AND filename IN ({marks}) GROUP BY filename)",
            chunk,
        ).fetchall()
        for row in rows:
            a = _attempt(row)
            out[a.filename] = a
    return out


def without_metadata(conn: Conn, limit: int = 200) -> list[str]:
    """Files of attempts whose metadata was not recorded yet."""
    rows = conn.execute(
        "SELECT DISTINCT filename FROM history WHERE metadata IS NULL LIMIT ?", (limit,)
    ).fetchall()
    return [r[0] for r in rows]


def open_but_not_printing(conn: Conn) -> list[int]:
    """Open attempts whose job is no longer printing (see ``sweep_open``)."""
    rows = conn.execute(
        "SELECT h.id FROM history h JOIN jobs j ON j.id = h.job_id "
        "WHERE h.end_time IS NULL AND j.state <> 'printing'"
    ).fetchall()
    return [r[0] for r in rows]


def _mark(conn: Conn, name: str) -> float:
    row = conn.execute("SELECT value FROM history_marks WHERE name = ?", (name,)).fetchone()
    return float(row[0]) if row is not None else 0.0


def totals(conn: Conn) -> dict[str, float | int]:
    """Moonraker's ``job_totals``: attempts closed since the last reset (deleted or not).
    ``total_filament_used`` is in mm; times in seconds."""
    after = _mark(conn, "totals_after_seq")
    rows = conn.execute(
        f"{_SELECT_FIGURES} WHERE close_seq IS NOT NULL AND close_seq > ?",
        (after,),
    ).fetchall()
    attempts = [_attempt(r) for r in rows]
    durations = [a.duration(a.end_time or a.start_time) for a in attempts]
    return {
        "total_jobs": len(attempts),
        "total_time": round(sum(durations), 3),
        "total_print_time": round(sum(durations), 3),
        "total_filament_used": round(sum(a.filament_used for a in attempts), 3),
        "longest_job": round(max(durations, default=0.0), 3),
        "longest_print": round(max(durations, default=0.0), 3),
    }


def totals_reset_at(conn: Conn) -> float | None:
    at = _mark(conn, "totals_reset_at")
    return at or None


def attempts_between(conn: Conn, since: float | None, before: float | None) -> list[Attempt]:
    """Every attempt (deleted ones too) that started after ``since`` and before ``before``,
    without its metadata (``None``; the filament figures are kept): the input of the farm's
    statistics."""
    clauses: list[str] = []
    params: list[object] = []
    if since is not None:
        clauses.append("start_time > ?")
        params.append(since)
    if before is not None:
        clauses.append("start_time < ?")
        params.append(before)
    clause = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(f"{_SELECT_FIGURES}{clause} ORDER BY id", params).fetchall()
    return [_attempt(r) for r in rows]


# ---------------------------------------------------------------- writes (blocking, in a unit)


def _append_event(conn: Conn, type_: str, at: float, data: dict[str, Any]) -> Event:
    cur = conn.execute(
        "INSERT INTO events (type, at, data) VALUES (?, ?, ?) RETURNING seq",
        (type_, at, orjson.dumps(data).decode()),
    )
    return Event(seq=int(cur.fetchone()[0]), type=type_, at=at, data=data)


def delete(conn: Conn, ids: Sequence[int] | None, now: float) -> tuple[list[int], Event | None]:
    """Hide the attempts ``ids`` (every attempt when ``None``) from the history API.

    Returns the ids hidden now (unknown or already deleted ones are left out) and the
    ``history.deleted`` event recorded with them (``None`` when nothing changed).
    """
    if ids is None:
        rows = conn.execute("SELECT id FROM history WHERE deleted_at IS NULL ORDER BY id")
        found = [r[0] for r in rows]
    else:
        found = []
        for attempt_id in dict.fromkeys(ids):
            row = conn.execute(
                "SELECT id FROM history WHERE id = ? AND deleted_at IS NULL", (attempt_id,)
            ).fetchone()
            if row is not None:
                found.append(row[0])
    if not found:
        return [], None
    conn.executemany("UPDATE history SET deleted_at = ? WHERE id = ?", [(now, i) for i in found])
    event = _append_event(conn, "history.deleted", now, {"ids": [f"{i:06X}" for i in found]})
    return found, event


def reset_totals(conn: Conn, now: float) -> tuple[dict[str, float | int], Event]:
    """Start the totals again from zero (attempts closed from now on count). Returns the
    totals before the reset and the ``history.totals_reset`` event recorded with it."""
    last = totals(conn)
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    conn.execute("UPDATE history_marks SET value = ? WHERE name = 'totals_after_seq'", (seq,))
    conn.execute("UPDATE history_marks SET value = ? WHERE name = 'totals_reset_at'", (now,))
    event = _append_event(conn, "history.totals_reset", now, {"last_totals": last})
    return last, event


def record_metadata(
    conn: Conn,
    filename: str,
    metadata: dict[str, Any],
    filament_total: float | None,
    filament_weight: float | None,
) -> int:
    """Record ``filename``'s metadata on its attempts that have none yet; how many."""
    cur = conn.execute(
        "UPDATE history SET metadata = ?, filament_total = ?, filament_weight = ? "
        "WHERE filename = ? AND metadata IS NULL",
        (orjson.dumps(metadata).decode(), filament_total, filament_weight, filename),
    )
    return int(cur.rowcount)


def sweep_open(conn: Conn, now: float) -> list[int]:
    """Close as ``interrupted`` every open attempt whose job is no longer printing (at
    the job's last update, or ``now``). Returns their ids."""
    found = open_but_not_printing(conn)
    for attempt_id in found:
        conn.execute(
            "UPDATE history SET status = 'interrupted', "
            "reason = 'the attempt was still open when the daemon started', "
            "end_time = COALESCE((SELECT j.updated_at FROM jobs j "
            "WHERE j.id = history.job_id), ?) WHERE id = ? AND end_time IS NULL",
            (now, attempt_id),
        )
    return found


# ---------------------------------------------------------------- on the store


class HistoryStore(msgspec.Struct, frozen=True):
    """The functions above on a ``Store``: reads on its reader, writes as units of its
    group-commit writer (each returns after COMMIT). Every method is a checkpoint."""

    store: Store

    async def page(
        self, where: Filter, *, limit: int, offset: int, descending: bool
    ) -> tuple[list[Attempt], int]:
        return await self.store.run_read(
            lambda c: list_attempts(c, where, limit=limit, offset=offset, descending=descending)
        )

    async def get(self, attempt_id: int) -> Attempt | None:
        return await self.store.run_read(lambda c: get_attempt(c, attempt_id))

    async def by_seq(self, seq: int) -> list[Attempt]:
        return await self.store.run_read(lambda c: by_seq(c, seq))

    async def last_attempts(self, filenames: Sequence[str]) -> dict[str, Attempt]:
        return await self.store.run_read(lambda c: last_attempts(c, filenames))

    async def without_metadata(self) -> list[str]:
        return await self.store.run_read(without_metadata)

    async def totals(self) -> dict[str, float | int]:
        return await self.store.run_read(totals)

    async def attempts_between(self, since: float | None, before: float | None) -> list[Attempt]:
        return await self.store.run_read(lambda c: attempts_between(c, since, before))

    async def delete(self, ids: Sequence[int] | None, now: float) -> tuple[list[int], Event | None]:
        return await self.store.run_write(lambda c: delete(c, ids, now))

    async def reset_totals(self, now: float) -> tuple[dict[str, float | int], Event]:
        return await self.store.run_write(lambda c: reset_totals(c, now))

    async def record_metadata(
        self,
        filename: str,
        metadata: dict[str, Any],
        filament_total: float | None,
        filament_weight: float | None,
    ) -> int:
        return await self.store.run_write(
            lambda c: record_metadata(c, filename, metadata, filament_total, filament_weight)
        )

    async def sweep_open(self, now: float) -> list[int]:
        return await self.store.run_write(lambda c: sweep_open(c, now))
