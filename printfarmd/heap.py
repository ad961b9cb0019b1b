"""How the daemon's process uses its heap (issue 17): when Python's cyclic garbage
collector runs, and what start-up leaves behind.

CPython's defaults suit short scripts. A farm daemon is the opposite: start-up builds
everything it will keep (modules, the farm core's classes, the config, the app's routes,
the live jobs), and then every SSE and websocket delivery allocates a little that lives
only while its write is in flight. With the defaults (a young collection every 700 net
allocations) one event fanned out to 500 streams ran dozens of young collections; each
promoted the in-flight writes of that moment to the older generations, and those soon
triggered a full collection walking every object of the process: ~75 ms with the event
loop stopped, every ~10 events (``bench/bench_sse.py``: delivery p99 ~160 ms; ~45 ms with
this policy). ``settle`` runs once the daemon is ready:

- ``gc.freeze()``: everything alive now (start-up's objects) is moved out of every later
  collection's walk; it was built to be kept;
- the collector then runs with ``THRESHOLDS``: a young collection every 10,000 net
  allocations, so a burst of deliveries is collected once, after it;
- glibc's ``malloc_trim`` gives the pages start-up freed back to the system.

Only the cyclic collector is tuned: reference counting still frees everything else at
once, and cycles are still collected, in larger batches. While the modules and the
config load (``loading``: the command line's imports, then ``serve``'s) only young
collections run, and ``keep_loaded`` freezes what they built: the middle and full ones
would walk a heap that only grows, again and again (``bench_startup.py --collector``).
Pausing the collector altogether saved as much but left ~2.4 MB more resident (the cycles
loading leaves, freed late, interleaved with what it keeps); young collections free most
of them at once.
``limit_malloc_arenas`` caps glibc's malloc arenas at the very start of ``serve``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from collections.abc import Iterator

#: ``gc.set_threshold`` once settled: (young, middle, old). CPython's are (700, 10, 10).
THRESHOLDS = (10_000, 10, 10)


#: The older generations' thresholds while modules load: never reached.
LOADING_NEVER = 2**31 - 1


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Load modules (and the config) with young collections only; the thresholds are
    restored on exit.

    Importing the daemon builds ~70,000 tracked objects that it keeps, and with CPython's
    thresholds the growing heap triggers middle and full collections on the way, each
    walking much of what was built so far. Young collections still run (every 700 net
    allocations), so most cycles that loading leaves, such as the classes attrs discards
    when it builds slotted ones, are freed at once. What survives waits in the middle
    generation: ``keep_loaded`` right after the block takes it out of every later walk.
    """
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, LOADING_NEVER, LOADING_NEVER)
    try:
        yield
    finally:
        gc.set_threshold(young, middle, old)


def keep_loaded() -> None:
    """``serve``'s first step, right after ``loading``: what loading built is kept for good,
    out of every later collection's walk (``gc.freeze``). Not counted: counting the
    frozen objects walks them all (~5 ms for ~60,000), on the way to the first answer.

    Without it the first middle collection would walk all of it once, and a full one
    soon after: that walk costs what ``loading`` saved. The objects of the cycles that
    outlived a young collection inside the block (~1,300, ~0.3 MB with the demo farm) are
    kept with the rest; collecting them first would cost the very walk this avoids.
    """
    gc.freeze()


#: The objects ``settle`` froze (0 before it ran): ``/metrics`` reads it here, since
#: ``gc.get_freeze_count()`` walks every frozen object on each call.
_frozen_at_ready = 0


def settle() -> int:
    """Start-up is over: freeze what is alive, tune the collector, give freed
    pages back. Returns the number of objects frozen (``frozen_objects`` from now on).
    Not a checkpoint."""
    global _frozen_at_ready
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    trim_malloc()
    _frozen_at_ready = gc.get_freeze_count()
    return _frozen_at_ready


def frozen_objects() -> int:
    """The objects moved out of the collector's walk at READY (0 before ``settle``)."""
    return _frozen_at_ready


def trim_malloc() -> bool:
    """glibc's ``malloc_trim(0)``: free heap pages go back to the system. False where
    there is no glibc (nothing to do there)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


#: glibc's ``M_ARENA_MAX`` (malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX`` would). Each worker thread that
    SQLite and file checks run on otherwise gets an arena of its own, and the daemon's
    RSS creeps up by tens of MB over a long run although the Python heap stays flat
    (``bench/bench_memory.py``). Returns whether it applied (glibc only)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False  # the operator chose
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
