"""Benchmark: acknowledged job creations per second through the REST API.

Usage: ``.venv/bin/python bench/bench_create.py [--synchronous FULL|NORMAL|both]
[--requests 2000] [--time-box 10] [--levels 1,10,100] [--json]``

Starts ``printfarmd serve`` as a child process (temp data dir, 4 simulated printers,
``dispatch_paused = true`` so nothing prints, a temp copy of ``demo/gcodes``), then for
each concurrency level runs that many trio client tasks, each with its own keep-alive
``httpx.AsyncClient`` (connections opened before the clock starts). Every task POSTs
``/api/jobs {"filename": "benchy_pla.gcode"}`` until the level's request budget is spent
or its time box is over. Every answer must be 201; anything else is counted as a failure
(and the run exits non-zero). One acknowledged creation = 1 job row + 4 event rows
(created, validated, sliced, queued) committed in one transaction before the 201.

Baselines, same run, same filesystem (a temp folder next to the daemon's data dir):

- HTTP floor: ``GET /api/health`` on the same daemon with the same client and
  concurrency (no auth, no body, no database), measured just before each level;
- raw commit: one plain ``sqlite3`` connection, WAL, same ``synchronous``, one
  ``INSERT`` of one row + ``COMMIT`` per loop, single thread (half the time before the
  REST levels, half after: the machine is shared and noisy);
- raw group commit: the daemon's real schema and SQL, 1 job row + 4 event rows per
  creation, 100 creations per transaction: the ceiling the store could reach with no
  HTTP, no trio and no scheduler.

With ``--synchronous both`` one daemon per mode runs side by side (an idle one uses no
CPU) and the levels are interleaved, the order of the modes alternating from level to
level, so the FULL/NORMAL ratios are not skewed by the load drifting on a shared machine.

The headline ratio is REST acknowledged creations/s / raw commits/s. After the run the
daemon is stopped and its database is checked: every acknowledged job is there with
exactly 4 events.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    API_KEY,
    DB_NAME,
    Daemon,
    cpu_seconds,
    farm_config,
    free_port,
    jsonable,
    machine,
    percentile,
    ratio,
    table,
)

from printfarmd.models import Job, JobState, new_job_id
from printfarmd.store import events as store_events
from printfarmd.store import jobs as store_jobs
from printfarmd.store.database import open_database

FILENAME = "benchy_pla.gcode"
BODY = orjson.dumps({"filename": FILENAME})
EVENTS_PER_CREATION = 4
PRINTERS = 4
WARMUP_REQUESTS = 50
GROUP_BATCH = 100
MAX_ERRORS_KEPT = 5


# ------------------------------------------------------------------------- baselines


def raw_commit_loop(folder: Path, synchronous: str, seconds: float) -> list[float]:
    """One INSERT + COMMIT per loop on a plain WAL connection; returns commit latencies."""
    folder.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(folder / "raw.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, at REAL, payload TEXT)")
        payload = "x" * 200
        latencies: list[float] = []
        clock = time.perf_counter
        end = clock() + seconds
        while True:
            t0 = clock()
            if t0 >= end:
                break
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t (at, payload) VALUES (?, ?)", (t0, payload))
            conn.execute("COMMIT")
            latencies.append(clock() - t0)
        return latencies
    finally:
        conn.close()


def raw_group_commit(folder: Path, synchronous: str, seconds: float) -> dict[str, Any]:
    """The daemon's schema and SQL, 1 job + 4 events per creation, GROUP_BATCH per commit."""
    folder.mkdir(parents=True, exist_ok=True)
    conn, _ = open_database(folder / "group.db", synchronous)
    try:
        now = time.time()

        def creation() -> tuple[tuple[object, ...], list[tuple[object, ...]]]:
            jid = new_job_id()
            job = Job(
                id=jid,
                filename=FILENAME,
                name=FILENAME,
                state=JobState.QUEUED,
                group_id=jid,
                material="PLA",
                created_at=now,
                updated_at=now,
                queued_at=now,
            )
            steps = [(None, "created", "create"), ("created", "validated", "validate")]
            steps += [("validated", "sliced", "slice"), ("sliced", "queued", "enqueue")]
            events: list[tuple[object, ...]] = [
                # The last value: the cluster node that appended it (none here).
                (
                    "job.transition",
                    now,
                    jid,
                    None,
                    a,
                    b,
                    None,
                    f'{{"event":"{e}","retry_count":0}}',
                    None,
                )
                for a, b, e in steps
            ]
            return store_jobs.to_row(job), events

        creations = 0
        commits = 0
        latencies: list[float] = []
        clock = time.perf_counter
        end = clock() + seconds
        while clock() < end:
            batch = [creation() for _ in range(GROUP_BATCH)]  # built outside the timing
            t0 = clock()
            conn.execute("BEGIN IMMEDIATE")
            for job_row, events in batch:
                conn.execute(store_jobs.INSERT, job_row)
                conn.executemany(store_events.INSERT, events)
            conn.execute("COMMIT")
            latencies.append(clock() - t0)
            creations += len(batch)
            commits += 1
        busy = sum(latencies)
        return {
            "batch": GROUP_BATCH,
            "commits": commits,
            "creations": creations,
            "creations_per_s": creations / busy if busy else float("nan"),
            "commit_p50_ms": percentile(latencies, 50) * 1000,
            "commit_p99_ms": percentile(latencies, 99) * 1000,
        }
    finally:
        conn.close()


def summarize_raw(latencies: Sequence[float]) -> dict[str, Any]:
    busy = sum(latencies)
    return {
        "commits": len(latencies),
        "seconds": round(busy, 3),
        "commits_per_s": len(latencies) / busy if busy else float("nan"),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


# ------------------------------------------------------------------------- REST load


async def http_load(
    url: str,
    concurrency: int,
    requests: int,
    time_box: float,
    *,
    method: str = "POST",
    path: str = "/api/jobs",
    body: bytes | None = BODY,
    expect: int = 201,
    daemon_pid: int | None = None,
) -> dict[str, Any]:
    """``concurrency`` tasks share a budget of ``requests`` requests (or ``time_box`` s);
    only ``expect`` answers count as acknowledged, anything else is a failure.

    Each task owns one keep-alive ``httpx.AsyncClient`` (one connection). Clients are
    created and their connections opened with one untimed ``GET /api/health`` before the
    clock starts: creating an httpx client costs ~25 ms of client CPU here, and a shared
    client with a 100-connection pool costs the client ~10 ms CPU per request.
    """
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    issued = 0
    ready = 0
    go = trio.Event()
    clock = time.perf_counter
    headers = {"X-Api-Key": API_KEY, "Content-Type": "application/json"}
    start = 0.0
    deadline = math.inf
    # (daemon CPU s, its main (trio) thread's, this process's) when the clock starts:
    # client set-up is not counted.
    cpu_start = (0.0, 0.0, 0.0)

    def cpu_now() -> tuple[float, float, float]:
        if daemon_pid is None:
            return (0.0, 0.0, time.process_time())
        daemon = cpu_seconds(daemon_pid)
        return (daemon, cpu_seconds(daemon_pid, daemon_pid), time.process_time())

    async def worker() -> None:
        nonlocal issued, ready, start, deadline, cpu_start
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0) as client:
            (await client.get("/api/health")).raise_for_status()
            ready += 1
            if ready == concurrency:
                cpu_start = cpu_now()
                start = clock()
                deadline = start + time_box
                go.set()
            await go.wait()
            while issued < requests and clock() < deadline:
                issued += 1
                t0 = clock()
                try:
                    resp = await client.request(method, path, content=body)
                except httpx.HTTPError as exc:
                    statuses["error"] = statuses.get("error", 0) + 1
                    if len(errors) < MAX_ERRORS_KEPT:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = clock() - t0
                key = str(resp.status_code)
                statuses[key] = statuses.get(key, 0) + 1
                if resp.status_code == expect:
                    latencies.append(elapsed)
                elif len(errors) < MAX_ERRORS_KEPT:
                    errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    wall = clock() - start
    cpu_end = cpu_now()
    acked = len(latencies)
    per_ack = 1000 / max(acked, 1)
    return {
        "concurrency": concurrency,
        "requests": issued,
        "acked": acked,
        "failures": issued - acked,
        "statuses": statuses,
        "errors": errors,
        "seconds": round(wall, 3),
        "acked_per_s": acked / wall if wall else float("nan"),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "daemon_cpu_ms_per_ack": (cpu_end[0] - cpu_start[0]) * per_ack,
        "daemon_trio_thread_cpu_ms_per_ack": (cpu_end[1] - cpu_start[1]) * per_ack,
        "client_cpu_ms_per_ack": (cpu_end[2] - cpu_start[2]) * per_ack,
    }


def check_database(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        events = conn.execute(
            "SELECT COUNT(*) FROM events WHERE job_id IS NOT NULL AND type = 'job.transition'"
        ).fetchone()[0]
        shapes = conn.execute(
            "SELECT n, COUNT(*) FROM (SELECT COUNT(*) AS n FROM events "
            "WHERE job_id IS NOT NULL GROUP BY job_id) GROUP BY n"
        ).fetchall()
        return {"jobs": jobs, "job_events": events, "events_per_job": dict(shapes)}
    finally:
        conn.close()


# ------------------------------------------------------------------------- one mode


def run_modes(
    root: Path,
    modes: Sequence[str],
    levels: Sequence[int],
    requests: int,
    time_box: float,
    raw_seconds: float,
) -> list[dict[str, Any]]:
    """Measure every mode in ``modes`` (``synchronous`` values), interleaved.

    One daemon per mode, all started up front (an idle daemon uses no CPU). Level by
    level, each mode runs its HTTP floor and then its creations; the order of the modes
    alternates from level to level so that drifting load on the shared machine does not
    favour one. Raw baselines: half before, half after the REST levels, per mode.
    """
    dirs = {mode: root / mode.lower() for mode in modes}
    raw_before: dict[str, list[float]] = {}
    group: dict[str, dict[str, Any]] = {}
    for mode, folder in dirs.items():
        folder.mkdir()
        raw_before[mode] = raw_commit_loop(folder / "raw", mode, raw_seconds / 2)
        group[mode] = raw_group_commit(folder / "raw", mode, min(2.0, raw_seconds))

    rest: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    floor: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    warm: dict[str, dict[str, Any]] = {}
    startup: dict[str, float] = {}
    exit_status: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        daemons: dict[str, Daemon] = {}
        for mode, folder in dirs.items():
            config = farm_config(folder, printers=PRINTERS, port=free_port(), synchronous=mode)
            daemon = stack.enter_context(
                Daemon(config, folder / "farm.toml", folder / "daemon.log")
            )
            startup[mode] = daemon.start()
            warm[mode] = trio.run(http_load, daemon.url, 10, WARMUP_REQUESTS, 30.0)
            daemons[mode] = daemon
        for index, level in enumerate(levels):
            for mode in modes if index % 2 == 0 else list(reversed(modes)):
                daemon = daemons[mode]
                floor[mode].append(
                    trio.run(
                        functools.partial(
                            http_load,
                            daemon.url,
                            level,
                            max(1, requests // 4),
                            time_box / 4,
                            method="GET",
                            path="/api/health",
                            body=None,
                            expect=200,
                            daemon_pid=daemon.pid,
                        )
                    )
                )
                rest[mode].append(
                    trio.run(
                        functools.partial(
                            http_load, daemon.url, level, requests, time_box, daemon_pid=daemon.pid
                        )
                    )
                )
        for mode, daemon in daemons.items():
            exit_status[mode] = daemon.stop()

    results: list[dict[str, Any]] = []
    for mode, folder in dirs.items():
        raw_after = raw_commit_loop(folder / "raw", mode, raw_seconds / 2)
        raw = summarize_raw(raw_before[mode] + raw_after)
        raw["commits_per_s_before"] = summarize_raw(raw_before[mode])["commits_per_s"]
        raw["commits_per_s_after"] = summarize_raw(raw_after)["commits_per_s"]
        for result, base in zip(rest[mode], floor[mode], strict=True):
            result["ratio_vs_health_get"] = ratio(result["acked_per_s"], base["acked_per_s"])
            result["ratio_vs_raw_commit"] = ratio(result["acked_per_s"], raw["commits_per_s"])
            result["ratio_vs_raw_group"] = ratio(
                result["acked_per_s"], group[mode]["creations_per_s"]
            )
        db = check_database(folder / "data" / DB_NAME)
        expected = warm[mode]["acked"] + sum(r["acked"] for r in rest[mode])
        db["expected_jobs"] = expected
        db["ok"] = (
            db["jobs"] == expected
            and db["job_events"] == EVENTS_PER_CREATION * expected
            and set(db["events_per_job"]) <= {EVENTS_PER_CREATION}
        )
        results.append(
            {
                "synchronous": mode,
                "daemon_startup_s": round(startup[mode], 3),
                "daemon_exit_status": exit_status[mode],
                "warmup": {"requests": warm[mode]["requests"], "acked": warm[mode]["acked"]},
                "raw_commit": raw,
                "raw_group_commit": group[mode],
                "rest": rest[mode],
                "http_floor": floor[mode],
                "database_check": db,
            }
        )
    return results


# ------------------------------------------------------------------------- output


def print_mode(m: dict[str, Any]) -> None:
    raw, group = m["raw_commit"], m["raw_group_commit"]
    print(f"\n== synchronous = {m['synchronous']} ==")
    print(
        table(
            ["baseline (same disk, same run)", "per s", "p50 ms", "p99 ms", "n"],
            [
                [
                    "raw sqlite3: 1 row + COMMIT",
                    f"{raw['commits_per_s']:,.0f}",
                    f"{raw['p50_ms']:.3f}",
                    f"{raw['p99_ms']:.3f}",
                    raw["commits"],
                ],
                [
                    f"raw group commit: {group['batch']} x (1 job + 4 events)",
                    f"{group['creations_per_s']:,.0f}",
                    f"{group['commit_p50_ms']:.3f}",
                    f"{group['commit_p99_ms']:.3f}",
                    group["creations"],
                ],
            ],
        )
    )
    print(
        f"  (raw commits/s before the REST levels {raw['commits_per_s_before']:,.0f}, "
        f"after {raw['commits_per_s_after']:,.0f}; group-commit latency is per "
        f"{group['batch']}-creation transaction)"
    )
    before, after = raw["commits_per_s_before"], raw["commits_per_s_after"]
    if max(before, after) > 2 * min(before, after):
        print("  WARNING: the raw commit rate moved more than 2x during the run: the disk is busy")
    print()
    rows = [
        [
            r["concurrency"],
            f"{r['acked']}/{r['requests']}",
            r["failures"],
            f"{r['acked_per_s']:,.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['ratio_vs_raw_commit']:.3f}",
            f"{r['ratio_vs_raw_group']:.3f}",
            f"{r['ratio_vs_health_get']:.2f}",
            f"{r['daemon_cpu_ms_per_ack']:.2f}",
            f"{r['daemon_trio_thread_cpu_ms_per_ack']:.2f}",
            f"{r['client_cpu_ms_per_ack']:.2f}",
        ]
        for r in m["rest"]
    ]
    headers = ["POST /api/jobs, conc", "acked/sent", "fail", "acked/s", "p50 ms", "p99 ms"]
    headers += ["/raw commit", "/raw group", "/GET health"]
    headers += ["daemon CPU ms", "trio thread", "client CPU ms"]
    print(table(headers, rows))
    print()
    rows = [
        [
            f["concurrency"],
            f"{f['acked']}/{f['requests']}",
            f["failures"],
            f"{f['acked_per_s']:,.0f}",
            f"{f['p50_ms']:.2f}",
            f"{f['p99_ms']:.2f}",
            f"{f['daemon_cpu_ms_per_ack']:.2f}",
            f"{f['daemon_trio_thread_cpu_ms_per_ack']:.2f}",
            f"{f['client_cpu_ms_per_ack']:.2f}",
        ]
        for f in m["http_floor"]
    ]
    headers = ["GET /api/health, conc", "200/sent", "fail", "per s", "p50 ms", "p99 ms"]
    headers += ["daemon CPU ms", "trio thread", "client CPU ms"]
    print(table(headers, rows))
    print(
        "  (HTTP floor of the same daemon and client: no auth, no body, no database.\n"
        "   CPU columns, per acknowledged request: the daemon (all threads), its trio thread\n"
        "   alone, and this bench process (the client); all share the machine's cores)"
    )
    db = m["database_check"]
    print(
        f"  database after stop: {db['jobs']} jobs (expected {db['expected_jobs']}, incl. "
        f"{m['warmup']['acked']} warm-up), {db['job_events']} job events, events per job "
        f"{db['events_per_job']} -> {'OK' if db['ok'] else 'MISMATCH'}; daemon ready in "
        f"{m['daemon_startup_s']:.2f} s, exit status {m['daemon_exit_status']}"
    )
    for r in [*m["rest"], *m["http_floor"]]:
        for err in r["errors"]:
            print(f"  failure at concurrency {r['concurrency']}: {err}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--synchronous",
        choices=("FULL", "NORMAL", "both"),
        default="FULL",
        help="SQLite synchronous for the daemon and the baselines; 'both' runs FULL then "
        "NORMAL and prints the FULL/NORMAL ratio (default FULL)",
    )
    parser.add_argument("--requests", type=int, default=2000, help="POSTs per level (2000)")
    parser.add_argument("--time-box", type=float, default=10.0, help="max s per level (10)")
    parser.add_argument("--levels", default="1,10,100", help="concurrency levels (1,10,100)")
    parser.add_argument("--raw-seconds", type=float, default=3.0, help="raw commit loop s (3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if not levels or min(levels) < 1 or args.requests < 1 or args.time_box <= 0:
        parser.error("levels, --requests and --time-box must be positive")
    modes = ["FULL", "NORMAL"] if args.synchronous == "both" else [args.synchronous]

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-create-") as tmp:
        results = run_modes(
            Path(tmp), modes, levels, args.requests, args.time_box, args.raw_seconds
        )
    out: dict[str, Any] = {
        "bench": "create",
        "machine": machine(),
        "printers": PRINTERS,
        "dispatch_paused": True,
        "request": {"method": "POST", "path": "/api/jobs", "body": BODY.decode()},
        "rows_per_ack": {"jobs": 1, "events": EVENTS_PER_CREATION, "transactions": 1},
        "client": "trio tasks, one keep-alive httpx.AsyncClient (one connection) each, "
        "connections opened before the clock starts",
        "modes": results,
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
    }
    if len(results) == 2:
        full, normal = results
        out["full_over_normal"] = {
            "raw_commit": ratio(
                full["raw_commit"]["commits_per_s"], normal["raw_commit"]["commits_per_s"]
            ),
            "raw_group_commit": ratio(
                full["raw_group_commit"]["creations_per_s"],
                normal["raw_group_commit"]["creations_per_s"],
            ),
            "rest": {
                str(f["concurrency"]): {
                    "acked_per_s": ratio(f["acked_per_s"], n["acked_per_s"]),
                    "p50": ratio(f["p50_ms"], n["p50_ms"]),
                    "p99": ratio(f["p99_ms"], n["p99_ms"]),
                }
                for f, n in zip(full["rest"], normal["rest"], strict=True)
            },
        }
    failures = sum(r["failures"] for m in results for r in [*m["rest"], *m["http_floor"]])
    db_ok = all(m["database_check"]["ok"] for m in results)
    out["failures"] = failures
    out["database_ok"] = db_ok

    if args.json:
        print(json.dumps(jsonable(out), indent=2, allow_nan=False))
    else:
        print_report(out)
    return 0 if failures == 0 and db_ok else 1


def print_report(out: dict[str, Any]) -> None:
    m = out["machine"]
    print(
        f"bench_create: POST /api/jobs {out['request']['body']} -> 201; "
        f"{out['printers']} simulated printers, dispatch paused"
    )
    print(
        "each acknowledged creation = 1 job row + 4 event rows (created, validated, sliced, "
        "queued) in one transaction, committed before the 201"
    )
    print(
        f"client: {out['client']}; Python {m['python']}, {m['cpus']} CPUs, "
        f"load {m['loadavg_1m']} at start"
    )
    for mode in out["modes"]:
        print_mode(mode)
    if "full_over_normal" in out:
        r = out["full_over_normal"]
        print(
            "\n== FULL / NORMAL (levels interleaved; throughput ratio < 1 means FULL is slower) =="
        )
        rows = [["raw sqlite3 1 row + COMMIT", f"{r['raw_commit']:.2f}", "", ""]]
        rows.append(["raw group commit", f"{r['raw_group_commit']:.2f}", "", ""])
        rows += [
            [
                f"REST concurrency {c}",
                f"{v['acked_per_s']:.2f}",
                f"{v['p50']:.2f}",
                f"{v['p99']:.2f}",
            ]
            for c, v in r["rest"].items()
        ]
        print(table(["", "per s FULL/NORMAL", "p50 FULL/NORMAL", "p99 FULL/NORMAL"], rows))
    verdict = "OK" if out["database_ok"] else "FAILED"
    print(
        f"\nfailures: {out['failures']}; database check: {verdict}; whole run {out['seconds']} s; "
        f"load {out['loadavg_1m_end']} at end"
    )


if __name__ == "__main__":
    sys.exit(main())
