"""Jobs coming in and going out of the queue: create, the pipeline stages, cancel,
ship, priority and order."""

from __future__ import annotations

import msgspec

from printfarmd.core import routing
from printfarmd.core.farm import common
from printfarmd.core.farm.inputs import (
    CreateJobs,
    FileFacts,
    JobRequest,
    QueueFile,
    SetQueue,
    SliceResult,
)
from printfarmd.core.farm.outputs import (
    AppendEvent,
    InsertJob,
    Log,
    NewEvent,
    PutIdempotency,
    Slice,
    StopPrint,
    UpdateJob,
)
from printfarmd.core.farm.state import Now, Tx
from printfarmd.core.jobs import transition
from printfarmd.core.slicing import is_model, output_name
from printfarmd.errors import Conflict, ValidationFailed
from printfarmd.models import TERMINAL_STATES, Job, JobEvent, JobState, new_job_id

#: The stage transitions a G-code job takes at once (validated at submission; G-code
#: needs no slicing, so it passes that stage straight away).
_PIPELINE = (JobEvent.VALIDATE, JobEvent.SLICE, JobEvent.ENQUEUE)
_PIPELINE_FROM = {
    JobEvent.VALIDATE: JobState.CREATED,
    JobEvent.SLICE: JobState.VALIDATED,
    JobEvent.ENQUEUE: JobState.SLICED,
}


#: Drivers that report what is loaded (an AMS's trays): their colours are not fixed.
REPORTS_LOADED = frozenset({"bambu"})


def check_some_printer_can(tx: Tx, job: Job) -> None:
    """``ValidationFailed`` unless some printer of the farm could print ``job``. A daemon
    of a cluster (issue 18) does not know the others' printers: it refuses nothing."""
    if tx.base.cluster:
        return
    slots = list(tx.slots())
    if not slots:
        if tx.accept_without_printers:
            return  # printers arrive by discovery; the job waits for one
        raise ValidationFailed("no printers are configured", field="filename")
    req = routing.requirements_of(job)
    reasons = []
    for slot in slots:
        # Where the loaded colours change without the config (bound spools, a printer
        # that reports what it has loaded), a colour nobody has now is loaded later:
        # the job waits for it (the view says so) rather than being refused.
        fixed = not (tx.policy.spoolman or slot.loaded or slot.config.driver in REPORTS_LOADED)
        why = routing.incompatibility(
            slot.capabilities, req if fixed else msgspec.structs.replace(req, colour=None)
        )
        if why is None:
            return
        reasons.append(f"{slot.id}: {why}")
    raise ValidationFailed("no configured printer can print this job (" + "; ".join(reasons) + ")")


def advance(tx: Tx, job: Job, now: Now, reason: str | None, *, insert: bool) -> Job:
    """Take the stage steps ``job`` can take now (a model stops at VALIDATED for the
    slicer) and record them: the job's row once, in its final form (inserted when
    ``insert``: a new job, else written from its current state), and one event a step."""
    model = is_model(job.filename)
    events = [AppendEvent(common.transition_event(None, job, None, None))] if insert else []
    first, steps = job, 0
    for event in _PIPELINE:
        if event is JobEvent.SLICE and model:
            break
        if job.state is _PIPELINE_FROM[event]:
            nxt = transition(job, event, now.wall)
            events.append(AppendEvent(common.transition_event(job, nxt, event, reason)))
            job, steps = nxt, steps + 1
    if insert:
        tx.put_job(job)
        tx.record(InsertJob(job), *events)
    elif steps:
        tx.put_job(job)
        tx.record(UpdateJob(job, first.state), *events)
    return job


def _new_job(request: JobRequest, facts: FileFacts, now: Now) -> Job:
    material = routing.normalize_material(request.material or facts.material)
    group = new_job_id()
    return Job(
        id=group,
        filename=request.filename,
        name=request.name or request.filename.rsplit("/", 1)[-1],
        priority=request.priority,
        copies=request.copies,
        group_id=group,
        material=material,
        colour=routing.normalize_colour(request.colour),
        nozzle_diameter=request.nozzle_diameter or facts.nozzle_diameter,
        required_tags=tuple(sorted(set(request.required_tags))),
        min_bed=request.min_bed,
        sku=request.sku,
        estimated_time=request.estimated_time
        if request.estimated_time is not None
        else facts.estimated_time,
        created_at=now.wall,
        updated_at=now.wall,
        source=request.source,
        filament_weight=facts.filament_weight,
        not_before=request.not_before,
    )


class Created(msgspec.Struct, frozen=True):
    """The reply to ``CreateJobs``: the job ids, the jobs when new (a replay names only
    the ids: the edge reads those jobs as they are now), and whether they are new."""

    ids: tuple[str, ...]
    jobs: list[Job]
    created: bool


def create(tx: Tx, cmd: CreateJobs, now: Now) -> Created:
    """Store a submission as ``copies`` jobs.

    The same Idempotency-Key with the same request replays the first submission
    (``created`` False); with another request, ``Conflict``.
    """
    request = cmd.request
    key = cmd.idempotency_key
    digest = request.digest()
    if key is not None:
        seen = tx.key(key)
        if seen is not None:
            if seen[0] != digest:
                raise Conflict("Idempotency-Key was already used for a different request")
            return Created(seen[1], [], False)
    base = _new_job(request, cmd.facts, now)
    check_some_printer_can(tx, base)
    jobs: list[Job] = []
    for i in range(request.copies):
        job = msgspec.structs.replace(
            base,
            id=base.id if i == 0 else new_job_id(),
            copy_index=i + 1,
            position=tx.allocate_position(),
        )
        jobs.append(advance(tx, job, now, None, insert=True))
    ids = tuple(j.id for j in jobs)
    if key is not None:
        tx.remember_key(key, digest, ids)
        tx.record(PutIdempotency(key, digest, ids, now.wall))
    if cmd.facts.model:
        tx.effect(Slice(ids, request.filename, output_name(request.filename, base.id)))
    tx.effect(
        Log(
            "info",
            "job created",
            {
                "job": base.id,
                "file": request.filename,
                "copies": request.copies,
                "priority": request.priority,
            },
        )
    )
    return Created(ids, jobs, True)


def sliced(tx: Tx, result: SliceResult, now: Now) -> None:
    """The slicer finished for a job group: each copy still waiting is queued with the
    sliced file and its metadata, or fails with the slicer's error."""
    for jid in result.job_ids:
        job = tx.job(jid)
        if job is None or job.state is not JobState.VALIDATED:
            continue  # cancelled meanwhile
        if result.error is not None:
            common.move(tx, job, JobEvent.FAIL, now, result.error, last_error=result.error)
            tx.effect(Log("warning", "model not sliced", {"job": jid, "reason": result.error}))
            continue
        facts = result.facts
        prev = msgspec.structs.replace(
            job,
            filename=result.output,
            material=job.material or routing.normalize_material(facts.material),
            nozzle_diameter=job.nozzle_diameter or facts.nozzle_diameter,
            estimated_time=job.estimated_time
            if job.estimated_time is not None
            else facts.estimated_time,
            filament_weight=facts.filament_weight,
        )
        # The row holds the model until this commit: write the sliced fields with SLICE.
        new = transition(prev, JobEvent.SLICE, now.wall)
        common.moved(tx, job, new, JobEvent.SLICE, None)
        common.move(tx, new, JobEvent.ENQUEUE, now)


def cancel(tx: Tx, job: Job, reason: str, now: Now) -> Job:
    """Cancel ``job`` from any state but a final one. A print in progress is stopped on
    its printer (now, or when a hand-over in flight returns); what was printed stays on
    the plate until someone clears it."""
    new = common.move(tx, job, JobEvent.CANCEL, now, reason, last_error=None)
    slot = tx.printer(job.printer_id or "")
    if slot is not None and slot.current_job == job.id:
        handing = slot.handing == job.id
        started = slot.confirmed or slot.restored or slot.start_acked_at is not None
        slot = common.release_slot(tx, slot, job.id)
        if job.state is JobState.PRINTING and not handing:
            tx.effect(StopPrint(slot.id, job.id, reason))
            if started:
                slot = common.set_plate(tx, slot, False, now)
        if not slot.plate_clear:
            common.arm_autoclear(tx, slot, now)
        if not handing:
            common.forget_upload(tx, slot, job.id)
        # A hand-over in flight is settled when it returns (StartResult): the printer is
        # told to stop then, and the plate flag decided by what it did.
    tx.effect(Log("info", "job cancelled", {"job": job.id, "reason": reason}))
    return new


def cancel_queued(tx: Tx, job_ids: tuple[str, ...], reason: str, now: Now) -> list[str]:
    done: list[str] = []
    for jid in dict.fromkeys(job_ids):
        job = tx.job(jid)
        if job is None or job.state is not JobState.QUEUED:
            continue
        common.move(tx, job, JobEvent.CANCEL, now, reason, last_error=None)
        done.append(jid)
    return done


def ship(tx: Tx, job: Job, tracking: str, now: Now) -> Job:
    return common.move(tx, job, JobEvent.SHIP, now, None, tracking=tracking)


def reprioritize(tx: Tx, job: Job, priority: int, now: Now) -> Job:
    if job.state in TERMINAL_STATES:
        raise Conflict(f"job {job.id} is {job.state.value}: its priority can no longer change")
    new = msgspec.structs.replace(job, priority=priority, updated_at=now.wall)
    common.update_job(
        tx,
        job,
        new,
        NewEvent(
            "job.reprioritized",
            now.wall,
            job_id=job.id,
            data={"from": job.priority, "to": priority},
        ),
    )
    return new


def jump(tx: Tx, job: Job, now: Now) -> Job:
    """Put a queued job in front of every other one."""
    if job.state is not JobState.QUEUED:
        raise Conflict(f"job {job.id} is {job.state.value}: only queued jobs can jump")
    new = msgspec.structs.replace(job, front=tx.max_front() + 1, updated_at=now.wall)
    common.update_job(tx, job, new, NewEvent("job.jumped", now.wall, job_id=job.id))
    return new


def set_queue(tx: Tx, cmd: SetQueue, now: Now) -> list[Job]:
    """New jobs and a new order for the head of the queue, in one decision (nothing is
    done if any listed job is no longer queued: ``Conflict``). Returns the listed jobs."""
    queued = {j.id: j for j in tx.queued_ordered()} if cmd.cancel_unlisted or cmd.ordered else {}
    listed: set[str] = set()
    for item in cmd.items:
        if isinstance(item, str):
            job = tx.job(item)
            if job is None or job.state is not JobState.QUEUED:
                raise Conflict(f"job {item} is no longer queued")
            if item in listed:
                raise Conflict(f"job {item} is listed twice")
            listed.add(item)
    n = len(cmd.items)
    top = tx.max_front() + n if cmd.ordered else 0
    out: list[Job] = []
    for i, item in enumerate(cmd.items):
        front = max(top - i, 0)
        if isinstance(item, QueueFile):
            job = _queue_file(tx, item, now, front)
        else:
            old = tx.job(item)
            assert old is not None
            job = msgspec.structs.replace(old, front=front, updated_at=now.wall)
            common.update_job(
                tx,
                old,
                job,
                NewEvent("job.jumped", now.wall, job_id=job.id, data={"reorder": True}),
            )
        out.append(job)
    if cmd.cancel_unlisted:
        for jid, job in queued.items():
            if jid not in listed:
                common.move(tx, job, JobEvent.CANCEL, now, cmd.reason, last_error=None)
    return out


def _queue_file(tx: Tx, item: QueueFile, now: Now, front: int) -> Job:
    base = _new_job(JobRequest(filename=item.filename, source=item.source), item.facts, now)
    job = msgspec.structs.replace(base, position=tx.allocate_position(), front=front)
    check_some_printer_can(tx, job)
    return advance(tx, job, now, None, insert=True)


def resume_pipeline(tx: Tx, now: Now) -> None:
    """At start: jobs stopped half-way through the stages are carried on; models whose
    slicing was cut short are sliced again (once per group)."""
    groups: dict[str, list[str]] = {}
    for job in list(tx.base.jobs.values()):
        if job.state in (JobState.CREATED, JobState.VALIDATED, JobState.SLICED):
            new = advance(tx, job, now, "resumed after restart", insert=False)
            if new.state is JobState.VALIDATED and is_model(new.filename):
                groups.setdefault(new.group_id or new.id, []).append(new.id)
    for ids in groups.values():
        first = tx.job(ids[0])
        assert first is not None
        tx.effect(
            Slice(
                tuple(ids), first.filename, output_name(first.filename, first.group_id or first.id)
            )
        )
