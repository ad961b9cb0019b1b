"""The facade's ``server.spoolman.*`` (issue 16), replayed as Mainsail and Fluidd send
them, over a real websocket, against a live farm whose Spoolman is the stand-in
(``tests/spoolman_sim.py``, Spoolman 0.26.1's OpenAPI document) on a real port.

The calls, read from the UIs' sources at the commits the other replays pin:

- Mainsail v2.18.2 (``009ae11f``), ``src/store/server/spoolman/actions.ts``: ``init``
  (``get_spool_id``; ``proxy`` GET ``/v1/info``, ``/v1/health``, ``/v1/vendor`` with
  ``use_v2_response``; ``refreshSpools``: ``proxy`` GET ``/v1/spool`` *without* it),
  ``getActiveSpoolId`` (``proxy`` GET ``/v1/spool/{id}``, v2), ``setActiveSpool``
  (``post_spool_id`` with ``{spool_id}`` or ``{}`` to unset); ``src/store/socket/
  actions.ts``: ``notify_active_spool_set`` leads to ``getActiveSpoolId``.
- Fluidd v1.37.4 (``7dd4ea07``), ``src/api/socketActions.ts``: ``serverSpoolmanGetSpoolId``,
  ``serverSpoolmanPostSpoolId`` (``{spool_id}``; ``undefined`` drops the key),
  ``serverSpoolmanProxyGetAvailableSpools`` (GET ``/v1/spool``, v2),
  ``serverSpoolmanProxyGetInfo`` (GET ``/v1/info``, v2), then
  ``serverSpoolmanProxyGetSettingCurrency`` (GET ``/v1/setting/currency``, v2, for
  Spoolman 0.16 and later); ``src/store/socket/actions.ts``: ``notify_active_spool_set``,
  ``notify_spoolman_status_changed``.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from printfarmd.config import Config, SpoolmanConfig
from tests.conftest import live_farm, make_config, sim_printer
from tests.moonraker_client import open_rpc
from tests.spoolman_sim import SimSpool, open_spoolman_sim
from tests.test_moonraker_ui_replay import Replay


def farm_config(tmp: Path, url: str) -> Config:
    config = make_config(tmp, (sim_printer("p1"), sim_printer("p2")), dispatch_paused=True)
    return msgspec.structs.replace(
        config, spoolman=SpoolmanConfig(url=url, refresh_interval=0.5, retry_backoff=(0.2,))
    )


async def test_mainsail_spool_panel(tmp_path: Path) -> None:
    async with open_spoolman_sim() as sim:
        sim.add(SimSpool(1, material="PLA", color_hex="FF0000"))
        sim.add(SimSpool(2, material="PETG", color_hex="00FF00"))
        async with (
            live_farm(farm_config(tmp_path, sim.url)) as farm,
            open_rpc(farm.url) as rpc,
            open_rpc(farm.url) as other,
        ):
            ui = Replay(rpc, "mainsail")
            await ui.ok("server.connection.identify", {"client_name": "mainsail",
                            "version": "2.18.2", "type": "web", "url": "x"})  # fmt: skip
            info = await ui.ok("server.info")
            assert "spoolman" in info["components"]  # initableServerComponents
            # server/spoolman/init
            assert await ui.ok("server.spoolman.get_spool_id", {}) == {"spool_id": None}
            v2 = {"request_method": "GET", "use_v2_response": True}
            got = await ui.ok("server.spoolman.proxy", {**v2, "path": "/v1/info"})
            assert got["error"] is None and got["response"]["version"] == "0.26.1"
            got = await ui.ok("server.spoolman.proxy", {**v2, "path": "/v1/health"})
            assert got["response"] == {"status": "healthy"}
            got = await ui.ok("server.spoolman.proxy", {**v2, "path": "/v1/vendor"})
            assert got["response"][0]["name"] == "Polymaker"
            spools = await ui.ok(
                "server.spoolman.proxy", {"request_method": "GET", "path": "/v1/spool"}
            )
            assert [s["id"] for s in spools] == [1, 2]  # v1: Spoolman's answer itself
            # SpoolmanChangeSpoolDialog -> setActiveSpool(spool.id)
            await ui.ok("server.spoolman.post_spool_id", {"spool_id": 2})
            note = await rpc.wait_notification("notify_active_spool_set")
            assert note["params"] == [{"spool_id": 2}]
            seen = await other.wait_notification("notify_active_spool_set")
            assert seen["params"] == [{"spool_id": 2}]  # every client hears it
            # getActiveSpoolId(payload) -> the spool itself
            got = await ui.ok("server.spoolman.proxy", {**v2, "path": "/v1/spool/2"})
            assert got["response"]["filament"]["material"] == "PETG"
            printer = (await farm.client.get("/api/printers/p1")).json()
            assert printer["spools"][0]["spool_id"] == 2
            assert printer["materials"][0] == "PETG"
            # a spool that does not exist (v2: Spoolman's error, the call succeeds)
            got = await ui.ok("server.spoolman.proxy", {**v2, "path": "/v1/spool/99"})
            assert got == {
                "response": None,
                "error": {"status_code": 404, "message": "No spool with ID 99 found."},
            }
            # setActiveSpool(null): {} unsets
            assert await ui.ok("server.spoolman.post_spool_id", {}) == {"spool_id": None}
            note = await rpc.wait_notification("notify_active_spool_set")
            assert note["params"] == [{"spool_id": None}]
            # Binding over REST is the same binding: the panel hears of it.
            r = await farm.client.put("/api/printers/p1/spool", json={"spool_id": 1})
            assert r.status_code == 200
            note = await rpc.wait_notification("notify_active_spool_set")
            assert note["params"] == [{"spool_id": 1}]
            # a binding of another printer is not the panel's
            r = await farm.client.put("/api/printers/p2/spool", json={"spool_id": 2})
            assert r.status_code == 200
            assert not [
                f for f in await rpc.quiet() if f.get("method") == "notify_active_spool_set"
            ]
            status = await ui.ok("server.spoolman.status")
            assert status == {"spoolman_connected": True, "pending_reports": [],
                                  "spool_id": 1}  # fmt: skip
            ui.judge()


async def test_fluidd_spool_panel_and_spoolman_going_away(tmp_path: Path) -> None:
    async with open_spoolman_sim() as sim:
        sim.add(SimSpool(5, material="PLA", color_hex="0000FF"))
        async with live_farm(farm_config(tmp_path, sim.url)) as farm, open_rpc(farm.url) as rpc:
            ui = Replay(rpc, "fluidd")
            await ui.ok("server.connection.identify", {"client_name": "fluidd",
                            "version": "1.37.4", "type": "web", "url": "x"})  # fmt: skip
            assert "spoolman" in (await ui.ok("server.info"))["components"]
            # spoolman/init
            assert await ui.ok("server.spoolman.get_spool_id") == {"spool_id": None}
            v2 = {"request_method": "GET", "use_v2_response": True}
            got = await ui.ok("server.spoolman.proxy", {**v2, "path": "/v1/spool"})
            assert [s["id"] for s in got["response"]] == [5] and got["error"] is None
            info = await ui.ok("server.spoolman.proxy", {**v2, "path": "/v1/info"})
            assert info["response"]["version"] == "0.26.1"
            cur = await ui.ok("server.spoolman.proxy", {**v2, "path": "/v1/setting/currency"})
            assert cur["response"]["type"] == "string"
            # serverSpoolmanPostSpoolId(spool.id) answers the new id
            assert await ui.ok("server.spoolman.post_spool_id", {"spool_id": 5}) == {"spool_id": 5}
            note = await rpc.wait_notification("notify_active_spool_set")
            assert note["params"] == [{"spool_id": 5}]
            # Spoolman goes down: the panel hears it; the proxy says so (v2: no error)
            sim.stop()
            r = await farm.client.put("/api/printers/p2/spool", json={"spool_id": 5})
            assert r.status_code == 200  # bound unread: Spoolman does not answer
            note = await rpc.wait_notification("notify_spoolman_status_changed", within=10)
            if note["params"] == [{"spoolman_connected": True}]:
                # Spoolman's first answer after the start may reach this client too.
                note = await rpc.wait_notification("notify_spoolman_status_changed", within=10)
            assert note["params"] == [{"spoolman_connected": False}]
            got = await ui.ok("server.spoolman.proxy", {**v2, "path": "/v1/spool"})
            assert got == {
                "response": None,
                "error": {"status_code": 503, "message": "Spoolman server not available"},
            }
            await sim.start()
            note = await rpc.wait_notification("notify_spoolman_status_changed", within=10)
            assert note["params"] == [{"spoolman_connected": True}]
            # serverSpoolmanPostSpoolId(undefined): the key is left out
            assert await ui.ok("server.spoolman.post_spool_id", {}) == {"spool_id": None}
            # Moonraker's own checks on the proxy's arguments
            for params in (
                {"request_method": "TRACE", "path": "/v1/spool"},
                {"request_method": "GET", "path": "/api/v1/spool"},
                {"request_method": "GET", "path": "/v1/spool", "body": {"a": 1}},
                {"request_method": "GET", "path": "/v1/../../etc"},
            ):
                reply = await ui.send("server.spoolman.proxy", params)
                assert reply["error"]["code"] == 400, reply
            ui.judge()


async def test_without_spoolman_the_component_is_absent(tmp_path: Path) -> None:
    config = make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)
    async with live_farm(config) as farm, open_rpc(farm.url) as rpc:
        info = await rpc.call("server.info")
        assert "spoolman" not in info["components"]
        reply = await rpc.request("server.spoolman.get_spool_id", {})
        assert reply["error"]["code"] == -32601  # as Moonraker without [spoolman]
        r = await farm.client.put("/api/printers/p1/spool", json={"spool_id": 3})
        assert r.status_code == 409 and "spoolman.url" in r.json()["error"]["message"]
