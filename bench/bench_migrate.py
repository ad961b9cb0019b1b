"""Benchmark: ``migrate-store`` round trip on a 100,000-job SQLite farm (issue 18).

Usage: ``.venv/bin/python bench/bench_migrate.py [--jobs 100000] [--dsn postgresql://...]
[--json]``

Builds a SQLite farm in a temp folder (``tests/farm_builder.py``: a few jobs through the
real store, so every table has rows, then ``--jobs`` finished jobs and 2 events each by
direct inserts), copies it with ``printfarmd.store.transfer.copy_farm`` (the code of
``printfarmd migrate-store``) into an empty PostgreSQL database and verifies it (counts
and checksums per table). Without ``--dsn`` it starts its own PostgreSQL server from
Debian's package (``tests/pg_server.py``, as the tests do). Prints the time of each
phase and the per-table counts; exits 1 if the verification found a mismatch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from printfarmd.store import transfer
from tests.farm_builder import build_farm
from tests.pg_server import running_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--dsn", help="an empty PostgreSQL database (default: start one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            dsn = stack.enter_context(running_server()).fresh_dsn()
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        source = folder / "printfarmd.db"
        t0 = time.perf_counter()
        build_farm(source, bulk=args.jobs)
        built = time.perf_counter() - t0
        phases: list[tuple[str, float]] = []
        last = time.perf_counter()

        def note(line: str) -> None:
            nonlocal last
            now = time.perf_counter()
            phases.append((line, now - last))
            last = now

        t1 = time.perf_counter()
        report = transfer.copy_farm(source, dsn, note)
        total = time.perf_counter() - t1
        phases.append(("verified (counts and checksums, both sides)", time.perf_counter() - last))
        size = source.stat().st_size
    result = {
        "jobs": args.jobs,
        "sqlite_bytes": size,
        "build_seconds": round(built, 2),
        "copy_and_verify_seconds": round(total, 2),
        "phases": [(name, round(sec, 2)) for name, sec in phases],
        "tables": {t.table: [t.source_rows, t.target_rows, t.ok] for t in report.tables},
        "ok": report.ok,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"farm: {args.jobs} bulk jobs, {size / 1e6:.1f} MB SQLite, built in {built:.1f} s")
        for name, sec in phases:
            print(f"  {sec:7.2f} s  {name}")
        print(f"copy + verify: {total:.1f} s")
        print(f"{'table':<18} {'SQLite':>9} {'PostgreSQL':>11}  check")
        for t in report.tables:
            mark = "ok" if t.ok else "MISMATCH"
            print(f"{t.table:<18} {t.source_rows:>9} {t.target_rows:>11}  {mark}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
