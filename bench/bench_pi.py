"""Benchmark: RSS and CPU of the daemon under steady printing, by farm size (issue 8).

Usage: ``.venv/bin/python bench/bench_pi.py [--duration 600] [--sizes 20,50,200] [--json]``

Same run, side by side (all daemons run at the same time, so they share the machine's
conditions): an idle daemon with no printers (the baseline) and one daemon per size with
that many simulated printers printing without pause. Printers run at ``speed = 60`` (the
42-minute benchy takes 42 s), clear their own plates (``auto_clear``, no cool-down), and
the queue is filled at start with 10 jobs per printer plus a refill when it runs low, so
every printer prints the whole time: each print is a dispatch, progress reports every 5 s,
a finish and a plate clear, all committed with ``synchronous = FULL``.

Every 5 s the bench reads each daemon's ``VmRSS`` and CPU time from ``/proc``. Reported:
RSS after the warm-up (first 20 % of the run) and at the end, growth between the two,
mean CPU (% of one core) over the steady part, prints finished. Bytecode is precompiled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    API_KEY,
    REPO,
    Daemon,
    cpu_seconds,
    farm_config,
    free_port,
    rss_kb,
)

from printfarmd.config import SchedulerConfig, SimulatorOptions


def _farm(root: Path, printers: int) -> Any:
    cfg = farm_config(root, printers=printers, port=free_port(), dispatch_paused=False)
    sims = tuple(
        msgspec.structs.replace(
            p, auto_clear=True, simulator=SimulatorOptions(speed=60.0, report_interval=5.0)
        )
        for p in cfg.printers
    )
    return msgspec.structs.replace(
        cfg, printers=sims, scheduler=SchedulerConfig(cooldown_seconds=0.0)
    )


def _fill(client: httpx.Client, printers: int) -> None:
    """Keep about 10 jobs per printer queued (100 copies per request)."""
    if printers == 0:
        return
    queued = client.get("/api/jobs", params={"status": "queued", "limit": 1}).json()["total"]
    want = 10 * printers - queued
    while want > 0:
        n = min(100, want)
        r = client.post("/api/jobs", json={"filename": "benchy_pla.gcode", "copies": n})
        r.raise_for_status()
        want -= n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--sizes", default="20,50,200")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "printfarmd")], check=True)
    sizes = [0, *(int(s) for s in args.sizes.split(","))]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        daemons: dict[int, Daemon] = {}
        clients: dict[int, httpx.Client] = {}
        for n in sizes:
            root = Path(tmp) / f"farm-{n}"
            root.mkdir()
            d = stack.enter_context(Daemon(_farm(root, n), root / "farm.toml", root / "log"))
            d.start()
            daemons[n] = d
            clients[n] = stack.enter_context(
                httpx.Client(base_url=d.url, headers={"X-Api-Key": API_KEY}, timeout=30)
            )
            _fill(clients[n], n)
        samples: dict[int, list[tuple[float, int, float]]] = {n: [] for n in sizes}
        start = time.monotonic()
        while (now := time.monotonic()) - start < args.duration:
            for n, d in daemons.items():
                samples[n].append((now - start, rss_kb(d.pid)["VmRSS"], cpu_seconds(d.pid)))
            if int(now - start) % 60 < args.interval:
                for n in sizes:
                    _fill(clients[n], n)
            time.sleep(args.interval)
        rows = []
        for n in sizes:
            s = samples[n]
            warm = next(x for x in s if x[0] >= 0.2 * args.duration)
            end = s[-1]
            done = clients[n].get("/api/jobs", params={"status": "ready", "limit": 1}).json()
            rows.append(
                {
                    "printers": n,
                    "rss_warm_mb": warm[1] / 1024,
                    "rss_end_mb": end[1] / 1024,
                    "growth_pct": 100 * (end[1] - warm[1]) / warm[1],
                    "cpu_pct": 100 * (end[2] - warm[2]) / (end[0] - warm[0]),
                    "prints_done": done["total"],
                }
            )
    if args.json:
        print(json.dumps({"duration": args.duration, "rows": rows}, indent=2))
        return
    print(f"duration {args.duration:.0f} s, samples every {args.interval:.0f} s")
    print("| printers | RSS after warm-up | RSS at end | growth | CPU (1 core) | prints done |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['printers']} | {r['rss_warm_mb']:.1f} MB | {r['rss_end_mb']:.1f} MB "
            f"| {r['growth_pct']:+.1f}% | {r['cpu_pct']:.1f}% | {r['prints_done']} |"
        )


if __name__ == "__main__":
    main()
