"""Benchmark: the farm's memory after 100,000 finished jobs, against the same farm empty,
measured in one run.

Usage: ``.venv/bin/python bench/bench_memory.py [--jobs 100000] [--printers 20] [--json]``

One process runs the real owner on a real store (a temp SQLite file, ``synchronous =
NORMAL`` to keep the run short: durability is not what is measured) with ``--printers``
printers that print instantly (each start is followed, a scheduling round later, by
"finished"), auto-clear with no cooldown, so every job goes created -> ... -> ready and
leaves memory. Jobs are submitted in waves of 500 (the owner's group commit) until
``--jobs`` have finished.

Figures: the process's RSS (``VmRSS``) and the Python heap (``tracemalloc``) with the farm
started and empty, after a 1,000-job warm-up, and after ``--jobs`` finished jobs; the
number of jobs the owner still holds. The ratio that matters is RSS after the run / RSS
after the warm-up (the warm-up pays for what any working farm allocates once: caches,
SQLite pages, thread stacks).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, table

from printfarmd.config import (
    Config,
    PrinterConfig,
    SchedulerConfig,
    ServerConfig,
    StorageConfig,
    Synchronous,
)
from printfarmd.core.farm.inputs import JobRequest
from printfarmd.drivers.base import DriverEvent, JobFinished, JobSpec, StatusReport
from printfarmd.heap import limit_malloc_arenas
from printfarmd.models import PrinterState
from printfarmd.services.bus import Bus
from printfarmd.services.owner import Owner
from printfarmd.store import open_store

REPO = Path(__file__).resolve().parent.parent
WAVE = 500


@attrs.define(eq=False)
class InstantPrinter:
    """Prints whatever it is given at once."""

    printer_id: str
    events: trio.MemorySendChannel[DriverEvent] | None = None
    nursery: trio.Nursery | None = None

    async def run(
        self,
        events: trio.MemorySendChannel[DriverEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.events = events
        await events.send(StatusReport(self.printer_id, PrinterState.IDLE))
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def start_job(self, job: JobSpec) -> None:
        assert self.events is not None and self.nursery is not None
        self.events.send_nowait(StatusReport(self.printer_id, PrinterState.PRINTING, job.job_id))
        self.nursery.start_soon(self._finish, job.job_id)

    async def _finish(self, job_id: str) -> None:
        await trio.lowlevel.checkpoint()
        assert self.events is not None
        self.events.send_nowait(JobFinished(self.printer_id, job_id))
        self.events.send_nowait(StatusReport(self.printer_id, PrinterState.IDLE))

    async def status(self) -> StatusReport:
        return StatusReport(self.printer_id, PrinterState.IDLE)

    async def cancel_job(self, job_id: str) -> None:
        pass

    async def pause_job(self, job_id: str) -> None:
        pass

    async def resume_job(self, job_id: str) -> None:
        pass

    async def run_gcode(self, script: str) -> None:
        pass

    async def snapshot(self) -> bytes | None:
        return None


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def heap_kb() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] // 1024


async def run(jobs: int, printers: int, folder: Path, progress: int = 0) -> dict[str, Any]:
    cfg = Config(
        server=ServerConfig(host="127.0.0.1", port=0, api_key="bench-key-0123456789"),
        storage=StorageConfig(
            data_dir=str(folder / "data"),
            gcodes_dir=str(REPO / "demo" / "gcodes"),
            synchronous=Synchronous.NORMAL,
            backup_interval=0.0,
        ),
        scheduler=SchedulerConfig(cooldown_seconds=0.0),
        printers=tuple(
            PrinterConfig(id=f"p{k:03d}", materials=("PLA", "PETG"), auto_clear=True)
            for k in range(printers)
        ),
        base_dir=folder,
    )
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    drivers = {p.id: InstantPrinter(p.id) for p in cfg.printers}
    out: dict[str, Any] = {"printers": printers, "jobs": jobs}
    async with open_store(cfg.data_path / "printfarmd.db", "NORMAL") as store:
        owner = Owner(config=cfg, store=store, bus=Bus(), drivers=drivers)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(owner.run)
            await owner.running.wait()
            out["empty"] = {"rss_kb": rss_kb(), "heap_kb": heap_kb()}
            done = 0
            t0 = time.perf_counter()
            checkpoints = {1_000: "warm", jobs: "after"}
            while done < jobs:
                n = min(WAVE, jobs - done)
                await owner.submit(JobRequest(filename="benchy_pla.gcode", copies=n))
                while owner.jobs:  # noqa: ASYNC110 - every job of the wave left memory
                    await trio.sleep(0.01)
                done += n
                if progress and done % progress == 0:
                    wal = cfg.data_path / "printfarmd.db-wal"
                    print(
                        f"  {done:>7,} jobs: RSS {rss_kb() / 1024:.1f} MB, WAL "
                        f"{(wal.stat().st_size if wal.exists() else 0) / 1e6:.1f} MB",
                        flush=True,
                    )
                if done in checkpoints:
                    out[checkpoints[done]] = {
                        "rss_kb": rss_kb(),
                        "heap_kb": heap_kb(),
                        "live_jobs": len(owner.jobs),
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
            out["stored_jobs"] = (await store.list_jobs(limit=1))[1]
            out["ready"] = (await store.count_jobs_by_state()).get("ready", 0)
            nursery.cancel_scope.cancel()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--printers", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--progress", type=int, default=0, help="print RSS every N jobs")
    args = parser.parse_args(argv)
    if args.jobs % WAVE or args.jobs < 1_000:
        raise SystemExit(f"--jobs must be a multiple of {WAVE}, at least 1000")
    limit_malloc_arenas()  # as printfarmd serve does at start
    tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        result = trio.run(run, args.jobs, args.printers, Path(tmp), args.progress)
    result["machine"] = machine()
    w, a, e = result["warm"], result["after"], result["empty"]
    result["rss_after_vs_warm"] = a["rss_kb"] / w["rss_kb"]
    result["heap_after_vs_warm"] = a["heap_kb"] / w["heap_kb"]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['jobs']:,} jobs printed by {result['printers']} instant printers through the "
        f"real owner and store; {result['stored_jobs']:,} jobs stored, {result['ready']:,} ready"
    )
    rows = [
        ["farm started, empty", f"{e['rss_kb'] / 1024:.1f}", f"{e['heap_kb'] / 1024:.1f}", "", ""],
        [
            "after 1,000 finished (warm-up)",
            f"{w['rss_kb'] / 1024:.1f}",
            f"{w['heap_kb'] / 1024:.1f}",
            w["live_jobs"],
            w["seconds"],
        ],
        [
            f"after {result['jobs']:,} finished",
            f"{a['rss_kb'] / 1024:.1f}",
            f"{a['heap_kb'] / 1024:.1f}",
            a["live_jobs"],
            a["seconds"],
        ],
    ]
    print(table(["point", "RSS MB", "Python heap MB", "jobs in memory", "s"], rows))
    print(
        f"RSS after / after warm-up: {result['rss_after_vs_warm']:.3f}; "
        f"Python heap after / after warm-up: {result['heap_after_vs_warm']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
