"""Benchmark: ``server.job_queue.status`` of the Moonraker facade against the bare stack's
floor, at 0, 100, 1,000 and 10,000 queued jobs, over HTTP keep-alive and the websocket;
then one queue change notified to 50 websocket clients.

Usage: ``.venv/bin/python bench/bench_moonraker.py [--requests 1000] [--rounds 5]
[--sizes 0,100,1000,10000] [--clients 50] [--moonraker DIR] [--json]``

Servers, each a child process on a free loopback port:

- ``printfarmd``: ``printfarmd serve``, 1 simulated printer, dispatch paused (the queue
  stays put), filled through ``POST /server/job_queue/job``;
- ``floor``: ``bench/floor_app.py``, a bare quart-trio + hypercorn app (nothing of
  printfarmd) answering ``GET /server/job_queue/status`` with the exact bytes printfarmd
  answered at that queue size, and every websocket frame with printfarmd's answer frame:
  what the framework costs to move the same bytes. Restarted for each queue size;
- ``moonraker`` (only with ``--moonraker DIR``): real Moonraker (v0.10, tornado) run from
  ``DIR`` (see ``bench/moonraker_side.py`` for preparing it), its gcodes folder holding the
  demo files, its queue filled the same way, loopback a trusted client (it checks no key;
  printfarmd checks its key on every request).

One client, one request at a time: ``http.client`` keep-alive for HTTP, one
``trio-websocket`` connection per server for JSON-RPC. The servers are measured in
**interleaved blocks** (``--rounds`` rounds; each round runs a block of ``--requests /
--rounds`` requests per server and transport, in a rotating order), so a burst of load on
this shared machine hits every server alike. Reported per case: median and p99 latency,
and the server's CPU time per request (``/proc/<pid>/stat``, all threads, over its
blocks): the figure least disturbed by other work on the machine. Ratios are
printfarmd / floor (and printfarmd / Moonraker) from the same run.

Notification fan-out (``--clients``, at the largest size up to 1,000 jobs): that many
authenticated websocket clients (and, as the baseline in the same run, one client); each
of ``--changes`` queue changes (``server.job_queue.jump`` of the last job, over HTTP)
must reach every client as one ``notify_job_queue_changed``; latency is from just before
the request is sent to each client's receipt. The clients share this process, so read
the ratio to the one-client run. (That each change is encoded once for all clients is
asserted by ``tests/test_moonraker_queue.py``, not here.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    API_KEY,
    REPO,
    cpu_seconds,
    farm_config,
    free_port,
    jsonable,
    machine,
    median,
    percentile,
    ratio,
    running_daemon,
    table,
    wait_http_ok,
)

HEADERS = {"X-Api-Key": API_KEY}
FLOOR_APP = Path(__file__).resolve().parent / "floor_app.py"
STATUS_PATH = "/server/job_queue/status"
STATUS_METHOD = "server.job_queue.status"
WARMUP = 30


# ---------------------------------------------------------------------------- servers


class Server:
    """One server under test: its port, its pid and how to speak to it."""

    def __init__(self, name: str, port: int, pid: int, headers: dict[str, str]) -> None:
        self.name = name
        self.port = port
        self.pid = pid
        self.headers = headers
        self.http: http.client.HTTPConnection | None = None
        self.ws: WebSocketConnection | None = None

    def connection(self) -> http.client.HTTPConnection:
        if self.http is None:
            self.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        return self.http

    def get(self, path: str) -> bytes:
        conn = self.connection()
        conn.request("GET", path, headers=self.headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{self.name} {path}: HTTP {resp.status} {body[:200]!r}")
        return body

    def post_json(self, path: str, body: Any) -> Any:
        conn = self.connection()
        conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={**self.headers, "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{self.name} POST {path}: HTTP {resp.status} {raw[:200]!r}")
        return json.loads(raw)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None


def queued(server: Server) -> int:
    return len(json.loads(server.get(STATUS_PATH))["result"]["queued_jobs"])


def fill_queue(server: Server, jobs: int) -> None:
    """Queue ``benchy_pla.gcode`` until ``server`` holds ``jobs`` queued jobs."""
    have = queued(server)
    while have < jobs:
        n = min(1000, jobs - have)
        server.post_json("/server/job_queue/job", {"filenames": ["benchy_pla.gcode"] * n})
        have = queued(server)
    if have != jobs:
        raise RuntimeError(f"{server.name}: {have} queued jobs, wanted {jobs}")


class Floor:
    """``floor_app.py`` answering ``body`` and ``frame``; started on ``__enter__``."""

    def __init__(self, folder: Path, body: bytes, frame: str) -> None:
        self.folder = folder
        (folder / "floor-body.json").write_bytes(body)
        (folder / "floor-frame.json").write_text(frame)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(FLOOR_APP),
                str(self.port),
                str(self.folder / "floor-body.json"),
                str(self.folder / "floor-frame.json"),
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http_ok(self.port, proc=self.proc)
        return Server("floor", self.port, self.proc.pid, {})

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


# ---------------------------------------------------------------------------- timing


def http_block(server: Server, n: int) -> list[float]:
    # A fresh keep-alive connection per block (servers close idle ones after a few
    # seconds, hypercorn after 5 s), opened by one request that is not timed.
    server.close()
    server.get(STATUS_PATH)
    out = []
    conn = server.connection()
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", STATUS_PATH, headers=server.headers)
        resp = conn.getresponse()
        body = resp.read()
        out.append(time.perf_counter() - t0)
        if resp.status != 200 or not body:
            raise RuntimeError(f"{server.name}: HTTP {resp.status} {body[:200]!r}")
    return out


async def ws_block(server: Server, n: int, ids: Callable[[], int]) -> list[float]:
    assert server.ws is not None
    out = []
    for _ in range(n):
        msg = '{"jsonrpc":"2.0","method":"%s","id":%d}' % (STATUS_METHOD, ids())  # noqa: UP031
        t0 = time.perf_counter()
        await server.ws.send_message(msg)
        reply = await server.ws.get_message()
        while '"id"' not in reply:  # a notification (no id), not the answer
            reply = await server.ws.get_message()
        out.append(time.perf_counter() - t0)
        if '"result"' not in reply:
            raise RuntimeError(f"{server.name}: {str(reply)[:200]}")
    return out


async def open_ws(server: Server) -> WebSocketConnection:
    url = f"ws://127.0.0.1:{server.port}/websocket"
    headers = [(k.encode(), v.encode()) for k, v in server.headers.items()]
    return await _enter(
        open_websocket_url(
            url, extra_headers=headers, max_message_size=1 << 26, receive_buffer_size=1 << 20
        )
    )


_STACKS: list[Any] = []


async def _enter(cm: Any) -> Any:
    value = await cm.__aenter__()
    _STACKS.append(cm)
    return value


async def _close_all() -> None:
    while _STACKS:
        await _STACKS.pop().__aexit__(None, None, None)


async def measure_size(servers: list[Server], requests: int, rounds: int) -> dict[str, Any]:
    """Interleaved blocks for every server and transport; latencies and CPU per request."""
    counter = iter(range(10**9))

    def next_id() -> int:
        return next(counter)

    for s in servers:
        s.ws = await open_ws(s)
        http_block(s, WARMUP)
        await ws_block(s, WARMUP, next_id)
    per_block = max(1, requests // rounds)
    times: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], float] = {}
    count: dict[tuple[str, str], int] = {}
    for r in range(rounds):
        order = servers[r % len(servers) :] + servers[: r % len(servers)]
        for s in order:
            for transport in ("http", "ws"):
                key = (s.name, transport)
                c0 = cpu_seconds(s.pid)
                if transport == "http":
                    got = http_block(s, per_block)
                else:
                    got = await ws_block(s, per_block, next_id)
                cpu[key] = cpu.get(key, 0.0) + cpu_seconds(s.pid) - c0
                times.setdefault(key, []).extend(got)
                count[key] = count.get(key, 0) + per_block
    for s in servers:
        assert s.ws is not None
        await s.ws.aclose()
        s.ws = None
    out: dict[str, Any] = {}
    for (name, transport), values in times.items():
        out.setdefault(name, {})[transport] = {
            "median_ms": median(values) * 1000,
            "p99_ms": percentile(values, 99) * 1000,
            "cpu_ms_per_request": cpu[(name, transport)] * 1000 / count[(name, transport)],
            "requests": count[(name, transport)],
        }
    return out


# ---------------------------------------------------------------------------- fan-out


async def fanout(server: Server, clients: int, changes: int) -> dict[str, Any]:
    """``changes`` queue changes, each to ``clients`` websockets: latency per delivery."""
    conns = [await open_ws(server) for _ in range(clients)]
    ids = json.loads(server.get(STATUS_PATH))["result"]["queued_jobs"]
    if len(ids) < 2:
        raise RuntimeError("the fan-out needs at least 2 queued jobs")
    got: list[list[float]] = [[] for _ in conns]
    sent: list[float] = []
    arrived = [0]
    wake = trio.Event()

    async def read(i: int, ws: WebSocketConnection) -> None:
        while True:
            msg = await ws.get_message()
            if '"notify_job_queue_changed"' in msg[:80]:
                got[i].append(time.perf_counter())
                arrived[0] += 1
                wake.set()

    async with trio.open_nursery() as nursery:
        for i, ws in enumerate(conns):
            nursery.start_soon(read, i, ws)
        c0 = cpu_seconds(server.pid)
        for k in range(changes):
            job = ids[-1 - (k % (len(ids) - 1))]["job_id"]
            sent.append(time.perf_counter())
            # Blocking HTTP in this trio process: the readers run once it returns.
            server.post_json("/server/job_queue/jump", {"job_id": job})
            with trio.fail_after(60):
                while arrived[0] < clients * (k + 1):
                    await wake.wait()
                    wake = trio.Event()
        cpu = cpu_seconds(server.pid) - c0
        nursery.cancel_scope.cancel()
    for ws in conns:
        await ws.aclose()
    lat = [(t - sent[k]) * 1000 for g in got for k, t in enumerate(g)]
    to_all = [(max(g[k] for g in got) - sent[k]) * 1000 for k in range(changes)]
    return {
        "clients": clients,
        "changes": changes,
        "delivery_p50_ms": median(lat),
        "delivery_p99_ms": percentile(lat, 99),
        "to_all_p99_ms": percentile(to_all, 99),
        "daemon_cpu_ms_per_change": cpu * 1000 / changes,
    }


# ---------------------------------------------------------------------------- main


def start_moonraker(folder: Path, where: Path) -> tuple[subprocess.Popen[bytes], Server]:
    from moonraker_side import start

    proc, port = start(folder, where)
    return proc, Server("moonraker", port, proc.pid, {})


async def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"machine": machine(), "sizes": {}, "args": vars(args)}
    config = farm_config(folder, printers=1, port=free_port(), dispatch_paused=True)
    moon_proc = None
    with running_daemon(config, folder) as daemon:
        ours = Server("printfarmd", daemon.port, daemon.pid, HEADERS)
        others: list[Server] = []
        if args.moonraker:
            moon_proc, moon = start_moonraker(folder, Path(args.moonraker))
            others.append(moon)
        # The fan-out runs at the largest size up to 1,000 jobs (a jump keeps the count).
        fan_jobs = max(s for s in sizes if s <= 1000)
        try:
            for jobs in sizes:
                for s in (ours, *others):
                    fill_queue(s, jobs)
                body = ours.get(STATUS_PATH)
                ours.ws = await open_ws(ours)
                await ours.ws.send_message(
                    '{"jsonrpc":"2.0","method":"%s","id":1}' % STATUS_METHOD  # noqa: UP031
                )
                frame = str(await ours.ws.get_message())
                await ours.ws.aclose()
                ours.ws = None
                # Fewer requests where one takes many ms (10,000 jobs: ~1.3 MB a body).
                n = args.requests if jobs <= 1000 else max(args.rounds * 10, args.requests // 10)
                with Floor(folder, body, frame) as floor:
                    cases = await measure_size([ours, floor, *others], n, args.rounds)
                    floor.close()
                cases["body_bytes"] = len(body)
                results["sizes"][jobs] = cases
                print(f"  measured {jobs} jobs", file=sys.stderr)
                if jobs == fan_jobs:
                    results["fanout"] = {
                        "jobs": fan_jobs,
                        "one": await fanout(ours, 1, args.changes),
                        "many": await fanout(ours, args.clients, args.changes),
                    }
        finally:
            await _close_all()
            for s in (ours, *others):
                s.close()
            if moon_proc is not None:
                moon_proc.terminate()
                moon_proc.wait(timeout=15)
    results["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    return results


def ms(x: float) -> str:
    return f"{x:.3f}"


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"bench_moonraker: Python {m['python']}, {m['cpus']} CPUs, load {m['loadavg_1m']} at "
        f"start, {r['loadavg_1m_end']} at end; {r['args']['rounds']} interleaved rounds"
    )
    rows = []
    for jobs, cases in r["sizes"].items():
        ours, floor = cases["printfarmd"], cases["floor"]
        moon = cases.get("moonraker")
        for transport in ("http", "ws"):
            o, f = ours[transport], floor[transport]
            row = [
                f"{transport} {jobs} jobs",
                ms(o["median_ms"]),
                ms(o["p99_ms"]),
                ms(f["median_ms"]),
                f"{ratio(o['median_ms'], f['median_ms']):.2f}",
                f"{o['cpu_ms_per_request']:.3f}",
                f"{f['cpu_ms_per_request']:.3f}",
                f"{ratio(o['cpu_ms_per_request'], f['cpu_ms_per_request']):.2f}",
            ]
            if moon is not None:
                mm = moon[transport]
                row += [ms(mm["median_ms"]), f"{ratio(o['median_ms'], mm['median_ms']):.2f}"]
            rows.append(row)
    headers = [
        "job_queue.status",
        "median ms",
        "p99 ms",
        "floor median",
        "ours/floor",
        "CPU ms/req",
        "floor CPU",
        "CPU ours/floor",
    ]
    if any("moonraker" in c for c in r["sizes"].values()):
        headers += ["Moonraker median", "ours/Moonraker"]
    print(table(headers, rows))
    print("floor: bare quart-trio + hypercorn answering printfarmd's own bytes, same run")
    fan = r.get("fanout")
    if fan:
        print()
        rows = [
            [
                f"{c['clients']} client(s)",
                ms(c["delivery_p50_ms"]),
                ms(c["delivery_p99_ms"]),
                ms(c["to_all_p99_ms"]),
                f"{c['daemon_cpu_ms_per_change']:.2f}",
            ]
            for c in (fan["one"], fan["many"])
        ]
        print(f"notify_job_queue_changed at {fan['jobs']} jobs, {fan['one']['changes']} changes")
        print(table(["clients", "delivery p50 ms", "p99 ms", "to all p99 ms", "CPU ms"], rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=1000, help="per server, transport, size")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="0,100,1000,10000")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--moonraker", default="", help="folder with venv/ and src/ of Moonraker")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-moonraker-") as tmp:
        results = trio.run(run, args, Path(tmp))
    if args.json:
        print(json.dumps(jsonable(results), indent=2))
    else:
        print_report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
