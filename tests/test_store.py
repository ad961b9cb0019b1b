"""The SQLite store (``store/``): round trips, conditional domain writes, the event log,
group commit, per-unit atomicity, idempotency keys, retention, durability settings,
refusing damaged files, backup, and the mapping of SQLite failures to domain errors."""

from __future__ import annotations

import itertools
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from printfarmd.core.farm import outputs as out
from printfarmd.core.farm.outputs import NewEvent
from printfarmd.core.farm.startup import Remembered as PrinterMemory
from printfarmd.errors import DatabaseDamaged, FarmError, StaleWrite, StorageBusy, StorageFull
from printfarmd.models import Event, Job, JobState, new_job_id
from printfarmd.store import database
from printfarmd.store.database import map_sqlite_error, open_database
from printfarmd.store.jobs import JOB_SORTS
from printfarmd.store.migrations import MIGRATIONS
from printfarmd.store.store import Store, open_store
from tests.conftest import StoreTarget

T0 = 1_700_000_000.0


def mkjob(**fields: Any) -> Job:
    fields.setdefault("id", new_job_id())
    fields.setdefault("filename", "a.gcode")
    fields.setdefault("created_at", T0)
    fields.setdefault("updated_at", fields["created_at"])
    return Job(**fields)


def created_event(job: Job, at: float | None = None, **kw: Any) -> NewEvent:
    return NewEvent(
        type=kw.pop("type", "job.created"),
        at=job.created_at if at is None else at,
        job_id=job.id,
        to_state=job.state.value,
        **kw,
    )


async def save(
    store: Store,
    jobs: Any = (),
    events: Any = (),
    *,
    printers: Any = (),
    idempotency: tuple[str, str, Any, float] | None = None,
    now: float = 0.0,
) -> list[Event]:
    """Write ``jobs`` (inserted if new, else updated from the state this helper last
    wrote), printer memories, an idempotency key and ``events`` in ONE commit, as domain
    records. No checkpoint before the unit is queued (group-commit tests rely on it)."""
    written = _WRITTEN.setdefault(id(store), {})
    records: list[out.Record] = []
    jobs = list(jobs)
    for job in jobs:
        state = written.get(job.id)
        records.append(out.InsertJob(job) if state is None else out.UpdateJob(job, state))
    for pid, mem in printers:
        records.append(out.PutPrinter(pid, mem.plate_clear, mem.maintenance, now))
    if idempotency is not None:
        key, digest, ids, at = idempotency
        records.append(out.PutIdempotency(key, digest, tuple(ids), at))
    records.extend(out.AppendEvent(ev) for ev in events)
    appended = await store.commit(records)
    written.update((j.id, j.state) for j in jobs)
    return appended


#: Per store (by id): the state each job was last written in by ``save``.
_WRITTEN: dict[int, dict[str, JobState]] = {}


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[Store]:
    """The store on each engine (SQLite, PostgreSQL)."""
    async with store_target.open() as s:
        yield s


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """The SQLite store, for what only a file has (pragmas, locks, backups)."""
    async with open_store(tmp_path / "t.db") as s:
        yield s


def db_user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def db_job_count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()


def outside_job_count(store: Store) -> int:
    """The jobs a connection of another client sees (SQLite file or PostgreSQL)."""
    if store.backend == "sqlite":
        return db_job_count(store.path)
    import psycopg

    from printfarmd.store.postgresql import PgStore

    assert isinstance(store, PgStore)
    with psycopg.connect(store.dsn) as conn:
        row = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
        assert row is not None
        return int(row[0])


# ---------------------------------------------------------------- round trips


async def test_fresh_store_has_schema(store: Store) -> None:
    tables = set(await store.tables())
    assert {"jobs", "events", "idempotency_keys", "settings", "printers"} <= tables
    assert await store.last_event_seq() == 0
    assert await store.max_position() == 0
    assert await store.get_job("0000000000000000") is None
    assert await store.list_jobs() == ([], 0)


async def test_job_round_trip_every_field(store: Store) -> None:
    job = Job(
        id=new_job_id(),
        filename="benchy.gcode",
        state=JobState.PRINTING,
        priority=7,
        position=42,
        front=1,
        copies=3,
        copy_index=2,
        group_id="G1",
        name="Benchy",
        material="PETG",
        nozzle_diameter=0.6,
        required_tags=("enclosure", "direct-drive"),
        min_bed=(180.0, 180.0, 200.5),
        sku="SKU-9",
        estimated_time=3600.5,
        printer_id="p1",
        retry_count=2,
        failed_printers=("p2", "p3"),
        progress=12.5,
        eta=T0 + 4000,
        retry_at=None,
        created_at=T0,
        updated_at=T0 + 10,
        queued_at=T0 + 1,
        started_at=T0 + 2,
        finished_at=None,
        last_error="earlier failure",
        tracking="TRACK1",
        source="moonraker",
    )
    plain = mkjob()  # all defaults: empty tuples, None min_bed
    events = await save(store, [job, plain], [created_event(job), created_event(plain)])
    assert [e.job_id for e in events] == [job.id, plain.id]
    assert await store.get_job(job.id) == job
    assert await store.get_job(plain.id) == plain
    assert await store.max_position() == 42

    # Saving again replaces the row (upsert), not a second row.
    moved = msgspec.structs.replace(
        job, state=JobState.POST_PROCESS, progress=100.0, updated_at=T0 + 20
    )
    await save(store, [moved])
    assert await store.get_job(job.id) == moved
    assert (await store.list_jobs())[1] == 2


async def test_load_live_jobs_is_what_the_farm_keeps_in_memory(store: Store) -> None:
    jobs = {state: mkjob(state=state) for state in JobState}
    retrying = mkjob(state=JobState.FAILED, retry_at=T0 + 60)
    await save(store, [*jobs.values(), retrying])
    live = await store.load_live_jobs()
    # Written out here, not taken from the code: what can still change by itself.
    expected = {
        JobState.CREATED,
        JobState.VALIDATED,
        JobState.SLICED,
        JobState.QUEUED,
        JobState.PRINTING,
        JobState.POST_PROCESS,
    }
    assert {j.id for j in live} == {jobs[s].id for s in expected} | {retrying.id}
    for j in live:
        assert j == (retrying if j.id == retrying.id else jobs[j.state])
    counts = await store.count_jobs_by_state()
    assert counts == {s.value: 2 if s is JobState.FAILED else 1 for s in JobState}


def _listing_dataset() -> list[Job]:
    rng = random.Random(1234)
    states = [JobState.QUEUED, JobState.READY, JobState.FAILED, JobState.SHIPPED]
    jobs = []
    for i in range(40):
        jobs.append(
            mkjob(
                # Many ties in created_at so the id tie-breaker matters.
                created_at=T0 + rng.randrange(10),
                updated_at=T0 + rng.randrange(1000),
                state=rng.choice(states),
                printer_id=rng.choice([None, "p1", "p2", "p3"]),
                sku=rng.choice([None, "A", "B"]),
                material=rng.choice(["PLA", "PETG"]),
                group_id=rng.choice(["g1", "g2", ""]),
                eta=rng.choice([None, T0 + 50, T0 + 7, T0 + 900]),
                priority=rng.randrange(-2, 3),
                name=rng.choice(["alpha", "beta", "gamma", ""]),
                filename=f"{rng.choice(['x', 'y', 'z'])}{i % 3}.gcode",
                position=i,
            )
        )
    return jobs


def _expected_order(jobs: list[Job], column: str, descending: bool) -> list[str]:
    """The documented order: NULLs last, then the column, ties by created_at then id."""
    base = sorted(jobs, key=lambda j: (j.created_at, j.id))
    present = [j for j in base if getattr(j, column) is not None]
    missing = [j for j in base if getattr(j, column) is None]
    present.sort(key=lambda j: getattr(j, column), reverse=descending)  # stable
    return [j.id for j in present + missing]


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("sort", sorted(JOB_SORTS))
async def test_list_jobs_sorts(store: Store, sort: str, descending: bool) -> None:
    jobs = _listing_dataset()
    await save(store, jobs)
    column = JOB_SORTS[sort]
    page, total = await store.list_jobs(sort=sort, descending=descending, limit=1000)
    assert total == len(jobs)
    assert [j.id for j in page] == _expected_order(jobs, column, descending)

    # Paging: limit/offset slice the same order; the total ignores the page.
    ids: list[str] = []
    for offset in range(0, len(jobs), 7):
        chunk, chunk_total = await store.list_jobs(
            sort=sort, descending=descending, limit=7, offset=offset
        )
        assert chunk_total == len(jobs)
        assert len(chunk) == min(7, len(jobs) - offset)
        ids.extend(j.id for j in chunk)
    assert ids == [j.id for j in page]


async def test_list_jobs_unknown_sort_is_refused(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.list_jobs(sort="id; DROP TABLE jobs")


async def test_list_jobs_filters(store: Store) -> None:
    jobs = _listing_dataset()
    await save(store, jobs)

    async def check(expected: list[Job], **filters: Any) -> None:
        page, total = await store.list_jobs(limit=1000, **filters)
        assert total == len(expected), filters
        assert {j.id for j in page} == {j.id for j in expected}, filters
        assert expected, f"dataset should exercise {filters}"
        # With a small limit the page shrinks but the total does not.
        small, small_total = await store.list_jobs(limit=1, offset=1, **filters)
        assert small_total == len(expected)
        assert len(small) == min(1, len(expected) - 1)

    await check([j for j in jobs if j.state is JobState.QUEUED], states=["queued"])
    await check(
        [j for j in jobs if j.state in (JobState.READY, JobState.SHIPPED)],
        states=["ready", "shipped"],
    )
    await check([j for j in jobs if j.printer_id == "p2"], printer_id="p2")
    await check([j for j in jobs if j.sku == "A"], sku="A")
    await check([j for j in jobs if j.material == "PETG"], material="PETG")
    await check([j for j in jobs if j.group_id == "g1"], group_id="g1")
    await check(
        [
            j
            for j in jobs
            if j.state is JobState.FAILED and j.material == "PLA" and j.printer_id == "p1"
        ],
        states=["failed"],
        material="PLA",
        printer_id="p1",
    )
    assert await store.list_jobs(printer_id="nope") == ([], 0)


# ---------------------------------------------------------------- the event log


async def test_event_seq_increasing_under_concurrency(store: Store) -> None:
    jobs = [mkjob(printer_id=f"p{i % 4}") for i in range(200)]
    submitted: list[int] = []
    results: dict[int, list[Event]] = {}

    async def one(i: int) -> None:
        job = jobs[i]
        evs = [
            created_event(job, printer_id=job.printer_id, data={"i": i}),
            NewEvent(
                type="job.validated" if i % 2 else "job.note",
                at=T0 + i,
                job_id=job.id,
                printer_id=job.printer_id,
                from_state="created",
                to_state="validated",
                reason=f"r{i}",
            ),
        ]
        submitted.append(i)  # save() hands its unit to the writer before its first checkpoint
        results[i] = await save(store, [job], evs)

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)

    assert len(results) == 200
    in_order = [seq for i in submitted for seq in (e.seq for e in results[i])]
    assert len(in_order) == 400
    # Strictly increasing in submission order: unique and FIFO across concurrent saves.
    assert all(a < b for a, b in itertools.pairwise(in_order))
    assert await store.last_event_seq() == in_order[-1]

    logged = await store.events_since(0, limit=10_000)
    assert [e.seq for e in logged] == sorted(in_order)
    by_seq = {e.seq: e for evs in results.values() for e in evs}
    for e in logged:
        assert e == by_seq[e.seq]  # the returned Event is exactly what is stored

    # ``after`` is exclusive.
    cut = in_order[149]
    tail = await store.events_since(cut, limit=10_000)
    assert [e.seq for e in tail] == in_order[150:]
    # limit keeps the first ones.
    assert [e.seq for e in await store.events_since(cut, limit=3)] == in_order[150:153]

    # Filter by job.
    j7 = jobs[7]
    assert [e.seq for e in await store.events_since(0, job_id=j7.id)] == [e.seq for e in results[7]]
    # Filter by printer.
    p2 = await store.events_since(0, printer_id="p2", limit=10_000)
    assert len(p2) == 100
    assert all(e.printer_id == "p2" for e in p2)
    assert [e.seq for e in p2] == sorted(e.seq for e in p2)
    # Filter by types.
    validated = await store.events_since(0, types=["job.validated"], limit=10_000)
    assert len(validated) == 100
    assert {e.type for e in validated} == {"job.validated"}
    both = await store.events_since(0, types=["job.validated", "job.note"], limit=10_000)
    assert len(both) == 200
    # A "job.validated" job submitted after the cut (trio starts tasks in any order).
    late = [i for i in submitted[75:] if i % 2][-1]
    combo = await store.events_since(
        cut, job_id=jobs[late].id, types=["job.validated"], limit=10_000
    )
    assert [(e.job_id, e.type, e.reason) for e in combo] == [
        (jobs[late].id, "job.validated", f"r{late}")
    ]


async def test_event_fields_round_trip(store: Store) -> None:
    job = mkjob()
    ev = NewEvent(
        type="job.failed",
        at=T0 + 1.25,
        job_id=job.id,
        printer_id="p9",
        from_state="printing",
        to_state="failed",
        reason="nozzle clog",
        data={"layer": 12, "nested": {"ok": [1, 2.5, None, "x"]}},
    )
    (stored,) = await save(store, [job], [ev])
    assert stored.seq >= 1
    (read,) = await store.events_since(stored.seq - 1)
    assert read == stored
    assert read == Event(
        seq=stored.seq,
        type="job.failed",
        at=T0 + 1.25,
        job_id=job.id,
        printer_id="p9",
        from_state="printing",
        to_state="failed",
        reason="nozzle clog",
        data={"layer": 12, "nested": {"ok": [1, 2.5, None, "x"]}},
    )
    # An event without a job (a printer event) is fine too.
    (pev,) = await save(store, [], [NewEvent(type="printer.offline", at=T0, printer_id="p9")])
    assert pev.seq == stored.seq + 1
    assert pev.job_id is None
    assert pev.data == {}


# ---------------------------------------------------------------- group commit


async def test_group_commit_batches_concurrent_saves(store: Store) -> None:
    jobs = [mkjob(position=i, name=f"job-{i}") for i in range(200)]

    async def one(job: Job) -> None:
        await save(store, [job], [created_event(job)])

    before = store.statistics()
    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(one, job)
    stats = store.statistics()

    commits = stats.commits - before.commits
    assert 1 <= commits < 200
    assert stats.max_batch > 1
    assert stats.units - before.units == 200
    assert stats.failed_units == 0

    for job in jobs:
        assert await store.get_job(job.id) == job
    _, total = await store.list_jobs()
    assert total == 200
    assert len(await store.events_since(0, limit=10_000)) == 200


async def test_acknowledged_only_after_commit(store: Store) -> None:
    """A save returns only after COMMIT: the after_commit hook has already run."""
    commits_seen: list[int] = []
    store.after_commit = lambda: commits_seen.append(store.statistics().commits)
    job = mkjob()
    await save(store, [job])
    assert commits_seen == [1]
    # A different connection sees it, so it is really committed, not just buffered.
    assert outside_job_count(store) == 1


# ---------------------------------------------------------------- atomicity per unit


async def test_one_failing_unit_does_not_undo_the_batch(store: Store) -> None:
    a = mkjob(state=JobState.PRINTING, printer_id="p1", name="a")
    b = mkjob(state=JobState.PRINTING, printer_id="p1", name="b")  # same printer: must fail
    others = [mkjob(state=JobState.PRINTING, printer_id=f"q{i}") for i in range(10)]
    outcome: dict[str, BaseException | list[Event]] = {}
    submitted: list[str] = []

    async def one(job: Job) -> None:
        submitted.append(job.id)  # the unit is queued before save's first checkpoint
        try:
            outcome[job.id] = await save(
                store, [job], [created_event(job, printer_id=job.printer_id)]
            )
        except FarmError as exc:
            outcome[job.id] = exc

    before = store.statistics()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, others[0])
        nursery.start_soon(one, a)
        for job in others[1:5]:
            nursery.start_soon(one, job)
        nursery.start_soon(one, b)
        for job in others[5:]:
            nursery.start_soon(one, job)
    after = store.statistics()

    # Everything went through in one transaction...
    assert after.commits - before.commits == 1
    assert after.max_batch == 12
    # ...and exactly one unit (the later of the two conflicting ones) failed.
    # (trio randomizes the order tasks start in, so look at who was queued first.)
    winner, loser = sorted([a, b], key=lambda j: submitted.index(j.id))
    failures = {jid: r for jid, r in outcome.items() if isinstance(r, BaseException)}
    assert list(failures) == [loser.id]
    assert isinstance(failures[loser.id], FarmError)
    assert not isinstance(failures[loser.id], StorageBusy | StorageFull)
    assert after.failed_units - before.failed_units == 1
    assert after.units - before.units == 11

    # The failed unit left nothing: no job row, no event row.
    assert await store.get_job(loser.id) is None
    assert await store.events_since(0, job_id=loser.id) == []
    # The others in the same transaction are all there with their events.
    for job in [winner, *others]:
        assert await store.get_job(job.id) == job
        evs = await store.events_since(0, job_id=job.id)
        assert [e.seq for e in evs] == [e.seq for e in outcome[job.id]]  # type: ignore[union-attr]
    assert len(await store.events_since(0, limit=1000)) == 11


async def test_active_index_only_constrains_active_states(store: Store) -> None:
    # Many finished jobs may name the same printer; only one may be active on it.
    done = [mkjob(state=JobState.READY, printer_id="p1") for _ in range(3)]
    await save(store, done)
    active = mkjob(state=JobState.POST_PROCESS, printer_id="p1")
    await save(store, [active])
    second = mkjob(state=JobState.PRINTING, printer_id="p1")
    with pytest.raises(FarmError):
        await save(store, [second], [created_event(second)])
    assert await store.get_job(second.id) is None
    assert await store.events_since(0) == []
    # Once the active job leaves the active states, the printer is free again.
    await save(store, [msgspec.structs.replace(active, state=JobState.READY)])
    await save(store, [second])
    assert (await store.get_job(second.id)) == second


# ---------------------------------------------------------------- idempotency keys


async def test_idempotency_key_round_trip_and_duplicate(store: Store) -> None:
    assert await store.find_idempotency_key("k1") is None
    first = [mkjob(), mkjob()]
    ids = [j.id for j in first]
    await save(
        store, first, [created_event(j) for j in first], idempotency=("k1", "hash-1", ids, T0)
    )
    assert await store.find_idempotency_key("k1") == ("hash-1", ids)

    again = mkjob()
    with pytest.raises(FarmError):
        await save(
            store, [again], [created_event(again)], idempotency=("k1", "hash-2", [again.id], T0 + 1)
        )
    # The duplicate stored nothing at all and did not overwrite the key.
    assert await store.get_job(again.id) is None
    assert await store.events_since(0, job_id=again.id) == []
    assert await store.find_idempotency_key("k1") == ("hash-1", ids)
    _, total = await store.list_jobs()
    assert total == 2

    # A different key is independent.
    await save(store, [again], idempotency=("k2", "hash-2", [again.id], T0 + 2))
    assert await store.find_idempotency_key("k2") == ("hash-2", [again.id])


# ---------------------------------------------------------------- settings, printers, progress


async def test_settings_round_trip(store: Store) -> None:
    assert await store.settings() == {}
    assert await store.put_setting("dispatch_paused", True) == []
    evs = await store.put_setting(
        "limits", {"a": [1, 2], "b": None}, NewEvent(type="settings.changed", at=T0)
    )
    assert len(evs) == 1
    assert evs[0].type == "settings.changed"
    assert await store.settings() == {"dispatch_paused": True, "limits": {"a": [1, 2], "b": None}}
    await store.put_setting("dispatch_paused", False)  # overwrite, not a second row
    assert await store.settings() == {"dispatch_paused": False, "limits": {"a": [1, 2], "b": None}}
    assert [e.type for e in await store.events_since(0)] == ["settings.changed"]


async def test_printer_memory_round_trip(store: Store) -> None:
    assert await store.printer_memory() == {}
    await save(
        store,
        printers=[
            ("p1", PrinterMemory(plate_clear=False, maintenance=False)),
            ("p2", PrinterMemory(plate_clear=True, maintenance=True)),
        ],
        now=T0,
    )
    assert await store.printer_memory() == {
        "p1": PrinterMemory(False, False),
        "p2": PrinterMemory(True, True),
    }
    await save(store, printers=[("p1", PrinterMemory(plate_clear=True, maintenance=True))])
    assert await store.printer_memory() == {
        "p1": PrinterMemory(True, True),
        "p2": PrinterMemory(True, True),
    }


async def test_save_progress_touches_only_printing_jobs(store: Store) -> None:
    printing = mkjob(state=JobState.PRINTING, printer_id="p1", progress=10.0)
    finished = mkjob(state=JobState.POST_PROCESS, printer_id="p2", progress=100.0)
    queued = mkjob(state=JobState.QUEUED, progress=0.0)
    await save(store, [printing, finished, queued])
    await store.commit(
        [
            out.SaveProgress(printing.id, 55.5, T0 + 600, T0 + 30),
            out.SaveProgress(finished.id, 60.0, T0 + 700, T0 + 31),  # stale, racing a FINISH
            out.SaveProgress(queued.id, 5.0, None, T0 + 32),
            out.SaveProgress("FFFFFFFFFFFFFFFF", 1.0, None, T0),  # unknown job: ignored
        ]
    )
    assert await store.get_job(printing.id) == msgspec.structs.replace(
        printing, progress=55.5, eta=T0 + 600, updated_at=T0 + 30
    )
    assert await store.get_job(finished.id) == finished
    assert await store.get_job(queued.id) == queued
    assert await store.events_since(0) == []  # progress appends no event


# ---------------------------------------------------------------- durability settings


async def test_durability_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        other = sqlite3.connect(path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            other.close()
        # The store's own connections (private, but this is what the rule is about).
        for conn in (store.writer.conn, store._reader):
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000

    writer, applied = open_database(path)
    try:
        assert applied == 0
        assert writer.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        writer.close()

    normal, applied = open_database(tmp_path / "n.db", "NORMAL")
    try:
        assert applied == len(MIGRATIONS)
        assert normal.execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        normal.close()


async def test_foreign_keys_enforced(store: Store) -> None:
    # An event naming a job that does not exist is refused (foreign_keys=ON).
    with pytest.raises(FarmError):
        await save(store, [], [NewEvent(type="x", at=T0, job_id="0000000000000000")])
    assert await store.events_since(0) == []


# ---------------------------------------------------------------- damaged files


async def _make_db_with_jobs(path: Path, n: int) -> list[Job]:
    jobs = [mkjob(name=f"job {i} " + "x" * 100, position=i) for i in range(n)]
    async with open_store(path) as store:
        await save(store, jobs, [created_event(j) for j in jobs])
    return jobs


def _overwrite_middle(path: Path) -> bytes:
    """Write random bytes over the second 4 KiB page of a closed database; return the file."""
    assert path.stat().st_size > 8 * 4096  # several pages: 4096..8192 is in the middle
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # all data is in the main file
    data = bytearray(path.read_bytes())
    data[4096:8192] = random.Random(42).randbytes(4096)
    path.write_bytes(bytes(data))
    return path.read_bytes()


async def test_damaged_pages_refused_and_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    await _make_db_with_jobs(path, 300)
    damaged = _overwrite_middle(path)

    with pytest.raises(DatabaseDamaged):
        async with open_store(path):
            pytest.fail("opened a damaged database")
    assert path.read_bytes() == damaged


async def test_not_a_database_refused_and_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    garbage = b"hello" * 1000
    path.write_bytes(garbage)
    with pytest.raises(DatabaseDamaged):
        async with open_store(path):
            pytest.fail("opened a file that is not a database")
    assert path.read_bytes() == garbage


async def test_newer_schema_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    await _make_db_with_jobs(path, 3)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()

    with pytest.raises(DatabaseDamaged, match="schema version"):
        async with open_store(path):
            pytest.fail("opened a database from the future")
    assert db_user_version(path) == len(MIGRATIONS) + 1
    assert db_job_count(path) == 3


def test_a_new_file_gets_its_whole_schema_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from printfarmd.store import database

    broken = (*MIGRATIONS, "CREATE TABLE later_step (x INTEGER);\nSELECT * FROM no_such_table;\n")
    monkeypatch.setattr(database, "MIGRATIONS", broken)
    fresh = tmp_path / "fresh.db"
    with pytest.raises(DatabaseDamaged, match="no such table: no_such_table"):
        database.open_database(fresh)
    # The last step failed: none of the earlier ones is left either (one transaction).
    conn = sqlite3.connect(fresh)
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert (conn.execute("PRAGMA user_version").fetchone()[0], tables) == (0, [])
    conn.close()

    # An existing file is migrated step by step: it keeps every step that succeeded.
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.executescript(str(MIGRATIONS[0]))
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseDamaged, match="no such table: no_such_table"):
        database.open_database(old)
    assert db_user_version(old) == len(MIGRATIONS)
    conn = sqlite3.connect(old)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "jobs" in tables and "later_step" not in tables
    conn.close()


# ---------------------------------------------------------------- reopen, backup


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    jobs = [mkjob(position=i, state=JobState.QUEUED) for i in range(20)]
    async with open_store(path) as store:
        events = await save(store, jobs, [created_event(j) for j in jobs])
        await store.put_setting("k", {"v": 1})
        await save(store, printers=[("p1", PrinterMemory(False, True))])
        await save(store, [], idempotency=("key", "h", [jobs[0].id], T0))
    assert db_user_version(path) == len(MIGRATIONS)

    async with open_store(path) as store:
        assert db_user_version(path) == len(MIGRATIONS)
        for job in jobs:
            assert await store.get_job(job.id) == job
        assert await store.events_since(0) == events
        assert await store.settings() == {"k": {"v": 1}}
        assert await store.printer_memory() == {"p1": PrinterMemory(False, True)}
        assert await store.find_idempotency_key("key") == ("h", [jobs[0].id])
        assert await store.integrity_check() == ["ok"]
        # New events continue the sequence.
        (ev,) = await save(store, [], [NewEvent(type="x", at=T0)])
        assert ev.seq == events[-1].seq + 1

    writer, applied = open_database(path)
    writer.close()
    assert applied == 0


async def test_backup_to(sqlite_store: Store, tmp_path: Path) -> None:
    store = sqlite_store
    jobs = [mkjob(position=i) for i in range(50)]
    await save(store, jobs, [created_event(j) for j in jobs])
    dest = tmp_path / "backups" / "b.db"
    dest.parent.mkdir()
    await store.backup_to(dest)
    assert not dest.with_name("b.db.tmp").exists()
    conn = sqlite3.connect(dest)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 50
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 50
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        conn.close()
    # The copy opens as a store of its own.
    async with open_store(dest) as copy:
        assert await copy.get_job(jobs[3].id) == jobs[3]


# ---------------------------------------------------------------- SQLite failures


def _op_error(message: str, code: int | None) -> sqlite3.OperationalError:
    e = sqlite3.OperationalError(message)
    if code is not None:
        e.sqlite_errorcode = code
    return e


def test_map_disk_full() -> None:
    err = map_sqlite_error(_op_error("database or disk is full", sqlite3.SQLITE_FULL))
    assert isinstance(err, StorageFull)
    assert err.status == 507
    assert err.code == "storage_full"
    # The error code alone decides, whatever the message says.
    by_code = map_sqlite_error(_op_error("write failed", sqlite3.SQLITE_FULL))
    assert isinstance(by_code, StorageFull)


def test_map_busy() -> None:
    err = map_sqlite_error(_op_error("database is locked", sqlite3.SQLITE_BUSY))
    assert isinstance(err, StorageBusy)
    assert err.status == 503
    assert isinstance(map_sqlite_error(_op_error("try later", sqlite3.SQLITE_BUSY)), StorageBusy)
    # Extended codes map by their primary code.
    snapshot = map_sqlite_error(_op_error("try later", sqlite3.SQLITE_BUSY_SNAPSHOT))
    assert isinstance(snapshot, StorageBusy)
    full_by_text = map_sqlite_error(_op_error("database or disk is full", None))
    assert isinstance(full_by_text, StorageFull)


def test_map_constraint() -> None:
    e = sqlite3.IntegrityError("UNIQUE constraint failed")
    e.sqlite_errorcode = sqlite3.SQLITE_CONSTRAINT_UNIQUE
    err = map_sqlite_error(e)
    assert type(err) is FarmError
    assert not isinstance(err, StorageBusy | StorageFull)


async def test_disk_full_while_saving_stores_nothing_then_recovers(sqlite_store: Store) -> None:
    """A real SQLITE_FULL (the writer may not grow the file): StorageFull, nothing
    stored, no unit of the transaction acknowledged, and the next save works again."""
    store = sqlite_store
    kept = mkjob(name="kept")
    await save(store, [kept], [created_event(kept)])
    # The writer connection is private; capping its file size is the cheapest full disk.
    pages = store.writer.conn.execute("PRAGMA page_count").fetchone()[0]
    store.writer.conn.execute(f"PRAGMA max_page_count = {pages}")

    big = [mkjob(name="x" * 2000) for _ in range(20)]
    small = mkjob(name="small")
    outcome: dict[str, BaseException | None] = {}

    async def one(jobs: list[Job]) -> None:
        try:
            await save(store, jobs, [created_event(j) for j in jobs])
            outcome[jobs[0].id] = None
        except FarmError as exc:
            outcome[jobs[0].id] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, big)
        nursery.start_soon(one, [small])
    # Both units were in the failed transaction: neither is acknowledged.
    assert isinstance(outcome[big[0].id], StorageFull)
    assert isinstance(outcome[small.id], StorageFull)
    for job in [*big, small]:
        assert await store.get_job(job.id) is None
    assert [e.job_id for e in await store.events_since(0)] == [kept.id]

    store.writer.conn.execute("PRAGMA max_page_count = 1073741823")
    await save(store, big, [created_event(j) for j in big])
    assert (await store.list_jobs())[1] == 21
    assert await store.integrity_check() == ["ok"]


async def test_locked_by_other_process_gives_busy_then_recovers(sqlite_store: Store) -> None:
    store = sqlite_store
    before = mkjob(name="before")
    await save(store, [before])

    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        blocked = mkjob(name="blocked")
        outcome: list[BaseException] = []

        async def try_save() -> None:
            try:
                await save(store, [blocked], [created_event(blocked)])
            except FarmError as exc:
                outcome.append(exc)

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(try_save)
                # Reads keep working in WAL while the writer waits for the lock.
                await trio.testing.wait_all_tasks_blocked()
                assert await store.get_job(before.id) == before
                assert (await store.list_jobs())[1] == 1
                assert not outcome, "the write should still be waiting for the lock"
        assert len(outcome) == 1
        assert isinstance(outcome[0], StorageBusy)
        assert outcome[0].status == 503
        assert await store.get_job(blocked.id) is None
        other.execute("ROLLBACK")
    finally:
        other.close()

    with trio.fail_after(15):
        await save(store, [blocked], [created_event(blocked)])
    assert await store.get_job(blocked.id) == blocked
    assert len(await store.events_since(0, job_id=blocked.id)) == 1


async def test_a_bad_event_payload_fails_only_its_caller(store: Store) -> None:
    good = mkjob()
    with pytest.raises(TypeError):
        await save(store, [], [NewEvent(type="x", at=0.0, data={1: "int key"})])  # type: ignore[dict-item]
    # the writer is still alive and serves the next caller
    stored = await save(store, [good], [created_event(good)])
    assert stored[0].seq >= 1
    assert await store.get_job(good.id) == good


async def test_a_unit_that_raises_inside_the_writer_fails_alone(store: Store) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO settings (key, value) VALUES ('half', '1')")
        raise ValueError("bug in a unit")

    outcomes: dict[str, object] = {}
    jobs = [mkjob() for _ in range(5)]

    async def good(job: Job) -> None:
        outcomes[job.id] = await save(store, [job], [created_event(job)])

    async def bad() -> None:
        try:
            await store.writer.write(broken)
        except ValueError as exc:
            outcomes["bad"] = exc

    async with trio.open_nursery() as n:
        for job in jobs[:2]:
            n.start_soon(good, job)
        n.start_soon(bad)
        for job in jobs[2:]:
            n.start_soon(good, job)
    assert isinstance(outcomes["bad"], ValueError)
    assert "half" not in await store.settings()  # its partial write was rolled back
    for job in jobs:
        assert await store.get_job(job.id) == job


# ---------------------------------------------------------------- conditional domain writes


async def test_a_transition_is_written_only_from_the_state_the_farm_saw(store: Store) -> None:
    """``UpdateJob(job, expect)`` writes only a row still in ``expect``; a mismatch is an
    error and nothing of the commit is stored (never a silent overwrite)."""
    job = mkjob(state=JobState.QUEUED)
    await store.commit([out.InsertJob(job), out.AppendEvent(created_event(job))])
    printing = msgspec.structs.replace(job, state=JobState.PRINTING, printer_id="p1")
    await store.commit([out.UpdateJob(printing, JobState.QUEUED)])
    assert await store.get_job(job.id) == printing
    # A second writer that still believes the job is queued is refused, whole.
    cancelled = msgspec.structs.replace(job, state=JobState.CANCELLED)
    other = mkjob(state=JobState.QUEUED)
    with pytest.raises(StaleWrite, match=f"job {job.id} is printing, not queued"):
        await store.commit(
            [
                out.InsertJob(other),
                out.UpdateJob(cancelled, JobState.QUEUED),
                out.AppendEvent(created_event(other)),
            ]
        )
    assert await store.get_job(job.id) == printing
    assert await store.get_job(other.id) is None
    assert [e.job_id for e in await store.events_since(0)] == [job.id]
    # A row that does not exist is no silent insert either.
    ghost = mkjob(state=JobState.CANCELLED)
    with pytest.raises(StaleWrite, match="is missing"):
        await store.commit([out.UpdateJob(ghost, JobState.QUEUED)])
    assert await store.get_job(ghost.id) is None


async def test_retention_prunes_old_events_and_keys_but_keeps_the_newest(store: Store) -> None:
    job = mkjob(state=JobState.QUEUED)
    await store.commit(
        [
            out.InsertJob(job),
            *(out.AppendEvent(NewEvent("x", T0 + i, job_id=job.id)) for i in range(5)),
            out.PutIdempotency("old", "h", (job.id,), T0),
            out.PutIdempotency("new", "h", (job.id,), T0 + 100),
        ]
    )
    removed = await store.prune(events_before=T0 + 3, keys_before=T0 + 50)
    assert removed == (3, 1)
    assert [e.at - T0 for e in await store.events_since(0)] == [3, 4]
    assert await store.find_idempotency_key("old") is None
    assert await store.find_idempotency_key("new") is not None
    # Everything older than everything: the newest event stays, so seq never restarts.
    assert await store.prune(events_before=T0 + 1e9, keys_before=0.0) == (1, 0)
    assert [e.at - T0 for e in await store.events_since(0)] == [4]
    (ev,) = await store.commit([out.AppendEvent(NewEvent("y", T0 + 9))])
    assert ev.seq == 6


async def test_a_backup_does_not_hold_up_reads(sqlite_store: Store, tmp_path: Path) -> None:
    """The backup runs on its own connection: a read on the store's reader goes through
    while a backup is in progress."""
    store = sqlite_store
    jobs = [mkjob(state=JobState.QUEUED) for _ in range(50)]
    await store.commit([out.InsertJob(j) for j in jobs])
    gate = trio.Event()
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()
    real = database.backup_database

    def slow_backup(src: Any, dest: Path) -> None:
        token.run_sync_soon(started.set)
        trio.from_thread.run(gate.wait, trio_token=token)
        real(src, dest)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(database, "backup_database", slow_backup)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.backup_to, tmp_path / "b.db")
            await started.wait()
            # The backup is stalled mid-way; reads still answer.
            assert (await store.get_job(jobs[0].id)) == jobs[0]
            assert (await store.list_jobs())[1] == 50
            gate.set()
    assert (tmp_path / "b.db").exists()


async def test_a_dangling_reference_is_found_after_opening_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    """The reference check runs in the background (it reads the whole file); every write
    waits for it, and a failed check ends the store with ``DatabaseDamaged``."""
    path = tmp_path / "t.db"
    async with open_store(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("INSERT INTO events (type, at, job_id, data) VALUES ('x', 0, 'NOPE', '{}')")
    conn.commit()
    conn.close()
    job = mkjob(state=JobState.QUEUED)
    outcome: list[BaseException] = []
    try:
        async with open_store(path) as store:
            with pytest.raises(trio.Cancelled):  # the check fails while this write waits
                await store.commit([out.InsertJob(job)])
    except BaseExceptionGroup as group:
        outcome = list(group.exceptions)
    assert [type(e) for e in outcome] == [DatabaseDamaged]
    assert "dangling references" in str(outcome[0])
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
    conn.close()
