"""What a started process holds, by package: ``tracemalloc`` after it is up and idle.

Usage (``bench_startup.py --memory`` runs it): ``python -X tracemalloc=25
bench/startup_memory.py demo CONFIG IDLE`` (the daemon on ``CONFIG``) or ``... bare PORT
IDLE`` (the bare quart-trio + hypercorn app). Prints one JSON object: traced KiB by
package, and the largest allocation sites of printfarmd's own files.

Each traced block is charged to the innermost frame that is not import machinery: for
module code and constants that is the ``import`` statement that loaded them, so a package
imported by printfarmd is charged to the printfarmd line that imported it (read both
tables). tracemalloc sees Python's allocator only: C libraries' own memory (SQLite's page
cache, OpenSSL) is in the RSS figures of ``bench_startup.py``, not here.
"""

from __future__ import annotations

import collections
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _package(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/printfarmd/" in filename:
        return "printfarmd"
    if filename.startswith("<"):
        return filename
    return "stdlib"


def report() -> dict[str, Any]:
    snapshot = tracemalloc.take_snapshot()
    by_package: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for trace in snapshot.traces:
        # tracemalloc lists the most recent frame first.
        site = next(
            (f for f in trace.traceback if not f.filename.startswith("<frozen")),
            trace.traceback[0],
        )
        by_package[_package(site.filename)] += trace.size
        if "/printfarmd/" in site.filename:
            rel = site.filename.split("/printfarmd/", 1)[1]
            own[f"printfarmd/{rel}:{site.lineno}"] += trace.size
    return {
        "traced_kib": round(sum(by_package.values()) / 1024, 1),
        "by_package_kib": {k: round(v / 1024, 1) for k, v in by_package.most_common(25)},
        "printfarmd_sites_kib": {k: round(v / 1024, 1) for k, v in own.most_common(25)},
    }


async def run_demo(config_path: str, idle: float) -> dict[str, Any]:
    from printfarmd.config import load_config
    from printfarmd.daemon import run

    config = load_config(Path(config_path))
    stop = trio.Event()
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        running = await nursery.start(
            lambda task_status: run(config, stop=stop, task_status=task_status)
        )
        with trio.fail_after(60):
            while not running.services.owner.ready:  # noqa: ASYNC110 - a bench
                await trio.sleep(0.01)
        await trio.sleep(idle)
        out = report()
        stop.set()
    return out


async def run_bare(port: int, idle: float) -> dict[str, Any]:
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart_trio import QuartTrio

    app = QuartTrio("bare")

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve(app, config, task_status=task_status))
        await trio.sleep(idle)
        out = report()
        nursery.cancel_scope.cancel()
    return out


def main() -> None:
    kind, arg, idle = sys.argv[1], sys.argv[2], float(sys.argv[3])
    runner = {"demo": lambda: trio.run(run_demo, arg, idle)}.get(
        kind, lambda: trio.run(run_bare, int(arg), idle)
    )
    print(json.dumps(runner()))


if __name__ == "__main__":
    main()
