"""Settings (JSON values by key) and what the farm remembers about each printer."""

from __future__ import annotations

from typing import Any

import orjson

from printfarmd.core.farm.startup import Remembered
from printfarmd.store.dialect import Conn


def put(conn: Conn, key: str, encoded: str) -> None:
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, encoded),
    )


def all_settings(conn: Conn) -> dict[str, Any]:
    return {k: orjson.loads(v) for k, v in conn.execute("SELECT key, value FROM settings")}


def put_printer(
    conn: Conn, printer_id: str, plate_clear: bool, maintenance: bool, at: float
) -> None:
    conn.execute(
        "INSERT INTO printers (id, plate_clear, maintenance, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET plate_clear = excluded.plate_clear, "
        "maintenance = excluded.maintenance, updated_at = excluded.updated_at",
        (printer_id, int(plate_clear), int(maintenance), at),
    )


def printers(conn: Conn) -> dict[str, Remembered]:
    rows = conn.execute("SELECT id, plate_clear, maintenance FROM printers").fetchall()
    return {pid: Remembered(bool(p), bool(m)) for pid, p, m in rows}
