"""REST: farm automation (``/api/orchestrator``), health and the event log."""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Blueprint, Response, request

from printfarmd import __version__
from printfarmd.api.context import services
from printfarmd.api.respond import body_of, json_response
from printfarmd.api.serialize import event_json, iso, job_json
from printfarmd.api.shapes import OrchestratorConfig, Reprioritize
from printfarmd.errors import BadRequest

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
    member = services().store.membership
    if member is not None:  # issue 18: one daemon of several
        body["node"] = {"id": member.node, "epoch": member.epoch}
    return json_response(body)


async def _status_body() -> dict[str, Any]:
    svc = services()
    h = svc.owner.health()
    extra: dict[str, Any] = {}
    if svc.cluster is not None:  # issue 18: the daemons sharing the farm
        extra["nodes"] = [
            {
                "id": p.node,
                "epoch": p.epoch,
                "alive": not p.lost and p.expires_in > 0,
                "lease_left": round(p.expires_in, 3),
                "printers": list(p.printers),
            }
            for p in await svc.cluster.peers()
        ]
    return {
        **extra,
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
    body = await body_of(Reprioritize)
    job = await services().owner.reprioritize(body.jobId, body.priority)
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
    body = await body_of(OrchestratorConfig)
    changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
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
