"""The job state machine (``core/jobs.py``) and the retry rules (``core/retry.py``).

Pure, sync tests: every (state, event) pair of the table, graph properties, a hypothesis
property over random event sequences, the per-state stamps, and the whole default retry
schedule walked with explicit ``now`` values.
"""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from printfarmd.core.jobs import TRANSITIONS, next_state, transition
from printfarmd.core.retry import RetryPolicy, fail, retry, will_retry
from printfarmd.errors import Conflict, InvalidTransition
from printfarmd.models import TERMINAL_STATES, Job, JobEvent, JobState

S = JobState
E = JobEvent
T0 = 1_700_000_000.0

ALL_PAIRS = list(itertools.product(JobState, JobEvent))


def make_job(state: JobState = S.CREATED, **fields: object) -> Job:
    return Job(
        id="0123456789ABCDEF",
        filename="a.gcode",
        state=state,
        created_at=T0,
        updated_at=T0,
        **fields,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- the table, pair by pair


def test_pairs_cover_whole_product() -> None:
    assert len(ALL_PAIRS) == 100
    assert len(JobState) == 10
    assert len(JobEvent) == 10
    # The table only speaks about real states and events.
    for (state, event), target in TRANSITIONS.items():
        assert isinstance(state, JobState)
        assert isinstance(event, JobEvent)
        assert isinstance(target, JobState)


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=lambda v: str(v))
def test_every_state_event_pair(state: JobState, event: JobEvent) -> None:
    job = make_job(state, printer_id="p1", progress=42.0)
    before = msgspec.structs.asdict(job)
    now = T0 + 123.5
    if (state, event) in TRANSITIONS:
        moved = transition(job, event, now)
        assert moved.state is TRANSITIONS[(state, event)]
        assert moved.updated_at == now
        assert moved.id == job.id
        assert next_state(state, event) is TRANSITIONS[(state, event)]
    else:
        assert next_state(state, event) is None
        with pytest.raises(InvalidTransition) as info:
            transition(job, event, now)
        err = info.value
        assert isinstance(err, Conflict)
        assert err.status == 409
        assert err.code == "invalid_transition"
        assert err.job_id == job.id
        assert err.state == state.value
        assert err.event == event.value
    # Pure either way: the input job is untouched.
    assert msgspec.structs.asdict(job) == before


# ---------------------------------------------------------------- graph properties


def test_terminal_states_have_no_outgoing_transitions() -> None:
    assert frozenset({S.SHIPPED, S.CANCELLED}) == TERMINAL_STATES
    for state in TERMINAL_STATES:
        outgoing = [ev for ev in JobEvent if (state, ev) in TRANSITIONS]
        assert outgoing == [], f"{state} is terminal but has {outgoing}"


@pytest.mark.parametrize("state", sorted(set(JobState) - TERMINAL_STATES))
def test_every_non_terminal_state_can_be_cancelled(state: JobState) -> None:
    assert TRANSITIONS[(state, E.CANCEL)] is S.CANCELLED
    moved = transition(make_job(state), E.CANCEL, T0 + 1)
    assert moved.state is S.CANCELLED


def test_every_non_terminal_state_has_a_way_out() -> None:
    for state in set(JobState) - TERMINAL_STATES:
        assert any((state, ev) in TRANSITIONS for ev in JobEvent), state


def test_every_state_reachable_from_created() -> None:
    seen = {S.CREATED}
    frontier = [S.CREATED]
    while frontier:
        state = frontier.pop()
        for ev in JobEvent:
            target = next_state(state, ev)
            if target is not None and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(JobState)


def test_happy_path_walk() -> None:
    job = make_job()
    path = [
        (E.VALIDATE, S.VALIDATED),
        (E.SLICE, S.SLICED),
        (E.ENQUEUE, S.QUEUED),
        (E.START, S.PRINTING),
        (E.FINISH, S.POST_PROCESS),
        (E.CLEAR, S.READY),
        (E.SHIP, S.SHIPPED),
    ]
    for i, (event, expected) in enumerate(path, start=1):
        job = transition(job, event, T0 + i)
        assert job.state is expected
        assert job.updated_at == T0 + i


# ---------------------------------------------------------------- hypothesis property

TARGETS = frozenset(TRANSITIONS.values()) | {S.CREATED}


@given(
    events=st.lists(st.sampled_from(list(JobEvent)), max_size=40),
    start=st.floats(min_value=0, max_value=2e9, allow_nan=False),
)
def test_random_event_sequences_stay_in_table(events: list[JobEvent], start: float) -> None:
    job = make_job()
    now = start
    for event in events:
        now += 1.0
        snapshot = msgspec.structs.asdict(job)
        expected = next_state(job.state, event)
        if expected is None:
            with pytest.raises(InvalidTransition):
                transition(job, event, now)
            moved = job
        else:
            moved = transition(job, event, now)
            assert moved.state is expected
            assert moved.updated_at == now
        # transition is pure: the job it was handed is never changed.
        assert msgspec.structs.asdict(job) == snapshot
        assert moved.state in TARGETS
        job = moved


@given(
    state=st.sampled_from(list(JobState)),
    event=st.sampled_from(list(JobEvent)),
    printer=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
    progress=st.floats(min_value=0, max_value=100),
    now=st.floats(min_value=0, max_value=2e9, allow_nan=False),
)
def test_transition_is_pure(
    state: JobState, event: JobEvent, printer: str | None, progress: float, now: float
) -> None:
    job = make_job(state, printer_id=printer, progress=progress, retry_at=T0 + 5)
    snapshot = msgspec.structs.asdict(job)
    try:
        moved = transition(job, event, now)
    except InvalidTransition:
        assert (state, event) not in TRANSITIONS
    else:
        assert moved is not job
        assert moved.state is TRANSITIONS[(state, event)]
    assert msgspec.structs.asdict(job) == snapshot


# ---------------------------------------------------------------- per-state stamps


def test_queued_stamps_and_clears() -> None:
    job = make_job(
        S.FAILED,
        printer_id="p1",
        progress=57.0,
        retry_at=T0 + 60,
        queued_at=T0 - 100,
    )
    moved = transition(job, E.RETRY, T0 + 60)
    assert moved.state is S.QUEUED
    assert moved.queued_at == T0 + 60
    assert moved.printer_id is None
    assert moved.progress == 0.0
    assert moved.retry_at is None

    fresh = transition(make_job(S.SLICED, progress=3.0), E.ENQUEUE, T0 + 7)
    assert fresh.queued_at == T0 + 7
    assert fresh.progress == 0.0


def test_printing_sets_started_at() -> None:
    job = make_job(S.QUEUED, queued_at=T0)
    moved = transition(job, E.START, T0 + 10, printer_id="p2")
    assert moved.state is S.PRINTING
    assert moved.started_at == T0 + 10
    assert moved.printer_id == "p2"  # extra changes are applied
    assert moved.progress == 0.0
    assert moved.finished_at is None


def test_post_process_sets_progress_100() -> None:
    job = make_job(S.PRINTING, printer_id="p1", progress=97.5, eta=T0 + 30, started_at=T0)
    moved = transition(job, E.FINISH, T0 + 20)
    assert moved.state is S.POST_PROCESS
    assert moved.progress == 100.0
    assert moved.eta is None
    assert moved.printer_id == "p1"  # still occupies the printer
    assert moved.finished_at is None


@pytest.mark.parametrize(
    ("state", "event", "target"),
    [
        (S.POST_PROCESS, E.CLEAR, S.READY),
        (S.READY, E.SHIP, S.SHIPPED),
        (S.QUEUED, E.CANCEL, S.CANCELLED),
        (S.CREATED, E.CANCEL, S.CANCELLED),
    ],
)
def test_finished_states_set_finished_at(
    state: JobState, event: JobEvent, target: JobState
) -> None:
    moved = transition(make_job(state), event, T0 + 99)
    assert moved.state is target
    assert moved.finished_at == T0 + 99


def test_finished_at_kept_once_set() -> None:
    ready = transition(make_job(S.POST_PROCESS), E.CLEAR, T0 + 10)
    shipped = transition(ready, E.SHIP, T0 + 500)
    assert shipped.finished_at == T0 + 10
    assert shipped.updated_at == T0 + 500


def test_non_finishing_states_leave_finished_at_unset() -> None:
    for (state, event), target in TRANSITIONS.items():
        if target in (S.READY, S.SHIPPED, S.CANCELLED):
            continue
        moved = transition(make_job(state), event, T0 + 1)
        assert moved.finished_at is None, (state, event)


# ---------------------------------------------------------------- retry policy

MIN = 60.0


def test_default_policy() -> None:
    policy = RetryPolicy()
    assert policy.max_retries == 3
    assert policy.delay(1) == 1 * MIN
    assert policy.delay(2) == 5 * MIN
    assert policy.delay(3) == 25 * MIN
    # The last value repeats.
    assert policy.delay(4) == 25 * MIN
    assert policy.delay(10) == 25 * MIN


def test_custom_policy_delays() -> None:
    policy = RetryPolicy(max_retries=5, backoff=(1.0, 2.0))
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 2.0, 2.0, 2.0]
    assert RetryPolicy(backoff=()).delay(1) == 0.0


def test_fail_schedules_retry_and_records_printer() -> None:
    policy = RetryPolicy()
    job = make_job(S.PRINTING, printer_id="p1", started_at=T0, eta=T0 + 99)
    now = T0 + 100
    failed = fail(job, "nozzle clog", "p1", policy, now)
    assert failed.state is S.FAILED
    assert failed.retry_at == now + 1 * MIN
    assert failed.last_error == "nozzle clog"
    assert failed.failed_printers == ("p1",)
    assert failed.updated_at == now
    assert failed.eta is None
    assert will_retry(failed)
    # The original job is unchanged.
    assert job.state is S.PRINTING
    assert job.failed_printers == ()


def test_fail_without_printer_records_none() -> None:
    job = make_job(S.VALIDATED)
    failed = fail(job, "slicer crashed", None, RetryPolicy(), T0)
    assert failed.state is S.FAILED
    assert failed.failed_printers == ()
    assert failed.retry_at == T0 + MIN


def test_fail_from_state_without_fail_edge_is_invalid() -> None:
    with pytest.raises(InvalidTransition):
        fail(make_job(S.QUEUED), "x", "p1", RetryPolicy(), T0)


def test_retry_requires_failed() -> None:
    with pytest.raises(InvalidTransition):
        retry(make_job(S.PRINTING), T0)


def test_walk_whole_default_schedule() -> None:
    """Fail on p1, retry, fail on p2, retry, fail on p1 again, retry, fail on p3: escalate."""
    policy = RetryPolicy()
    expected_delays = [1 * MIN, 5 * MIN, 25 * MIN]
    printers = ["p1", "p2", "p1"]
    job = make_job(S.QUEUED, queued_at=T0)
    now = T0
    for attempt, (printer, delay) in enumerate(zip(printers, expected_delays, strict=True)):
        assert job.retry_count == attempt
        now += 10.0
        job = transition(job, E.START, now, printer_id=printer)
        now += 1000.0
        job = fail(job, f"failure {attempt + 1}", printer, policy, now)
        assert job.state is S.FAILED
        assert job.retry_at == now + delay
        assert job.last_error == f"failure {attempt + 1}"
        assert will_retry(job)
        now = job.retry_at
        job = retry(job, now)
        assert job.state is S.QUEUED
        assert job.retry_count == attempt + 1
        assert job.queued_at == now
        assert job.updated_at == now
        assert job.printer_id is None
        assert job.retry_at is None
        assert job.progress == 0.0

    # p1 failed twice but is recorded once.
    assert job.failed_printers == ("p1", "p2")
    assert job.retry_count == policy.max_retries

    # Retries are spent: the next failure escalates.
    now += 10.0
    job = transition(job, E.START, now, printer_id="p3")
    now += 50.0
    final = fail(job, "thermal runaway", "p3", policy, now)
    assert final.state is S.FAILED
    assert final.retry_at is None
    assert not will_retry(final)
    assert final.last_error is not None
    assert final.last_error.startswith("max retries reached")
    assert "thermal runaway" in final.last_error
    assert final.failed_printers == ("p1", "p2", "p3")
    assert final.retry_count == 3
    assert final.updated_at == now


def test_limit_with_zero_retries() -> None:
    policy = RetryPolicy(max_retries=0)
    final = fail(make_job(S.PRINTING, printer_id="p1"), "boom", "p1", policy, T0)
    assert final.retry_at is None
    assert final.last_error == "max retries reached: boom"


def test_retry_count_beyond_backoff_table_uses_last_delay() -> None:
    policy = RetryPolicy(max_retries=6)
    job = make_job(S.PRINTING, printer_id="p1", retry_count=5)
    failed = fail(job, "again", "p1", policy, T0)
    assert failed.retry_at == T0 + 25 * MIN
