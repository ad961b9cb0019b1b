"""Issue 8: ``GET /metrics`` in Prometheus text format, behind the key unless configured public."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import msgspec
import trio
import trio.lowlevel

from printfarmd.services.metrics import FarmCounters, render
from tests.conftest import LiveFarm, live_farm, make_config, sim_printer

LINE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"\})? [0-9.e+-]+$')


def _series(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        assert LINE.match(line), line
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


async def test_metrics_need_the_key_and_count_jobs_printers_and_latency(farm: LiveFarm) -> None:
    async with httpx.AsyncClient(base_url=farm.url) as anon:
        assert (await anon.get("/metrics")).status_code == 401
    await farm.client.post("/api/orchestrator/resume")
    r = await farm.client.post("/api/jobs", json={"filename": "benchy_pla.gcode", "copies": 5})
    assert r.status_code == 201, r.text

    async def dispatched() -> bool:
        return bool(farm.owner.counters.dispatch_count >= 1)

    await farm.wait_for(dispatched)
    r = await farm.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    s = _series(r.text)
    assert sum(v for k, v in s.items() if k.startswith("printfarmd_jobs{")) == 5
    assert sum(v for k, v in s.items() if k.startswith("printfarmd_printers{")) == 3
    assert s["printfarmd_dispatch_latency_seconds_count"] >= 1
    assert s['printfarmd_dispatch_latency_seconds_bucket{le="+Inf"}'] >= 1
    assert "printfarmd_queue_depth" in s
    assert s["printfarmd_retries_total"] == 0
    assert s["printfarmd_watchdog_actions_total"] == 0


async def test_metrics_public_when_configured(tmp_path: Path) -> None:
    config = make_config(tmp_path, (sim_printer("p1"),))
    config = msgspec.structs.replace(
        config, server=msgspec.structs.replace(config.server, metrics_public=True)
    )
    async with live_farm(config) as f, httpx.AsyncClient(base_url=f.url) as anon:
        r = await anon.get("/metrics")
        assert r.status_code == 200
        assert "printfarmd_queue_depth 0" in r.text
        # Only /metrics: the rest of the API still needs the key.
        assert (await anon.get("/api/jobs")).status_code == 401
        await trio.lowlevel.checkpoint()


def test_render_histogram_is_cumulative() -> None:
    c = FarmCounters()
    for seconds in (0.05, 2.0, 2.0, 100000.0):
        c.observe_dispatch(seconds)
    s = _series(render({"queued": 2}, {"idle": 1}, 2, c))
    assert s['printfarmd_dispatch_latency_seconds_bucket{le="0.1"}'] == 1
    assert s['printfarmd_dispatch_latency_seconds_bucket{le="5"}'] == 3
    assert s['printfarmd_dispatch_latency_seconds_bucket{le="86400"}'] == 3
    assert s['printfarmd_dispatch_latency_seconds_bucket{le="+Inf"}'] == 4
    assert s['printfarmd_jobs{state="queued"}'] == 2
    assert s['printfarmd_jobs{state="shipped"}'] == 0
