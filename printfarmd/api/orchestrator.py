"""REST: farm automation (``/api/orchestrator``), health and the event log."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from printfarmd import __version__
from printfarmd.api import validate as v
from printfarmd.api.context import services
from printfarmd.api.respond import json_response, read_json
from printfarmd.api.serialize import event_json, iso
from printfarmd.errors import BadRequest, ValidationFailed
from printfarmd.models import JOB_ID_RE

bp = Blueprint("orchestrator", __name__)

MAX_SEQ = 2**63 - 1


@bp.get("/api/health")
async def health() -> Response:
    """Public liveness probe (no farm data): ``starting`` until the printers are
    reconciled and dispatch runs, ``degraded`` with the reason while the farm cannot
    store changes (a full disk, a locked database), else ``ok``. Always 200."""
    owner = services().owner
    body: dict[str, Any] = {"status": "ok", "version": __version__}
    if owner.degraded is not None:
        body["status"] = "degraded"
        body["reason"] = owner.degraded.message
    elif not owner.ready:
        body["status"] = "starting"
    return json_response(body)


async def _status_body() -> dict[str, Any]:
    svc = services()
    h = svc.owner.health()
    return {
        "degraded": svc.owner.degraded.message if svc.owner.degraded is not None else None,
        "paused": h.paused,
        "queue_depth": h.queue_depth,
        "printing": h.printing,
        "dispatching": h.dispatching,
        "awaiting_clear": h.awaiting_clear,
        "retry_waiting": h.retry_waiting,
        "oldest_queued_at": iso(h.oldest_queued_at),
        "jobs_by_state": await svc.store.count_jobs_by_state(),
        "printers_by_state": h.printers_by_state,
        "last_event_seq": await svc.store.last_event_seq(),
    }


@bp.get("/api/orchestrator/status")
async def status() -> Response:
    return json_response(await _status_body())


@bp.post("/api/orchestrator/pause")
async def pause() -> Response:
    await services().owner.set_paused(True)
    return json_response(await _status_body())


@bp.post("/api/orchestrator/resume")
async def resume() -> Response:
    await services().owner.set_paused(False)
    return json_response(await _status_body())


@bp.post("/api/orchestrator/reprioritize")
async def reprioritize() -> Response:
    from printfarmd.api.serialize import job_json

    svc = services()
    body = await read_json()
    v.only_fields(body, ("jobId", "job_id", "priority"))
    job_id = v.opt_str(body, "jobId", 64) or v.opt_str(body, "job_id", 64)
    if not job_id:
        raise BadRequest("jobId: required")
    if not JOB_ID_RE.match(job_id):
        raise ValidationFailed("jobId: not a job id (16 uppercase hex characters)", field="jobId")
    limit = svc.config.scheduler.max_priority
    priority = v.opt_int(body, "priority", -limit, limit)
    if priority is None:
        raise BadRequest("priority: required")
    job = await svc.owner.reprioritize(job_id, priority)
    return json_response(job_json(job))


def _settings_body() -> dict[str, Any]:
    s = services().owner.settings
    return {
        "max_retries": s.max_retries,
        "retry_backoff": list(s.retry_backoff),
        "cooldown_seconds": s.cooldown_seconds,
    }


@bp.get("/api/orchestrator/config")
async def get_config() -> Response:
    return json_response(_settings_body())


@bp.put("/api/orchestrator/config")
async def put_config() -> Response:
    body = await read_json()
    v.only_fields(body, ("max_retries", "retry_backoff", "cooldown_seconds"))
    # The helpers read null as "absent"; here it would silently change nothing, so say so.
    for key, value in body.items():
        if value is None:
            raise BadRequest(f"{key}: null is not a value (leave the field out instead)")
    changes: dict[str, Any] = {}
    if (n := v.opt_int(body, "max_retries", 0, 100)) is not None:
        changes["max_retries"] = n
    if "retry_backoff" in body:
        raw = body["retry_backoff"]
        if not isinstance(raw, list) or not raw:
            raise BadRequest("retry_backoff: expected a non-empty list of seconds")
        # Each item through opt_num, which reads null as "absent": refuse that here.
        if any(x is None for x in raw):
            raise BadRequest("retry_backoff: expected a non-empty list of seconds")
        changes["retry_backoff"] = tuple(
            v.opt_num({"retry_backoff": x}, "retry_backoff", 0.0, 7 * 86400.0) or 0.0
            for x in raw[:20]
        )
        if len(raw) > 20:
            raise ValidationFailed("retry_backoff: at most 20 values", field="retry_backoff")
    if (c := v.opt_num(body, "cooldown_seconds", 0.0, 86400.0)) is not None:
        changes["cooldown_seconds"] = c
    await services().owner.update_settings(changes)
    return json_response(_settings_body())


@bp.get("/api/events/history")
async def events() -> Response:
    """The event log as JSON pages (``after`` = last seq seen). ``GET /api/events`` is the
    live stream (``api/events.py``)."""
    args = request.args
    try:
        after = int(args.get("after", "0"))
        limit = int(args.get("limit", "500"))
    except ValueError:
        raise BadRequest("after and limit: expected integers") from None
    # ``after`` is compared with SQLite's 64-bit seq column (OverflowError beyond it).
    if not 0 <= after <= MAX_SEQ or not 1 <= limit <= 5000:
        raise BadRequest(f"after must be between 0 and {MAX_SEQ} and limit between 1 and 5000")
    types = tuple(t for t in (args.get("type") or "").split(",") if t)
    evs = await services().store.events_since(
        after, job_id=args.get("job"), printer_id=args.get("printer"), types=types, limit=limit
    )
    return json_response({"events": [event_json(e) for e in evs]})
