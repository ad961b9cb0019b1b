"""The SQLite store (``store/store.py``): round trips, the event log, group commit, per-unit
atomicity, idempotency keys, durability settings, refusing damaged files, backup, and the
mapping of SQLite failures to domain errors."""

from __future__ import annotations

import itertools
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from printfarmd.errors import DatabaseDamaged, FarmError, StorageBusy, StorageFull
from printfarmd.models import TERMINAL_STATES, Event, Job, JobState, new_job_id
from printfarmd.store.migrations import MIGRATIONS
from printfarmd.store.store import (
    JOB_SORTS,
    NewEvent,
    PrinterMemory,
    Store,
    map_sqlite_error,
    open_database,
    open_store,
)

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


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
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
    events = await store.save([job, plain], [created_event(job), created_event(plain)])
    assert [e.job_id for e in events] == [job.id, plain.id]
    assert await store.get_job(job.id) == job
    assert await store.get_job(plain.id) == plain
    assert await store.max_position() == 42

    # Saving again replaces the row (upsert), not a second row.
    moved = attrs.evolve(job, state=JobState.POST_PROCESS, progress=100.0, updated_at=T0 + 20)
    await store.save([moved])
    assert await store.get_job(job.id) == moved
    assert (await store.list_jobs())[1] == 2


async def test_load_open_jobs_excludes_terminal(store: Store) -> None:
    jobs = {state: mkjob(state=state) for state in JobState}
    await store.save(jobs.values())
    open_jobs = await store.load_open_jobs()
    assert {j.id for j in open_jobs} == {j.id for s, j in jobs.items() if s not in TERMINAL_STATES}
    assert len(open_jobs) == len(JobState) - len(TERMINAL_STATES)
    for j in open_jobs:
        assert j == jobs[j.state]
    counts = await store.count_jobs_by_state()
    assert counts == {s.value: 1 for s in JobState}


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
    await store.save(jobs)
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
    await store.save(jobs)

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
        results[i] = await store.save([job], evs)

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
    (stored,) = await store.save([job], [ev])
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
    (pev,) = await store.save((), [NewEvent(type="printer.offline", at=T0, printer_id="p9")])
    assert pev.seq == stored.seq + 1
    assert pev.job_id is None
    assert pev.data == {}


# ---------------------------------------------------------------- group commit


async def test_group_commit_batches_concurrent_saves(store: Store) -> None:
    jobs = [mkjob(position=i, name=f"job-{i}") for i in range(200)]

    async def one(job: Job) -> None:
        await store.save([job], [created_event(job)])

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
    await store.save([job])
    assert commits_seen == [1]
    # A different connection sees it, so it is really committed, not just buffered.
    assert db_job_count(store.path) == 1


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
            outcome[job.id] = await store.save(
                [job], [created_event(job, printer_id=job.printer_id)]
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
    await store.save(done)
    active = mkjob(state=JobState.POST_PROCESS, printer_id="p1")
    await store.save([active])
    second = mkjob(state=JobState.PRINTING, printer_id="p1")
    with pytest.raises(FarmError):
        await store.save([second], [created_event(second)])
    assert await store.get_job(second.id) is None
    assert await store.events_since(0) == []
    # Once the active job leaves the active states, the printer is free again.
    await store.save([attrs.evolve(active, state=JobState.READY)])
    await store.save([second])
    assert (await store.get_job(second.id)) == second


# ---------------------------------------------------------------- idempotency keys


async def test_idempotency_key_round_trip_and_duplicate(store: Store) -> None:
    assert await store.find_idempotency_key("k1") is None
    first = [mkjob(), mkjob()]
    ids = [j.id for j in first]
    await store.save(
        first, [created_event(j) for j in first], idempotency=("k1", "hash-1", ids, T0)
    )
    assert await store.find_idempotency_key("k1") == ("hash-1", ids)

    again = mkjob()
    with pytest.raises(FarmError):
        await store.save(
            [again], [created_event(again)], idempotency=("k1", "hash-2", [again.id], T0 + 1)
        )
    # The duplicate stored nothing at all and did not overwrite the key.
    assert await store.get_job(again.id) is None
    assert await store.events_since(0, job_id=again.id) == []
    assert await store.find_idempotency_key("k1") == ("hash-1", ids)
    _, total = await store.list_jobs()
    assert total == 2

    # A different key is independent.
    await store.save([again], idempotency=("k2", "hash-2", [again.id], T0 + 2))
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
    await store.save(
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
    await store.save(printers=[("p1", PrinterMemory(plate_clear=True, maintenance=True))])
    assert await store.printer_memory() == {
        "p1": PrinterMemory(True, True),
        "p2": PrinterMemory(True, True),
    }


async def test_save_progress_touches_only_printing_jobs(store: Store) -> None:
    printing = mkjob(state=JobState.PRINTING, printer_id="p1", progress=10.0)
    finished = mkjob(state=JobState.POST_PROCESS, printer_id="p2", progress=100.0)
    queued = mkjob(state=JobState.QUEUED, progress=0.0)
    await store.save([printing, finished, queued])
    await store.save_progress(
        [
            (printing.id, 55.5, T0 + 600, T0 + 30),
            (finished.id, 60.0, T0 + 700, T0 + 31),  # stale update racing a FINISH
            (queued.id, 5.0, None, T0 + 32),
            ("FFFFFFFFFFFFFFFF", 1.0, None, T0),  # unknown job: ignored
        ]
    )
    assert await store.get_job(printing.id) == attrs.evolve(
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
        for conn in (store._writer, store._reader):
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
        await store.save((), [NewEvent(type="x", at=T0, job_id="0000000000000000")])
    assert await store.events_since(0) == []


# ---------------------------------------------------------------- damaged files


async def _make_db_with_jobs(path: Path, n: int) -> list[Job]:
    jobs = [mkjob(name=f"job {i} " + "x" * 100, position=i) for i in range(n)]
    async with open_store(path) as store:
        await store.save(jobs, [created_event(j) for j in jobs])
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


# ---------------------------------------------------------------- reopen, backup


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    jobs = [mkjob(position=i, state=JobState.QUEUED) for i in range(20)]
    async with open_store(path) as store:
        events = await store.save(jobs, [created_event(j) for j in jobs])
        await store.put_setting("k", {"v": 1})
        await store.save(printers=[("p1", PrinterMemory(False, True))])
        await store.save((), idempotency=("key", "h", [jobs[0].id], T0))
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
        (ev,) = await store.save((), [NewEvent(type="x", at=T0)])
        assert ev.seq == events[-1].seq + 1

    writer, applied = open_database(path)
    writer.close()
    assert applied == 0


async def test_backup_to(store: Store, tmp_path: Path) -> None:
    jobs = [mkjob(position=i) for i in range(50)]
    await store.save(jobs, [created_event(j) for j in jobs])
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


async def test_disk_full_while_saving_stores_nothing_then_recovers(store: Store) -> None:
    """A real SQLITE_FULL (the writer may not grow the file): StorageFull, nothing
    stored, no unit of the transaction acknowledged, and the next save works again."""
    kept = mkjob(name="kept")
    await store.save([kept], [created_event(kept)])
    # The writer connection is private; capping its file size is the cheapest full disk.
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count = {pages}")

    big = [mkjob(name="x" * 2000) for _ in range(20)]
    small = mkjob(name="small")
    outcome: dict[str, BaseException | None] = {}

    async def one(jobs: list[Job]) -> None:
        try:
            await store.save(jobs, [created_event(j) for j in jobs])
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

    store._writer.execute("PRAGMA max_page_count = 1073741823")
    await store.save(big, [created_event(j) for j in big])
    assert (await store.list_jobs())[1] == 21
    assert await store.integrity_check() == ["ok"]


async def test_locked_by_other_process_gives_busy_then_recovers(store: Store) -> None:
    before = mkjob(name="before")
    await store.save([before])

    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        blocked = mkjob(name="blocked")
        outcome: list[BaseException] = []

        async def try_save() -> None:
            try:
                await store.save([blocked], [created_event(blocked)])
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
        await store.save([blocked], [created_event(blocked)])
    assert await store.get_job(blocked.id) == blocked
    assert len(await store.events_since(0, job_id=blocked.id)) == 1


async def test_a_bad_event_payload_fails_only_its_caller(store: Store) -> None:
    good = mkjob()
    with pytest.raises(TypeError):
        await store.save((), [NewEvent(type="x", at=0.0, data={1: "int key"})])  # type: ignore[dict-item]
    # the writer is still alive and serves the next caller
    stored = await store.save([good], [created_event(good)])
    assert stored[0].seq >= 1
    assert await store.get_job(good.id) == good


async def test_a_unit_that_raises_inside_the_writer_fails_alone(store: Store) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO settings (key, value) VALUES ('half', '1')")
        raise ValueError("bug in a unit")

    outcomes: dict[str, object] = {}
    jobs = [mkjob() for _ in range(5)]

    async def good(job: Job) -> None:
        outcomes[job.id] = await store.save([job], [created_event(job)])

    async def bad() -> None:
        try:
            await store._write(broken)
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
