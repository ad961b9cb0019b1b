"""Group commit: one writer connection, many callers, one fsync for many changes.

Callers hand the writer a unit of work (a function of the connection). The writer task
drains every unit waiting (up to ``MAX_BATCH``) and runs them in ONE transaction on a
worker thread, each unit inside its own savepoint so one failing unit cannot undo
another. A caller's ``await`` returns only after ``COMMIT`` returned: commit before
acknowledgement. A caller cancelled while waiting loses only the answer: its unit,
once handed over, commits (or fails) whole.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
import trio

from printfarmd.errors import FarmError
from printfarmd.store.dialect import SQLITE, Conn, Dialect

T = TypeVar("T")

MAX_BATCH = 100


class StoreStatistics(msgspec.Struct, frozen=True):
    """Counters since open: ``commits`` transactions holding ``units`` units of work."""

    commits: int
    units: int
    failed_units: int
    max_batch: int


class _Unit(msgspec.Struct, Generic[T]):
    fn: Callable[[Conn], T]
    done: trio.Event = msgspec.field(default_factory=trio.Event)
    result: T | None = None
    error: BaseException | None = None


class Writer:
    """The one writer of the database.

    ``dialect`` says which engine errors lose the whole transaction; ``reconnect`` (the
    PostgreSQL store) opens a new connection when the last one was lost: the batch that
    found it lost failed (its callers got a storage error), the next one reconnects.
    """

    def __init__(
        self,
        conn: Conn | None,
        dialect: Dialect = SQLITE,
        reconnect: Callable[[], Conn] | None = None,
    ) -> None:
        self.conn = conn
        self.dialect = dialect
        self._reconnect = reconnect
        self._limiter = trio.CapacityLimiter(1)
        self._send, self._recv = trio.open_memory_channel[_Unit[Any]](math.inf)
        self._commits = 0
        self._units = 0
        self._failed_units = 0
        self._max_batch = 0
        #: Test hook: called on the writer thread after COMMIT, before callers are woken.
        self.after_commit: Callable[[], None] | None = None
        #: Set once the file passed the checks that run after opening: no write before.
        self.checked = trio.Event()
        #: (issue 18) Run first in every transaction (a cluster daemon's order lock and
        #: fence); a ``FarmError`` it raises fails the whole batch, nothing written.
        self.begin: Callable[[Conn], None] | None = None

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(self._commits, self._units, self._failed_units, self._max_batch)

    async def write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in the next transaction; returns its result after COMMIT.

        Raises what ``fn`` raised (its savepoint rolled back), or ``StorageFull`` /
        ``StorageBusy`` when the transaction could not commit (nothing stored).
        Checkpoint; a cancelled caller's unit still runs whole.
        """
        unit: _Unit[T] = _Unit(fn)
        self._send.send_nowait(unit)
        await unit.done.wait()
        if unit.error is not None:
            raise unit.error
        return unit.result  # type: ignore[return-value]

    async def run(self) -> None:
        """The group-commit loop. Runs until cancelled; a batch in flight completes.
        Nothing is written before ``checked`` is set."""
        await self.checked.wait()
        async for first in self._recv:
            batch: list[_Unit[Any]] = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            # Not cancellable: a started transaction always finishes (commits or
            # rolls back) before the daemon moves on.
            await trio.to_thread.run_sync(self._commit_batch, batch, limiter=self._limiter)
            for unit in batch:
                unit.done.set()

    def _fail(self, batch: list[_Unit[Any]], exc: Exception) -> None:
        err = self.dialect.map_error(exc)
        for unit in batch:
            unit.error = err
            unit.result = None
        self._failed_units += len(batch)

    def _drop_if_broken(self) -> None:
        conn = self.conn
        if conn is not None and self._reconnect is not None and self.dialect.broken(conn):
            self.conn = None
            with contextlib.suppress(self.dialect.error):
                conn.close()

    def _begin(self) -> Conn:
        """The connection, in a new transaction. A connection found lost before anything
        was sent (the server restarted while idle) is replaced once, here."""
        d = self.dialect
        for attempt in (1, 2):
            if self.conn is None:
                assert self._reconnect is not None
                self.conn = self._reconnect()
            try:
                self.conn.execute(d.begin)
                return self.conn
            except d.error:
                self._drop_if_broken()
                if attempt == 2 or self.conn is not None:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _commit_batch(self, batch: list[_Unit[Any]]) -> None:
        d = self.dialect
        try:
            conn = self._begin()
        except d.error as exc:
            self._fail(batch, exc)
            return
        ok: list[_Unit[Any]] = []
        try:
            if self.begin is not None:
                try:
                    self.begin(conn)
                except FarmError as exc:
                    conn.execute("ROLLBACK")
                    for unit in batch:
                        unit.error = exc
                    self._failed_units += len(batch)
                    return
            for unit in batch:
                conn.execute("SAVEPOINT unit")
                try:
                    unit.result = unit.fn(conn)
                except d.fatal:
                    raise  # disk full, I/O, lock, connection: the whole transaction is lost
                except d.integrity as exc:
                    conn.execute("ROLLBACK TO SAVEPOINT unit")
                    unit.error = d.map_error(exc)
                except Exception as exc:
                    # A FarmError, or a bug in one unit: only that unit fails, its caller
                    # gets the exception, and the writer keeps serving everyone else.
                    conn.execute("ROLLBACK TO SAVEPOINT unit")
                    unit.error = exc
                else:
                    ok.append(unit)
                conn.execute("RELEASE SAVEPOINT unit")
            conn.execute("COMMIT")
        except d.error as exc:
            # Disk full, I/O error, a lost connection...: the whole transaction is gone.
            # Nobody gets an acknowledgement for anything in it.
            with contextlib.suppress(d.error):
                conn.execute("ROLLBACK")
            self._drop_if_broken()
            self._fail(batch, exc)
            return
        self._commits += 1
        self._units += len(ok)
        self._failed_units += len(batch) - len(ok)
        self._max_batch = max(self._max_batch, len(batch))
        if self.after_commit is not None:
            self.after_commit()

    def close(self) -> None:
        self._send.close()
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(self.dialect.error):
                conn.close()
