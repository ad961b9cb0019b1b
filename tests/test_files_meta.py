"""Slicer metadata in use: jobs take material and nozzle from an uploaded G-code and are
routed by them; the facade's ``server.files.metadata`` answers in Moonraker's names and
serves the extracted thumbnails."""

from __future__ import annotations

from pathlib import Path

from tests import gcode_samples as gs
from tests.conftest import LiveFarm, live_farm, make_config, sim_printer
from tests.moonraker_client import open_rpc

DONE = {"post_process", "ready", "shipped"}


async def test_petg_gcode_is_only_routed_to_a_petg_printer(tmp_path: Path) -> None:
    printers = (
        sim_printer("pla-a", ("PLA",), speed=50_000.0, auto_clear=True),
        sim_printer("pla-b", ("PLA",), speed=50_000.0, auto_clear=True),
        sim_printer("petg", ("PETG",), speed=50_000.0, auto_clear=True),
    )
    async with live_farm(make_config(tmp_path, printers)) as farm:
        c = farm.client
        up = await c.post("/api/files", files={"file": ("petg.gcode", gs.prusaslicer())})
        assert up.status_code == 201, up.text
        # No material or nozzle given: both come from the file's metadata.
        r = await c.post("/api/jobs", json={"filename": "petg.gcode", "copies": 3})
        assert r.status_code == 201, r.text
        jobs = r.json()["jobs"]
        assert len(jobs) == 3
        assert all(j["material"] == "PETG" and j["nozzle_diameter"] == 0.4 for j in jobs)
        assert all(j["estimated_time"] == 3723.0 for j in jobs)
        ids = [j["id"] for j in jobs]

        async def all_done() -> bool:
            states = [(await c.get(f"/api/jobs/{i}")).json() for i in ids]
            return all(s["state"] in DONE for s in states)

        await farm.wait_for(all_done, within=30)
        for i in ids:
            job = (await c.get(f"/api/jobs/{i}")).json()
            assert job["printer_id"] == "petg", job


async def test_facade_metadata_in_moonraker_names_with_thumbnails(farm: LiveFarm) -> None:
    c = farm.client
    up = await c.post("/api/files", files={"file": ("orca/part.gcode", gs.orcaslicer())})
    assert up.status_code == 201, up.text
    async with open_rpc(farm.url) as rpc:
        meta = await rpc.call("server.files.metadata", {"filename": "orca/part.gcode"})
    assert meta["slicer"] == "OrcaSlicer" and meta["slicer_version"] == "2.1.1"
    assert meta["estimated_time"] == 7530.0
    assert meta["filament_type"] == "ASA"
    assert meta["filament_name"] == "Generic ASA @System"
    assert meta["filament_colors"] == ["#00AE42", "#FFFFFF"]
    assert meta["filament_total"] == 4567.89
    assert meta["filament_weight_total"] == 13.68
    assert meta["layer_height"] == 0.2 and meta["first_layer_height"] == 0.25
    assert meta["first_layer_extr_temp"] == 260 and meta["first_layer_bed_temp"] == 95
    assert meta["object_height"] == 16.0 and meta["nozzle_diameter"] == 0.6
    assert meta["thumbnails"] == [
        {
            "width": 300,
            "height": 300,
            "size": len(gs.tiny_png(3, 3)),
            "relative_path": ".thumbs/part-300x300.png",
        }
    ]
    thumb = await c.get("/server/files/gcodes/orca/.thumbs/part-300x300.png")
    assert thumb.status_code == 200 and thumb.content == gs.tiny_png(3, 3)
    # The thumbnail folder is hidden from the G-code listing.
    listed = (await c.get("/api/files")).json()["files"]
    assert [f["path"] for f in listed if f["path"].startswith("orca/")] == ["orca/part.gcode"]


async def test_facade_metadata_omits_what_the_file_does_not_say(farm: LiveFarm) -> None:
    up = await farm.client.post("/api/files", files={"file": ("cura.gcode", gs.cura())})
    assert up.status_code == 201, up.text
    async with open_rpc(farm.url) as rpc:
        meta = await rpc.call("server.files.metadata", {"filename": "cura.gcode"})
    assert meta["slicer"] == "Cura" and meta["estimated_time"] == 5025.0
    assert "filament_type" not in meta and "nozzle_diameter" not in meta
    assert "filament_weight_total" not in meta and meta["thumbnails"] == []
