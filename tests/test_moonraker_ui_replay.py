"""Mainsail's and Fluidd's connect-and-use sequences, replayed over a real websocket
against a live farm (issue 14), read from their sources at pinned commits:

- Mainsail v2.18.2, ``mainsail-crew/mainsail`` at ``MAINSAIL_COMMIT``:
  ``src/store/server/actions.ts`` (init, checkDatabases, checkKlippyConnected,
  checkKlippyState), ``src/store/server/history/actions.ts`` (init),
  ``src/store/gui/actions.ts`` / ``gui/maintenance/actions.ts`` (initDb over HTTP),
  ``src/store/gui/webcams/actions.ts``, ``src/store/printer/actions.ts`` (init,
  initSubscripts, initGcodes, initExtruderCanExtrude, sendGcode),
  ``src/store/files/actions.ts`` (get_directory per root),
  ``src/components/TheTopbar.vue`` (emergency stop), ``TheTopCornerMenu.vue`` (restarts),
  ``src/components/mixins/control.ts`` (home buttons),
  ``panels/History/HistoryListEntryJob.vue`` (delete), ``webcams/streamers/
  MjpegstreamerAdaptive.vue`` (snapshot polling with ``bypassCache``).
- Fluidd v1.37.4, ``fluidd-core/fluidd`` at ``FLUIDD_COMMIT``:
  ``src/store/socket/actions.ts`` (runIdentify), ``src/store/server/actions.ts``
  (onServerInfo, initComponents), ``src/store/printer/actions.ts``
  (onPrinterObjectsList, onPrinterObjectsSubscribe), ``src/globals.ts``
  (MOONRAKER_DB, MOONRAKER_COMPONENTS), ``src/api/socketActions.ts`` (every method's
  parameters), ``src/mixins/state.ts`` (sendGcode, sendMoveGcode, emergencyStop),
  ``src/components/widgets/console/ConsoleBrowser.vue`` (M112).

Klipper is reported ``ready``, so both take the Klippy-ready path (``printer.*``
objects, ``printer.gcode.help``). Every answer is checked: no request is answered
-32601 ("Method not found") but the one Moonraker itself gives and Fluidd catches (the
``fluidd`` database namespace on a first connect; a reconnect has none); every error has
a code the UI displays (Fluidd: 400-499 while ready, ``onSocketError``; Mainsail: a
``!!`` console line, ``server/addEvent``, as it shows no RPC error itself).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import httpx

from tests.conftest import LiveFarm, live_farm, make_config, sim_printer
from tests.moonraker_client import RpcClient, open_rpc

MAINSAIL_COMMIT = "009ae11fc0676a6f3b0d4697f5d28aa345c697ff"  # v2.18.2
FLUIDD_COMMIT = "7dd4ea0794a992daf5e56a52d350cf6728b1d901"  # v1.37.4
A = "benchy_pla.gcode"


@attrs.define
class Replay:
    """A UI's websocket: sends what the UI sends, keeps every answer to judge them."""

    rpc: RpcClient
    ui: str
    answers: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.rpc.request(method, params if params is not None else {})
        self.answers.append((method, reply))
        return reply

    async def ok(self, method: str, params: dict[str, Any] | None = None) -> Any:
        reply = await self.send(method, params)
        assert "result" in reply, (self.ui, method, reply)
        return reply["result"]

    def lines(self, since: int) -> list[str]:
        """Console lines (``notify_gcode_response``) received after frame ``since``."""
        return [
            f["params"][0]
            for f in self.rpc.frames[since:]
            if f.get("method") == "notify_gcode_response"
        ]

    async def refused(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A request the farm refuses: the error, shown the way this UI shows errors."""
        before = len(self.rpc.frames)
        reply = await self.send(method, params)
        error = reply["error"]
        assert 400 <= error["code"] < 500, (method, error)  # Fluidd toasts these
        lines = self.lines(before)
        assert f"!! {error['message']}" in lines, (method, lines)  # Mainsail shows these
        return dict(error)

    def judge(self, allowed: tuple[tuple[str, str], ...] = ()) -> None:
        """No "Method not found"; every error a 4xx (or one of ``allowed``)."""
        for method, reply in self.answers:
            error = reply.get("error")
            if error is None:
                continue
            if (method, error["message"]) in allowed:
                continue
            assert error["code"] != -32601, (self.ui, method, error)
            assert 400 <= error["code"] < 500, (self.ui, method, error)


async def busy_farm(farm: LiveFarm) -> str:
    """One finished print (history, a camera frame of it) and one printing on p2."""
    r = await farm.client.post("/api/jobs", json={"filename": A})
    done = r.json()["jobs"][0]["id"]
    await farm.client.post(f"/api/jobs/{done}/release", json={"printerId": "p1"})

    async def printed() -> bool:
        return bool((await farm.client.get(f"/api/jobs/{done}")).json()["state"] == "ready")

    await farm.wait_for(printed)
    r = await farm.client.post("/api/jobs", json={"filename": A})
    printing = r.json()["jobs"][0]["id"]
    await farm.client.post(f"/api/jobs/{printing}/release", json={"printerId": "p2"})
    return str(printing)


def config(tmp: Path) -> Any:
    printers = (
        sim_printer("p1", speed=20000.0, auto_clear=True),
        sim_printer("p2", speed=1.0),
    )
    return make_config(tmp, printers, dispatch_paused=True, retry_backoff=(3600.0,))


async def check_snapshot(url: str) -> None:
    """The webcam's snapshot URL through the farm, as the UI's <img> polls it: no API key,
    the UI's cache-busting parameter appended."""
    async with httpx.AsyncClient() as anon:
        r = await anon.get(url + "&bypassCache=1796000000000")
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.text[:200]
        assert r.headers["content-type"] == "image/png"
        forged = await anon.get(url.replace("sig=", "sig=0"))
        assert forged.status_code == 403


async def test_mainsail_replay(tmp_path: Path) -> None:
    async with live_farm(config(tmp_path)) as farm:
        printing = await busy_farm(farm)
        async with open_rpc(farm.url) as rpc:
            ui = Replay(rpc, "mainsail")
            # store/server/actions.ts init
            ident = await ui.ok(
                "server.connection.identify",
                {
                    "client_name": "mainsail",
                    "version": "2.18.2",
                    "type": "web",
                    "url": "https://github.com/mainsail-crew/mainsail",
                },
            )
            assert isinstance(ident["connection_id"], int)
            info = await ui.ok("server.info")
            assert info["klippy_connected"] is True and info["klippy_state"] == "ready"
            assert {"history", "job_queue", "webcam"} <= set(info["components"])
            await ui.ok("server.config")
            await ui.ok("machine.system_info")
            stats = await ui.ok("machine.proc_stats")
            assert stats["throttled_state"] is None and stats["system_uptime"] > 0
            dbs = await ui.ok("server.database.list", {"root": "config"})
            # components: server/history/init, server/jobQueue/init
            history = await ui.ok("server.history.list", {"start": 0, "limit": 50, "max": 100})
            assert history["count"] == 2 and {j["status"] for j in history["jobs"]} == {
                "completed",
                "in_progress",
            }
            for job in history["jobs"]:
                assert isinstance(job["metadata"], dict)  # HistoryListEntryJob: `key in metadata`
            totals = await ui.ok("server.history.totals")
            assert totals["job_totals"]["total_jobs"] == 1 and totals["auxiliary_totals"] == []
            await ui.ok("server.job_queue.status")
            # gui/initDb (HTTP: the theme file may 404 as JSON) and gui/maintenance/initDb
            assert "mainsail" not in dbs["namespaces"]
            theme = await farm.client.get("/server/files/config/.theme/default.json")
            assert theme.status_code == 404 and theme.json()["error"]["code"] == 404
            await farm.client.post(
                "/server/database/item",
                json={"namespace": "mainsail", "key": "general", "value": {}},
            )
            await ui.ok(
                "server.database.post_item",
                {"namespace": "maintenance", "key": "k", "value": {"name": "MAINTENANCE_INIT"}},
            )
            await ui.ok("server.database.get_item", {"namespace": "mainsail"})
            # gui/webcams/init: one webcam per printer camera, its snapshot through the farm
            webcams = (await ui.ok("server.webcams.list"))["webcams"]
            assert [w["name"] for w in webcams] == ["p1", "p2"]
            assert all(w["service"] == "mjpegstreamer-adaptive" for w in webcams)
            assert webcams[0]["snapshot_url"].startswith(farm.url + "/server/webcams/snapshot/p1?")
            await check_snapshot(webcams[0]["snapshot_url"])
            # files/actions.ts: every registered directory
            for root in info["registered_directories"]:
                await ui.ok("server.files.get_directory", {"path": root})
            # checkKlippyConnected -> printer/initGcodes; checkKlippyState -> printer/init
            info = await ui.ok("server.info")
            gcodes = await ui.ok("printer.objects.query", {"objects": {"gcode": ["commands"]}})
            assert "STATUS" in gcodes["status"]["gcode"]["commands"]  # the console's list
            pinfo = await ui.ok("printer.info")
            assert pinfo["state"] == "ready"
            await ui.ok("server.gcode_store")
            objects = (await ui.ok("printer.objects.list"))["objects"]
            # nothing a toolhead or temperature panel keys on
            assert not {"toolhead", "gcode_move", "extruder", "heater_bed", "configfile"} & set(
                objects
            )
            sub = await ui.ok("printer.objects.subscribe", {"objects": dict.fromkeys(objects)})
            assert sub["status"]["webhooks"]["state"] == "ready"
            assert sub["status"]["system_stats"]["sysload"] >= 0
            await ui.ok("server.temperature_store", {"include_monitors": True})
            await ui.ok("printer.objects.query", {"objects": {}})  # initExtruderCanExtrude
            # its websocket stays alive: Mainsail closes a socket silent for 10 s
            note = await rpc.wait_notification("notify_proc_stat_update", within=10)
            assert set(note["params"][0]) >= {
                "moonraker_stats", "system_cpu_usage", "system_memory", "network",
                "websocket_connections",
            }  # fmt: skip
            status = await rpc.wait_notification("notify_status_update", within=10)
            assert "sysload" in status["params"][0]["system_stats"]

            # use: the console (printer/sendGcode), the toolhead's home button, a restart
            assert await ui.ok("printer.gcode.script", {"script": "HELP"}) == "ok"
            error = await ui.refused("printer.gcode.script", {"script": "G28"})  # control.ts
            assert "not a farm command" in error["message"]
            await ui.refused("printer.gcode.script", {"script": "FIRMWARE_RESTART"})
            await ui.refused("machine.reboot", {})  # TheTopCornerMenu: reboot the host
            # the history: a finished print's details, then delete it
            done = next(j for j in history["jobs"] if j["status"] == "completed")
            assert (await ui.ok("server.history.get_job", {"uid": done["job_id"]}))["job"][
                "exists"
            ] is True
            deleted = await ui.ok("server.history.delete_job", {"uid": done["job_id"]})
            assert deleted["deleted_jobs"] == [done["job_id"]]
            # EMERGENCY STOP (TheTopbar.vue): the farm stops, the console says so
            before = len(rpc.frames)
            assert await ui.ok("printer.emergency_stop", {}) == "ok"
            assert ui.lines(before)[0].startswith("!! EMERGENCY STOP by mainsail")
            job = (await farm.client.get(f"/api/jobs/{printing}")).json()
            assert job["state"] == "failed"
            # the queue's Start button resumes the farm
            assert (await ui.ok("server.job_queue.start"))["queue_state"] in ("ready", "loading")
            ui.judge()


async def fluidd_connects(farm: LiveFarm, first: bool) -> Replay:
    """Fluidd's runIdentify and what its dispatches call, on a fresh websocket."""
    async with open_rpc(farm.url) as rpc:
        ui = Replay(rpc, "fluidd")
        await ui.ok(
            "server.connection.identify",
            {
                "client_name": "fluidd",
                "version": "1.37.4-7dd4ea0",
                "type": "web",
                "url": "https://github.com/fluidd-core/fluidd",
            },
        )
        # MOONRAKER_DB: get the fluidd namespace, create the missing roots
        got = await ui.send("server.database.get_item", {"namespace": "fluidd"})
        if first:
            assert got["error"]["message"] == "Namespace fluidd not found"
            for root in (
                "uiSettings",
                "macros",
                "sensors",
                "console",
                "charts",
                "webcams",
                "layout",
            ):
                await ui.ok(
                    "server.database.post_item", {"namespace": "fluidd", "key": root, "value": {}}
                )
        else:
            assert "result" in got
        # Promise.allSettled([...])
        info = await ui.ok("server.info")
        await ui.ok("server.config")
        await ui.ok("machine.proc_stats")
        await ui.ok("machine.system_info")
        await ui.ok("server.files.list", {"root": "config"})
        # onServerInfo: klippy connected -> printer.info, printer.objects.list
        assert info["klippy_connected"] is True
        await ui.ok("printer.info")
        objects = (await ui.ok("printer.objects.list"))["objects"]
        # onPrinterObjectsList -> subscribe (menu objects skipped) -> gcode store, help, temps
        await ui.ok("printer.objects.subscribe", {"objects": dict.fromkeys(objects)})
        await ui.ok("server.gcode_store")
        helped = await ui.ok("printer.gcode.help")  # the -32601 of issue 14
        assert {"STATUS", "PAUSE", "RESUME", "CANCEL_PRINT", "CLEAR", "HELP"} <= set(helped)
        await ui.ok("server.temperature_store", {"include_monitors": True})
        # initComponents (MOONRAKER_COMPONENTS listed in server.info)
        assert not {"authorization", "announcements", "update_manager", "power"} & set(
            info["components"]
        )
        if "history" in info["components"]:
            listed = await ui.ok("server.history.list", {"limit": 50})
            assert listed["count"] == len(listed["jobs"])
            await ui.ok("server.history.totals")
        if "database" in info["components"]:
            await ui.ok("server.database.list")
        if "webcam" in info["components"]:
            cams = (await ui.ok("server.webcams.list"))["webcams"]
            assert all(c["enabled"] and c["snapshot_url"] for c in cams)
        if "job_queue" in info["components"]:
            await ui.ok("server.job_queue.status")
        # the Jobs page: the gcodes root, extended (every file with its metadata)
        listing = await ui.ok("server.files.get_directory", {"path": "gcodes", "extended": True})
        entry = next(f for f in listing["files"] if f["filename"] == A)
        assert entry["estimated_time"] == 2530.0 and entry["job_id"] is not None
        await rpc.wait_notification("notify_proc_stat_update", within=10)
        await fluidd_uses(ui)
        return ui


async def fluidd_uses(ui: Replay) -> None:
    # the console: a farm command (its output comes as console lines)
    before = len(ui.rpc.frames)
    assert await ui.ok("printer.gcode.script", {"script": "STATUS"}) == "ok"
    lines = [
        f["params"][0] for f in ui.rpc.frames[before:] if f.get("method") == "notify_gcode_response"
    ]
    assert lines[0].startswith("// Farm:")
    # the toolhead card: home and a jog (mixins/state.ts sendMoveGcode)
    await ui.refused("printer.gcode.script", {"script": "G28"})
    await ui.refused(
        "printer.gcode.script",
        {
            "script": "SAVE_GCODE_STATE NAME=_ui_movement\nG91\nG1 X10 F6000\n"
            "RESTORE_GCODE_STATE NAME=_ui_movement"
        },
    )
    # the file browser's Print button
    await ui.refused("printer.print.start", {"filename": A})
    # history: delete one, reset the totals (onHistoryTotals reads job_totals)
    listed = await ui.ok("server.history.list", {"limit": 50})
    if listed["jobs"]:
        uid = listed["jobs"][-1]["job_id"]
        assert (await ui.ok("server.history.delete_job", {"uid": uid}))["deleted_jobs"] == [uid]
    reset = await ui.ok("server.history.reset_totals")
    assert reset["job_totals"]["total_jobs"] == 0


async def test_fluidd_replay_first_connect_and_reconnect(tmp_path: Path) -> None:
    async with live_farm(config(tmp_path)) as farm:
        printing = await busy_farm(farm)
        first = await fluidd_connects(farm, first=True)
        # Moonraker answers a missing namespace -32601 and Fluidd catches it
        # (getMoonrakerDatabase): the only such answer, and only on a first connect
        first.judge(allowed=(("server.database.get_item", "Namespace fluidd not found"),))
        again = await fluidd_connects(farm, first=False)
        again.judge()
        # EMERGENCY STOP from the console (ConsoleBrowser.vue: M112 sends both)
        async with open_rpc(farm.url) as rpc:
            ui = Replay(rpc, "fluidd")
            await ui.ok("server.connection.identify", {"client_name": "fluidd", "type": "web"})
            assert await ui.ok("printer.emergency_stop") == "ok"
            assert await ui.ok("printer.gcode.script", {"script": "M112"}) == "ok"
            ui.judge()
        events = (
            await farm.client.get("/api/events/history", params={"type": "farm.emergency_stop"})
        ).json()["events"]
        assert len(events) == 1 and events[0]["data"]["jobs"] == [printing]
        # reset_totals after the delete: totals count from now, the list keeps its entries
        async with open_rpc(farm.url) as rpc:
            assert (await rpc.call("server.history.totals"))["job_totals"]["total_jobs"] == 1
        # the farm keeps what the UIs deleted
        body = json.dumps((await farm.client.get("/api/history")).json())
        assert printing in body
