"""Benchmark: one dispatch pass with 20, 200 and 1,000 idle printers over a 10,000-job
queue, against the pass the scheduler used before issue 13, measured in the same run.

Usage: ``.venv/bin/python bench/bench_dispatch.py [--jobs 10000] [--printers 20,200,1000]
[--repeat 5] [--json]``

Both passes decide the same thing: repeatedly the first queued job some idle printer can
take goes to its best printer (``routing.rank_key``: material loaded, least versatile, id;
a printer that failed the job only if no other fits). The baseline is the old loop, kept
here as it was: for every remaining idle printer ask the queue for its first job
(``peek_for``), take the best of those, rank every idle printer for it
(``routing.choose_printer``) — O(printers²) per pass. The new pass is
``core.farm.dispatch.plan`` (idle printers grouped by capabilities, each class walked
lazily in queue order, printers ranked once per class). Both must produce the same
assignments or the run fails. A third column times the whole decision
(``decide(Dispatch)`` on a ``Tx``: the plan plus the transitions, records and effects).

Printers: a rotation of narrow and versatile capability sets (materials, nozzles, tags);
jobs: 4 materials x 2 nozzles x tag sets, mixed priorities. Medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, ratio, table

from printfarmd.config import PrinterConfig
from printfarmd.core import routing
from printfarmd.core.farm import FarmState, Now, Slot, Tx, decide
from printfarmd.core.farm import dispatch as new_dispatch
from printfarmd.core.farm.inputs import Dispatch
from printfarmd.core.queue import JobQueue
from printfarmd.models import Job, JobState, PrinterState

MATERIALS = ("PLA", "PETG", "ABS", "TPU")
NOZZLES = (0.4, 0.6)
TAG_SETS: tuple[tuple[str, ...], ...] = ((), ("enclosure",), ("hardened",))
PRINTER_KINDS: tuple[tuple[tuple[str, ...], float, tuple[str, ...]], ...] = (
    (("PLA",), 0.4, ()),
    (("PETG", "PLA"), 0.4, ("enclosure",)),
    (("ABS",), 0.6, ("enclosure", "hardened")),
    (("TPU",), 0.4, ()),
    (("PLA", "PETG", "ABS", "TPU"), 0.6, ("hardened",)),
    (("PETG",), 0.6, ()),
    (("PLA",), 0.6, ("enclosure",)),
)


def make_jobs(n: int, rng: random.Random) -> list[Job]:
    jobs = []
    for k in range(n):
        jobs.append(
            Job(
                id=f"{k:016X}",
                filename="x.gcode",
                state=JobState.QUEUED,
                priority=rng.choice((0, 0, 0, 1, 5)),
                position=k + 1,
                material=rng.choice(MATERIALS),
                nozzle_diameter=rng.choice(NOZZLES),
                required_tags=rng.choice(TAG_SETS),
                failed_printers=(f"p{rng.randrange(50)}",) if rng.random() < 0.02 else (),
            )
        )
    return jobs


def make_printers(n: int) -> list[Slot]:
    slots = []
    for k in range(n):
        materials, nozzle, tags = PRINTER_KINDS[k % len(PRINTER_KINDS)]
        config = PrinterConfig(id=f"p{k}", materials=materials, nozzle_diameter=nozzle, tags=tags)
        slot = msgspec.structs.replace(
            Slot.from_config(config), reported=PrinterState.IDLE, known=True
        )
        slots.append(slot)
    return slots


def old_plan(queue: JobQueue, idle_slots: Sequence[Slot]) -> list[tuple[str, str]]:
    """The pre-issue-13 dispatch pass (services/scheduler.py ``_dispatch_once``)."""
    idle = list(idle_slots)
    taken: list[tuple[str, str]] = []
    removed: list[Job] = []
    while idle:
        best: Job | None = None
        for slot in idle:
            cand = queue.peek_for(slot.capabilities)
            if cand is not None and (best is None or cand.sort_key < best.sort_key):
                best = cand
        if best is None:
            break
        chosen = routing.choose_printer(best, [s.view() for s in idle])
        queue.remove(best.id)
        removed.append(best)
        if chosen is None:
            continue
        slot = next(s for s in idle if s.id == chosen.id)
        idle.remove(slot)
        taken.append((best.id, slot.id))
    for job in removed:
        queue.push(job)
    return taken


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def run(jobs_n: int, printer_counts: Sequence[int], repeat: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    jobs = make_jobs(jobs_n, rng)
    rows = []
    for n in printer_counts:
        slots = make_printers(n)
        state = FarmState(printers=slots, jobs=jobs)
        state.running = True
        queue = state.queue
        t_old, old = timed(lambda q=queue, s=slots: old_plan(q, s), repeat)
        t_new, new = timed(lambda q=queue, s=slots: new_dispatch.plan(q, s), repeat)
        new_pairs = [(j.id, s.id) for j, s in new]
        if sorted(new_pairs) != sorted(old):
            raise SystemExit(f"{n} printers: the two passes disagree")

        def whole(st: FarmState = state) -> int:
            tx = Tx(st)
            decide(tx, Dispatch(), Now(0.0, 0.0))
            return len(tx.records)

        t_decide, records = timed(whole, repeat)
        rows.append(
            {
                "printers": n,
                "assigned": len(new_pairs),
                "old_ms": t_old * 1000,
                "new_ms": t_new * 1000,
                "decide_ms": t_decide * 1000,
                "speedup": ratio(t_old, t_new),
                "records": records,
            }
        )
    return {"jobs": jobs_n, "classes": state.queue.statistics().classes, "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--printers", default="20,200,1000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.printers.split(",")]
    result = run(args.jobs, counts, args.repeat, args.seed)
    result["machine"] = machine()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"dispatch pass over {result['jobs']:,} queued jobs in {result['classes']} "
        "requirement classes, all printers idle"
    )
    print(
        table(
            ["printers", "jobs started", "old pass ms", "new pass ms", "old/new", "decide ms"],
            [
                [
                    r["printers"],
                    r["assigned"],
                    f"{r['old_ms']:.1f}",
                    f"{r['new_ms']:.2f}",
                    f"{r['speedup']:.0f}x",
                    f"{r['decide_ms']:.2f}",
                ]
                for r in result["rows"]
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
