"""The slicing stage: an STL job goes through the configured slicer (a fake one here) and
ends QUEUED with the sliced file's metadata, or FAILED with the slicer's error text or
its timeout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec

from printfarmd.config import SlicerConfig
from tests.conftest import REPO, live_farm, make_config, sim_printer

FAKE = str(REPO / "tests" / "fake_slicer.py")


async def _run(tmp_path: Path, mode: str, limit: float = 20.0) -> dict[str, Any]:
    printers = (sim_printer("pla", ("PLA",)), sim_printer("petg", ("PETG",)))
    config = make_config(tmp_path, printers, dispatch_paused=True)
    slicer = SlicerConfig(
        command=(sys.executable, FAKE, mode, "{input}", "{output}"), timeout=limit
    )
    config = msgspec.structs.replace(config, slicer=slicer)
    (config.gcodes_path / "part.stl").write_bytes(b"solid part\nendsolid part\n")
    async with live_farm(config) as farm:
        c = farm.client
        r = await c.post("/api/jobs", json={"filename": "part.stl", "copies": 2})
        assert r.status_code == 201, r.text
        jobs = r.json()["jobs"]
        assert all(j["state"] == "validated" for j in jobs)  # waiting for the slicer
        ids = [j["id"] for j in jobs]

        async def settled() -> bool:
            states = [(await c.get(f"/api/jobs/{i}")).json()["state"] for i in ids]
            return all(s != "validated" for s in states)

        await farm.wait_for(settled, within=20)
        out = [(await c.get(f"/api/jobs/{i}")).json() for i in ids]
        sliced = sorted(p.name for p in (config.gcodes_path / ".sliced").glob("*"))
        return {"jobs": out, "files": sliced}


async def test_slicer_success_queues_the_sliced_gcode_with_its_metadata(tmp_path: Path) -> None:
    res = await _run(tmp_path, "ok")
    for job in res["jobs"]:
        assert job["state"] == "queued"
        assert job["filename"].startswith(".sliced/part-") and job["filename"].endswith(".gcode")
        assert job["material"] == "PETG" and job["estimated_time"] == 600.0
    assert len({j["filename"] for j in res["jobs"]}) == 1  # sliced once for both copies
    assert len(res["files"]) == 1 and not res["files"][0].startswith(".")


async def test_slicer_error_fails_the_job_with_its_text(tmp_path: Path) -> None:
    res = await _run(tmp_path, "fail")
    for job in res["jobs"]:
        assert job["state"] == "failed"
        assert "status 3" in job["last_error"]
        assert "part.stl: mesh is not manifold" in job["last_error"]
    assert res["files"] == []  # no half-written G-code left


async def test_slicer_timeout_fails_the_job_and_kills_it(tmp_path: Path) -> None:
    res = await _run(tmp_path, "hang", limit=0.5)
    for job in res["jobs"]:
        assert job["state"] == "failed"
        assert job["last_error"] == "slicer timed out after 0.5 s"
    assert res["files"] == []


async def test_a_slice_cut_short_by_a_stop_is_redone_at_start(tmp_path: Path) -> None:
    printers = (sim_printer("petg", ("PETG",)),)
    base = make_config(tmp_path, printers, dispatch_paused=True)
    (base.gcodes_path / "part.stl").write_bytes(b"solid part\nendsolid part\n")

    def with_slicer(mode: str) -> Any:
        cmd = (sys.executable, FAKE, mode, "{input}", "{output}")
        return msgspec.structs.replace(base, slicer=SlicerConfig(command=cmd, timeout=60.0))

    async with live_farm(with_slicer("hang")) as farm:  # stopped mid-slice
        r = await farm.client.post("/api/jobs", json={"filename": "part.stl"})
        jid = r.json()["jobs"][0]["id"]
        assert r.json()["jobs"][0]["state"] == "validated"
    async with live_farm(with_slicer("ok")) as farm:

        async def queued() -> bool:
            return bool((await farm.client.get(f"/api/jobs/{jid}")).json()["state"] == "queued")

        await farm.wait_for(queued, within=20)
        job = (await farm.client.get(f"/api/jobs/{jid}")).json()
    assert job["filename"].startswith(".sliced/part-") and job["material"] == "PETG"
