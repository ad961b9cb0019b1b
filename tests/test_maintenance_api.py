"""Maintenance over REST with the real daemon (issue 16): a printer crossing its
threshold finishes its print, takes no new job, notifies once through the escalation
channels (a real webhook receiver), and returns after ``POST .../maintenance`` with the
work done; the log survives restarts; the old ``{"enabled": ...}`` body still works.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from printfarmd.config import Config, MaintenanceConfig, NotifyConfig
from tests.conftest import LiveFarm, live_farm, make_config, sim_printer
from tests.test_notifier import WebhookReceiver

A = "benchy_pla.gcode"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


def config(tmp: Path, hook: str) -> Config:
    printer = sim_printer("p1", speed=20000.0, auto_clear=True, power_watts=150.0)
    base = make_config(tmp, (printer,))
    return msgspec.structs.replace(
        base,
        maintenance=MaintenanceConfig(every_prints=1),
        notify=NotifyConfig(webhook_urls=(hook,), retry_backoff=(0.2,)),
    )


async def job(farm: LiveFarm, jid: str) -> dict[str, Any]:
    body: dict[str, Any] = (await farm.client.get(f"/api/jobs/{jid}")).json()
    return body


async def test_a_printer_due_for_maintenance(tmp_path: Path, receiver: WebhookReceiver) -> None:
    cfg = config(tmp_path, receiver.url)
    async with live_farm(cfg) as farm:
        r = await farm.client.post("/api/jobs", json={"filename": A, "copies": 2})
        first, second = (j["id"] for j in r.json()["jobs"])

        async def due() -> bool:
            printer = (await farm.client.get("/api/printers/p1")).json()
            return bool(
                printer["state"] == "maintenance" and (await job(farm, first))["state"] == "ready"
            )

        await farm.wait_for(due)
        printer = (await farm.client.get("/api/printers/p1")).json()
        assert printer["maintenance_due"].startswith("1 print since the last maintenance")
        assert printer["counters"]["prints"] == 1
        assert (await job(farm, second))["state"] == "queued"  # it takes no new job
        assert (await job(farm, first))["cost"]["energy_kwh"] >= 0

        async def notified() -> bool:
            return len(receiver.requests) >= 1

        await farm.wait_for(notified)
        (note,) = receiver.requests
        assert note.headers["X-Printfarmd-Event"] == "printer.maintenance_due"
        assert b'"printer_id":"p1"' in note.body
        doc = (await farm.client.get("/api/printers/p1/maintenance")).json()
        assert doc["printers"][0]["due"] and doc["log"] == [] and doc["total"] == 0
        assert doc["thresholds"] == {"every_hours": None, "every_prints": 1, "every_grams": None}
    # A restart while it is due: still in maintenance, not notified again.
    async with live_farm(cfg) as farm:
        printer = (await farm.client.get("/api/printers/p1")).json()
        assert printer["state"] == "maintenance" and printer["maintenance_due"]
        deliveries = (await farm.client.get("/api/notifications")).json()
        assert deliveries["total"] == 1
        assert (await job(farm, second))["state"] == "queued"
        # bad bodies: nothing recorded
        for body, status in (
            ({"by": "alice"}, 400),
            ({"by": " ", "work": "x"}, 422),
            ({"enabled": True, "by": "alice"}, 400),
            ({}, 400),
        ):
            r = await farm.client.post("/api/printers/p1/maintenance", json=body)
            assert r.status_code == status, (body, r.text)
        r = await farm.client.post(
            "/api/printers/p1/maintenance", json={"by": "alice", "work": "new nozzle"}
        )
        assert r.status_code == 200, r.text
        back = r.json()
        assert back["maintenance"] is False and back["maintenance_due"] is None
        assert back["counters"]["prints"] == 0

        async def printed() -> bool:
            return bool((await job(farm, second))["state"] in ("ready", "post_process"))

        await farm.wait_for(printed)
        # The old form still turns maintenance mode on and off.
        r = await farm.client.post("/api/printers/p1/maintenance", json={"enabled": True})
        assert r.status_code == 200 and r.json()["state"] == "maintenance"
        r = await farm.client.post("/api/printers/p1/maintenance", json={"enabled": False})
        assert r.status_code == 200 and r.json()["maintenance"] is False
    # The log survives the restart.
    async with live_farm(cfg) as farm:
        doc = (await farm.client.get("/api/maintenance", params={"printer": "p1"})).json()
        assert doc["total"] == 1
        (entry,) = doc["log"]
        assert (entry["by"], entry["work"], entry["counters"]["prints"]) == (
            "alice",
            "new nozzle",
            1,
        )
        assert entry["due"].startswith("1 print ")
        assert (
            await farm.client.get("/api/maintenance", params={"printer": "x"})
        ).status_code == 404
    assert len([r for r in receiver.requests if b"maintenance_due" in r.body]) == 2
