"""A SQLite farm with something in every table, quickly (issue 18: ``migrate-store``).

``build_farm(path, bulk)`` writes a few jobs through the real store (transitions in the
event log, so the history trigger opens and closes attempts; printers, settings, an
idempotency key, a delivery, a spool and its binding, usage, counters, a maintenance
entry), then ``bulk`` more finished jobs with their events by direct inserts (100,000
in seconds, for ``bench/bench_migrate.py``). Used by ``tests/test_migrate_store.py``.
"""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import trio

from printfarmd.core.farm import outputs as out
from printfarmd.core.farm.outputs import NewEvent
from printfarmd.core.farm.upkeep_state import Counters, SpoolInfo
from printfarmd.core.notify import Channel, Delivery
from printfarmd.models import Job, JobState, new_job_id
from printfarmd.store import jobs as job_rows
from printfarmd.store.store import open_store

T0 = 1_700_000_000.0


def _transition(job: Job, to: JobState, at: float, **kw: object) -> list[out.Record]:
    new = msgspec.structs.replace(job, state=to, updated_at=at, **kw)  # type: ignore[arg-type]
    return [
        out.UpdateJob(new, job.state),
        out.AppendEvent(
            NewEvent(
                "job.transition",
                at,
                job_id=job.id,
                printer_id=new.printer_id,
                from_state=job.state.value,
                to_state=to.value,
                reason=str(kw.get("last_error") or "") or None,
            )
        ),
    ]


async def _domain_part(path: Path) -> None:
    async with open_store(path) as store:
        at = T0
        printed: list[Job] = []
        for k in range(6):
            job = Job(
                id=new_job_id(),
                filename=f"part-{k}.gcode",
                state=JobState.QUEUED,
                position=k + 1,
                priority=k % 3,
                material="PLA",
                required_tags=("big",) if k % 2 else (),
                min_bed=(200.0, 200.0, 200.0) if k == 3 else None,
                name=f"Part {k} ünïcode ✓",
                created_at=at,
                updated_at=at,
                colour="#FF8800" if k == 1 else None,
            )
            await store.commit(
                [
                    out.InsertJob(job),
                    out.AppendEvent(NewEvent("job.created", at, job_id=job.id, to_state="queued")),
                ]
            )
            printed.append(job)
        for k, job in enumerate(printed[:4]):
            at += 10
            pid = f"p{k}"  # one active job per printer (post_process holds it)
            recs = _transition(job, JobState.PRINTING, at, printer_id=pid, started_at=at)
            await store.commit(recs)
            job = msgspec.structs.replace(
                job, state=JobState.PRINTING, printer_id=pid, started_at=at
            )
            at += 100
            await store.commit([out.SaveProgress(job.id, 42.5, at + 60, at)])
            job = msgspec.structs.replace(job, progress=42.5, eta=at + 60)
            end = JobState.POST_PROCESS if k != 2 else JobState.FAILED
            error = "nozzle clog" if end is JobState.FAILED else None
            await store.commit(
                [
                    *_transition(job, end, at, finished_at=at, last_error=error),
                    out.RecordUsage(
                        f"use-{job.id}",
                        job.id,
                        pid,
                        7,
                        "completed",
                        1.0,
                        12.5,
                        100.0,
                        0.31,
                        0.02,
                        0.01,
                        "EUR",
                        at,
                        k == 0,
                    ),
                ]
            )
        await store.commit(
            [
                out.PutPrinter("p0", False, False, at),
                out.PutPrinter("p1", True, True, at),
                out.PutSetting("dispatch_paused", False),
                out.PutSetting("queue", {"order": [1, 2, 3], "note": "é"}),
                out.PutIdempotency("order-1", "d" * 64, (printed[0].id,), at),
                out.PutSpool(
                    SpoolInfo(7, "PLA", ("#112233",), 750.0, 250.0, 20.0, "Red", False, False, at)
                ),
                out.PutBinding("p0", 0, 7, at),
                out.PutUpkeep("p0", Counters(3600.0, 2, 25.0, T0), "hours", at),
                out.AppendMaintenance(
                    "p1", at, "ann", "new nozzle", Counters(7200.0, 4, 50.0, T0), None, at
                ),
            ]
        )
        await store.add_deliveries(
            [
                Delivery(
                    id=f"dlv-{k}",
                    channel=Channel.WEBHOOK,
                    target="https://example.org/hook",
                    address="https://example.org/hook?token=x",
                    job_id=printed[2].id,
                    event="job.failed",
                    payload=f'{{"k": {k}}}',
                    created_at=T0,  # the same time: the listing's tie break is the rowid
                    updated_at=T0,
                )
                for k in range(3)
            ]
        )


def _bulk(path: Path, n: int, seed: int = 18) -> None:
    """``n`` finished jobs and their created/transition events, by direct inserts."""
    import sqlite3

    rnd = random.Random(seed)
    conn = sqlite3.connect(path)
    try:
        conn.execute("BEGIN")
        rows = []
        events = []
        for k in range(n):
            at = T0 + 1000 + k
            job = Job(
                id=f"{k:016x}",
                filename=f"bulk-{k % 50}.gcode",
                state=rnd.choice([JobState.READY, JobState.CANCELLED, JobState.SHIPPED]),
                position=1000 + k,
                priority=rnd.randint(-5, 5),
                progress=rnd.random() * 100,
                estimated_time=rnd.choice([None, 600.0, 1234.5]),
                name=f"bulk {k}",
                created_at=at,
                updated_at=at + 1,
                sku=rnd.choice([None, "SKU-1", "SKU-2"]),
            )
            rows.append(job_rows.to_row(job))
            events.append(("job.created", at, job.id, None, None, "created", None, "{}"))
            events.append(
                ("job.transition", at + 1, job.id, None, "created", job.state.value, None, "{}")
            )
        conn.executemany(job_rows.INSERT, rows)
        conn.executemany(
            "INSERT INTO events (type, at, job_id, printer_id, from_state, to_state, reason, "
            "data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            events,
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def build_farm(path: Path, bulk: int = 0) -> None:
    """A farm at ``path`` (see the module docstring). Blocking (runs its own trio loop)."""
    trio.run(_domain_part, path)
    if bulk:
        _bulk(path, bulk)
