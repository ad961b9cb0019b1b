"""The database file: connecting, checking, migrating and backing it up (blocking calls,
run on worker threads).

Durability rules (see docs/operations.md): WAL journal, ``synchronous=FULL`` unless
configured otherwise (read back and checked), ``foreign_keys=ON``, ``busy_timeout`` on
every connection; ``PRAGMA quick_check`` before anything else (a damaged file raises
``DatabaseDamaged`` and is never replaced by an empty one); a backup before a migration.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from printfarmd.errors import DatabaseDamaged, FarmError, StorageBusy, StorageFull
from printfarmd.store.dialect import step_text
from printfarmd.store.migrations import MIGRATIONS

BUSY_TIMEOUT_MS = 5000


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


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
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


def fsync_dir(path: Path) -> None:
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
    fsync_dir(dest.parent)


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
        conn = connect(path, synchronous)
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
        pending = list(enumerate(MIGRATIONS[version:], start=version + 1))
        # A new file gets every step in one transaction (one commit, not one per step:
        # a first start's schema is all or nothing); an existing one step by step, so a
        # failed migration leaves the last good schema. executescript() would commit
        # first: the statements run one by one in our own transaction.
        batches = [pending] if not existed else [[one] for one in pending]
        for batch in batches:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for step, sql in batch:
                    for statement in _split_sql(step_text(sql, "sqlite")):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {step}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        applied = len(pending)
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        raise DatabaseDamaged(f"database {path.name} cannot be opened: {exc}") from None
    if not existed:
        fsync_dir(path.parent)
    return conn, applied


def open_files(
    path: Path, synchronous: str = "FULL"
) -> tuple[sqlite3.Connection, int, sqlite3.Connection]:
    """``open_database``, then the reader connection. Blocking. Returns the writer, the
    migrations applied now and the reader; raises what ``open_database`` raises."""
    writer, applied = open_database(path, synchronous)
    try:
        reader = connect(path, synchronous)
    except BaseException:
        writer.close()
        raise
    return writer, applied, reader


def check_references(path: Path) -> None:
    """``PRAGMA foreign_key_check`` on a connection of its own. Blocking.

    Raises ``DatabaseDamaged`` if a row refers to one that does not exist. It reads the
    whole file (O(rows)), so the store runs it after opening, in the background, and
    holds every write back until it passed (``open_store``)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        bad = conn.execute("PRAGMA foreign_key_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise DatabaseDamaged(f"database {path.name} cannot be checked: {exc}") from None
    finally:
        conn.close()
    if bad:
        raise DatabaseDamaged(f"database {path.name} has {len(bad)} dangling references")


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
