"""Benchmark: SSE fan-out to many clients against a single-client baseline, same run.

Usage: ``.venv/bin/python bench/bench_sse.py [--clients 500] [--events 100] [--json]``

Starts ``printfarmd serve`` (one simulated printer, dispatch paused) as a subprocess on a
free loopback port, then for each client count (1, the baseline; then ``--clients``):

- opens that many ``GET /api/events?type=job.reprioritized`` streams (raw sockets, one trio
  process) and waits until every one is subscribed;
- reads the daemon's RSS (``VmRSS`` in ``/proc/<pid>/status``);
- makes ``--events`` changes (``POST /api/orchestrator/reprioritize``, every ``--gap`` s),
  each one event, and records when each client receives each event.

The daemon's CPU time per event and per delivery (``/proc/<pid>/stat``, all its work
while the events are made and delivered, divided by the events, and by events x streams)
is the figure least disturbed by the clients sharing the machine; the bench's own CPU per
event is printed too (the clients share this one process and one core).

Each measured client only finds the event ids in what it receives (a regular expression
over the raw bytes, so 500 of them can keep up); one extra reference stream parses every
message for its ``at``. Latency of one delivery = receive time - the event's ``at`` (the
wall time of the change, taken before its commit, so it includes the commit's fsync).
"to all" = per event, the latency to the *last* client.

Floors (skip with ``--no-floor``): ``bench/floor_app.py`` streaming the same events from a
bare quart-trio app, as it comes ("floor") and with printfarmd's heap policy
("floor+heap", issue 17: ``printfarmd/heap.py``), each in its own process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from printfarmd.config import (
    Config,
    PrinterConfig,
    SchedulerConfig,
    ServerConfig,
    StorageConfig,
    dump_config,
)
from tests.sse_client import SSEClient, StreamEnded

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789"
HEADERS = {"X-Api-Key": KEY}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@attrs.frozen
class Result:
    server: str
    clients: int
    events: int
    rss_idle_mb: float
    rss_connected_mb: float
    delivery_p50_ms: float
    delivery_p99_ms: float
    all_p50_ms: float
    all_p99_ms: float
    ack_p50_ms: float
    ack_p99_ms: float
    daemon_cpu_ms_per_event: float
    daemon_cpu_us_per_delivery: float
    client_cpu_ms_per_event: float
    missed: int


_ID = re.compile(rb"(?:^|\n)id: (\d+)\n")


async def measure(
    url: str, pid: int, n_clients: int, n_events: int, gap: float, server: str = "printfarmd"
) -> Result:
    rss_idle = rss_mb(pid)
    path = "/api/events?type=job.reprioritized"
    clients: list[SSEClient] = []
    for _ in range(n_clients):
        c = await SSEClient.open(url, path, HEADERS)
        assert c.status == 200, c.status
        with trio.fail_after(10):
            await c.next()  # the "retry:" preamble: the stream is subscribed
        clients.append(c)
    # One more client parses every message in full, once per event, for its ``at``
    # (the commit-time wall clock); the measured clients only find the ids.
    reference = await SSEClient.open(url, path, HEADERS)
    with trio.fail_after(10):
        await reference.next()
    rss_connected = rss_mb(pid)
    received: list[dict[int, float]] = [{} for _ in clients]
    sent_at: dict[int, float] = {}
    last_seq: list[int] = [0]
    done = trio.Event()

    async def read(i: int, c: SSEClient) -> None:
        got = received[i]
        tail = b""
        while True:
            data = await c.stream.receive_some(65536)
            if not data:
                return
            now = time.time()
            text = tail + data
            for m in _ID.finditer(text):
                got.setdefault(int(m.group(1)), now)
            tail = text[-24:]

    async def read_reference() -> None:
        try:
            while True:
                body = (await reference.next_message()).json()
                sent_at[body["seq"]] = parse_at(body["at"])
        except StreamEnded:
            return

    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as api:
        job = "0123456789ABCDEF"
        if server == "printfarmd":
            r = await api.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
            job = r.json()["jobs"][0]["id"]
        async with trio.open_nursery() as nursery:
            for i, c in enumerate(clients):
                nursery.start_soon(read, i, c)
            nursery.start_soon(read_reference)
            cpu0 = cpu_seconds(pid)
            own0 = time.process_time()
            acked: list[float] = []
            for k in range(n_events):
                r = await api.post(
                    "/api/orchestrator/reprioritize", json={"jobId": job, "priority": k % 50}
                )
                acked.append(time.time())
                assert r.status_code == 200, r.text
                await trio.sleep(gap)
            if server == "printfarmd":
                status = (await api.get("/api/orchestrator/status")).json()
                last_seq[0] = status["last_event_seq"]
            else:
                last_seq[0] = r.json()["seq"]
            with trio.move_on_after(30):
                while not all(last_seq[0] in got for got in received):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            cpu = cpu_seconds(pid) - cpu0
            own = time.process_time() - own0
            done.set()
            nursery.cancel_scope.cancel()
    for c in [*clients, reference]:
        await c.aclose()
    per_delivery: list[float] = []
    to_all: list[float] = []
    # The change's answer came back this long after its ``at`` (commit, publish, answer).
    ats = [sent_at[q] for q in sorted(sent_at)]
    ack = [(t - at) * 1000 for t, at in zip(acked, ats, strict=False)]
    missed = 0
    for seq, at in sent_at.items():
        times = [got[seq] for got in received if seq in got]
        missed += n_clients - len(times)
        per_delivery += [(t - at) * 1000 for t in times]
        if len(times) == n_clients:
            to_all.append((max(times) - at) * 1000)
    return Result(
        server=server,
        clients=n_clients,
        events=len(sent_at),
        rss_idle_mb=round(rss_idle, 1),
        rss_connected_mb=round(rss_connected, 1),
        delivery_p50_ms=round(statistics.median(per_delivery), 2),
        delivery_p99_ms=round(pct(per_delivery, 99), 2),
        all_p50_ms=round(statistics.median(to_all), 2),
        all_p99_ms=round(pct(to_all, 99), 2),
        ack_p50_ms=round(statistics.median(ack), 2) if ack else float("nan"),
        ack_p99_ms=round(pct(ack, 99), 2) if ack else float("nan"),
        daemon_cpu_ms_per_event=round(cpu * 1000 / n_events, 2),
        daemon_cpu_us_per_delivery=round(cpu * 1e6 / (n_events * (n_clients + 1)), 1),
        client_cpu_ms_per_event=round(own * 1000 / n_events, 2),
        missed=missed,
    )


def start_daemon(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = Config(
        server=ServerConfig(host="127.0.0.1", port=port, api_key=KEY),
        storage=StorageConfig(data_dir=str(tmp / "data"), gcodes_dir=str(REPO / "demo/gcodes")),
        scheduler=SchedulerConfig(dispatch_paused=True),
        printers=(PrinterConfig(id="p1", materials=("PLA",)),),
        base_dir=tmp,
    )
    path = tmp / "bench.toml"
    path.write_text(dump_config(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "printfarmd", "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "daemon.log", "wb"),  # noqa: SIM115 - owned by the child
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/health", timeout=1).json()["status"] == "ok":
                return proc, url
        except (httpx.HTTPError, ValueError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("daemon did not start:\n" + (tmp / "daemon.log").read_text())


def start_floor(tmp: Path, heap: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """``bench/floor_app.py``: the same streams from a bare quart-trio + hypercorn app;
    ``heap``: with printfarmd's heap policy (``FLOOR_HEAP=1``)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "floor_app.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"floor-{int(heap)}.log", "wb"),  # noqa: SIM115 - owned by the child
        cwd=REPO,
        env={**os.environ, "FLOOR_HEAP": "1" if heap else "0"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/health", timeout=1).json()["status"] == "ok":
                return proc, url
        except (httpx.HTTPError, ValueError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("floor did not start:\n" + (tmp / f"floor-{int(heap)}.log").read_text())


def row(r: Result) -> str:
    return (
        f"{r.server:>10} {r.clients:>7} {r.delivery_p50_ms:>10.2f} ms {r.delivery_p99_ms:>7.2f} ms "
        f"{r.all_p50_ms:>8.2f} ms {r.all_p99_ms:>7.2f} ms {r.rss_idle_mb:>6.1f} MB "
        f"{r.rss_connected_mb:>7.1f} MB {r.daemon_cpu_ms_per_event:>7.2f} ms "
        f"{r.daemon_cpu_us_per_delivery:>8.1f} us {r.client_cpu_ms_per_event:>9.2f} ms "
        f"{r.missed:>7} {r.ack_p50_ms:>8.2f} ms {r.ack_p99_ms:>8.2f} ms"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between changes")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare-stack floor")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_daemon(Path(tmp))
        floors = (
            {}
            if args.no_floor
            else {
                "floor": start_floor(Path(tmp)),
                "floor+heap": start_floor(Path(tmp), heap=True),
            }
        )
        try:
            for n in (1, args.clients):
                results.append(trio.run(measure, url, proc.pid, n, args.events, args.gap))
                for name, (floor_proc, floor_url) in floors.items():
                    results.append(
                        trio.run(measure, floor_url, floor_proc.pid, n, args.events, args.gap, name)
                    )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            for floor_proc, _ in floors.values():
                floor_proc.terminate()
                floor_proc.wait(timeout=30)
    ours = [r for r in results if r.server == "printfarmd"]
    base, many = ours
    if args.json:
        print(
            json.dumps(
                {
                    "machine": platform.platform(),
                    "cpus": os.cpu_count(),
                    "results": [attrs.asdict(r) for r in results],
                }
            )
        )
        return 0
    print(f"SSE fan-out, {platform.machine()} x{os.cpu_count()}, {args.events} events each run")
    print(
        f"{'server':>10} {'clients':>7} {'delivery p50':>13} {'p99':>10} {'to all p50':>11} "
        f"{'p99':>10} {'RSS idle':>9} {'RSS conn.':>10} {'CPU/event':>10} {'CPU/deliv.':>11} "
        f"{'bench CPU/ev':>12} {'missed':>7} {'answer p50':>11} {'p99':>11}"
    )
    for r in results:
        print(row(r))
    per_client_kb = (many.rss_connected_mb - base.rss_connected_mb) * 1024 / (many.clients - 1)
    print(
        f"ratio {many.clients}/1: delivery p50 x{many.delivery_p50_ms / base.delivery_p50_ms:.1f}, "
        f"to-all p99 x{many.all_p99_ms / base.all_p99_ms:.1f}; "
        f"RSS +{many.rss_connected_mb - base.rss_connected_mb:.1f} MB "
        f"(~{per_client_kb:.0f} KB per extra client)"
    )
    for name in ("floor", "floor+heap"):
        same = [r for r in results if r.server == name]
        if same:
            fl = same[-1]
            print(
                f"printfarmd / {name} at {many.clients} clients: delivery p99 "
                f"{many.delivery_p99_ms / fl.delivery_p99_ms:.2f}x, CPU per delivery "
                f"{many.daemon_cpu_us_per_delivery / fl.daemon_cpu_us_per_delivery:.2f}x"
            )
    return 0 if all(r.missed == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
