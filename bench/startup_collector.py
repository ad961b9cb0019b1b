"""Child of ``bench_startup.py --collector``: the cyclic collector's share of start-up.

Usage: ``python bench/startup_collector.py {policy|defaults} CONFIG PORT``

Runs the real command line (``printfarmd serve --config CONFIG``, through
``printfarmd.__main__.main`` as the installed script does) with a ``gc.callbacks`` probe
installed first, and prints one JSON object the moment ``GET /api/health`` on ``PORT``
first answers ``200 {"status": "ok"}``: the time spent in collections until then, by
generation, and their counts. ``defaults`` replaces ``heap.loading`` and
``heap.keep_loaded`` by no-ops first (CPython's thresholds until READY: the daemon before
issue 17's loading policy), so both are measured in one run.
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import json
import os
import sys
import threading
import time
from typing import Any

T0 = time.perf_counter()
SPENT = [0.0, 0.0, 0.0]
COUNT = [0, 0, 0]
_started = [0.0]


def _probe(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        generation = info["generation"]
        SPENT[generation] += time.perf_counter() - _started[0]
        COUNT[generation] += 1


def _report_when_ready(port: int) -> None:
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/api/health")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status == 200 and b'"ok"' in body:
                out = {
                    "to_200_ms": (time.perf_counter() - T0) * 1000,
                    "gc_ms": [s * 1000 for s in SPENT],
                    "collections": COUNT,
                }
                print(json.dumps(out), flush=True)
                os._exit(0)
        except OSError:
            pass
        time.sleep(0.005)


def main() -> None:
    mode, config, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    gc.callbacks.append(_probe)
    from printfarmd import heap

    if mode == "defaults":
        heap.loading = contextlib.nullcontext  # type: ignore[assignment]
        heap.keep_loaded = lambda: 0
    elif mode != "policy":
        raise SystemExit(f"unknown mode {mode!r}")
    threading.Thread(target=_report_when_ready, args=(port,), daemon=True).start()
    sys.argv = ["printfarmd", "serve", "--config", config]
    from printfarmd.__main__ import main as printfarmd_main

    printfarmd_main()
    raise SystemExit("the daemon stopped before it answered 200")


if __name__ == "__main__":
    main()
