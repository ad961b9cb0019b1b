"""MQTT printers and robots end to end: the real daemon, a real mosquitto, the
simulated fleet on its own broker connections; the broker killed mid-print."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import trio

from printfarmd.config import Config, MqttConfig, PrinterConfig
from printfarmd.drivers.moonraker_sim import open_moonraker_sim
from printfarmd.drivers.mqtt_sim import FleetOptions, MqttFleet, open_mqtt_fleet
from printfarmd.config import MoonrakerOptions
from tests.conftest import LiveFarm, live_farm, make_config, sim_printer
from tests.mosquitto import Broker, mosquitto  # noqa: F401 - the fixture

FULL_LIFE = ["created", "validated", "sliced", "queued", "printing", "post_process", "ready"]
#: benchy_pla.gcode says 42 min 10 s; at this speed a print takes ~1.3 s.
SPEED = 2000.0


def mqtt_farm(tmp: Path, broker: Broker, *extra: PrinterConfig, **mqtt: Any) -> Config:
    printers = (PrinterConfig(id="mqtt-1", driver="mqtt", materials=("PLA",)), *extra)
    config = make_config(tmp, printers, retry_backoff=(0.5,))
    options = {
        "host": broker.host,
        "port": broker.port,
        "keepalive": 2,
        "backoff_initial": 0.2,
        "backoff_max": 1.0,
        "resend_interval": 0.5,
        "start_timeout": 5.0,
        **mqtt,
    }
    return attrs.evolve(config, mqtt=MqttConfig(**options))


def fleet_options(printers: int = 2) -> FleetOptions:
    return FleetOptions(
        printers=printers, robots=1, speed=SPEED, report_interval=0.2, clean_time=0.1, keepalive=2
    )


async def submit(farm: LiveFarm, copies: int) -> list[str]:
    r = await farm.client.post(
        "/api/jobs", json={"filename": "benchy_pla.gcode", "copies": copies}
    )
    assert r.status_code in (200, 201, 202), r.text
    return [j["id"] for j in r.json()["jobs"]]


async def all_ready(farm: LiveFarm, ids: list[str]) -> bool:
    for jid in ids:
        r = await farm.client.get(f"/api/jobs/{jid}")
        if r.json()["state"] != "ready":
            return False
    return True


async def lives(farm: LiveFarm, ids: list[str]) -> dict[str, list[str]]:
    store = farm.running.services.store
    out = {}
    for jid in ids:
        events = await store.events_since(0, job_id=jid, types=("job.transition",))
        out[jid] = [e.to_state for e in events]
    return out


async def printers_of(farm: LiveFarm, ids: list[str]) -> list[str]:
    return [(await farm.client.get(f"/api/jobs/{j}")).json()["printer_id"] for j in ids]


def started_once(fleet: MqttFleet) -> list[str]:
    started = [j for p in fleet.printers.values() for j in p.started]
    dupes = [j for j, n in Counter(started).items() if n > 1]
    assert not dupes, f"jobs started twice: {dupes}"
    return started


async def test_mixed_farm_completes_a_batch(tmp_path: Path, mosquitto: Broker) -> None:  # noqa: F811
    """mqtt-1 is configured, mqtt-2 discovered; a simulated printer and a simulated
    Moonraker printer share the queue. Every job ends ready, each through one life."""
    async with open_moonraker_sim(0, print_time=1.0) as klipper:
        config = mqtt_farm(
            tmp_path,
            mosquitto,
            sim_printer("sim-1", speed=SPEED, auto_clear=True),
            PrinterConfig(
                id="voron-1",
                driver="moonraker",
                materials=("PLA",),
                auto_clear=True,
                moonraker=MoonrakerOptions(url=klipper.url, heartbeat=0.5, timeout=2.0),
            ),
        )
        async with open_mqtt_fleet(mosquitto.host, mosquitto.port, fleet_options(2)) as fleet:
            async with live_farm(config) as farm:
                sched = farm.scheduler
                with trio.fail_after(10):
                    while "mqtt-2" not in sched.printers:  # discovered when it reports idle
                        await trio.sleep(0.05)
                ids = await submit(farm, 10)
                await farm.wait_for(lambda: all_ready(farm, ids), within=60)
                for jid, life in (await lives(farm, ids)).items():
                    assert life == FULL_LIFE, (jid, life)
                started = started_once(fleet)
                by_printer = Counter(await printers_of(farm, ids))
                assert by_printer["mqtt-1"] >= 1 and by_printer["mqtt-2"] >= 1, by_printer
                assert len(started) == by_printer["mqtt-1"] + by_printer["mqtt-2"]
                cleared = [p for r in fleet.robots for p in r.cleared]
                assert Counter(cleared) == Counter(
                    {"mqtt-1": by_printer["mqtt-1"], "mqtt-2": by_printer["mqtt-2"]}
                )
