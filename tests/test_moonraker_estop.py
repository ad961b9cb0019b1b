"""The farm's emergency stop (issue 14): ``printer.emergency_stop`` over the websocket and
``POST /printer/emergency_stop`` over HTTP (as Mainsail's and Fluidd's EMERGENCY STOP
buttons send it), with two simulated printers and one printer behind the Moonraker
stand-in printing; and each driver's ``emergency_stop`` on its own (the simulator, the
Moonraker driver against the stand-in, an MQTT printer of the fleet simulator through a
real mosquitto)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from printfarmd.config import PrinterConfig, SimulatorOptions
from printfarmd.drivers.base import JobFailed, JobSpec, StatusReport
from printfarmd.drivers.moonraker_sim import MoonrakerSim, open_moonraker_sim
from printfarmd.drivers.mqtt_sim import open_mqtt_fleet
from printfarmd.drivers.simulator import SimulatedPrinter
from printfarmd.models import PrinterState
from tests.conftest import LiveFarm, live_farm, make_config, sim_printer
from tests.moonraker_client import open_rpc
from tests.mosquitto import Broker, mosquitto  # noqa: F401 - the fixture
from tests.test_moonraker_driver import FAST, GCODE, driven, wait_until
from tests.test_mqtt_farm import fleet_options, mqtt_farm

A = "benchy_pla.gcode"


def farm_config(tmp: Path, klipper: MoonrakerSim) -> Any:
    printers = (
        sim_printer("p1", speed=1.0),
        sim_printer("p2", speed=1.0),
        PrinterConfig(
            id="k1",
            driver="moonraker",
            materials=("PLA",),
            moonraker=msgspec.structs.replace(FAST, url=klipper.url),
        ),
    )
    # A retry far away: each failed job stays failed for the test to look at.
    return make_config(tmp, printers, dispatch_paused=True, retry_backoff=(3600.0,))


async def api(farm: LiveFarm, path: str, **params: Any) -> Any:
    r = await farm.client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def start_three(farm: LiveFarm, klipper: MoonrakerSim) -> list[str]:
    """One job printing on each of p1, p2 and k1 (confirmed by the printers)."""
    r = await farm.client.post("/api/jobs", json={"filename": A, "copies": 3})
    assert r.status_code == 201, r.text
    ids = [j["id"] for j in r.json()["jobs"]]
    await farm.client.post("/api/orchestrator/resume")

    async def printing() -> bool:
        views = (await api(farm, "/api/printers"))["printers"]
        return all(p["state"] == "printing" for p in views) and klipper.klipper.state == "printing"

    await farm.wait_for(printing)
    return ids


async def check_stopped(farm: LiveFarm, klipper: MoonrakerSim, ids: list[str], who: str) -> None:
    sched = farm.owner
    # every printer stopped through its driver, once
    assert sched.host.drivers["p1"].emergency_stops == 1
    assert sched.host.drivers["p2"].emergency_stops == 1
    assert klipper.klipper.emergency_stops == 1
    assert klipper.klipper.klippy == "shutdown" and klipper.klipper.state == "error"
    # dispatch is paused
    assert (await api(farm, "/api/orchestrator/status"))["paused"] is True
    # each job failed exactly once, with the reason and the client
    reason = f"emergency stop by {who}"
    for job_id in ids:
        job = await api(farm, f"/api/jobs/{job_id}")
        assert job["state"] == "failed" and job["last_error"] == reason, job
        events = (await api(farm, "/api/events/history", job=job_id))["events"]
        fails = [e for e in events if e["to_state"] == "failed"]
        assert [(e["from_state"], e["reason"]) for e in fails] == [("printing", reason)]
    # one event records it
    (event,) = (await api(farm, "/api/events/history", type="farm.emergency_stop"))["events"]
    assert event["reason"] == reason
    assert event["data"]["client"] == who
    assert sorted(event["data"]["jobs"]) == sorted(ids)
    # (the printers it told to stop; which ones it reached the console line says)
    assert event["data"]["printers"] == ["k1", "p1", "p2"]
    # the history shows the attempts ended in error, for that reason
    history = (await api(farm, "/api/history"))["entries"]
    assert sorted(e["job_id"] for e in history) == sorted(ids)
    assert {(e["status"], e["reason"]) for e in history} == {("error", reason)}

    # the printers report what an emergency stop leaves: the simulators idle with the
    # part on the plate, the Klipper printer shut down (error) until a firmware restart
    async def settled() -> bool:
        views = {p["id"]: p for p in (await api(farm, "/api/printers"))["printers"]}
        return (
            views["k1"]["state"] == "error"
            and views["p1"]["state"] == views["p2"]["state"] == "awaiting_clear"
        )

    await farm.wait_for(settled)
    # nothing started again while paused, however long it took the printers to settle
    assert (await api(farm, "/api/jobs", status="printing"))["total"] == 0


async def test_emergency_stop_over_the_websocket(tmp_path: Path) -> None:
    async with (
        open_moonraker_sim(print_time=600.0) as klipper,
        live_farm(farm_config(tmp_path, klipper)) as farm,
    ):
        ids = await start_three(farm, klipper)
        async with open_rpc(farm.url) as rpc:
            await rpc.call(
                "server.connection.identify",
                {"client_name": "mainsail", "version": "2.18.2", "type": "web", "url": "x"},
            )
            # Mainsail's topbar button: printer.emergency_stop with {} (TheTopbar.vue)
            assert await rpc.call("printer.emergency_stop", {}) == "ok"
            # every console hears it as an error line (Mainsail toasts "!!" lines)
            note = await rpc.wait_notification("notify_gcode_response")
            assert note["params"][0].startswith("!! EMERGENCY STOP by mainsail (127.0.0.1)")
            assert "k1, p1, p2" in note["params"][0]
            change = await rpc.wait_notification("notify_job_queue_changed")
            assert change["params"][0]["queue_state"] == "paused"
        await check_stopped(farm, klipper, ids, "mainsail (127.0.0.1)")


async def test_emergency_stop_over_http(tmp_path: Path) -> None:
    async with (
        open_moonraker_sim(print_time=600.0) as klipper,
        live_farm(farm_config(tmp_path, klipper)) as farm,
    ):
        ids = await start_three(farm, klipper)
        # the dashboard's button sends client=dashboard; Moonraker answers "ok"
        r = await farm.client.post("/printer/emergency_stop", params={"client": "dashboard"})
        assert r.status_code == 200 and r.json() == {"result": "ok"}
        await check_stopped(farm, klipper, ids, "dashboard (127.0.0.1)")
        # a second stop finds nothing printing: no job fails twice, one more event
        r = await farm.client.post("/printer/emergency_stop")
        assert r.status_code == 200
        events = (await api(farm, "/api/events/history", type="farm.emergency_stop"))["events"]
        assert len(events) == 2 and events[1]["data"]["jobs"] == []
        for job_id in ids:
            hist = (await api(farm, "/api/events/history", job=job_id))["events"]
            assert sum(e["to_state"] == "failed" for e in hist) == 1


async def test_m112_in_the_console_is_the_emergency_stop(tmp_path: Path) -> None:
    config = make_config(tmp_path, (sim_printer("p1", speed=1.0),), retry_backoff=(3600.0,))
    async with live_farm(config) as farm:
        r = await farm.client.post("/api/jobs", json={"filename": A})
        job_id = r.json()["jobs"][0]["id"]

        async def printing() -> bool:
            return (await api(farm, f"/api/jobs/{job_id}"))["state"] == "printing"

        await farm.wait_for(printing)
        async with open_rpc(farm.url) as rpc:
            await rpc.call("server.connection.identify", {"client_name": "fluidd"})
            assert await rpc.call("printer.gcode.script", {"script": "M112"}) == "ok"
        job = await api(farm, f"/api/jobs/{job_id}")
        assert (
            job["state"] == "failed" and job["last_error"] == "emergency stop by fluidd (127.0.0.1)"
        )
        assert farm.owner.host.drivers["p1"].emergency_stops == 1
        assert (await api(farm, "/api/orchestrator/status"))["paused"] is True


async def test_a_printer_that_cannot_be_reached_is_named_and_the_others_still_stop(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        (sim_printer("p1", speed=1.0), sim_printer("p2", speed=1.0)),
        retry_backoff=(3600.0,),
    )
    async with live_farm(config) as farm:
        r = await farm.client.post("/api/jobs", json={"filename": A, "copies": 2})
        ids = [j["id"] for j in r.json()["jobs"]]

        async def printing() -> bool:
            # Both printers confirmed their print: the hand-over is through (a start still
            # in flight when p2 drops fails on its own, before the stop could name it).
            jobs = (await api(farm, "/api/jobs", status="printing"))["jobs"]
            slots = farm.owner.state.printers.values()
            return len(jobs) == 2 and all(s.confirmed and s.handing is None for s in slots)

        await farm.wait_for(printing)
        farm.owner.host.drivers["p2"].set_offline(True)
        async with open_rpc(farm.url) as rpc:
            await rpc.call("server.connection.identify", {"client_name": "mainsail"})
            await rpc.call("printer.emergency_stop")
            note = await rpc.wait_notification("notify_gcode_response")
            assert "NOT REACHED: p2" in note["params"][0]
        (event,) = (await api(farm, "/api/events/history", type="farm.emergency_stop"))["events"]
        assert event["data"]["printers"] == ["p1", "p2"]
        for job_id in ids:  # both jobs failed all the same
            assert (await api(farm, f"/api/jobs/{job_id}"))["state"] == "failed"


# ---------------------------------------------------------------- each driver


async def test_simulator_emergency_stop_stops_without_a_job_failure() -> None:
    printer = SimulatedPrinter("s1", SimulatorOptions(speed=1.0, report_interval=1.0))
    send, recv = trio.open_memory_channel[Any](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(printer.run, send)
        await printer.start_job(JobSpec("J" * 16, A, A, estimated_time=3600.0))
        await printer.emergency_stop()
        with trio.fail_after(10):
            while True:
                ev = await recv.receive()
                assert not isinstance(ev, JobFailed)
                if isinstance(ev, StatusReport) and ev.message == "emergency stop":
                    break
        assert ev.state is PrinterState.IDLE and printer.emergency_stops == 1
        assert (await printer.status()).state is PrinterState.IDLE
        printer.set_offline(True)
        with pytest.raises(Exception, match="offline"):
            await printer.emergency_stop()
        nursery.cancel_scope.cancel()


async def test_moonraker_driver_emergency_stop_shuts_klipper_down() -> None:
    async with open_moonraker_sim(print_time=60.0) as sim, driven(sim) as link:
        await link.driver.start_job(JobSpec("E" * 16, A, GCODE))
        await wait_until(lambda: link.last_state() is PrinterState.PRINTING)
        await link.driver.emergency_stop()
        assert "printer.emergency_stop" in sim.calls and sim.klipper.emergency_stops == 1
        await wait_until(lambda: link.last_state() is PrinterState.ERROR)
        # the farm asked: no JobFailed for the stopped print
        assert not [e for e in link.events if isinstance(e, JobFailed)]


async def test_mqtt_printer_emergency_stop(tmp_path: Path, mosquitto: Broker) -> None:  # noqa: F811
    config = mqtt_farm(tmp_path, mosquitto)
    config = msgspec.structs.replace(
        config, scheduler=msgspec.structs.replace(config.scheduler, retry_backoff=(3600.0,))
    )
    options = msgspec.structs.replace(fleet_options(1), speed=1.0)
    async with (
        open_mqtt_fleet(mosquitto.host, mosquitto.port, options) as fleet,
        live_farm(config) as farm,
    ):
        r = await farm.client.post("/api/jobs", json={"filename": A})
        job_id = r.json()["jobs"][0]["id"]
        device = fleet.printers["mqtt-1"]

        async def printing() -> bool:
            job = await api(farm, f"/api/jobs/{job_id}")
            return job["state"] == "printing" and device.job == job_id

        await farm.wait_for(printing)
        r = await farm.client.post("/printer/emergency_stop")
        assert r.status_code == 200

        async def obeyed() -> bool:
            return device.emergency_stops == 1 and device.job is None

        await farm.wait_for(obeyed)
        job = await api(farm, f"/api/jobs/{job_id}")
        assert job["state"] == "failed" and job["last_error"].startswith("emergency stop by")
        (event,) = (await api(farm, "/api/events/history", type="farm.emergency_stop"))["events"]
        assert event["data"]["printers"] == ["mqtt-1"]
