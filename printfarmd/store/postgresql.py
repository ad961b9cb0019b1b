"""The store on PostgreSQL (issue 18, phase 1): ``storage.backend = "postgresql"``.

The same ``Store`` domain operations and the same SQL as on SQLite (``store/dialect.py``
keeps the differences), on psycopg 3's blocking API in worker threads:

- ``PgConn`` runs the store's ``?``-placeholder SQL on a psycopg connection (autocommit
  mode: the writer sends ``BEGIN``/``SAVEPOINT``/``COMMIT`` itself, as on SQLite; a read
  is one statement, one snapshot).
- One writer connection (group commit, ``store/writer.py``) with ``synchronous_commit =
  on`` (read back and checked): ``COMMIT`` returns only once PostgreSQL has flushed the
  commit to its WAL, so a 201 still means stored. ``storage.synchronous = "NORMAL"``
  maps to ``synchronous_commit = off`` (as SQLite's NORMAL, a crash may lose the last
  commits, never corrupt).
- A few reader connections (``Readers``), opened when needed.
- A lost connection (server restarted, network gone) fails what was in flight with
  ``StorageBusy`` (the owner degrades: writes 503) and is replaced at the next use: the
  store reconnects by itself, the owner recovers by itself.
- Migrations: the one list of ``store/migrations.py``, each step's PostgreSQL text, its
  version in the table ``printfarmd_schema``, applied under an advisory lock.

psycopg is imported only here, and this module only when the PostgreSQL backend is
configured (start-up time, issue 17).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import trio

from printfarmd.errors import DatabaseDamaged, FarmError, StorageBusy, StorageFull
from printfarmd.store import cluster
from printfarmd.store.dialect import Conn, Cursor, Dialect, step_text
from printfarmd.store.migrations import MIGRATIONS
from printfarmd.store.store import Store
from printfarmd.store.writer import Writer

log = logging.getLogger("printfarmd.store")

T = TypeVar("T")

#: How many reads run at once (each on a connection of its own).
READERS = 3
CONNECT_TIMEOUT = 5
TCP_USER_TIMEOUT_MS = 30_000
#: Waiting for a row lock (another client holding it) longer than this fails the write
#: with ``StorageBusy`` (SQLite's busy timeout).
LOCK_TIMEOUT_MS = 5000
#: Any number will do, as long as it is always the same: the migrations' advisory lock.
_MIGRATION_LOCK = 0x70F4_2018
#: Held by the writer's session: one daemon per database, exclusively; shared by the
#: daemons of a cluster (``server.node_id``), who each hold ``_NODE_LOCK`` for their node.
_WRITER_LOCK = 0x70F4_2019
#: The class of the per-node advisory lock (two-key form: this, ``hashtext(node_id)``).
_NODE_LOCK = 0x70F4
VERSION_TABLE = "printfarmd_schema"


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` as ``%%``); a ``?``
    inside a quoted string is left alone."""
    out: list[str] = []
    quote = ""
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append("%%" if ch == "%" else ch)
    return "".join(out)


def _param(value: object) -> object:
    # Booleans are stored as 0/1 integers on both engines.
    return int(value) if isinstance(value, bool) else value


class PgConn:
    """A psycopg connection that runs the store's SQLite-style SQL (see ``Conn``)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        cur = self.raw.cursor()
        cur.execute(translate(sql), [_param(p) for p in parameters])
        return cur

    def executemany(self, sql: str, parameters: Any, /) -> Cursor:
        cur = self.raw.cursor()
        cur.executemany(translate(sql), [[_param(p) for p in row] for row in parameters])
        return cur

    def script(self, sql: str) -> None:
        """Several statements, no parameters (a migration step: ``%`` stays as it is)."""
        self.raw.execute(sql.encode())

    def close(self) -> None:
        self.raw.close()

    @property
    def broken(self) -> bool:
        return bool(self.raw.closed or self.raw.broken)


# ---------------------------------------------------------------------- errors


def map_pg_error(exc: Exception) -> FarmError:
    """The domain error for a failed PostgreSQL call (as ``database.map_sqlite_error``)."""
    if isinstance(exc, psycopg.errors.DiskFull):
        return StorageFull("the database server's disk is full: nothing was stored")
    if isinstance(exc, psycopg.IntegrityError):
        return FarmError("a database constraint was violated: nothing was stored")
    if isinstance(
        exc,
        psycopg.errors.LockNotAvailable
        | psycopg.errors.DeadlockDetected
        | psycopg.errors.SerializationFailure
        | psycopg.errors.QueryCanceled,
    ):
        return StorageBusy("the database is busy: nothing was stored, try again")
    if isinstance(exc, InUse):
        return StorageBusy(f"{IN_USE}: nothing was stored")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return StorageBusy("the database is unavailable: nothing was stored, try again")
    return StorageBusy("the database could not be written: nothing was stored")


def _broken(conn: Any) -> bool:
    return isinstance(conn, PgConn) and conn.broken


POSTGRESQL = Dialect(
    name="postgresql",
    begin="BEGIN",
    error=psycopg.Error,
    fatal=(psycopg.OperationalError, psycopg.InterfaceError),
    integrity=(psycopg.IntegrityError,),
    map_error=map_pg_error,
    broken=_broken,
)


# ---------------------------------------------------------------------- connections


class InUse(psycopg.OperationalError):
    """Another printfarmd daemon writes to this database."""


IN_USE = (
    "another printfarmd daemon is using this PostgreSQL database: one daemon per "
    "database, unless every daemon has its own server.node_id (see docs/postgresql.md)"
)


def connect(dsn: str, synchronous: str = "FULL", *, writer: bool = False, node: str = "") -> PgConn:
    """A connection in autocommit mode with the store's session settings; the writer's
    also holds the one-daemon-per-database lock, or with ``node`` (a cluster daemon) a
    share of it and the lock of its node (``InUse`` when another daemon has either).
    Blocking. Raises ``psycopg.Error`` (never anything else) when it cannot."""
    raw = psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        application_name="printfarmd",
        # A server that vanished without closing the connection (power cut, network
        # black hole) is noticed in about 30 s instead of the kernel's hours: the call
        # fails, the farm degrades and the connection is replaced.
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        tcp_user_timeout=TCP_USER_TIMEOUT_MS,
    )
    try:
        wanted = "on" if synchronous == "FULL" else "off"
        raw.execute(f"SET synchronous_commit = {wanted}")
        raw.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        row = raw.execute("SHOW synchronous_commit").fetchone()
        if row is None or row[0] != wanted:
            raise psycopg.OperationalError(
                f"PostgreSQL refused synchronous_commit={wanted} (got {row})"
            )
        if writer and not node:
            locked = raw.execute("SELECT pg_try_advisory_lock(%s)", (_WRITER_LOCK,)).fetchone()
            if locked is None or not locked[0]:
                raise InUse(IN_USE)
        elif writer:
            locked = raw.execute(
                "SELECT pg_try_advisory_lock_shared(%s) AND pg_try_advisory_lock(%s, hashtext(%s))",
                (_WRITER_LOCK, _NODE_LOCK, node),
            ).fetchone()
            if locked is None or not locked[0]:
                raise InUse(
                    f"another printfarmd daemon is using this PostgreSQL database as node "
                    f"{node}, or without a node id: each daemon needs its own server.node_id"
                )
    except BaseException:
        raw.close()
        raise
    return PgConn(raw)


def describe(dsn: str) -> str:
    """The DSN without its password (for logs and messages)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(an invalid PostgreSQL DSN)"
    host = info.get("host", "localhost")
    return f"postgresql://{info.get('user', '')}@{host}:{info.get('port', 5432)}/" + str(
        info.get("dbname", "")
    )


#: Every error psycopg raises (for callers that do not import psycopg themselves).
Error = psycopg.Error


def read_schema_version(conn: PgConn) -> int:
    """The schema version, 0 for a database printfarmd never used; writes nothing."""
    row = conn.execute("SELECT to_regclass(?)", (VERSION_TABLE,)).fetchone()
    if row is None or row[0] is None:
        return 0
    found = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
    return 0 if found is None else int(found[0])


def schema_version(conn: PgConn) -> int:
    conn.script(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version BIGINT NOT NULL)")
    row = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
    return 0 if row is None else int(row[0])


def migrate(conn: PgConn) -> int:
    """Apply the steps this database has not had, each in its own transaction, under an
    advisory lock (two daemons starting at once migrate once). Blocking. Returns how many
    were applied; raises ``DatabaseDamaged`` on a schema newer than this code."""
    applied = 0
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        version = schema_version(conn)
        if version > len(MIGRATIONS):
            raise DatabaseDamaged(
                f"the PostgreSQL database has schema version {version}, newer than this "
                f"printfarmd knows ({len(MIGRATIONS)}); refusing to run an older version on it"
            )
        for step, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("SAVEPOINT step")
            conn.script(step_text(sql, "postgresql"))
            conn.execute(f"DELETE FROM {VERSION_TABLE}")
            conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)", (step,))
            conn.execute("RELEASE SAVEPOINT step")
            applied += 1
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")
        raise
    return applied


def table_names(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = "
        "current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
    ).fetchall()
    return [str(r[0]) for r in rows]


class Readers:
    """A few reader connections, opened when first needed, replaced when lost."""

    def __init__(self, dsn: str, synchronous: str, size: int = READERS) -> None:
        self.dsn = dsn
        self.synchronous = synchronous
        self.limiter = trio.CapacityLimiter(size)
        self._idle: list[PgConn] = []
        self._lock = threading.Lock()
        self._closed = False

    def _take(self) -> tuple[PgConn, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return connect(self.dsn, self.synchronous), False

    def _give(self, conn: PgConn) -> None:
        with self._lock:
            if not self._closed and not conn.broken:
                self._idle.append(conn)
                return
        with contextlib.suppress(psycopg.Error):
            conn.close()

    def run(self, fn: Callable[[PgConn], T]) -> T:
        """``fn`` on a reader connection. Blocking (a worker thread). A connection that
        was lost while idle (the server restarted) is replaced once; errors become
        ``StorageBusy``/``StorageFull``."""
        for _ in range(2):
            try:
                conn, was_idle = self._take()
            except psycopg.Error as exc:
                raise map_pg_error(exc) from None
            try:
                result = fn(conn)
            except psycopg.Error as exc:
                retry = was_idle and conn.broken
                self._give(conn)
                if retry:
                    # The server went away while it was idle: so did the other idle ones.
                    self._drop_idle()
                    continue
                raise map_pg_error(exc) from None
            except BaseException:
                self._give(conn)
                raise
            self._give(conn)
            return result
        raise StorageBusy("the database is unavailable: nothing was read, try again")

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._drop_idle()


# ---------------------------------------------------------------------- the store


class PgStore(Store):
    """``Store`` on PostgreSQL: the same domain operations (see the module docstring)."""

    backend = "postgresql"

    def __init__(self, dsn: str, writer: PgConn, synchronous: str, node: str = "") -> None:
        super().__init__(
            Path(),
            Writer(
                writer,
                POSTGRESQL,
                reconnect=lambda: connect(dsn, synchronous, writer=True, node=node),
            ),
            synchronous,
        )
        self.dsn = dsn
        self.readers = Readers(dsn, synchronous)
        if node:
            # issue 18: a daemon of a cluster; it writes nothing before it joined.
            member = self.membership = cluster.Membership(node)
            self.writer.begin = lambda conn: cluster.begin(conn, member)

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        return await trio.to_thread.run_sync(self.readers.run, fn, limiter=self.readers.limiter)

    def close(self) -> None:
        self.writer.close()
        self.readers.close()

    async def integrity_check(self) -> list[str]:
        """PostgreSQL checks its pages itself (``data_checksums``) and enforces every
        constraint: a round trip that reads from the server is what is left to check."""

        def q(conn: Conn) -> list[str]:
            conn.execute("SELECT 1").fetchall()
            return ["ok"]

        return await self._read(q)

    async def backup_to(self, dest: Path) -> None:
        raise FarmError(
            "the PostgreSQL store is backed up with the server's tools (pg_dump), not by printfarmd"
        )

    async def tables(self) -> list[str]:
        return await self._read(table_names)


#: How long a start waits for the writer's lock before it says the database is in use.
#: A daemon that has just stopped (a restart, a test reopening its store) holds it until
#: its server process has seen the connection close, a moment after the client's close
#: returned; a daemon that really runs holds it for good.
IN_USE_WAIT = 3.0


def _open(dsn: str, synchronous: str, node: str = "") -> tuple[PgConn, int]:
    """The writer's connection, migrated (blocking: runs on a worker thread)."""
    deadline = time.monotonic() + IN_USE_WAIT
    while True:
        try:
            conn = connect(dsn, synchronous, writer=True, node=node)
            break
        except InUse as exc:
            if time.monotonic() >= deadline:
                raise StorageBusy(f"{exc} ({describe(dsn)})") from None
            time.sleep(0.05)
        except psycopg.Error as exc:
            raise StorageBusy(
                f"cannot connect to PostgreSQL at {describe(dsn)}: {str(exc).strip()}"
            ) from None
    try:
        applied = migrate(conn)
    except psycopg.Error as exc:
        conn.close()
        raise DatabaseDamaged(f"the PostgreSQL schema cannot be migrated: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn, applied


@contextlib.asynccontextmanager
async def open_pg_store(
    dsn: str, synchronous: str = "FULL", node: str = ""
) -> AsyncIterator[PgStore]:
    """Connect, migrate, run the writer; close at exit. Raises ``StorageBusy`` when the
    server cannot be reached at start (or another daemon holds the database, or
    ``node``), ``DatabaseDamaged`` when its schema is newer than this code or cannot be
    migrated. With ``node`` the store writes nothing until the node joined
    (``services/cluster.py``)."""
    writer, applied = await trio.to_thread.run_sync(_open, dsn, synchronous, node)
    log.info("database migrations applied", extra={"applied": applied, "db": describe(dsn)})
    store = PgStore(dsn, writer, synchronous, node)
    # PostgreSQL enforces every reference itself: nothing to check before writing.
    store.writer.checked.set()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.writer.run)
            try:
                yield store
            finally:
                nursery.cancel_scope.cancel()
    finally:
        store.close()
