"""The append-only event log: appending, replaying, retention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from printfarmd.core.farm.outputs import NewEvent
from printfarmd.models import Event
from printfarmd.store.dialect import Conn

INSERT = (
    "INSERT INTO events (type, at, job_id, printer_id, from_state, to_state, reason, data, node) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq"
)
COLUMNS = "seq, type, at, job_id, printer_id, from_state, to_state, reason, data"


def encode_data(ev: NewEvent) -> str:
    """The event's data as JSON (encode before the writer sees it: a bad payload fails
    its caller, not the batch)."""
    return orjson.dumps(dict(ev.data)).decode()


def append(
    conn: Conn, ev: NewEvent, data_json: str | None = None, node: str | None = None
) -> Event:
    """Append ``ev`` (``node``: the daemon of a cluster that appends it, issue 18)."""
    cur = conn.execute(
        INSERT,
        (
            ev.type,
            ev.at,
            ev.job_id,
            ev.printer_id,
            ev.from_state,
            ev.to_state,
            ev.reason,
            data_json if data_json is not None else encode_data(ev),
            node,
        ),
    )
    seq = int(cur.fetchone()[0])
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


def from_row(row: Sequence[Any]) -> Event:
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


def since(
    conn: Conn,
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
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
        [*params, limit],
    ).fetchall()
    return [from_row(r) for r in rows]


def last_seq(conn: Conn) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])


def prune(conn: Conn, before: float, limit: int = 10_000) -> int:
    """Delete up to ``limit`` events older than ``before`` (oldest first); returns how
    many. The newest event is always kept, so sequence numbers never restart."""
    return conn.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE at < ? "
        "AND seq < (SELECT MAX(seq) FROM events) ORDER BY seq LIMIT ?)",
        (before, limit),
    ).rowcount
