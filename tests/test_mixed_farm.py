"""Issue 15: one queue, every kind of printer. A farm of a simulated printer, a Moonraker
stand-in, two MQTT job-handler printers (a real mosquitto), a real OctoPrint with its
Virtual Printer, a PrusaLink stand-in and a Bambu Lab stand-in (real mosquitto over TLS,
real FTPS) drains 30 jobs of mixed materials and colours. No printer gets a material or
colour it lacks; no job is printed twice; every job ends ready."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import trio

from printfarmd.config import MoonrakerOptions, MqttConfig, PrinterConfig
from printfarmd.drivers.moonraker_sim import open_moonraker_sim
from printfarmd.drivers.mqtt_sim import FleetOptions, open_mqtt_fleet
from printfarmd.drivers.prusalink_sim import open_prusalink_sim
from tests.bambu_sim import open_bambu
from tests.conftest import LiveFarm, live_farm, make_config, sim_printer
from tests.keyleak import register_key
from tests.mosquitto import Broker, mosquitto  # noqa: F401 - the fixture
from tests.octoprint_real import dwell_gcode, start_octoprint
from tests.test_bambu_driver import bambu_printer
from tests.test_octoprint_driver import octoprint_printer
from tests.test_prusalink_driver import FAST as PRUSA_FAST
from tests.test_prusalink_driver import PASSWORD

WHITE, BLACK, ORANGE = "#FFFFFF", "#000000", "#FF6600"
#: What each printer has loaded: (material, colour) pairs; colour "" = unknown.
LOADED: dict[str, tuple[tuple[str, str], ...]] = {
    "sim": (("PLA", WHITE),),
    "klipper": (("PETG", BLACK),),
    "mqtt-1": (("PLA", ""),),
    "mqtt-2": (("PLA", ""),),
    "octo": (("PLA", ORANGE),),
    "prusa": (("PETG", WHITE),),
    # the Bambu's AMS says what it holds (a MaterialsReport), not its config
    "bambu": (("PLA", BLACK), ("PETG", ORANGE)),
}
#: The 30 jobs: (material, colour or None), each printable somewhere, several only on one
#: kind of printer.
JOBS: list[tuple[str, str | None]] = (
    [("PLA", None)] * 8
    + [("PLA", WHITE)] * 3
    + [("PLA", ORANGE)] * 3
    + [("PLA", BLACK)] * 3
    + [("PETG", None)] * 5
    + [("PETG", BLACK)] * 3
    + [("PETG", WHITE)] * 2
    + [("PETG", ORANGE)] * 3
)


def gcode(material: str) -> bytes:
    """A short print any of these printers runs in about a second."""
    head = (
        f"; filament_type = {material}\n; estimated printing time (normal mode) = 0h 0m 1s\n"
    ).encode()
    return head + dwell_gcode(1.0)


def fits(printer: str, material: str, colour: str | None) -> bool:
    return any(m == material and (colour is None or c == colour) for m, c in LOADED[printer])


async def test_one_queue_drains_across_every_kind_of_printer(
    tmp_path: Path,
    mosquitto: Broker,  # noqa: F811
) -> None:
    octo = await trio.to_thread.run_sync(start_octoprint, tmp_path / "octoprint")
    register_key(octo.api_key)
    try:
        await _run(tmp_path, mosquitto, octo)
    finally:
        await trio.to_thread.run_sync(octo.stop)


async def _run(tmp_path: Path, broker: Broker, octo: Any) -> None:
    async with (
        open_moonraker_sim(print_time=1.0) as klipper,
        open_prusalink_sim(password=PASSWORD, default_print_time=1.0) as prusa,
        open_bambu(tmp_path / "bambu", print_time=1.0, prepare_time=0.2) as (bb, ftps, bambu),
        open_mqtt_fleet(
            broker.host,
            broker.port,
            FleetOptions(printers=2, robots=1, speed=60.0, report_interval=0.2, clean_time=0.1),
        ),
    ):
        bambu.set_ams([("PLA", "000000FF"), ("PETG", "FF6600FF")], tray_now="0")

        def colours(pid: str) -> tuple[str, ...]:
            return tuple(c for _, c in LOADED[pid]) if all(c for _, c in LOADED[pid]) else ()

        def materials(pid: str) -> tuple[str, ...]:
            return tuple(m for m, _ in LOADED[pid])

        printers = (
            msgspec.structs.replace(
                sim_printer("sim", materials("sim"), speed=600.0),
                colours=colours("sim"),
                auto_clear=True,
            ),
            PrinterConfig(
                id="klipper",
                driver="moonraker",
                materials=materials("klipper"),
                colours=colours("klipper"),
                auto_clear=True,
                moonraker=MoonrakerOptions(
                    url=klipper.url, heartbeat=0.3, timeout=5.0, backoff_initial=0.1
                ),
            ),
            PrinterConfig(id="mqtt-1", driver="mqtt", materials=("PLA",), auto_clear=True),
            PrinterConfig(id="mqtt-2", driver="mqtt", materials=("PLA",), auto_clear=True),
            msgspec.structs.replace(
                octoprint_printer("octo", octo.url, octo.api_key),
                colours=colours("octo"),
                auto_clear=True,
            ),
            PrinterConfig(
                id="prusa",
                driver="prusalink",
                materials=materials("prusa"),
                colours=colours("prusa"),
                auto_clear=True,
                prusalink=msgspec.structs.replace(PRUSA_FAST, url=prusa.url),
            ),
            # configured as PLA only: what its AMS reports must win
            msgspec.structs.replace(bambu_printer("bambu", bb, ftps, tmp_path), auto_clear=True),
        )
        config = make_config(tmp_path, printers, retry_backoff=(0.5,))
        config = msgspec.structs.replace(
            config,
            mqtt=MqttConfig(
                host=broker.host,
                port=broker.port,
                keepalive=2,
                backoff_initial=0.2,
                backoff_max=1.0,
                resend_interval=0.5,
                start_timeout=15.0,
                discover=False,
            ),
        )
        for material in ("PLA", "PETG"):
            (config.gcodes_path / f"mix_{material.lower()}.gcode").write_bytes(gcode(material))
        async with live_farm(config) as farm:
            await _drain(farm)


async def _drain(farm: LiveFarm) -> None:
    async def bambu_ams_known() -> bool:
        p = (await farm.client.get("/api/printers/bambu")).json()
        return bool(p["materials"] == ["PLA", "PETG"] and p["colours"] == [BLACK, ORANGE])

    await farm.wait_for(bambu_ams_known, within=30)
    ids: dict[str, tuple[str, str | None]] = {}
    for material, colour in JOBS:
        body: dict[str, Any] = {"filename": f"mix_{material.lower()}.gcode"}
        if colour:
            body["colour"] = colour
        r = await farm.client.post("/api/jobs", json=body)
        assert r.status_code == 201, r.text
        ids[r.json()["jobs"][0]["id"]] = (material, colour)

    async def all_ready() -> bool:
        r = await farm.client.get("/api/jobs", params={"limit": 1000, "status": "ready"})
        return bool(r.json()["total"] == len(ids))

    try:
        await farm.wait_for(all_ready, within=120, poll=0.5)
    except trio.TooSlowError:
        jobs = (await farm.client.get("/api/jobs", params={"limit": 1000})).json()["jobs"]
        printers = (await farm.client.get("/api/printers")).json()["printers"]
        states = Counter(j["state"] for j in jobs)
        stuck = [
            (j["id"], j["state"], j["printer_id"], j.get("waiting"), j["last_error"])
            for j in jobs
            if j["state"] != "ready"
        ]
        raise AssertionError(
            f"not all ready: {states}; stuck {stuck[:8]}; printers "
            f"{[(p['id'], p['state'], p['message'], p['current_job']) for p in printers]}"
        ) from None
    events: list[dict[str, Any]] = []
    after = 0
    while page := (
        await farm.client.get("/api/events/history", params={"after": after, "limit": 5000})
    ).json()["events"]:
        events += page
        after = page[-1]["seq"]
    printed: Counter[str] = Counter()
    used: set[str] = set()
    for ev in events:
        if ev["type"] != "job.transition" or ev["job_id"] not in ids:
            continue
        if ev["to_state"] == "printing":
            material, colour = ids[ev["job_id"]]
            printer = ev["printer_id"]
            assert fits(printer, material, colour), (ev["job_id"], printer, material, colour)
            used.add(printer)
        if ev["from_state"] == "printing" and ev["to_state"] == "post_process":
            printed[ev["job_id"]] += 1
    assert all(printed[j] == 1 for j in ids), printed  # printed once, never twice
    # every kind of printer took part
    assert {"sim", "klipper", "octo", "prusa", "bambu"} <= used, used
    assert used & {"mqtt-1", "mqtt-2"}, used
