"""Issue 17: the daemon's heap policy (``printfarmd/heap.py``).

Start-up's objects are frozen out of the collector's walk once the daemon is ready, and
the young generation is collected every 10,000 net allocations instead of 700, so a
fan-out to hundreds of streams no longer runs the full collections that made the SSE
bench's tail (``bench/bench_sse.py`` measures the effect; these tests show the policy is
in force). ``settle`` changes the whole interpreter, so it is tried in a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from printfarmd.services.metrics import FarmCounters, HeapCounts, render
from tests.conftest import API_KEY, REPO, make_config, sim_printer, wait_until
from tests.test_metrics import _series

SETTLE_IN_A_CHILD = """
import gc, json
from printfarmd import heap
kept = [[i] for i in range(5000)]  # what start-up built and keeps
frozen = heap.settle()
cycle = []
cycle.append(cycle)  # a cycle made after READY
del cycle
print(json.dumps({
    "threshold": gc.get_threshold(),
    "enabled": gc.isenabled(),
    "frozen": frozen,
    "freed_later": gc.collect(),
}))
"""


def test_settle_freezes_what_start_up_built_and_collects_the_young_less_often() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SETTLE_IN_A_CHILD],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    got = json.loads(out.stdout)
    # CPython's defaults are (700, 10, 10); the daemon's young threshold is 10,000.
    assert got["threshold"] == [10_000, 10, 10]
    assert got["enabled"] is True
    # Every object alive at READY, at least the 5,000 lists the child kept.
    assert got["frozen"] > 5_000
    # Cycles made afterwards are still collected: only the frozen ones are left alone.
    assert got["freed_later"] >= 1


def test_serve_settles_its_heap_once_ready(daemon_factory: Any, tmp_path: Path) -> None:
    # The real console path (`python -m printfarmd serve`), not the in-process `run`.
    d = daemon_factory(make_config(tmp_path, (sim_printer("p1"),), dispatch_paused=True))
    d.start()
    with httpx.Client(base_url=d.url, headers={"X-Api-Key": API_KEY}, timeout=10) as c:

        def series() -> dict[str, float]:
            r = c.get("/metrics")
            assert r.status_code == 200, r.text
            return _series(r.text)

        # READY comes a moment after health says "ok": wait for the settled heap.
        wait_until(lambda: series()["printfarmd_gc_frozen_objects"] > 0, 20, "a settled heap")
        s = series()
        # Modules, classes, the config and the routes: tens of thousands of objects.
        assert s["printfarmd_gc_frozen_objects"] > 20_000
        assert {f'python_gc_collections_total{{generation="{g}"}}' for g in "012"} <= s.keys()


def test_render_lists_the_collector_by_generation() -> None:
    heap = HeapCounts(
        (
            {"collections": 40, "collected": 900, "uncollectable": 0},
            {"collections": 4, "collected": 30, "uncollectable": 0},
            {"collections": 1, "collected": 2, "uncollectable": 0},
        ),
        frozen=75_000,
    )
    s = _series(render({}, {}, 0, FarmCounters(), heap))
    assert s['python_gc_collections_total{generation="0"}'] == 40
    assert s['python_gc_collections_total{generation="2"}'] == 1
    assert s['python_gc_objects_collected_total{generation="1"}'] == 30
    assert s["printfarmd_gc_frozen_objects"] == 75_000
