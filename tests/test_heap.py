"""Issue 17: the daemon's heap policy (``printfarmd/heap.py``).

Start-up's objects are frozen out of the collector's walk once the daemon is ready, and
the young generation is collected every 10,000 net allocations instead of 700, so a
fan-out to hundreds of streams no longer runs the full collections that made the SSE
bench's tail (``bench/bench_sse.py`` measures the effect; these tests show the policy is
in force). ``settle`` changes the whole interpreter, so it is tried in a child process.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx

from printfarmd.services.metrics import FarmCounters, HeapCounts, render
from tests.conftest import API_KEY, REPO, make_config, sim_printer, wait_until, write_config
from tests.test_metrics import _series

SETTLE_IN_A_CHILD = """
import gc, json
from printfarmd import heap
kept = [[i] for i in range(5000)]  # what start-up built and keeps
before = heap.frozen_objects()
frozen = heap.settle()
cycle = []
cycle.append(cycle)  # a cycle made after READY
del cycle
print(json.dumps({
    "threshold": gc.get_threshold(),
    "enabled": gc.isenabled(),
    "frozen": frozen,
    "before": before,
    "reported": heap.frozen_objects(),
    "counted": gc.get_freeze_count(),
    "freed_later": gc.collect(),
}))
"""

LOADING_IN_A_CHILD = """
import gc, json
from printfarmd import heap
started = []
gc.callbacks.append(lambda phase, info: phase == "start" and started.append(info["generation"]))
before = gc.get_threshold()
with heap.loading():
    inside = gc.get_threshold()
    kept = [[i] for i in range(300_000)]  # a heap that only grows, as while modules load
during = list(started)
started.clear()
kept_too = [[i] for i in range(300_000)]  # the same growth under the restored thresholds
print(json.dumps({
    "before": before, "inside": inside, "after": gc.get_threshold(),
    "during": during, "later": started,
}))
"""

#: The real command line, run until ``serve`` has loaded the server stack and found its
#: port taken (exit 2 before anything is touched); every ``heap.loading`` block it enters
#: is recorded, with what it imported and the collections that ran inside it, and the
#: objects frozen by then.
COMMAND_LINE_IN_A_CHILD = """
import contextlib, gc, json, sys
from printfarmd import heap
real, blocks, depth = heap.loading, [], [0]
@contextlib.contextmanager
def recorded():
    block = {"imported": set(sys.modules), "older": [], "young": 0}
    blocks.append(block)
    depth[0] += 1
    try:
        with real():
            yield
    finally:
        depth[0] -= 1
        block["imported"] = sorted(set(sys.modules) - block["imported"])
def seen(phase, info):
    if phase == "start" and depth[0]:
        if info["generation"]:
            blocks[-1]["older"].append(info["generation"])
        else:
            blocks[-1]["young"] += 1
heap.loading = recorded
gc.callbacks.append(seen)
sys.argv = ["printfarmd", "serve", "--config", sys.argv[1]]
from printfarmd.__main__ import main
code = main()
print(json.dumps({"code": code, "blocks": blocks, "frozen": gc.get_freeze_count()}))
"""


def _child(program: str) -> Any:
    """Run ``program`` in a fresh interpreter (the policy changes the whole process);
    what it printed, as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    return json.loads(out.stdout)


def test_loading_runs_young_collections_only_then_restores_the_thresholds() -> None:
    got = _child(LOADING_IN_A_CHILD)
    assert got["after"] == got["before"]
    assert got["inside"][0] == got["before"][0]  # the young threshold is left alone
    # Inside: young collections kept freeing cycles, and nothing older ran.
    assert got["during"] and set(got["during"]) == {0}
    # The oracle: the same growth with the thresholds restored runs older collections.
    assert {1, 2} & set(got["later"])


def test_the_command_line_and_serve_load_with_young_collections_only(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            make_config(tmp_path, (sim_printer("p1"),), port=port), tmp_path / "farm.toml"
        )
        out = subprocess.run(
            [sys.executable, "-c", COMMAND_LINE_IN_A_CHILD, str(config)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["code"] == 2  # the taken port: after the stack loaded, before any change
    first, second = got["blocks"]
    assert "printfarmd.cli" in first["imported"]  # the command line's own modules
    assert {"printfarmd.daemon", "quart_trio", "hypercorn.trio"} <= set(second["imported"])
    for block in (first, second):
        assert block["older"] == []
    assert second["young"] > 0
    # serve's first step kept what was loaded out of later walks (READY never came).
    assert got["frozen"] > 20_000
    # The installed `printfarmd` command goes the same way.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["printfarmd"] == "printfarmd.__main__:main"


def test_settle_freezes_what_start_up_built_and_collects_the_young_less_often() -> None:
    got = _child(SETTLE_IN_A_CHILD)
    # CPython's defaults are (700, 10, 10); the daemon's young threshold is 10,000.
    assert got["threshold"] == [10_000, 10, 10]
    assert got["enabled"] is True
    # Every object alive at READY, at least the 5,000 lists the child kept.
    assert got["frozen"] > 5_000
    # /metrics reads the count settle took (counting walks every frozen object).
    assert (got["before"], got["reported"]) == (0, got["counted"])
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
