"""The kill -9 loop (fault F1): start the daemon, drive mixed load, SIGKILL it at a random
moment, check the database file against every acknowledgement the harness received, and
start again on the same data folder. Seeded and bounded; loopback only.

Run by hand: ``python -m tests.crashloop --iterations 200 --seed 1 --max-seconds 600``.
The test suite runs it with 200 iterations (tests/test_crash.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import attrs
import httpx

from printfarmd.config import dump_config
from printfarmd.core.jobs import TRANSITIONS
from tests.conftest import API_KEY, REPO, free_port, make_config, sim_printer

LEGAL = {(a.value, b.value) for (a, _), b in TRANSITIONS.items()}
ACTIVE = ("printing", "post_process")


@attrs.define
class Acks:
    """What the daemon acknowledged, as seen from outside (the harness's own record)."""

    created: dict[str, list[str]] = attrs.field(factory=dict)  # idempotency key -> job ids
    cancelled: set[str] = attrs.field(factory=set)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def job_ids(self) -> list[str]:
        with self.lock:
            return [j for ids in self.created.values() for j in ids]


@attrs.define
class Report:
    iterations: int = 0
    acked_jobs: int = 0
    acked_cancels: int = 0
    max_ready_seconds: float = 0.0
    kills_after_ms: list[int] = attrs.field(factory=list)


def drive(url: str, acks: Acks, rng: random.Random, stop: threading.Event, worker: int) -> None:
    """One load worker: creates (with idempotency keys), cancels, and reads, until ``stop``
    or the daemon dies. Only a 2xx answer counts as an acknowledgement."""
    files = ["benchy_pla.gcode", "calibration_cube_pla.gcode", "keychain_any.gcode"]
    counter = itertools.count()
    with httpx.Client(base_url=url, headers={"X-Api-Key": API_KEY}, timeout=5.0) as c:
        while not stop.is_set():
            try:
                roll = rng.random()
                if roll < 0.6:
                    key = f"w{worker}-{rng.getrandbits(64):016x}-{next(counter)}"
                    body = {
                        "filename": rng.choice(files),
                        "copies": rng.choice([1, 1, 2]),
                        "priority": rng.randint(-5, 5),
                    }
                    r = c.post("/api/jobs", json=body, headers={"Idempotency-Key": key})
                    if r.status_code in (200, 201):
                        with acks.lock:
                            acks.created[key] = [j["id"] for j in r.json()["jobs"]]
                elif roll < 0.8:
                    ids = acks.job_ids()
                    if ids:
                        jid = rng.choice(ids)
                        r = c.post(f"/api/jobs/{jid}/cancel")
                        if r.status_code == 200:
                            with acks.lock:
                                acks.cancelled.add(jid)
                else:
                    c.get("/api/orchestrator/status")
            except httpx.HTTPError:
                return  # the daemon is gone: nothing more can be acknowledged


def check_database(db: Path, acks: Acks) -> None:
    """The pass criteria of F1, read straight from the file after the kill."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], "integrity"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == [], "foreign keys"
        jobs = {
            row[0]: (row[1], row[2])
            for row in conn.execute("SELECT id, state, printer_id FROM jobs")
        }
        trails: dict[str, list[tuple[str | None, str]]] = defaultdict(list)
        for job_id, frm, to in conn.execute(
            "SELECT job_id, from_state, to_state FROM events "
            "WHERE type = 'job.transition' ORDER BY seq"
        ):
            trails[job_id].append((frm, to))
        with acks.lock:
            created = dict(acks.created)
            cancelled = set(acks.cancelled)
        for key, ids in created.items():
            for jid in ids:
                assert jid in jobs, f"acknowledged job {jid} (key {key}) lost"
                states = [to for _, to in trails[jid]]
                assert states[:4] == ["created", "validated", "sliced", "queued"], (jid, states)
        for jid in cancelled:
            assert jobs[jid][0] == "cancelled", f"acknowledged cancel of {jid} lost"
        for jid, (state, _) in jobs.items():
            trail = trails[jid]
            assert trail and trail[0] == (None, "created"), (jid, trail)
            for (_, prev_to), (frm, to) in itertools.pairwise(trail):
                assert frm == prev_to and (frm, to) in LEGAL, (jid, trail)
            assert trail[-1][1] == state, (jid, state, trail[-1])
        per_key = conn.execute("SELECT key, job_ids FROM idempotency_keys").fetchall()
        seen: set[str] = set()
        for _, ids_json in per_key:
            for jid in json.loads(ids_json):
                assert jid not in seen, f"job {jid} belongs to two requests"
                seen.add(jid)
        busy = conn.execute(
            "SELECT printer_id, COUNT(*) FROM jobs WHERE state IN (?, ?) "
            "GROUP BY printer_id HAVING COUNT(*) > 1",
            ACTIVE,
        ).fetchall()
        assert busy == [], f"a printer holds two jobs: {busy}"
    finally:
        conn.close()


def run(
    iterations: int, seed: int, max_seconds: float, workdir: Path, kill_max_ms: int = 500
) -> Report:
    rng = random.Random(seed)
    printers = (
        sim_printer("k1", ("PLA",), speed=3000.0, auto_clear=True),
        sim_printer("k2", ("PLA",), speed=3000.0, auto_clear=True),
    )
    port = free_port()
    config = make_config(workdir, printers, retry_backoff=(0.05,), max_retries=50, port=port)
    cfg_path = workdir / "crashloop.toml"
    cfg_path.write_text(dump_config(config))
    db = config.data_path / "printfarmd.db"
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / "crashloop.log", "ab")  # noqa: SIM115 - shared by every child
    acks = Acks()
    report = Report()
    deadline = time.monotonic() + max_seconds
    try:
        for _ in range(iterations):
            if time.monotonic() > deadline:
                break
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "printfarmd", "serve", "--config", str(cfg_path)],
                stdout=log,
                stderr=log,
                cwd=REPO,
            )
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"daemon exited with {proc.returncode} at start")
                try:
                    if httpx.get(url + "/api/health", timeout=0.5).json()["status"] == "ok":
                        break
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                if time.monotonic() - t0 > 20:
                    raise AssertionError("daemon not ready in 20 s")
                time.sleep(0.01)
            report.max_ready_seconds = max(report.max_ready_seconds, time.monotonic() - t0)
            stop = threading.Event()
            workers = [
                threading.Thread(
                    target=drive, args=(url, acks, random.Random(rng.random()), stop, w)
                )
                for w in range(3)
            ]
            for w in workers:
                w.start()
            kill_after = rng.randint(50, kill_max_ms)
            report.kills_after_ms.append(kill_after)
            time.sleep(kill_after / 1000)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            stop.set()
            for w in workers:
                w.join(timeout=10)
            check_database(db, acks)
            report.iterations += 1
    finally:
        log.close()
    report.acked_jobs = len(acks.job_ids())
    report.acked_cancels = len(acks.cancelled)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--kill-max-ms", type=int, default=2000, help="kill at 50..N ms of load")
    args = ap.parse_args()
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crashloop-"))
    report = run(args.iterations, args.seed, args.max_seconds, workdir, args.kill_max_ms)
    print(attrs.asdict(report) | {"kills_after_ms": len(report.kills_after_ms)})
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


def describe(report: Report) -> dict[str, Any]:
    return {
        "iterations": report.iterations,
        "acked_jobs": report.acked_jobs,
        "acked_cancels": report.acked_cancels,
        "max_ready_seconds": round(report.max_ready_seconds, 2),
    }
