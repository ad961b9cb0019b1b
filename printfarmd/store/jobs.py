"""Jobs and idempotency keys: rows, conditional writes and queries.

Functions take a ``Conn`` and run on a worker thread (the writer's or a
reader's); SQL is composed only from module constants, every value is a parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from printfarmd.errors import StaleWrite
from printfarmd.models import Job, JobState
from printfarmd.store.dialect import Conn

_JSON_FIELDS = frozenset({"required_tags", "failed_printers", "min_bed"})
FIELDS = Job.__struct_fields__
COLUMNS = ", ".join(FIELDS)
INSERT = f"INSERT INTO jobs ({COLUMNS}) VALUES ({', '.join('?' for _ in FIELDS)})"
_UPDATE = (
    "UPDATE jobs SET "
    + ", ".join(f"{c} = ?" for c in FIELDS if c != "id")
    + " WHERE id = ? AND state = ?"
)
#: The jobs the farm keeps in memory (``core.farm.state.is_live``), as SQL.
LIVE = (
    "state IN ('created', 'validated', 'sliced', 'queued', 'printing', 'post_process') "
    "OR (state = 'failed' AND retry_at IS NOT NULL)"
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


def json_text(value: object) -> str:
    return orjson.dumps(value).decode()


def to_row(job: Job) -> list[object]:
    row: list[object] = []
    for name in FIELDS:
        value = getattr(job, name)
        if name in _JSON_FIELDS:
            value = None if value is None else json_text(list(value))
        elif name == "state":
            value = value.value
        row.append(value)
    return row


def from_row(row: Sequence[Any]) -> Job:
    values = dict(zip(FIELDS, row, strict=True))
    values["state"] = JobState(values["state"])
    values["required_tags"] = tuple(orjson.loads(values["required_tags"]))
    values["failed_printers"] = tuple(orjson.loads(values["failed_printers"]))
    if values["min_bed"] is not None:
        values["min_bed"] = tuple(orjson.loads(values["min_bed"]))
    return Job(**values)


# ---------------------------------------------------------------------- writes


def insert(conn: Conn, row: Sequence[object]) -> None:
    conn.execute(INSERT, row)


def update_if(conn: Conn, row: Sequence[object], expect: str) -> None:
    """Write ``row`` over its job only if the stored job is in state ``expect``.

    Raises ``StaleWrite`` (nothing written) when it is not: the farm decided on a job
    that changed since, and must never silently overwrite it.
    """
    job_id = row[0]
    cur = conn.execute(_UPDATE, (*row[1:], job_id, expect))
    if cur.rowcount != 1:
        found = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        now = "missing" if found is None else found[0]
        raise StaleWrite(f"job {job_id} is {now}, not {expect}: nothing was stored")


def save_progress(conn: Conn, job_id: str, progress: float, eta: float | None, at: float) -> None:
    """Progress columns only, only while the job is printing (never undoes a change)."""
    conn.execute(
        "UPDATE jobs SET progress = ?, eta = ?, updated_at = ? WHERE id = ? AND state = 'printing'",
        (progress, eta, at, job_id),
    )


def put_idempotency(conn: Conn, key: str, digest: str, ids: Sequence[str], at: float) -> None:
    conn.execute(
        "INSERT INTO idempotency_keys (key, request_hash, job_ids, created_at) VALUES (?, ?, ?, ?)",
        (key, digest, json_text(list(ids)), at),
    )


def prune_idempotency(conn: Conn, before: float) -> int:
    return conn.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (before,)).rowcount


# ---------------------------------------------------------------------- reads


def get(conn: Conn, job_id: str) -> Job | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else from_row(row)


def get_many(conn: Conn, ids: Sequence[str]) -> list[Job]:
    """The stored jobs with these ids, in the order given (missing ones left out)."""
    found: dict[str, Job] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ", ".join("?" for _ in chunk)
        for row in conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id IN ({marks})", chunk):
            job = from_row(row)
            found[job.id] = job
    return [found[i] for i in ids if i in found]


def load_live(conn: Conn) -> list[Job]:
    """Every job the farm keeps in memory (see ``LIVE``)."""
    rows = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE {LIVE}").fetchall()
    return [from_row(r) for r in rows]


def list_page(
    conn: Conn,
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
    total = conn.execute(f"SELECT COUNT(*) FROM jobs {clause}", params).fetchone()[0]
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM jobs {clause} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    return [from_row(r) for r in rows], total


def count_by_state(conn: Conn) -> dict[str, int]:
    rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    return {state: n for state, n in rows}


def max_position(conn: Conn) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(position), 0) FROM jobs").fetchone()[0])


def find_idempotency(conn: Conn, key: str) -> tuple[str, list[str]] | None:
    row = conn.execute(
        "SELECT request_hash, job_ids FROM idempotency_keys WHERE key = ?", (key,)
    ).fetchone()
    return None if row is None else (row[0], list(orjson.loads(row[1])))


def unnotified_failures(conn: Conn, since: float, error_prefix: str) -> list[Job]:
    """Jobs failed for good (``failed``, no retry scheduled, ``last_error`` starting with
    ``error_prefix``) last updated at or after ``since`` that have no delivery recorded:
    escalations a crash lost between the job's commit and the notifier's."""
    pattern = error_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM jobs WHERE state = 'failed' AND retry_at IS NULL "
        "AND last_error LIKE ? ESCAPE '\\' AND updated_at >= ? AND NOT EXISTS "
        "(SELECT 1 FROM notifications n WHERE n.job_id = jobs.id) ORDER BY updated_at",
        (pattern + "%", since),
    ).fetchall()
    return [from_row(r) for r in rows]
