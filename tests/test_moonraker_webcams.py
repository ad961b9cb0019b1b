"""``server.webcams.list`` (issue 14): one webcam per farm printer whose driver gives a
camera image, each with a snapshot URL through the farm, signed like the plate photos'
URLs, so the UI never needs a printer's own address."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import msgspec
import pytest
from PIL import Image

from printfarmd.config import PrinterConfig
from printfarmd.drivers.moonraker_sim import open_moonraker_sim
from printfarmd.services import photos
from tests.conftest import live_farm, make_config, sim_printer
from tests.moonraker_client import open_rpc
from tests.test_moonraker_driver import FAST


def size_of(image: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(image)) as im:
        return im.size


async def test_webcams_are_the_printers_cameras_through_the_farm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_moonraker_sim() as with_cam, open_moonraker_sim() as without_cam:
        printers = (
            sim_printer("p1", name="Prusa one"),
            PrinterConfig(
                id="k1",
                name="Voron",
                driver="moonraker",
                moonraker=msgspec.structs.replace(
                    FAST, url=with_cam.url, snapshot_url=with_cam.url + "/webcam/snapshot"
                ),
            ),
            PrinterConfig(
                id="k2",
                name="Voron",
                driver="moonraker",
                moonraker=msgspec.structs.replace(FAST, url=without_cam.url),
            ),
        )
        config = make_config(tmp_path, printers, dispatch_paused=True)
        async with live_farm(config) as farm, open_rpc(farm.url) as rpc:
            cams = (await rpc.call("server.webcams.list"))["webcams"]
            # k2 has no camera: no webcam for it
            assert [(c["name"], c["extra_data"]["printer_id"]) for c in cams] == [
                ("Prusa one", "p1"),
                ("Voron", "k1"),
            ]
            for cam in cams:
                assert cam["enabled"] is True and cam["service"] == "mjpegstreamer-adaptive"
                assert cam["snapshot_url"] == cam["stream_url"]
                assert cam["snapshot_url"].startswith(farm.url + "/server/webcams/snapshot/")
                assert with_cam.url not in cam["snapshot_url"]  # never the printer's address
            # the same uids on every call (the UIs key settings on them)
            again = (await rpc.call("server.webcams.list"))["webcams"]
            assert [c["uid"] for c in again] == [c["uid"] for c in cams]
            # over HTTP too (Moonraker's wrapper)
            http = await farm.client.get("/server/webcams/list")
            assert [c["name"] for c in http.json()["result"]["webcams"]] == ["Prusa one", "Voron"]

            async with httpx.AsyncClient() as anon:  # no API key: the signature is the key
                sim_image = await anon.get(cams[0]["snapshot_url"])
                assert (
                    sim_image.status_code == 200
                    and sim_image.headers["content-type"] == "image/png"
                )
                assert size_of(sim_image.content) == (64, 48)  # the simulator's camera
                klipper_image = await anon.get(cams[1]["snapshot_url"] + "&bypassCache=1")
                assert klipper_image.status_code == 200
                assert size_of(klipper_image.content) == (32, 24)  # the printer's own camera
                # altered, moved to another printer, unsigned: 403, no image
                url = cams[0]["snapshot_url"]
                for bad in (
                    url.replace("sig=", "sig=f"),
                    url.replace("/snapshot/p1?", "/snapshot/k1?"),
                    url.split("?")[0],
                    url.replace("expires=", "expires=1"),
                ):
                    r = await anon.get(bad)
                    assert r.status_code == 403, bad
                    assert r.json() == {
                        "error": {"code": 403, "message": "Snapshot URL expired or not valid"}
                    }
                # a day later the URL has expired
                real_wall = photos.wall
                monkeypatch.setattr(photos, "wall", lambda: real_wall() + 2 * 86400)
                assert (await anon.get(url)).status_code == 403
                # a printer with no camera, signed: 404
                secret = photos.load_secret(config.data_path)
                expires = int(photos.wall()) + 60
                sig = photos.sign(secret, "camera/k2", expires)
                r = await anon.get(
                    f"{farm.url}/server/webcams/snapshot/k2?expires={expires}&sig={sig}"
                )
                assert r.status_code == 404
