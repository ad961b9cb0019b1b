"""The real daemon on a real PostgreSQL server (issue 18, phase 1): jobs created over
HTTP print on the simulated printers, everything is in PostgreSQL (not in a SQLite file),
and a restarted daemon finds every job, event and plate where it left them."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest

from printfarmd.config import StorageBackend
from printfarmd.daemon import DB_NAME, EXIT_NO_DATABASE
from tests.conftest import API_KEY, DaemonProcess, make_config, sim_printer, wait_until
from tests.pg_server import PgServer

pytestmark = pytest.mark.slow

FAST = 3000.0


def jobs_of(c: httpx.Client) -> dict[str, dict[str, Any]]:
    return {j["id"]: j for j in c.get("/api/jobs", params={"limit": 1000}).json()["jobs"]}


def events_of(c: httpx.Client) -> list[dict[str, Any]]:
    return list(c.get("/api/events/history", params={"after": 0}).json()["events"])


def test_the_daemon_runs_on_postgresql_and_finds_its_jobs_after_a_restart(
    tmp_path: Path, daemon_factory: Any, pg_dsn: str
) -> None:
    printers = tuple(sim_printer(f"sim-{k}", ("PLA",), speed=FAST) for k in (1, 2))
    config = make_config(tmp_path, printers)
    config = msgspec.structs.replace(
        config,
        storage=msgspec.structs.replace(
            config.storage, backend=StorageBackend.POSTGRESQL, dsn=pg_dsn
        ),
    )
    d: DaemonProcess = daemon_factory(config)
    d.start()
    with d.client() as c:
        created = []
        for _ in range(4):
            r = c.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
            assert r.status_code == 201, r.text
            created += r.json()["jobs"]
        ids = [j["id"] for j in created]

        def two_printed() -> bool:
            return sum(j["state"] == "post_process" for j in jobs_of(c).values()) == 2

        # Each printer prints one job, then waits for its plate to be cleared.
        wait_until(two_printed, 60, "both printers to finish a job")
        before = jobs_of(c)
        trail = events_of(c)
    assert sorted(before) == sorted(ids)
    assert [j["state"] for j in before.values()].count("queued") == 2
    printed = {j["printer_id"] for j in before.values() if j["state"] == "post_process"}
    assert printed == {"sim-1", "sim-2"}
    # The state is in PostgreSQL, and nothing in a SQLite file.
    assert not (config.data_path / DB_NAME).exists()
    with psycopg.connect(pg_dsn) as conn:
        stored = dict(conn.execute("SELECT id, state FROM jobs").fetchall())
        attempts = conn.execute("SELECT COUNT(*) FROM history").fetchone()
    assert stored == {i: j["state"] for i, j in before.items()}
    assert attempts == (2,)
    assert d.kill(signal.SIGTERM) == 0

    d.start()
    with d.client() as c:
        after = jobs_of(c)
        assert {i: j["state"] for i, j in after.items()} == {
            i: j["state"] for i, j in before.items()
        }
        assert events_of(c)[: len(trail)] == trail
        # The plates are still full after the restart (remembered in PostgreSQL).
        states = {p["id"]: p["state"] for p in c.get("/api/printers").json()["printers"]}
        assert states == {"sim-1": "awaiting_clear", "sim-2": "awaiting_clear"}
        for pid in states:
            assert c.post(f"/api/printers/{pid}/clear").status_code == 200

        def all_printed() -> bool:
            return all(j["state"] in ("post_process", "ready") for j in jobs_of(c).values())

        wait_until(all_printed, 60, "the two queued jobs to print after the restart")
    assert d.kill(signal.SIGTERM) == 0


def test_an_unreachable_database_at_start_is_a_clear_error(
    tmp_path: Path, daemon_factory: Any, pg_server: PgServer
) -> None:
    dsn = f"postgresql://farm:hunter2@127.0.0.1:{pg_server.port + 1}/printfarm"
    config = make_config(tmp_path)
    config = msgspec.structs.replace(
        config,
        storage=msgspec.structs.replace(config.storage, backend=StorageBackend.POSTGRESQL, dsn=dsn),
    )
    d: DaemonProcess = daemon_factory(config)
    with pytest.raises(RuntimeError, match=f"exited with {EXIT_NO_DATABASE}"):
        d.start()
    log = d.log()
    assert "cannot connect to PostgreSQL at postgresql://farm@127.0.0.1" in log
    assert "hunter2" not in log


def _pg_config(tmp_path: Path, dsn: str, **sched: Any) -> Any:
    printers = tuple(sim_printer(f"sim-{k}", ("PLA",), speed=FAST, auto_clear=True) for k in (1, 2))
    config = make_config(tmp_path, printers, **sched)
    storage = msgspec.structs.replace(config.storage, backend=StorageBackend.POSTGRESQL, dsn=dsn)
    return msgspec.structs.replace(config, storage=storage)


def test_kill_9_mid_load_loses_no_acknowledged_job(
    tmp_path: Path, daemon_factory: Any, pg_dsn: str
) -> None:
    """A 201 means committed in PostgreSQL: the daemon killed -9 under a stream of
    creations, every job it acknowledged is there after the restart, with its trail."""
    d: DaemonProcess = daemon_factory(_pg_config(tmp_path, pg_dsn))
    d.start()
    acked: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=d.url, headers={"X-Api-Key": API_KEY}, timeout=5.0) as c:
            while not stop.is_set():
                try:
                    r = c.post("/api/jobs", json={"filename": "benchy_pla.gcode", "copies": 2})
                except httpx.HTTPError:
                    return  # the daemon died under us: this one was never acknowledged
                if r.status_code == 201:
                    acked.extend(j["id"] for j in r.json()["jobs"])

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: len(acked) >= 40, 60, "40 acknowledged jobs")
        assert d.kill(signal.SIGKILL) == -signal.SIGKILL
    finally:
        stop.set()
        worker.join(timeout=20)
    d.start()
    with d.client() as c:
        found = jobs_of(c)
        trail = events_of(c)
    assert set(acked) <= set(found)
    created = {e["job_id"] for e in trail if e.get("to_state") == "created"}
    assert set(acked) <= created
    assert d.kill(signal.SIGTERM) == 0


def test_the_server_down_gives_503_and_the_daemon_recovers_by_itself(
    tmp_path: Path, daemon_factory: Any, pg_server: PgServer
) -> None:
    """PostgreSQL stopped under the running daemon: creations answer 503 (nothing
    half-stored), the daemon keeps serving reads of what it holds and does not exit; the
    server back, creations are acknowledged again without a restart of the daemon."""
    dsn = pg_server.fresh_dsn()
    d: DaemonProcess = daemon_factory(_pg_config(tmp_path, dsn, dispatch_paused=True))
    d.start()
    with d.client() as c:
        before = c.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
        assert before.status_code == 201
        pg_server.stop()
        try:
            refused = c.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "storage_busy"
            assert c.get("/api/health").status_code in (200, 503)
            assert d.proc is not None and d.proc.poll() is None
        finally:
            pg_server.start()

        def accepted() -> bool:
            return c.post("/api/jobs", json={"filename": "benchy_pla.gcode"}).status_code == 201

        wait_until(accepted, 60, "a creation acknowledged after the server came back")
        ids = set(jobs_of(c))
    assert before.json()["jobs"][0]["id"] in ids
    assert len(ids) >= 2
    assert d.kill(signal.SIGTERM) == 0
