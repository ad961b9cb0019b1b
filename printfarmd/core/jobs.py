"""The job state machine: one table of allowed transitions and a pure ``transition``.

Every allowed (state, event) pair is one row of ``TRANSITIONS``; anything else raises
``InvalidTransition`` (HTTP 409 at the API).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from printfarmd.errors import InvalidTransition
from printfarmd.models import Job, JobEvent, JobState

S = JobState
E = JobEvent

#: (state, event) -> next state. The whole state machine.
TRANSITIONS: Mapping[tuple[JobState, JobEvent], JobState] = {
    (S.CREATED, E.VALIDATE): S.VALIDATED,
    (S.CREATED, E.CANCEL): S.CANCELLED,
    (S.VALIDATED, E.SLICE): S.SLICED,
    (S.VALIDATED, E.FAIL): S.FAILED,  # the slicer failed
    (S.VALIDATED, E.CANCEL): S.CANCELLED,
    (S.SLICED, E.ENQUEUE): S.QUEUED,
    (S.SLICED, E.CANCEL): S.CANCELLED,
    (S.QUEUED, E.START): S.PRINTING,
    (S.QUEUED, E.CANCEL): S.CANCELLED,
    (S.PRINTING, E.FINISH): S.POST_PROCESS,
    (S.PRINTING, E.FAIL): S.FAILED,
    (S.PRINTING, E.CANCEL): S.CANCELLED,
    (S.POST_PROCESS, E.CLEAR): S.READY,
    (S.POST_PROCESS, E.CANCEL): S.CANCELLED,
    (S.READY, E.SHIP): S.SHIPPED,
    (S.READY, E.CANCEL): S.CANCELLED,
    (S.FAILED, E.RETRY): S.QUEUED,
    (S.FAILED, E.CANCEL): S.CANCELLED,
}


def next_state(state: JobState, event: JobEvent) -> JobState | None:
    """The state ``event`` leads to from ``state``, or ``None`` if not allowed."""
    return TRANSITIONS.get((state, event))


def transition(job: Job, event: JobEvent, now: float, **changes: object) -> Job:
    """Return ``job`` moved by ``event`` at wall time ``now`` with extra field ``changes``.

    Stamps ``updated_at`` and the per-state timestamps. Raises ``InvalidTransition`` if
    the pair is not in the table. Pure: never mutates ``job``.
    """
    new = next_state(job.state, event)
    if new is None:
        raise InvalidTransition(job.id, job.state.value, event.value)
    stamps: dict[str, object] = {"state": new, "updated_at": now}
    if new is S.QUEUED:
        stamps["queued_at"] = now
        stamps["printer_id"] = None
        stamps["progress"] = 0.0
        stamps["retry_at"] = None
    elif new is S.PRINTING:
        stamps["started_at"] = now
        stamps["progress"] = 0.0
    elif new is S.POST_PROCESS:
        stamps["progress"] = 100.0
        stamps["eta"] = None
    elif new in (S.READY, S.SHIPPED, S.CANCELLED):
        stamps["finished_at"] = job.finished_at or now
        stamps["eta"] = None
    elif new is S.FAILED:
        stamps["eta"] = None
    stamps.update(changes)
    return msgspec.structs.replace(job, **stamps)
