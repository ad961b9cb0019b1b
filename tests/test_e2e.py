"""End to end: ``printfarmd serve`` as a subprocess, driven over REST on a real socket."""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from printfarmd.core.jobs import TRANSITIONS
from printfarmd.models import JobState
from tests.conftest import API_KEY, REPO, DaemonProcess, make_config, sim_printer, wait_until

pytestmark = pytest.mark.slow

FAST = 3000.0  # simulator speed: a 2.5 h print takes 3 s


def four_printers(auto_clear: bool) -> tuple[Any, ...]:
    return (
        sim_printer("sim-1", ("PLA",), speed=FAST, auto_clear=auto_clear),
        sim_printer("sim-2", ("PLA", "PETG"), speed=FAST, auto_clear=auto_clear),
        sim_printer("sim-3", ("PETG",), nozzle_diameter=0.6, speed=FAST, auto_clear=auto_clear),
        sim_printer("sim-4", ("PLA",), speed=FAST, auto_clear=auto_clear),
    )


MIX = [
    # (filename, copies, priority)
    ("benchy_pla.gcode", 2, 0),
    ("calibration_cube_pla.gcode", 3, 5),
    ("phone_stand_petg.gcode", 2, -3),
    ("vase_large_petg.gcode", 2, 10),
    ("keychain_any.gcode", 3, 1),
    ("benchy_pla.gcode", 1, 50),
    ("phone_stand_petg.gcode", 2, 7),
    ("calibration_cube_pla.gcode", 2, -10),
    ("keychain_any.gcode", 3, 3),
]
assert sum(c for _, c, _ in MIX) == 20


def submit_mix(c: httpx.Client) -> list[dict[str, Any]]:
    jobs = []
    for filename, copies, priority in MIX:
        r = c.post("/api/jobs", json={"filename": filename, "copies": copies, "priority": priority})
        assert r.status_code == 201, r.text
        jobs += r.json()["jobs"]
    assert len(jobs) == 20
    return jobs


def all_jobs(c: httpx.Client) -> list[dict[str, Any]]:
    body = c.get("/api/jobs", params={"limit": 1000}).json()
    return list(body["jobs"])


def all_events(c: httpx.Client) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        after = events[-1]["seq"] if events else 0
        page = c.get("/api/events/history", params={"after": after}).json()
        if not page["events"]:
            return events
        events += page["events"]


def check_event_log(events: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> None:
    """Every job's transitions are legal, in order, and end in its current state."""
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    by_job: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["type"] == "job.transition":
            by_job.setdefault(e["job_id"], []).append(e)
    legal = {(a.value, b.value) for (a, _), b in TRANSITIONS.items()}
    for job in jobs:
        trail = by_job[job["id"]]
        assert trail[0]["from_state"] is None and trail[0]["to_state"] == "created"
        for prev, cur in itertools.pairwise(trail):
            assert cur["from_state"] == prev["to_state"], (job["id"], prev, cur)
            assert (cur["from_state"], cur["to_state"]) in legal, (job["id"], cur)
        assert trail[-1]["to_state"] == job["state"]


def check_priority_order(
    events: list[dict[str, Any]], jobs: list[dict[str, Any]], printers: dict[str, Any]
) -> None:
    """No job started on a printer while a higher-priority job that printer could take waited."""
    info = {j["id"]: j for j in jobs}
    waiting: set[str] = set()
    for e in events:
        if e["type"] != "job.transition":
            continue
        if e["to_state"] == "queued":
            waiting.add(e["job_id"])
        elif e["from_state"] == "queued":
            waiting.discard(e["job_id"])
            if e["to_state"] != "printing":
                continue
            started = info[e["job_id"]]
            caps = printers[e["printer_id"]]
            for other_id in waiting:
                other = info[other_id]
                can = other["material"] is None or other["material"] in caps["materials"]
                can = can and (
                    other["nozzle_diameter"] is None
                    or abs(other["nozzle_diameter"] - caps["nozzle_diameter"]) < 1e-3
                )
                assert not (can and other["priority"] > started["priority"]), (
                    f"{started['id']} (priority {started['priority']}) started on "
                    f"{e['printer_id']} while {other_id} (priority {other['priority']}) waited"
                )


def check_materials(jobs: list[dict[str, Any]], printers: dict[str, Any]) -> None:
    for job in jobs:
        if job["material"] is not None and job["printer_id"] is not None:
            assert job["material"] in printers[job["printer_id"]]["materials"], job
        if job["nozzle_diameter"] is not None and job["printer_id"] is not None:
            assert (
                abs(job["nozzle_diameter"] - printers[job["printer_id"]]["nozzle_diameter"]) < 1e-3
            )


def test_twenty_jobs_all_reach_ready_with_auto_clear(tmp_path: Path, daemon_factory: Any) -> None:
    d: DaemonProcess = daemon_factory(
        make_config(tmp_path, four_printers(True), dispatch_paused=True)
    )
    d.start()
    with d.client() as c:
        submitted = submit_mix(c)
        assert all(j["state"] == "queued" for j in submitted)
        printers = {p["id"]: p for p in c.get("/api/printers").json()["printers"]}
        assert c.post("/api/orchestrator/resume").json()["paused"] is False
        wait_until(lambda: all(j["state"] == "ready" for j in all_jobs(c)), 120, "all jobs ready")
        jobs = all_jobs(c)
        events = all_events(c)
    assert {j["id"] for j in jobs} == {j["id"] for j in submitted}
    check_event_log(events, jobs)
    check_priority_order(events, jobs, printers)
    check_materials(jobs, printers)
    # every PETG job went to a PETG printer and the 0.6 mm vases to sim-3 alone
    assert {j["printer_id"] for j in jobs if j["filename"] == "vase_large_petg.gcode"} == {"sim-3"}
    assert d.kill(signal.SIGTERM) == 0


def test_without_auto_clear_jobs_wait_in_post_process_until_cleared(
    tmp_path: Path, daemon_factory: Any
) -> None:
    d: DaemonProcess = daemon_factory(make_config(tmp_path, four_printers(False)))
    d.start()
    with d.client() as c:
        submitted = submit_mix(c)
        printers = {p["id"]: p for p in c.get("/api/printers").json()["printers"]}

        def four_waiting() -> bool:
            return sum(j["state"] == "post_process" for j in all_jobs(c)) == 4

        wait_until(four_waiting, 60, "every printer to finish one job")
        time.sleep(0.5)  # nothing more can start while every plate is full
        states = [j["state"] for j in all_jobs(c)]
        assert states.count("post_process") == 4 and states.count("printing") == 0
        assert {p["state"] for p in c.get("/api/printers").json()["printers"]} == {"awaiting_clear"}
        # the operator clears plates until the batch is done
        deadline = time.monotonic() + 120
        while not all(j["state"] == "ready" for j in all_jobs(c)):
            assert time.monotonic() < deadline, "batch did not finish"
            for p in c.get("/api/printers").json()["printers"]:
                if p["state"] == "awaiting_clear":
                    assert c.post(f"/api/printers/{p['id']}/clear").status_code == 200
            time.sleep(0.1)
        jobs = all_jobs(c)
        events = all_events(c)
    assert len(jobs) == len(submitted) == 20
    check_event_log(events, jobs)
    check_materials(jobs, printers)
    cleared = [e for e in events if e["type"] == "printer.plate_cleared"]
    assert len(cleared) == 20 and all(e["reason"] == "operator" for e in cleared)


def test_sigkill_mid_run_loses_no_acknowledged_job(tmp_path: Path, daemon_factory: Any) -> None:
    config = make_config(
        tmp_path,
        four_printers(True),
        retry_backoff=(0.2,),
        max_retries=10,
    )
    d: DaemonProcess = daemon_factory(config)
    d.start()
    acked: list[str] = []
    stop = threading.Event()

    def load() -> None:
        rng = random.Random(7)
        with httpx.Client(base_url=d.url, headers={"X-Api-Key": API_KEY}, timeout=5.0) as c:
            while not stop.is_set():
                if len(acked) >= 40:
                    # Enough work for the farm to finish in bounded time; keep the
                    # connection busy with reads until the kill.
                    try:
                        c.get("/api/orchestrator/status")
                    except httpx.HTTPError:
                        return
                    continue
                filename, copies, priority = rng.choice(MIX)
                try:
                    r = c.post(
                        "/api/jobs",
                        json={"filename": filename, "copies": copies, "priority": priority},
                    )
                except httpx.HTTPError:
                    return  # the daemon died under us: this request was never acknowledged
                if r.status_code == 201:
                    acked.extend(j["id"] for j in r.json()["jobs"])

    worker = threading.Thread(target=load)
    worker.start()
    time.sleep(1.5)
    assert d.kill(signal.SIGKILL) == -signal.SIGKILL
    stop.set()
    worker.join(timeout=10)
    assert len(acked) > 20, "the load generator should have been acknowledged many times"

    d.start()  # same config, same data folder
    with d.client() as c:
        jobs = all_jobs(c)
        ids = [j["id"] for j in jobs]
        assert len(ids) == len(set(ids)), "a job appears twice"
        assert set(acked) <= set(ids), f"lost: {set(acked) - set(ids)}"
        # jobs that were printing at the kill went through the failure path with a reason
        events = all_events(c)
        lost = [e for e in events if e["to_state"] == "failed"]
        assert all(
            "restart" in (e["reason"] or "") or "simulated" in (e["reason"] or "") for e in lost
        )
        wait_until(
            lambda: all(j["state"] == "ready" for j in all_jobs(c)),
            180,
            "the farm to complete every job",
        )
        check_event_log(all_events(c), all_jobs(c))
    assert d.kill(signal.SIGTERM) == 0


def test_sigterm_stops_quickly_and_restart_keeps_the_queue(
    tmp_path: Path, daemon_factory: Any
) -> None:
    d: DaemonProcess = daemon_factory(
        make_config(tmp_path, four_printers(False), dispatch_paused=True)
    )
    d.start()
    with d.client() as c:
        submitted = submit_mix(c)
        c.post("/api/orchestrator/reprioritize", json={"jobId": submitted[5]["id"], "priority": 99})
        c.put("/api/orchestrator/config", json={"max_retries": 7})
        before = [j["id"] for j in all_jobs(c)]
    assert d.kill(signal.SIGTERM) == 0
    d.start()
    with d.client() as c:
        assert [j["id"] for j in all_jobs(c)] == before
        assert c.get(f"/api/jobs/{submitted[5]['id']}").json()["priority"] == 99
        assert c.get("/api/orchestrator/config").json()["max_retries"] == 7
        assert c.get("/api/orchestrator/status").json()["paused"] is True
        assert c.get("/api/orchestrator/status").json()["queue_depth"] == 20


def run_cli(*args: str, env_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "printfarmd", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        env={
            "PRINTFARMD_URL": env_url,
            "PRINTFARMD_API_KEY": API_KEY,
            "PATH": "/usr/bin:/bin",
            "COLUMNS": "200",
        },
    )


def test_cli_talks_to_the_running_daemon(tmp_path: Path, daemon_factory: Any) -> None:
    d: DaemonProcess = daemon_factory(
        make_config(tmp_path, four_printers(False), dispatch_paused=True)
    )
    d.start()
    added = run_cli(
        "jobs", "add", "benchy_pla.gcode", "--priority", "4", "--copies", "2", env_url=d.url
    )
    assert added.returncode == 0, added.stderr
    with d.client() as c:
        jobs = all_jobs(c)
    assert len(jobs) == 2 and {j["priority"] for j in jobs} == {4}
    listed = run_cli("jobs", "list", env_url=d.url)
    assert listed.returncode == 0 and jobs[0]["id"] in listed.stdout
    status = run_cli("status", env_url=d.url)
    assert status.returncode == 0
    for pid in ("sim-1", "sim-2", "sim-3", "sim-4"):
        assert pid in status.stdout
    cancelled = run_cli("jobs", "cancel", jobs[0]["id"], env_url=d.url)
    assert cancelled.returncode == 0, cancelled.stderr
    with d.client() as c:
        assert c.get(f"/api/jobs/{jobs[0]['id']}").json()["state"] == JobState.CANCELLED.value
    bad = run_cli("jobs", "add", "../../etc/passwd", env_url=d.url)
    assert bad.returncode != 0 and "filename" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("jobs", "cancel", "0123456789ABCDEF", env_url=d.url)
    assert missing.returncode != 0 and "not found" in missing.stderr
