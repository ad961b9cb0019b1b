"""REST: printers (``/api/printers``)."""

from __future__ import annotations

from quart import Blueprint, Response

from printfarmd.api import upkeep
from printfarmd.api import validate as v
from printfarmd.api.context import services
from printfarmd.api.respond import json_response, read_json
from printfarmd.api.serialize import printer_json
from printfarmd.errors import BadRequest

bp = Blueprint("printers", __name__)


def _printer(printer_id: str) -> Response:
    return json_response(upkeep.printer_view(services().owner, printer_id))


@bp.get("/api/printers")
async def list_printers() -> Response:
    sched = services().owner
    explainer = sched.explainer()  # issue 16: why idle printers wait, worked out once
    return json_response(
        {
            "printers": [
                {
                    **printer_json(p, sched.printers[p.id].eta),
                    **upkeep.printer_upkeep(sched, sched.printers[p.id], explainer),
                }
                for p in sched.printer_views()
            ]
        }
    )


@bp.get("/api/printers/<printer_id>")
async def get_printer(printer_id: str) -> Response:
    return _printer(printer_id)


@bp.post("/api/printers/<printer_id>/clear")
async def clear_plate(printer_id: str) -> Response:
    await services().owner.clear_plate(printer_id)
    return _printer(printer_id)


@bp.post("/api/printers/<printer_id>/maintenance")
async def maintenance(printer_id: str) -> Response:
    """Two bodies: ``{"enabled": true|false}`` turns maintenance mode on or off;
    (issue 16) ``{"by": ..., "work": ..., "at"?: ...}`` records work done, resets the
    counters and ends maintenance mode."""
    body = await read_json()
    if "enabled" not in body and ("by" in body or "work" in body):
        return await upkeep.record_maintenance(printer_id, body)
    v.only_fields(body, ("enabled",))
    enabled = v.opt_bool(body, "enabled")
    if enabled is None:
        raise BadRequest("enabled: required (true or false), or record work done with by and work")
    await services().owner.set_maintenance(printer_id, enabled)
    return _printer(printer_id)
