"""The in-memory priority queue of QUEUED jobs.

Order is ``Job.sort_key`` = ``(-front, -priority, position)``, smaller first, with the
job id breaking ties so the order is total and deterministic.

Layout: one binary heap per requirement class (``routing.Requirements``) plus an
id -> entry map. A heap item is ``(sort_key, job_id, serial)``; it is live only while
the map still holds that job with that ``serial``, so remove/replace just forget the
entry and leave a stale item behind (lazy deletion). Stale items are dropped when they
surface at the top of a heap, and a heap is rebuilt when stale items outnumber live
ones, so memory stays O(n). Finding a printer's next job looks at the top of each
compatible class heap: O(C log n) for C classes, with class/printer compatibility
cached because both ``Requirements`` and ``Capabilities`` are hashable.

Pure and sync: no trio, no I/O. The scheduler alone owns an instance.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

import msgspec

from printfarmd.core.routing import Requirements, can_print, requirements_of
from printfarmd.models import Capabilities, Job

#: (sort_key, job_id, serial). The id makes the order total; the serial tells a live
#: item from a stale one left by an earlier push of the same job.
_Item = tuple[tuple[int, int, int], str, int]

#: The compatibility cache is cleared when it grows past this many (class, caps) pairs,
#: so a farm whose printers keep changing materials cannot grow it without bound.
_COMPAT_CACHE_LIMIT = 4096
#: Heaps smaller than this are never compacted: rebuilding them saves nothing.
_COMPACT_MIN = 16


class QueueStatistics(msgspec.Struct, frozen=True):
    """A snapshot of a queue's size. ``heap_items`` counts live and stale heap items."""

    jobs: int
    classes: int
    heap_items: int
    stale_items: int


class _Entry(msgspec.Struct):
    job: Job
    req: Requirements
    item: _Item


class _ClassHeap(msgspec.Struct):
    req: Requirements
    heap: list[_Item] = msgspec.field(default_factory=list)
    live: int = 0
    stale: int = 0


class JobQueue:
    """QUEUED jobs in dispatch order, findable by id and by printer capabilities.

    The queue does not look at ``Job.state``: the caller pushes only queued jobs. All
    single-job operations are O(log n) amortised (``peek_for``/``pop_for``: O(C log n),
    C = number of requirement classes); ``ordered``/iteration are O(n log n).
    """

    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        """A queue holding ``jobs`` (later duplicates of an id replace earlier ones).

        Bulk loading heapifies once per class: O(n), for rebuilding from the store.
        """
        self._entries: dict[str, _Entry] = {}
        self._classes: dict[Requirements, _ClassHeap] = {}
        self._compat: dict[tuple[Requirements, Capabilities], bool] = {}
        # Per printer capabilities: the compatible class heaps, valid while the set of
        # classes is unchanged (``_class_version``). Saves C cache lookups per dispatch.
        self._routes: dict[Capabilities, tuple[int, list[_ClassHeap]]] = {}
        self._class_version = 0
        self._serial = 0
        self._max_front = 0
        self._max_position = 0
        #: (queued_at, serial, job_id) with lazy deletion: the oldest queued job in O(1).
        self._ages: list[tuple[float, int, str]] = []
        for job in jobs:
            self._forget(job.id)
            self._add(job, heapify_later=True)
        for cls in self._classes.values():
            heapq.heapify(cls.heap)
            self._compact_if_needed(cls)
        heapq.heapify(self._ages)

    # ---------------------------------------------------------------- basic access

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def __iter__(self) -> Iterator[Job]:
        """Jobs in dispatch order (a snapshot: O(n log n))."""
        return iter(self.ordered())

    def get(self, job_id: str) -> Job | None:
        """The queued job with ``job_id``, or ``None``."""
        entry = self._entries.get(job_id)
        return None if entry is None else entry.job

    def ordered(self) -> list[Job]:
        """All queued jobs in dispatch order."""
        entries = sorted(self._entries.values(), key=lambda e: e.item)
        return [e.job for e in entries]

    @property
    def version(self) -> tuple[int, int]:
        """Changes whenever the queue's content may have changed (a cache key): every
        push bumps the serial, every removal shrinks the size."""
        return (self._serial, len(self._entries))

    def max_front(self) -> int:
        """The highest ``front`` of any job ever pushed (0 if none): a high-water mark.

        It does not drop when that job leaves, so a later ``jump`` still lands ahead of
        every earlier one.
        """
        return self._max_front

    def next_position(self) -> int:
        """Allocate a queue position for a new job: larger than any seen or allocated.

        Each call returns a new value, so N copies created before any is pushed still
        get N distinct, increasing positions (FIFO among equal priority).
        """
        self._max_position += 1
        return self._max_position

    def statistics(self) -> QueueStatistics:
        """Sizes of the internals (O(C)); stale items never exceed live ones for long."""
        return QueueStatistics(
            jobs=len(self._entries),
            classes=len(self._classes),
            heap_items=sum(len(c.heap) for c in self._classes.values()),
            stale_items=sum(c.stale for c in self._classes.values()),
        )

    # ---------------------------------------------------------------- mutation

    def push(self, job: Job) -> None:
        """Add ``job``, replacing any queued job with the same id. O(log n)."""
        self._forget(job.id)
        self._add(job, heapify_later=False)

    def remove(self, job_id: str) -> Job | None:
        """Remove and return the job with ``job_id``, or ``None`` if it is not queued."""
        entry = self._forget(job_id)
        return None if entry is None else entry.job

    def reprioritize(self, job_id: str, priority: int) -> Job:
        """Set the job's priority and return the updated job. Raises ``KeyError`` if absent.

        A jumped job keeps its ``front``, so it stays ahead of un-jumped jobs.
        """
        job = msgspec.structs.replace(self._entries[job_id].job, priority=priority)
        self.push(job)
        return job

    def jump(self, job_id: str) -> Job:
        """Put the job ahead of all others and return it. Raises ``KeyError`` if absent.

        Sets ``front = max_front() + 1``.
        """
        job = msgspec.structs.replace(self._entries[job_id].job, front=self._max_front + 1)
        self.push(job)
        return job

    # ---------------------------------------------------------------- dispatch

    def peek_for(self, caps: Capabilities) -> Job | None:
        """The first job in dispatch order a printer with ``caps`` can take, or ``None``."""
        found = self._first_for(caps)
        return None if found is None else self._entries[found[1][1]].job

    def pop_for(self, caps: Capabilities) -> Job | None:
        """Remove and return what ``peek_for(caps)`` would return."""
        found = self._first_for(caps)
        if found is None:
            return None
        cls, item = found
        # The item is its heap's live top: pop it outright rather than leave it stale.
        heapq.heappop(cls.heap)
        entry = self._entries.pop(item[1])
        cls.live -= 1
        if cls.live == 0:
            self._drop_class(cls.req)
        return entry.job

    def classes_for(self, caps: Capabilities) -> list[Requirements]:
        """The requirement classes a printer with ``caps`` can take (cached)."""
        return [cls.req for cls in self._compatible_classes(caps)]

    def iter_class(self, req: Requirements) -> Iterator[Job]:
        """The queued jobs of class ``req`` in dispatch order, lazily, without changing
        the queue: O(log n) per job taken (a walk of the heap with a small frontier)."""
        cls = self._classes.get(req)
        if cls is None:
            return
        heap = cls.heap
        if not heap:
            return
        frontier: list[tuple[_Item, int]] = [(heap[0], 0)]
        while frontier:
            item, index = heapq.heappop(frontier)
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
            if self._is_live(item):
                yield self._entries[item[1]].job

    def oldest_queued_at(self) -> float | None:
        """The earliest ``queued_at`` (or ``created_at``) of a queued job. O(1) amortised."""
        ages = self._ages
        while ages:
            at, serial, job_id = ages[0]
            entry = self._entries.get(job_id)
            if entry is not None and entry.item[2] == serial:
                return at
            heapq.heappop(ages)
        return None

    # ---------------------------------------------------------------- internals

    def _add(self, job: Job, *, heapify_later: bool) -> None:
        req = requirements_of(job)
        cls = self._classes.get(req)
        if cls is None:
            cls = self._classes[req] = _ClassHeap(req)
            self._class_version += 1
        self._serial += 1
        item: _Item = (job.sort_key, job.id, self._serial)
        # Entries share their class's Requirements value: one object per class, not per job.
        self._entries[job.id] = _Entry(job, cls.req, item)
        age = (job.queued_at if job.queued_at is not None else job.created_at, self._serial, job.id)
        if heapify_later:
            cls.heap.append(item)
            self._ages.append(age)
        else:
            heapq.heappush(cls.heap, item)
            heapq.heappush(self._ages, age)
            if len(self._ages) > 2 * len(self._entries) + _COMPACT_MIN:
                self._ages = [a for a in self._ages if self._age_live(a)]
                heapq.heapify(self._ages)
        cls.live += 1
        self._max_front = max(self._max_front, job.front)
        self._max_position = max(self._max_position, job.position)

    def _forget(self, job_id: str) -> _Entry | None:
        """Drop ``job_id`` from the map; its heap item goes stale."""
        entry = self._entries.pop(job_id, None)
        if entry is None:
            return None
        cls = self._classes[entry.req]
        cls.live -= 1
        if cls.live == 0:
            self._drop_class(entry.req)
        else:
            cls.stale += 1
            self._compact_if_needed(cls)
        return entry

    def _first_for(self, caps: Capabilities) -> tuple[_ClassHeap, _Item] | None:
        """The smallest live item among classes compatible with ``caps``, and its class."""
        best: _Item | None = None
        best_cls: _ClassHeap | None = None
        for cls in self._compatible_classes(caps):
            top = self._top(cls)
            if top is not None and (best is None or top < best):
                best, best_cls = top, cls
        if best is None or best_cls is None:
            return None
        return best_cls, best

    def _drop_class(self, req: Requirements) -> None:
        # No live items left: drop the class so dispatch never scans dead classes.
        del self._classes[req]
        self._class_version += 1

    def _age_live(self, age: tuple[float, int, str]) -> bool:
        entry = self._entries.get(age[2])
        return entry is not None and entry.item[2] == age[1]

    def _is_live(self, item: _Item) -> bool:
        entry = self._entries.get(item[1])
        return entry is not None and entry.item[2] == item[2]

    def _top(self, cls: _ClassHeap) -> _Item | None:
        """The smallest live item of ``cls``, discarding stale items above it."""
        heap = cls.heap
        while heap:
            top = heap[0]
            if self._is_live(top):
                return top
            heapq.heappop(heap)
            cls.stale -= 1
        return None

    def _compact_if_needed(self, cls: _ClassHeap) -> None:
        # Rebuilding costs O(size) and happens only after size/2 removals: amortised O(1).
        if cls.stale > len(cls.heap) // 2 and len(cls.heap) >= _COMPACT_MIN:
            cls.heap = [item for item in cls.heap if self._is_live(item)]
            heapq.heapify(cls.heap)
            cls.stale = 0

    def _compatible_classes(self, caps: Capabilities) -> list[_ClassHeap]:
        route = self._routes.get(caps)
        if route is not None and route[0] == self._class_version:
            return route[1]
        if len(self._routes) >= _COMPAT_CACHE_LIMIT:
            self._routes.clear()
        classes = [cls for req, cls in self._classes.items() if self._compatible(req, caps)]
        self._routes[caps] = (self._class_version, classes)
        return classes

    def _compatible(self, req: Requirements, caps: Capabilities) -> bool:
        key = (req, caps)
        known = self._compat.get(key)
        if known is None:
            if len(self._compat) >= _COMPAT_CACHE_LIMIT:
                self._compat.clear()
            known = self._compat[key] = can_print(caps, req)
        return known
