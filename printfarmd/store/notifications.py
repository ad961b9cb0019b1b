"""The notification delivery log (escalations: webhook, email, MQTT)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from printfarmd.core.notify import Channel, Delivery, DeliveryStatus
from printfarmd.store.dialect import Conn

_FIELDS = Delivery.__struct_fields__
_COLUMNS = ", ".join(_FIELDS)


def to_row(d: Delivery) -> tuple[object, ...]:
    return tuple(
        value.value if isinstance(value, StrEnum) else value
        for value in (getattr(d, name) for name in _FIELDS)
    )


def from_row(row: Sequence[Any]) -> Delivery:
    values = dict(zip(_FIELDS, row, strict=True))
    values["channel"] = Channel(values["channel"])
    values["status"] = DeliveryStatus(values["status"])
    return Delivery(**values)


def add(conn: Conn, rows: Sequence[tuple[object, ...]]) -> None:
    conn.executemany(
        f"INSERT INTO notifications ({_COLUMNS}) VALUES ({', '.join('?' for _ in _FIELDS)})",
        rows,
    )


def update(conn: Conn, d: Delivery) -> None:
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


def page(
    conn: Conn,
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
    total = conn.execute(f"SELECT COUNT(*) FROM notifications {clause}", params).fetchone()[0]
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM notifications {clause} "
        "ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    return [from_row(r) for r in rows], total


def pending(conn: Conn) -> list[Delivery]:
    """Every delivery still ``pending`` (to resume after a restart), oldest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM notifications WHERE status = 'pending' ORDER BY created_at, rowid"
    ).fetchall()
    return [from_row(r) for r in rows]


def existing(conn: Conn, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` are recorded deliveries (issue 16: a maintenance notice once)."""
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ", ".join("?" for _ in chunk)
        found.update(
            r[0] for r in conn.execute(f"SELECT id FROM notifications WHERE id IN ({marks})", chunk)
        )
    return found
