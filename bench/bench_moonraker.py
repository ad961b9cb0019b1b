"""Benchmark: ``server.job_queue.status`` of the Moonraker facade, 0 and 1000 queued jobs,
over HTTP keep-alive and over the websocket: median and p99 latency.

Usage: ``.venv/bin/python bench/bench_moonraker.py [--requests 2000] [--jobs 1000] [--json]``

Starts ``printfarmd serve`` as a child process (temp data dir, 1 simulated printer,
dispatch paused so the queue stays put). One client, one request at a time:

- HTTP: one ``http.client`` keep-alive connection, ``GET /server/job_queue/status``;
  ``http+gzip`` the same with ``Accept-Encoding: gzip`` (as browsers send; bodies over
  16 KiB are gzipped), decompressed by the client inside the timing;
- websocket: one ``trio-websocket`` connection, the JSON-RPC request, wait for its answer.

Baselines, same run, same daemon and client: ``GET /api/health`` (HTTP floor of the
stack) and ``server.connection.id`` over the websocket (constant tiny answer). The
Moonraker figures from the issue (same machine class) are printed alongside:
0.55 / 2.1 ms (HTTP, 0 / 1000 jobs), 0.19 / 2.4 ms (websocket).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    API_KEY,
    farm_config,
    free_port,
    jsonable,
    machine,
    median,
    percentile,
    running_daemon,
    table,
)

MOONRAKER_MS = {("http", 0): 0.55, ("http", 1000): 2.1, ("ws", 0): 0.19, ("ws", 1000): 2.4}
HEADERS = {"X-Api-Key": API_KEY}


def http_times(port: int, path: str, n: int, gzip: bool = False) -> list[float]:
    """Latencies of ``n`` GETs on one keep-alive connection; with ``gzip`` the client
    asks for (and decompresses, inside the timing) a gzipped body, as browsers do."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {**HEADERS, "Accept-Encoding": "gzip"} if gzip else HEADERS
    out: list[float] = []
    for i in range(n + 50):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.getheader("Content-Encoding") == "gzip":
            body = zlib.decompress(body, 31)
        dt = time.perf_counter() - t0
        if resp.status != 200 or not body:
            raise RuntimeError(f"{path}: HTTP {resp.status} {body[:200]!r}")
        if i >= 50:  # warm-up
            out.append(dt)
    conn.close()
    return out


def ws_times(port: int, method: str, n: int) -> list[float]:
    async def run() -> list[float]:
        out: list[float] = []
        url = f"ws://127.0.0.1:{port}/websocket"
        async with open_websocket_url(
            url,
            extra_headers=[(b"X-Api-Key", API_KEY.encode())],
            max_message_size=1 << 24,
            receive_buffer_size=1 << 18,
        ) as ws:
            for i in range(n + 50):
                msg = json.dumps({"jsonrpc": "2.0", "method": method, "id": i})
                t0 = time.perf_counter()
                await ws.send_message(msg)
                reply = await ws.get_message()
                dt = time.perf_counter() - t0
                if '"result"' not in reply[:40] and '"result"' not in reply:
                    raise RuntimeError(f"{method}: {reply[:200]}")
                if i >= 50:
                    out.append(dt)
        return out

    return trio.run(run)


def fill_queue(port: int, jobs: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    names = ["benchy_pla.gcode"] * jobs
    conn.request(
        "POST",
        "/server/job_queue/job",
        body=json.dumps({"filenames": names}),
        headers={**HEADERS, "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    body = json.loads(resp.read())
    if resp.status != 200 or len(body["result"]["queued_jobs"]) != jobs:
        raise RuntimeError(f"could not queue {jobs} jobs: {resp.status}")
    conn.close()


def ms(x: float) -> str:
    return f"{x * 1000:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, Any] = {"machine": machine(), "requests": args.requests, "cases": []}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-moonraker-") as tmp:
        config = farm_config(Path(tmp), printers=1, port=free_port(), dispatch_paused=True)
        with running_daemon(config, Path(tmp)) as daemon:
            port = daemon.port
            for jobs in (0, args.jobs):
                if jobs:
                    fill_queue(port, jobs)
                floors = {
                    "http": http_times(port, "/api/health", args.requests),
                    "ws": ws_times(port, "server.connection.id", args.requests),
                }
                cases = {
                    "http": http_times(port, "/server/job_queue/status", args.requests),
                    "ws": ws_times(port, "server.job_queue.status", args.requests),
                    "http+gzip": http_times(
                        port, "/server/job_queue/status", args.requests, gzip=True
                    ),
                }
                floors["http+gzip"] = floors["http"]
                for transport, times in cases.items():
                    med, p99 = median(times), percentile(times, 99)
                    ref = MOONRAKER_MS.get((transport.split("+")[0], jobs))
                    floor = median(floors[transport])
                    rows.append(
                        [
                            f"{transport} {jobs} jobs",
                            ms(med),
                            ms(p99),
                            ms(floor),
                            f"{ref:.2f}" if ref else "-",
                            f"{med * 1000 / ref:.2f}" if ref else "-",
                        ]
                    )
                    results["cases"].append(
                        {
                            "transport": transport,
                            "jobs": jobs,
                            "median_ms": med * 1000,
                            "p99_ms": p99 * 1000,
                            "floor_median_ms": floor * 1000,
                            "moonraker_ms": ref,
                        }
                    )
    if args.json:
        print(json.dumps(jsonable(results), indent=2))
    else:
        print(
            table(
                [
                    "server.job_queue.status",
                    "median ms",
                    "p99 ms",
                    "floor median ms",
                    "Moonraker ms",
                    "ours/Moonraker",
                ],
                rows,
            )
        )
        print("floor: GET /api/health (HTTP), server.connection.id (websocket), same run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
