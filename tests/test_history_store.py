"""The print history in the store (``store/history.py``): the trigger on the event log
opens and closes one attempt per print, the migration backfills attempts from events
recorded before it, totals survive deletes and reset on their own, and entries survive a
reopen of the database."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest

from printfarmd.core import retry as retry_rules
from printfarmd.core import watchdog as watchdog_rules
from printfarmd.core.farm import outputs as out
from printfarmd.core.farm.outputs import NewEvent
from printfarmd.core.jobs import transition
from printfarmd.models import Job, JobEvent, JobState, new_job_id
from printfarmd.store import history as h
from printfarmd.store.database import _split_sql, open_database
from printfarmd.store.dialect import Conn, step_text
from printfarmd.store.migrations import MIGRATIONS
from printfarmd.store.store import Store
from tests.conftest import StoreTarget

T0 = 1_700_000_000.0
POLICY = retry_rules.RetryPolicy(max_retries=3, backoff=(60.0,))


def ev(old: Job | None, new: Job, reason: str | None = None) -> NewEvent:
    """The event the farm records for a transition (``core.farm.common.transition_event``)."""
    return NewEvent(
        type="job.transition",
        at=new.updated_at,
        job_id=new.id,
        printer_id=new.printer_id or (old.printer_id if old else None),
        from_state=old.state.value if old else None,
        to_state=new.state.value,
        reason=reason,
        data={"event": "x", "retry_count": new.retry_count},
    )


def _write(old: Job | None, new: Job) -> out.Record:
    return out.InsertJob(new) if old is None else out.UpdateJob(new, old.state)


@attrs.define
class Farm:
    """Drives jobs through the state machine and commits each step as the owner does
    (the job row and its transition events in one ``Store.commit``)."""

    store: Store
    now: float = T0

    async def step(self, old: Job | None, new: Job, reason: str | None = None) -> Job:
        await self.store.commit([_write(old, new), out.AppendEvent(ev(old, new, reason))])
        return new

    async def steps(self, pairs: list[tuple[Job | None, Job, str | None]]) -> Job:
        records: list[out.Record] = [_write(pairs[0][0], pairs[-1][1])]
        records += [out.AppendEvent(ev(o, n, r)) for o, n, r in pairs]
        await self.store.commit(records)
        return pairs[-1][1]

    def tick(self, seconds: float = 10.0) -> float:
        self.now += seconds
        return self.now

    async def queued(self, filename: str = "a.gcode", sku: str | None = None) -> Job:
        job = Job(
            id=new_job_id(),
            filename=filename,
            sku=sku,
            created_at=self.now,
            updated_at=self.now,
        )
        await self.step(None, job)
        for e in (JobEvent.VALIDATE, JobEvent.SLICE, JobEvent.ENQUEUE):
            job = await self.step(job, transition(job, e, self.now))
        return job

    async def start(self, job: Job, printer: str) -> Job:
        return await self.step(
            job, transition(job, JobEvent.START, self.tick(), printer_id=printer)
        )

    async def finish(self, job: Job) -> Job:
        """Printed, then its plate cleared (a printer holds one active job at a time)."""
        done = transition(job, JobEvent.FINISH, self.tick(600))
        return await self.steps(
            [(job, done, None), (done, transition(done, JobEvent.CLEAR, self.now), None)]
        )

    async def fail(self, job: Job, reason: str, progress: float = 40.0) -> Job:
        job = msgspec.structs.replace(job, progress=progress)
        new = msgspec.structs.replace(
            retry_rules.fail(job, reason, job.printer_id, POLICY, self.tick(300)),
            resume_progress=0.0,
        )
        return await self.step(job, new, new.last_error)

    async def retry(self, job: Job) -> Job:
        return await self.step(job, retry_rules.retry(job, self.tick()), "retry")


@pytest.fixture
async def farm(store_target: StoreTarget) -> AsyncIterator[Farm]:
    """A history on each engine (SQLite, PostgreSQL: issue 18)."""
    async with store_target.open() as store:
        yield Farm(store)


async def attempts(store: Store, **kw: Any) -> list[h.Attempt]:
    kw.setdefault("include_deleted", True)
    found, _ = await h.HistoryStore(store).page(
        h.Filter(**kw), limit=1000, offset=0, descending=False
    )
    return found


async def test_one_attempt_per_print_with_the_right_status(farm: Farm) -> None:
    done = await farm.finish(await farm.start(await farm.queued("a.gcode", "SKU-1"), "p1"))
    # a failure, retried on another printer, then completed there
    b = await farm.start(await farm.queued("b.gcode"), "p1")
    b = await farm.retry(await farm.fail(b, "printer p1 reports an error: clog", 37.5))
    b = await farm.finish(await farm.start(b, "p2"))
    # a cancel mid-print, and one still printing
    c = await farm.start(await farm.queued("c.gcode"), "p3")
    c = await farm.step(
        c, transition(msgspec.structs.replace(c, progress=12.0), JobEvent.CANCEL, farm.tick())
    )
    d = await farm.start(await farm.queued("d.gcode"), "p1")
    rows = await attempts(farm.store)
    assert [(a.filename, a.printer_id, a.status) for a in rows] == [
        ("a.gcode", "p1", "completed"),
        ("b.gcode", "p1", "error"),
        ("b.gcode", "p2", "completed"),
        ("c.gcode", "p3", "cancelled"),
        ("d.gcode", "p1", "in_progress"),
    ]
    assert [a.job_id for a in rows] == [done.id, b.id, b.id, c.id, d.id]
    assert rows[0].sku == "SKU-1" and rows[0].progress == 100.0
    assert rows[1].progress == 37.5 and rows[1].reason == "printer p1 reports an error: clog"
    assert rows[3].progress == 12.0
    assert rows[0].end_time is not None and rows[0].duration(0) == 600.0
    assert rows[4].end_time is None
    assert [a.uid for a in rows] == ["000001", "000002", "000003", "000004", "000005"]


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("printer p1 went idle without finishing the job", "error"),
        ("emergency stop by mainsail (127.0.0.1)", "error"),
        ("printer p1 no longer has the job after a restart (reports idle)", "interrupted"),
        ("printer was removed from the configuration", "interrupted"),
    ],
)
async def test_failure_reasons_that_mean_interrupted(farm: Farm, reason: str, status: str) -> None:
    job = await farm.fail(await farm.start(await farm.queued(), "p1"), reason)
    (a,) = await attempts(farm.store)
    assert a.status == status and a.reason == job.last_error


async def test_a_watchdog_requeue_is_interrupted_at_its_last_progress(farm: Farm) -> None:
    job = msgspec.structs.replace(await farm.start(await farm.queued(), "p1"), progress=55.0)
    steps = watchdog_rules.requeue_or_fail(job, 900.0, POLICY, farm.tick(900))
    pairs: list[tuple[Job | None, Job, str | None]] = []
    prev = job
    for _, nxt in steps:
        pairs.append((prev, nxt, nxt.last_error))
        prev = nxt
    requeued = await farm.steps(pairs)
    assert requeued.state is JobState.QUEUED
    (a,) = await attempts(farm.store)
    assert a.status == "interrupted" and a.progress == 55.0
    assert a.reason is not None and a.reason.startswith("watchdog: no progress")


async def test_totals_survive_deletes_and_reset_independently(farm: Farm) -> None:
    hs = h.HistoryStore(farm.store)
    a = await farm.finish(await farm.start(await farm.queued(), "p1"))
    await farm.fail(await farm.start(await farm.queued(), "p2"), "boom")
    await farm.start(await farm.queued(), "p3")  # open: not counted yet
    rows = await attempts(farm.store)
    await h.HistoryStore(farm.store).record_metadata("a.gcode", {"x": 1}, 2000.0, 6.0)
    totals = await hs.totals()
    assert totals["total_jobs"] == 2
    assert totals["total_time"] == 900.0 and totals["longest_job"] == 600.0
    assert totals["total_filament_used"] == 2000.0 + 2000.0 * 0.4
    deleted, event = await hs.delete([rows[0].id, 999], farm.now)
    assert deleted == [rows[0].id] and event is not None and event.type == "history.deleted"
    assert event.data == {"ids": [rows[0].uid]}
    assert (await hs.totals())["total_jobs"] == 2  # a deleted entry still counts
    assert await hs.get(rows[0].id) is None
    visible, total = await hs.page(h.Filter(), limit=10, offset=0, descending=True)
    assert total == 2 and [x.id for x in visible] == [rows[2].id, rows[1].id]
    assert (await hs.delete([rows[0].id], farm.now)) == ([], None)  # already gone
    last, reset = await hs.reset_totals(farm.now)
    assert last["total_jobs"] == 2 and reset.type == "history.totals_reset"
    assert (await hs.totals())["total_jobs"] == 0
    # the open attempt closes after the reset: it counts in the new totals
    third = rows[2]
    job = msgspec.structs.replace(a, id=third.job_id, state=JobState.PRINTING, printer_id="p3")
    await farm.finish(job)
    assert (await hs.totals())["total_jobs"] == 1
    # delete all
    gone, _ = await hs.delete(None, farm.now)
    assert sorted(gone) == [rows[1].id, rows[2].id]
    assert (await hs.page(h.Filter(), limit=10, offset=0, descending=True))[1] == 0


async def test_filters_and_pages(farm: Farm) -> None:
    hs = h.HistoryStore(farm.store)
    for i in range(5):
        job = await farm.start(await farm.queued(f"f{i % 2}.gcode", f"S{i % 3}"), f"p{i % 2}")
        await farm.finish(job)
    page, total = await hs.page(h.Filter(printer_id="p0"), limit=2, offset=0, descending=True)
    assert total == 3 and len(page) == 2 and all(a.printer_id == "p0" for a in page)
    assert page[0].id > page[1].id
    assert (await hs.page(h.Filter(filename="f1.gcode"), limit=9, offset=0, descending=True))[
        1
    ] == 2
    assert (await hs.page(h.Filter(sku="S2"), limit=9, offset=0, descending=True))[1] == 1
    everything = await attempts(farm.store)
    middle = everything[2]
    since = await hs.page(h.Filter(since=middle.start_time), limit=9, offset=0, descending=False)
    assert [a.id for a in since[0]] == [a.id for a in everything[3:]]
    assert middle.end_time is not None
    before = await hs.page(h.Filter(before=middle.end_time), limit=9, offset=0, descending=False)
    assert [a.id for a in before[0]] == [a.id for a in everything[:2]]
    assert (await hs.page(h.Filter(statuses=("error",)), limit=9, offset=0, descending=True))[
        1
    ] == 0
    last = await hs.last_attempts(["f0.gcode", "f1.gcode", "nope.gcode"])
    assert set(last) == {"f0.gcode", "f1.gcode"}
    assert last["f0.gcode"].id == everything[4].id


async def test_entries_survive_a_reopen_and_metadata_is_recorded_once(
    store_target: StoreTarget,
) -> None:
    async with store_target.open() as store:
        farm = Farm(store)
        await farm.finish(await farm.start(await farm.queued("m.gcode"), "p1"))
        hs = h.HistoryStore(store)
        assert await hs.without_metadata() == ["m.gcode"]
        assert await hs.record_metadata("m.gcode", {"estimated_time": 60}, 100.0, 1.0) == 1
        assert await hs.record_metadata("m.gcode", {"other": 1}, 5.0, 5.0) == 0
    async with store_target.open() as store:
        (a,) = await attempts(store)
        assert a.status == "completed" and a.metadata == {"estimated_time": 60}
        assert a.filament_used == 100.0 and a.filament_grams == 1.0
        assert await h.HistoryStore(store).without_metadata() == []


def _v3_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:3]:
        for statement in _split_sql(step_text(step, "sqlite")):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    return conn


def _v3_pg_database(dsn: str) -> Any:
    """The same schema version 3 on PostgreSQL (its steps' PostgreSQL texts)."""
    from printfarmd.store import postgresql

    conn = postgresql.connect(dsn)
    for step in MIGRATIONS[:3]:
        conn.script(step_text(step, "postgresql"))
    conn.script(f"CREATE TABLE {postgresql.VERSION_TABLE} (version BIGINT NOT NULL)")
    conn.execute(f"INSERT INTO {postgresql.VERSION_TABLE} (version) VALUES (3)")
    return conn


def _row(conn: Conn, job_id: str, state: str, **kw: Any) -> None:
    conn.execute(
        "INSERT INTO jobs (id, filename, state, priority, position, copies, "
        "copy_index, group_id, name, required_tags, retry_count, failed_printers, progress, "
        "created_at, updated_at, source, printer_id) "
        "VALUES (?, ?, ?, 0, 1, 1, 1, ?, 'n', '[]', 0, '[]', ?, ?, ?, 'api', ?)",
        (
            job_id,
            kw.get("filename", "old.gcode"),
            state,
            job_id,
            kw.get("progress", 0.0),
            T0,
            kw.get("updated", T0),
            kw.get("printer"),
        ),
    )


def _event(conn: Conn, job_id: str, at: float, frm: str | None, to: str, **kw: Any) -> None:
    conn.execute(
        "INSERT INTO events (type, at, job_id, printer_id, from_state, to_state, reason) "
        "VALUES ('job.transition', ?, ?, ?, ?, ?, ?)",
        (at, job_id, kw.get("printer"), frm, to, kw.get("reason")),
    )


async def test_the_migration_backfills_attempts_from_recorded_events(
    store_target: StoreTarget,
) -> None:
    path = store_target.path
    pg = store_target.backend == "postgresql"
    conn: Any = _v3_pg_database(store_target.dsn) if pg else _v3_database(path)
    a, b, c = "A" * 16, "B" * 16, "C" * 16
    _row(conn, a, "ready")
    _row(conn, b, "printing", printer="p2")
    _row(conn, c, "cancelled")
    for jid in (a, b, c):
        _event(conn, jid, T0, None, "created")
        _event(conn, jid, T0, "sliced", "queued")
    _event(conn, a, T0 + 10, "queued", "printing", printer="p1")
    _event(conn, a, T0 + 20, "printing", "failed", printer="p1", reason="clog")
    _event(conn, a, T0 + 30, "failed", "queued", reason="retry")
    _event(conn, a, T0 + 40, "queued", "printing", printer="p2")
    _event(conn, a, T0 + 50, "printing", "post_process", printer="p2")
    _event(conn, a, T0 + 60, "post_process", "ready", printer="p2")
    _event(conn, b, T0 + 10, "queued", "printing", printer="p1")
    _event(
        conn,
        b,
        T0 + 20,
        "printing",
        "failed",
        printer="p1",
        reason="watchdog: no progress for 900 s",
    )
    _event(conn, b, T0 + 20, "failed", "queued", reason="watchdog")
    _event(conn, b, T0 + 30, "queued", "printing", printer="p2")
    _event(conn, c, T0 + 10, "queued", "printing", printer="p3")
    _event(conn, c, T0 + 15, "printing", "cancelled", printer="p3")
    if not pg:
        conn.commit()
    conn.close()
    if pg:
        from printfarmd.store import postgresql

        writer, applied = postgresql._open(store_target.dsn, "FULL")
    else:
        writer, applied = open_database(path)
    writer.close()
    assert applied == len(MIGRATIONS) - 3
    async with store_target.open() as store:
        rows = await attempts(store)
    assert [(r.job_id, r.printer_id, r.status, r.start_time, r.end_time) for r in rows] == [
        (a, "p1", "error", T0 + 10, T0 + 20),
        (a, "p2", "completed", T0 + 40, T0 + 50),
        (b, "p1", "interrupted", T0 + 10, T0 + 20),
        (b, "p2", "in_progress", T0 + 30, None),
        (c, "p3", "cancelled", T0 + 10, T0 + 15),
    ]  # in the order the attempts began in the event log
    assert rows[0].reason == "clog" and rows[1].progress == 100.0


async def test_an_open_attempt_whose_job_left_printing_is_swept_as_interrupted(
    store_target: StoreTarget,
) -> None:
    async with store_target.open() as store:
        farm = Farm(store)
        job = await farm.start(await farm.queued(), "p1")
        # the job row moves on without its transition event (a hand-edited database)
        await store.run_write(
            lambda c: c.execute(
                "UPDATE jobs SET state = 'queued', updated_at = ? WHERE id = ?",
                (T0 + 999, job.id),
            )
        )
        hs = h.HistoryStore(store)
        assert await hs.sweep_open(T0 + 5000) == [1]
        (a,) = await attempts(store)
        assert a.status == "interrupted" and a.end_time == T0 + 999
        assert await hs.sweep_open(T0 + 5000) == []


def test_uids() -> None:
    assert h.parse_uid("00000A") == 10
    assert h.parse_uid("ff") == 255
    for bad in ("", "xyz", "-1", "1" * 16, "0x10"):
        assert h.parse_uid(bad) is None
