"""Benchmark: time from process start to first HTTP 200, and idle RSS.

Usage: ``.venv/bin/python bench/bench_startup.py [--runs 5] [--jobs 100000] [--idle 3] [--json]``

Bytecode is precompiled first (``python -m compileall -q printfarmd``), so no run pays
for compiling. Each run spawns a fresh process (``time.perf_counter`` just before
``Popen``), polls ``GET /api/health`` every 5 ms (a new loopback connection per poll)
until it answers 200 with ``{"status": "ok"}``, waits ``--idle`` seconds, reads
``VmRSS`` (and the peak, ``VmHWM``) from ``/proc/<pid>/status``, then stops it with
SIGTERM (the time to exit is reported too). Medians of ``--runs`` runs per case; the
cases run one after another in each round, and the demo farm and case A are also given
paired with the bare stack of the same round (the median of the per-round time ratios and
RSS differences, and how many rounds were within the issue's 1.2x and +10 MB).

Cases:

- demo: the demo farm, ``config.example.toml`` as shipped (4 simulated printers printing
  at once, 6 demo jobs submitted on the first start) with only its port and folders moved,
  from a fresh data folder each run (what a new user starts first).

Then, with 20 simulated printers, ``dispatch_paused = true`` so nothing prints, periodic
backups off:

- A: an empty database (schema created by one earlier, unmeasured start);
- B: ``--jobs`` jobs already in the database, 4 events each. Built without REST: one
  start to create and migrate the schema, SIGTERM, then a bulk insert with plain
  ``sqlite3`` of rows made by ``printfarmd.models.Job`` + ``store.jobs.to_row`` (the
  store's own column list and SQL). State mix: 70% shipped, 15% cancelled, 5% ready,
  10% queued; the 4 events are each job's first four transitions (created, validated,
  sliced, queued). WAL checkpointed after the load, as on a farm that has run a while.
  Only the queued 10% can still change, so only they are kept in memory;
- C: as B, every job finished (80% shipped, 15% cancelled, 5% ready): nothing is kept in
  memory, so its idle RSS is the empty farm's (issue 13: C / A).

``--collector``: instead, the cyclic garbage collector's share of the demo farm's start
(``bench/startup_collector.py``): ``--runs`` starts with the daemon's policy (modules and
config loaded with young collections only, ``heap.loading``) interleaved with as many under
CPython's thresholds throughout; time spent collecting until the first 200, by generation.

``--memory``: instead, where the memory goes: the demo farm and the bare app each run once
under ``python -X tracemalloc`` (``bench/startup_memory.py``), and after ``--idle`` seconds
the traced memory is summed by the package that allocated (or imported) it.

Baselines, same run:

- ``python -c pass``: spawn to exit, and its RSS as it exits (the child reads its own
  ``/proc/self/status``);
- ``python -c "import printfarmd.cli, printfarmd.daemon"``: the same (the import share
  of the daemon's start-up and memory);
- ``http.server``: a minimal stdlib process (no third-party import) that serves
  ``200 {"status": "ok"}`` on ``/api/health``, timed and measured exactly like the daemon;
- bare stack: a one-route quart-trio app on hypercorn (the daemon's framework, nothing of
  printfarmd) answering the same probe, measured the same way.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    API_KEY,
    DB_NAME,
    REPO,
    Daemon,
    farm_config,
    free_port,
    jsonable,
    machine,
    median,
    ratio,
    rss_kb,
    table,
    wait_http_ok,
)

from printfarmd.models import Job, JobState
from printfarmd.store import events as store_events
from printfarmd.store import jobs as store_jobs

PRINTERS = 20
POLL = 0.005
#: (state, share) of the jobs in case B. Only ``queued`` and ``ready`` are open jobs.
STATE_MIX: tuple[tuple[JobState, float], ...] = (
    (JobState.SHIPPED, 0.70),
    (JobState.CANCELLED, 0.15),
    (JobState.READY, 0.05),
    (JobState.QUEUED, 0.10),
)
#: Case C: the same number of jobs, every one finished (none can change by itself, so
#: none is kept in memory: issue 13).
FINISHED_MIX: tuple[tuple[JobState, float], ...] = (
    (JobState.SHIPPED, 0.80),
    (JobState.CANCELLED, 0.15),
    (JobState.READY, 0.05),
)
FILES = (
    ("benchy_pla.gcode", "PLA", 2900.0),
    ("calibration_cube_pla.gcode", "PLA", 1100.0),
    ("keychain_any.gcode", None, 600.0),
    ("phone_stand_petg.gcode", "PETG", 5400.0),
    ("vase_large_petg.gcode", "PETG", 14400.0),
)

HTTP_SERVER_BASELINE = """
import http.server, sys
BODY = b'{"status": "ok"}'
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

BARE_STACK_BASELINE = """
import sys
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio
app = QuartTrio("bare")
@app.get("/api/health")
async def health():
    return {"status": "ok"}
config = Config()
config.bind = [f"127.0.0.1:{sys.argv[1]}"]
config.accesslog = None
trio.run(serve, app, config)
"""


# ------------------------------------------------------------------------- measuring


#: Appended to a ``-c`` program: the child reports its own memory on its way out.
#: (``wait4``'s ``ru_maxrss`` cannot be used: Linux carries the forking parent's RSS
#: peak across ``exec``, so every child would "peak" at this bench's own size.)
REPORT_RSS = (
    "\nimport sys as _s\n"
    "_s.stdout.write(''.join(line for line in open('/proc/self/status')"
    " if line.startswith(('VmRSS', 'VmHWM'))))\n"
    # Skip interpreter teardown (~0.2 s after the daemon's imports): measure the imports.
    "_s.stdout.flush()\nimport os as _o\n_o._exit(0)\n"
)


def spawn_to_exit(code: str) -> dict[str, float]:
    """Seconds from spawn to the end of ``python -c code`` (``os._exit``: no interpreter
    teardown), and its RSS at that point."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code + REPORT_RSS],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"python -c {code!r} exited with {proc.returncode}: {proc.stderr!r}")
    mem = {
        k: int(v.split()[0]) for k, v in (ln.split(":") for ln in proc.stdout.decode().splitlines())
    }
    return {"seconds": elapsed, "rss_kb": mem["VmRSS"], "peak_rss_kb": mem["VmHWM"]}


def server_run(program: str, folder: Path, idle: float) -> dict[str, float]:
    """Spawn ``python -c program PORT`` and measure it like the daemon."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", program, str(port)],
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = wait_http_ok(port, proc=proc, poll=POLL) - t0
        time.sleep(idle)
        mem = rss_kb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"seconds": ready, "rss_kb": mem["VmRSS"], "peak_rss_kb": mem["VmHWM"]}


def daemon_run(
    folder: Path, data_dir: Path, idle: float, index: int, check: Callable[[int], None] | None
) -> dict[str, float]:
    config = farm_config(folder, printers=PRINTERS, port=free_port(), data_dir=data_dir)
    with Daemon(config, folder / f"run-{index}.toml", folder / f"run-{index}.log") as d:
        ready = d.start(poll=POLL)
        time.sleep(idle)
        mem = rss_kb(d.pid)
        if check is not None:
            check(d.port)
        t0 = time.perf_counter()
        status = d.stop()
        stop = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"daemon exited with {status} after SIGTERM:\n{d.log()}")
    return {"seconds": ready, "rss_kb": mem["VmRSS"], "peak_rss_kb": mem["VmHWM"], "stop_s": stop}


def demo_config(folder: Path) -> tuple[Path, int]:
    """``config.example.toml`` (the demo farm: simulated printers printing at once, the
    demo jobs submitted on the first start) with only its port, data and gcodes folders
    moved, as ``tests/test_docs.py`` runs it; a fresh data folder each time."""
    text = (REPO / "config.example.toml").read_text()
    port = free_port()
    data = folder / f"demo-data-{port}"
    text = re.sub(r"(?m)^port = 7125$", f"port = {port}", text, count=1)
    text = re.sub(r'(?m)^data_dir = "data"$', f'data_dir = "{data}"', text, count=1)
    text = re.sub(
        r'(?m)^gcodes_dir = "demo/gcodes"$', f'gcodes_dir = "{REPO / "demo" / "gcodes"}"', text
    )
    path = folder / f"demo-{port}.toml"
    path.write_text(text)
    return path, port


def demo_run(folder: Path, idle: float) -> dict[str, float]:
    """The demo farm from a fresh data folder, measured like the other cases."""
    path, port = demo_config(folder)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "printfarmd", "serve", "--config", str(path)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = wait_http_ok(port, proc=proc, poll=POLL) - t0
        time.sleep(idle)
        mem = rss_kb(proc.pid)
        t1 = time.perf_counter()
        proc.terminate()
        status = proc.wait(timeout=15)
        stop = time.perf_counter() - t1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)
    if status != 0:
        raise RuntimeError(f"demo farm exited with {status} after SIGTERM")
    return {"seconds": ready, "rss_kb": mem["VmRSS"], "peak_rss_kb": mem["VmHWM"], "stop_s": stop}


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = median(values)
        out[f"{key}_min"] = min(values)
        out[f"{key}_max"] = max(values)
    return out


def paired(case: list[dict[str, float]], base: list[dict[str, float]]) -> dict[str, float]:
    """``case`` against ``base`` round by round (the two ran back to back in each round,
    so a slow spell of the machine hits both): the median of the per-round time ratios
    and of the per-round idle RSS differences (MB), and how many rounds were within
    the issue's goals (1.2x, +10 MB)."""
    ratios = [c["seconds"] / b["seconds"] for c, b in zip(case, base, strict=True)]
    extra = [(c["rss_kb"] - b["rss_kb"]) / 1024 for c, b in zip(case, base, strict=True)]
    return {
        "time_ratio": median(ratios),
        "time_ratio_min": min(ratios),
        "time_ratio_max": max(ratios),
        "rss_extra_mb": median(extra),
        "rss_extra_mb_max": max(extra),
        "rounds": len(ratios),
        "rounds_within_1_2x": sum(r <= 1.2 for r in ratios),
        "rounds_within_10_mb": sum(e <= 10.0 for e in extra),
    }


# ------------------------------------------------------------------------- case B data


def make_jobs(
    n: int, seed: int, printer_ids: Sequence[str], mix: Sequence[tuple[JobState, float]] = STATE_MIX
) -> tuple[list[Job], dict[str, int]]:
    """``n`` valid jobs in the ``mix`` proportions, oldest first; terminal ones carry
    the printer, start and finish times they would have had."""
    rng = random.Random(seed)
    states = [s for s, share in mix for _ in range(round(share * n))]
    states = (states + [mix[0][0]] * n)[:n]
    rng.shuffle(states)
    # Queued jobs are the newest: move them to the end (creation order).
    states.sort(key=lambda s: s is JobState.QUEUED)
    now = time.time()
    span = 365 * 86400.0
    ids: set[str] = set()
    jobs: list[Job] = []
    counts: dict[str, int] = {}
    for i, state in enumerate(states):
        jid = f"{rng.getrandbits(64):016X}"
        while jid in ids:
            jid = f"{rng.getrandbits(64):016X}"
        ids.add(jid)
        filename, material, estimate = FILES[i % len(FILES)]
        created = now - span + span * i / n
        queued_at = created + 1.0
        fields: dict[str, Any] = {}
        if state is JobState.QUEUED:
            fields = {"updated_at": queued_at}
        elif state is JobState.CANCELLED and rng.random() < 0.5:
            # Cancelled while still queued: never reached a printer.
            fields = {"updated_at": queued_at + 60.0, "finished_at": queued_at + 60.0}
        else:
            started = queued_at + rng.uniform(60.0, 7200.0)
            finished = started + estimate
            fields = {
                "printer_id": rng.choice(printer_ids),
                "started_at": started,
                "finished_at": finished,
                "updated_at": finished + (3600.0 if state is JobState.SHIPPED else 0.0),
                "progress": 100.0 if state is not JobState.CANCELLED else 42.0,
            }
        jobs.append(
            Job(
                id=jid,
                filename=filename,
                state=state,
                priority=rng.choice((0, 0, 0, 0, 1, 5)),
                position=i + 1,
                group_id=jid,
                name=filename,
                material=material,
                estimated_time=estimate,
                created_at=created,
                queued_at=queued_at,
                source="api",
                **fields,
            )
        )
        counts[state.value] = counts.get(state.value, 0) + 1
    return jobs, counts


def creation_events(job: Job) -> list[tuple[object, ...]]:
    """A job's first four transitions, as ``store_events.INSERT`` rows."""
    steps = (
        (None, "created", "create"),
        ("created", "validated", "validate"),
        ("validated", "sliced", "slice"),
        ("sliced", "queued", "enqueue"),
    )
    return [
        (
            "job.transition",
            job.created_at if to_state != "queued" else job.queued_at,
            job.id,
            None,
            from_state,
            to_state,
            None,
            f'{{"event":"{event}","retry_count":0}}',
            None,  # the cluster node that appended it (issue 18): none here
        )
        for from_state, to_state, event in steps
    ]


def build_case_b(
    folder: Path, n: int, seed: int, mix: Sequence[tuple[JobState, float]] = STATE_MIX
) -> dict[str, Any]:
    """Start the daemon once (schema), stop it, bulk-insert ``n`` jobs into its file."""
    data = folder / "data"
    config = farm_config(folder, printers=PRINTERS, port=free_port(), data_dir=data)
    with Daemon(config, folder / "build.toml", folder / "build.log") as d:
        first_start = d.start(poll=POLL)
        d.stop()
    printer_ids = [p.id for p in config.printers]
    t0 = time.perf_counter()
    jobs, counts = make_jobs(n, seed, printer_ids, mix)
    conn = sqlite3.connect(data / DB_NAME, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a bulk load; checkpointed and fsynced below
        conn.execute("BEGIN")
        marks = ", ".join("?" for _ in store_jobs.FIELDS)
        conn.executemany(
            f"INSERT INTO jobs ({store_jobs.COLUMNS}) VALUES ({marks})",
            (store_jobs.to_row(j) for j in jobs),
        )
        conn.executemany(store_events.INSERT, (row for j in jobs for row in creation_events(j)))
        conn.execute("COMMIT")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stored = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        events = conn.execute("SELECT COUNT(*) FROM events WHERE job_id IS NOT NULL").fetchone()[0]
    finally:
        conn.close()
    with open(data / DB_NAME, "rb+") as fh:
        os.fsync(fh.fileno())
    size = (data / DB_NAME).stat().st_size
    return {
        "jobs": stored,
        "job_events": events,
        "states": counts,
        "open_jobs": counts.get("queued", 0) + counts.get("ready", 0),
        "db_mb": round(size / 1e6, 1),
        "build_s": round(time.perf_counter() - t0, 1),
        "first_start_s": round(first_start, 3),
        "data_dir": data,
    }


# ------------------------------------------------------------------------- main


def bench(runs: int, n: int, idle: float, seed: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    compiled = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "printfarmd"], cwd=REPO, check=False
    )
    if compiled.returncode != 0:
        raise RuntimeError("compileall failed")
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root = Path(tmp)
        folder_a, folder_b, folder_c = root / "a", root / "b", root / "c"
        folder_a.mkdir()
        folder_b.mkdir()
        folder_c.mkdir()

        # Case A's database: created by one unmeasured start, then empty of jobs.
        data_a = folder_a / "data"
        config_a = farm_config(folder_a, printers=PRINTERS, port=free_port(), data_dir=data_a)
        with Daemon(config_a, folder_a / "schema.toml", folder_a / "schema.log") as d:
            d.start(poll=POLL)
            d.stop()

        built = build_case_b(folder_b, n, seed)
        built_c = build_case_b(folder_c, n, seed, FINISHED_MIX)
        expected_queued = built["states"].get("queued", 0)

        checked: dict[str, bool] = {"b": False}

        def check_b_once(port: int) -> None:
            if not checked["b"]:
                check_b_keyed(port, expected_queued)
                checked["b"] = True

        cases: dict[str, list[dict[str, float]]] = {
            "python_pass": [],
            "import_printfarmd": [],
            "http_server": [],
            "bare_stack": [],
            "demo": [],
            "A": [],
            "B": [],
            "C": [],
        }
        # Interleave the cases run by run, so a burst of noise hits them all alike.
        for i in range(runs):
            cases["python_pass"].append(spawn_to_exit("pass"))
            cases["import_printfarmd"].append(
                spawn_to_exit("import printfarmd.cli, printfarmd.daemon")
            )
            cases["http_server"].append(server_run(HTTP_SERVER_BASELINE, root, idle))
            cases["bare_stack"].append(server_run(BARE_STACK_BASELINE, root, idle))
            cases["demo"].append(demo_run(root, idle))
            cases["A"].append(daemon_run(folder_a, data_a, idle, i, None))
            cases["B"].append(daemon_run(folder_b, built["data_dir"], idle, i, check_b_once))
            cases["C"].append(daemon_run(folder_c, built_c["data_dir"], idle, i, None))

    summary = {name: summarize(r) for name, r in cases.items()}
    built = {k: v for k, v in built.items() if k != "data_dir"}
    results.update(
        {
            "bench": "startup",
            "bytecode_precompiled": True,
            "runs": runs,
            "idle_s": idle,
            "poll_ms": POLL * 1000,
            "printers": PRINTERS,
            "case_b_data": built,
            "case_b_state_mix": {s.value: share for s, share in STATE_MIX},
            "cases": summary,
            "ratios": {
                f"{case}_over_{base}": {
                    "time_to_200": ratio(summary[case]["seconds"], summary[base]["seconds"]),
                    "idle_rss": ratio(summary[case]["rss_kb"], summary[base]["rss_kb"]),
                }
                for case in ("demo", "A", "B", "C")
                for base in ("http_server", "bare_stack")
            }
            | {
                f"{case}_over_A": {
                    "time_to_200": ratio(summary[case]["seconds"], summary["A"]["seconds"]),
                    "idle_rss": ratio(summary[case]["rss_kb"], summary["A"]["rss_kb"]),
                }
                for case in ("B", "C")
            },
            "paired": {case: paired(cases[case], cases["bare_stack"]) for case in ("demo", "A")},
            "seconds": round(time.perf_counter() - t_start, 1),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
        }
    )
    return results


def check_b_keyed(port: int, expected_queued: int) -> None:
    """Case B sanity: the daemon rebuilt a queue of exactly the queued jobs inserted."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30.0)
    try:
        conn.request("GET", "/api/orchestrator/status", headers={"X-Api-Key": API_KEY})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    if resp.status != 200 or body.get("queue_depth") != expected_queued:
        raise RuntimeError(f"case B: status {resp.status} {body}, expected {expected_queued}")


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def print_report(r: dict[str, Any]) -> None:
    m, c, b = r["machine"], r["cases"], r["case_b_data"]
    print(
        f"bench_startup: {r['runs']} runs per case, medians (min..max); bytecode precompiled "
        f"(python -m compileall -q printfarmd); poll every {r['poll_ms']:.0f} ms; RSS read "
        f"{r['idle_s']:g} s after ready"
    )
    print(
        f"Python {m['python']}, {m['cpus']} CPUs, load {m['loadavg_1m']} at start, "
        f"{r['loadavg_1m_end']} at end; {r['printers']} simulated printers, dispatch paused"
    )
    mix = ", ".join(
        f"{int(share * 100)}% {state}" for state, share in r["case_b_state_mix"].items()
    )
    print(
        f"case B database: {b['jobs']:,} jobs ({mix}), {b['job_events']:,} job events "
        f"(4 per job), {b['db_mb']} MB; {b['open_jobs']:,} open jobs (queued + ready) are "
        f"loaded into memory at start; bulk load took {b['build_s']} s"
    )
    print()
    rows = []
    labels = {
        "python_pass": "python -c pass (to end; RSS at end)",
        "import_printfarmd": "import printfarmd.cli+daemon (to end)",
        "http_server": "stdlib http.server baseline",
        "bare_stack": "bare quart-trio + hypercorn app",
        "demo": "demo farm (config.example.toml)",
        "A": "A: printfarmd, 20 printers, empty db",
        "B": f"B: printfarmd, 20 printers, {b['jobs']:,} jobs",
        "C": f"C: printfarmd, 20 printers, {b['jobs']:,} finished jobs",
    }
    for key, label in labels.items():
        s = c[key]
        rows.append(
            [
                label,
                f"{s['seconds'] * 1000:.0f}",
                f"{s['seconds_min'] * 1000:.0f}..{s['seconds_max'] * 1000:.0f}",
                mb(s["rss_kb"]),
                mb(s["peak_rss_kb"]),
                f"{s['stop_s'] * 1000:.0f}" if "stop_s" in s else "",
            ]
        )
    print(
        table(
            ["case", "to 200 ms", "min..max", "idle RSS MB", "peak RSS MB", "SIGTERM->exit ms"],
            rows,
        )
    )
    print()
    rr = r["ratios"]
    rows = [
        [name.replace("_over_", " / ").replace("http_server", "http.server")
         .replace("bare_stack", "bare stack"),
         f"{v['time_to_200']:.2f}x", f"{v['idle_rss']:.2f}x"]
        for name, v in rr.items()
    ]  # fmt: skip
    print(table(["ratio", "time to 200", "idle RSS"], rows))
    print()
    rows = [
        [
            f"{case} / bare stack",
            f"{v['time_ratio']:.2f}x ({v['time_ratio_min']:.2f}..{v['time_ratio_max']:.2f})",
            f"+{v['rss_extra_mb']:.1f} MB (max +{v['rss_extra_mb_max']:.1f})",
            f"{v['rounds_within_1_2x']}/{v['rounds']}",
            f"{v['rounds_within_10_mb']}/{v['rounds']}",
        ]
        for case, v in r["paired"].items()
    ]
    print(
        table(
            ["paired by round", "time to 200", "idle RSS", "rounds <= 1.2x", "<= +10 MB"],
            rows,
        )
    )
    print(
        f"\n(first start ever, creating the schema, case B's farm: {b['first_start_s'] * 1000:.0f}"
        f" ms, one run; whole bench {r['seconds']} s)"
    )


def child_json(argv: list[str], name: str) -> Any:
    """``python ARGV`` from the repository root; the one JSON object it printed."""
    proc = subprocess.run(
        [sys.executable, *argv], cwd=REPO, capture_output=True, check=False, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: {proc.stderr.decode()[-2000:]}")
    return json.loads(proc.stdout)


def memory_tables(idle: float) -> dict[str, Any]:
    """``startup_memory.py`` under ``-X tracemalloc`` for the demo farm and the bare app."""
    script = str(REPO / "bench" / "startup_memory.py")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        path, _port = demo_config(Path(tmp))
        for name, args in (("demo", ["demo", str(path)]), ("bare", ["bare", str(free_port())])):
            argv = ["-X", "tracemalloc=25", script, *args, str(idle)]
            out[name] = child_json(argv, f"startup_memory {name}")
    return out


def collector_runs(runs: int) -> dict[str, Any]:
    """``startup_collector.py`` for the demo farm, the loading policy against CPython's
    thresholds, interleaved (the order alternates each round)."""
    script = str(REPO / "bench" / "startup_collector.py")
    got: dict[str, list[dict[str, Any]]] = {"policy": [], "defaults": []}
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
        for i in range(runs):
            for mode in ("policy", "defaults") if i % 2 == 0 else ("defaults", "policy"):
                path, port = demo_config(Path(tmp))
                argv = [script, mode, str(path), str(port)]
                got[mode].append(child_json(argv, f"startup_collector {mode}"))
    out: dict[str, Any] = {"runs": runs}
    for mode, rows in got.items():
        out[mode] = {
            "gc_ms": median([sum(r["gc_ms"]) for r in rows]),
            "gc_ms_by_generation": [median([r["gc_ms"][g] for r in rows]) for g in range(3)],
            "collections_by_generation": [
                median([r["collections"][g] for r in rows]) for g in range(3)
            ],
            "to_200_ms": median([r["to_200_ms"] for r in rows]),
        }
    return out


def print_collector(c: dict[str, Any]) -> None:
    print(f"cyclic collector until the demo farm's first 200; medians of {c['runs']} starts each")
    rows = [
        [
            label,
            f"{c[mode]['gc_ms']:.1f}",
            " / ".join(f"{x:.1f}" for x in c[mode]["gc_ms_by_generation"]),
            " / ".join(f"{x:g}" for x in c[mode]["collections_by_generation"]),
            f"{c[mode]['to_200_ms']:.0f}",
        ]
        for mode, label in (
            ("defaults", "CPython's thresholds throughout"),
            ("policy", "printfarmd (heap.loading)"),
        )
    ]
    headers = ["start", "collecting ms", "by generation 0/1/2", "collections", "to 200 ms"]
    print(table(headers, rows))
    share = ratio(c["policy"]["gc_ms"], c["defaults"]["gc_ms"])
    print(f"collecting, printfarmd / defaults: {share:.2f}x")


def print_memory(m: dict[str, Any]) -> None:
    demo, bare = m["demo"], m["bare"]
    print(
        f"tracemalloc after start and {m['idle_s']:g} s idle: demo farm "
        f"{demo['traced_kib'] / 1024:.1f} MiB, bare stack {bare['traced_kib'] / 1024:.1f} MiB"
    )
    names = list(dict.fromkeys([*demo["by_package_kib"], *bare["by_package_kib"]]))[:20]
    rows = [
        [
            n,
            f"{demo['by_package_kib'].get(n, 0) / 1024:.2f}",
            f"{bare['by_package_kib'].get(n, 0) / 1024:.2f}",
        ]
        for n in names
    ]
    print(table(["charged to (importer's package)", "demo MiB", "bare MiB"], rows))
    print()
    rows = [[site, f"{kib:.0f}"] for site, kib in list(demo["printfarmd_sites_kib"].items())[:15]]
    print(table(["printfarmd line (what it imported or built)", "KiB"], rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per case (default 5)")
    parser.add_argument("--jobs", type=int, default=100_000, help="case B jobs (default 100000)")
    parser.add_argument("--idle", type=float, default=3.0, help="s after ready before RSS (3)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for case B (1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument(
        "--memory", action="store_true", help="only the tracemalloc tables (demo vs bare)"
    )
    parser.add_argument(
        "--collector",
        action="store_true",
        help="only the collector's share of the demo farm's start (policy vs defaults)",
    )
    args = parser.parse_args(argv)
    if args.collector:
        if args.runs < 1:
            parser.error("--runs must be positive")
        col = collector_runs(args.runs)
        if args.json:
            print(json.dumps(jsonable(col), indent=2, allow_nan=False))
        else:
            print_collector(col)
        return 0
    if args.memory:
        mem = {**memory_tables(args.idle), "idle_s": args.idle}
        if args.json:
            print(json.dumps(mem, indent=2))
        else:
            print_memory(mem)
        return 0
    if args.runs < 1 or args.jobs < 1 or args.idle < 0:
        parser.error("--runs and --jobs must be positive, --idle not negative")
    result = bench(args.runs, args.jobs, args.idle, args.seed)
    if args.json:
        print(json.dumps(jsonable(result), indent=2, allow_nan=False))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
