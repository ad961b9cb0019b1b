"""Plate photos: kept after a print (full + reduced copy), listed in key order with
pagination, pre-signed URLs that work without a key for one hour (controlled clock) and
fail with 403 when expired or altered; the listing never names anything outside low/."""

from __future__ import annotations

import io
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from printfarmd.services import photos
from tests import gcode_samples as gs
from tests.conftest import LiveFarm, live_farm, make_config, sim_printer


def _seed(data: Path) -> Path:
    root = data / "photos"
    (root / "low" / "sub").mkdir(parents=True)
    (root / "full").mkdir(parents=True)
    for key in ("b.png", "a.png", "c.png", "sub/d.png", "B.png"):
        (root / "low" / key).write_bytes(gs.tiny_png())
    (root / "low" / ".hidden.png").write_bytes(b"x")
    (root / "full" / "only-full.png").write_bytes(gs.tiny_png())
    outside = data / "outside.png"
    outside.write_bytes(b"secret")
    os.symlink(outside, root / "low" / "zz-escape.png")
    os.symlink(data, root / "low" / "zz-dir")
    return root


async def test_listing_order_pagination_and_containment(farm: LiveFarm) -> None:
    data = farm.running.services.config.data_path
    _seed(data)
    c = farm.client
    everything = (await c.get("/api/photos", params={"limit": 200})).json()
    keys = [p["key"] for p in everything["photos"]]
    # lexicographic (byte) order; nothing hidden, from full/, or through a link out of low/
    assert keys == ["B.png", "a.png", "b.png", "c.png", "sub/d.png"]
    assert everything["total"] == 5
    assert all(p["url"].startswith(f"/api/photos/low/{p['key']}?") for p in everything["photos"])
    pages = []
    for offset in (0, 2, 4):
        r = (await c.get("/api/photos", params={"offset": offset, "limit": 2})).json()
        assert (r["offset"], r["limit"], r["total"]) == (offset, 2, 5)
        pages.append([p["key"] for p in r["photos"]])
    assert pages == [keys[0:2], keys[2:4], keys[4:5]]
    assert (await c.get("/api/photos", params={"offset": 5})).json()["photos"] == []
    assert (await c.get("/api/photos", params={"limit": 0})).json()["photos"] == []
    for bad in ({"limit": "201"}, {"offset": "-1"}, {"limit": "x"}):
        assert (await c.get("/api/photos", params=bad)).status_code == 400


async def test_signed_url_expiry_and_tampering(
    farm: LiveFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_800_000_000.0]
    monkeypatch.setattr(photos, "wall", lambda: now[0])
    _seed(farm.running.services.config.data_path)
    listed = (await farm.client.get("/api/photos")).json()["photos"]
    url = next(p["url"] for p in listed if p["key"] == "a.png")
    other = next(p["url"] for p in listed if p["key"] == "b.png")
    assert next(p["expires"] for p in listed if p["key"] == "a.png") == 1_800_003_600
    q = parse_qs(urlsplit(url).query)
    sig, expires = q["sig"][0], q["expires"][0]
    async with httpx.AsyncClient(base_url=farm.url) as anon:  # no API key
        r = await anon.get(url)
        assert r.status_code == 200 and r.content == gs.tiny_png()
        assert r.headers["content-type"] == "image/png"
        altered = [
            url.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:]),  # signature
            url.replace(f"expires={expires}", f"expires={int(expires) + 3600}"),  # expiry
            url.replace("/low/a.png", "/low/b.png"),  # another key, a's signature
            other.split("&sig=")[0],  # no signature
            url.split("?")[0],  # no query at all
        ]
        for bad in altered:
            assert (await anon.get(bad)).status_code == 403, bad
        # a valid API key does not stand in for a signature
        bad_sig = url.replace(sig, "f" * 64)
        assert (await farm.client.get(bad_sig)).status_code == 403
        now[0] += 3600  # the last valid second
        assert (await anon.get(url)).status_code == 200
        now[0] += 1
        assert (await anon.get(url)).status_code == 403


def test_sign_and_verify_units() -> None:
    s = b"k" * 32
    sig = photos.sign(s, "low/a.png", 100)
    assert photos.verify(s, "low/a.png", "100", sig, 100.0)
    assert not photos.verify(s, "low/a.png", "100", sig, 100.5)
    assert not photos.verify(s, "low/a.png", "-1", sig, 0)
    assert not photos.verify(s, "low/a.png", "1e9", sig, 0)
    assert not photos.verify(b"x" * 32, "low/a.png", "100", sig, 0)


async def test_a_photo_is_kept_after_each_print(tmp_path: Path) -> None:
    printer = sim_printer("p1", ("PLA",), speed=50_000.0, auto_clear=True)
    async with live_farm(make_config(tmp_path, (printer,))) as farm:
        c = farm.client
        assert (await c.post("/api/files", files={"file": ("x.gcode", gs.cura())})).status_code
        r = await c.post("/api/jobs", json={"filename": "x.gcode", "material": "PLA"})
        job_id = r.json()["jobs"][0]["id"]

        async def photo_listed() -> bool:
            return bool((await c.get("/api/photos")).json()["total"])

        await farm.wait_for(photo_listed, within=20)
        [item] = (await c.get("/api/photos")).json()["photos"]
        assert item["key"].endswith(f"-{job_id}.png")
        root = farm.running.services.config.data_path / "photos"
        full = (root / "full" / item["key"]).read_bytes()
        assert Image.open(io.BytesIO(full)).size == (64, 48)  # the simulator's camera
        async with httpx.AsyncClient(base_url=farm.url) as anon:
            low = await anon.get(item["url"])
        assert low.status_code == 200
        assert max(Image.open(io.BytesIO(low.content)).size) <= photos.LOW_SIZE
