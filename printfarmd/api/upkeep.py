"""REST for spools, maintenance and costs (issue 16; docs/upkeep.md).

- ``GET /api/spools``: Spoolman's status, every printer tool's bound spool (as last
  read, with the grams still owed to Spoolman), the reports not yet sent.
- ``PUT /api/printers/{id}/spool``: bind (``{"spool_id": 12, "tool": 0}``) or unbind
  (``{"spool_id": null}``) a tool's spool.
- ``GET /api/printers/{id}/maintenance``: its counters, the thresholds, why it is due,
  its log. ``POST`` on the same path records work done (``printers.py`` keeps the old
  ``{"enabled": ...}`` form).
- ``GET /api/maintenance``: every printer's counters and the whole log, newest first.

The JSON pieces the printer and job views add (``printer_upkeep``, ``jobs_extra``) live
here; the cost shapes are in ``upkeep_json.py`` (the notifier and the history use them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quart import Blueprint, Response, request

from printfarmd.api.context import local_printer, services
from printfarmd.api.history import int_arg
from printfarmd.api.respond import body_of, json_response
from printfarmd.api.serialize import iso, printer_json
from printfarmd.api.shapes import Maintenance, SpoolBind
from printfarmd.api.upkeep_json import job_cost
from printfarmd.core.farm import eligibility
from printfarmd.core.farm import spools as spool_rules
from printfarmd.core.farm.state import Slot
from printfarmd.core.farm.upkeep import counters_json
from printfarmd.core.farm.upkeep_state import Policy, power_group
from printfarmd.errors import BadRequest, NotFound
from printfarmd.models import Job
from printfarmd.services.owner import Owner
from printfarmd.store.upkeep import LogEntry, UpkeepStore

bp = Blueprint("upkeep", __name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


# ---------------------------------------------------------------- JSON pieces


def spool_json(policy: Policy, slot: Slot, owner: Owner) -> list[dict[str, Any]]:
    """The printer's tools and their spools as the farm knows them."""
    state = owner.state
    owed = spool_rules.pending_by_spool(state.pending)
    tools = max(slot.config.tools, 1)
    out: list[dict[str, Any]] = []
    for tool in range(tools):
        sid = slot.spools[tool] if tool < len(slot.spools) else None
        info = state.spools.get(sid) if sid is not None else None
        entry: dict[str, Any] = {"tool": tool, "spool_id": sid}
        if sid is not None:
            entry.update(
                {
                    "known": info is not None,
                    "name": info.name if info else None,
                    "material": info.material if info else None,
                    "colours": list(info.colours) if info else [],
                    "remaining_g": None
                    if info is None or info.remaining is None
                    else round(info.remaining - owed.get(sid, 0.0), 2),
                    "owed_g": round(owed.get(sid, 0.0), 3),
                    "price_per_kg": info.price_per_kg if info else None,
                    "archived": bool(info and info.archived),
                    "missing": bool(info and info.missing),
                    "read_at": iso(info.updated_at) if info and info.updated_at else None,
                }
            )
        out.append(entry)
    return out


def printer_upkeep(
    owner: Owner, slot: Slot, explainer: eligibility.Explainer | None = None
) -> dict[str, Any]:
    """What a printer's view adds (issue 16): spools, power group, counters, why due,
    why it waits (``explainer``: shared by the printers of one listing)."""
    policy = owner.policy
    return {
        "spools": spool_json(policy, slot, owner),
        "power_group": power_group(slot.config),
        "counters": counters_json(slot.counters),
        "maintenance_due": slot.due,
        "maintenance_due_at": iso(slot.due_at),
        "waiting": owner.printer_waiting(slot.id, explainer),
    }


def printer_view(owner: Owner, printer_id: str) -> dict[str, Any]:
    view = owner.printer_view(printer_id)
    slot = owner.printers[printer_id]
    return {**printer_json(view, slot.eta), **printer_upkeep(owner, slot)}


async def jobs_extra(owner: Owner, jobs: Sequence[Job]) -> dict[str, dict[str, Any]]:
    """Per job: its ``cost`` (one store read for all) and why it waits (queued jobs)."""
    usages = await UpkeepStore(owner.store).usage_of_jobs([j.id for j in jobs])
    currency = owner.policy.currency
    explainer = owner.explainer()
    return {
        j.id: {
            "cost": job_cost(currency, usages.get(j.id, [])),
            "waiting": owner.job_waiting(j, explainer),
        }
        for j in jobs
    }


def log_json(e: LogEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "printer_id": e.printer_id,
        "at": iso(e.at),
        "by": e.by,
        "work": e.work,
        "counters": counters_json(e.counters),
        "due": e.due,
        "recorded_at": iso(e.recorded_at),
    }


def thresholds_json(policy: Policy) -> dict[str, Any]:
    return {
        "every_hours": policy.every_hours or None,
        "every_prints": policy.every_prints or None,
        "every_grams": policy.every_grams or None,
    }


# ---------------------------------------------------------------- routes


@bp.get("/api/spools")
async def list_spools() -> Response:
    svc = services()
    owner = svc.owner
    pending = await UpkeepStore(svc.store).pending()
    printers = [
        {"printer_id": slot.id, "tools": spool_json(owner.policy, slot, owner)}
        for slot in owner.printers.values()
    ]
    return json_response(
        {
            "spoolman": {
                "enabled": svc.spoolman is not None,
                "url": svc.config.spoolman.url or None,
                "connected": bool(svc.spoolman and svc.spoolman.connected),
            },
            "printers": printers,
            "pending_reports": [
                {
                    "spool_id": o.spool_id,
                    "grams": round(o.grams, 3),
                    "since": iso(o.at),
                    "attempts": o.attempts,
                    "last_error": o.last_error,
                }
                for o in pending
            ],
        }
    )


@bp.put("/api/printers/<printer_id>/spool")
async def bind_spool(printer_id: str) -> Response:
    body = await body_of(SpoolBind)
    local_printer(printer_id)
    owner = services().owner
    if printer_id not in owner.printers:
        raise NotFound(f"printer {printer_id} not found")
    await owner.bind_spool(printer_id, body.tool, body.spool_id)
    return json_response(printer_view(owner, printer_id))


async def _maintenance_doc(printer_id: str | None) -> dict[str, Any]:
    svc = services()
    owner = svc.owner
    limit = int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = int_arg("offset", 0, 0, 10**9)
    entries, total = await UpkeepStore(svc.store).log_page(printer_id, limit, offset)
    slots = [owner.printers[printer_id]] if printer_id else list(owner.printers.values())
    return {
        "thresholds": thresholds_json(owner.policy),
        "printers": [
            {
                "printer_id": s.id,
                "maintenance": s.maintenance,
                "counters": counters_json(s.counters),
                "due": s.due,
                "due_at": iso(s.due_at),
            }
            for s in slots
        ],
        "log": [log_json(e) for e in entries],
        "total": total,
    }


@bp.get("/api/printers/<printer_id>/maintenance")
async def printer_maintenance(printer_id: str) -> Response:
    if printer_id not in services().owner.printers:
        raise NotFound(f"printer {printer_id} not found")
    return json_response(await _maintenance_doc(printer_id))


@bp.get("/api/maintenance")
async def maintenance() -> Response:
    printer = request.args.get("printer") or None
    if printer is not None and printer not in services().owner.printers:
        raise NotFound(f"printer {printer} not found")
    return json_response(await _maintenance_doc(printer))


async def record_maintenance(printer_id: str, body: Maintenance) -> Response:
    """``POST /api/printers/{id}/maintenance`` with ``by`` and ``work`` (and optionally
    ``at``): log the work, reset the counters, back into service."""
    if body.by is None:
        raise BadRequest("by: required (who did the work)")
    if body.work is None:
        raise BadRequest("work: required (what was done)")
    owner = services().owner
    await owner.record_maintenance(printer_id, body.by, body.work, body.at)
    return json_response(printer_view(owner, printer_id))
