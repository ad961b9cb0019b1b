"""Crash safety: the kill -9 loop and the fault scenarios of the reliability reference
(F2, F8, F9, F10, F13, F14, F15), against ``printfarmd serve`` subprocesses."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from msgspec.structs import replace

from printfarmd.daemon import EXIT_DAMAGED_DB
from tests import crashloop
from tests.conftest import API_KEY, REPO, DaemonProcess, make_config, sim_printer

pytestmark = pytest.mark.slow

#: Debian's libfaketime, wherever the architecture puts it (``.ci/run`` installs it): its
#: thread-safe build. The daemon reads the clock from its worker threads too, and the
#: plain build keeps the clock's state in unguarded statics (its README): once in CI a
#: daemon under it logged "ready" and then never answered.
LIBFAKETIME = next(
    Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"),
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
)


def db_of(d: DaemonProcess) -> Path:
    return d.config_path.parent / "data" / "printfarmd.db"


def post_job(c: httpx.Client, key: str | None = None, **body: Any) -> httpx.Response:
    body.setdefault("filename", "benchy_pla.gcode")
    headers = {"Idempotency-Key": key} if key else {}
    return c.post("/api/jobs", json=body, headers=headers)


# ------------------------------------------------------------------ F1


def test_kill_9_loop_200_iterations_loses_nothing(tmp_path: Path) -> None:
    """F1: 200 seeded kill -9 at random moments under mixed load; after each, every
    acknowledged job and cancel is in the file, trails are legal, integrity is ok,
    and no printer holds two jobs. Kill moments 50-500 ms (CI time budget)."""
    report = crashloop.run(
        iterations=200, seed=20261123, max_seconds=1200, workdir=tmp_path, kill_max_ms=500
    )
    assert report.iterations == 200
    assert report.acked_jobs > 1000 and report.acked_cancels > 100


# ------------------------------------------------------------------ F14, F15


def test_f14_lost_ack_then_retry_with_the_same_key_gives_one_job(
    tmp_path: Path, daemon_factory: Any
) -> None:
    d: DaemonProcess = daemon_factory(make_config(tmp_path, dispatch_paused=True))
    d.env = {"PRINTFARMD_FAULTS": "kill@job-created:1"}
    d.start()
    with d.client() as c, pytest.raises(httpx.HTTPError):
        post_job(c, key="order-7")  # committed, then the daemon dies before answering
    assert d.proc is not None and d.proc.wait(timeout=10) == -signal.SIGKILL
    d.env = {}
    d.start()
    with d.client() as c:
        r = post_job(c, key="order-7")
        assert r.status_code == 200  # the replay of the job that was stored
        listing = c.get("/api/jobs").json()
    assert listing["total"] == 1
    assert listing["jobs"][0]["id"] == r.json()["jobs"][0]["id"]


@pytest.mark.parametrize("point", ["watchdog-before-commit", "watchdog-after-commit"])
def test_f15_kill_inside_a_watchdog_requeue(
    tmp_path: Path, daemon_factory: Any, point: str
) -> None:
    # A printer that never reports progress: the watchdog acts after one second.
    stuck = sim_printer("stuck", ("PLA",), speed=1.0, auto_clear=True)
    config = make_config(tmp_path, (stuck,))
    config = replace(
        config,
        printers=(replace(stuck, simulator=replace(stuck.simulator, report_interval=1e6)),),
        watchdog=replace(config.watchdog, interval=0.2, stale_threshold=1.0),
    )
    d: DaemonProcess = daemon_factory(config)
    d.env = {"PRINTFARMD_FAULTS": f"kill@{point}:1"}
    d.start()
    with d.client() as c:
        r = post_job(c, estimated_time=36000)
        jid = r.json()["jobs"][0]["id"]
    assert d.proc is not None and d.proc.wait(timeout=20) == -signal.SIGKILL
    conn = sqlite3.connect(db_of(d))
    state, retries, printer = conn.execute(
        "SELECT state, retry_count, printer_id FROM jobs WHERE id = ?", (jid,)
    ).fetchone()
    trail = [
        r[0]
        for r in conn.execute(
            "SELECT to_state FROM events WHERE job_id = ? AND type = 'job.transition' ORDER BY seq",
            (jid,),
        )
    ]
    conn.close()
    if point == "watchdog-before-commit":
        assert (state, retries, printer) == ("printing", 0, "stuck")
        assert trail[-1] == "printing" and "failed" not in trail
    else:
        assert (state, retries, printer) == ("queued", 1, None)
        assert trail[-3:] == ["printing", "failed", "queued"] and trail.count("failed") == 1
    d.env = {}
    d.start()  # and the farm carries on from there
    with d.client() as c:
        assert c.get(f"/api/jobs/{jid}").json()["state"] in ("queued", "printing", "failed")


# ------------------------------------------------------------------ F13


def _make_db_with_jobs(tmp_path: Path, daemon_factory: Any, n: int = 300) -> DaemonProcess:
    d: DaemonProcess = daemon_factory(make_config(tmp_path, dispatch_paused=True))
    d.start()
    with d.client() as c:
        for i in range(n // 10):
            assert post_job(c, copies=10, name=f"batch {i}").status_code == 201
    assert d.kill(signal.SIGTERM) == 0
    return d


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "not-a-database"])
def test_f13_a_damaged_database_is_refused_and_left_untouched(
    tmp_path: Path, daemon_factory: Any, damage: str
) -> None:
    d = _make_db_with_jobs(tmp_path, daemon_factory)
    db = db_of(d)
    raw = bytearray(db.read_bytes())
    if damage == "overwrite":
        raw[4096:16384] = random.Random(1).randbytes(12288)
    elif damage == "truncate":
        raw = raw[: len(raw) // 3]
    else:
        raw = bytearray(b"hello" * 2000)
    db.write_bytes(bytes(raw))
    for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        extra.unlink(missing_ok=True)
    before = db.read_bytes()
    res = subprocess.run(
        [sys.executable, "-m", "printfarmd", "serve", "--config", str(d.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert res.returncode == EXIT_DAMAGED_DB
    assert "refusing to start" in res.stderr or "error:" in res.stderr
    assert "Traceback" not in res.stderr
    assert db.read_bytes() == before, "the damaged file must be left as it was"


def test_f13_deleted_wal_never_yields_an_empty_database(
    tmp_path: Path, daemon_factory: Any
) -> None:
    d = _make_db_with_jobs(tmp_path, daemon_factory, n=100)  # SIGTERM: checkpointed on close
    d.start()
    with d.client() as c:
        post_job(c, copies=5)
    d.kill(signal.SIGKILL)  # leaves a hot WAL
    db_of(d).with_name("printfarmd.db-wal").unlink(missing_ok=True)
    d.start()
    with d.client() as c:
        assert c.get("/api/jobs").json()["total"] >= 100  # older data is all there


# ------------------------------------------------------------------ F10


def test_f10_locked_database_answers_503_and_recovers(tmp_path: Path, daemon_factory: Any) -> None:
    d: DaemonProcess = daemon_factory(make_config(tmp_path, dispatch_paused=True))
    d.start()
    with d.client() as c:
        assert post_job(c).status_code == 201
        lock = sqlite3.connect(db_of(d), timeout=0, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            result: dict[str, Any] = {}

            def write() -> None:
                result["r"] = post_job(c, key="during-lock")

            writer = threading.Thread(target=write)
            writer.start()
            time.sleep(0.5)
            with httpx.Client(base_url=d.url, headers={"X-Api-Key": API_KEY}) as reader:
                # reads keep working while the write waits out the lock
                assert reader.get("/api/jobs").status_code == 200
            assert writer.is_alive()
            writer.join(timeout=30)
            r = result["r"]
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "storage_busy"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert post_job(c, key="after-lock").status_code == 201
        jobs = c.get("/api/jobs").json()
    assert jobs["total"] == 2  # the refused write left nothing behind


# ------------------------------------------------------------------ F9


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "8m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, (
        f"F9 needs a small filesystem: mounting tmpfs failed ({res.stderr.strip()}); "
        "run the suite as root (CI does)"
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_f9_disk_full_answers_507_and_recovers_without_restart(
    tmp_path: Path, daemon_factory: Any
) -> None:
    with small_filesystem(tmp_path / "small") as small:
        config = make_config(tmp_path, dispatch_paused=True)
        config = replace(config, storage=replace(config.storage, data_dir=str(small / "data")))
        d: DaemonProcess = daemon_factory(config)
        d.start()
        acked: list[str] = []
        try:
            with d.client() as c:
                for _ in range(5):
                    r = post_job(c)
                    assert r.status_code == 201
                    acked += [j["id"] for j in r.json()["jobs"]]
                filler = small / "filler"
                # Unbuffered: a buffered file would try to flush what did not fit once
                # more when it closes, and raise ENOSPC there, outside the suppress.
                with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * 65536)
                refused = [post_job(c, name="x" * 200) for _ in range(20)]
                codes = {r.status_code for r in refused}
                assert codes <= {507, 503, 201}, codes
                assert 507 in codes or 503 in codes, "a full disk must refuse writes"
                acked += [
                    j["id"] for r in refused if r.status_code == 201 for j in r.json()["jobs"]
                ]
                for r in refused:
                    if r.status_code != 201:
                        assert r.json()["error"]["code"] in ("storage_full", "storage_busy")
                # still up, and says why writes fail (issue 13: degraded, not dead)
                health = c.get("/api/health").json()
                assert health["status"] == "degraded" and "disk is full" in health["reason"]
                filler.unlink()
                deadline = time.monotonic() + 10
                while (r := post_job(c)).status_code != 201:
                    assert time.monotonic() < deadline, r.text
                    time.sleep(0.2)
                acked += [j["id"] for j in r.json()["jobs"]]
                assert c.get("/api/health").json()["status"] == "ok"  # recovered by itself
                ids = {j["id"] for j in c.get("/api/jobs", params={"limit": 1000}).json()["jobs"]}
            assert set(acked) <= ids
            assert d.kill(signal.SIGTERM) == 0
            conn = sqlite3.connect(config.data_path / "printfarmd.db")
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            conn.close()
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()


# ------------------------------------------------------------------ F2


def test_f2_sigterm_under_load_exits_0_quickly_and_loses_no_ack(
    tmp_path: Path, daemon_factory: Any
) -> None:
    printers = (sim_printer("a", ("PLA",), speed=3000.0, auto_clear=True),)
    d: DaemonProcess = daemon_factory(make_config(tmp_path, printers))
    d.start()
    acked: list[str] = []
    codes: list[int | str] = []
    stop = threading.Event()

    def load(w: int) -> None:
        with httpx.Client(base_url=d.url, headers={"X-Api-Key": API_KEY}, timeout=10) as c:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = post_job(c, key=f"f2-{w}-{n}")
                except httpx.HTTPError as exc:
                    codes.append(type(exc).__name__)
                    return
                codes.append(r.status_code)
                if r.status_code == 201:
                    acked.extend(j["id"] for j in r.json()["jobs"])

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    assert d.kill(signal.SIGTERM) == 0  # (kill waits at most 15 s; its speed: bench/)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert {c for c in codes if isinstance(c, int)} <= {201, 503}
    d.start()
    with d.client() as c:
        ids = {j["id"] for j in c.get("/api/jobs", params={"limit": 1000}).json()["jobs"]}
    assert acked and set(acked) <= ids


# ------------------------------------------------------------------ F8


def test_f8_wall_clock_jumps_do_not_requeue_or_crash(tmp_path: Path, daemon_factory: Any) -> None:
    assert LIBFAKETIME.exists(), "F8 needs Debian's faketime package (.ci/run installs it)"

    printer = sim_printer("p", ("PLA",), speed=1.0)
    printer = replace(printer, simulator=replace(printer.simulator, report_interval=0.5))
    config = make_config(tmp_path, (printer,))
    # A watchdog on the wall clock would requeue at once after a +1 day jump (and stall
    # after -1 h); 8 s is far below both, and well above a busy machine's report gaps.
    config = replace(config, watchdog=replace(config.watchdog, interval=0.2, stale_threshold=8.0))
    d: DaemonProcess = daemon_factory(config)
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    d.env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    d.start()
    with d.client() as c:
        jid = post_job(c, estimated_time=3600).json()["jobs"][0]["id"]
        deadline = time.monotonic() + 10
        while c.get(f"/api/jobs/{jid}").json()["state"] != "printing":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for jump in ("+1d", "-1h", "+0"):
            offset.write_text(jump + "\n")
            time.sleep(3.0)  # several watchdog sweeps after the jump
            job = c.get(f"/api/jobs/{jid}").json()
            assert job["state"] == "printing", (jump, job)
        events = c.get("/api/events/history", params={"job": jid}).json()["events"]
        assert [e["to_state"] for e in events if e["type"] == "job.transition"].count("failed") == 0
        assert all(e["at"].endswith("Z") for e in events)
    assert d.kill(signal.SIGTERM) == 0
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
    os.sync()


# ------------------------------------------------------------------ backups


def test_backup_command_and_periodic_backups_while_running(
    tmp_path: Path, daemon_factory: Any
) -> None:
    config = make_config(tmp_path, dispatch_paused=True)
    config = replace(config, storage=replace(config.storage, backup_interval=0.5, backup_keep=2))
    d: DaemonProcess = daemon_factory(config)
    d.start()
    with d.client() as c:
        for _ in range(3):
            assert post_job(c, copies=5).status_code == 201
        out = tmp_path / "manual.db"
        res = subprocess.run(
            [sys.executable, "-m", "printfarmd", "backup", "--config", str(d.config_path),
             "--output", str(out)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "backup written" in res.stdout
        conn = sqlite3.connect(out)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 15
        conn.close()
        folder = config.data_path / "backups"
        deadline = time.monotonic() + 15
        while len(list(folder.glob("printfarmd-*.db"))) < 2:
            assert time.monotonic() < deadline, "no periodic backups"
            time.sleep(0.2)
        time.sleep(2.5)  # several more intervals: older ones are pruned
        kept = sorted(folder.glob("printfarmd-*.db"))
        assert 1 <= len(kept) <= 2
        conn = sqlite3.connect(kept[-1])
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 15
        conn.close()
    assert d.kill(signal.SIGTERM) == 0


def test_a_database_from_before_a_migration_is_copied_first(tmp_path: Path) -> None:
    from printfarmd.store.database import open_database
    from printfarmd.store.migrations import MIGRATIONS

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    writer, applied = open_database(db)
    writer.close()
    assert applied == len(MIGRATIONS) - 1
    copy = tmp_path / "backups" / "pre-migration-v1.db"
    conn = sqlite3.connect(copy)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
