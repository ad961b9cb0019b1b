"""REST ``GET/DELETE /api/files/{path}``: the one containment check (S1-S4 of the
security tests), a symlink removed rather than followed, thumbnails removed with the file."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from tests import gcode_samples as gs
from tests.conftest import LiveFarm
from tests.test_moonraker_files import (  # noqa: F401 - the fixture is used by name
    TRAVERSAL,
    hostile_farm,
    links_intact,
    rejected,
)


async def test_rest_download_and_delete(farm: LiveFarm) -> None:
    c = farm.client
    root: Path = farm.running.services.config.gcodes_path
    data = gs.prusaslicer()
    assert (await c.post("/api/files", files={"file": ("d/p.gcode", data)})).status_code == 201
    dl = await c.get("/api/files/d/p.gcode")
    assert dl.status_code == 200 and dl.content == data
    # the facade extracted the thumbnails; deleting the file removes them too
    meta = await c.get("/server/files/metadata", params={"filename": "d/p.gcode"})
    assert len(meta.json()["result"]["thumbnails"]) == 2
    assert len(list((root / "d" / ".thumbs").iterdir())) == 2
    r = await c.delete("/api/files/d/p.gcode")
    assert r.status_code == 200 and r.json() == {"deleted": "d/p.gcode"}
    assert not (root / "d" / "p.gcode").exists()
    assert list((root / "d" / ".thumbs").iterdir()) == []
    assert (await c.get("/api/files/d/p.gcode")).status_code == 404
    assert (await c.delete("/api/files/d/p.gcode")).status_code == 404


async def test_rest_download_delete_refuse_s1_to_s4(hostile_farm: LiveFarm) -> None:  # noqa: F811
    c = hostile_farm.client
    root = hostile_farm.running.services.config.gcodes_path
    before = sorted(p.name for p in root.parent.rglob("*"))
    for name in TRAVERSAL:
        url = "/api/files/" + quote(name, safe="/%")
        r = await c.get(url)
        assert rejected(r.status_code), (name, r.status_code)
        assert b"root:" not in r.content
        r = await c.delete(url)
        # "//etc/passwd" matches no DELETE route at all (405): refused all the same.
        assert rejected(r.status_code) or r.status_code == 405, (name, r.status_code)
    assert links_intact(root)
    assert (root.parent / "gcodes2" / "x.gcode").exists()
    assert sorted(p.name for p in root.parent.rglob("*")) == before


async def test_rest_delete_of_a_contained_symlink_removes_the_link(farm: LiveFarm) -> None:
    root: Path = farm.running.services.config.gcodes_path
    (root / "real.gcode").write_bytes(b"G28\n")
    os.symlink(root / "real.gcode", root / "link.gcode")
    r = await farm.client.delete("/api/files/link.gcode")
    assert r.status_code == 200
    assert not (root / "link.gcode").is_symlink() and (root / "real.gcode").exists()


async def test_rest_delete_of_a_glob_like_name_keeps_other_thumbnails(farm: LiveFarm) -> None:
    c = farm.client
    root: Path = farm.running.services.config.gcodes_path
    assert (
        await c.post("/api/files", files={"file": ("d/p.gcode", gs.prusaslicer())})
    ).status_code == 201
    assert (
        await c.get("/server/files/metadata", params={"filename": "d/p.gcode"})
    ).status_code == 200
    (root / "d" / "*.gcode").write_bytes(b"G28\n")
    assert (await c.delete("/api/files/d/" + quote("*.gcode"))).status_code == 200
    assert len(list((root / "d" / ".thumbs").iterdir())) == 2
