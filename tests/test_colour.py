"""Colour routing over the REST API (issue 15): a job asking for a colour goes only to a
printer with that colour loaded; one no printer has is refused, nothing stored."""

from __future__ import annotations

from pathlib import Path

import msgspec

from tests.conftest import live_farm, make_config, sim_printer


async def test_a_job_asking_for_a_colour_goes_to_the_printer_that_has_it(tmp_path: Path) -> None:
    white = msgspec.structs.replace(sim_printer("white", ("PLA",), speed=1.0), colours=("#FFFFFF",))
    orange = msgspec.structs.replace(
        sim_printer("orange", ("PLA",), speed=1.0), colours=("#FF6600",)
    )
    async with live_farm(make_config(tmp_path, (white, orange), dispatch_paused=True)) as farm:
        r = await farm.client.post(
            "/api/jobs", json={"filename": "benchy_pla.gcode", "colour": "#ff6600", "copies": 2}
        )
        assert r.status_code == 201, r.text
        ids = [j["id"] for j in r.json()["jobs"]]
        assert {j["colour"] for j in r.json()["jobs"]} == {"#FF6600"}
        r = await farm.client.post(
            "/api/jobs", json={"filename": "benchy_pla.gcode", "colour": "#00FF00"}
        )
        assert r.status_code == 422
        assert "#00FF00 is not loaded" in r.json()["error"]["message"]
        r = await farm.client.post(
            "/api/jobs", json={"filename": "benchy_pla.gcode", "colour": "red"}
        )
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("colour:")
        assert (await farm.client.get("/api/jobs")).json()["total"] == 2  # nothing else stored
        await farm.client.post("/api/orchestrator/resume")

        async def first_printing() -> bool:
            jobs = [(await farm.client.get(f"/api/jobs/{j}")).json() for j in ids]
            return any(j["state"] == "printing" for j in jobs)

        await farm.wait_for(first_printing)
        jobs = [(await farm.client.get(f"/api/jobs/{j}")).json() for j in ids]
        # one prints on the orange printer; the other waits for it (never the white one)
        assert {j["printer_id"] for j in jobs if j["state"] == "printing"} == {"orange"}
        assert [j["state"] for j in jobs].count("queued") == 1
        printers = {p["id"]: p for p in (await farm.client.get("/api/printers")).json()["printers"]}
        assert printers["white"]["colours"] == ["#FFFFFF"] and printers["white"]["state"] == "idle"
