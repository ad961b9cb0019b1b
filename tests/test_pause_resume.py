"""Pause and resume a print (issue 15): through REST, the CLI and the farm console of
the Moonraker facade, on a live farm of simulated printers. The call answers once the
printer did it; a printer that cannot gets a 502 naming it, and nothing changes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio

from tests.conftest import API_KEY, LiveFarm, live_farm, make_config, sim_printer
from tests.moonraker_client import open_rpc


async def _printing(farm: LiveFarm) -> str:
    r = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
    assert r.status_code == 201, r.text
    job = r.json()["jobs"][0]["id"]

    async def started() -> bool:
        got = (await farm.client.get(f"/api/jobs/{job}")).json()
        # progress shows once the printer has confirmed it prints the job
        return bool(got["state"] == "printing" and got["progress"] > 0)

    await farm.wait_for(started, within=30)
    return str(job)


async def _printer_state(farm: LiveFarm, pid: str) -> str:
    return str((await farm.client.get(f"/api/printers/{pid}")).json()["state"])


def _config(tmp_path: Path) -> Any:
    printer = sim_printer("p1", ("PLA",), speed=1.0)
    return make_config(tmp_path, (printer,))


async def test_rest_pause_and_resume_wait_for_the_printer(tmp_path: Path) -> None:
    async with live_farm(_config(tmp_path)) as farm:
        job = await _printing(farm)
        # a second job waits in the queue: pausing it is refused, nothing changes
        queued = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode"})
        waiting = queued.json()["jobs"][0]["id"]
        r = await farm.client.post(f"/api/jobs/{waiting}/pause")
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
        assert (await farm.client.get(f"/api/jobs/{waiting}")).json()["state"] == "queued"
        r = await farm.client.post(f"/api/jobs/{job}/pause")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "printing"  # still the farm's print, now paused
        assert await _printer_state(farm, "p1") == "paused"
        r = await farm.client.post(f"/api/jobs/{job}/resume")
        assert r.status_code == 200, r.text
        assert await _printer_state(farm, "p1") == "printing"
        events = (await farm.client.get("/api/events/history", params={"job": job})).json()
        kinds = [e["type"] for e in events["events"]]
        assert kinds.count("job.pause_requested") == 1
        assert kinds.count("job.resume_requested") == 1


async def test_a_printer_that_cannot_pause_answers_502_and_nothing_changes(
    tmp_path: Path,
) -> None:
    async with live_farm(_config(tmp_path)) as farm:
        job = await _printing(farm)
        farm.owner.host.drivers["p1"].set_offline(True)  # the link drops right now
        r = await farm.client.post(f"/api/jobs/{job}/pause")
        assert r.status_code == 502, r.text
        error = r.json()["error"]
        assert error["code"] == "printer_error" and "p1" in error["message"]
        assert (await farm.client.get(f"/api/jobs/{job}")).json()["state"] == "printing"


async def test_cli_pauses_and_resumes(tmp_path: Path) -> None:
    async with live_farm(_config(tmp_path)) as farm:
        job = await _printing(farm)
        env = {"PRINTFARMD_URL": farm.url, "PRINTFARMD_API_KEY": API_KEY}
        for verb, state in (("pause", "paused"), ("resume", "printing")):
            done = await trio.run_process(
                [sys.executable, "-m", "printfarmd", "jobs", verb, job],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env={**_env(), **env},
            )
            assert done.returncode == 0, done.stderr.decode()
            assert f"job {job}: {verb}d on p1" in done.stdout.decode()
            assert await _printer_state(farm, "p1") == state


async def test_farm_console_pauses_and_resumes_one_printer(tmp_path: Path) -> None:
    async with live_farm(_config(tmp_path)) as farm:
        job = await _printing(farm)
        async with open_rpc(farm.url) as rpc:
            await rpc.call(
                "server.connection.identify", {"client_name": "mainsail", "version": "1"}
            )
            await rpc.call("printer.gcode.script", {"script": "PAUSE_PRINT PRINTER=p1"})
            assert await _printer_state(farm, "p1") == "paused"
            await rpc.call("printer.gcode.script", {"script": "RESUME_PRINT PRINTER=p1"})
            assert await _printer_state(farm, "p1") == "printing"
            reply = await rpc.request(
                "printer.gcode.script", {"script": "PAUSE_PRINT PRINTER=nope"}
            )
            assert reply["error"]["code"] == 400
        assert (await farm.client.get(f"/api/jobs/{job}")).json()["state"] == "printing"


def _env() -> dict[str, str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRINTFARMD_")}
    root = str(Path(__file__).resolve().parent.parent)
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [root, clean.get("PYTHONPATH")]))
    clean["COLUMNS"] = "200"
    return clean
