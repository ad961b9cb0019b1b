"""The store: the farm's durable state behind domain operations (SQLite, or PostgreSQL
with ``storage.backend = "postgresql"``: ``store/postgresql.py``, issue 18).

``Store`` is what the rest of the daemon sees: ``commit(records)`` writes what the farm
core decided (``core.farm.outputs``) in one transaction, reads return ``models`` values.
The SQL lives in this package's modules, one per thing owned: ``database`` (connect,
integrity, migrations, backups), ``writer`` (group commit), ``jobs`` (+ idempotency),
``events``, ``settings`` (+ printer memory), ``notifications``. ``PgStore``
(``store/postgresql.py``) is the same ``Store`` on PostgreSQL: the same SQL through
``store/dialect.py``, its own connections.

- One writer connection (``Writer``): commit before acknowledgement, group commit.
- Reads use their own connection (WAL readers never block the writer); a backup opens
  a connection of its own, so reads never wait behind it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from printfarmd.core.farm import outputs as out
from printfarmd.core.farm.startup import Remembered
from printfarmd.core.notify import Delivery
from printfarmd.errors import StorageBusy
from printfarmd.models import Event, Job, JobState
from printfarmd.store import cluster, database, events, jobs, notifications, settings, upkeep
from printfarmd.store.cluster import Membership
from printfarmd.store.database import map_sqlite_error
from printfarmd.store.dialect import Conn
from printfarmd.store.writer import StoreStatistics, Writer

log = logging.getLogger("printfarmd.store")

T = TypeVar("T")

__all__ = ["SqliteStore", "Store", "StoreStatistics", "open_backend", "open_store"]


def _encode(records: Sequence[out.Record]) -> list[tuple[out.Record, Any]]:
    """Each record with what the writer needs, encoded before the writer sees it (a bad
    value fails this caller, here, not the batch it would have joined)."""
    encoded: list[tuple[out.Record, Any]] = []
    for rec in records:
        if isinstance(rec, out.InsertJob | out.UpdateJob):
            encoded.append((rec, jobs.to_row(rec.job)))
        elif isinstance(rec, out.AppendEvent):
            encoded.append((rec, events.encode_data(rec.event)))
        elif isinstance(rec, out.PutSetting):
            encoded.append((rec, jobs.json_text(rec.value)))
        else:
            encoded.append((rec, None))
    return encoded


def _apply(
    conn: Conn, encoded: list[tuple[out.Record, Any]], member: Membership | None = None
) -> list[Event]:
    appended: list[Event] = []
    node = None if member is None else member.node
    for rec, extra in encoded:
        if isinstance(rec, out.InsertJob):
            jobs.insert(conn, extra)
        elif isinstance(rec, out.UpdateJob):
            if (
                member is not None
                and rec.expect is JobState.QUEUED
                and rec.job.state is JobState.PRINTING
            ):
                cluster.claim(conn, rec.job.id)  # issue 18: no two daemons start one job
            jobs.update_if(conn, extra, rec.expect.value)
        elif isinstance(rec, out.AppendEvent):
            appended.append(events.append(conn, rec.event, extra, node))
        elif isinstance(rec, out.FenceNode):
            cluster.fence(conn, rec.node_id, rec.epoch)
        elif isinstance(rec, out.SaveProgress):
            jobs.save_progress(conn, rec.job_id, rec.progress, rec.eta, rec.at)
        elif isinstance(rec, out.PutPrinter):
            settings.put_printer(conn, rec.printer_id, rec.plate_clear, rec.maintenance, rec.at)
        elif isinstance(rec, out.PutSetting):
            settings.put(conn, rec.key, extra)
        elif isinstance(rec, out.PutIdempotency):
            jobs.put_idempotency(conn, rec.key, rec.digest, rec.job_ids, rec.at)
        elif isinstance(rec, out.UPKEEP_RECORDS):
            upkeep.apply(conn, rec)  # issue 16: spools, usage, counters, maintenance log
        else:  # pragma: no cover - the Record union is closed
            raise TypeError(f"not a record: {rec!r}")
    return appended


class Store:
    """Domain-level access to the database. Create with ``open_store``.

    Every ``async`` method is a checkpoint. Writes return only after the change is
    committed, and raise ``StorageFull``/``StorageBusy`` (nothing stored) when SQLite
    cannot commit, ``StaleWrite`` when a conditional write found its row changed.
    """

    #: ``"sqlite"`` or ``"postgresql"``.
    backend = "sqlite"

    def __init__(self, path: Path, writer: Writer, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self.writer = writer
        #: (issue 18) This daemon in a cluster of daemons sharing the database, or None.
        self.membership: Membership | None = None

    # ------------------------------------------------------------------ plumbing

    def statistics(self) -> StoreStatistics:
        return self.writer.statistics()

    @property
    def after_commit(self) -> Callable[[], None] | None:
        return self.writer.after_commit

    @after_commit.setter
    def after_commit(self, hook: Callable[[], None] | None) -> None:
        self.writer.after_commit = hook

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def integrity_check(self) -> list[str]:
        """The engine's own check; ``["ok"]`` if sound."""
        raise NotImplementedError

    async def backup_to(self, dest: Path) -> None:
        """A whole copy of the database at ``dest`` (SQLite only: PostgreSQL is backed
        up with ``pg_dump``; ``PgStore`` refuses)."""
        raise NotImplementedError

    async def tables(self) -> list[str]:
        """Table names (for diagnostics and tests)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the farm's writes

    async def commit(self, records: Sequence[out.Record]) -> list[Event]:
        """Write ``records`` in order, all in one transaction; returns the appended
        events with their ``seq``. Nothing is written if any record fails."""
        encoded = _encode(records)
        member = self.membership
        return await self.writer.write(lambda conn: _apply(conn, encoded, member))

    async def put_setting(
        self, key: str, value: object, event: out.NewEvent | None = None
    ) -> list[Event]:
        """Persist a JSON-able setting (and optionally log an event with it)."""
        records: list[out.Record] = [out.PutSetting(key, value)]
        if event is not None:
            records.append(out.AppendEvent(event))
        return await self.commit(records)

    async def prune(self, *, events_before: float, keys_before: float) -> tuple[int, int]:
        """Retention: drop events and idempotency keys older than the given times (a
        bounded number of events per call); returns (events, keys) removed."""

        def unit(conn: Conn) -> tuple[int, int]:
            return events.prune(conn, events_before), jobs.prune_idempotency(conn, keys_before)

        return await self.writer.write(unit)

    # ------------------------------------------------------------------ reads

    async def get_job(self, job_id: str) -> Job | None:
        return await self._read(lambda conn: jobs.get(conn, job_id))

    async def get_jobs(self, ids: Sequence[str]) -> list[Job]:
        return await self._read(lambda conn: jobs.get_many(conn, ids))

    async def load_live_jobs(self) -> list[Job]:
        """Every job the farm keeps in memory (``core.farm.state.is_live``)."""
        return await self._read(jobs.load_live)

    async def list_jobs(self, **filters: Any) -> tuple[list[Job], int]:
        """A page of jobs and the total matching (see ``store.jobs.list_page``)."""
        return await self._read(lambda conn: jobs.list_page(conn, **filters))

    async def count_jobs_by_state(self) -> dict[str, int]:
        return await self._read(jobs.count_by_state)

    async def max_position(self) -> int:
        return await self._read(jobs.max_position)

    async def find_idempotency_key(self, key: str) -> tuple[str, list[str]] | None:
        """The (request_hash, job_ids) recorded for ``key``, or ``None``."""
        return await self._read(lambda conn: jobs.find_idempotency(conn, key))

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
        return await self._read(
            lambda conn: events.since(
                conn, after, job_id=job_id, printer_id=printer_id, types=types, limit=limit
            )
        )

    async def last_event_seq(self) -> int:
        return await self._read(events.last_seq)

    async def settings(self) -> dict[str, Any]:
        return await self._read(settings.all_settings)

    async def printer_memory(self) -> dict[str, Remembered]:
        return await self._read(settings.printers)

    # ------------------------------------------------------------------ notifications

    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Record new deliveries (normally ``pending``) in one transaction."""
        rows = [notifications.to_row(d) for d in deliveries]
        await self.writer.write(lambda conn: notifications.add(conn, rows))

    async def update_delivery(self, delivery: Delivery) -> None:
        """Store the outcome of an attempt: status, attempts, error and times."""
        await self.writer.write(lambda conn: notifications.update(conn, delivery))

    async def list_deliveries(self, **filters: Any) -> tuple[list[Delivery], int]:
        """A page of the delivery log, newest first (see ``notifications.page``)."""
        return await self._read(lambda conn: notifications.page(conn, **filters))

    async def pending_deliveries(self) -> list[Delivery]:
        return await self._read(notifications.pending)

    async def existing_deliveries(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are recorded deliveries."""
        return await self._read(lambda conn: notifications.existing(conn, ids))

    async def unnotified_failures(self, since: float, error_prefix: str) -> list[Job]:
        return await self._read(lambda conn: jobs.unnotified_failures(conn, since, error_prefix))

    # ------------------------------------------------------------------ other store modules
    # (issue 14) Modules under store/ that keep their own SQL (store/history.py) run it here.

    async def run_read(self, fn: Callable[[Conn], T]) -> T:
        """``fn(conn)`` on a reader connection in a worker thread; engine errors become
        ``StorageBusy``/``StorageFull``. Checkpoint."""
        return await self._read(fn)

    async def run_write(self, fn: Callable[[Conn], T]) -> T:
        """``fn(conn)`` as one unit of the group-commit writer (its own savepoint);
        returns ``fn``'s result after COMMIT, or raises what ``fn`` raised (nothing of it
        stored). Checkpoint."""
        return await self.writer.write(fn)


class SqliteStore(Store):
    """``Store`` on the SQLite file: one writer connection, one reader connection (WAL
    readers never block the writer)."""

    def __init__(
        self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection, synchronous: str
    ) -> None:
        super().__init__(path, Writer(writer), synchronous)
        self._reader = reader
        self._read_limiter = trio.CapacityLimiter(1)

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        def guarded() -> T:
            try:
                return fn(self._reader)
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc) from None

        return await trio.to_thread.run_sync(guarded, limiter=self._read_limiter)

    def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(sqlite3.Error):
            self._reader.close()

    async def integrity_check(self) -> list[str]:
        """Full ``PRAGMA integrity_check`` on the reader connection; ``["ok"]`` if sound."""

        def q(conn: Conn) -> list[str]:
            return [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]

        return await self._read(q)

    async def backup_to(self, dest: Path) -> None:
        """Online backup (see ``database.backup_database``) on a connection of its own:
        reads and writes go on meanwhile."""

        def run() -> None:
            try:
                database.backup_database(self.path, dest)
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc) from None

        await trio.to_thread.run_sync(run)

    async def tables(self) -> list[str]:
        """Table names (for diagnostics and tests)."""

        def q(conn: Conn) -> list[str]:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return [str(r[0]) for r in rows]

        return await self._read(q)


async def _check_references(store: SqliteStore) -> None:
    await trio.to_thread.run_sync(database.check_references, store.path)
    store.writer.checked.set()


def open_backend(
    backend: str, *, path: Path, dsn: str = "", synchronous: str = "FULL", node: str = ""
) -> contextlib.AbstractAsyncContextManager[Store]:
    """The configured store: the SQLite file at ``path``, or (``backend ==
    "postgresql"``) the PostgreSQL database ``dsn`` (psycopg is imported only then),
    as cluster node ``node`` when given (issue 18)."""
    if backend == "postgresql":
        try:
            from printfarmd.store.postgresql import open_pg_store
        except ImportError as exc:  # psycopg without a libpq (see docs/postgresql.md)
            raise StorageBusy(f"the PostgreSQL backend cannot load psycopg: {exc}") from None
        return open_pg_store(dsn, synchronous, node)
    return open_store(path, synchronous)


@contextlib.asynccontextmanager
async def open_store(path: Path, synchronous: str = "FULL") -> AsyncIterator[Store]:
    """Open, check and migrate the database, run its writer, and close it at exit.

    Raises ``DatabaseDamaged`` if the file is damaged: before yielding when it fails
    ``quick_check``, or while running when the reference check (which holds every
    write back until it passed) finds a dangling reference.
    """
    writer, applied, reader = await trio.to_thread.run_sync(database.open_files, path, synchronous)
    log.info("database migrations applied", extra={"applied": applied, "db": str(path)})
    store = SqliteStore(path, writer, reader, synchronous)
    try:
        async with trio.open_nursery() as nursery:
            # The reference check reads the whole file: it runs while the daemon starts
            # serving, and every write waits for it (a damaged file is never written).
            nursery.start_soon(_check_references, store)
            nursery.start_soon(store.writer.run)
            try:
                yield store
            finally:
                nursery.cancel_scope.cancel()
    finally:
        store.close()
