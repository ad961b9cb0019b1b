"""What the store's SQL needs from an engine (issue 18): SQLite or PostgreSQL.

The store's modules write one SQL text per operation and run it on a ``Conn``: a
``sqlite3.Connection``, or ``store.postgresql.PgConn`` (psycopg 3), which takes the same
``?`` placeholders. The differences that remain live here, one place each:

- ``Step``: a migration step that needs its own text per engine (a trigger); a plain
  ``str`` step runs on both, its column types translated for PostgreSQL by ``pg_types``
  (``INTEGER`` -> ``BIGINT``, ``REAL`` -> ``DOUBLE PRECISION``, ``INTEGER PRIMARY KEY
  AUTOINCREMENT`` -> ``BIGSERIAL PRIMARY KEY``).
- ``Dialect``: transaction start, which errors lose a whole transaction or only one unit,
  how an engine error becomes a domain error, whether a connection is lost for good.

Booleans are stored as integers 0/1 and JSON as text on both engines, so a row reads
back the same whatever the engine (and ``migrate-store`` can checksum both sides alike).
Two differences the SQL lives with rather than hides: ``LIKE`` ignores ASCII case on
SQLite and not on PostgreSQL (the store's patterns match text the code itself writes, in
one case), and text sorts bytewise on SQLite but by the database's collation on
PostgreSQL (docs/postgresql.md asks for the C collation).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import msgspec

from printfarmd.errors import FarmError


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """The part of a DB-API connection the store's SQL uses (``?`` placeholders)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Cursor: ...

    def close(self) -> None: ...


class Step(msgspec.Struct, frozen=True):
    """A migration step written twice: once per engine."""

    sqlite: str
    postgresql: str


_AUTOINCREMENT = re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b")
_INTEGER = re.compile(r"\bINTEGER\b")
_REAL = re.compile(r"\bREAL\b")


def pg_types(ddl: str) -> str:
    """SQLite column types as PostgreSQL spells them (64-bit integers and floats)."""
    ddl = _AUTOINCREMENT.sub("BIGSERIAL PRIMARY KEY", ddl)
    ddl = _INTEGER.sub("BIGINT", ddl)
    return _REAL.sub("DOUBLE PRECISION", ddl)


def step_text(step: str | Step, engine: str) -> str:
    if isinstance(step, Step):
        return step.sqlite if engine == "sqlite" else step.postgresql
    return step if engine == "sqlite" else pg_types(step)


class Dialect(msgspec.Struct, frozen=True):
    name: str
    #: Starts the writer's transaction (SQLite takes the write lock at once).
    begin: str
    #: Every error of the engine's driver.
    error: type[Exception]
    #: Errors after which the whole transaction is lost (disk full, I/O, connection).
    fatal: tuple[type[Exception], ...]
    #: Errors of one unit only (a constraint): its savepoint is rolled back.
    integrity: tuple[type[Exception], ...]
    #: The domain error for an engine error (``StorageFull``, ``StorageBusy``, ...).
    map_error: Callable[[Exception], FarmError]
    #: Whether a connection is lost for good (reconnect before the next use).
    broken: Callable[[Any], bool]


def _never_broken(conn: Any) -> bool:
    return False


def _map_sqlite(exc: Exception) -> FarmError:
    from printfarmd.store.database import map_sqlite_error

    assert isinstance(exc, sqlite3.Error)
    return map_sqlite_error(exc)


SQLITE = Dialect(
    name="sqlite",
    begin="BEGIN IMMEDIATE",
    error=sqlite3.Error,
    fatal=(sqlite3.OperationalError,),
    integrity=(sqlite3.IntegrityError,),
    map_error=_map_sqlite,
    broken=_never_broken,
)
