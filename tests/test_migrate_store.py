"""``printfarmd migrate-store`` (issue 18): a SQLite farm copied into an empty PostgreSQL
database, verified by per-table counts and checksums; refused when the file is in use
or the target is not empty. The 100,000-job round trip is ``bench/bench_migrate.py``."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import msgspec
import psycopg
import pytest
import trio

from printfarmd.core.farm import outputs as out
from printfarmd.core.farm.outputs import NewEvent
from printfarmd.models import Job, JobState
from printfarmd.store import history as h
from printfarmd.store import postgresql, transfer
from printfarmd.store.postgresql import open_pg_store
from printfarmd.store.store import Store, open_store
from tests.conftest import REPO
from tests.farm_builder import T0, build_farm

BULK = 3000


async def _everything(store: Store) -> dict[str, object]:
    """What the farm reads back through the domain operations."""
    jobs, total = await store.list_jobs(limit=100_000)
    attempts, _ = await h.HistoryStore(store).page(
        h.Filter(include_deleted=True), limit=1000, offset=0, descending=False
    )
    deliveries, _ = await store.list_deliveries()
    return {
        "jobs": jobs,
        "total": total,
        "events": await store.events_since(0, limit=100_000),
        "settings": await store.settings(),
        "printers": await store.printer_memory(),
        "idempotency": await store.find_idempotency_key("order-1"),
        "attempts": attempts,
        "deliveries": deliveries,
        "by_state": await store.count_jobs_by_state(),
    }


def _read(path: Path | None, dsn: str = "") -> dict[str, object]:
    async def main() -> dict[str, object]:
        if path is not None:
            async with open_store(path) as store:
                return await _everything(store)
        async with open_pg_store(dsn) as store:
            return await _everything(store)

    return trio.run(main)


def test_round_trip_copies_every_table_and_verifies_it(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "printfarmd.db"
    build_farm(source, bulk=BULK)
    before = _read(source)
    notes: list[str] = []
    report = transfer.copy_farm(source, pg_dsn, notes.append)
    assert report.ok, report
    counts = {t.table: t.target_rows for t in report.tables}
    assert counts["jobs"] == BULK + 6
    assert counts["events"] == 2 * BULK + 6 + 8
    assert counts["history"] == 4 and counts["notifications"] == 3
    assert counts["spools"] == counts["spool_bindings"] == counts["maintenance_log"] == 1
    assert counts["attempt_usage"] == 4 and counts["history_marks"] == 2
    assert all(t.target_rows > 0 for t in report.tables), report
    # The farm reads back the same through every domain read, on PostgreSQL.
    after = _read(None, pg_dsn)
    assert after == before

    async def goes_on() -> None:
        async with open_pg_store(pg_dsn) as store:
            job = Job(id="N" * 16, filename="new.gcode", state=JobState.QUEUED, created_at=T0)
            (ev,) = await store.commit(
                [out.InsertJob(job), out.AppendEvent(NewEvent("job.created", T0, job_id=job.id))]
            )
            # The event log goes on after the copied events (the sequence was moved on).
            assert ev.seq == max(e.seq for e in before["events"]) + 1  # type: ignore[attr-defined]
            # The history trigger is on again: a print opens an attempt.
            printing = msgspec.structs.replace(job, state=JobState.PRINTING, printer_id="p9")
            await store.commit(
                [
                    out.UpdateJob(printing, JobState.QUEUED),
                    out.AppendEvent(
                        NewEvent(
                            "job.transition",
                            T0 + 1,
                            job_id=job.id,
                            printer_id="p9",
                            from_state="queued",
                            to_state="printing",
                        )
                    ),
                ]
            )
            found = await h.HistoryStore(store).by_seq(ev.seq + 1)
            assert [(a.job_id, a.status) for a in found] == [(job.id, "in_progress")]

    trio.run(goes_on)


def test_a_changed_row_is_a_mismatch(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "printfarmd.db"
    build_farm(source)
    assert transfer.copy_farm(source, pg_dsn).ok
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE settings SET value = 'true' WHERE key = 'dispatch_paused'")
    with transfer._locked_source(source) as src:
        pg = postgresql.connect(pg_dsn)
        try:
            report = transfer.verify(src, pg, transfer._source_tables(src))
        finally:
            pg.close()
    assert not report.ok
    assert [t.table for t in report.tables if not t.ok] == ["settings"]
    (settings,) = [t for t in report.tables if t.table == "settings"]
    assert settings.source_rows == settings.target_rows  # same count, other content


def test_a_non_empty_target_is_refused(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "printfarmd.db"
    build_farm(source)
    assert transfer.copy_farm(source, pg_dsn).ok
    with pytest.raises(transfer.TransferError, match="already holds a farm"):
        transfer.copy_farm(source, pg_dsn)


def test_a_target_with_other_tables_is_refused(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "printfarmd.db"
    build_farm(source)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(transfer.TransferError, match=r"not empty .*invoices"):
        transfer.copy_farm(source, pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,)


def test_a_file_in_use_by_a_running_store_is_refused(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "printfarmd.db"
    build_farm(source)

    async def main() -> None:
        async with open_store(source) as store:
            await store.get_job("x" * 16)  # a daemon's store, open and reading
            with pytest.raises(transfer.TransferError, match="in use"):
                await trio.to_thread.run_sync(transfer.copy_farm, source, pg_dsn)

    trio.run(main)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,)


def test_an_older_file_is_refused_with_what_to_do(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "printfarmd.db"
    build_farm(source)
    conn = sqlite3.connect(source)
    conn.execute("PRAGMA user_version = 5")
    conn.close()
    with pytest.raises(transfer.TransferError, match="start this printfarmd on it once"):
        transfer.copy_farm(source, pg_dsn)


def test_the_cli_prints_the_table_and_refuses_a_second_copy(tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "printfarmd.db"
    build_farm(source, bulk=50)
    cmd = [sys.executable, "-m", "printfarmd", "migrate-store", "--from", str(source)]
    first = subprocess.run(
        [*cmd, "--to", pg_dsn], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert first.returncode == 0, first.stdout + first.stderr
    for table in ("jobs", "events", "history", "notifications", "spools"):
        assert table in first.stdout
    assert "MISMATCH" not in first.stdout and "copied and verified" in first.stdout
    second = subprocess.run(
        [*cmd, "--to", pg_dsn], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert second.returncode == 1
    assert "already holds a farm" in second.stderr and "Traceback" not in second.stderr


@pytest.mark.slow
def test_round_trip_on_a_100000_job_farm(tmp_path: Path, pg_dsn: str) -> None:
    """The acceptance point: 100,000 jobs (and their 200,000 events) copied and verified
    (``bench/bench_migrate.py`` prints the times)."""
    source = tmp_path / "printfarmd.db"
    build_farm(source, bulk=100_000)
    report = transfer.copy_farm(source, pg_dsn)
    assert report.ok
    counts = {t.table: (t.source_rows, t.target_rows) for t in report.tables}
    assert counts["jobs"] == (100_006, 100_006)
    assert counts["events"] == (200_014, 200_014)
