"""Cost (issue 16) through the real daemon: each attempt's filament (grams times the price
per kg) and electricity (the printer's watts times the print time times the price per kWh),
summed in the job view, per attempt in the history (JSON and CSV), per group in the
statistics."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import msgspec
import pytest

from printfarmd.config import CostConfig
from tests.conftest import live_farm, make_config, sim_printer

GCODE = "; filament used [g] = 60.0\n; filament_type = PLA\nG28\nG1 X10\n"


async def test_cost_in_the_job_the_history_and_the_stats(tmp_path: Path) -> None:
    printer = sim_printer("p1", speed=20000.0, auto_clear=True, power_watts=3_600_000.0)
    config = msgspec.structs.replace(
        make_config(tmp_path, (printer,)),
        cost=CostConfig(currency="CHF", filament_price_per_kg=25.0, energy_price_per_kwh=0.5),
    )
    (config.gcodes_path / "part.gcode").write_text(GCODE)
    async with live_farm(config) as farm:
        r = await farm.client.post("/api/jobs", json={"filename": "part.gcode"})
        job = r.json()["jobs"][0]
        assert job["filament_weight"] == 60.0

        async def ready() -> bool:
            body = (await farm.client.get(f"/api/jobs/{job['id']}")).json()
            return bool(body["state"] == "ready")

        await farm.wait_for(ready)
        cost = (await farm.client.get(f"/api/jobs/{job['id']}")).json()["cost"]
        assert cost["currency"] == "CHF" and cost["attempts"] == 1
        assert cost["filament"] == pytest.approx(1.5)  # 60 g at 25 / kg
        assert cost["filament_g"] == 60.0
        # 3.6 MW for the print's seconds is that many kWh; half a franc each.
        history = (await farm.client.get("/api/history")).json()["entries"]
        (entry,) = history
        seconds = entry["duration"]
        assert cost["energy_kwh"] == pytest.approx(seconds, rel=0.05, abs=0.05)
        assert cost["energy"] == pytest.approx(cost["energy_kwh"] * 0.5, abs=1e-3)
        assert entry["cost"]["total"] == pytest.approx(cost["total"])
        assert entry["cost"]["spoolman"] == "none"  # no Spoolman: nothing to report
        stats = (await farm.client.get("/api/stats")).json()
        assert stats["currency"] == "CHF"
        assert stats["farm"]["cost"]["total"] == pytest.approx(cost["total"])
        assert stats["printers"][0]["cost"]["filament"] == pytest.approx(1.5)
        assert stats["files"][0]["cost"]["attempts"] == 1
        r = await farm.client.get("/api/history", headers={"Accept": "text/csv"})
        (row,) = csv.DictReader(io.StringIO(r.text))
        assert row["currency"] == "CHF"
        assert float(row["cost_total"]) == pytest.approx(cost["total"])
