"""REST: jobs (``/api/jobs``)."""

from __future__ import annotations

from quart import Blueprint, Response, request

from printfarmd import faults
from printfarmd.api import contract, upkeep
from printfarmd.api.context import local_printer, services
from printfarmd.api.respond import body_of, json_response, read_json
from printfarmd.api.serialize import job_json
from printfarmd.api.shapes import MAX_COPIES, JobCancel, JobCreate, JobRelease, JobShip
from printfarmd.core.farm.inputs import JobRequest
from printfarmd.errors import BadRequest, NotFound
from printfarmd.models import JOB_ID_RE, Job, JobState
from printfarmd.store.jobs import JOB_SORTS

bp = Blueprint("jobs", __name__)

__all__ = ["MAX_COPIES", "bp", "check_job_id", "parse_job_request"]


async def _jobs_json(jobs: list[Job]) -> list[dict[str, object]]:
    """The jobs' views with what the owner adds (issue 16): cost, why a queued one waits."""
    extra = await upkeep.jobs_extra(services().owner, jobs)
    return [{**job_json(j), **extra[j.id]} for j in jobs]


async def _job_response(job: Job) -> Response:
    """One job's view (see ``_jobs_json``)."""
    return json_response((await _jobs_json([job]))[0])


def check_job_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise NotFound("job not found (ids are 16 uppercase hex characters)")
    return job_id


def parse_job_request(body: dict[str, object], max_priority: int) -> JobRequest:
    """A ``POST /api/jobs`` body (the ``JobCreate`` shape) as the owner's request."""
    job = contract.parse(JobCreate, body, contract.Limits(max_priority))
    return JobRequest(
        filename=job.filename,
        name=job.name,
        priority=job.priority,
        copies=job.copies,
        material=job.material,
        colour=job.colour,
        nozzle_diameter=job.nozzle_diameter,
        required_tags=job.required_tags,
        min_bed=job.min_bed,  # type: ignore[arg-type]
        sku=job.sku,
        estimated_time=job.estimated_time,
        not_before=job.not_before,
    )


@bp.get("/api/jobs")
async def list_jobs() -> Response:
    svc = services()
    args = request.args
    states: list[str] = []
    for raw in (args.get("status") or args.get("state") or "").split(","):
        if raw.strip():
            try:
                states.append(JobState(raw.strip().lower()).value)
            except ValueError:
                allowed = ", ".join(s.value for s in JobState)
                raise BadRequest(
                    f"status: unknown state {raw.strip()!r} (allowed: {allowed})"
                ) from None
    sort = args.get("sort", "created")
    if sort not in JOB_SORTS:
        raise BadRequest(f"sort: must be one of {', '.join(JOB_SORTS)}")
    order = args.get("order", "asc")
    if order not in ("asc", "desc"):
        raise BadRequest("order: must be asc or desc")
    limit = _int_arg("limit", 100, 1, 1000)
    offset = _int_arg("offset", 0, 0, 10**9)
    jobs, total = await svc.store.list_jobs(
        states=states,
        printer_id=args.get("printer"),
        sku=args.get("sku"),
        material=(args.get("material") or "").upper() or None,
        group_id=args.get("group"),
        sort=sort,
        descending=order == "desc",
        limit=limit,
        offset=offset,
    )
    fresh = [svc.owner.fresh(j) for j in jobs]
    return json_response({"jobs": await _jobs_json(fresh), "total": total})


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name}: must be between {lo} and {hi}")
    return value


@bp.post("/api/jobs")
async def create_job() -> Response:
    svc = services()
    body = await read_json()
    job_request = parse_job_request(body, svc.config.scheduler.max_priority)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key) <= 200 and key.isprintable()):
        raise BadRequest("Idempotency-Key: must be 1 to 200 printable characters")
    jobs, created = await svc.owner.submit(job_request, key)
    resp = json_response({"jobs": await _jobs_json(jobs)}, 201 if created else 200)
    if jobs:
        resp.headers["Location"] = f"/api/jobs/{jobs[0].id}"
    return resp


@bp.get("/api/jobs/<job_id>")
async def get_job(job_id: str) -> Response:
    faults.point("get-job")  # S15: a forced 500 (tests only)
    job = await services().owner.get_job(check_job_id(job_id))
    return await _job_response(job)


@bp.post("/api/jobs/<job_id>/cancel")
async def cancel_job(job_id: str) -> Response:
    body = await body_of(JobCancel)
    job = await services().owner.cancel(check_job_id(job_id), body.reason)
    return await _job_response(job)


@bp.post("/api/jobs/<job_id>/release")
async def release_job(job_id: str) -> Response:
    body = await body_of(JobRelease)
    local_printer(body.printerId)
    job = await services().owner.release(check_job_id(job_id), body.printerId)
    return await _job_response(job)


@bp.post("/api/jobs/<job_id>/ship")
async def ship_job(job_id: str) -> Response:
    body = await body_of(JobShip)
    job = await services().owner.ship(check_job_id(job_id), body.tracking)
    return await _job_response(job)


@bp.post("/api/jobs/<job_id>/jump")
async def jump_job(job_id: str) -> Response:
    job = await services().owner.jump(check_job_id(job_id))
    return await _job_response(job)


def _on_this_daemon(job_id: str) -> None:
    """(issue 18) ``Conflict`` when the job prints on another daemon's printer."""
    job = services().owner.jobs.get(job_id)
    if job is not None and job.printer_id is not None:
        local_printer(job.printer_id)


@bp.post("/api/jobs/<job_id>/pause")
async def pause_job(job_id: str) -> Response:
    """Pause a printing job on its printer; answers once the printer did (502 if not)."""
    _on_this_daemon(check_job_id(job_id))
    job = await services().owner.pause_job(job_id)
    return await _job_response(job)


@bp.post("/api/jobs/<job_id>/resume")
async def resume_job(job_id: str) -> Response:
    _on_this_daemon(check_job_id(job_id))
    job = await services().owner.resume_job(job_id)
    return await _job_response(job)
