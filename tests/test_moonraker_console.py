"""The farm console (issue 14): ``printer.gcode.script`` takes farm commands, each does
what it says; ``printer.gcode.help`` and the ``gcode`` object list them; anything else
(G-code) is refused with code 400 and a ``!!`` console line, and changes nothing; the
controls the UIs show for a ready printer answer a visible 400, never -32601."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from printfarmd.api.moonraker import console
from tests.conftest import LiveFarm, live_farm, make_config, sim_printer
from tests.moonraker_client import RpcClient, open_rpc

A = "benchy_pla.gcode"


async def identified(rpc: RpcClient, name: str = "fluidd") -> None:
    await rpc.call(
        "server.connection.identify", {"client_name": name, "version": "1", "type": "web"}
    )


async def lines_after(rpc: RpcClient, script: str) -> tuple[dict[str, Any], list[str]]:
    """Run ``script``; its reply and the console lines it produced (they come first)."""
    before = len(rpc.frames)
    reply = await rpc.request("printer.gcode.script", {"script": script})
    lines = [
        f["params"][0] for f in rpc.frames[before:] if f.get("method") == "notify_gcode_response"
    ]
    return reply, lines


async def snapshot(farm: LiveFarm) -> Any:
    """Everything a command could change: jobs, printers, dispatch, the event log."""
    jobs = (await farm.client.get("/api/jobs", params={"limit": 1000})).json()
    printers = (await farm.client.get("/api/printers")).json()
    status = (await farm.client.get("/api/orchestrator/status")).json()
    events = (await farm.client.get("/api/events/history")).json()
    for p in printers["printers"]:
        p.pop("updated_at", None)
    return jobs, printers, status["paused"], events


def test_parse_script_units() -> None:
    lines = console.parse_script("status\n; a comment\n  CLEAR printer=p1 ; why\n")
    assert [(ln.command, ln.params) for ln in lines] == [
        ("STATUS", {}),
        ("CLEAR", {"PRINTER": "p1"}),
    ]
    assert console.parse_script('CANCEL_PRINT PRINTER="p 1"')[0].params == {"PRINTER": "p 1"}
    for bad, why in [
        ("G28", "G28 is not a farm command"),
        ("STATUS\nG1 X10", "G1 is not a farm command"),
        ("CLEAR", "CLEAR needs PRINTER=<id>"),
        ("CANCEL_PRINT", "CANCEL_PRINT needs PRINTER=<id>"),
        ("PAUSE NOW=1", "unknown parameter NOW"),
        ("CLEAR PRINTER=p1 junk", "cannot read"),
        ("x" * 5000, "at most"),
        ("\x1b[31mRED", "\\x1b"),
    ]:
        with pytest.raises(console.ConsoleRefused) as err:
            console.parse_script(bad)
        assert why in err.value.message, (bad, err.value.message)


async def test_each_farm_command_does_what_it_says(tmp_path: Path) -> None:
    printers = (sim_printer("p1", speed=1.0), sim_printer("p2", speed=20000.0))
    config = make_config(tmp_path, printers, dispatch_paused=True)
    async with live_farm(config) as farm, open_rpc(farm.url) as rpc:
        await identified(rpc)
        help_ = await rpc.call("printer.gcode.help")
        assert set(help_) == set(console.FARM_COMMANDS) and all(help_.values())
        query = await rpc.call("printer.objects.query", {"objects": {"gcode": ["commands"]}})
        assert set(query["status"]["gcode"]["commands"]) == set(console.FARM_COMMANDS)

        reply, out = await lines_after(rpc, "HELP")
        assert reply["result"] == "ok"
        assert all(any(line.startswith(f"// {c}:") for line in out) for c in console.FARM_COMMANDS)

        reply, out = await lines_after(rpc, "RESUME")
        assert reply["result"] == "ok" and out == ["// Farm dispatch resumed"]
        assert farm.owner.paused is False
        reply, out = await lines_after(rpc, "PAUSE")
        assert out == ["// Farm dispatch paused (prints in progress go on)"]
        assert farm.owner.paused is True

        # one job printing on p1 (slow), one finished on p2 (fast, awaiting its plate)
        r = await farm.client.post("/api/jobs", json={"filename": A, "copies": 2})
        first, second = (j["id"] for j in r.json()["jobs"])
        await farm.client.post(f"/api/jobs/{first}/release", json={"printerId": "p1"})
        await farm.client.post(f"/api/jobs/{second}/release", json={"printerId": "p2"})

        async def p2_done() -> bool:
            job = (await farm.client.get(f"/api/jobs/{second}")).json()
            return bool(job["state"] == "post_process")

        await farm.wait_for(p2_done)
        reply, out = await lines_after(rpc, "STATUS")
        assert out[0].startswith("// Farm: dispatch PAUSED; 0 queued, 1 printing")
        assert any(line.startswith(f"// p1: printing {A} (job {first}") for line in out)
        assert any(line.startswith(f"// p2: awaiting clear {A} (job {second}") for line in out)

        reply, out = await lines_after(rpc, "CLEAR PRINTER=p2")
        assert reply["result"] == "ok" and out == [
            "// Plate of p2 cleared: it can take the next job"
        ]
        job = (await farm.client.get(f"/api/jobs/{second}")).json()
        assert job["state"] == "ready"
        plate = await farm.client.get(
            "/api/events/history", params={"type": "printer.plate_cleared"}
        )
        assert plate.json()["events"][-1]["reason"] == "console (fluidd (127.0.0.1))"

        reply, out = await lines_after(rpc, "cancel_print printer=p1")
        assert out == [f"// Cancelled job {first} ({A}) on p1"]
        job = (await farm.client.get(f"/api/jobs/{first}")).json()
        assert job["state"] == "cancelled"
        events = (await farm.client.get("/api/events/history", params={"job": first})).json()
        assert (
            events["events"][-1]["reason"]
            == "cancelled from the farm console by fluidd (127.0.0.1)"
        )

        # what cannot be done answers a 4xx the UIs show, with a console line
        reply, out = await lines_after(rpc, "CANCEL_PRINT PRINTER=p1")
        assert reply["error"]["code"] == 400 and "p1 is not printing" in reply["error"]["message"]
        assert out == [f"!! {reply['error']['message']}"]
        reply, out = await lines_after(rpc, "CLEAR PRINTER=nope")
        assert reply["error"]["code"] == 400 and "no printer nope (printers: p1, p2)" in out[0]
        # the console's recent lines are there for the next page load
        store = (await rpc.call("server.gcode_store"))["gcode_store"]
        assert any(e["message"] == "STATUS" and e["type"] == "command" for e in store)
        assert store[-1]["message"].startswith("!! CLEAR: no printer nope")
        assert len((await rpc.call("server.gcode_store", {"count": 2}))["gcode_store"]) == 2


@pytest.mark.parametrize(
    "script",
    [
        "G28",  # Mainsail's and Fluidd's home buttons
        # Fluidd's jog (mixins/state.ts sendMoveGcode)
        "SAVE_GCODE_STATE NAME=_ui_movement\nG91\nG1 X10 F6000\n"
        "RESTORE_GCODE_STATE NAME=_ui_movement",
        "M84",
        "FIRMWARE_RESTART",
        "STATUS\nG28",  # a farm command with G-code after it: nothing of it runs
    ],
)
async def test_gcode_is_refused_visibly_and_changes_nothing(tmp_path: Path, script: str) -> None:
    async with live_farm(make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True)) as farm:
        r = await farm.client.post("/api/jobs", json={"filename": A})
        assert r.status_code == 201
        before = await snapshot(farm)
        async with open_rpc(farm.url) as rpc, open_rpc(farm.url) as other:
            await identified(rpc, "mainsail")
            await identified(other, "fluidd")
            reply, out = await lines_after(rpc, script)
            err = reply["error"]
            # a 4xx: Fluidd toasts every 400-499 error of a ready printer
            assert err["code"] == 400, err
            assert "is not a farm command" in err["message"] and "HELP" in err["message"]
            # Mainsail shows "!!" console lines (and toasts them off the console page)
            assert out == [f"!! {err['message']}"]
            # every console sees the refusal, as Klipper's errors
            note = await other.wait_notification("notify_gcode_response")
            assert note["params"] == [f"!! {err['message']}"]
            # over HTTP: the same 400, Moonraker's error shape
            http = await farm.client.post("/printer/gcode/script", params={"script": script})
            assert http.status_code == 400 and http.json()["error"]["code"] == 400
        assert await snapshot(farm) == before


@pytest.mark.parametrize(
    ("method", "params", "says"),
    [
        ("printer.print.start", {"filename": A}, "job queue"),
        ("printer.print.pause", {}, "CANCEL_PRINT PRINTER"),
        ("printer.print.resume", {}, "CANCEL_PRINT PRINTER"),
        ("printer.print.cancel", {}, "CANCEL_PRINT PRINTER"),
        ("printer.restart", {}, "no firmware"),
        ("printer.firmware_restart", {}, "no firmware"),
        ("printer.query_endstops.status", {}, "no endstops"),
        ("machine.reboot", {}, "host"),
        ("machine.shutdown", {}, "host"),
        ("server.restart", {}, "systemctl restart printfarmd"),
        ("machine.services.restart", {"service": "klipper"}, "systemctl restart printfarmd"),
        ("server.files.move", {"source": f"gcodes/{A}", "dest": "gcodes/x.gcode"}, "rename"),
        ("server.files.copy", {"source": f"gcodes/{A}", "dest": "gcodes/x.gcode"}, "copy"),
        ("server.files.zip", {"items": [f"gcodes/{A}"]}, "zip"),
        ("server.files.post_directory", {"path": "gcodes/new"}, "folders"),
        ("server.files.delete_directory", {"path": "gcodes/new"}, "folders"),
    ],
)
async def test_controls_the_farm_cannot_honour_answer_a_visible_400(
    farm: LiveFarm, method: str, params: dict[str, Any], says: str
) -> None:
    async with open_rpc(farm.url) as rpc:
        await identified(rpc, "mainsail")
        before = len(rpc.frames)
        reply = await rpc.request(method, params)
        assert reply["error"]["code"] == 400 and says in reply["error"]["message"], reply
        lines = [
            f["params"][0]
            for f in rpc.frames[before:]
            if f.get("method") == "notify_gcode_response"
        ]
        assert lines == [f"!! {reply['error']['message']}"]
    assert (await farm.client.get("/api/jobs")).json()["total"] == 0
    assert farm.owner.paused is True
