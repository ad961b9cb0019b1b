"""The owner's promises over real sockets (issue 13): clients that hang up, a cancel
during a slow upload to a Moonraker printer, a full disk on a real tmpfs, a taken port.
"""

from __future__ import annotations

import hashlib
import random
import socket
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import orjson
import trio

from printfarmd.config import MoonrakerOptions, PrinterConfig
from printfarmd.drivers.moonraker_sim import open_moonraker_sim
from tests.conftest import (
    API_KEY,
    REPO,
    LiveFarm,
    free_port,
    live_farm,
    make_config,
    sim_printer,
    write_config,
)
from tests.test_crash import small_filesystem

# The spec's transitions (../shared/seeds/printstudio-job-queue.txt), plus cancel from
# any state that is not final.
SPEC_NEXT = {
    "created": {"validated", "cancelled"},
    "validated": {"sliced", "cancelled"},
    "sliced": {"queued", "cancelled"},
    "queued": {"printing", "cancelled"},
    "printing": {"post_process", "failed", "cancelled"},
    "post_process": {"ready", "cancelled"},
    "ready": {"shipped", "cancelled"},
    "failed": {"queued", "cancelled"},
    "shipped": set(),
    "cancelled": set(),
}
FAST = MoonrakerOptions(
    timeout=5.0, heartbeat=0.2, offline_after=2, backoff_initial=0.1, backoff_max=0.4
)


async def all_events(farm: LiveFarm) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        r = await farm.client.get("/api/events/history", params={"after": after, "limit": 5000})
        page = r.json()["events"]
        if not page:
            return out
        out += page
        after = page[-1]["seq"]


async def all_jobs(farm: LiveFarm) -> list[dict[str, Any]]:
    r = await farm.client.get("/api/jobs", params={"limit": 1000})
    return list(r.json()["jobs"])


def check_trails(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each job's transitions chain (each from the state the last one reached), follow
    the spec, and nothing happens to a job after it was cancelled."""
    trails: dict[str, list[str]] = {}
    for ev in events:
        if ev["type"] != "job.transition":
            continue
        jid, frm, to = ev["job_id"], ev["from_state"], ev["to_state"]
        trail = trails.setdefault(jid, [])
        if frm is None:
            assert not trail and to == "created", (jid, trail, to)
        else:
            assert trail and trail[-1] == frm, (jid, trail, frm, to)
            assert to in SPEC_NEXT[frm], (jid, frm, to)
        trail.append(to)
    return trails


async def hang_up(url: str, method: str, path: str, body: bytes, after: float, rst: bool) -> None:
    """Send a request, then drop the connection ``after`` seconds later (RST or FIN),
    whatever the server was doing."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Idempotency-Key: hang-{random.random()}\r\n\r\n"
    ).encode()
    try:
        await stream.send_all(head + body)
        await trio.sleep(after)
    finally:
        if rst:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()


async def test_clients_hanging_up_strand_nothing_and_no_cancelled_job_prints(
    tmp_path: Path,
) -> None:
    printers = tuple(
        sim_printer(f"p{n}", ("PLA",), speed=3000.0, auto_clear=True) for n in range(3)
    )
    rng = random.Random(13)
    async with live_farm(make_config(tmp_path, printers)) as farm:
        created: list[str] = []
        body = orjson.dumps({"filename": "benchy_pla.gcode"})
        # Some jobs the ordinary way, to have targets for cancels.
        for _ in range(10):
            r = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
            created.append(r.json()["jobs"][0]["id"])
        async with trio.open_nursery() as nursery:
            for n in range(120):
                # From before the server read it to well after it answered.
                after = rng.choice((0.0, 0.001, 0.01, 0.05)) + rng.random() * 0.8
                rst = rng.random() < 0.5
                if n % 3 == 0:
                    target = rng.choice(created)
                    args: tuple[Any, ...] = ("POST", f"/api/jobs/{target}/cancel", b"", after, rst)
                else:
                    args = ("POST", "/api/jobs", body, after, rst)
                nursery.start_soon(hang_up, farm.url, *args)
                if n % 10 == 0:
                    await trio.sleep(0.01)

        # Afterwards nothing is stranded: the farm drains every queued job by itself.
        async def drained() -> bool:
            states = {j["state"] for j in await all_jobs(farm)}
            return not states & {
                "created",
                "validated",
                "sliced",
                "queued",
                "printing",
                "post_process",
            }

        await farm.wait_for(drained, within=90)
        jobs = await all_jobs(farm)
        assert len(jobs) > 10  # some of the hung-up creations did happen
        trails = check_trails(await all_events(farm))
        for job in jobs:
            trail = trails[job["id"]]
            assert trail[-1] == job["state"], (job["id"], trail, job["state"])
            if "cancelled" in trail:
                assert trail[-1] == "cancelled"
        # The farm's memory agrees with the store: nothing live is left in memory.
        assert dict(farm.owner.jobs) == {}


async def test_a_cancel_during_a_slow_upload_never_leaves_the_printer_printing(
    tmp_path: Path,
) -> None:
    async with open_moonraker_sim(print_time=60.0) as sim:
        printer = PrinterConfig(
            id="k1",
            driver="moonraker",
            materials=("PLA",),
            moonraker=msgspec.structs.replace(FAST, url=sim.url),
        )
        async with live_farm(make_config(tmp_path, (printer,))) as farm:
            await farm.wait_for(lambda: _printer_is(farm, "k1", "idle"), within=20)
            sim.delay = 2.0  # every answer, the upload too, takes seconds
            r = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
            assert r.status_code == 201, r.text
            job = r.json()["jobs"][0]["id"]

            async def uploading() -> bool:
                return "server.files.upload" in sim.calls or await _job_is(farm, job, "printing")

            await farm.wait_for(uploading, within=20)
            r = await farm.client.post(f"/api/jobs/{job}/cancel")
            assert r.status_code == 200 and r.json()["state"] == "cancelled"
            sim.delay = 0.0

            # The printer never ends up printing the job: it is either never started or
            # told to cancel it once the hand-over returns.
            async def settled() -> bool:
                return sim.klipper.state != "printing" and (
                    "printer.print.start" not in sim.calls or "printer.print.cancel" in sim.calls
                )

            await farm.wait_for(settled, within=30)
            if "printer.print.start" in sim.calls:
                assert sim.calls.index("printer.print.cancel") > sim.calls.index(
                    "printer.print.start"
                )
            events = await all_events(farm)
            check_trails(events)
            assert [e["to_state"] for e in events if e.get("job_id") == job][-1] == "cancelled"


async def _printer_is(farm: LiveFarm, pid: str, state: str) -> bool:
    return bool((await farm.client.get(f"/api/printers/{pid}")).json()["state"] == state)


async def _job_is(farm: LiveFarm, job: str, state: str) -> bool:
    return bool((await farm.client.get(f"/api/jobs/{job}")).json()["state"] == state)


async def test_a_full_disk_while_a_printer_refuses_a_job_degrades_then_recovers(
    tmp_path: Path,
) -> None:
    async with open_moonraker_sim(print_time=60.0) as sim:
        sim.errors["printer.print.start"] = (500, "Printer busy (test)")
        printer = PrinterConfig(
            id="k1",
            driver="moonraker",
            materials=("PLA",),
            moonraker=msgspec.structs.replace(FAST, url=sim.url),
        )
        with small_filesystem(tmp_path / "small") as small:
            config = make_config(tmp_path, (printer,), retry_backoff=(3600.0,))
            config = msgspec.structs.replace(
                config,
                storage=msgspec.structs.replace(config.storage, data_dir=str(small / "data")),
            )
            async with live_farm(config) as farm:
                await farm.wait_for(lambda: _printer_is(farm, "k1", "idle"), within=20)
                sim.delay = 1.5  # the refusal comes back after the disk filled up
                r = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
                assert r.status_code == 201
                job = r.json()["jobs"][0]["id"]
                await farm.wait_for(lambda: _job_is(farm, job, "printing"), within=20)
                filler = small / "filler"
                await trio.to_thread.run_sync(_fill, filler)

                async def degraded() -> bool:
                    health = (await farm.client.get("/api/health")).json()
                    return bool(health["status"] == "degraded")

                await farm.wait_for(degraded, within=30)
                health = (await farm.client.get("/api/health")).json()
                assert "disk is full" in health["reason"]
                r = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
                assert r.status_code == 507, r.text
                assert r.json()["error"]["code"] == "storage_full"
                # Still up, still answering reads; the refusal is not lost, only held.
                assert await _job_is(farm, job, "printing")
                filler.unlink()

                async def recovered() -> bool:
                    health = (await farm.client.get("/api/health")).json()
                    return bool(health["status"] == "ok") and await _job_is(farm, job, "failed")

                await farm.wait_for(recovered, within=30)
                got = (await farm.client.get(f"/api/jobs/{job}")).json()
                assert "refused the job" in got["last_error"]
                r = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
                assert r.status_code == 201
                check_trails(await all_events(farm))


def _fill(path: Path) -> None:
    # Unbuffered: a buffered file would flush what did not fit again when it closes,
    # and raise ENOSPC there.
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass


def test_a_taken_port_exits_2_with_one_line_and_touches_nothing(tmp_path: Path) -> None:
    port = free_port()
    config = make_config(tmp_path, port=port)
    path = write_config(config, tmp_path / "farm.toml")
    # A farm that has run before: its database exists.
    db = config.data_path / "printfarmd.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE marker (x)")
    conn.commit()
    conn.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    files_before = sorted(p.name for p in db.parent.iterdir())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        res = subprocess.run(
            [sys.executable, "-m", "printfarmd", "serve", "--config", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [
        f"error: port 127.0.0.1:{port} is already in use; stop that program or set server.port"
    ], lines
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in db.parent.iterdir()) == files_before


def test_taken_default_port_names_moonraker() -> None:
    from printfarmd.daemon import PortTaken, _bind

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            taken.bind(("127.0.0.1", 7125))
        except OSError:
            pass  # something already holds it: that is the case under test as well
        else:
            taken.listen(1)
        try:
            _bind("127.0.0.1", 7125).close()
        except PortTaken as exc:
            assert "Moonraker" in exc.message and "7125" in exc.message
        else:
            raise AssertionError("binding a taken port did not fail")
