"""Replays of Mainsail's and Fluidd's connect sequences and queue operations (from
/work/shared/reference/moonraker-protocol.md §2; the full connect-and-use replays from
the UIs' pinned sources are in test_moonraker_ui_replay.py), a third-party client from
PyPI, and the queue and database surviving a restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
from trio_websocket import open_websocket_url

from tests.conftest import API_KEY, LiveFarm, live_farm, make_config, raw_http, sim_printer
from tests.moonraker_client import RpcClient, open_rpc, ws_url

HERE = Path(__file__).parent
A, B, C = "benchy_pla.gcode", "calibration_cube_pla.gcode", "keychain_any.gcode"


def filenames(status: dict[str, Any]) -> list[str]:
    return [j["filename"] for j in status["queued_jobs"]]


async def server_info_checks(rpc: RpcClient) -> dict[str, Any]:
    info = await rpc.call("server.info")
    assert info["klippy_connected"] is True and info["klippy_state"] == "ready"
    assert {"job_queue", "database", "history", "webcam"} <= set(info["components"])
    # list only what is implemented: these would make the UIs call APIs we lack
    assert not {"announcements", "authorization", "update_manager", "power"} & set(
        info["components"]
    )
    assert "gcodes" in info["registered_directories"]
    assert isinstance(info["warnings"], list) and info["failed_components"] == []
    version = info["moonraker_version"]
    major, minor, patch = (int(x) for x in version[1:].split("-")[0].split("."))
    assert (major, minor, patch) >= (0, 8, 0)  # Mainsail min v0.8.0-306, Fluidd v0.8.0-309
    return dict(info)


async def test_mainsail_connect_sequence_and_queue_operations(farm: LiveFarm) -> None:
    async with open_rpc(farm.url) as rpc:
        # 1..7: every call Mainsail blocks on must succeed with the fields it reads
        ident = await rpc.call(
            "server.connection.identify",
            {"client_name": "mainsail", "version": "2.18.2", "type": "web", "url": "x"},
        )
        assert isinstance(ident["connection_id"], int)
        await server_info_checks(rpc)
        config = await rpc.call("server.config")
        assert isinstance(config["config"]["server"]["port"], int)
        system = await rpc.call("machine.system_info")
        assert {"cpu_info", "distribution", "available_services", "service_state"} <= set(
            system["system_info"]
        )
        stats = await rpc.call("machine.proc_stats")
        assert "throttled_state" in stats and isinstance(stats["system_uptime"], float)
        dbs = await rpc.call("server.database.list", {"root": "config"})
        assert "mainsail" not in dbs["namespaces"]
        # gui/initDb over HTTP: the theme file may 404 (as JSON), then post_item
        theme = await farm.client.get("/server/files/config/.theme/default.json")
        assert theme.status_code == 404 and theme.json()["error"]["code"] == 404
        r = await farm.client.post(
            "/server/database/item",
            json={"namespace": "mainsail", "key": "general", "value": {"printername": "farm"}},
        )
        assert r.status_code == 200, r.text
        got = await rpc.call("server.database.get_item", {"namespace": "mainsail"})
        assert got["value"] == {"general": {"printername": "farm"}}
        cams = (await rpc.call("server.webcams.list"))["webcams"]
        assert [c["name"] for c in cams] == ["p1", "p2", "p3"]  # every simulator has a camera
        status = await rpc.call("server.job_queue.status")
        assert status["queued_jobs"] == [] and status["queue_state"] == "paused"
        directory = await rpc.call("server.files.get_directory", {"path": "gcodes"})
        assert A in [f["filename"] for f in directory["files"]]
        assert directory["root_info"]["name"] == "gcodes"
        # klippy "ready": the printer.* calls Mainsail then makes
        pinfo = await rpc.call("printer.info")
        assert pinfo["state"] == "ready" and isinstance(pinfo["hostname"], str)
        objects = (await rpc.call("printer.objects.list"))["objects"]
        assert {"webhooks", "print_stats", "virtual_sdcard", "display_status"} <= set(objects)
        sub = await rpc.call(
            "printer.objects.subscribe",
            {"objects": {"print_stats": None, "webhooks": ["state"], "nope": None}},
        )
        assert sub["status"]["print_stats"]["state"] == "standby"
        assert sub["status"]["webhooks"] == {"state": "ready"}
        assert "nope" not in sub["status"]
        q = await rpc.call("printer.objects.query", {"objects": {"gcode": ["commands"]}})
        assert "STATUS" in q["status"]["gcode"]["commands"]  # the farm console's commands
        assert (await rpc.call("server.gcode_store")) == {"gcode_store": []}
        await rpc.call("server.temperature_store", {"include_monitors": True})

        # queue operations as Mainsail sends them
        await rpc.call("server.job_queue.post_job", {"filenames": [A, B]})
        note = await rpc.wait_notification("notify_job_queue_changed")
        assert filenames({"queued_jobs": note["params"][0]["updated_queue"]}) == [A, B]
        # "change count" + reorder: the full list with reset
        await rpc.call("server.job_queue.post_job", {"filenames": [B, A, A], "reset": True})
        note = await rpc.wait_notification("notify_job_queue_changed")
        assert [j["filename"] for j in note["params"][0]["updated_queue"]] == [B, A, A]
        first = note["params"][0]["updated_queue"][0]["job_id"]
        await rpc.call("server.job_queue.delete_job", {"job_ids": [first]})
        note = await rpc.wait_notification("notify_job_queue_changed")
        assert note["params"][0]["action"] == "jobs_removed"
        assert [j["filename"] for j in note["params"][0]["updated_queue"]] == [A, A]
        started = await rpc.call("server.job_queue.start")
        assert started["queue_state"] in ("ready", "loading")
        paused = await rpc.call("server.job_queue.pause")
        assert paused["queue_state"] == "paused"
        await rpc.call("server.job_queue.delete_job", {"all": True})
        assert (await rpc.call("server.job_queue.status"))["queued_jobs"] == []


async def test_fluidd_connect_sequence_and_queue_operations(farm: LiveFarm) -> None:
    token = (await farm.client.get("/access/oneshot_token")).json()["result"]
    async with open_rpc(farm.url, key=None) as rpc:
        ident = await rpc.call(
            "server.connection.identify",
            {
                "client_name": "fluidd",
                "version": "1.37.4",
                "type": "web",
                "url": "x",
                "access_token": token,
            },
        )
        assert isinstance(ident["connection_id"], int)
        missing = await rpc.request("server.database.get_item", {"namespace": "fluidd"})
        assert missing["error"] == {"code": -32601, "message": "Namespace fluidd not found"}
        for root in ("uiSettings", "macros", "sensors", "console", "charts", "webcams", "layout"):
            await rpc.call(
                "server.database.post_item", {"namespace": "fluidd", "key": root, "value": {}}
            )
        got = await rpc.call("server.database.get_item", {"namespace": "fluidd"})
        assert set(got["value"]) == {
            "uiSettings",
            "macros",
            "sensors",
            "console",
            "charts",
            "webcams",
            "layout",
        }
        await server_info_checks(rpc)
        assert "config" in await rpc.call("server.config")
        await rpc.call("machine.proc_stats")
        await rpc.call("machine.system_info")
        assert isinstance(await rpc.call("server.files.list", {"root": "config"}), list)
        assert "fluidd" in (await rpc.call("server.database.list"))["namespaces"]
        await rpc.call("server.webcams.list")
        status = await rpc.call("server.job_queue.status")
        assert set(status) == {"queued_jobs", "queue_state"}
        # Fluidd reads every response (not only notifications)
        added = await rpc.call("server.job_queue.post_job", {"filenames": [C, C, C]})  # multiply
        assert filenames(added) == [C, C, C]
        ids = [j["job_id"] for j in added["queued_jobs"]]
        reordered = await rpc.call(
            "server.job_queue.post_job", {"filenames": [A, C, C], "reset": True}
        )
        assert filenames(reordered) == [A, C, C]
        assert [j["job_id"] for j in reordered["queued_jobs"]][1:] == ids[:2]
        meta = await rpc.call("server.files.metadata", {"filename": C})
        assert {"filename", "size", "modified"} <= set(meta)
        cleared = await rpc.call("server.job_queue.delete_job", {"all": True})
        assert cleared["queued_jobs"] == []
        resumed = await rpc.call("server.job_queue.start")
        assert resumed["queue_state"] == "ready"
    # the one-shot token was spent
    async with open_rpc(farm.url, key=None) as rpc:
        again = await rpc.request(
            "server.connection.identify", {"client_name": "fluidd", "access_token": token}
        )
        assert again["error"] == {"code": -32602, "message": "Unauthorized"}


def test_third_party_client_from_pypi(tmp_path: Path, daemon_factory: Any) -> None:
    daemon = daemon_factory(make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True))
    daemon.start()
    try:
        out = subprocess.run(
            [sys.executable, str(HERE / "moonraker_api_probe.py"), str(daemon.port), API_KEY, A],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr.decode()[-3000:]
        seen = json.loads(out.stdout.decode().strip().splitlines()[-1])
        assert seen["klippy_state"] == "ready" and "job_queue" in seen["components"]
        assert seen["before"]["queued_jobs"] == []
        change = seen["change"]
        change = change[0] if isinstance(change, list) else change
        assert change["action"] == "jobs_added"
        assert [j["filename"] for j in change["updated_queue"]] == [A]
        assert isinstance(seen["websocket_id"]["websocket_id"], int)
    finally:
        daemon.kill(15)


def test_queue_order_and_database_survive_a_restart(tmp_path: Path, daemon_factory: Any) -> None:
    config = make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)
    daemon = daemon_factory(config)
    daemon.start()
    with daemon.client() as c:
        r = c.post("/server/job_queue/job", json={"filenames": [A, B, C]})
        assert r.status_code == 200
        r = c.post("/server/job_queue/job", json={"filenames": [C, A, B, B], "reset": True})
        before = r.json()["result"]
        assert filenames(before) == [C, A, B, B]
        r = c.post(
            "/server/database/item",
            json={"namespace": "mainsail", "key": "view.queue", "value": [1, 2]},
        )
        assert r.status_code == 200
        c.post("/server/job_queue/pause")
    assert daemon.kill(15) == 0
    daemon.start()
    with daemon.client() as c:
        after = c.get("/server/job_queue/status").json()["result"]
        assert [(j["job_id"], j["filename"], j["time_added"]) for j in after["queued_jobs"]] == [
            (j["job_id"], j["filename"], j["time_added"]) for j in before["queued_jobs"]
        ]
        assert after["queue_state"] == "paused"
        got = c.get("/server/database/item", params={"namespace": "mainsail", "key": "view"})
        assert got.json()["result"]["value"] == {"queue": [1, 2]}
    daemon.kill(15)


async def test_access_trust_tokens_and_cors(farm: LiveFarm) -> None:
    async with httpx.AsyncClient(base_url=farm.url) as anon:
        info = await anon.get("/access/info")
        assert info.status_code == 200 and info.json()["result"]["trusted"] is False
        spoofed = {"X-Forwarded-For": "127.0.0.1", "X-Real-Ip": "127.0.0.1"}
        r = await anon.get("/server/info", headers=spoofed)
        assert r.status_code == 401
        token = (await farm.client.get("/access/oneshot_token")).json()["result"]
        assert (await anon.get(f"/server/info?token={token}")).status_code == 200
        assert (await anon.get(f"/server/info?token={token}")).status_code == 401  # spent
        assert (await anon.get("/access/api_key")).status_code == 401
        # CORS is off by default: no allow-origin header for anyone
        r = await farm.client.get("/server/info", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        pre = await anon.options(
            "/server/info",
            headers={
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "X-Api-Key",
            },
        )
        assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers
    # issue 9: the daemon keeps only the key's hash; not even its holder is shown it
    key = await farm.client.get("/access/api_key")
    assert key.status_code == 403 and API_KEY not in key.text
    assert "api-key rotate" in key.json()["error"]["message"]


async def test_trusted_network_and_cors_allow_list(tmp_path: Path) -> None:
    config = make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)
    server = msgspec.structs.replace(
        config.server, trusted_clients=("127.0.0.0/8",), cors_domains=("http://mainsail.local",)
    )
    async with live_farm(msgspec.structs.replace(config, server=server)) as farm:
        async with httpx.AsyncClient(base_url=farm.url) as anon:
            assert (await anon.get("/access/info")).json()["result"]["trusted"] is True
            assert (await anon.get("/server/info")).status_code == 200
            assert (await anon.get("/api/jobs")).status_code == 200  # one decision for REST too
            # trusted is not the key holder: the key is not disclosed
            assert (await anon.get("/access/api_key")).status_code == 403
            pre = await anon.options(
                "/server/job_queue/job",
                headers={
                    "Origin": "http://mainsail.local",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "X-Api-Key",
                },
            )
            assert pre.status_code == 204
            assert pre.headers["access-control-allow-origin"] == "http://mainsail.local"
            assert "X-Api-Key" in pre.headers["access-control-allow-headers"]
            ok = await anon.get("/server/info", headers={"Origin": "http://mainsail.local"})
            assert ok.headers["access-control-allow-origin"] == "http://mainsail.local"
            evil = await anon.get("/server/info", headers={"Origin": "http://evil.example"})
            assert "access-control-allow-origin" not in evil.headers
        async with open_rpc(farm.url, key=None) as rpc:
            assert "job_queue" in (await rpc.call("server.info"))["components"]


async def test_websocket_from_a_foreign_origin_is_refused(farm: LiveFarm) -> None:
    key = (b"X-Api-Key", API_KEY.encode())
    # raw upgrade (trio-websocket leaks its socket on a refused handshake)
    upgrade = (
        b"GET /websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Api-Key: " + API_KEY.encode()
    )
    answer = await raw_http(farm.url, upgrade + b"\r\nOrigin: http://evil.example\r\n\r\n")
    assert answer.split(b" ", 2)[1] == b"403", answer[:200]
    same_host = farm.url.replace(farm.url.rsplit(":", 1)[1], "80").encode()
    async with open_websocket_url(
        ws_url(farm.url), extra_headers=[key, (b"Origin", same_host)]
    ) as ws:
        await ws.send_message('{"jsonrpc":"2.0","method":"server.job_queue.status","id":1}')
        assert '"queued_jobs"' in await ws.get_message()
