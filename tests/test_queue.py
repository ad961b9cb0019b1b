"""The priority queue: unit tests plus a stateful comparison against a sorted list."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from printfarmd.core import queue as queue_module
from printfarmd.core.queue import JobQueue, QueueStatistics
from printfarmd.core.routing import can_print, requirements_of
from printfarmd.models import Capabilities, Job, JobState

PLA = Capabilities(materials=("PLA",))
PETG = Capabilities(materials=("PETG",))
BOTH_06 = Capabilities(materials=("PETG", "PLA"), nozzle_diameter=0.6, tags=("enclosure",))
NOTHING = Capabilities(materials=())


def job(
    jid: str,
    *,
    position: int = 0,
    priority: int = 0,
    front: int = 0,
    material: str | None = None,
    **fields: Any,
) -> Job:
    return Job(
        id=jid,
        filename=f"{jid}.gcode",
        state=JobState.QUEUED,
        position=position,
        priority=priority,
        front=front,
        material=material,
        **fields,
    )


def ids(jobs: object) -> list[str]:
    return [j.id for j in jobs]  # type: ignore[attr-defined]


# ------------------------------------------------------------------ unit tests


def test_empty_queue() -> None:
    q = JobQueue()
    assert len(q) == 0
    assert list(q) == []
    assert q.ordered() == []
    assert q.peek_for(PLA) is None
    assert q.pop_for(PLA) is None
    assert q.remove("nope") is None
    assert q.get("nope") is None
    assert "nope" not in q
    assert q.max_front() == 0


def test_order_is_front_then_priority_then_position() -> None:
    q = JobQueue()
    q.push(job("low-early", position=1, priority=0))
    q.push(job("high-late", position=5, priority=10))
    q.push(job("high-early", position=2, priority=10))
    q.push(job("jumped-low", position=9, priority=-5, front=1))
    q.push(job("low-late", position=3, priority=0))
    expected = ["jumped-low", "high-early", "high-late", "low-early", "low-late"]
    assert ids(q.ordered()) == expected
    assert ids(q) == expected
    assert len(q) == 5
    assert "high-late" in q


def test_ties_are_broken_by_id() -> None:
    q = JobQueue([job("B", position=1), job("A", position=1)])
    assert ids(q.ordered()) == ["A", "B"]
    assert q.pop_for(NOTHING) == job("A", position=1)


def test_push_replaces_same_id() -> None:
    q = JobQueue()
    q.push(job("A", position=1, material="PLA"))
    q.push(job("B", position=2, material="PLA"))
    q.push(job("A", position=3, material="PETG"))
    assert len(q) == 2
    assert q.get("A") == job("A", position=3, material="PETG")
    # A moved class: PLA printers no longer see it, PETG printers do.
    assert ids([q.pop_for(PLA)]) == ["B"]
    assert q.pop_for(PLA) is None
    assert ids([q.pop_for(PETG)]) == ["A"]
    assert len(q) == 0


def test_remove_returns_job_and_forgets_it() -> None:
    a = job("A", position=1)
    q = JobQueue([a, job("B", position=2)])
    assert q.remove("A") == a
    assert q.remove("A") is None
    assert q.get("A") is None
    assert "A" not in q
    assert ids(q.ordered()) == ["B"]
    assert q.peek_for(NOTHING) == job("B", position=2)


def test_remove_then_push_again_does_not_duplicate() -> None:
    # A stale heap item with the very same sort key must not resurrect a second copy.
    a = job("A", position=1)
    q = JobQueue([a])
    q.remove("A")
    q.push(a)
    assert q.pop_for(NOTHING) == a
    assert q.pop_for(NOTHING) is None
    assert len(q) == 0


def test_peek_and_pop_for_respect_capabilities() -> None:
    q = JobQueue(
        [
            job("petg-high", position=1, priority=5, material="PETG"),
            job("pla", position=2, material="pla"),
            job("any", position=3),
            job("pla-06", position=4, material="PLA", nozzle_diameter=0.6),
            job("enclosed", position=5, material="PETG", required_tags=("enclosure",)),
        ]
    )
    assert q.peek_for(PLA) == q.get("pla")
    assert len(q) == 5  # peek does not remove
    assert q.peek_for(PETG) == q.get("petg-high")
    assert q.peek_for(NOTHING) == q.get("any")
    assert ids([q.pop_for(PLA), q.pop_for(PLA)]) == ["pla", "any"]
    # pla-06 needs a 0.6 nozzle; enclosed needs the tag: the plain PLA printer is done.
    assert q.pop_for(PLA) is None
    assert ids([q.pop_for(BOTH_06), q.pop_for(BOTH_06), q.pop_for(BOTH_06)]) == [
        "petg-high",
        "pla-06",
        "enclosed",
    ]
    assert q.pop_for(BOTH_06) is None
    assert len(q) == 0


def test_pop_for_compares_across_classes() -> None:
    # The best job sits in the class created last; every compatible class must be looked at.
    q = JobQueue()
    q.push(job("pla-later", position=5, material="PLA"))
    q.push(job("any-middle", position=3))
    q.push(job("pla-04-first", position=1, material="PLA", nozzle_diameter=0.4))
    assert ids([q.pop_for(PLA), q.pop_for(PLA), q.pop_for(PLA)]) == [
        "pla-04-first",
        "any-middle",
        "pla-later",
    ]


def test_reprioritize() -> None:
    q = JobQueue([job("A", position=1), job("B", position=2), job("C", position=3)])
    updated = q.reprioritize("C", 7)
    assert updated == job("C", position=3, priority=7)
    assert q.get("C") == updated
    assert ids(q.ordered()) == ["C", "A", "B"]
    q.reprioritize("C", -1)
    assert ids(q.ordered()) == ["A", "B", "C"]
    assert q.pop_for(NOTHING) == job("A", position=1)
    with pytest.raises(KeyError):
        q.reprioritize("missing", 1)


def test_reprioritize_keeps_a_jump() -> None:
    q = JobQueue([job("A", position=1, priority=50), job("B", position=2)])
    q.jump("B")
    q.reprioritize("B", -100)
    assert ids(q.ordered()) == ["B", "A"]


def test_jump_goes_in_front_of_everything() -> None:
    q = JobQueue(
        [
            job("A", position=1, priority=100),
            job("B", position=2, front=3),
            job("C", position=3),
        ]
    )
    assert q.max_front() == 3
    jumped = q.jump("C")
    assert jumped.front == 4
    assert q.get("C") == jumped
    assert q.max_front() == 4
    assert ids(q.ordered()) == ["C", "B", "A"]
    # The newest jump wins over earlier jumps.
    assert q.jump("A").front == 5
    assert ids(q.ordered()) == ["A", "C", "B"]
    with pytest.raises(KeyError):
        q.jump("missing")


def test_jump_after_the_front_job_left_still_goes_first() -> None:
    q = JobQueue([job("A", position=1), job("B", position=2), job("C", position=3)])
    q.jump("A")
    q.jump("B")
    q.remove("B")
    assert q.jump("C").front == 3  # max_front is a high-water mark
    assert ids(q.ordered()) == ["C", "A"]


def test_next_position_allocates_increasing_values() -> None:
    q = JobQueue()
    first = q.next_position()
    second = q.next_position()
    assert second > first >= 1
    q.push(job("A", position=500))
    assert q.next_position() == 501
    q.remove("A")
    assert q.next_position() == 502  # never reused


def test_bulk_constructor_matches_pushes() -> None:
    jobs = [
        job(f"J{i:03}", position=i, priority=i % 3, material=("PLA", "PETG", None)[i % 3])
        for i in range(50)
    ]
    jobs.append(job("J007", position=999))  # a later duplicate replaces the earlier
    pushed = JobQueue()
    for j in jobs:
        pushed.push(j)
    bulk = JobQueue(jobs)
    assert bulk.ordered() == pushed.ordered()
    assert len(bulk) == 50
    assert bulk.get("J007") == job("J007", position=999)
    assert ids([bulk.pop_for(PETG)]) == ids([pushed.pop_for(PETG)])


def test_stale_items_are_compacted() -> None:
    q = JobQueue(job(f"J{i:04}", position=i, material="PLA") for i in range(1000))
    for i in range(1, 1000):
        q.remove(f"J{i:04}")
    stats = q.statistics()
    assert stats.jobs == 1
    assert stats.classes == 1
    # Lazy deletion never lets stale items outnumber live ones by more than a small heap.
    assert stats.heap_items <= 2 * stats.jobs + 16
    assert q.pop_for(PLA) == job("J0000", position=0, material="PLA")


def test_repeated_reprioritize_keeps_memory_bounded() -> None:
    q = JobQueue(job(f"J{i}", position=i) for i in range(100))
    for round_ in range(50):
        for i in range(100):
            q.reprioritize(f"J{i}", round_)
    stats = q.statistics()
    assert stats.jobs == 100
    assert stats.heap_items <= 2 * stats.jobs + 16
    assert stats.stale_items == stats.heap_items - stats.jobs


def test_empty_classes_are_dropped() -> None:
    q = JobQueue([job("A", material="PLA"), job("B", material="PETG")])
    assert q.statistics() == QueueStatistics(jobs=2, classes=2, heap_items=2, stale_items=0)
    q.remove("A")
    assert q.statistics() == QueueStatistics(jobs=1, classes=1, heap_items=1, stale_items=0)


def test_compatibility_is_cached_per_class_and_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Capabilities, object]] = []

    def counting_can_print(caps: Capabilities, req: object) -> bool:
        calls.append((caps, req))
        return can_print(caps, req)  # type: ignore[arg-type]

    monkeypatch.setattr(queue_module, "can_print", counting_can_print)
    q = JobQueue(
        job(f"J{i}", position=i, material=("PLA", "PETG", "ABS")[i % 3]) for i in range(30)
    )
    for _ in range(5):
        assert q.peek_for(PLA) is not None
    assert len(calls) == 3  # one per class, not per job or per call
    q.pop_for(Capabilities(materials=("PLA",)))  # an equal caps value hits the cache too
    assert len(calls) == 3
    q.peek_for(PETG)
    assert len(calls) == 6


# ------------------------------------------------------------------ stateful comparison

MATERIALS = ("PLA", "pla", "PETG", "ABS", None)
CAPS = (
    PLA,
    PETG,
    BOTH_06,
    NOTHING,
    Capabilities(materials=("ABS", "PLA"), tags=("enclosure",)),
)


def _model_key(j: Job) -> tuple[tuple[int, int, int], str]:
    return (j.sort_key, j.id)


class QueueMachine(RuleBasedStateMachine):
    """JobQueue against a dict sorted on every query (the obviously right version)."""

    job_ids = Bundle("job_ids")

    def __init__(self) -> None:
        super().__init__()
        self.queue = JobQueue()
        self.model: dict[str, Job] = {}
        self.max_front = 0
        self.counter = 0

    def model_order(self) -> list[Job]:
        return sorted(self.model.values(), key=_model_key)

    def model_first_for(self, caps: Capabilities) -> Job | None:
        for j in self.model_order():
            if can_print(caps, requirements_of(j)):
                return j
        return None

    def model_push(self, j: Job) -> None:
        self.model[j.id] = j
        self.max_front = max(self.max_front, j.front)

    @initialize(
        target=job_ids,
        specs=st.lists(
            st.tuples(st.integers(-3, 3), st.sampled_from(MATERIALS), st.booleans()),
            max_size=20,
        ),
    )
    def bulk_load(self, specs: list[tuple[int, str | None, bool]]) -> MultipleResults[str]:
        jobs = []
        for priority, material, enclosed in specs:
            self.counter += 1
            jobs.append(
                job(
                    f"J{self.counter:03}",
                    position=self.counter,
                    priority=priority,
                    material=material,
                    required_tags=("enclosure",) if enclosed else (),
                )
            )
        self.queue = JobQueue(jobs)
        for j in jobs:
            self.model_push(j)
        # "J000" is never queued: it exercises the absent-id paths of every rule.
        return multiple("J000", *(j.id for j in jobs))

    @rule(
        target=job_ids,
        priority=st.integers(-3, 3),
        material=st.sampled_from(MATERIALS),
        nozzle=st.sampled_from((None, 0.4, 0.6)),
        enclosed=st.booleans(),
        same_position=st.booleans(),
    )
    def push_new(
        self,
        priority: int,
        material: str | None,
        nozzle: float | None,
        enclosed: bool,
        same_position: bool,
    ) -> str:
        self.counter += 1
        # Sometimes reuse a position so ties fall through to the id.
        position = 1 if same_position else self.queue.next_position()
        j = job(
            f"J{self.counter:03}",
            position=position,
            priority=priority,
            material=material,
            nozzle_diameter=nozzle,
            required_tags=("enclosure",) if enclosed else (),
        )
        self.queue.push(j)
        self.model_push(j)
        return j.id

    @rule(jid=job_ids, priority=st.integers(-3, 3), material=st.sampled_from(MATERIALS))
    def push_replacing(self, jid: str, priority: int, material: str | None) -> None:
        old = self.model.get(jid)
        j = job(jid, position=old.position if old else 7, priority=priority, material=material)
        self.queue.push(j)
        self.model_push(j)

    @rule(jid=job_ids)
    def remove(self, jid: str) -> None:
        assert self.queue.remove(jid) == self.model.pop(jid, None)

    @rule(jid=job_ids, priority=st.integers(-5, 5))
    def reprioritize(self, jid: str, priority: int) -> None:
        if jid not in self.model:
            with pytest.raises(KeyError):
                self.queue.reprioritize(jid, priority)
            return
        expected = msgspec.structs.replace(self.model[jid], priority=priority)
        assert self.queue.reprioritize(jid, priority) == expected
        self.model_push(expected)

    @rule(jid=job_ids)
    def jump(self, jid: str) -> None:
        if jid not in self.model:
            with pytest.raises(KeyError):
                self.queue.jump(jid)
            return
        expected = msgspec.structs.replace(self.model[jid], front=self.max_front + 1)
        assert self.queue.jump(jid) == expected
        self.model_push(expected)
        assert self.queue.ordered()[0] == expected

    @rule(caps=st.sampled_from(CAPS))
    def peek_for(self, caps: Capabilities) -> None:
        assert self.queue.peek_for(caps) == self.model_first_for(caps)

    @rule(caps=st.sampled_from(CAPS))
    def pop_for(self, caps: Capabilities) -> None:
        expected = self.model_first_for(caps)
        assert self.queue.pop_for(caps) == expected
        if expected is not None:
            del self.model[expected.id]

    @invariant()
    def same_order(self) -> None:
        assert self.queue.ordered() == self.model_order()
        assert len(self.queue) == len(self.model)
        assert self.queue.max_front() == self.max_front

    @invariant()
    def same_lookup(self) -> None:
        for jid, j in self.model.items():
            assert jid in self.queue
            assert self.queue.get(jid) == j

    @invariant()
    def memory_bounded(self) -> None:
        stats = self.queue.statistics()
        # Small heaps are not compacted; each class may hold up to 15 stale items.
        assert stats.heap_items <= 2 * stats.jobs + 16 * stats.classes
        assert stats.stale_items == stats.heap_items - stats.jobs


QueueMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_queue_matches_model = QueueMachine.TestCase
