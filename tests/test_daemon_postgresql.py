"""The real daemon on a real PostgreSQL server (issue 18, phase 1): jobs created over
HTTP print on the simulated printers, everything is in PostgreSQL (not in a SQLite file),
and a restarted daemon finds every job, event and plate where it left them."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import pytest

from printfarmd.config import StorageBackend
from printfarmd.daemon import DB_NAME, EXIT_NO_DATABASE
from tests.conftest import DaemonProcess, make_config, sim_printer
from tests.pg_server import PgServer

pytestmark = pytest.mark.slow

FAST = 3000.0


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def jobs_of(c: httpx.Client) -> dict[str, dict[str, Any]]:
    return {j["id"]: j for j in c.get("/api/jobs", params={"limit": 1000}).json()["jobs"]}


def events_of(c: httpx.Client) -> list[dict[str, Any]]:
    return list(c.get("/api/events/history", params={"after": 0}).json()["events"])


def test_the_daemon_runs_on_postgresql_and_finds_its_jobs_after_a_restart(
    tmp_path: Path, daemon_factory: Any, pg_dsn: str
) -> None:
    printers = tuple(sim_printer(f"sim-{k}", ("PLA",), speed=FAST) for k in (1, 2))
    config = make_config(tmp_path, printers)
    config = attrs.evolve(
        config,
        storage=attrs.evolve(config.storage, backend=StorageBackend.POSTGRESQL, dsn=pg_dsn),
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
    config = attrs.evolve(
        config, storage=attrs.evolve(config.storage, backend=StorageBackend.POSTGRESQL, dsn=dsn)
    )
    d: DaemonProcess = daemon_factory(config)
    with pytest.raises(RuntimeError, match=f"exited with {EXIT_NO_DATABASE}"):
        d.start()
    log = d.log()
    assert "cannot connect to PostgreSQL at postgresql://farm@127.0.0.1" in log
    assert "hunter2" not in log
