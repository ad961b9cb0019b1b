"""``printfarmd migrate-store``: copy a SQLite farm into an empty PostgreSQL database,
then verify the copy (issue 18). Blocking; the CLI runs it.

1. The SQLite file is opened with an exclusive lock (``locking_mode = EXCLUSIVE``,
   ``BEGIN EXCLUSIVE``): a running daemon holds the file open, so the lock fails and the
   copy is refused; once held, no daemon can start on the file until the copy is done.
   Its schema must be this printfarmd's (an older file: start the daemon on it once).
2. The target must be empty (no tables, or only printfarmd's, without rows); it gets the
   schema by the same migrations as the daemon's (``store/postgresql.py``).
3. Every table is copied with ``COPY ... FROM STDIN`` in ONE PostgreSQL transaction, the
   history trigger off (the history rows are copied, not recomputed); the sequences
   (event ``seq``, history and maintenance ids) continue after the copied ids.
4. Verification reads both sides again: per table the row count and a BLAKE2b hash over
   the rows in primary-key order (bytewise text order on both sides), each row encoded
   the same way (JSON of its values, REAL columns as floats).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson

from printfarmd.errors import FarmError
from printfarmd.store import postgresql
from printfarmd.store.migrations import MIGRATIONS
from printfarmd.store.postgresql import PgConn

#: Rows read from SQLite per round trip.
BATCH = 5000
#: Tables a fresh printfarmd schema fills by itself (never "data" in the target).
_SEEDED = {"history_marks", postgresql.VERSION_TABLE}
#: Tables never copied: the leases of running cluster daemons (issue 18) belong to the
#: daemons, not to the farm (a SQLite farm never has any); the target's must be empty.
_NOT_COPIED = ("nodes",)


class TransferError(FarmError):
    """The copy cannot be made (file in use, target not empty, schema mismatch)."""


class TableCheck(msgspec.Struct, frozen=True):
    table: str
    source_rows: int
    target_rows: int
    source_hash: str
    target_hash: str

    @property
    def ok(self) -> bool:
        return self.source_rows == self.target_rows and self.source_hash == self.target_hash


class Report(msgspec.Struct, frozen=True):
    tables: tuple[TableCheck, ...]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)


class _Table(msgspec.Struct, frozen=True):
    name: str
    #: The target's columns, in order (the source is read in the same order).
    columns: tuple[str, ...]
    #: Columns of ``columns`` that are floating point.
    floats: frozenset[str]
    #: Primary key columns, and which of them are text.
    key: tuple[str, ...]
    text_key: frozenset[str]


# ---------------------------------------------------------------------- the source


@contextlib.contextmanager
def _locked_source(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.is_file():
        raise TransferError(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=0.5)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        try:
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TransferError(
                    f"{path} is in use (is printfarmd running on it?): stop the daemon "
                    "first, nothing was copied"
                ) from None
            raise TransferError(f"{path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise TransferError(f"{path} is not a readable SQLite database: {exc}") from None
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version != len(MIGRATIONS):
            raise TransferError(
                f"{path} has schema version {version}, this printfarmd {len(MIGRATIONS)}: "
                + (
                    "start this printfarmd on it once (it upgrades the file), stop it, then copy"
                    if version < len(MIGRATIONS)
                    else "use the printfarmd that wrote it"
                )
            )
        yield conn
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()


def _source_tables(src: sqlite3.Connection) -> list[str]:
    rows = src.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    ).fetchall()
    names = [str(r[0]) for r in rows if r[0] not in _NOT_COPIED]
    # jobs first: the event log refers to it.
    return sorted(names, key=lambda n: (n != "jobs", n))


def _source_columns(src: sqlite3.Connection, table: str) -> set[str]:
    return {str(r[1]) for r in src.execute(f'PRAGMA table_info("{table}")')}


def _sequence_floor(src: sqlite3.Connection, table: str) -> int:
    """The highest id SQLite's AUTOINCREMENT ever gave out in ``table`` (0 if none)."""
    try:
        row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    except sqlite3.OperationalError:  # no AUTOINCREMENT table at all
        return 0
    return 0 if row is None else int(row[0])


# ---------------------------------------------------------------------- the target


def _target_table(pg: PgConn, table: str) -> _Table:
    cols = pg.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    if not cols:
        raise TransferError(f"the PostgreSQL schema has no table {table}")
    key = pg.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(?) AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
        (table,),
    ).fetchall()
    types = {str(c): str(t) for c, t in cols}
    key_cols = tuple(str(k[0]) for k in key)
    return _Table(
        name=table,
        columns=tuple(types),
        floats=frozenset(c for c, t in types.items() if t in ("double precision", "real")),
        key=key_cols,
        text_key=frozenset(c for c in key_cols if types[c] == "text"),
    )


def _check_target_empty(pg: PgConn, known: Sequence[str]) -> None:
    tables = postgresql.table_names(pg)
    ours = {postgresql.VERSION_TABLE, *_NOT_COPIED, *known}
    foreign = sorted(set(tables) - ours)
    if foreign:
        raise TransferError(
            "the PostgreSQL database is not empty (it has tables "
            + ", ".join(foreign[:5])
            + "): copy into an empty database, nothing was copied"
        )
    for table in tables:
        if table in _SEEDED:
            continue
        if pg.execute(f'SELECT EXISTS (SELECT 1 FROM "{table}")').fetchone()[0]:
            raise TransferError(
                f"the PostgreSQL database already holds a farm (table {table} has rows): "
                "copy into an empty database, nothing was copied"
            )


# ---------------------------------------------------------------------- copy and verify


def _select(table: _Table, source_cols: set[str], ordered: bool, dialect: str) -> str:
    picked = []
    for c in table.columns:
        if c in source_cols or dialect == "postgresql":
            picked.append(f'"{c}"')
        elif c == "rowid":
            picked.append("rowid")  # SQLite's implicit row id (PostgreSQL: a column)
        else:
            raise TransferError(f"the SQLite table {table.name} has no column {c}")
    sql = f'SELECT {", ".join(picked)} FROM "{table.name}"'
    if ordered and table.key:
        if dialect == "postgresql":
            keys = [f'"{k}" COLLATE "C"' if k in table.text_key else f'"{k}"' for k in table.key]
        else:
            keys = [f'"{k}"' for k in table.key]
        sql += " ORDER BY " + ", ".join(keys)
    return sql


def _digest(table: _Table, rows: Iterator[Sequence[Any]]) -> tuple[int, str]:
    floats = [c in table.floats for c in table.columns]
    h = hashlib.blake2b(digest_size=16)
    n = 0
    for row in rows:
        values = [
            float(v) if is_float and isinstance(v, int) else v
            for v, is_float in zip(row, floats, strict=True)
        ]
        h.update(orjson.dumps(values))
        h.update(b"\n")
        n += 1
    return n, h.hexdigest()


def _batches(cur: Any) -> Iterator[Sequence[Any]]:
    while True:
        rows = cur.fetchmany(BATCH)
        if not rows:
            return
        yield from rows


def _copy_table(src: sqlite3.Connection, pg: PgConn, table: _Table, source_cols: set[str]) -> None:
    cols = ", ".join(f'"{c}"' for c in table.columns)
    cur = src.execute(_select(table, source_cols, False, "sqlite"))
    with pg.raw.cursor().copy(f'COPY "{table.name}" ({cols}) FROM STDIN') as copy:
        for row in _batches(cur):
            copy.write_row(row)


def _reset_sequences(src: sqlite3.Connection, pg: PgConn) -> None:
    serials = pg.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'"
    ).fetchall()
    for table, column in serials:
        top = pg.execute(f'SELECT COALESCE(MAX("{column}"), 0) FROM "{table}"').fetchone()[0]
        floor = max(int(top), _sequence_floor(src, str(table)))
        pg.execute(
            "SELECT setval(pg_get_serial_sequence(?, ?), ?, false)",
            (str(table), str(column), floor + 1),
        )


def verify(src: sqlite3.Connection, pg: PgConn, tables: Sequence[str]) -> Report:
    """Counts and hashes of ``tables`` on both sides (one snapshot of the target)."""
    pg.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        return _verify(src, pg, tables)
    finally:
        with contextlib.suppress(postgresql.Error):
            pg.execute("COMMIT")


def _verify(src: sqlite3.Connection, pg: PgConn, tables: Sequence[str]) -> Report:
    checks = []
    for name in tables:
        table = _target_table(pg, name)
        source_cols = _source_columns(src, name)
        s_rows, s_hash = _digest(
            table, _batches(src.execute(_select(table, source_cols, True, "sqlite")))
        )
        cur = pg.raw.cursor(name="verify")  # server-side: rows stream, not all in memory
        try:
            cur.execute(_select(table, source_cols, True, "postgresql").encode())
            t_rows, t_hash = _digest(table, _batches(cur))
        finally:
            cur.close()
        checks.append(TableCheck(name, s_rows, t_rows, s_hash, t_hash))
    return Report(tuple(checks))


def copy_farm(source: Path, dsn: str, note: Callable[[str], None] = lambda _: None) -> Report:
    """Copy the SQLite farm at ``source`` into the empty PostgreSQL database ``dsn`` and
    verify it. Raises ``TransferError`` (nothing copied) when it cannot start; returns
    the verification (``Report.ok`` false on any mismatch)."""
    with _locked_source(source) as src:
        try:
            pg = postgresql.connect(dsn)
        except postgresql.Error as exc:
            raise TransferError(
                f"cannot connect to PostgreSQL at {postgresql.describe(dsn)}: {str(exc).strip()}"
            ) from None
        try:
            return _copy(src, pg, note)
        except postgresql.Error as exc:
            raise TransferError(f"the copy failed, nothing was stored: {exc}") from None
        finally:
            pg.close()


def _copy(src: sqlite3.Connection, pg: PgConn, note: Callable[[str], None]) -> Report:
    tables = _source_tables(src)
    _check_target_empty(pg, tables)
    applied = postgresql.migrate(pg)
    note(f"PostgreSQL schema ready ({applied} migration steps applied)")
    pg.execute("BEGIN")
    try:
        pg.execute("ALTER TABLE events DISABLE TRIGGER history_on_transition")
        pg.execute("DELETE FROM history_marks")
        for name in tables:
            table = _target_table(pg, name)
            _copy_table(src, pg, table, _source_columns(src, name))
            note(f"copied {name}")
        pg.execute("ALTER TABLE events ENABLE TRIGGER history_on_transition")
        _reset_sequences(src, pg)
        pg.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(postgresql.Error):
            pg.execute("ROLLBACK")
        raise
    return verify(src, pg, tables)
