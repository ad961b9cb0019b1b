"""ETA = the slicer's estimate adjusted by each printer's observed speed, learned from
finished jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from printfarmd.core import eta
from tests import gcode_samples as gs
from tests.conftest import live_farm, make_config, sim_printer


def test_learn_and_adjust() -> None:
    assert eta.adjusted(100.0, None) == 100.0  # no history: the estimate as is
    assert eta.adjusted(None, 2.0) is None
    f = eta.learn(None, 100.0, 200.0)
    assert f == 2.0
    f = eta.learn(f, 100.0, 100.0)
    assert f == pytest.approx(0.7 * 2.0 + 0.3 * 1.0)
    assert eta.learn(f, None, 50.0) == f and eta.learn(f, 0.0, 50.0) == f
    assert eta.learn(f, 100.0, 0.0) == f
    assert eta.adjusted(100.0, f) == pytest.approx(170.0)


async def test_each_printer_learns_its_speed_from_finished_jobs(tmp_path: Path) -> None:
    # Two simulated printers at very different speeds; the file says 3723 s.
    printers = (
        sim_printer("fast", ("PETG",), speed=40_000.0, auto_clear=True, tags=("fast",)),
        sim_printer("slow", ("PETG",), speed=8_000.0, auto_clear=True, tags=("slow",)),
    )
    async with live_farm(make_config(tmp_path, printers)) as farm:
        c = farm.client
        assert (
            await c.post("/api/files", files={"file": ("p.gcode", gs.prusaslicer())})
        ).is_success
        r1 = await c.post("/api/jobs", json={"filename": "p.gcode", "required_tags": ["fast"]})
        r2 = await c.post("/api/jobs", json={"filename": "p.gcode", "required_tags": ["slow"]})
        ids = [r1.json()["jobs"][0]["id"], r2.json()["jobs"][0]["id"]]

        async def done() -> bool:
            states = [(await c.get(f"/api/jobs/{i}")).json()["state"] for i in ids]
            return all(s in ("post_process", "ready") for s in states)

        await farm.wait_for(done, within=20)
        factors = farm.owner.speed_factors
        assert set(factors) == {"fast", "slow"}
        # real time per second of estimate, roughly 1/speed each (plus start-up overhead)
        assert factors["fast"] < factors["slow"]
        job = await farm.owner.get_job(ids[0])
        now = 1_000.0
        fast_eta = now + (eta.adjusted(job.estimated_time, factors["fast"]) or 0.0)
        assert fast_eta == pytest.approx(now + 3723.0 * factors["fast"])
        assert eta.adjusted(job.estimated_time, None) == 3723.0
