"""Counters for ``/metrics`` and their Prometheus text rendering (issue 8).

``FarmCounters`` is the one live object (the scheduler bumps it after each commit);
``render`` is pure: it turns counts into the Prometheus text exposition format 0.0.4.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping

import msgspec

from printfarmd.heap import frozen_objects
from printfarmd.models import JobState, PrinterState

#: Dispatch latency histogram buckets, seconds (queued -> handed to a printer).
LATENCY_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 14400, 86400)


class FarmCounters(msgspec.Struct):
    """Monotonic counters since start; not persisted (Prometheus handles resets)."""

    retries: int = 0
    watchdog_actions: int = 0
    dispatch_count: int = 0
    dispatch_sum: float = 0.0
    dispatch_buckets: list[int] = msgspec.field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))

    def observe_dispatch(self, seconds: float) -> None:
        """Record one job's wait in the queue (negative waits, from clock jumps, count 0)."""
        seconds = max(0.0, seconds)
        self.dispatch_count += 1
        self.dispatch_sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.dispatch_buckets[i] += 1


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class HeapCounts(msgspec.Struct, frozen=True):
    """The cyclic garbage collector's figures (issue 17: ``printfarmd.heap``)."""

    #: ``gc.get_stats()``: per generation, collections run and objects collected.
    generations: tuple[Mapping[str, int], ...] = ()
    #: Objects moved out of the collector's walk at READY (``heap.frozen_objects``).
    frozen: int = 0

    @classmethod
    def now(cls) -> HeapCounts:
        return cls(tuple(gc.get_stats()), frozen_objects())


def render(
    jobs_by_state: Mapping[str, int],
    printers_by_state: Mapping[str, int],
    queue_depth: int,
    counters: FarmCounters,
    heap: HeapCounts | None = None,
) -> str:
    """Prometheus text format; every known state is listed (0 if none), so series persist."""
    out: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")

    family("printfarmd_jobs", "gauge", "Jobs in the database by state.")
    for state in JobState:
        out.append(f'printfarmd_jobs{{state="{state.value}"}} {jobs_by_state.get(state.value, 0)}')
    family("printfarmd_printers", "gauge", "Printers by state.")
    for pstate in PrinterState:
        n = printers_by_state.get(pstate.value, 0)
        out.append(f'printfarmd_printers{{state="{pstate.value}"}} {n}')
    family("printfarmd_queue_depth", "gauge", "Jobs waiting in the queue for a printer.")
    out.append(f"printfarmd_queue_depth {queue_depth}")
    family(
        "printfarmd_dispatch_latency_seconds",
        "histogram",
        "Time from queued to handed to a printer.",
    )
    for bound, n in zip(LATENCY_BUCKETS, counters.dispatch_buckets, strict=True):
        out.append(f'printfarmd_dispatch_latency_seconds_bucket{{le="{_num(bound)}"}} {n}')
    out.append(f'printfarmd_dispatch_latency_seconds_bucket{{le="+Inf"}} {counters.dispatch_count}')
    total = counters.dispatch_sum if math.isfinite(counters.dispatch_sum) else 0.0
    out.append(f"printfarmd_dispatch_latency_seconds_sum {_num(total)}")
    out.append(f"printfarmd_dispatch_latency_seconds_count {counters.dispatch_count}")
    family("printfarmd_retries_total", "counter", "Failed jobs put back in the queue.")
    out.append(f"printfarmd_retries_total {counters.retries}")
    family("printfarmd_watchdog_actions_total", "counter", "Stuck jobs requeued or failed.")
    out.append(f"printfarmd_watchdog_actions_total {counters.watchdog_actions}")
    if heap is not None:
        # The names Prometheus' own Python client uses for these figures.
        for key, name, text in (
            ("collections", "python_gc_collections_total", "Collections, by generation."),
            ("collected", "python_gc_objects_collected_total", "Objects the collector freed."),
        ):
            family(name, "counter", text)
            for generation, stats in enumerate(heap.generations):
                out.append(f'{name}{{generation="{generation}"}} {stats.get(key, 0)}')
        family(
            "printfarmd_gc_frozen_objects",
            "gauge",
            "Objects start-up built, moved out of the collector's walk once ready.",
        )
        out.append(f"printfarmd_gc_frozen_objects {heap.frozen}")
    return "\n".join(out) + "\n"
