"""Benchmark: JobQueue against a sorted Python list, measured in the same run.

Usage: ``.venv/bin/python bench/bench_queue.py [--n 100000] [--ops 2000] [--seed 1] [--json]``

Builds ``n`` queued jobs (mixed priorities, 4 materials, 2 nozzles, some tags, a few
jumped jobs), then applies the same sequence of operations to both structures and
times each kind (``time.perf_counter``): push, pop_for, jump, reprioritize, remove.

The baseline is the obvious implementation: a list kept sorted with ``bisect`` on push
(insort); linear scan for pop_for / remove / jump; remove + insort for reprioritize.
It is given the same per-(class, printer) compatibility cache and interned
requirement values as JobQueue, so the ratio measures the data structure alone.
Both structures must end in the same order with the same pops, or the run fails.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import platform
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from printfarmd.core.queue import JobQueue
from printfarmd.core.routing import Requirements, can_print, requirements_of
from printfarmd.models import Capabilities, Job, JobState

MATERIALS = ("PLA", "PETG", "ABS", "TPU")
NOZZLES = (0.4, 0.6)
# Most jobs need no tag; some need an enclosure, fewer a hardened nozzle, a few both.
TAG_SETS: tuple[tuple[str, ...], ...] = (
    (),
    ("enclosure",),
    ("hardened",),
    ("enclosure", "hardened"),
)
TAG_WEIGHTS = (70, 20, 7, 3)

#: The printers pop_for is asked for, in rotation: from narrow to versatile.
PRINTERS: tuple[Capabilities, ...] = (
    Capabilities(materials=("PLA",), nozzle_diameter=0.4),
    Capabilities(materials=("PETG", "PLA"), nozzle_diameter=0.4, tags=("enclosure",)),
    Capabilities(materials=("ABS",), nozzle_diameter=0.6, tags=("enclosure", "hardened")),
    Capabilities(materials=("TPU",), nozzle_diameter=0.4),
    Capabilities(materials=("PLA", "PETG", "ABS", "TPU"), nozzle_diameter=0.6, tags=("hardened",)),
    Capabilities(materials=("PETG",), nozzle_diameter=0.6),
)

OPS = ("push", "pop_for", "jump", "reprioritize", "remove")


def make_job(rng: random.Random, position: int) -> Job:
    return Job(
        id=f"{position:016X}",
        filename=f"part-{position}.gcode",
        state=JobState.QUEUED,
        priority=rng.choice((0, 0, 0, 0, 1, 2, 5, 10, -1)),
        position=position,
        front=1 if rng.random() < 0.001 else 0,
        # One job in ten names no material: it can go anywhere.
        material=None if rng.random() < 0.1 else rng.choice(MATERIALS),
        nozzle_diameter=rng.choice(NOZZLES),
        required_tags=rng.choices(TAG_SETS, TAG_WEIGHTS)[0],
    )


# ---------------------------------------------------------------------- the baseline

_Key = tuple[tuple[int, int, int], str]
_Row = tuple[_Key, Requirements, Job]
_row_key = itemgetter(0)


class SortedListQueue:
    """The obvious queue: rows ``(key, requirements, job)`` in a list sorted by key.

    A parallel list of ids lets remove/jump/reprioritize find a job with
    ``list.index``: still a linear scan, but in C, so the baseline is not a straw man.
    """

    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        self._classes: dict[Requirements, Requirements] = {}
        self._compat: dict[tuple[Requirements, Capabilities], bool] = {}
        self._max_front = 0
        self.rows: list[_Row] = [self._row(j) for j in jobs]
        self.rows.sort(key=_row_key)
        self.job_ids: list[str] = [row[0][1] for row in self.rows]

    def _row(self, job: Job) -> _Row:
        req = requirements_of(job)
        req = self._classes.setdefault(req, req)
        self._max_front = max(self._max_front, job.front)
        return ((job.sort_key, job.id), req, job)

    def _pop(self, job_id: str) -> Job:
        """Remove the job with ``job_id``; ``KeyError`` if absent."""
        try:
            i = self.job_ids.index(job_id)
        except ValueError:
            raise KeyError(job_id) from None
        del self.job_ids[i]
        return self.rows.pop(i)[2]

    def push(self, job: Job) -> None:
        row = self._row(job)
        i = bisect.bisect_right(self.rows, row[0], key=_row_key)
        self.rows.insert(i, row)
        self.job_ids.insert(i, job.id)

    def remove(self, job_id: str) -> Job | None:
        try:
            return self._pop(job_id)
        except KeyError:
            return None

    def pop_for(self, caps: Capabilities) -> Job | None:
        compat = self._compat
        for i, (_, req, _job) in enumerate(self.rows):
            ok = compat.get((req, caps))
            if ok is None:
                ok = compat[(req, caps)] = can_print(caps, req)
            if ok:
                del self.job_ids[i]
                return self.rows.pop(i)[2]
        return None

    def reprioritize(self, job_id: str, priority: int) -> Job:
        job = msgspec.structs.replace(self._pop(job_id), priority=priority)
        self.push(job)
        return job

    def jump(self, job_id: str) -> Job:
        job = msgspec.structs.replace(self._pop(job_id), front=self._max_front + 1)
        self.push(job)
        return job

    def ids(self) -> list[str]:
        return list(self.job_ids)


# ---------------------------------------------------------------------- measuring


def timed(fn: Callable[[], object]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def traced_peak(fn: Callable[[], object]) -> tuple[int, int]:
    """(peak, retained) bytes allocated while running ``fn`` (inputs already exist)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak, current


def run_ops(
    structure: JobQueue | SortedListQueue, op: str, inputs: Sequence[Any]
) -> tuple[float, list[str | None]]:
    """Apply ``inputs`` to ``structure`` with operation ``op``; (seconds, returned ids)."""
    out: list[str | None] = []
    append = out.append
    gc.collect()
    start = time.perf_counter()
    if op == "push":
        for job in inputs:
            structure.push(job)
    elif op == "pop_for":
        for caps in inputs:
            popped = structure.pop_for(caps)
            append(None if popped is None else popped.id)
    elif op == "jump":
        for job_id in inputs:
            append(structure.jump(job_id).id)
    elif op == "reprioritize":
        for job_id, priority in inputs:
            append(structure.reprioritize(job_id, priority).id)
    elif op == "remove":
        for job_id in inputs:
            removed = structure.remove(job_id)
            append(None if removed is None else removed.id)
    elapsed = time.perf_counter() - start
    return elapsed, out


def bench(n: int, ops: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    jobs = [make_job(rng, position) for position in range(1, n + 1)]

    build_q, queue = timed(lambda: JobQueue(jobs))
    build_b, baseline = timed(lambda: SortedListQueue(jobs))
    peak_q, kept_q = traced_peak(lambda: JobQueue(jobs))
    peak_b, kept_b = traced_peak(lambda: SortedListQueue(jobs))
    if [j.id for j in queue.ordered()] != baseline.ids():
        raise SystemExit("build: JobQueue and baseline disagree on order")

    results: dict[str, dict[str, float]] = {}
    for op in OPS:
        present = baseline.ids()
        inputs: list[Any]
        if op == "push":
            inputs = [make_job(rng, n + 1 + i) for i in range(ops)]
        elif op == "pop_for":
            inputs = [PRINTERS[i % len(PRINTERS)] for i in range(ops)]
        elif op == "reprioritize":
            inputs = [(jid, rng.randint(-3, 12)) for jid in rng.sample(present, ops)]
        else:  # jump, remove: distinct ids spread over the whole queue
            inputs = rng.sample(present, ops)
        t_q, out_q = run_ops(queue, op, inputs)
        t_b, out_b = run_ops(baseline, op, inputs)
        if out_q != out_b:
            raise SystemExit(f"{op}: JobQueue and baseline returned different jobs")
        us_q, us_b = t_q / ops * 1e6, t_b / ops * 1e6
        results[op] = {"jobqueue_us": us_q, "baseline_us": us_b, "ratio": us_b / us_q}

    if [j.id for j in queue.ordered()] != baseline.ids():
        raise SystemExit("JobQueue and baseline disagree on the final order")

    return {
        "n": n,
        "ops_per_kind": ops,
        "seed": seed,
        "classes": queue.statistics().classes,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "build": {
            "jobqueue_s": build_q,
            "baseline_s": build_b,
            "jobqueue_peak_bytes": peak_q,
            "baseline_peak_bytes": peak_b,
            "jobqueue_retained_bytes": kept_q,
            "baseline_retained_bytes": kept_b,
        },
        "ops": results,
    }


def print_table(r: dict[str, Any]) -> None:
    b = r["build"]
    print(
        f"JobQueue vs sorted-list baseline: n={r['n']:,} queued jobs, "
        f"{r['classes']} requirement classes, {r['ops_per_kind']:,} ops each "
        f"(Python {r['python']}, {r['machine']})"
    )
    print()
    print(f"| {'op':<14} | {'JobQueue µs/op':>15} | {'baseline µs/op':>15} | {'ratio':>8} |")
    print(f"|{'-' * 16}|{'-' * 17}|{'-' * 17}|{'-' * 10}|")
    for op, row in r["ops"].items():
        print(
            f"| {op:<14} | {row['jobqueue_us']:>15.2f} | {row['baseline_us']:>15.2f} "
            f"| {row['ratio']:>7.1f}x |"
        )
    print()
    mib = 1024 * 1024
    print(f"| {'build':<14} | {'JobQueue':>15} | {'baseline':>15} |")
    print(f"|{'-' * 16}|{'-' * 17}|{'-' * 17}|")
    print(f"| {'time (s)':<14} | {b['jobqueue_s']:>15.3f} | {b['baseline_s']:>15.3f} |")
    print(
        f"| {'peak (MiB)':<14} | {b['jobqueue_peak_bytes'] / mib:>15.1f} "
        f"| {b['baseline_peak_bytes'] / mib:>15.1f} |"
    )
    print(
        f"| {'retained (MiB)':<14} | {b['jobqueue_retained_bytes'] / mib:>15.1f} "
        f"| {b['baseline_retained_bytes'] / mib:>15.1f} |"
    )
    print()
    print("ratio = baseline / JobQueue (higher is better). Memory is tracemalloc, for the")
    print("structure only: the Job objects themselves exist before the build and are shared.")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="queued jobs (default 100000)")
    parser.add_argument("--ops", type=int, default=2000, help="operations per kind (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    if args.ops > args.n:
        parser.error("--ops must not exceed --n")
    result = bench(args.n, args.ops, args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
