"""REST: printers (``/api/printers``)."""

from __future__ import annotations

from quart import Blueprint, Response

from printfarmd.api import upkeep
from printfarmd.api.context import services
from printfarmd.api.respond import body_of, json_response
from printfarmd.api.serialize import printer_json
from printfarmd.api.shapes import Maintenance
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
    body = await body_of(Maintenance)
    if body.by is not None or body.work is not None or body.at is not None:
        if body.enabled is not None:
            raise BadRequest("enabled: either turn maintenance mode on or off, or record work done")
        return await upkeep.record_maintenance(printer_id, body)
    if body.enabled is None:
        raise BadRequest("enabled: required (true or false), or record work done with by and work")
    await services().owner.set_maintenance(printer_id, body.enabled)
    return _printer(printer_id)
