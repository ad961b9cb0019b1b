"""Benchmark: the same farm on SQLite and on PostgreSQL, same machine, one run (issue 18).

Usage: ``.venv/bin/python bench/bench_backends.py [--requests 1000] [--concurrency 10]
[--dispatches 40] [--dsn postgresql://...] [--json]``

Starts ``printfarmd serve`` children side by side, one per backend (``storage.
synchronous = "FULL"`` on all: a 201 means committed; PostgreSQL from Debian's package
in a temp folder via ``tests/pg_server.py`` unless ``--dsn`` names an empty database),
each with 4 simulated printers. Without ``--dsn`` a third daemon runs on PostgreSQL as a
node of a cluster (``server.node_id``, issue 18, in a database of its own): every write
then also takes the farm's event-order lock, checks the lease and notifies. Two measures,
the backends interleaved round by round
(the machine is shared and noisy):

- **acknowledged creations per second**: ``--concurrency`` keep-alive clients POST
  ``/api/jobs`` (dispatch paused, so nothing prints) until ``--requests`` answers, every
  one a 201;
- **dispatch latency**: with dispatch on and the printers idle, one job at a time; the
  time from its transition to ``created`` to its transition to ``printing``, both stamped by the
  daemon (p50, p90, max over ``--dispatches`` jobs).

The ratio to read is PostgreSQL / SQLite on the same machine. Exits 1 on any non-201.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from printfarmd.config import StorageBackend
from tests.conftest import DaemonProcess, free_port, make_config, sim_printer, write_config
from tests.pg_server import running_server

ROUNDS = 3


def start_daemon(folder: Path, backend: str, dsn: str) -> DaemonProcess:
    printers = tuple(sim_printer(f"sim-{k}", ("PLA",), speed=3000.0) for k in range(1, 5))
    config = make_config(folder, printers, port=free_port(), dispatch_paused=True)
    if backend != "sqlite":
        storage = msgspec.structs.replace(
            config.storage, backend=StorageBackend.POSTGRESQL, dsn=dsn
        )
        config = msgspec.structs.replace(config, storage=storage)
    if backend == "cluster":
        config = msgspec.structs.replace(
            config, server=msgspec.structs.replace(config.server, node_id="bench-1")
        )
    path = write_config(config, folder / "farm.toml")
    d = DaemonProcess(path, config.server.port, folder / "daemon.log")
    d.start(timeout=60)
    return d


async def creations(d: DaemonProcess, requests: int, concurrency: int) -> tuple[float, int]:
    done = 0
    failures = 0
    headers = {"X-Api-Key": "test-key-0123456789abcdef"}

    async def worker() -> None:
        nonlocal done, failures
        async with httpx.AsyncClient(base_url=d.url, headers=headers, timeout=30) as c:
            await c.get("/api/health")
            while done < requests:
                done += 1
                r = await c.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
                failures += r.status_code != 201

    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for _ in range(concurrency):
            n.start_soon(worker)
    return done / (time.perf_counter() - t0), failures


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def dispatch_latencies(d: DaemonProcess, count: int) -> list[float]:
    """Created -> printing for ``count`` jobs, one at a time, on idle printers."""
    out: list[float] = []
    with d.client() as c:
        # Empty the queue left by the creation rounds; dispatch on.
        while True:
            page = c.get("/api/jobs", params={"state": "queued", "limit": 1000}).json()
            if not page["jobs"]:
                break
            for job in page["jobs"]:
                c.post(f"/api/jobs/{job['id']}/cancel")
        assert c.post("/api/orchestrator/resume").status_code in (200, 204)
        for _ in range(count):
            job = c.post("/api/jobs", json={"filename": "benchy_pla.gcode"}).json()["jobs"][0]
            deadline = time.monotonic() + 30
            printing = None
            while printing is None and time.monotonic() < deadline:
                events = c.get("/api/events/history", params={"after": 0, "job": job["id"]}).json()[
                    "events"
                ]
                created = next(e["at"] for e in events if e["to_state"] == "created")
                printing = next((e["at"] for e in events if e.get("to_state") == "printing"), None)
                if printing is None:
                    time.sleep(0.01)
            assert printing is not None, "a job never started"
            out.append(_seconds(printing) - _seconds(created))
            # Free the printer for the next job (cancel the print, clear the plate).
            c.post(f"/api/jobs/{job['id']}/cancel")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                printers = c.get("/api/printers").json()["printers"]
                if all(p["state"] == "idle" for p in printers):
                    break
                # A cancel during the hand-over stops the print when the upload returns:
                # the plate may need clearing only then.
                for p in printers:
                    if p["state"] == "awaiting_clear":
                        c.post(f"/api/printers/{p['id']}/clear")
                time.sleep(0.01)
            else:
                raise AssertionError("a printer did not come free after its job's cancel")
        assert c.post("/api/orchestrator/pause").status_code in (200, 204)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per round and backend")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--dispatches", type=int, default=40)
    parser.add_argument("--dsn", help="an empty PostgreSQL database (default: start one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    failures = 0
    with contextlib.ExitStack() as stack:
        dsns = {"postgresql": args.dsn or ""}
        if not args.dsn:
            server = stack.enter_context(running_server())
            dsns["postgresql"] = server.fresh_dsn()
            # A database of its own: the single daemon's advisory lock is database-wide.
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench_cluster")
            dsns["cluster"] = server.dsn("bench_cluster")
        root = Path(tempfile.mkdtemp(prefix="bench-backends-"))
        stack.callback(shutil.rmtree, root, True)
        daemons = {}
        for backend in ("sqlite", *dsns):
            (root / backend).mkdir()
            daemons[backend] = start_daemon(root / backend, backend, dsns.get(backend, ""))
            stack.callback(daemons[backend].kill)
        rates: dict[str, list[float]] = {b: [] for b in daemons}
        for rnd in range(ROUNDS):
            order = list(daemons) if rnd % 2 == 0 else list(reversed(daemons))
            for backend in order:
                rate, bad = trio.run(creations, daemons[backend], args.requests, args.concurrency)
                rates[backend].append(rate)
                failures += bad
        for backend, d in daemons.items():
            lat = dispatch_latencies(d, args.dispatches)
            result[backend] = {
                "creations_per_s": round(statistics.median(rates[backend]), 1),
                "creations_per_s_rounds": [round(r, 1) for r in rates[backend]],
                "dispatch_ms_p50": round(statistics.median(lat) * 1000, 1),
                "dispatch_ms_p90": round(statistics.quantiles(lat, n=10)[-1] * 1000, 1),
                "dispatch_ms_max": round(max(lat) * 1000, 1),
            }
    pg, lite = result["postgresql"], result["sqlite"]
    result["ratio_creations_pg_over_sqlite"] = round(
        pg["creations_per_s"] / lite["creations_per_s"], 2
    )
    if "cluster" in result:
        result["ratio_creations_cluster_over_pg"] = round(
            result["cluster"]["creations_per_s"] / pg["creations_per_s"], 2
        )
    result["non_201"] = failures
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for backend in daemons:
            r = result[backend]
            print(
                f"{backend:<11} {r['creations_per_s']:>8.1f} creations/s (rounds "
                f"{r['creations_per_s_rounds']}), dispatch p50 {r['dispatch_ms_p50']} ms, "
                f"p90 {r['dispatch_ms_p90']} ms, max {r['dispatch_ms_max']} ms"
            )
        print(f"PostgreSQL / SQLite creations: {result['ratio_creations_pg_over_sqlite']}")
        if "cluster" in result:
            print(
                "PostgreSQL as a cluster node / PostgreSQL alone, creations: "
                f"{result['ratio_creations_cluster_over_pg']}"
            )
        print(f"non-201 answers: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
