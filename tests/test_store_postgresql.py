"""The store on PostgreSQL (issue 18), what only a server has: its session settings, a
row lock held by another client, a lost connection, the server down and back, its schema
version, the SQL translation, and psycopg imported only when configured. The domain
operations themselves run on both engines in ``tests/test_store.py`` and
``tests/test_history_store.py``."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import psycopg
import psycopg.errors
import pytest
import trio

from printfarmd.core.farm import outputs as out
from printfarmd.errors import DatabaseDamaged, FarmError, StorageBusy, StorageFull
from printfarmd.models import JobState
from printfarmd.store.migrations import MIGRATIONS
from printfarmd.store.postgresql import PgStore, map_pg_error, open_pg_store, translate
from tests.conftest import REPO
from tests.pg_server import PgServer
from tests.test_store import created_event, mkjob


def test_translate_placeholders() -> None:
    assert translate("SELECT ? WHERE a = ?") == "SELECT %s WHERE a = %s"
    # A literal % (LIKE patterns) and a ? inside a string are not placeholders.
    assert translate("x LIKE 'a%?' AND y = ?") == "x LIKE 'a%%?' AND y = %s"


def test_map_pg_errors() -> None:
    assert isinstance(map_pg_error(psycopg.errors.DiskFull("full")), StorageFull)
    assert isinstance(map_pg_error(psycopg.errors.LockNotAvailable("lock")), StorageBusy)
    assert isinstance(map_pg_error(psycopg.OperationalError("gone")), StorageBusy)
    assert "unavailable" in map_pg_error(psycopg.OperationalError("gone")).message
    unique = map_pg_error(psycopg.errors.UniqueViolation("dup"))
    assert type(unique) is FarmError


async def test_commit_is_durable_on_the_server(pg_dsn: str) -> None:
    """The writer's session waits for the WAL flush (``synchronous_commit = on``) and a
    row acknowledged is visible to any other client."""
    async with open_pg_store(pg_dsn) as store:
        assert isinstance(store, PgStore)
        conn = store.writer.conn
        assert conn is not None
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        job = mkjob()
        await store.commit([out.InsertJob(job), out.AppendEvent(created_event(job))])
        with psycopg.connect(pg_dsn) as other:
            row = other.execute("SELECT id FROM jobs").fetchone()
            assert row == (job.id,)


async def test_reopen_keeps_everything_and_migrates_once(pg_dsn: str) -> None:
    job = mkjob(state=JobState.QUEUED)
    async with open_pg_store(pg_dsn) as store:
        await store.commit([out.InsertJob(job), out.AppendEvent(created_event(job))])
        await store.put_setting("paused", True)
    with psycopg.connect(pg_dsn) as other:
        assert other.execute("SELECT version FROM printfarmd_schema").fetchall() == [
            (len(MIGRATIONS),)
        ]
    async with open_pg_store(pg_dsn) as store:
        assert await store.get_job(job.id) == job
        assert await store.settings() == {"paused": True}
        assert [e.job_id for e in await store.events_since(0)] == [job.id]
    with psycopg.connect(pg_dsn) as other:
        assert other.execute("SELECT version FROM printfarmd_schema").fetchall() == [
            (len(MIGRATIONS),)
        ]


async def test_newer_schema_is_refused(pg_dsn: str) -> None:
    async with open_pg_store(pg_dsn):
        pass
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        other.execute("UPDATE printfarmd_schema SET version = 99")
    with pytest.raises(DatabaseDamaged, match="newer"):
        async with open_pg_store(pg_dsn):
            pass


async def test_unreachable_server_at_start_is_a_clear_error(pg_server: PgServer) -> None:
    dsn = f"postgresql://postgres:secret@127.0.0.1:{pg_server.port + 1}/nowhere"
    with pytest.raises(StorageBusy, match="cannot connect to PostgreSQL") as err:
        async with open_pg_store(dsn):
            pass
    assert "secret" not in err.value.message


async def test_a_row_locked_by_another_client_gives_busy_then_recovers(pg_dsn: str) -> None:
    """Another client holds the job's row past the lock timeout: the write fails whole
    with ``StorageBusy`` (nothing stored), reads go on meanwhile, and once the lock is
    gone the same write goes through."""
    job = mkjob(state=JobState.QUEUED)
    async with open_pg_store(pg_dsn) as store:
        await store.commit([out.InsertJob(job)])
        moved = msgspec.structs.replace(job, state=JobState.CANCELLED)
        with psycopg.connect(pg_dsn) as other:
            other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job.id,))
            with trio.fail_after(30):
                with pytest.raises(StorageBusy):
                    await store.commit([out.UpdateJob(moved, JobState.QUEUED)])
                assert await store.get_job(job.id) == job
            other.rollback()
        await store.commit([out.UpdateJob(moved, JobState.QUEUED)])
        assert await store.get_job(job.id) == moved


async def test_lost_connections_are_replaced(pg_server: PgServer, pg_dsn: str) -> None:
    """Every connection of the store cut (as a network drop or a server restart does):
    the next read and the next write reconnect by themselves."""
    async with open_pg_store(pg_dsn) as store:
        first = mkjob()
        await store.commit([out.InsertJob(first)])
        assert await store.get_job(first.id) == first
        assert pg_server.terminate_clients() >= 2  # the writer and a reader
        second = mkjob()
        with trio.fail_after(30):
            await store.commit([out.InsertJob(second)])
            assert await store.get_job(second.id) == second


async def test_server_down_fails_with_busy_then_recovers(pg_server: PgServer, pg_dsn: str) -> None:
    """The server stopped: writes and reads fail with ``StorageBusy`` (the owner's
    degraded mode, writes 503), nothing half-stored; the server back, the same store
    works again without being reopened."""
    async with open_pg_store(pg_dsn) as store:
        kept = mkjob()
        await store.commit([out.InsertJob(kept)])
        pg_server.stop()
        try:
            lost = mkjob()
            with trio.fail_after(60):
                with pytest.raises(StorageBusy, match="unavailable"):
                    await store.commit([out.InsertJob(lost)])
                with pytest.raises(StorageBusy):
                    await store.get_job(kept.id)
        finally:
            pg_server.start()
        with trio.fail_after(60):
            await store.commit([out.InsertJob(lost)])
            assert [j.id for j in await store.get_jobs([kept.id, lost.id])] == [kept.id, lost.id]


def test_psycopg_is_imported_only_when_configured() -> None:
    """Start-up imports (issue 17): the daemon with the default SQLite store never
    imports psycopg."""
    code = "import sys, printfarmd.daemon, printfarmd.cli; print('psycopg' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.strip() == "False"


async def test_one_daemon_per_database(pg_dsn: str) -> None:
    """Until several daemons can share a farm (issue 18, phase 2), a second store on the
    same database is refused at start; the first keeps working."""
    async with open_pg_store(pg_dsn) as first:
        with pytest.raises(StorageBusy, match="another printfarmd daemon"):
            async with open_pg_store(pg_dsn):
                pass
        job = mkjob()
        await first.commit([out.InsertJob(job)])
        assert await first.get_job(job.id) == job
    async with open_pg_store(pg_dsn) as again:  # the lock went with the first daemon
        assert await again.get_job(job.id) == job


async def test_a_start_waits_for_the_lock_of_a_daemon_that_just_stopped(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped daemon's lock outlives its close for a moment (the server drops it once
    it has seen the connection go): a start meanwhile waits for it instead of failing."""
    from printfarmd.store import postgresql

    holder = psycopg.connect(pg_dsn, autocommit=True)
    held = holder.execute("SELECT pg_try_advisory_lock(%s)", (postgresql._WRITER_LOCK,))
    assert held.fetchone() == (True,)
    refused: list[str] = []
    real_connect = postgresql.connect

    def connect(*args: object, **kwargs: object) -> postgresql.PgConn:
        try:
            return real_connect(*args, **kwargs)  # type: ignore[arg-type]
        except postgresql.InUse:
            refused.append("in use")
            holder.close()  # the old daemon's session ends after the first refusal
            raise

    monkeypatch.setattr(postgresql, "connect", connect)
    async with open_pg_store(pg_dsn) as store:
        job = mkjob()
        await store.commit([out.InsertJob(job)])
        assert await store.get_job(job.id) == job
    assert refused  # it did find the lock held, and waited


def test_no_postgresql_installed_is_a_loud_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PostgreSQL tests fail (never skip) where the server is not installed."""
    from tests import pg_server

    monkeypatch.setattr(pg_server.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pg_server.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="PostgreSQL is not installed"):
        pg_server.PgServer()


async def test_a_role_that_cannot_create_tables_is_refused_untouched(
    pg_server: PgServer, pg_dsn: str
) -> None:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'guest'").fetchone() is None:
            admin.execute("CREATE ROLE guest LOGIN")
    guest = pg_dsn.replace("postgres@", "guest@")
    with pytest.raises(DatabaseDamaged, match="cannot be migrated"):
        async with open_pg_store(guest):
            pass
    with psycopg.connect(pg_dsn) as conn:
        assert postgresql_tables(conn) == []


def postgresql_tables(conn: psycopg.Connection[object]) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    ).fetchall()
    return [str(r[0]) for r in rows]
