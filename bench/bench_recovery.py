"""Time from ``kill -9`` to the daemon answering again, with 100,000 jobs in the database.

Each run: start the daemon on the case-B database (100k jobs; see bench_startup.py), create
jobs for a moment so the WAL is hot, SIGKILL it, and time from the kill to the next
process's first ``200 {"status": "ok"}`` (the restart is spawned right after the kill, as
systemd's Restart= would). Baselines in the same run: a clean restart (after SIGTERM) on the
same database, and kill -9 with an empty database.

    .venv/bin/python bench/bench_recovery.py [--runs 5] [--jobs 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from bench_startup import POLL, PRINTERS, build_case_b
from common import API_KEY, Daemon, farm_config, free_port, jsonable, machine, median, table


def hot_load(url: str, seconds: float) -> int:
    """Create jobs for ``seconds`` so the WAL holds fresh commits; returns how many."""
    made = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, headers={"X-Api-Key": API_KEY}, timeout=5) as c:
        while time.monotonic() < deadline:
            if c.post("/api/jobs", json={"filename": "benchy_pla.gcode"}).status_code == 201:
                made += 1
    return made


def kill_and_restart(d: Daemon, load_s: float) -> tuple[float, int]:
    made = [0]
    t = threading.Thread(target=lambda: made.__setitem__(0, hot_load(d.url, load_s)))
    t.start()
    t.join()
    assert d.proc is not None
    t0 = time.perf_counter()
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.start(poll=POLL)
    return d.spawned_at - t0 + d.ready_after, made[0]


def clean_restart(d: Daemon) -> float:
    t0 = time.perf_counter()
    d.stop()
    d.start(poll=POLL)
    return d.spawned_at - t0 + d.ready_after


def bench(runs: int, n: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    built = build_case_b(root / "b", n, seed=1)
    out: dict[str, Any] = {"machine": machine(), "jobs": built["jobs"], "db_mb": built["db_mb"]}
    cases = {
        "kill -9, 100k jobs": farm_config(
            root / "b", printers=PRINTERS, port=free_port(), data_dir=built["data_dir"]
        ),
        "kill -9, empty db": farm_config(
            root / "e", printers=PRINTERS, port=free_port(), data_dir=root / "e" / "data"
        ),
    }
    results: dict[str, list[float]] = {}
    for name, config in cases.items():
        folder = root / name.replace(" ", "_").replace(",", "")
        folder.mkdir(parents=True, exist_ok=True)
        with Daemon(config, folder / "farm.toml", folder / "daemon.log") as d:
            d.start(poll=POLL)
            results[name] = [kill_and_restart(d, 0.5)[0] for _ in range(runs)]
            if "100k" in name:
                results["clean restart (SIGTERM), 100k jobs"] = [
                    clean_restart(d) for _ in range(runs)
                ]
            d.stop()
    out["cases"] = {k: {"median_s": median(v), "runs": v} for k, v in results.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = bench(args.runs, args.jobs)
    if args.json:
        print(json.dumps(jsonable(r)))
        return 0
    base = r["cases"]["kill -9, empty db"]["median_s"]
    rows = [
        [name, f"{c['median_s'] * 1000:.0f}", f"{min(c['runs']) * 1000:.0f}",
         f"{max(c['runs']) * 1000:.0f}", f"{c['median_s'] / base:.2f}x"]
        for name, c in r["cases"].items()
    ]  # fmt: skip
    print(f"bench_recovery: {r['jobs']:,} jobs ({r['db_mb']} MB), {args.runs} runs, medians")
    print(table(["case", "kill/stop -> 200 ms", "min", "max", "vs empty db"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
